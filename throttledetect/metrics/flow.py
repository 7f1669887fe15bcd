"""Per-flow metrics for every flow of a capture, per direction and as time series.

``compute_flow_metrics(cap, ft, cl, bin_s=1.0)`` returns one FlowMetrics per flow; its
``to_json()`` is what ``analyze --format json`` prints under ``metrics``. Per direction ("ab":
what side a sent, "ba": what side b sent):

- packets, bytes (link-layer frames, as the flow table counts them), payload bytes, duration;
- rate series: bytes and packets per bin of ``bin_s`` seconds, bins aligned to the flow's
  first packet and shared by both directions (the last bin holds the flow's last packet);
- inter-arrival times: min, p5, median, p95, max, mean and coefficient of variation (std/mean);
- gaps: inter-arrival times longer than max(5 x median inter-arrival, 0.2 s), each with its
  start (the packet before it, seconds from the flow's first packet) and length, and the
  total silent time (the sum of their lengths);
- packet sizes (transport payload bytes as sent, ``payload_wirelen``): min, median, max,
  mean, std and a histogram over the fixed SIZE_EDGES;
- RTP streams sent in that direction, with metrics.rtp's RtpStreamStats (loss, loss runs,
  duplicates, reordering, jitter, max delta, relative one-way delay, DTX) and per-bin series.
  RTP is read wherever the classifier found it (``cl.evidence.rtp_encap_of`` and
  ``rtp_offset_of``): plain, inside TURN ChannelData, MS-TURN, Zoom media, or RFC 4571 TCP
  framing. Streams are keyed by (flow, direction, SSRC, payload type) when an SSRC's payload
  types keep separate sequence spaces (Zoom sends video and its FEC under one SSRC), by
  (flow, direction, SSRC) when they share one (audio with comfort noise or DTMF events);
- TCP (metrics.tcp): retransmissions, inferred losses, RTT, goodput, stalls, zero windows.

Everything is computed over the whole capture with numpy (one grouping of all packets by
flow and direction, one bincount per series, one sort per distribution); Python loops run
once per flow, or per RTP stream, to build the result objects.
"""
from __future__ import annotations

import gc
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from throttledetect.flows import transport_name
from throttledetect.metrics.rtp import RtpStream, RtpStreamStats
from throttledetect.wire.rtp import RTP_HEADER_LEN, SEQ_MOD, rtp_fields, unwrap
from throttledetect.metrics.series import (
    DIRECTIONS,
    BinLayout,
    DirGroups,
    bin_layout,
    group_by_direction,
    grouped_quantiles,
    grouped_sort,
    nan_to_none,
    opt,
)
from throttledetect.metrics.tcp import TcpDirectionMetrics, TcpFlowMetrics, compute_tcp_metrics
from throttledetect.read import pages
from throttledetect.read.table import address_text

GAP_MEDIAN_FACTOR = 5.0
GAP_MIN_S = 0.2
# Packet size histogram (payload bytes): [0,1) empty (bare ACKs), then coarse steps up to a full MTU.
SIZE_EDGES = (0, 1, 64, 128, 256, 512, 1024, 1280, 1500)
IAT_QUANTILES = (0.0, 0.05, 0.5, 0.95, 1.0)
ENCAP_NAMES = {0: "plain", 1: "turn-channel", 2: "ms-turn", 3: "zoom", 4: "tcp"}
MAX_LOSS_RUNS_JSON = 1000     # loss run lengths listed in JSON (count, max and mean cover them all)


# slots on the per-flow and per-direction objects: a capture may have a million flows, and an
# attribute dict per object was most of their size (issue 15)
@dataclass(frozen=True, slots=True)
class IatStats:
    """Inter-arrival times of one direction, seconds."""

    min_s: float
    p5_s: float
    median_s: float
    p95_s: float
    max_s: float
    mean_s: float
    cv: float | None          # std / mean (population std); None when the mean is 0

    def to_json(self) -> dict:
        return {"min_s": self.min_s, "p5_s": self.p5_s, "median_s": self.median_s, "p95_s": self.p95_s,
                "max_s": self.max_s, "mean_s": self.mean_s, "cv": self.cv}


@dataclass(frozen=True, slots=True)
class Gap:
    start_s: float            # the packet before the gap, seconds from the flow's first packet
    length_s: float

    def to_json(self) -> dict:
        return {"start_s": self.start_s, "length_s": self.length_s}


