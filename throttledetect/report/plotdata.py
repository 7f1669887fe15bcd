"""Packet-level series for the report's figures: plain numpy arrays from one CaptureAnalysis.

The only place the report reaches past the JSON document into the analysis objects (arrival
times and sizes per direction, RTP relative delay). Times are seconds since the capture's first
packet, the origin of the detections' onsets. Deliberately thin: each piece is guarded, so a
piece that cannot be had (no RTP clock, a stage that changed) omits its figure, nothing more.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

DIRECTIONS = {"ab": 0, "ba": 1}


@dataclass
class Arrivals:
    t: np.ndarray = field(default_factory=lambda: np.zeros(0))       # seconds since the capture's first packet
    size: np.ndarray = field(default_factory=lambda: np.zeros(0))    # link-layer frame bytes

    @property
    def n(self) -> int:
        return len(self.t)


@dataclass
class DelaySeries:
    ssrc: int
    t: np.ndarray
    delay_ms: np.ndarray


def capture_origin_ns(analysis) -> int:
    ts = analysis.capture.packets.ts_ns
    return int(ts.min()) if len(ts) else 0


def arrivals(analysis, flow: int, direction: str) -> Arrivals:
    """The packets of one direction ("ab" = a->b) of a flow, in time order."""
    ft, pk = analysis.flows, analysis.capture.packets
    rows = ft.packet_indices(flow)
    rows = rows[ft.dir_of[rows] == DIRECTIONS[direction]]
    t = (pk.ts_ns[rows].astype(np.int64) - capture_origin_ns(analysis)) / 1e9
    order = np.argsort(t, kind="stable")
    return Arrivals(t[order], pk.wirelen[rows].astype(np.float64)[order])


def merged_arrivals(analysis, parts: list[tuple[int, str]]) -> Arrivals:
    """Several (flow, direction) together, in time order: what one shared token bucket saw."""
    got = [arrivals(analysis, f, d) for f, d in parts]
    if not got:
        return Arrivals()
    t = np.concatenate([a.t for a in got])
    size = np.concatenate([a.size for a in got])
    order = np.argsort(t, kind="stable")
    return Arrivals(t[order], size[order])


def rtp_delay(analysis, flow: int, direction: str) -> list[DelaySeries]:
    """One-way delay of each RTP stream of a direction against its sender's clock (ms above its
    own minimum; per frame, pacing and clock skew removed: streams.rtp.RtpStream.delay)."""
    streams = getattr(analysis, "streams", None)
    if streams is None:
        return []
    out = []
    for s in streams.rtp(flow, DIRECTIONS[direction]):
        dl = s.delay()
        if dl is not None and dl.n:
            out.append(DelaySeries(int(s.ssrc), np.asarray(dl.t, dtype=float), np.asarray(dl.ms, dtype=float)))
    return out


def token_bucket_bound(arr: Arrivals, rate_bps: float, burst_bytes: float, start_s: float = 0.0):
    """(t, bound) after start_s: the most bytes a token bucket of (rate, burst), full at start_s,
    could have let through by each arrival given what passed before it:
    min over earlier arrivals s of A(before s) + burst + rate (t - s). Arrivals touching the bound
    found the bucket empty."""
    keep = arr.t >= start_s
    t, size = arr.t[keep], arr.size[keep]
    if not len(t):
        return t, t
    r = rate_bps / 8.0
    before = np.concatenate([[0.0], np.cumsum(size)[:-1]])       # bytes that arrived before each packet
    bound = burst_bytes + r * t + np.minimum.accumulate(before - r * t)
    return t, bound


def interarrival_ms(arr: Arrivals) -> np.ndarray:
    if arr.n < 2:
        return np.zeros(0)
    d = np.diff(arr.t) * 1e3
    return d[d > 0]
