"""Digests of the parts of an analyze document that issue 15's streaming and workers must not change.

tests/golden/flow_tables.json holds, per capture, the SHA-256 of the capture entry (its path left
out) and every flow's identity, counters and classification, as `analyze --format json` printed
them before issue 15 was merged (main at 1c890d7, recorded with `python -m tests.parallel_golden` run on
that tree; the capture entries' call_attempts left out with the detections). Detections and metrics are compared between the serial and
the parallel paths in the same run instead (the detectors evolve; the flow tables must not).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO / "tests" / "golden" / "flow_tables.json"
TABLE_FIELDS = ("id", "capture", "transport", "a", "b", "local", "packets_ab", "packets_ba", "bytes_ab", "bytes_ba",
                "first_ts", "last_ts", "protocol", "confidence", "reason")


def golden_key(path) -> str:
    """captures/NAME for the samples, corpus/SUB/NAME for the shared corpus."""
    p = Path(path)
    parts = p.parts
    if "corpus" in parts:
        return "corpus/" + "/".join(parts[parts.index("corpus") + 1:])
    return "captures/" + p.name


def table_digest(doc: dict) -> str:
    caps = [{k: v for k, v in c.items() if k not in ("path", "call_attempts")} for c in doc["captures"]]
    flows = [{k: f.get(k) for k in TABLE_FIELDS} for f in doc["flows"]]
    text = json.dumps({"captures": caps, "flows": flows}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def golden() -> dict:
    return json.loads(GOLDEN.read_text())["digests"]


def record(made_by: str) -> None:
    """Rewrite GOLDEN from this tree's serial analyze (the keys already in it)."""
    from tests.corpus import CORPUS
    from throttledetect import pipeline
    out = {}
    for key in sorted(golden()):
        kind, rest = key.split("/", 1)
        p = (REPO / "captures" / rest) if kind == "captures" else CORPUS / rest
        out[key] = table_digest(pipeline.to_document([pipeline.analyze_capture(str(p))]))
    GOLDEN.write_text(json.dumps({"digests": out, "made_by": made_by}, indent=1) + "\n")


if __name__ == "__main__":
    import sys
    record(" ".join(sys.argv[1:]) or "tests.parallel_golden")
