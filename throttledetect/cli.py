"""Command line: parse options, call the library, render. No analysis logic lives here."""
from __future__ import annotations

import csv
import io
import ipaddress
import json
import sys

import click

from throttledetect import __version__
from throttledetect.flows import DEFAULT_IDLE_TIMEOUT_S, build_flows
from throttledetect.read import CaptureError, read_capture
from throttledetect.report import document
from throttledetect.report.text import evidence, table

EXIT_NOTHING_READABLE = 2


def _parse_local(values: tuple[str, ...]):
    nets = []
    for v in values:
        for part in v.split(","):
            part = part.strip()
            if not part:
                continue
            try:
                nets.append(ipaddress.ip_network(part, strict=False))
            except ValueError:
                raise click.BadParameter(f"{part!r} is not an address or CIDR", param_hint="--local")
    return nets or None


def _classified(results):
    from throttledetect.classify import classify
    return [(cap, ft, classify(cap, ft)) for cap, ft in results]


def _read_each(files):
    """Read each file, reporting its warnings; a file with nothing readable is reported and
    skipped, not fatal to the others. Returns (captures, number of files that failed)."""
    caps, failed = [], 0
    for path in files:
        try:
            cap = read_capture(path)
        except CaptureError as e:
            click.echo(f"throttledetect: error: {e}", err=True)
            failed += 1
            continue
        for w in cap.warnings:
            click.echo(f"throttledetect: warning: {path}: {w}", err=True)
        skipped = cap.skipped_summary()
        if skipped:
            click.echo(f"throttledetect: note: {path}: not decoded: {skipped}", err=True)
        caps.append(cap)
    return caps, failed


def _read_all(files, idle_timeout, local):
    caps, failed = _read_each(files)
    return [(cap, build_flows(cap, idle_timeout=idle_timeout, local_nets=local)) for cap in caps], failed


def _emit(text: str, output) -> None:
    if output:
        try:
            with open(output, "w", encoding="utf-8") as f:
                f.write(text)
        except OSError as e:
            raise click.FileError(output, hint=e.strerror or str(e)) from None
    else:
        click.echo(text, nl=not text.endswith("\n"))


_common = [
    click.argument("files", nargs=-1, required=True, type=click.Path()),
    click.option("--idle-timeout", type=float, default=DEFAULT_IDLE_TIMEOUT_S, show_default=True,
                 help="Seconds of silence after which a 5-tuple starts a new flow."),
    click.option("--local", "local", multiple=True, metavar="CIDR",
                 help="Address range(s) of the capturing host's side (repeatable or comma-separated). "
                      "Default: private, CGNAT, link-local and loopback ranges."),
    click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True), help="Write to a file instead of stdout."),
]


def common_options(fn):
    for deco in reversed(_common):
        fn = deco(fn)
    return fn


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="throttledetect")
def cli():
    """Tell from a packet capture whether voice and video calls are being throttled, and how.

    FILES are pcap or pcapng captures, optionally compressed (.gz, .xz, .bz2).
    Exit status: 0 results (warnings go to stderr), 2 nothing readable in any file.
    """


