"""The Python API: what the `analyze` and `compare` commands do, for a notebook or a script.

    import throttledetect
    report = throttledetect.analyze("call.pcap")          # or several paths, a folder, local=["10.0.0.0/8"]
    report.verdicts()                                     # {"whatsapp_call": "policing", "tls": "untested", ...}
    report.throttled                                      # True when any protocol's verdict is a throttling kind
    report.calls()                                        # the call flows (dicts of the JSON document)
    report.document                                       # the whole JSON document (docs/DESIGN.md)
    report.write_html("report.html")                      # the HTML report (needs matplotlib)
    throttledetect.compare("without_vpn.pcap", "with_vpn.pcap").table()

Everything returned is plain data (dicts, lists, dataclasses, numpy arrays); the analysis objects
of each capture (packets, flows, classification) are in `report.analyses` for deeper work.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

THROTTLING_KINDS = ("shaping", "policing", "dropping", "blocking")


@dataclass
class Report:
    document: dict
    analyses: list = field(default_factory=list, repr=False)     # pipeline.CaptureAnalysis per capture read
    unreadable: list = field(default_factory=list)               # (name, one-line reason) per input not read

    @property
    def captures(self) -> list[dict]:
        return self.document["captures"]

    @property
    def flows(self) -> list[dict]:
        return self.document["flows"]

    @property
    def protocols(self) -> list[dict]:
        return self.document["protocols"]

    def verdicts(self, capture: int | None = None) -> dict[str, str]:
        """Protocol -> verdict, over all captures together or for one capture (its index)."""
        from throttledetect.report.build import capture_protocols
        rows = self.protocols if capture is None else capture_protocols(self.document, capture)
        return {p["protocol"]: p.get("verdict", "none") for p in rows}

    @property
    def throttled(self) -> bool:
        return any(v in THROTTLING_KINDS for v in self.verdicts().values())

    def found(self, fail_on: str) -> bool:
        """Whether `--fail-on fail_on` would exit 1: "throttled", "inconclusive" (or throttled), "never"."""
        wanted = {"never": (), "throttled": THROTTLING_KINDS,
                  "inconclusive": THROTTLING_KINDS + ("inconclusive",)}[fail_on]
        return any(v in wanted for v in self.verdicts().values())

    def calls(self) -> list[dict]:
        from throttledetect.classify.labels import is_call
        return [f for f in self.flows if is_call(f["protocol"])]

    def to_json(self) -> str:
        from throttledetect.report.jsonout import indented
        return indented(self.document) + "\n"

    def json_pieces(self):
        """to_json() as text pieces, flow by flow: a document of many flows is never one string."""
        from throttledetect.report.jsonout import dumps_pieces
        doc = self.document
        yield from dumps_pieces({k: v for k, v in doc.items() if k != "flows"}, "flows", iter(doc["flows"]),
                                keys=list(doc))
        yield "\n"

    def to_csv(self) -> str:
        from throttledetect.report.csvout import analyze_csv
        return analyze_csv(self.document)

    def to_text(self, width: int = 100) -> str:
        from throttledetect.report.analyze_text import render
        return render(self.document, width=width)

    def to_html(self) -> str:
        from throttledetect.report.html import render_html
        return render_html(self.document, self.analyses)

    def write_html(self, path: str | os.PathLike) -> None:
        from throttledetect.report.output import write_atomic
        write_atomic(path, self.to_html())

    def save(self, db: str | os.PathLike, tags: dict | None = None, settings: dict | None = None) -> list[int]:
        """Keep each capture's per-protocol results in the results database (see throttledetect.store)."""
        from throttledetect.store import Store
        with Store(db) as store:
            return store.record(self, tags or {}, settings or {})


def analyze(*paths, idle_timeout: float = 60.0, local=None, bin_s: float = 1.0, alpha: float | None = None,
            progress=None, say=None, **settings) -> Report:
    """Analyse capture files (paths, folders of captures, or "-" for standard input).

    Inputs that cannot be read are listed in `Report.unreadable`; when none can be read, the first
    one's CaptureError is raised. `local` is a list of address ranges ("10.0.0.0/8") of the
    capturing host's side; alpha None is the shipped FDR level (verdicts.DEFAULTS); other
    keywords go to pipeline.analyze_capture.
    """
    from throttledetect.inputs import expand
    from throttledetect.read import CaptureError
    if len(paths) == 1 and isinstance(paths[0], (list, tuple)):
        paths = tuple(paths[0])
    if not paths:
        raise TypeError("analyze() needs at least one path")
    settings = dict(settings, idle_timeout=idle_timeout, local_nets=_networks(local), bin_s=bin_s, alpha=alpha)
    analyses, loaded = run_analyses(expand(paths), settings, progress=progress, say=say or (lambda line: None))
    if not analyses:
        raise CaptureError(loaded.failed[0][1] if loaded.failed else "nothing to analyse")
    from throttledetect.report.build import document_from
    return Report(document_from(analyses), analyses, loaded.failed)


def run_analyses(paths: list[str], settings: dict, *, progress=None, say=None, stdin_name=None, stdin_file=None):
    """Read every path and run the pipeline on each capture read: (analyses, inputs.Loaded).
    stdin_file: standard input already spooled (live verdicts read it as it came)."""
    from throttledetect import pipeline
    from throttledetect.inputs import read_all
    loaded = read_all(paths, progress=progress, say=say, stdin_name=stdin_name, stdin_file=stdin_file)
    analyses = []
    for cap in loaded.captures:
        if progress:
            progress.show(f"analysing {cap.path} ({len(cap.packets)} packets): flows, classification, metrics, tests")
        analyses.append(pipeline.analyze_capture(cap, **settings))
    if progress:
        progress.clear()
    return analyses, loaded


def run_parts(paths: list[str], settings: dict, *, progress=None, say=None, stdin_name=None, stdin_file=None):
    """run_analyses for a caller that needs the document only: each capture read, analysed and
    turned into its document part (pipeline.consume_into_part) before the next one is read, so
    one capture's packets and analysis are held at a time, and never beside its document part.
    Returns (parts, inputs.Loaded) with Loaded.captures empty: the captures are let go."""
    from throttledetect import pipeline
    from throttledetect.inputs import Loaded, read_all
    loaded = Loaded()
    parts = []
    for path in paths:
        one = read_all([path], progress=progress, say=say, stdin_name=stdin_name, stdin_file=stdin_file)
        loaded.failed += one.failed
        while one.captures:
            cap = one.captures.pop(0)
            if progress:
                progress.show(f"analysing {cap.path} ({len(cap.packets)} packets): flows, classification, metrics, "
                              "tests")
            analysis = pipeline.analyze_capture(cap, **settings, only_document=True)
            del cap
            parts.append(pipeline.consume_into_part(analysis))
            del analysis
    if progress:
        progress.clear()
    return parts, loaded


def compare(baseline, test, **options):
    """Compare two sets of captures (paths, folders, saved JSON reports, or Reports) per protocol:
    see throttledetect.report.compare.Comparison."""
    from throttledetect.report.compare import compare_documents
    return compare_documents(_document(baseline, options), _document(test, options))


def _document(side, options) -> dict:
    if isinstance(side, Report):
        return side.document
    if isinstance(side, dict):
        return side
    from throttledetect.report.compare import load_side
    return load_side(side if isinstance(side, (list, tuple)) else [side], options)


def _networks(local):
    if not local:
        return None
    import ipaddress
    if isinstance(local, str):
        local = local.split(",")
    return [n if not isinstance(n, str) else ipaddress.ip_network(n.strip(), strict=False) for n in local]
