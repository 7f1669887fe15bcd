"""The JSON output contract (schema "throttledetect/1", see docs/DESIGN.md): plain dicts from results."""
from __future__ import annotations


from throttledetect import verdicts
from throttledetect.flows import FlowTable, transport_name
from throttledetect.read import Capture

SCHEMA = "throttledetect/1"


def capture_entry(cap: Capture) -> dict:
    ts = cap.packets.ts_ns
    skipped = {k: v for k, v in ((_status_key(s), n) for s, n in cap.stats["skipped"].items()) if v}
    return {
        "path": cap.path,
        "format": cap.format,
        "packets": int(cap.stats["records"]),
        "bytes": int(cap.stats["bytes"]),
        "first_ts": float(ts.min()) / 1e9 if len(ts) else None,
        "last_ts": float(ts.max()) / 1e9 if len(ts) else None,
        "linktype": cap.linktypes[0] if len(cap.linktypes) == 1 else cap.linktypes,
        "skipped": skipped,
        "warnings": [str(w) for w in cap.warnings],
    }


def _status_key(status: int) -> str:
    from throttledetect.read import decode
    return {
        decode.STATUS_LINKTYPE: "unsupported_linktype",
        decode.STATUS_NOT_IP: "not_ip",
        decode.STATUS_TRUNCATED_LINK: "truncated_link",
        decode.STATUS_BAD_IP: "bad_ip",
        decode.STATUS_TRUNCATED_L4: "truncated_transport",
        decode.STATUS_FRAGMENT: "unmatched_fragments",
    }[status]


def flow_entry(ft: FlowTable, i: int, capture_index: int) -> dict:
    local = "a" if ft.a_local[i] and not ft.b_local[i] else "b" if ft.b_local[i] and not ft.a_local[i] else None
    return {
        "id": f"{capture_index}:{i}",
        "capture": capture_index,
        "transport": transport_name(ft.proto[i]),
        "a": ft.endpoint(i, "a"),
        "b": ft.endpoint(i, "b"),
        "local": local,
        "packets_ab": int(ft.packets_ab[i]),
        "packets_ba": int(ft.packets_ba[i]),
        "bytes_ab": int(ft.bytes_ab[i]),
        "bytes_ba": int(ft.bytes_ba[i]),
        "first_ts": int(ft.first_ns[i]) / 1e9,
        "last_ts": int(ft.last_ns[i]) / 1e9,
    }


def protocol_summary(entries: list[dict]) -> list[dict]:
    """Per protocol: how many flows, packets and bytes (detectors add verdicts)."""
    out: dict[str, dict] = {}
    for e in entries:
        p = out.setdefault(e["protocol"], {"protocol": e["protocol"], "flows": 0, "packets": 0, "bytes": 0})
        p["flows"] += 1
        p["packets"] += e["packets_ab"] + e["packets_ba"]
        p["bytes"] += e["bytes_ab"] + e["bytes_ba"]
    return sorted(out.values(), key=lambda p: (-p["bytes"], p["protocol"]))


def merge_protocol_verdicts(parts: list[dict]) -> dict:
    """One protocol's verdicts from one or several captures: the most severe verdict, kinds
    united, summaries joined, and each capture's own line under ``per_capture`` (a with-VPN /
    without-VPN comparison reads those)."""
    verdict = min((p.get("verdict", "none") for p in parts), key=verdicts.SEVERITY.index)
    kinds = [k for k in verdicts.PRECEDENCE if any(k in p.get("kinds", []) for p in parts)]
    out = {"verdict": verdict, "kinds": kinds, "summary": " ".join(p.get("summary", "") for p in parts).strip(),
           "tested_flows": sum(p.get("tested_flows", 0) for p in parts)}
    if len(parts) > 1:
        out["per_capture"] = [{k: p[k] for k in ("capture", "verdict", "kinds", "summary", "rate_bps") if k in p}
                              for p in parts]
    rates = [float(p["rate_bps"]) for p in parts if p.get("rate_bps") and p.get("verdict") == verdict]
    if len(rates) == 1:
        out["rate_bps"] = rates[0]
    elif rates:
        # one cap in every capture (the same policer or shaper met again) is a finding in itself
        out["rates_bps"] = rates
        common = verdicts.common_rate(rates)
        if common is not None:
            out["rate_bps"] = common
            out["summary"] += (f" Common {verdict} rate across {len(rates)} captures: "
                               f"{verdicts.fmt_rate(common)} (all within {verdicts.RATE_AGREEMENT:.0%}).")
    return out
