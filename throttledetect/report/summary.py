"""Figures per flow direction and per protocol, read from the JSON document's metrics.

"To you" is the direction arriving at the capturing host (the local side): the one whose losses
and delays a capture can see, and the one the detectors test. Rate samples follow Wehe: the
throughput of the protocol's flows summed per time bin (the document's rate series, `--bin`
wide), empty bins and the last (partial) bin left out.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class DirectionStats:
    packets: int = 0
    bytes: int = 0
    loss: float | None = None          # lost / expected (RTP sequence numbers), or retransmitted / sent (TCP)
    jitter_ms: float | None = None     # RFC 3550 interarrival jitter, mean over the streams, packet-weighted
    lost: int = 0
    expected: int = 0


@dataclass
class ProtocolStats:
    protocol: str
    flows: int = 0
    verdict: str | None = None
    kinds: list = field(default_factory=list)
    rate_bps: float | None = None      # the protocol's rate as detected (policing/shaping), if any
    samples_bps: np.ndarray = field(default_factory=lambda: np.zeros(0))   # throughput per bin, to you
    loss: float | None = None
    jitter_ms: float | None = None
    packets: int = 0
    lost: int = 0
    expected: int = 0
    jitter_weight: int = field(default=0, repr=False)     # packets behind jitter_ms

    def add(self, st: DirectionStats) -> None:
        """Pool one flow direction's loss and jitter into the protocol's."""
        self.packets += st.packets
        if st.loss is not None:
            self.lost += st.lost
            self.expected += st.expected
            self.loss = self.lost / self.expected if self.expected else None
        if st.jitter_ms is not None and st.packets:
            total = (self.jitter_ms or 0.0) * self.jitter_weight + st.jitter_ms * st.packets
            self.jitter_weight += st.packets
            self.jitter_ms = total / self.jitter_weight

    @property
    def median_bps(self) -> float | None:
        return float(np.median(self.samples_bps)) if len(self.samples_bps) else None


def inbound_direction(flow: dict) -> str:
    """'ab' or 'ba': the direction toward the capturing host. Unknown local side: toward the side
    that sent first (usually the caller), or the only direction that carries packets."""
    if flow.get("local") == "a":
        d = "ba"
    elif flow.get("local") == "b":
        d = "ab"
    else:
        d = "ba"
        if flow.get("packets_ba", 0) == 0 and flow.get("packets_ab", 0) > 0:
            d = "ab"
    return d


def flow_direction_stats(flow: dict, *, inbound: bool = True) -> DirectionStats:
    d = inbound_direction(flow)
    if not inbound:
        d = "ab" if d == "ba" else "ba"
    st = DirectionStats(packets=int(flow.get(f"packets_{d}", 0)), bytes=int(flow.get(f"bytes_{d}", 0)))
    m = (flow.get("metrics") or {}).get(d) or {}
    streams = m.get("rtp_streams") or []
    if streams:
        st.expected = sum(int(s.get("expected") or 0) for s in streams)
        st.lost = sum(max(int(s.get("lost") or 0), 0) for s in streams)
        st.loss = st.lost / st.expected if st.expected else None
        weighted = [(s["jitter_ms"]["mean"], s.get("packets") or 0) for s in streams
                    if (s.get("jitter_ms") or {}).get("mean") is not None]
        total = sum(w for _, w in weighted)
        st.jitter_ms = sum(j * w for j, w in weighted) / total if total else None
    elif m.get("tcp"):
        tcp = m["tcp"]
        segs = int(tcp.get("segments") or 0)
        st.expected, st.lost = segs, int((tcp.get("retransmissions") or {}).get("count") or 0)
        st.loss = st.lost / segs if segs else None
    return st


def rate_samples(flows: list[dict], capture_first_ts: float | None, *, inbound: bool = True) -> np.ndarray:
    """Bits per second per bin of the flows together (bins aligned on the capture's start)."""
    per_bin: dict[int, float] = {}
    bin_s = None
    for f in flows:
        m = f.get("metrics") or {}
        if not m or m.get("start_ts") is None:
            continue
        d = inbound_direction(f)
        if not inbound:
            d = "ab" if d == "ba" else "ba"
        series = ((m.get(d) or {}).get("rate") or {}).get("bytes") or []
        bin_s = float(m.get("bin_s") or 1.0)
        offset = int(round((m["start_ts"] - (capture_first_ts or m["start_ts"])) / bin_s))
        for k, b in enumerate(series):
            per_bin[offset + k] = per_bin.get(offset + k, 0.0) + float(b)
    if not per_bin or bin_s is None:
        return np.zeros(0)
    keys = sorted(per_bin)[:-1]                       # the last bin is partial
    values = np.array([per_bin[k] for k in keys], dtype=float) * 8.0 / bin_s
    return values[values > 0]                         # empty bins say nothing about the rate


def protocol_stats(doc: dict, capture: int | None = None, *, inbound: bool = True) -> dict[str, ProtocolStats]:
    """Per protocol: verdict (the capture's own, or the merged one), rate samples, loss, jitter."""
    from throttledetect.report.build import capture_protocols
    caps = doc.get("captures", [])
    indices = range(len(caps)) if capture is None else [capture]
    out: dict[str, ProtocolStats] = {}
    for ci in indices:
        flows = [f for f in doc.get("flows", []) if f.get("capture") == ci]
        by_proto: dict[str, list] = {}
        for f in flows:
            by_proto.setdefault(f["protocol"], []).append(f)
        for proto, fl in by_proto.items():
            ps = out.setdefault(proto, ProtocolStats(proto))
            ps.flows += len(fl)
            ps.samples_bps = np.concatenate([ps.samples_bps, rate_samples(fl, caps[ci].get("first_ts"),
                                                                          inbound=inbound)])
            for f in fl:
                ps.add(flow_direction_stats(f, inbound=inbound))
    rows = doc.get("protocols", []) if capture is None else capture_protocols(doc, capture)
    for p in rows:
        ps = out.setdefault(p["protocol"], ProtocolStats(p["protocol"]))
        ps.verdict, ps.kinds, ps.rate_bps = p.get("verdict"), list(p.get("kinds", [])), p.get("rate_bps")
    return out

