"""Command line: parse options, call the library, render. No analysis logic lives here.

Exit statuses (README "Exit statuses"): 0 results written; 1 what --fail-on asks for was found;
2 bad options or an input that could not be read (results for the readable ones are still
written); 3 internal error; 130 interrupted. Heavy modules (numba, scipy, matplotlib) are imported
inside the commands that need them, so `--help` and option errors are instant.
"""
from __future__ import annotations

import sys

import click

from throttledetect import __version__
from throttledetect.commands.options import (ANALYSIS_OPTIONS, EXIT_BAD_INPUT, EXIT_FOUND, EXIT_INTERNAL,
                                             EXIT_INTERRUPTED, FAIL_ON, FILES, OUTPUT, READ_OPTIONS, VERIFY, Number,
                                             OutputFile, Tag, analysis_settings, check_outputs, flatten_networks,
                                             options)
from throttledetect.report.terminal import output_width, sanitize

EXIT_NOTHING_READABLE = EXIT_BAD_INPUT      # the name older code and tests use


class Run:
    """One command's session: the progress line on stderr and the messages printed around it."""

    def __init__(self):
        from throttledetect.progress import Progress
        self.progress = Progress()

    def say(self, line: str) -> None:
        if self.progress.enabled:
            self.progress.note(line)
        else:
            click.echo(sanitize(line, keep_newlines=True), err=True)

    def first_run_note(self) -> None:
        """Tell a person at a terminal why the very first run takes ~10 s (numba compiling)."""
        if not self.progress.enabled:
            return
        from throttledetect import jit
        from throttledetect.read import blocks
        if jit.cache_is_warm(blocks.read_pcap_records) is False:
            where = f" (cached in {jit.CACHE.path})" if jit.CACHE.path else " (no writable cache directory: every run)"
            self.say("throttledetect: note: first run: compiling the packet decoders, about 10 s" + where)

    def read(self, files):
        from throttledetect.inputs import InputError, expand, read_all
        try:
            paths = expand(files)
        except InputError as e:
            raise click.BadParameter(str(e), param_hint="FILES") from None
        self.first_run_note()
        return read_all(paths, progress=self.progress, say=self.say)

    def stream(self, files, consume):
        """read() for the streaming reader: (StreamSummary, consume(stream)) per capture."""
        from throttledetect.inputs import InputError, expand, stream_all
        try:
            paths = expand(files)
        except InputError as e:
            raise click.BadParameter(str(e), param_hint="FILES") from None
        self.first_run_note()
        return stream_all(paths, consume, progress=self.progress, say=self.say)

    def close(self) -> None:
        self.progress.close()
        client = getattr(self, "client", None)
        if client is not None:
            client.close()


def _emit(text: str, output) -> None:
    """Write a result to `output` (atomically) or stdout (sanitised when it is a terminal)."""
    if output:
        from throttledetect.report.output import OutputError, write_atomic
        try:
            write_atomic(output, text)
        except OutputError as e:
            raise click.ClickException(str(e)) from None
    else:
        if sys.stdout.isatty():
            text = sanitize(text, keep_newlines=True)
        click.echo(text, nl=not text.endswith("\n"))


def _emit_pieces(pieces, output, end: str = "") -> None:
    """_emit for a document made piece by piece (never held whole)."""
    if output:
        from throttledetect.report.output import OutputError, write_atomic

        def all_pieces():
            yield from pieces
            yield end
        try:
            write_atomic(output, all_pieces())
        except OutputError as e:
            raise click.ClickException(str(e)) from None
        return
    tty = sys.stdout.isatty()
    for piece in pieces:
        click.echo(sanitize(piece, keep_newlines=True) if tty else piece, nl=False)
    click.echo(end, nl=False)


def _exit_status(loaded, found: bool = False) -> None:
    if loaded.failed:
        sys.exit(EXIT_BAD_INPUT)
    if found:
        sys.exit(EXIT_FOUND)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="throttledetect")
