"""The detectors' calibratable thresholds, or an identity stand-in until they exist.

The lead exposes ``throttledetect.verdicts.CALIBRATION_GRID`` (a list of dicts of threshold
overrides) and ``throttledetect.verdicts.rescore(doc_flows_and_protocols, overrides)`` (the same
structure with the verdicts recomputed from the stored detections). The harness calls them
through this module: without them the grid has one point, ``{}``, and rescoring returns the
entries as they are, so every table is the detectors' own verdicts.
"""
from __future__ import annotations


def _verdicts():
    try:
        from throttledetect import verdicts
    except ImportError:
        return None
    if not hasattr(verdicts, "CALIBRATION_GRID") or not hasattr(verdicts, "rescore"):
        return None
    return verdicts


def grid() -> list[dict]:
    """The grid of threshold overrides to choose from (one identity point when none is exposed)."""
    v = _verdicts()
    if v is None:
        return [{}]
    g = [dict(x) for x in v.CALIBRATION_GRID]
    return g or [{}]


def available() -> bool:
    return _verdicts() is not None


def rescore(entries: dict, overrides: dict) -> dict:
    """entries = {"flows": [...], "protocols": [...]} as stored; the same with verdicts
    recomputed under `overrides` (identity for the empty overrides or without the lead's API)."""
    v = _verdicts()
    if v is None or not overrides:
        return entries
    return v.rescore(entries, overrides)