@dataclass(frozen=True, eq=False, slots=True)
class SizeStats:
    """Transport payload sizes of one direction, bytes."""

    min: int
    median: float
    max: int
    mean: float
    std: float
    histogram: np.ndarray     # packets per SIZE_EDGES bin: [0,1), [1,64) ... [1500, inf)

    def to_json(self) -> dict:
        return {"min": self.min, "median": self.median, "max": self.max, "mean": self.mean, "std": self.std,
                "histogram": {"edges": list(SIZE_EDGES), "counts": self.histogram.tolist()}}


@dataclass(frozen=True, eq=False)
class FlowRtpStream(RtpStream):
    """An RTP stream found by the classifier, possibly inside an encapsulation.

    `size` is the RTP packet's length (header, payload, padding) without the encapsulation.
    `split_payload_type` is the stream's payload type when its SSRC was split by payload type,
    else None (every payload type of the SSRC is in this stream).
    """

    flow: int
    direction: int            # 0 = a->b, 1 = b->a
    encap: str                # ENCAP_NAMES value of most of its packets
    split_payload_type: int | None

    @property
    def key(self) -> tuple:
        return (self.src, self.sport, self.dst, self.dport, self.ssrc, self.split_payload_type)


@dataclass(eq=False, slots=True)
class RtpStreamMetrics:
    """RtpStreamStats of one stream and its per-bin series over the flow's bins."""

    stream: FlowRtpStream
    stats: RtpStreamStats
    packets_series: np.ndarray    # packets per bin
    lost_series: np.ndarray       # sequence numbers never received, at the bin of the packet after the gap
    jitter_series_ms: np.ndarray  # mean running jitter of the bin's packets (NaN: none)
    delay_series_ms: np.ndarray   # mean relative one-way delay of the bin's packets (NaN: none or no clock)
    delay_max_series_ms: np.ndarray
    offset_s: float               # the stream's first packet, seconds from the flow's first packet

    def to_json(self) -> dict:
        s, st = self.stats, self.stream
        runs = s.loss_runs
        return {
            "ssrc": st.ssrc, "payload_types": list(s.payload_types), "payload_type": st.split_payload_type,
            "encap": st.encap, "packets": s.packets, "bytes": s.bytes, "start_s": self.offset_s,
            "duration_s": s.duration_s, "clock_rate": s.clock_rate, "ptime_ms": s.ptime_ms,
            "first_seq": s.first_seq, "last_seq": s.last_seq, "expected": s.expected, "lost": s.lost,
            "loss_fraction": s.loss_fraction,
            "loss_runs": {"count": int(len(runs)), "max": int(runs.max()) if len(runs) else 0,
                          "mean": float(runs.mean()) if len(runs) else 0.0,
                          "lengths": runs[:MAX_LOSS_RUNS_JSON].tolist(),
                          "truncated": bool(len(runs) > MAX_LOSS_RUNS_JSON)},
            "duplicates": s.duplicates, "reordered": s.reordered, "sequence_errors": s.sequence_errors,
            "delta_ms": {"min": s.min_delta_ms, "mean": s.mean_delta_ms, "max": s.max_delta_ms},
            "jitter_ms": {"min": s.min_jitter_ms, "mean": s.mean_jitter_ms, "max": s.max_jitter_ms},
            "delay_ms": {"max": opt(np.max(s.delay_ms)) if s.delay_ms is not None and len(s.delay_ms) else None},
            "dtx": {"count": len(s.dtx_periods), "total_ms": float(sum(p.silence_ms for p in s.dtx_periods)),
                    "periods": [{"start_s": p.start_s + self.offset_s, "end_s": p.end_s + self.offset_s,
                                 "silence_ms": p.silence_ms} for p in s.dtx_periods]},
            "series": {"packets": self.packets_series.tolist(), "lost": self.lost_series.tolist(),
                       "jitter_ms": nan_to_none(self.jitter_series_ms),
                       "delay_ms": nan_to_none(self.delay_series_ms),
                       "delay_max_ms": nan_to_none(self.delay_max_series_ms)},
        }


