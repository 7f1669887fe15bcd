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
    for row in _flow_rows(ft, capture_index):
        yield dict(zip(FLOW_KEYS, row))


FLOW_KEYS = ("id", "capture", "transport", "a", "b", "local", "packets_ab", "packets_ba", "bytes_ab", "bytes_ba",
             "first_ts", "last_ts")
# json.dumps(flow_entry, indent=2) as an item of the document's "flows" list; the values put in are
# JSON already (endpoints and transport names never need escaping: digits, hex, '.', ':', '[', ']')
_FLOW_JSON = ('{{\n      "id": "{}:{}",\n      "capture": {},\n      "transport": "{}",\n      "a": "{}",\n'
              '      "b": "{}",\n      "local": {},\n      "packets_ab": {},\n      "packets_ba": {},\n'
              '      "bytes_ab": {},\n      "bytes_ba": {},\n      "first_ts": {!r},\n      "last_ts": {!r}\n    }}')


def flow_entries_json(ft: FlowTable, capture_index: int):
    """The JSON text of each flow_entry, as report.jsonout.dumps_pieces takes items: byte for byte
    json.dumps's, without building the dicts (a million flows take about a second)."""
    fmt = _FLOW_JSON.format
    for (_, ci, tr, a, b, local, pab, pba, bab, bba, first, last), i in zip(_flow_rows(ft, capture_index),
                                                                           range(len(ft))):
        yield fmt(ci, i, ci, tr, a, b, "null" if local is None else f'"{local}"', pab, pba, bab, bba, first, last)


def _flow_rows(ft: FlowTable, capture_index: int):
    from throttledetect.read.table import format_endpoint
    n = len(ft)
    if not n:
        return
    spelled = {}

    def spell(h, lo, p):
        ip = spelled.get((h, lo))
        if ip is None:
            ip = spelled[(h, lo)] = format_endpoint(h, lo, 0)[:-2]
        return f"{ip}:{p}"

    names = [transport_name(p) for p in range(256)]
    step = 1 << 16       # columns turned into Python values a slice at a time, not a million at once
    for s0 in range(0, n, step):
        sl = slice(s0, s0 + step)
        cols = zip(*(getattr(ft, c)[sl].tolist() for c in ("proto", "a_hi", "a_lo", "a_port", "b_hi", "b_lo",
                                                            "b_port", "packets_ab", "packets_ba", "bytes_ab",
                                                            "bytes_ba", "first_ns", "last_ns", "a_local", "b_local")))
        for i, (proto, ah, al, ap, bh, bl, bp, pab, pba, bab, bba, first, last, al_, bl_) in enumerate(cols, s0):
            local = "a" if al_ and not bl_ else "b" if bl_ and not al_ else None
            yield (f"{capture_index}:{i}", capture_index, names[proto], spell(ah, al, ap), spell(bh, bl, bp), local,
                   pab, pba, bab, bba, first / 1e9, last / 1e9)


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
