"""`throttledetect validate`: the scenario matrix of known throttling over the corpus call traces.

Parses options and calls throttledetect.validate; the method is in that module's docstring and
in docs/validation.md. It measures the detectors as they are and never changes a threshold.
"""
from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path

import click

from throttledetect.commands.options import Number, OutputFile, check_outputs
from throttledetect.report.jsonout import json_default

QUICK_SEEDS = 2
QUICK_CONFOUNDER_SEEDS = 2
DEFAULT_SEEDS = 40               # per impairment scenario and trace (full matrix ~20 min on 2 cores)
DEFAULT_CONFOUNDER_SEEDS = 100   # per confounder and trace: 600 flows per confounder (a 0.01 rate measurable)


def _select(items, wanted: str | None, what: str):
    if not wanted:
        return tuple(items)
    names = [w.strip() for w in wanted.split(",") if w.strip()]
    out = []
    for w in names:
        hit = [x for x in items if x.name == w] or [x for x in items if x.name.startswith(w)]
        if not hit:
            raise click.BadParameter(f"no {what} {w!r}; known: {', '.join(x.name for x in items)}")
        out += [h for h in hit if h not in out]
    return tuple(out)


@click.command("validate")
@click.option("--corpus", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="The shared corpus (external/ call traces). Default: $THROTTLEDETECT_CORPUS or "
                   "../shared/corpus beside the repository.")
@click.option("--quick", is_flag=True, help=f"A smoke run: {QUICK_SEEDS} seeds per impairment and "
              f"{QUICK_CONFOUNDER_SEEDS} per confounder (about a minute).")
@click.option("--seeds", type=click.IntRange(min=1), default=None,
              help=f"Trials per impairment scenario and trace [default: {DEFAULT_SEEDS}; --quick: {QUICK_SEEDS}].")
@click.option("--confounder-seeds", type=click.IntRange(min=1), default=None,
              help=f"Trials per random confounder and trace [default: {DEFAULT_CONFOUNDER_SEEDS}; "
                   f"--quick: {QUICK_CONFOUNDER_SEEDS}]. 'clean' is deterministic: one trial per trace.")
@click.option("--jobs", "-j", type=click.IntRange(min=1), default=min(2, os.cpu_count() or 1), show_default=True,
              help="Worker processes.")
@click.option("--seconds", type=Number(10, 3600), default=60.0, show_default=True,
              help="Length each base trace is looped to.")
@click.option("--traces", default=None, help="Comma-separated subset of the base traces (names or prefixes).")
@click.option("--scenarios", default=None, help="Comma-separated subset of the scenarios (names or prefixes).")
@click.option("--out", type=OutputFile(), default=None,
              help="Write every trial, the table and the goals as JSON.")
@click.option("--markdown", type=OutputFile(), default=None,
              help="Also write the tables and goals (markdown) to this file.")
def command(corpus, quick, seeds, confounder_seeds, jobs, seconds, traces, scenarios, out, markdown):
    """Measure the detectors on a scenario matrix of simulated throttling over real call traces.

    Drop 1-30 %, policer 0.5-0.9x the flow's rate (small and large bursts), shaper 0.5/0.7x
    (short and long queues), onsets, blocking, and the confounders (clean, congestion on all
    flows, Wi-Fi jitter, DTX silence). Prints detection rate, false-positive rate, kind accuracy
    and rate-estimate error with 95 % Wilson intervals, then each goal of issue 5 as MET / NOT MET.
    """
    from throttledetect import validate as v
    from throttledetect.report.output import write_atomic
    check_outputs({"--out": out, "--markdown": markdown}, [])     # checked now, not after a 20-minute run
    seeds = seeds or (QUICK_SEEDS if quick else DEFAULT_SEEDS)
    confounder_seeds = confounder_seeds or (QUICK_CONFOUNDER_SEEDS if quick else DEFAULT_CONFOUNDER_SEEDS)
    tr = _select(v.TRACES, traces, "trace")
    sc = _select(v.SCENARIOS, scenarios, "scenario")
    tasks = len(v.plan(tr, sc, seeds, confounder_seeds))
    click.echo(f"throttledetect validate: {len(tr)} traces x {len(sc)} scenarios, {seeds} seeds per impairment, "
               f"{confounder_seeds} per confounder: {tasks} trials on {jobs} worker(s)", err=True)
    step = max(1, tasks // 20)

    def progress(k, n, elapsed):
        if k % step == 0 or k == n:
            eta = elapsed / k * (n - k)
            click.echo(f"  {k}/{n} trials, {elapsed:.0f} s elapsed, ~{eta:.0f} s left", err=True)

    fingerprint = v.detector_fingerprint()
    try:
        result = v.run_matrix(tr, sc, seeds=seeds, confounder_seeds=confounder_seeds, jobs=jobs, corpus=corpus,
                              seconds=seconds, progress=progress)
    except v.CorpusMissing as e:
        raise click.ClickException(str(e))
    scored = v.score(result, sc)
    text = v.format_table(scored)
    argv = sys.argv[1:] if sys.argv and "throttledetect" in os.path.basename(sys.argv[0]) else None
    cmd = "throttledetect " + (shlex.join(argv) if argv else "validate")
    meta = {"date": v.now_utc(), "command": cmd, "seeds": seeds, "confounder_seeds": confounder_seeds,
            "jobs": jobs, "seconds": seconds, "corpus": str(corpus or v.default_corpus()),
            "git_head": v.git_head(), "detectors_sha256": fingerprint}
    if v.detector_fingerprint() != fingerprint:
        meta["warning"] = (f"the detector sources changed during the run: the workers imported them at the start "
                           f"(detectors {fingerprint}); run again to measure the new sources")
        click.echo(f"throttledetect: warning: {meta['warning']}", err=True)
    failed = sum(1 for r in result["trials"] if r.get("error"))
    footer = (f"\n{len(result['trials'])} trials in {result['runtime_s']:.0f} s on {jobs} worker(s) "
              f"({result.get('cpu_s', 0):.0f} CPU s in trials)"
              + (f", {failed} failed (see the JSON)" if failed else "") + f"; {meta['date']}; git {meta['git_head']}, detectors {fingerprint}; `{cmd}`")
    click.echo(text + footer)
    if markdown:
        write_atomic(markdown, text + footer + "\n")
    if out:
        write_atomic(out, json.dumps(v.to_json(result, scored, meta), indent=1, default=json_default) + "\n")