def cli():
    """Tell from a packet capture whether voice and video calls are being throttled, and how.

    FILES are pcap or pcapng captures, optionally compressed (.gz, .xz, .bz2), folders of them,
    or - for standard input (tcpdump -w - | throttledetect analyze -).

    \b
    Exit status: 0 results written (warnings go to stderr)
                 1 --fail-on: throttling (or what was asked for) found
                 2 bad options, or an input could not be read (results for the others are written)
                 3 internal error
    """


@cli.command()
@FILES
@options(READ_OPTIONS)
@OUTPUT
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table", show_default=True)
def flows(files, idle_timeout, local, output, fmt):
    """List the bidirectional flows of each capture (a = the side that sent first)."""
    from throttledetect.flows_stream import stream_flows
    from throttledetect.report import document
    from throttledetect.report.text import table
    check_outputs({"--output": output}, files)
    nets = flatten_networks(local)
    run = Run()
    try:
        # Read chunk by chunk: memory holds one chunk of packets and the flow counters, whatever
        # the capture's size (docs/DESIGN.md, "Big captures").
        loaded = run.stream(files, lambda stream: stream_flows(stream, idle_timeout=idle_timeout, local_nets=nets,
                                                               say=run.say, progress=run.progress))
        results = loaded.captures
    finally:
        run.close()

    def entries():
        for ci, (_, ft) in enumerate(results):
            yield from document.flow_entries(ft, ci)

    if fmt == "json":
        from throttledetect.report.jsonout import dumps_pieces
        head = {"schema": document.SCHEMA, "captures": [document.capture_entry(c) for c, _ in results]}
        items = (text for ci, (_, ft) in enumerate(results) for text in document.flow_entries_json(ft, ci))
        _emit_pieces(dumps_pieces(head, "flows", items), output, end="\n")
    elif fmt == "csv":
        from throttledetect.report.csvout import FLOW_COLUMNS, iter_rows
        _emit_pieces(iter_rows(FLOW_COLUMNS, entries()), output)
    else:
        width = output_width(to_terminal=not output)
        parts = []
        for ci, (cap, ft) in enumerate(results):
            rows = [[e["id"], e["transport"], e["a"], e["b"], e["local"] or "", e["packets_ab"], e["packets_ba"],
                     e["bytes_ab"], e["bytes_ba"], round(e["last_ts"] - e["first_ts"], 3)]
                    for e in document.flow_entries(ft, ci)]
            parts.append(f"{cap.path}: {cap.stats['records']} packets, {len(ft)} flows ({cap.format})\n"
                         + table(["id", "proto", "a", "b", "local", "pkts a>b", "pkts b>a", "bytes a>b", "bytes b>a",
                                  "dur s"], rows, width=width))
        _emit("\n\n".join(parts) + "\n", output)
    _exit_status(loaded)


@cli.command("classify")
@FILES
@options(READ_OPTIONS)
@OUTPUT
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table", show_default=True)
@click.option("--all/--calls", "show_all", default=True, show_default=True,
              help="Table: every flow, or only the call flows and the apps' chat flows.")
