"""The JSON document of an analysis (pipeline.to_document), with a per-capture view added.

Several captures on one command line are merged per protocol by the contract (`protocols`); a
comparison (with and without a VPN, two ISPs, before and after) needs each capture's own verdicts
too, so each capture entry gets its own `protocols` list, made the same way from that capture
alone. Everything else that renders results (text, CSV, HTML, compare, history) reads this dict.
"""
from __future__ import annotations


def document_from(analyses: list) -> dict:
    from throttledetect import pipeline
    return document_from_parts([pipeline.capture_part(a) for a in analyses])


def document_from_parts(parts: list) -> dict:
    """document_from, from each capture's pipeline.capture_part() (made in this process or another)."""
    from throttledetect import pipeline
    doc = pipeline.document_from_parts(parts)
    if len(parts) > 1:      # with one capture the merged rows are its own
        for ci, part in enumerate(parts):
            doc["captures"][ci]["protocols"] = pipeline.document_from_parts([part])["protocols"]
    return doc


def capture_protocols(doc: dict, ci: int) -> list[dict]:
    """One capture's per-protocol rows (documents written before the per-capture view: derived
    from the merged rows when there is one capture, else from its flows without verdicts)."""
    caps = doc.get("captures") or []
    if ci < len(caps) and "protocols" in caps[ci]:
        return caps[ci]["protocols"]
    if len(caps) == 1:
        return doc.get("protocols", [])
    from throttledetect.report.document import protocol_summary
    return protocol_summary([f for f in doc.get("flows", []) if f.get("capture") == ci])
