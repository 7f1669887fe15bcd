"""`analyze --html FILE`: one self-contained HTML file (no scripts, no fonts, no network: figures
are PNG data URIs), readable on a phone.

Order: the per-protocol verdicts (and each capture's, when there are several), then per call flow
its verdict, the evidence sentences of every test, and the figures (report/figures.py): rate and
loss over time with the onset marked, arrivals against the fitted token bucket, RTP delay over
time, inter-arrival histogram. Everything from a capture is HTML-escaped.
"""
from __future__ import annotations

import base64
import datetime as _dt
from html import escape

from throttledetect.report import figures, plotdata
from throttledetect.report.analyze_text import capture_line, rate_text, sides, verdicts_by_capture
from throttledetect.report.build import capture_protocols
from throttledetect.report.summary import inbound_direction
from throttledetect.report.text import direction_phrase

MAX_FLOW_SECTIONS = 30      # call flows drawn (throttled and inconclusive first); the rest are listed

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;max-width:60rem;padding:.75rem;
line-height:1.4;color:#1b1b1b;background:#fff}
h1{font-size:1.4rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #ccc}h3{font-size:1.05rem}
.scroll{overflow-x:auto;-webkit-overflow-scrolling:touch}
table{border-collapse:collapse;font-size:.9rem;min-width:100%}
th,td{border:1px solid #ddd;padding:.3rem .45rem;text-align:left;vertical-align:top}
th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
.v{font-weight:600;white-space:nowrap}.v-shaping,.v-policing,.v-dropping,.v-blocking{color:#a01818}
.v-inconclusive{color:#8a6d00}.v-none,.v-set-up,.v-not-blocked{color:#236b2b}.v-untested{color:#666}
figure{margin:1rem 0}figure img{max-width:100%;height:auto;display:block}
figcaption{font-size:.85rem;color:#555}
.flow{border-top:1px solid #eee;padding-top:.5rem}
.muted{color:#666;font-size:.85rem}code{word-break:break-all}
@media (max-width:40rem){table.cards,table.cards tbody,table.cards tr,table.cards td{display:block;min-width:0}
table.cards thead{display:none}table.cards tr{border:1px solid #ddd;margin:.5rem 0;padding:.25rem}
table.cards td{border:none;padding:.15rem .3rem;text-align:left}
table.cards td::before{content:attr(data-label) ": ";color:#666;font-size:.85rem}}
"""


def render_html(doc: dict, analyses: list) -> str:
    from throttledetect import __version__
    from throttledetect.classify.labels import is_call
    parts = [f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
             f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
             f"<title>throttledetect report</title><style>{CSS}</style></head><body>",
             "<h1>Are the calls throttled?</h1>",
             "<ul>" + "".join(f"<li>{escape(capture_line(doc, ci, c))}</li>" for ci, c in enumerate(doc["captures"]))
             + "</ul>",
             "<h2>Verdicts per protocol</h2>", _protocol_table(doc["protocols"], verdicts_by_capture(doc)
                                                               if len(doc["captures"]) > 1 else None)]
    if len(doc["captures"]) > 1:
        for ci, c in enumerate(doc["captures"]):
            parts.append(f"<h3>Capture #{ci}: <code>{escape(c['path'])}</code></h3>")
            parts.append(_protocol_table(capture_protocols(doc, ci)))
    attempts = [(ci, a) for ci, c in enumerate(doc["captures"]) for a in c.get("call_attempts", [])]
    if attempts:
        parts.append("<h2>Call attempts</h2>")
        parts.append("<p class=\"muted\">Flows of one app from one host close in time. Tried: the remote ends; "
                     "packets sent/received; answered: requests answered/sent.</p>")
        rows = [[escape(f"{ci}:{a['id']}"), escape(a["app"]), escape(a["local"]),
                 escape(_dt.datetime.fromtimestamp(a["first_ts"], _dt.timezone.utc).strftime("%H:%M:%S UTC")),
                 f"{a['duration_s']:.1f}", escape(", ".join(a["tried"])), escape(f"{a['sent']}/{a['received']}"),
                 escape(f"{a['answered']}/{a['requests']}" if "requests" in a else "-"),
                 _verdict(a["verdict"]) + (" " + escape(a["reason"]) if a.get("reason") else "")
                 + (" — the call's flows: " + _verdict(a["media_verdict"]) if a.get("media_verdict") else "")]
                for ci, a in attempts]
        parts.append(_cards_table("attempts", ["attempt", "app", "local", "start", "dur s", "tried", "packets",
                                               "answered", "verdict"], rows, numeric=("dur s",)))
    calls = [f for f in doc["flows"] if is_call(f["protocol"])]
    order = {"inconclusive": 1, "none": 2, "untested": 3}
    # per capture, throttled first, then inconclusive, then the rest; the biggest flows first within each
    calls.sort(key=lambda f: (f["capture"], order.get(f.get("verdict"), 0), -(f["packets_ab"] + f["packets_ba"])))
    parts.append("<h2>Call flows</h2>")
    if not calls:
        parts.append("<p>No call flow in the capture(s).</p>")
    parts.append("<p class=\"muted\">“To you” is the direction arriving at the capturing host (the local side), "
                 "the one whose losses and delays a capture can see. Times are seconds since the capture's first "
                 "packet.</p>")
    for f in calls[:MAX_FLOW_SECTIONS]:
        parts.append(_flow_section(doc, analyses, f))
    if len(calls) > MAX_FLOW_SECTIONS:
        rest = ", ".join(escape(f"{f['id']} ({f['protocol']}, {f.get('verdict', '-')})")
                         for f in calls[MAX_FLOW_SECTIONS:])
        parts.append(f"<p class=\"muted\">{len(calls) - MAX_FLOW_SECTIONS} more call flows without figures: "
                     f"{rest}.</p>")
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts.append(f"<p class=\"muted\">throttledetect {escape(__version__)}, {stamp}. The JSON report "
                 "(analyze --format json) has every test with its statistic, p-value and estimates.</p>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _verdict(v: str | None) -> str:
    v = v or "-"
    return f"<span class=\"v v-{escape(v.replace(' ', '-'))}\">{escape(v)}</span>"


def _cards_table(cls: str, headers: list[str], rows: list[list], numeric: tuple[str, ...] = ()) -> str:
    """A table that becomes one card per row on a narrow screen (each cell labelled by its header).
    Cells are HTML already (escaped by the caller)."""
    head = "".join(f"<th>{h}</th>" for h in headers)
    attrs = [f' data-label="{h}"' + (' class="num"' if h in numeric else "") for h in headers]
    body = "".join("<tr>" + "".join(f"<td{a}>{v}</td>" for a, v in zip(attrs, row)) + "</tr>" for row in rows)
    return (f"<div class=\"scroll\"><table class=\"cards {cls}\"><thead><tr>{head}</tr></thead>"
            f"<tbody>{body}</tbody></table></div>")


def _protocol_table(rows: list[dict], per_capture: dict | None = None) -> str:
    """Verdict rows; merged over several captures, the last column says which capture had which."""
    last = "verdict per capture" if per_capture is not None else "summary"
    cells = [[escape(p["protocol"]), _verdict(p.get("verdict")), escape(rate_text(p)), p["flows"], p["packets"],
              escape(per_capture.get(p["protocol"], "") if per_capture is not None else p.get("summary", ""))]
             for p in rows]
    return _cards_table("protocols", ["protocol", "verdict", "rate", "flows", "packets", last], cells,
                        numeric=("flows", "packets"))


def _flow_section(doc: dict, analyses: list, f: dict) -> str:
    local, remote, known = sides(f)
    ci, i = (int(x) for x in f["id"].split(":"))
    head = (f"<section class=\"flow\" id=\"flow-{escape(f['id'])}\"><h3>{escape(f['id'])} {escape(f['protocol'])} "
            f"{_verdict(f.get('verdict'))}</h3><p><code>{escape(local)}</code> (you{'' if known else '?'}) ⇄ "
            f"<code>{escape(remote)}</code>, {f['packets_ab'] + f['packets_ba']} packets, "
            f"{f['last_ts'] - f['first_ts']:.1f} s. <span class=\"muted\">{escape(f.get('reason', ''))}</span></p>")
    out = [head, _tests_table(f)]
    analysis = analyses[ci] if ci < len(analyses) else None
    for draw, caption in _flow_figures(doc, analysis, f, ci, i):
        try:
            png = draw()
        except Exception as e:  # noqa: BLE001 - one figure that cannot be drawn must not cost the report
            out.append(f"<p class=\"muted\">A figure could not be drawn ({escape(type(e).__name__)}: "
                       f"{escape(str(e))}): {escape(caption)}</p>")
            continue
        if png:
            b64 = base64.b64encode(png).decode("ascii")
            out.append(f"<figure><img alt=\"{escape(caption)}\" src=\"data:image/png;base64,{b64}\">"
                       f"<figcaption>{escape(caption)}</figcaption></figure>")
    out.append("</section>")
    return "\n".join(out)


def _tests_table(f: dict) -> str:
    dets = sorted(f.get("detections") or [], key=lambda d: (d.get("decision") != "detected", d["kind"]))
    if not dets:
        return "<p class=\"muted\">Not tested.</p>"
    rows = []
    for d in dets:
        q = d.get("qvalue", d.get("pvalue"))
        text = d.get("evidence") or ""
        shown = d.get("decision") == "inconclusive" or (d.get("decision") != "detected" and not d.get("short_of_floor"))
        if shown and d.get("reason"):
            text = f"{d['reason']}. {text}".strip()
        rows.append([escape(d["kind"]), escape(direction_phrase(f, d["direction"], d.get("toward"))), escape(d.get("decision", "")),
                     "-" if q is None else f"{q:.2g}", escape(text)])
    return _cards_table("tests", ["test", "direction", "decision", "q", "evidence"], rows, numeric=("q",))


def _flow_figures(doc: dict, analysis, f: dict, ci: int, i: int):
    """(draw, caption) of each figure: draw() gives PNG bytes, or None when it has no data."""
    first_ts = doc["captures"][ci].get("first_ts") or f["first_ts"]
    inbound = inbound_direction(f)
    outbound = "ab" if inbound == "ba" else "ba"
    dets = f.get("detections") or []
    onsets = [d["onset_s"] for d in dets if d.get("decision") == "detected" and d.get("onset_s") is not None]
    yield (lambda: figures.rate_loss(f, first_ts, inbound, onsets),
           "Rate to and from you per bin, and RTP packets lost to you; dashed: the onset found by the tests.")
    if analysis is None:
        return
    bucket = _bucket_detection(dets)
    if bucket is not None:
        scope_flows = (bucket.get("estimates") or {}).get("flows") or [i]
        parts = [(int(k), inbound_direction(_flow_entry(doc, ci, int(k)) or f)) for k in scope_flows]
        scope = "this flow" if len(parts) == 1 else f"{len(parts)} flows together"
        yield (lambda: figures.token_bucket(plotdata.merged_arrivals(analysis, parts), float(bucket["rate_bps"]),
                                            float(bucket["burst_bytes"]), bucket.get("onset_s") or 0.0, scope),
               "Bytes arrived to you minus rate × time, against the most the fitted token bucket could pass: "
               "where the curve meets the dashed limit the bucket was empty, and a policer drops.")
    yield (lambda: figures.delay(plotdata.rtp_delay(analysis, i, inbound), onsets),
           "Relative one-way delay of each RTP stream to you: a shaper's queue shows as a rise to a plateau.")
    yield (lambda: figures.interarrival(plotdata.arrivals(analysis, i, inbound), plotdata.arrivals(analysis, i, outbound)),
           "Time between consecutive packets (log scale): media paced by its codec shows sharp peaks.")


def _bucket_detection(dets: list[dict]) -> dict | None:
    """The detected policing whose token bucket is drawn (a fit the test rejected would mislead)."""
    return next((d for d in dets if d["kind"] == "policing" and d.get("decision") == "detected"
                 and d.get("rate_bps") and d.get("burst_bytes")), None)


def _flow_entry(doc: dict, ci: int, i: int) -> dict | None:
    return next((f for f in doc["flows"] if f["id"] == f"{ci}:{i}"), None)

