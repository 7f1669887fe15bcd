"""`throttledetect compare BASELINE TEST`: two sets of captures side by side, per protocol.

    throttledetect compare without_vpn.pcap with_vpn.pcap
    throttledetect compare isp_a/ isp_b/ --format json -o cmp.json
    throttledetect compare baseline.json test.pcap          # a saved `analyze --format json` report works too

Each side is a capture, a folder of captures, or a saved JSON report. Method and thresholds:
throttledetect/report/compare.py (Wehe's area and KS tests on the throughput per bin).
"""
from __future__ import annotations

import json

import click

from throttledetect.commands.options import (ANALYSIS_OPTIONS, EXIT_FOUND, OUTPUT, READ_OPTIONS, analysis_settings,
                                             check_outputs, options)


@click.command("compare")
@click.argument("baseline", type=click.Path(exists=True), metavar="BASELINE")
@click.argument("test", type=click.Path(exists=True), metavar="TEST")
@options(READ_OPTIONS)
@options(ANALYSIS_OPTIONS)
@OUTPUT
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table", show_default=True)
@click.option("--all-protocols", is_flag=True, help="Include protocols that are not calls (tls, dns, ...).")
@click.option("--fail-on", type=click.Choice(["never", "differs"]), default="never", show_default=True,
              help="Exit status 1 when a protocol's throughput differs between the two sides.")
def command(baseline, test, output, fmt, all_protocols, fail_on, **params):
    """Compare BASELINE and TEST (captures, folders or saved JSON reports) per protocol: verdicts,
    rate, loss and jitter side by side, and Wehe's two-sample tests on the throughput."""
    import sys

    from throttledetect.classify.labels import APP_CHAT, CALL_LABELS
    from throttledetect.cli import Run, _emit
    from throttledetect.read import CaptureError
    from throttledetect.report.compare import compare_documents, load_side
    check_outputs({"--output": output}, [baseline, test])
    settings = analysis_settings(params)
    api_options = {"idle_timeout": settings["idle_timeout"], "local": settings["local_nets"],
                   "bin_s": settings["bin_s"], "alpha": settings["alpha"]}
    run = Run()
    try:
        run.first_run_note()
        sides = []
        for name, path in (("BASELINE", baseline), ("TEST", test)):
            try:
                sides.append(load_side([path], dict(api_options, progress=run.progress, say=run.say)))
            except (CaptureError, ValueError, OSError) as e:
                raise click.ClickException(f"{name}: {e}") from None
        protocols = None if all_protocols else set(CALL_LABELS) | set(APP_CHAT)
        cmp = compare_documents(sides[0], sides[1], protocols=protocols)
    finally:
        run.close()
    if fmt == "json":
        _emit(json.dumps(cmp.to_json(), indent=2) + "\n", output)
    elif fmt == "csv":
        from throttledetect.report.csvout import write_rows
        rows = []
        for r in cmp.to_json()["protocols"]:
            row = {"protocol": r["protocol"], "direction": r["direction"]}
            for side in ("baseline", "test"):
                row.update({f"{side}_{k}": (" ".join(v) if isinstance(v, list) else v) for k, v in r[side].items()})
            row.update({f"rate_test_{k}": v for k, v in r["rate_test"].items()})
            rows.append(row)
        _emit(write_rows(list(rows[0]) if rows else ["protocol"], rows), output)
    else:
        from throttledetect.report.terminal import output_width
        text = cmp.table(output_width(to_terminal=not output)) if cmp.rows else "no call protocol on either side " \
            "(--all-protocols compares every protocol)"
        _emit(text + "\n", output)
    if fail_on == "differs" and cmp.differs:
        sys.exit(EXIT_FOUND)
