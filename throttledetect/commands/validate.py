"""`throttledetect validate`: predict how the detectors do on calls and networks we do not have.

Parses options and calls throttledetect.validate (bases, network model, scenarios, runner,
scoring); the method is in those modules and in docs/validation.md. It measures the detectors as
they are (or at the calibration grid point chosen without each app) and never tunes a threshold.
"""
from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

import click

from throttledetect.commands.options import Number

QUICK_SEEDS = 1


@click.command("validate")
@click.option("--quick", is_flag=True, help="A smoke run: 1 seed of a few scenarios on every base, no vca-sense "
              "(well under a minute on 2 cores).")
@click.option("--seeds", type=click.IntRange(min=1), default=None,
              help="Trials per scenario and base (each seed its own draws) [default: 10; --quick: 1].")
@click.option("--jobs", "-j", type=click.IntRange(min=1), default=2, show_default=True, help="Worker processes.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write every trial (truth, every detection) as JSON (.json.gz: compressed); "
                   "`--rescore` reads it back.")
@click.option("--table", "full_table", is_flag=True,
              help="Print every table (per app x scenario group, the bases, vca-sense), not only the per-app one.")
@click.option("--markdown", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the tables (markdown) to this file.")
@click.option("--rescore", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Recompute the tables from a stored results file (no trial is run).")
@click.option("--corpus", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="The shared corpus. Default: $THROTTLEDETECT_CORPUS or ../shared/corpus beside the repository.")
@click.option("--bases", "base_filter", default=None,
              help="Comma-separated substrings of base ids or app names (default: every base found).")
@click.option("--scenarios", default=None, help="Comma-separated scenario names or prefixes.")
@click.option("--seconds", type=Number(10, 3600), default=60.0, show_default=True,
              help="Length each base's media is looped to.")
@click.option("--no-vca", is_flag=True, help="Skip the vca-sense real-limit check.")
@click.option("--kernel", is_flag=True,
              help="Real-kernel rows instead: every base replayed through Linux's tbf/htb/pfifo in network "
                   "namespaces (root; each trial takes its real time; --seconds 40 recommended).")
@click.option("--hide-rtp", is_flag=True,
              help="Encrypted-media rows instead: every base with readable RTP, its call flows' RTP and RTCP "
                   "made unreadable (the real call's times and sizes, no sequence numbers, as Telegram sends "
                   "media), scored at the shipped defaults.")
@click.option("--nice", type=click.IntRange(0, 19), default=10, show_default=True,
              help="Niceness of the worker processes (the machine may be shared).")
def command(quick, seeds, jobs, out, full_table, markdown, rescore, corpus, base_filter, scenarios, seconds, no_vca,
            kernel, hide_rtp, nice):
    """Known throttling and confounders applied to every call capture of the corpus, scored per app.

    Bases are discovered by the classifier; a network model independent of the detectors applies
    drops, policers, shapers, blocking (incl. call setup) and confounders (path loss, congestion,
    Wi-Fi, clock skew, rate adaptation, hang-up, mute, hold, truncated captures, ...). Prints per
    app: found, right kind, inconclusive, false throttling and rate error with "k/n trials, B bases"
    and intervals over bases; the worst app is named. Thresholds are chosen leave-one-app-out when
    the detectors expose a calibration grid.
    """
    from throttledetect.commands.options import check_outputs
    from throttledetect.validate import runner, scenarios as S, score, table
    from throttledetect.validate.bases import CorpusMissing
    check_outputs({"--out": out and str(out), "--markdown": markdown and str(markdown)},
                  [str(rescore)] if rescore else [])      # checked now, not after a long run
    if kernel:
        return _kernel(corpus, base_filter, seconds, jobs, out, markdown)
    if rescore:
        result = runner.load(rescore)
    else:
        try:
            scen = S.select(scenarios, quick=quick)
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="--scenarios")
        seeds = seeds or (QUICK_SEEDS if quick else runner.DEFAULT_SEEDS)

        def progress(k, n, elapsed):
            step = max(1, n // 20)
            if k % step == 0 or k == n:
                click.echo(f"  {k}/{n} done, {elapsed:.0f} s elapsed, ~{elapsed / k * (n - k):.0f} s left", err=True)

        click.echo(f"throttledetect validate: {len(scen)} scenarios, {seeds} seed(s), {jobs} worker(s)", err=True)
        try:
            result = runner.run(corpus, scen, seeds=seeds, jobs=jobs, base_filter=base_filter, seconds=seconds,
                                vca=not (no_vca or quick or hide_rtp), nice=nice, progress=progress,
                                hidden=hide_rtp)
        except CorpusMissing as e:
            raise click.ClickException(str(e))
        argv = sys.argv[1:] if sys.argv and "throttledetect" in os.path.basename(sys.argv[0]) else None
        result["meta"]["command"] = "throttledetect " + (shlex.join(argv) if argv else "validate")
        if out:
            runner.save(result, out)
    scored = score.score(result)
    text = table.render(result, scored, full=full_table)
    click.echo(text)
    if markdown:
        markdown.write_text(table.render(result, scored, full=True), encoding="utf-8")
    failed = [r for r in result["trials"] if r.get("error")]
    if failed:
        click.echo(f"throttledetect: {len(failed)} trial(s) failed, first: {failed[0]['base']} / "
                   f"{failed[0]['scenario']}: {failed[0]['error']}", err=True)


def _kernel(corpus, base_filter, seconds, jobs, out, markdown):
    import json
    from throttledetect.validate import bases as B, kernel
    ok, why = kernel.available()
    if not ok:
        raise click.ClickException(f"--kernel: {why}")
    corpus = Path(corpus) if corpus is not None else B.default_corpus()
    specs, _ = B.discover(corpus)
    if base_filter:
        want = [w.strip() for w in base_filter.split(",") if w.strip()]
        specs = [s for s in specs if any(w in s.id or w == s.app for w in want)]
    if not specs:
        raise click.ClickException(f"--kernel: no base found (corpus {corpus})")
    click.echo(f"throttledetect validate --kernel: {len(specs)} bases x {len(kernel.SCENARIOS)} scenarios, "
               f"{seconds:g} s each, {jobs} at once", err=True)

    def progress(k, n):
        click.echo(f"  {k}/{n} done", err=True)

    records = kernel.run(specs, seconds=seconds, jobs=jobs, progress=progress)
    text = kernel.table(records)
    click.echo(text)
    if markdown:
        markdown.write_text(text, encoding="utf-8")
    if out:
        import gzip
        data = json.dumps({"schema": "throttledetect-kernel-validation/1", "seconds": seconds, "trials": records},
                          default=str)
        with (gzip.open(out, "wt", encoding="utf-8") if str(out).endswith(".gz") else open(out, "w")) as fh:
            fh.write(data)