def classify_cmd(files, idle_timeout, local, output, fmt, show_all):
    """Label each flow by protocol/app, with a confidence and the sign that matched."""
    from throttledetect.classify import classify
    from throttledetect.classify.labels import APP_CHAT, is_call
    from throttledetect.flows import build_flows
    from throttledetect.report import document
    from throttledetect.report.text import table
    check_outputs({"--output": output}, files)
    run = Run()
    try:
        loaded = run.read(files)
        triples = []
        for cap in loaded.captures:
            run.progress.show(f"classifying {cap.path}")
            ft = build_flows(cap, idle_timeout=idle_timeout, local_nets=flatten_networks(local))
            triples.append((cap, ft, classify(cap, ft)))
    finally:
        run.close()
    entries = []
    for ci, (cap, ft, cl) in enumerate(triples):
        for i in range(len(ft)):
            e = document.flow_entry(ft, i, ci)
            e.update(protocol=cl.labels[i], confidence=round(float(cl.confidence[i]), 3), reason=cl.reasons[i])
            entries.append(e)
    doc = {"schema": document.SCHEMA, "captures": [document.capture_entry(c) for c, _, _ in triples],
           "flows": entries, "protocols": document.protocol_summary(entries)}
    if fmt == "json":
        from throttledetect.report.jsonout import indented
        _emit(indented(doc) + "\n", output)
    elif fmt == "csv":
        from throttledetect.report.csvout import classify_csv
        _emit(classify_csv(doc), output)
    else:
        width = output_width(to_terminal=not output)
        parts = []
        for ci, (cap, ft, cl) in enumerate(triples):
            rows = [[e["id"], e["transport"], e["a"], e["b"], e["protocol"], e["confidence"],
                     e["packets_ab"] + e["packets_ba"], e["reason"]]
                    for e in entries if e["capture"] == ci
                    and (show_all or is_call(e["protocol"]) or e["protocol"] in APP_CHAT)]
            calls = sum(1 for e in entries if e["capture"] == ci and is_call(e["protocol"]))
            parts.append(f"{cap.path}: {len(ft)} flows, {calls} call flows\n"
                         + table(["id", "proto", "a", "b", "protocol", "conf", "pkts", "reason"], rows,
                                 width=width, wrap=("reason",)))
        _emit("\n\n".join(parts) + "\n", output)
    _exit_status(loaded)


def _html_available(ctx, param, value):
    if value:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise click.BadParameter("the HTML report needs matplotlib: pip install matplotlib") from None
    return value


REPORT_OPTIONS = [
    click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table", show_default=True,
                 help="What -o (or stdout) gets: the terminal tables, the JSON document, or CSV (a row per "
                      "capture and protocol, then per flow)."),
    click.option("--html", "html", type=OutputFile(), callback=_html_available, metavar="FILE",
                 help="Also write a self-contained HTML report (figures per call; no network needed to view)."),
    click.option("--db", type=OutputFile(), metavar="FILE",
                 help="Also keep each capture's per-protocol results in this SQLite database "
                      "(see `throttledetect history`); a capture analysed again is updated, not duplicated."),
    click.option("--tag", "tags", type=Tag(), multiple=True,
                 help="KEY=VALUE stored with the results in --db (repeatable), e.g. --tag isp=acme --tag city=Kazan."),
    FAIL_ON,
    VERIFY,
    click.option("--stdin-name", hidden=True, help="Name for the capture read from standard input."),
    click.option("--live", is_flag=True,
                 help="With - (a capture arriving on a pipe): print each call's verdict as it forms, updated every "
                      "--live-every seconds of capture time, then the full report at the end."),
    click.option("--live-every", type=Number(0.2, 3600), default=2.0, show_default=True, metavar="SECONDS",
                 help="--live: capture time between two looks at the capture so far."),
    click.option("--scheduler", metavar="tcp://HOST:PORT",
                 help="Run the work on a Dask distributed cluster: each capture, or a capture's call flows, on its "
                      "workers (the captures must be at the same paths there). README: \"Big captures\"."),
    click.option("--workers", type=click.IntRange(1, 256), metavar="N",
                 help="Processes to use: several captures are analysed side by side, and a capture's call flows "
                      "are tested side by side (default: every core). The results are the same for any N."),
]


