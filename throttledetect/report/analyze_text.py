"""`analyze` for the terminal: per capture, per protocol (each capture's own rows when there are
several, then all together), the call flows seen from the capturing host, and the evidence.
Everything is read from the JSON document and fitted to `width`."""
from __future__ import annotations

import datetime as _dt

from throttledetect.report.build import capture_protocols
from throttledetect.report.text import evidence, fill, table

GAP_S = 3600.0      # packets further apart than this: the capture's clock jumped (merged or mis-stamped files)


def render(doc: dict, *, width: int) -> str:
    from throttledetect.classify.labels import APP_CHAT, is_call
    parts = ["\n".join(fill(capture_line(doc, ci, c), width) for ci, c in enumerate(doc["captures"]))]
    several = len(doc["captures"]) > 1
    order = {p["protocol"]: k for k, p in enumerate(doc["protocols"])}
    if several:
        rows = []
        for ci, c in enumerate(doc["captures"]):
            for p in capture_protocols(doc, ci):
                rows.append([p["protocol"], f"#{ci}", p["flows"], p["packets"], p.get("verdict", "-"),
                             rate_text(p), p.get("summary", "")])
        rows.sort(key=lambda r: (order.get(r[0], len(order)), int(r[1][1:])))
        parts.append(fill("Per protocol and capture (#n = capture n above; flow ids are capture:flow):", width) + "\n"
                     + table(["protocol", "capture", "flows", "packets", "verdict", "rate", "summary"], rows,
                             width=width, wrap=("summary",)))
        per_capture = verdicts_by_capture(doc)
        prot_rows = [[p["protocol"], p["flows"], p["packets"], p["bytes"], p.get("verdict", "-"), rate_text(p),
                      per_capture.get(p["protocol"], "")] for p in doc["protocols"]]
        parts.append(fill("Per protocol, all captures together (the most severe verdict):", width) + "\n"
                     + table(["protocol", "flows", "packets", "bytes", "verdict", "rate", "verdict per capture"],
                             prot_rows, width=width, wrap=("verdict per capture",)))
    else:
        prot_rows = [[p["protocol"], p["flows"], p["packets"], p["bytes"], p.get("verdict", "-"), p.get("summary", "")]
                     for p in doc["protocols"]]
        parts.append("Per protocol:\n" + table(["protocol", "flows", "packets", "bytes", "verdict", "summary"],
                                                 prot_rows, width=width, wrap=("summary",)))
    call_flows = [f for f in doc["flows"] if is_call(f["protocol"]) or f["protocol"] in APP_CHAT]
    if call_flows:
        guessed = False
        rows = []
        for f in call_flows:
            local, remote, known = sides(f)
            guessed |= not known
            rows.append([f["id"], local + ("" if known else " (?)"), remote, f["protocol"],
                         f["packets_ab"] + f["packets_ba"], round(f["last_ts"] - f["first_ts"], 1),
                         f.get("verdict", "-"), f.get("reason", "")])
        note = "\n" + fill("(?) which side is the capturing host is not known from the addresses (give --local "
                            "CIDR); the side that sent first is shown", width, "") if guessed else ""
        parts.append(fill("Call flows and the apps' chat flows (local = the capturing host, you):", width) + "\n"
                     + table(["id", "local", "remote", "protocol", "pkts", "dur s", "verdict", "why this label"],
                             rows, width=width, wrap=("why this label",)) + note)
    attempts = attempts_table(doc, width)
    if attempts:
        parts.append(attempts)
    why = evidence(doc["flows"], width=width)
    if why:
        parts.append(fill("Evidence (flows whose verdict is not none; --format json has every test):", width) + "\n"
                     + why)
    return "\n\n".join(parts) + "\n"