@dataclass(eq=False, slots=True)
class DirectionMetrics:
    """Everything about the packets one side of a flow sent (see the module docstring)."""

    packets: int
    bytes: int
    payload_bytes: int
    first_s: float | None          # its first packet, seconds from the flow's first packet
    duration_s: float              # its first to its last packet
    bytes_series: np.ndarray       # int64 per bin
    packets_series: np.ndarray     # int64 per bin
    iat: IatStats | None           # None with fewer than 2 packets
    gap_threshold_s: float | None
    gaps: tuple[Gap, ...]
    silent_s: float
    sizes: SizeStats | None        # None without packets
    rtp: tuple[RtpStreamMetrics, ...] = ()
    tcp: TcpDirectionMetrics | None = None

    def to_json(self) -> dict:
        return {
            "packets": self.packets, "bytes": self.bytes, "payload_bytes": self.payload_bytes,
            "first_s": self.first_s, "duration_s": self.duration_s,
            "rate": {"bytes": self.bytes_series.tolist(), "packets": self.packets_series.tolist()},
            "iat": self.iat.to_json() if self.iat else None,
            "gaps": {"threshold_s": self.gap_threshold_s, "count": len(self.gaps), "silent_s": self.silent_s,
                     "list": [g.to_json() for g in self.gaps]},
            "sizes": self.sizes.to_json() if self.sizes else None,
            "rtp_streams": [r.to_json() for r in self.rtp],
            "tcp": self.tcp.to_json() if self.tcp else None,
        }


@dataclass(eq=False, slots=True)
class FlowMetrics:
    flow: int
    transport: str
    start_ns: int                  # the flow's first packet: the origin of every series and time
    bin_s: float
    n_bins: int
    ab: DirectionMetrics
    ba: DirectionMetrics
    tcp: TcpFlowMetrics | None = field(default=None, repr=False)

    def direction(self, name: str) -> DirectionMetrics:
        if name not in DIRECTIONS:
            raise KeyError(name)
        return self.ab if name == "ab" else self.ba

    @property
    def rtp_streams(self) -> tuple[RtpStreamMetrics, ...]:
        return self.ab.rtp + self.ba.rtp

    def to_json(self) -> dict:
        out = {"bin_s": self.bin_s, "bins": self.n_bins, "start_ts": self.start_ns / 1e9,
               "ab": self.ab.to_json(), "ba": self.ba.to_json()}
        if self.tcp is not None:
            out["tcp"] = {"handshake": self.tcp.handshake.to_json() if self.tcp.handshake else None,
                          "path_rtt_s": self.tcp.path_rtt_s}
        return out


# --- RTP streams found by the classifier ----------------------------------------------------------


