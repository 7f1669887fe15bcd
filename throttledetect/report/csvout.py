"""CSV for spreadsheets and scripts, from the JSON document.

`analyze` writes one table in long form: a row per (capture, protocol) with the verdict and its
rate, then a row per call attempt, then a row per flow (`level` says which), so one filter in a
spreadsheet gives either view.
Text cells that a spreadsheet would run as a formula (starting with = + - @, tab or CR) get a
leading apostrophe: a STUN realm or SNI from a capture must not become a formula (CSV injection).
"""
from __future__ import annotations

import csv
import io

from throttledetect.report.build import capture_protocols

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")

FLOW_COLUMNS = ["id", "capture", "transport", "a", "b", "local", "packets_ab", "packets_ba", "bytes_ab", "bytes_ba",
                "first_ts", "last_ts"]
CLASSIFY_COLUMNS = FLOW_COLUMNS[:2] + ["capture_path"] + FLOW_COLUMNS[2:] + ["protocol", "confidence", "reason"]
ANALYZE_COLUMNS = ["level", "capture", "capture_path", "protocol", "id", "call", "local_endpoint",
                   "remote_endpoint", "transport", "flows", "packets", "bytes", "duration_s", "verdict", "kinds",
                   "rate_bps", "burst_bytes", "onset_s", "loss_to_you", "jitter_to_you_ms", "summary"]


def safe(value):
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def write_rows(columns: list[str], rows: list[dict]) -> str:
    return "".join(iter_rows(columns, rows))


def iter_rows(columns: list[str], rows, batch: int = 4096):
    """write_rows as text pieces of `batch` rows: rows may be a generator of any length."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for count, r in enumerate(rows, 1):
        w.writerow({k: safe(v) for k, v in r.items()})
        if count % batch == 0:
            yield buf.getvalue()
            buf.seek(0)
            buf.truncate()
    yield buf.getvalue()


def flows_csv(entries: list[dict]) -> str:
    return write_rows(FLOW_COLUMNS, entries)


def classify_csv(doc: dict) -> str:
    paths = [c["path"] for c in doc["captures"]]
    return write_rows(CLASSIFY_COLUMNS, [dict(f, capture_path=paths[f["capture"]]) for f in doc["flows"]])


def analyze_csv(doc: dict) -> str:
    from throttledetect.report.analyze_text import sides
    from throttledetect.report.summary import flow_direction_stats
    paths = [c["path"] for c in doc["captures"]]
    rows = []
    for ci, path in enumerate(paths):
        for p in capture_protocols(doc, ci):
            rows.append({"level": "protocol", "capture": ci, "capture_path": path, "protocol": p["protocol"],
                         "flows": p["flows"], "packets": p["packets"], "bytes": p["bytes"],
                         "verdict": p.get("verdict"), "kinds": " ".join(p.get("kinds", [])),
                         "rate_bps": _round(p.get("rate_bps")), "summary": p.get("summary")})
    for ci, c in enumerate(doc["captures"]):
        for a in c.get("call_attempts", []):
            rows.append({"level": "attempt", "capture": ci, "capture_path": paths[ci], "protocol": a["app"],
                         "id": f"{ci}:{a['id']}", "call": f"{ci}:{a['id']}", "local_endpoint": a["local"],
                         "remote_endpoint": " ".join(a["tried"]),
                         "flows": len(a["flows"]), "packets": a["sent"] + a["received"],
                         "duration_s": a["duration_s"], "verdict": a["verdict"],
                         "kinds": a.get("media_verdict", ""), "summary": a.get("reason", "")})
    for f in doc["flows"]:
        local, remote, _ = sides(f)
        main = _verdict_detection(f)
        st = flow_direction_stats(f, inbound=True)
        rows.append({"level": "flow", "capture": f["capture"], "capture_path": paths[f["capture"]],
                     "protocol": f["protocol"], "id": f["id"],
                     "call": f"{f['capture']}:{f['call']}" if f.get("call") is not None else "",
                     "local_endpoint": local, "remote_endpoint": remote,
                     "transport": f["transport"], "flows": 1, "packets": f["packets_ab"] + f["packets_ba"],
                     "bytes": f["bytes_ab"] + f["bytes_ba"], "duration_s": round(f["last_ts"] - f["first_ts"], 3),
                     "verdict": f.get("verdict"), "kinds": main.get("kind", ""),
                     "rate_bps": _round(main.get("rate_bps")), "burst_bytes": _round(main.get("burst_bytes")),
                     "onset_s": main.get("onset_s"), "loss_to_you": _round(st.loss, 5),
                     "jitter_to_you_ms": _round(st.jitter_ms, 3), "summary": main.get("evidence", "")})
    return write_rows(ANALYZE_COLUMNS, rows)


def _verdict_detection(f: dict) -> dict:
    """The detection that made the flow's verdict (detected, of the verdict's kind), if any."""
    for d in f.get("detections") or []:
        if d.get("kind") == f.get("verdict") and d.get("decision") == "detected":
            return d
    return {}


def _round(v, digits: int = 1):
    return None if v is None else round(float(v), digits)