@cli.command()
@FILES
@options(READ_OPTIONS)
@options(ANALYSIS_OPTIONS)
@OUTPUT
@options(REPORT_OPTIONS)
def analyze(files, output, fmt, html, db, tags, fail_on, verify, stdin_name, live, live_every, scheduler, workers,
            **params):
    """Read, classify, measure and test each call flow for throttling; summarise per protocol
    (and per capture when there are several)."""
    from throttledetect.api import Report, run_analyses, run_parts
    from throttledetect.inputs import STDIN, InputError, expand
    from throttledetect.parallel import analyze_files, default_workers
    from throttledetect.report.build import document_from, document_from_parts
    if tags and not db:
        raise click.BadParameter("tags are stored with --db FILE; give one", param_hint="--tag")
    check_outputs({"--output": output, "--html": html, "--db": db}, files)
    settings = analysis_settings(params)
    try:
        paths = expand(files)
    except InputError as e:
        raise click.BadParameter(str(e), param_hint="FILES") from None
    if live and paths != [STDIN]:
        raise click.BadParameter("--live reads a capture as it arrives: give - (standard input) as the only input",
                                 param_hint="--live")
    if scheduler and STDIN in paths:
        raise click.BadParameter("a cluster's workers cannot read this standard input: give capture files",
                                 param_hint="--scheduler")
    run = Run()
    try:
        run.first_run_note()
        live_run, stdin_file = _live(settings, live_every, stdin_name, run) if live else (None, None)
        workers = workers or default_workers()
        client = run.client = _cluster(scheduler) if scheduler else None
        # the HTML report, the database and --verify need each capture's packets in this process:
        # with them the captures go one after another (flows side by side)
        whole = html or db or verify
        if client is not None and len(paths) > 1 and not whole:
            from throttledetect.cluster import file_mapper
            parts, loaded = analyze_files(paths, settings, workers=workers, progress=run.progress, say=run.say,
                                          mapper=file_mapper(client))
            report = Report(document_from_parts(parts), [], loaded.failed) if parts else None
        elif client is not None:
            analyses, loaded = _cluster_analyses(client, paths, settings, run)
            report = Report(document_from(analyses), analyses, loaded.failed) if analyses else None
        elif workers > 1 and len(paths) > 1 and STDIN not in paths and not whole:
            parts, loaded = analyze_files(paths, settings, workers=workers, progress=run.progress, say=run.say)
            report = Report(document_from_parts(parts), [], loaded.failed) if parts else None
        elif not whole:
            # the document is all that is written: each capture let go as its part is made
            # JSON: each flow's metrics written to a temporary file as they are measured, copied into
            # the output when it is written (report/spill.py); CSV and text read them as values
            spill = fmt == "json" and live_run is None
            parts, loaded = run_parts(paths, dict(settings, workers=workers, spill_metrics=spill),
                                      progress=run.progress, say=run.say,
                                      stdin_name=stdin_name, stdin_file=stdin_file)
            report = Report(document_from_parts(parts), [], loaded.failed) if parts else None
        else:
            analyses, loaded = run_analyses(paths, dict(settings, workers=workers), progress=run.progress,
                                            say=run.say, stdin_name=stdin_name, stdin_file=stdin_file)
            if analyses and (html or db):
                run.progress.show("writing the reports")
            report = Report(document_from(analyses), analyses, loaded.failed) if analyses else None
        if report is not None and verify and report.analyses:
            from throttledetect.verify import verify_analyses
            report.document["verify"] = verify_analyses(report.analyses, progress=run.progress)
        if live_run is not None and report is not None:
            live_run.final(report.document)      # the live view ends on the report's verdicts
        if report is not None and html:
            report.write_html(html)
        if report is not None and db:
            report.save(db, dict(tags), settings)
    except InputError as e:
        raise click.ClickException(str(e)) from None
    finally:
        run.close()
    if report is None:
        sys.exit(EXIT_BAD_INPUT)          # nothing readable: an existing -o report is left as it was
    verified = ""
    if verify:
        from throttledetect.verify import summary_line
        verified = summary_line(report.document.get("verify"))
    if fmt == "json":
        _emit_pieces(report.json_pieces(), output)
    elif fmt == "csv":
        _emit(report.to_csv(), output)
    else:
        from throttledetect.report.analyze_text import render
        text = render(report.document, width=output_width(to_terminal=not output))
        _emit(text + (verified + "\n" if verified else ""), output)
        verified = ""
    if verified:
        click.echo(sanitize(f"throttledetect: note: {verified}"), err=True)
    _exit_status(loaded, report.found(fail_on))


def _cluster(address: str):
    from throttledetect.cluster import connect
    try:
        return connect(address)
    except RuntimeError as e:
        raise click.ClickException(str(e)) from None