def find_flow_rtp_streams(cap, ft, cl, groups: DirGroups | None = None) -> list[FlowRtpStream]:
    """The RTP streams of every flow, read at the offsets the classifier found (any encapsulation).

    Packets are grouped by (flow, direction, SSRC) in time order; an SSRC carrying several
    payload types is split by payload type when that makes the sequence numbers run more
    regularly (separate sequence spaces), else kept whole (one sequence space, as RFC 3550).
    `groups` (metrics.series.group_by_direction of ft) may be passed when already computed.
    """
    ev = cl.evidence
    pk = cap.packets
    if groups is None:
        groups = group_by_direction(ft)
    # Rows in (flow, direction, time) order straight from the grouping: no sort needed.
    sel = np.flatnonzero(ev.rtp_encap_of[groups.rows] >= 0)
    rows = groups.rows[sel]
    gid = groups.gid[sel]
    off = ev.rtp_offset_of[rows].astype(np.int64)
    inside = (pk.payload_off[rows] >= 0) & (off >= 0) & (off + RTP_HEADER_LEN <= pk.payload_len[rows].astype(np.int64))
    if not inside.all():
        rows, gid, off = rows[inside], gid[inside], off[inside]
    if len(rows) == 0:
        return []
    at = pk.payload_off[rows] + off
    # One gather of the 12 header bytes of every packet, read by the one RTP parser (wire.rtp);
    # in batches that give the file's pages back (read/pages.py): RTP is most of a call capture
    head = rtp_fields(pages.gather(cap, at, RTP_HEADER_LEN), 0)
    seq = head["seq"].astype(np.int64)
    ssrc = head["ssrc"].astype(np.int64)
    pt = head["pt"].astype(np.int64)

    # (flow, direction, SSRC) groups in time order. Stable sorts of nearly sorted keys (most
    # directions carry one or two SSRCs) cost little more than a pass.
    o = np.argsort((gid << 32) | ssrc, kind="stable")
    g_s, seq_s, pt_s = gid[o], seq[o], pt[o]
    key = (g_s << 32) | ssrc[o]
    new_grp = np.r_[True, key[1:] != key[:-1]]
    grp = np.cumsum(new_grp) - 1
    n_grp = int(grp[-1]) + 1
    step_one = np.r_[False, ~new_grp[1:] & (((seq_s[1:] - seq_s[:-1]) % SEQ_MOD) == 1)]
    merged_regular = np.bincount(grp, weights=step_one, minlength=n_grp)
    # The same within (group, payload type).
    o2 = np.argsort(grp * 128 + pt_s, kind="stable")
    k2 = grp[o2] * 128 + pt_s[o2]
    seq2 = seq_s[o2]
    same2 = np.r_[False, k2[1:] == k2[:-1]]
    step2 = same2 & np.r_[False, ((seq2[1:] - seq2[:-1]) % SEQ_MOD) == 1]
    split_regular = np.bincount(grp[o2], weights=step2, minlength=n_grp)
    n_pts = np.bincount(grp[o2], weights=~same2, minlength=n_grp)
    split = (n_pts > 1) & (split_regular > merged_regular)

    # Streams: (group, payload type if split), in time order.
    pt_key = np.where(split[grp], pt_s, -1)
    if split.any():
        o3 = np.argsort(grp * 129 + pt_key + 1, kind="stable")
        o = o[o3]
        grp, pt_key = grp[o3], pt_key[o3]
    new_stream = np.r_[True, (grp[1:] != grp[:-1]) | (pt_key[1:] != pt_key[:-1])]
    rows, seq, ssrc, pt, off = rows[o], seq[o], ssrc[o], pt[o], off[o]
    rtp_ts = head["ts"][o].astype(np.int64)
    marker = head["marker"][o]
    # flow and direction from the group ids (2 * flow + direction) rather than the capture-wide
    # flow_of: the same numbers, and right for a FlowTable of some of the flows (metrics batches)
    g_o = gid[o]
    flow, direction = g_o >> 1, g_o & 1
    starts = np.flatnonzero(new_stream)
    ends = np.r_[starts[1:], len(rows)]
    encap_of = ev.rtp_encap_of[rows].astype(np.int64)
    size = pk.payload_wirelen[rows].astype(np.int64) - off
    ts_ns = pk.ts_ns[rows]
    streams = []
    for a, b in zip(starts.tolist(), ends.tolist()):   # one object per stream, not per packet
        r0 = int(rows[a])
        enc = int(np.bincount(encap_of[a:b]).argmax())
        streams.append(FlowRtpStream(
            src=address_text(pk.src_hi[r0], pk.src_lo[r0]), sport=int(pk.sport[r0]),
            dst=address_text(pk.dst_hi[r0], pk.dst_lo[r0]), dport=int(pk.dport[r0]),
            ssrc=int(ssrc[a]), packet_index=rows[a:b], ts_ns=ts_ns[a:b], seq=seq[a:b], rtp_ts=rtp_ts[a:b],
            marker=marker[a:b], payload_type=pt[a:b], size=size[a:b],
            flow=int(flow[a]), direction=int(direction[a]), encap=ENCAP_NAMES.get(enc, str(enc)),
            split_payload_type=int(pt_key[a]) if pt_key[a] >= 0 else None,
        ))
    return streams


