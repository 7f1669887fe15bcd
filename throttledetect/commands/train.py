"""`throttledetect train`: fit the real-time media model on the corpus and write models/media_model.json.

Parses options and calls throttledetect.training.media_model; no training logic lives here.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import click

REPO = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO / "models" / "media_model.json"
DEFAULT_CAPTURES = REPO / "captures"


def default_corpus() -> Path:
    env = os.environ.get("THROTTLEDETECT_CORPUS")
    return Path(env) if env else REPO.parent / "shared" / "corpus"


def _shown(path: Path) -> str:
    """A path as the recipe shows it: relative to the repository root when inside or beside it."""
    path = Path(path).resolve()
    for base, prefix in ((REPO, ""), (REPO.parent, "../")):
        try:
            return prefix + str(path.relative_to(base))
        except ValueError:
            continue
    return str(path)


@click.command("train")
@click.option("--corpus", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="The shared corpus (ndpi/pcap + ndpi/labels, external/). "
                   "Default: $THROTTLEDETECT_CORPUS or ../shared/corpus beside the repository.")
@click.option("--captures", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_CAPTURES,
              show_default="captures/", help="The testbed captures with their MANIFEST.json ('' to leave out).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=DEFAULT_OUT,
              show_default="models/media_model.json", help="Where to write the model (JSON).")
@click.option("--vca/--no-vca", default=False, show_default=True,
              help="Also train on the VCA-sense Tencent Meeting calls (labelled by their framing); off by "
                   "default because they lowered the out-of-sample recall (models/README.md).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the bootstrap behind the CV confidence intervals (the fit itself is deterministic).")
def command(corpus, captures, out, vca, seed):
    """Train the 'is this UDP flow real-time media?' model (packet sizes and timing only).

    Labels come from nDPI's per-flow labels, the external captures' signatures and the testbed's
    MANIFEST.json; evaluation is leave-one-capture-out. Writes plain JSON, never a pickle.
    """
    from throttledetect.training import media_model as mm

    corpus = corpus or default_corpus()
    if not (corpus / "ndpi" / "pcap").is_dir():
        raise click.ClickException(f"{corpus} is not the corpus (no ndpi/pcap inside); give --corpus DIR")
    captures = captures if captures and str(captures) not in ("", ".") and captures.is_dir() else None
    recipe = (f"throttledetect train --corpus {_shown(corpus)}"
              + (f" --captures {_shown(captures)}" if captures else " --captures ''")
              + f" --out {_shown(out)}" + (" --vca" if vca else "") + f" --seed {seed}")
    click.echo(f"training on {corpus}" + (f" and {captures}" if captures else "") + " ...", err=True)
    model = mm.train(corpus, captures, seed=seed, recipe=recipe, vca=vca)
    mm.write_model(model, out)
    tr = model.trained
    cv = tr["cv"]
    nested = cv["nested_threshold"]
    at = cv["at_model_threshold"]
    lines = [
        f"wrote {out}",
        f"  examples: {tr['n_positive']} media, {tr['n_negative']} not media, from {cv['captures']} captures "
        f"(left out: {', '.join(f'{v} {k}' for k, v in tr['excluded'].items()) or 'none'})",
        f"  L2 lambda {tr['lambda']:g}; threshold {model.threshold:.4f}",
        f"  leave-one-capture-out ROC AUC {cv['roc_auc']:.3f}",
        f"  nested threshold: precision {nested['precision']:.3f} recall {nested['recall']:.3f} F1 {nested['f1']:.3f} "
        f"(tp {nested['tp']} fp {nested['fp']} fn {nested['fn']} tn {nested['tn']})",
        f"  at the model's threshold: precision {at['precision']:.3f} recall {at['recall']:.3f} F1 {at['f1']:.3f}",
    ]
    loao = cv.get("leave_one_app_out")
    if loao:
        dep = loao.get("at_deployed_threshold", {})
        lines.append(f"  leave-one-app-out ({loao['apps']} apps): nested precision {loao['precision']:.3f} recall "
                     f"{loao['recall']:.3f}; at the deployed threshold precision {dep.get('precision', 0):.3f} recall "
                     f"{dep.get('recall', 0):.3f}; worst app {loao['worst_app']} (recall {loao['worst_app_recall']})")
    click.echo("\n".join(lines))
    sys.stdout.flush()