@cli.command()
@common_options
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table", show_default=True)
def flows(files, idle_timeout, local, output, fmt):
    """List the bidirectional flows of each capture (a = the side that sent first)."""
    results, failed = _read_all(files, idle_timeout, _parse_local(local))
    entries = [document.flow_entry(ft, i, ci) for ci, (cap, ft) in enumerate(results) for i in range(len(ft))]
    if fmt == "json":
        doc = {"schema": document.SCHEMA, "captures": [document.capture_entry(c) for c, _ in results], "flows": entries}
        _emit(json.dumps(doc, indent=2) + "\n", output)
    elif fmt == "csv":
        buf = io.StringIO()
        cols = ["id", "capture", "transport", "a", "b", "local", "packets_ab", "packets_ba", "bytes_ab", "bytes_ba",
                "first_ts", "last_ts"]
        w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        w.writerows(entries)
        _emit(buf.getvalue(), output)
    else:
        parts = []
        for ci, (cap, ft) in enumerate(results):
            rows = [[e["id"], e["transport"], e["a"], e["b"], e["local"] or "", e["packets_ab"], e["packets_ba"],
                     e["bytes_ab"], e["bytes_ba"], round(e["last_ts"] - e["first_ts"], 3)]
                    for e in entries if e["capture"] == ci]
            parts.append(f"{cap.path}: {len(cap.packets)} packets, {len(ft)} flows ({cap.format})\n"
                         + table(["id", "proto", "a", "b", "local", "pkts a>b", "pkts b>a", "bytes a>b", "bytes b>a",
                                  "dur s"], rows))
        _emit("\n\n".join(parts) + "\n", output)
    if not results and failed:
        sys.exit(EXIT_NOTHING_READABLE)


@cli.command("classify")
@common_options
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option("--all/--calls", "show_all", default=True, show_default=True,
              help="Table: every flow, or only the call flows and the apps' chat flows.")
def classify_cmd(files, idle_timeout, local, output, fmt, show_all):
    """Label each flow by protocol/app, with a confidence and the sign that matched."""
    from throttledetect.classify.labels import APP_CHAT, is_call
    results, failed = _read_all(files, idle_timeout, _parse_local(local))
    triples = _classified(results)
    entries = []
    for ci, (cap, ft, cl) in enumerate(triples):
        for i in range(len(ft)):
            e = document.flow_entry(ft, i, ci)
            e.update(protocol=cl.labels[i], confidence=round(float(cl.confidence[i]), 3), reason=cl.reasons[i])
            entries.append(e)
    if fmt == "json":
        doc = {"schema": document.SCHEMA, "captures": [document.capture_entry(c) for c, _, _ in triples],
               "flows": entries, "protocols": document.protocol_summary(entries)}
        _emit(json.dumps(doc, indent=2) + "\n", output)
    else:
        parts = []
        for ci, (cap, ft, cl) in enumerate(triples):
            rows = [[e["id"], e["transport"], e["a"], e["b"], e["protocol"], e["confidence"],
                     e["packets_ab"] + e["packets_ba"], e["reason"]]
                    for e in entries if e["capture"] == ci
                    and (show_all or is_call(e["protocol"]) or e["protocol"] in APP_CHAT)]
            calls = sum(1 for e in entries if e["capture"] == ci and is_call(e["protocol"]))
            parts.append(f"{cap.path}: {len(ft)} flows, {calls} call flows\n"
                         + table(["id", "proto", "a", "b", "protocol", "conf", "pkts", "reason"], rows, max_width=60))
        _emit("\n\n".join(parts) + "\n", output)
    if not results and failed:
        sys.exit(EXIT_NOTHING_READABLE)


@cli.command()
@common_options
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option("--bin", "bin_s", type=float, default=1.0, show_default=True, help="Rate-series bin width, seconds.")
@click.option("--alpha", type=click.FloatRange(0.0, 1.0, min_open=True, max_open=True), default=0.01,
              show_default=True, help="False-discovery rate across every test of a capture (Benjamini-Hochberg).")
@click.option("--test", "test_scope", type=click.Choice(["calls", "all"]), default="calls", show_default=True,
              help="Which flows to test: the call flows, or every flow with enough packets (TCP downloads, "
                   "calls that fell back to TCP, captures taken at a server).")
@click.option("--threshold", "thresholds", multiple=True, metavar="NAME=VALUE",
              help="Override a decision threshold (repeatable): alpha, floor.dropping, floor.policing, "
                   "floor.shaping, floor.shaping_spacing, floor.blocking. The JSON output records them.")
