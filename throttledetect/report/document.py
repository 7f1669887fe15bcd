"""The JSON output contract (schema "throttledetect/1", see docs/DESIGN.md): plain dicts from results."""
from __future__ import annotations


from throttledetect import verdicts
from throttledetect.flows import FlowTable, transport_name
from throttledetect.read import Capture

SCHEMA = "throttledetect/1"


def capture_entry(cap: Capture) -> dict:
    """cap: a Capture, or a streamed capture's summary (read.chunks.StreamSummary)."""
    first, last = _time_range(cap)
    skipped = {k: v for k, v in ((_status_key(s), n) for s, n in cap.stats["skipped"].items()) if v}
    return {
        "path": cap.path,
        "format": cap.format,
        "packets": int(cap.stats["records"]),
        "bytes": int(cap.stats["bytes"]),
        "first_ts": float(first) / 1e9 if first is not None else None,
        "last_ts": float(last) / 1e9 if last is not None else None,
        "linktype": cap.linktypes[0] if len(cap.linktypes) == 1 else cap.linktypes,
        "skipped": skipped,
        "warnings": [str(w) for w in cap.warnings],
    }


def _time_range(cap) -> tuple:
    if not hasattr(cap, "packets"):
        return cap.first_ns, cap.last_ns
    ts = cap.packets.ts_ns
    return (ts.min(), ts.max()) if len(ts) else (None, None)


def flow_entries(ft: FlowTable, capture_index: int):
    """flow_entry for every flow, in order, as a generator: each address is spelled once, not once
    per flow (a capture of a million DNS flows has far fewer addresses than endpoints)."""
    from throttledetect.read.table import format_endpoint
    n = len(ft)
    if not n:
        return
    spelled = {}

    def spell(hi, lo, port):
        out = []
        for h, l, p in zip(hi.tolist(), lo.tolist(), port.tolist()):
            ip = spelled.get((h, l))
            if ip is None:
                ip = spelled[(h, l)] = format_endpoint(h, l, 0)[:-2]
            out.append(f"{ip}:{p}")
        return out

    a, b = spell(ft.a_hi, ft.a_lo, ft.a_port), spell(ft.b_hi, ft.b_lo, ft.b_port)
    a_loc, b_loc = ft.a_local.tolist(), ft.b_local.tolist()
    names = [transport_name(p) for p in range(256)]
    cols = zip(ft.proto.tolist(), ft.packets_ab.tolist(), ft.packets_ba.tolist(), ft.bytes_ab.tolist(),
               ft.bytes_ba.tolist(), ft.first_ns.tolist(), ft.last_ns.tolist())
    for i, (proto, pab, pba, bab, bba, first, last) in enumerate(cols):
        local = "a" if a_loc[i] and not b_loc[i] else "b" if b_loc[i] and not a_loc[i] else None
        yield {"id": f"{capture_index}:{i}", "capture": capture_index, "transport": names[proto], "a": a[i],
               "b": b[i], "local": local, "packets_ab": pab, "packets_ba": pba, "bytes_ab": bab, "bytes_ba": bba,
               "first_ts": first / 1e9, "last_ts": last / 1e9}


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