def rtp_stream_metrics(stream: FlowRtpStream, layout: BinLayout, clock_rate: int | None = None) -> RtpStreamMetrics:
    """RtpStreamStats of a stream plus its series over its flow's bins."""
    stats = stream.stats(clock_rate)
    f = stream.flow
    nb = int(layout.n_bins[f])
    origin = int(layout.origin_ns[f])
    b = np.clip((stream.ts_ns - origin) // layout.bin_ns, 0, nb - 1)
    packets = np.bincount(b, minlength=nb).astype(np.int64)
    # Missing sequence numbers, at the first arrival of the packet that follows them in sequence.
    ext = unwrap(stream.seq, SEQ_MOD)
    received, first_idx = np.unique(ext, return_index=True)
    missing = np.r_[0, np.diff(received) - 1]
    lost = np.bincount(b[first_idx], weights=missing, minlength=nb).astype(np.int64)
    jit = stats.jitter_ms
    finite = np.isfinite(jit)
    with np.errstate(invalid="ignore", divide="ignore"):
        jitter = np.bincount(b[finite], weights=jit[finite], minlength=nb) / np.bincount(b[finite], minlength=nb)
    delay = np.full(nb, np.nan)
    delay_max = np.full(nb, np.nan)
    if stats.delay_ms is not None:
        with np.errstate(invalid="ignore", divide="ignore"):
            delay = np.bincount(b, weights=stats.delay_ms, minlength=nb) / packets
        # b is non-decreasing (time order): one reduceat over the starts of the occupied bins.
        occ = np.flatnonzero(np.r_[True, b[1:] != b[:-1]])
        delay_max[b[occ]] = np.maximum.reduceat(stats.delay_ms, occ)
    return RtpStreamMetrics(stream=stream, stats=stats, packets_series=packets, lost_series=lost,
                            jitter_series_ms=jitter, delay_series_ms=delay, delay_max_series_ms=delay_max,
                            offset_s=(int(stream.ts_ns[0]) - origin) / 1e9)


# --- everything ------------------------------------------------------------------------------------


@contextmanager
def gc_paused():
    """Pause the cyclic garbage collector while building many small acyclic objects.

    Each collection of the oldest generation walks every object alive (the classifier's
    evidence alone holds hundreds of thousands); building metrics for 45,000 flows would
    trigger dozens of them and spend most of its time there.
    """
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


# Packets of the flows measured at once. Everything below is vectorised over the packets given,
# with a few dozen per-packet temporaries (group ids, times, sizes, sorts): over ten million
# packets at once they held 1.5 GB. Each flow's metrics read that flow's packets only, so flows
# measured a batch at a time give the same metrics. A batch of 512 k packets of RTP calls held
# about 250 MB while measured, one of 128 k about 110 MB, in the same time (issue 15).
BATCH_PACKETS = 1 << 17


def compute_flow_metrics(cap, ft, cl, *, bin_s: float = 1.0, spill=None, keep=None) -> list:
    """FlowMetrics for every flow of `ft` (a FlowTable of `cap`), with `cl` from classify().

    spill: a report.spill.JsonSpill that takes every flow's to_json() text, flow by flow, as each
    batch is measured; the list then holds a flow's FlowMetrics only where `keep` (bool per flow)
    is true, else None. A batch's objects (an RTP stream's hold its packets' columns) are let go
    before the next batch, so what the metrics hold does not grow with the capture (issue 15)."""
    with gc_paused():
        out = []
        batches = flow_batches(ft.start, BATCH_PACKETS)
        for f0, f1 in batches:
            part = _compute_flow_metrics(cap, flow_slice(ft, f0, f1), cl, bin_s)
            if f0:
                _renumber(part, f0)
            if spill is not None:
                for k, m in enumerate(part):
                    spill.add_metrics(m.to_json())
                    if keep is None or not keep[f0 + k]:
                        part[k] = None
                # json's indenting encoder leaves each call's closures in reference cycles (about
                # 3 kB a flow): collected young, here, as the collector is paused (660 MB on 10 M
                # packets otherwise). Generation 0 holds only what this batch made.
                gc.collect(0)
            out += part
        return out


def flow_batches(start: np.ndarray, packets: int) -> list[tuple[int, int]]:
    """Consecutive ranges of flows [f0, f1) of about `packets` packets each (at least one flow
    each; one range of every flow when they hold no more); start: FlowTable.start."""
    nf = len(start) - 1
    if nf <= 0 or int(start[-1]) - int(start[0]) <= packets:
        return [(0, max(nf, 0))]
    out, f0 = [], 0
    while f0 < nf:
        f1 = int(np.searchsorted(start, int(start[f0]) + packets, side="right")) - 1
        f1 = min(nf, max(f1, f0 + 1))
        out.append((f0, f1))
        f0 = f1
    return out


_PER_FLOW = ("proto", "a_hi", "a_lo", "a_port", "b_hi", "b_lo", "b_port", "first_ns", "last_ns", "packets_ab",
             "packets_ba", "bytes_ab", "bytes_ba", "a_local", "b_local")


def flow_slice(ft, f0: int, f1: int):
    """The FlowTable of flows f0..f1-1 (numbered from 0), sharing the capture's packet rows.
    Its flow_of and dir_of stay the capture's (flow_of numbers the whole capture's flows):
    the metrics read a flow's rows through order/start, never through flow_of."""
    if f0 == 0 and f1 == len(ft):
        return ft
    import dataclasses
    a, b = int(ft.start[f0]), int(ft.start[f1])
    return dataclasses.replace(ft, order=ft.order[a:b], start=ft.start[f0:f1 + 1] - a,
                               **{k: getattr(ft, k)[f0:f1] for k in _PER_FLOW})


def _renumber(metrics: list, f0: int) -> None:
    """Flow numbers of a batch's results from the batch's (0 = f0) to the capture's."""
    for m in metrics:
        m.flow += f0
        if m.tcp is not None:
            m.tcp.flow += f0
        for d in (m.ab, m.ba):
            for r in d.rtp:
                # FlowRtpStream is frozen (a stream is a value); its number is set once, here
                object.__setattr__(r.stream, "flow", r.stream.flow + f0)


def flow_metrics_json(metrics: list[FlowMetrics]) -> list[dict]:
    """to_json() of many FlowMetrics (the garbage collector paused, as in compute_flow_metrics)."""
    with gc_paused():
        return [m.to_json() for m in metrics]


def _compute_flow_metrics(cap, ft, cl, bin_s: float) -> list[FlowMetrics]:
    nf = len(ft)
    if nf == 0:
        return []
    pk = cap.packets
    groups = group_by_direction(ft)
    layout = bin_layout(ft.first_ns, ft.last_ns, bin_s)
    ng = 2 * nf
    rows, gid = groups.rows, groups.gid
    ts = pk.ts_ns[rows]
    wl = pk.wirelen[rows].astype(np.int64)
    size = pk.payload_wirelen[rows].astype(np.int64)
    fl, dr = gid >> 1, gid & 1

    # Totals and rate series.
    counts = groups.counts
    nbytes = np.bincount(gid, weights=wl, minlength=ng)
    payload = np.bincount(gid, weights=size, minlength=ng)
    bytes_flat = layout.accumulate(fl, dr, ts, wl).astype(np.int64)
    pkts_flat = layout.accumulate(fl, dr, ts)
    has = counts > 0
    first_t = np.zeros(ng, dtype=np.int64)
    last_t = np.zeros(ng, dtype=np.int64)
    first_t[has] = ts[groups.start[:-1][has]]
    last_t[has] = ts[groups.start[1:][has] - 1]

    # Inter-arrival times.
    later = ~groups.first_in_group()
    iat = (ts[1:] - ts[:-1])[later[1:]] if len(ts) > 1 else np.zeros(0, dtype=np.int64)
    iat = np.maximum(iat, 0)                              # merged captures: never negative
    igid = gid[later]
    i_sorted, i_start = grouped_sort(iat, igid, ng)
    iq = grouped_quantiles(i_sorted, i_start, IAT_QUANTILES) / 1e9
    n_iat = np.diff(i_start)
    iat_s = iat / 1e9
    with np.errstate(invalid="ignore", divide="ignore"):
        i_mean = np.bincount(igid, weights=iat_s, minlength=ng) / n_iat
        i_std = np.sqrt(np.bincount(igid, weights=(iat_s - i_mean[igid]) ** 2, minlength=ng) / n_iat)
        i_cv = np.where(i_mean > 0, i_std / i_mean, np.nan)
    gap_thr = np.maximum(GAP_MEDIAN_FACTOR * iq[:, 2], GAP_MIN_S)
    is_gap = iat_s > gap_thr[igid]
    gap_pos = np.flatnonzero(later)[is_gap]             # position of the packet after each gap
    gap_g = gid[gap_pos]
    gap_start = (ts[gap_pos - 1] - layout.origin_ns[gap_g >> 1]) / 1e9
    gap_len = iat_s[is_gap]
    # seconds, a float even with no gap at all (numpy's weighted bincount of nothing is integer)
    silent = np.bincount(gap_g, weights=gap_len, minlength=ng).astype(np.float64)
    gap_split = np.searchsorted(gap_g, np.arange(ng + 1))   # gaps of group g: gap_split[g]:gap_split[g+1]

    # Sizes.
    s_sorted, s_start = grouped_sort(size, gid, ng)
    s_med = grouped_quantiles(s_sorted, s_start, (0.5,))[:, 0]
    with np.errstate(invalid="ignore", divide="ignore"):
        s_mean = payload / counts
        s_std = np.sqrt(np.bincount(gid, weights=(size - s_mean[gid]) ** 2, minlength=ng) / counts)
    s_min = np.zeros(ng, dtype=np.int64)
    s_max = np.zeros(ng, dtype=np.int64)
    s_min[has] = s_sorted[s_start[:-1][has]]
    s_max[has] = s_sorted[s_start[1:][has] - 1]
    nh = len(SIZE_EDGES)
    hbin = np.searchsorted(np.asarray(SIZE_EDGES), size, side="right") - 1
    hist = np.bincount(gid * nh + hbin, minlength=ng * nh).reshape(ng, nh)

    # RTP streams and TCP.
    rtp_by_group: dict[int, list[RtpStreamMetrics]] = {}
    for st in find_flow_rtp_streams(cap, ft, cl, groups):
        rtp_by_group.setdefault(2 * st.flow + st.direction, []).append(rtp_stream_metrics(st, layout))
    tcp = compute_tcp_metrics(cap, ft, groups=groups, layout=layout)

    # Assemble: plain Python values first, so the loop does no numpy scalar work.
    L = {k: v.tolist() for k, v in dict(
        counts=counts, nbytes=nbytes, payload=payload, first=first_t, last=last_t, n_iat=n_iat,
        q0=iq[:, 0], q1=iq[:, 1], q2=iq[:, 2], q3=iq[:, 3], q4=iq[:, 4], mean=i_mean, cv=i_cv, thr=gap_thr,
        silent=silent, s_min=s_min, s_max=s_max, s_med=s_med, s_mean=s_mean, s_std=s_std, gsplit=gap_split,
        nbins=layout.n_bins, boff=layout.offset, origin=layout.origin_ns).items()}
    gap_start_l, gap_len_l = gap_start.tolist(), gap_len.tolist()
    proto = np.asarray(ft.proto).tolist()

    out = []
    for f in range(nf):
        nb = L["nbins"][f]
        base = L["boff"][f]
        origin = L["origin"][f]
        dirs = []
        for d in (0, 1):
            g = 2 * f + d
            n = L["counts"][g]
            iat_stats = None
            if L["n_iat"][g] > 0:
                cv = L["cv"][g]
                iat_stats = IatStats(L["q0"][g], L["q1"][g], L["q2"][g], L["q3"][g], L["q4"][g], L["mean"][g],
                                     None if cv != cv else cv)
            a, b = L["gsplit"][g], L["gsplit"][g + 1]
            gaps = tuple(Gap(gap_start_l[k], gap_len_l[k]) for k in range(a, b))
            sizes = None
            if n > 0:
                sizes = SizeStats(L["s_min"][g], L["s_med"][g], L["s_max"][g], L["s_mean"][g], L["s_std"][g], hist[g])
            lo = base + d * nb
            t = tcp[f]
            dirs.append(DirectionMetrics(
                packets=n, bytes=int(L["nbytes"][g]), payload_bytes=int(L["payload"][g]),
                first_s=(L["first"][g] - origin) / 1e9 if n else None,
                duration_s=(L["last"][g] - L["first"][g]) / 1e9 if n else 0.0,
                bytes_series=bytes_flat[lo:lo + nb], packets_series=pkts_flat[lo:lo + nb],
                iat=iat_stats, gap_threshold_s=L["thr"][g] if L["n_iat"][g] > 0 else None,
                gaps=gaps, silent_s=L["silent"][g], sizes=sizes,
                rtp=tuple(rtp_by_group.get(g, ())),
                tcp=(t.ab if d == 0 else t.ba) if t is not None else None,
            ))
        out.append(FlowMetrics(flow=f, transport=transport_name(proto[f]), start_ns=origin, bin_s=layout.bin_s,
                               n_bins=nb, ab=dirs[0], ba=dirs[1], tcp=tcp[f]))
    return out


__all__ = ["compute_flow_metrics", "flow_metrics_json", "find_flow_rtp_streams", "rtp_stream_metrics", "FlowMetrics",
           "DirectionMetrics", "IatStats", "Gap", "SizeStats", "FlowRtpStream", "RtpStreamMetrics", "SIZE_EDGES"]