def attempts_table(doc: dict, width: int) -> str:
    """One line per call attempt: the app, this host, when, what it tried, what came back, and
    whether the call was set up, blocked at setup, or could not be told."""
    rows = []
    for ci, c in enumerate(doc["captures"]):
        for a in c.get("call_attempts", []):
            when = _dt.datetime.fromtimestamp(a["first_ts"], _dt.timezone.utc).strftime("%H:%M:%S")
            got = (f"{a['answered']}/{a['requests']}" if "requests" in a else "-")
            verdict = a["verdict"] + (f": {a['reason']}" if a.get("reason") else "")
            if a.get("media_verdict"):
                verdict += f"; the call's flows: {a['media_verdict']}"
            rows.append([f"{ci}:{a['id']}", a["app"], a["local"] + ("" if a.get("local_known", True) else " (?)"),
                         when, round(a["duration_s"], 1), ", ".join(a["flows"]) + _control(a), ", ".join(a["tried"]),
                         f"{a['sent']}/{a['received']}", got, verdict])
    if not rows:
        return ""
    return (fill("Call attempts (flows of one app from one host close in time; tried = the remote ends, "
                 "pkts = sent/received, answered = requests answered/sent; times UTC):", width) + "\n"
            + table(["attempt", "app", "local", "start", "dur s", "flows", "tried", "pkts", "answered", "verdict"],
                    rows, width=width, wrap=("flows", "tried", "verdict")))


def _control(attempt: dict) -> str:
    ctl = attempt.get("control_flows") or []
    return f" (control: {', '.join(ctl)})" if ctl else ""


def verdicts_by_capture(doc: dict) -> dict[str, str]:
    """protocol -> 'policing in #3; none in #1, #2': which capture had which verdict."""
    groups: dict[str, dict[str, list[str]]] = {}
    for ci in range(len(doc["captures"])):
        for p in capture_protocols(doc, ci):
            groups.setdefault(p["protocol"], {}).setdefault(p.get("verdict", "-"), []).append(f"#{ci}")
    return {proto: "; ".join(f"{v} in {', '.join(cs)}" for v, cs in g.items()) for proto, g in groups.items()}


def sides(flow: dict) -> tuple[str, str, bool]:
    """(local endpoint, remote endpoint, whether the local side is known)."""
    if flow.get("local") == "b":
        return flow["b"], flow["a"], True
    return flow["a"], flow["b"], flow.get("local") == "a"


def rate_text(p: dict) -> str:
    if p.get("rate_bps"):
        return f"{p['rate_bps'] / 1e3:.1f} kbit/s"
    if p.get("rates_bps"):
        return ", ".join(f"{r / 1e3:.0f}" for r in p["rates_bps"]) + " kbit/s"
    return "-"


def capture_line(doc: dict, ci: int, c: dict) -> str:
    flows = [f for f in doc["flows"] if f["capture"] == ci]
    head = f"#{ci} {c['path']}" if len(doc["captures"]) > 1 else c["path"]
    return f"{head}: {c['packets']} packets, {len(flows)} flows, {span_text(c, flows)}"


def span_text(c: dict, flows: list[dict]) -> str:
    """The capture's length; when its timestamps jump (files merged from different days, a clock
    reset), the time with traffic and the jump instead of a meaningless span of years."""
    if c.get("first_ts") is None or c.get("last_ts") is None:
        return "no timestamps"
    span = c["last_ts"] - c["first_ts"]
    active, jumps = active_time(flows)
    start = _dt.datetime.fromtimestamp(c["first_ts"], _dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    if jumps and span > active + GAP_S:
        return (f"{duration_text(active)} with traffic in {jumps + 1} separate periods (the timestamps jump; "
                f"first packet {start}, last {duration_text(span)} later)")
    return f"{duration_text(span)} from {start}"


def active_time(flows: list[dict]) -> tuple[float, int]:
    """(seconds covered by at least one flow, number of silent gaps longer than GAP_S)."""
    spans = sorted((f["first_ts"], f["last_ts"]) for f in flows)
    total, jumps, cur = 0.0, 0, None
    for a, b in spans:
        if cur is None:
            cur = [a, b]
        elif a <= cur[1] + GAP_S:
            cur[1] = max(cur[1], b)
        else:
            total += cur[1] - cur[0]
            jumps += 1
            cur = [a, b]
    if cur is not None:
        total += cur[1] - cur[0]
    return total, jumps


def duration_text(s: float) -> str:
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    if s < 2 * 86400:
        return f"{s / 3600:.1f} h"
    if s < 730 * 86400:
        return f"{s / 86400:.1f} days"
    return f"{s / (365.25 * 86400):.1f} years"