def analyze(files, idle_timeout, local, output, fmt, bin_s, alpha, test_scope, thresholds):
    """Read, classify, measure and test each call flow for throttling; summarise per protocol."""
    from throttledetect import pipeline
    from throttledetect.classify.labels import APP_CHAT, is_call
    from throttledetect.detect.config import DEFAULT_CONFIG
    overrides = {"alpha": alpha}
    for item in thresholds:
        name, _, value = item.partition("=")
        try:
            overrides[name.strip()] = float(value)
        except ValueError:
            raise click.BadParameter(f"{item!r} is not NAME=VALUE with a number", param_hint="--threshold")
    try:
        config = DEFAULT_CONFIG.with_thresholds(**overrides)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--threshold")
    caps, failed = _read_each(files)
    analyses = [pipeline.analyze_capture(cap, idle_timeout=idle_timeout, local_nets=_parse_local(local),
                                         bin_s=bin_s, config=config, test=test_scope) for cap in caps]
    doc = pipeline.to_document(analyses)
    if fmt == "json":
        _emit(json.dumps(doc, indent=2) + "\n", output)
    else:
        parts = []
        for ci, c in enumerate(doc["captures"]):
            flows = [f for f in doc["flows"] if f["capture"] == ci]
            span = (c["last_ts"] or 0) - (c["first_ts"] or 0)
            parts.append(f"{c['path']}: {c['packets']} packets, {len(flows)} flows, {span:.1f} s")
        prot_rows = [[p["protocol"], p["flows"], p["packets"], p["bytes"], p.get("verdict", "-"),
                      p.get("summary", "")] for p in doc["protocols"]]
        parts.append("Per protocol:\n" + table(["protocol", "flows", "packets", "bytes", "verdict", "summary"],
                                                prot_rows, max_width=80))
        call_rows = [[f["id"], f["a"], f["b"], f["protocol"], f["packets_ab"] + f["packets_ba"],
                      round(f["last_ts"] - f["first_ts"], 1), f.get("verdict", "-"), f["reason"]]
                     for f in doc["flows"] if is_call(f["protocol"]) or f["protocol"] in APP_CHAT or f.get("tested")]
        if call_rows:
            parts.append("Call flows and the apps' chat flows:\n"
                         + table(["id", "a", "b", "protocol", "pkts", "dur s", "verdict", "why this label"],
                                 call_rows, max_width=60))
        why = evidence(doc["flows"])
        if why:
            parts.append("Evidence (flows whose verdict is not none; --format json has every test):\n" + why)
        _emit("\n\n".join(parts) + "\n", output)
    if not analyses and failed:
        sys.exit(EXIT_NOTHING_READABLE)


# Commands that live in their own modules (one line each; see docs/CONTRACT.md).
COMMAND_MODULES = [
    "throttledetect.commands.capture",
    "throttledetect.commands.replay",
    "throttledetect.commands.simulate",
    "throttledetect.commands.train",
    "throttledetect.commands.validate",
]


def _register_commands() -> None:
    import importlib
    for name in COMMAND_MODULES:
        cli.add_command(importlib.import_module(name).command)


_register_commands()


def main() -> None:
    """Entry point: any unexpected failure becomes one line on stderr, never a traceback."""
    import os
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("throttledetect: aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except SystemExit:
        raise
    except BrokenPipeError:
        sys.exit(0)
    except Exception as e:  # noqa: BLE001 - the promise is "never a traceback"
        from throttledetect.classify.tables import ModelError
        if isinstance(e, ModelError):
            click.echo(f"throttledetect: error: {e}", err=True)
            sys.exit(EXIT_NOTHING_READABLE)
        if os.environ.get("THROTTLEDETECT_DEBUG"):
            raise
        detail = " ".join(f"{type(e).__name__}: {e}".split())
        click.echo(f"throttledetect: internal error: {detail} "
                   "(set THROTTLEDETECT_DEBUG=1 for the traceback)", err=True)
        sys.exit(3)