def _cluster_analyses(client, paths, settings: dict, run: "Run"):
    """Each capture read here, its call flows tested on the cluster."""
    import os
    from throttledetect import pipeline
    from throttledetect.cluster import flow_mapper
    from throttledetect.inputs import read_all
    loaded = read_all(paths, progress=run.progress, say=run.say)
    analyses = []
    for cap in loaded.captures:
        run.progress.show(f"analysing {cap.path}: call flows on the cluster")
        analyses.append(pipeline.analyze_capture(cap, **settings,
                                                 map_flows=flow_mapper(client, os.path.abspath(cap.path), settings)))
    run.progress.clear()
    return analyses, loaded


def _live(settings: dict, every_s: float, stdin_name, run: "Run"):
    """Standard input spooled while live verdicts are printed; the spool for the final report."""
    from throttledetect.inputs import STDIN_NAME, InputError, _scratch_file
    from throttledetect.live import LiveAnalysis
    try:
        fd = sys.stdin.buffer.fileno()
    except (OSError, ValueError, AttributeError):
        raise InputError(f"{STDIN_NAME}: byte 0: standard input is closed") from None
    import os
    if os.isatty(fd):
        raise InputError(f"{STDIN_NAME}: byte 0: standard input is a terminal; pipe a capture in, e.g. "
                         "tcpdump -i eth0 -w - -U | throttledetect analyze - --live")
    spool = _scratch_file()
    run.say(f"throttledetect: live: verdicts every {every_s:g} s of capture time as the capture arrives")
    live = LiveAnalysis(dict(settings, workers=1), name=stdin_name or STDIN_NAME, say=run.say, every_s=every_s)
    live.run(fd, spool)
    if spool.tell() == 0:
        raise InputError(f"{STDIN_NAME}: byte 0: nothing arrived on standard input")
    return live, spool


# Commands that live in their own modules (one line each; see docs/CONTRACT.md).
COMMAND_MODULES = [
    "throttledetect.commands.capture",
    "throttledetect.commands.simulate",
    "throttledetect.commands.train",
    "throttledetect.commands.validate",
    "throttledetect.commands.compare",
    "throttledetect.commands.history",
    "throttledetect.commands.replay",
]


def _register_commands() -> None:
    import importlib
    for name in COMMAND_MODULES:
        cli.add_command(importlib.import_module(name).command)


_register_commands()


def _usage_error_line(e: click.UsageError) -> str:
    msg = " ".join(e.format_message().split())
    where = e.ctx.command_path if e.ctx is not None else "throttledetect"
    return f"throttledetect: error: {msg} (see '{where} --help')"


def main() -> None:
    """Entry point: any failure becomes one line on stderr and an exit status, never a traceback."""
    import os
    try:
        cli.main(prog_name="throttledetect", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("throttledetect: aborted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except KeyboardInterrupt:
        click.echo("throttledetect: interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except click.UsageError as e:
        click.echo(sanitize(_usage_error_line(e)), err=True)
        sys.exit(EXIT_BAD_INPUT)
    except click.ClickException as e:
        if type(e).show is click.ClickException.show:
            click.echo(sanitize(f"throttledetect: error: {' '.join(e.format_message().split())}"), err=True)
        else:
            e.show()
        # click's default status 1 would read as "throttling found": an error here is bad input
        sys.exit(EXIT_BAD_INPUT if e.exit_code in (0, 1) else e.exit_code)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except SystemExit:
        raise
    except BrokenPipeError:
        sys.exit(0)
    except Exception as e:  # noqa: BLE001 - the promise is "never a traceback"
        from throttledetect.classify.tables import ModelError
        if isinstance(e, ModelError):
            click.echo(f"throttledetect: error: {sanitize(e)}", err=True)
            sys.exit(EXIT_BAD_INPUT)
        if os.environ.get("THROTTLEDETECT_DEBUG"):
            raise
        detail = " ".join(f"{type(e).__name__}: {e}".split())
        click.echo(sanitize(f"throttledetect: internal error: {detail} "
                            "(set THROTTLEDETECT_DEBUG=1 for the traceback)"), err=True)
        sys.exit(EXIT_INTERNAL)
