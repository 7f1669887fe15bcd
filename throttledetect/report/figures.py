"""The HTML report's figures, drawn by matplotlib (Agg, no display, no pyplot state) into PNG bytes.

One figure per question, each wide and short so that it reads on a phone held upright:
rate and loss over time with the onset marked; arrivals against the fitted token bucket; RTP delay
over time; the inter-arrival histogram. Inputs are the flow's JSON entry and report/plotdata.py
series; a figure without data is not drawn (None).
"""
from __future__ import annotations

import io

import numpy as np

from throttledetect.report import plotdata

SIZE_IN = (7.2, 3.2)
DPI = 100
TO_YOU, FROM_YOU = "#c0392b", "#2471a3"


def _figure():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=SIZE_IN, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def _legend(fig, handles, labels, **kw) -> None:
    """Below the axes, never over the data."""
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncols=min(4, len(handles)), fontsize="small",
                   frameon=False, **kw)


def _mark_onsets(ax, onsets: list[float]) -> None:
    for k, t in enumerate(sorted(set(round(o, 3) for o in onsets))):
        ax.axvline(t, color="black", linestyle="--", linewidth=1, label="onset" if k == 0 else None)


def rate_loss(flow: dict, capture_first_ts: float, inbound: str, onsets: list[float]) -> bytes | None:
    """Rate to and from you per bin (kbit/s), RTP packets lost to you per bin, onset lines."""
    m = flow.get("metrics") or {}
    if not m or not m.get("bins"):
        return None
    bin_s = float(m["bin_s"])
    x = (m["start_ts"] - capture_first_ts) + bin_s * np.arange(int(m["bins"]))
    fig = _figure()
    ax = fig.add_subplot()
    outbound = "ab" if inbound == "ba" else "ba"
    for d, label, color in ((inbound, "to you", TO_YOU), (outbound, "from you", FROM_YOU)):
        b = np.asarray(((m.get(d) or {}).get("rate") or {}).get("bytes") or [], dtype=float)
        if len(b):
            ax.step(x[:len(b)], b * 8 / bin_s / 1e3, where="post", color=color, label=f"rate {label}")
    ax.set_xlabel("seconds since the capture's first packet")
    ax.set_ylabel("kbit/s")
    lost = np.zeros(len(x))
    for s in (m.get(inbound) or {}).get("rtp_streams") or []:
        series = np.asarray((s.get("series") or {}).get("lost") or [], dtype=float)
        lost[:len(series)] += series[:len(lost)]
    if lost.any():
        ax2 = ax.twinx()
        ax2.bar(x, lost, width=bin_s * 0.8, align="edge", color=TO_YOU, alpha=0.25, label="RTP lost to you")
        ax2.set_ylabel("packets lost")
        ax2.set_ylim(bottom=0)
        h2, l2 = ax2.get_legend_handles_labels()
    else:
        h2, l2 = [], []
    _mark_onsets(ax, onsets)
    ax.set_ylim(bottom=0)
    h1, l1 = ax.get_legend_handles_labels()
    _legend(fig, h1 + h2, l1 + l2)
    ax.set_title("Rate and loss over time", fontsize="medium")
    return _png(fig)


def token_bucket(arr: plotdata.Arrivals, rate_bps: float, burst_bytes: float, start_s: float, scope: str) -> bytes | None:
    """Arrivals against the bucket: cumulative bytes minus rate x time (so a steady flow at the
    rate is flat), and the same for the most the bucket could pass. Touching the bound = empty bucket."""
    t, bound = plotdata.token_bucket_bound(arr, rate_bps, burst_bytes, start_s)
    if len(t) < 2:
        return None
    keep = arr.t >= start_s
    cum = np.cumsum(arr.size[keep])
    r = rate_bps / 8.0
    fig = _figure()
    ax = fig.add_subplot()
    ax.plot(t, (cum - r * t) / 1e3, color=TO_YOU, linewidth=1, label=f"arrived to you ({scope})")
    ax.plot(t, (bound - r * t) / 1e3, color="black", linewidth=1, linestyle="--",
            label=f"bucket limit ({rate_bps / 1e3:.0f} kbit/s, {burst_bytes:.0f} B)")
    ax.set_xlabel("seconds since the capture's first packet")
    ax.set_ylabel("kB above rate × time")
    _legend(fig, *ax.get_legend_handles_labels())
    ax.set_title("Arrivals against the fitted token bucket", fontsize="medium")
    return _png(fig)


def delay(series: list[plotdata.DelaySeries], onsets: list[float]) -> bytes | None:
    if not series:
        return None
    fig = _figure()
    ax = fig.add_subplot()
    for s in series:
        ax.plot(s.t, s.delay_ms, marker=".", markersize=2, linestyle="none", label=f"SSRC {s.ssrc:#010x}")
    _mark_onsets(ax, onsets)
    ax.set_xlabel("seconds since the capture's first packet")
    ax.set_ylabel("ms above the minimum")
    ax.set_ylim(bottom=0)
    _legend(fig, *ax.get_legend_handles_labels(), markerscale=4)
    ax.set_title("RTP one-way delay to you (relative)", fontsize="medium")
    return _png(fig)


def interarrival(to_you: plotdata.Arrivals, from_you: plotdata.Arrivals) -> bytes | None:
    gaps = [(plotdata.interarrival_ms(a), label, color) for a, label, color in
            ((to_you, "to you", TO_YOU), (from_you, "from you", FROM_YOU))]
    gaps = [g for g in gaps if len(g[0]) >= 2]
    if not gaps:
        return None
    lo = max(min(float(g[0].min()) for g in gaps), 1e-3)
    hi = max(float(g[0].max()) for g in gaps)
    bins = np.logspace(np.log10(lo), np.log10(max(hi, lo * 10)), 50)
    fig = _figure()
    ax = fig.add_subplot()
    for d, label, color in gaps:
        ax.hist(d, bins=bins, histtype="step", color=color, label=f"{label} ({len(d)} gaps)")
    ax.set_xscale("log")
    ax.set_xlabel("time between packets, ms")
    ax.set_ylabel("packets")
    _legend(fig, *ax.get_legend_handles_labels())
    ax.set_title("Inter-arrival times", fontsize="medium")
    return _png(fig)
