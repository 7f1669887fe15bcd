"""TCP transport metrics per flow and direction: retransmissions, losses, RTT, goodput, stalls.

A *direction* is a sender: "ab" is what side a sent (its segments) and what side b
acknowledged. All quantities are seen at the capture point:

- Sequence numbers are unwrapped (32-bit serial arithmetic, RFC 1982) relative to the first
  segment of the direction, so byte offsets keep growing across wrap-arounds. SYN and FIN
  occupy one sequence number each (RFC 9293 3.4).
- Every segment that occupies sequence space is classed by one pass in time order (a numba
  loop: it keeps the highest sequence number seen and the holes below it):
    *new*            bytes above the highest sequence number seen so far;
    *retransmission* bytes at or below it that were already seen (sent again: lost after the
                     capture point, or a spurious retransmission);
    *gap filled*     bytes at or below it that were never seen: a hole below the highest
                     sequence number, filled later (lost before the capture point, or
                     reordered). A hole filled within the reordering window (the handshake
                     RTT, else 3 ms, as Wireshark's out-of-order rule) counts as reordering.
  A one-byte segment just below the highest sequence number is a keep-alive, not a
  retransmission (as Wireshark). Inferred losses = retransmissions + gaps filled outside
  the reordering window.
- RTT samples: the time from a segment to the first ACK from the other side that
  acknowledges exactly its last byte. Karn's rule (RFC 6298 3): no sample from a segment that
  was sent more than once, nor from a segment some retransmission overlaps. The handshake
  gives one sample per half: SYN -> SYN-ACK is the round trip between the capture point and
  the responder, SYN-ACK -> ACK the round trip to the initiator; their sum is the path RTT.
  A capture taken at one end sees the whole path in one half.
- Goodput: new bytes acknowledged by the other side per time bin (SYN/FIN not counted).
- Stalls: no new data from the sender for longer than max(4 x median RTT, 1 s) while the
  flow is open (until its FIN or either side's RST). `outstanding` tells a transport stall
  (data still unacknowledged once the threshold had passed) from the application pausing.
- Zero-window events: runs of ACKs from a side advertising a zero receive window; they are
  reported under the direction of the side that advertised them.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from throttledetect.metrics.series import (
    BinLayout,
    DirGroups,
    bin_layout,
    group_by_direction,
    grouped_quantiles,
    grouped_searchsorted,
    grouped_sort,
    nan_to_none,
    opt,
    segmented_cummax,
    serial_unwrap,
)
from throttledetect.read.table import FRAG_LATER
from throttledetect.streams.tcp import REORDER_WINDOW_S, sequence_pass

FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10
SEQ_BITS = 32
STALL_RTT_FACTOR = 4.0
STALL_MIN_S = 1.0


@dataclass(frozen=True)
class Handshake:
    """Timing of SYN -> SYN-ACK -> ACK at the capture point (epoch ns; None where not seen)."""

    initiator: str                    # "a" or "b": the side that sent the SYN
    syn_ns: int | None                # the last SYN before the SYN-ACK
    synack_ns: int | None
    ack_ns: int | None
    syns: int                         # SYNs sent before the SYN-ACK (> 1: the SYN was retransmitted)

    @property
    def syn_to_synack_s(self) -> float | None:
        """Round trip capture point <-> responder."""
        if self.syn_ns is None or self.synack_ns is None:
            return None
        return (self.synack_ns - self.syn_ns) / 1e9

    @property
    def synack_to_ack_s(self) -> float | None:
        """Round trip capture point <-> initiator."""
        if self.synack_ns is None or self.ack_ns is None:
            return None
        return (self.ack_ns - self.synack_ns) / 1e9

    @property
    def rtt_s(self) -> float | None:
        """Path RTT initiator <-> responder: both halves."""
        if self.syn_ns is None or self.ack_ns is None or self.synack_ns is None:
            return None
        return (self.ack_ns - self.syn_ns) / 1e9

    def to_json(self) -> dict:
        return {"initiator": self.initiator, "syns": self.syns, "syn_to_synack_s": opt(self.syn_to_synack_s),
                "synack_to_ack_s": opt(self.synack_to_ack_s), "rtt_s": opt(self.rtt_s),
                "completed": self.ack_ns is not None}


@dataclass(frozen=True)
class Stall:
    start_s: float        # last new data before the stall, seconds from the flow's first packet
    length_s: float
    outstanding: bool     # data sent before it was still unacknowledged after the threshold had passed

    def to_json(self) -> dict:
        return {"start_s": self.start_s, "length_s": self.length_s, "outstanding": self.outstanding}


@dataclass(frozen=True)
class ZeroWindow:
    start_s: float        # first zero-window advertisement, seconds from the flow's first packet
    length_s: float       # until the next advertisement of an open window (or the last zero one)
    packets: int
    reopened: bool

    def to_json(self) -> dict:
        return {"start_s": self.start_s, "length_s": self.length_s, "packets": self.packets,
                "reopened": self.reopened}


@dataclass(eq=False)
class TcpDirectionMetrics:
    """What one side sent and how the other side acknowledged it (see the module docstring)."""

    segments: int                 # segments occupying sequence space (data, SYN, FIN), keep-alives excluded
    payload_bytes: int            # payload sent, retransmissions included
    new_bytes: int                # payload bytes first seen (new or filling a hole; SYN and FIN not counted)
    retransmissions: int
    retransmitted_bytes: int
    gaps_filled: int              # segments filling a hole outside the reordering window
    gap_bytes_filled: int
    reordered: int                # segments filling a hole within the reordering window
    keepalives: int
    inferred_losses: int          # retransmissions + gaps_filled
    retransmission_series: np.ndarray   # retransmitted segments per bin
    rtt_samples_s: np.ndarray     # Karn-clean samples in time order (the handshake's included)
    rtt_times_s: np.ndarray       # when each sample's ACK was seen, seconds from the flow's first packet
    rtt_mean_series_s: np.ndarray  # mean sample per bin (NaN: none)
    rtt_min_series_s: np.ndarray   # smallest sample per bin (NaN: none)
    rtt_min_s: float | None
    rtt_median_s: float | None
    rtt_p95_s: float | None
    handshake_rtt_s: float | None  # the handshake half answered by the other side
    acked_bytes: int              # new bytes acknowledged by the other side
    goodput_series: np.ndarray    # new bytes acknowledged per bin
    stall_threshold_s: float
    stalls: tuple[Stall, ...]
    zero_windows: tuple[ZeroWindow, ...]   # advertised by this direction's sender
    zero_window_packets: int

    @property
    def retransmission_rate(self) -> float:
        return self.retransmissions / self.segments if self.segments else 0.0

    @property
    def stalled_s(self) -> float:
        return float(sum(s.length_s for s in self.stalls))

    def to_json(self) -> dict:
        return {
            "segments": self.segments,
            "payload_bytes": self.payload_bytes,
            "new_bytes": self.new_bytes,
            "retransmissions": {"count": self.retransmissions, "bytes": self.retransmitted_bytes,
                                "rate": self.retransmission_rate,
                                "series": self.retransmission_series.tolist()},
            "gaps_filled": {"count": self.gaps_filled, "bytes": self.gap_bytes_filled},
            "reordered": self.reordered,
            "keepalives": self.keepalives,
            "inferred_losses": self.inferred_losses,
            "rtt": {"samples": int(len(self.rtt_samples_s)), "min_s": self.rtt_min_s,
                    "median_s": self.rtt_median_s, "p95_s": self.rtt_p95_s,
                    "handshake_s": self.handshake_rtt_s, "series_mean_s": nan_to_none(self.rtt_mean_series_s),
                    "series_min_s": nan_to_none(self.rtt_min_series_s)},
            "goodput": {"acked_bytes": self.acked_bytes, "series": self.goodput_series.tolist()},
            "stalls": {"threshold_s": self.stall_threshold_s, "count": len(self.stalls),
                       "total_s": self.stalled_s, "list": [s.to_json() for s in self.stalls]},
            "zero_window": {"packets": self.zero_window_packets, "count": len(self.zero_windows),
                            "total_s": float(sum(z.length_s for z in self.zero_windows)),
                            "events": [z.to_json() for z in self.zero_windows]},
        }


@dataclass(eq=False)
class TcpFlowMetrics:
    flow: int
    handshake: Handshake | None
    ab: TcpDirectionMetrics
    ba: TcpDirectionMetrics

    def direction(self, name: str) -> TcpDirectionMetrics:
        return self.ab if name == "ab" else self.ba

    @property
    def path_rtt_s(self) -> float | None:
        """Initiator <-> responder RTT: the handshake, else the sum of both directions' median samples."""
        if self.handshake is not None and self.handshake.rtt_s is not None:
            return self.handshake.rtt_s
        if self.ab.rtt_median_s is not None and self.ba.rtt_median_s is not None:
            return self.ab.rtt_median_s + self.ba.rtt_median_s
        return None

    def to_json(self) -> dict:
        return {"handshake": self.handshake.to_json() if self.handshake else None, "path_rtt_s": self.path_rtt_s,
                "ab": self.ab.to_json(), "ba": self.ba.to_json()}


def _first_per_group(gid: np.ndarray, n_groups: int, fill=-1) -> np.ndarray:
    """Index of the first element of each group id in a group-sorted array (fill where absent)."""
    out = np.full(n_groups, fill, dtype=np.int64)
    if len(gid):
        g, idx = np.unique(gid, return_index=True)
        out[g] = idx
    return out


def compute_tcp_metrics(cap, ft, *, bin_s: float = 1.0, groups: DirGroups | None = None,
                        layout: BinLayout | None = None) -> list[TcpFlowMetrics | None]:
    """TcpFlowMetrics for every TCP flow of a FlowTable (None for the other flows).

    Vectorised over all TCP flows at once; `groups` and `layout` (from metrics.series) may be
    passed in when the caller has them already. Series use the flow's bins (`bin_s`, aligned to
    the flow's first packet).
    """
    nf = len(ft)
    out: list[TcpFlowMetrics | None] = [None] * nf
    is_tcp = np.asarray(ft.proto) == 6
    if not is_tcp.any():
        return out
    if groups is None:
        groups = group_by_direction(ft)
    if layout is None:
        layout = bin_layout(ft.first_ns, ft.last_ns, bin_s)
    pk = cap.packets
    ng = 2 * nf
    g_all = groups.select_flows(is_tcp)
    rows = g_all.rows
    ok = (pk.payload_off[rows] >= 0) & ((pk.frag[rows] & FRAG_LATER) == 0)
    rows = rows[ok]
    gid = g_all.gid[ok]
    ts = pk.ts_ns[rows]
    flags = pk.tcp_flags[rows].astype(np.int64)
    plen = pk.payload_wirelen[rows].astype(np.int64)
    syn = (flags & SYN) != 0
    fin = (flags & FIN) != 0
    rst = (flags & RST) != 0
    ackf = (flags & ACK) != 0

    # --- sequence space: unwrap per direction, relative to its first segment -----------------
    sp = np.flatnonzero(~rst)                       # an RST's sequence number may be anything
    seqlen = plen + syn + fin
    rel = serial_unwrap(pk.tcp_seq[rows[sp]], gid[sp], SEQ_BITS)
    seq0 = np.zeros(ng, dtype=np.int64)             # raw first sequence number per group
    has_seq = np.zeros(ng, dtype=bool)
    f_sp = _first_per_group(gid[sp], ng)
    present = f_sp >= 0
    seq0[present] = pk.tcp_seq[rows[sp[f_sp[present]]]]
    has_seq[present] = True

    dsel = seqlen[sp] > 0                           # segments occupying sequence space
    dpos = sp[dsel]                                 # positions (into rows) of those segments
    d_gid = gid[dpos]
    d_s = rel[dsel]
    d_e = d_s + seqlen[dpos]
    d_ts = ts[dpos]
    d_plen = plen[dpos]
    nd = len(dpos)
    retx = np.zeros(nd, dtype=np.int64)
    fill = np.zeros(nd, dtype=np.int64)
    new = np.zeros(nd, dtype=np.int64)
    fill_delay = np.zeros(nd, dtype=np.int64)
    keepalive = np.zeros(nd, dtype=bool)
    ka_cand = (d_plen == 1) & ~syn[dpos] & ~fin[dpos]
    if nd:
        sequence_pass(d_gid, d_s, d_e, d_ts, ka_cand, retx, fill, new, fill_delay, keepalive)

    # --- handshake per flow -------------------------------------------------------------------
    handshakes = _handshakes(gid, ts, flags, pk.tcp_seq[rows], pk.tcp_ack[rows], nf)
    hs_rtt_ns = np.full(nf, -1, dtype=np.int64)      # full path RTT, -1 unknown
    half_ns = np.full(ng, -1, dtype=np.int64)        # per sender group: its handshake half
    for f, h in handshakes.items():
        init = 0 if h.initiator == "a" else 1
        if h.syn_ns is not None and h.synack_ns is not None:
            half_ns[2 * f + init] = h.synack_ns - h.syn_ns
        if h.synack_ns is not None and h.ack_ns is not None:
            half_ns[2 * f + (1 - init)] = h.ack_ns - h.synack_ns
        if h.rtt_s is not None:
            hs_rtt_ns[f] = h.ack_ns - h.syn_ns

    # --- classes --------------------------------------------------------------------------------
    reorder_ns = np.where(hs_rtt_ns >= 0, hs_rtt_ns, int(REORDER_WINDOW_S * 1e9))[d_gid >> 1]
    is_retx = (retx > 0) & ~keepalive
    is_fill = fill > 0
    is_reorder = is_fill & (fill_delay >= 0) & (fill_delay < reorder_ns) & ~is_retx
    is_gapfill = is_fill & ~is_reorder
    counted = ~keepalive
    n_seg = np.bincount(d_gid[counted], minlength=ng)
    n_retx = np.bincount(d_gid[is_retx], minlength=ng)
    b_retx = np.bincount(d_gid, weights=np.minimum(retx, d_plen) * is_retx, minlength=ng)
    n_fill = np.bincount(d_gid[is_gapfill], minlength=ng)
    b_fill = np.bincount(d_gid, weights=np.minimum(fill, d_plen) * is_gapfill, minlength=ng)
    n_reord = np.bincount(d_gid[is_reorder], minlength=ng)
    n_ka = np.bincount(d_gid[keepalive], minlength=ng)
    n_loss = np.bincount(d_gid[is_retx | is_gapfill], minlength=ng)
    payload = np.bincount(gid, weights=plen, minlength=ng)
    new_payload = np.bincount(d_gid, weights=np.minimum(new + fill, d_plen), minlength=ng)
    retx_flat = layout.accumulate(d_gid[is_retx] >> 1, d_gid[is_retx] & 1, d_ts[is_retx])

    # --- ACKs: unwrap in the sequence space of the direction they acknowledge ----------------
    ap = np.flatnonzero(ackf & ~rst)
    a_gid = gid[ap]                                  # the acknowledging group
    t_gid = a_gid ^ 1                                # the group whose data it acknowledges
    known = has_seq[t_gid]
    ap, a_gid, t_gid = ap[known], a_gid[known], t_gid[known]
    ack_raw = pk.tcp_ack[rows[ap]].astype(np.int64)
    f_ap = _first_per_group(a_gid, ng)
    base = np.zeros(ng, dtype=np.int64)
    m = f_ap >= 0
    half = 1 << (SEQ_BITS - 1)
    base[m] = (ack_raw[f_ap[m]] - seq0[np.flatnonzero(m) ^ 1] + half) % (1 << SEQ_BITS) - half
    a_val = serial_unwrap(ack_raw, a_gid, SEQ_BITS, base)
    a_ts = ts[ap]
    a_max = segmented_cummax(a_val, a_gid)
    first_a = np.r_[True, a_gid[1:] != a_gid[:-1]] if len(a_gid) else np.zeros(0, dtype=bool)
    prev_max = np.empty_like(a_max)
    if len(a_max):
        prev_max[1:] = a_max[:-1]
        prev_max[first_a] = np.iinfo(np.int64).min
    advancing = a_val > prev_max

    # RTT: the first ACK of exactly a segment's end, from a segment sent once. Karn's rule also drops
    # the sample when anything the ACK newly covers was sent twice (its time is the resend's).
    newseg = np.flatnonzero(new > 0)                 # their ends rise strictly within a group
    clean = (retx[newseg] == 0) & (fill[newseg] == 0)
    adv = np.flatnonzero(advancing)
    rtt_gid = np.zeros(0, dtype=np.int64)
    rtt_val = np.zeros(0, dtype=np.int64)
    rtt_t = np.zeros(0, dtype=np.int64)
    if len(adv) and len(newseg):
        ng_e, ng_g = d_e[newseg], d_gid[newseg]
        q_g, q_v = t_gid[adv], a_val[adv]
        k = grouped_searchsorted(ng_g, ng_e, q_g, q_v, "left")
        kk = np.minimum(k, len(newseg) - 1)
        hit = (k < len(newseg)) & (ng_g[kk] == q_g) & (ng_e[kk] == q_v)
        seg = newseg[kk]
        dt = a_ts[adv] - d_ts[seg]
        good = hit & clean[kk] & (dt > 0)
        rset = np.flatnonzero((retx > 0) | (fill > 0))
        if len(rset) and good.any():
            ro = np.lexsort((d_s[rset], d_gid[rset]))
            r_g, r_s, r_e = d_gid[rset][ro], d_s[rset][ro], d_e[rset][ro]
            r_emax = segmented_cummax(r_e, r_g)
            lo = np.where(first_a[adv], d_s[seg], np.minimum(prev_max[adv], d_s[seg]))
            j = grouped_searchsorted(r_g, r_s, q_g, q_v, "left") - 1
            jj = np.maximum(j, 0)
            good &= ~((j >= 0) & (r_g[jj] == q_g) & (r_emax[jj] > lo))
        rtt_gid, rtt_val, rtt_t = q_g[good], dt[good], a_ts[adv][good]
        o = np.lexsort((rtt_t, rtt_gid))
        rtt_gid, rtt_val, rtt_t = rtt_gid[o], rtt_val[o], rtt_t[o]
    rtt_sorted, rtt_start = grouped_sort(rtt_val, rtt_gid, ng)
    rtt_q = grouped_quantiles(rtt_sorted, rtt_start, (0.0, 0.5, 0.95)) / 1e9
    rtt_time_start = np.zeros(ng + 1, dtype=np.int64)
    np.cumsum(np.bincount(rtt_gid, minlength=ng), out=rtt_time_start[1:])
    # RTT over time: mean and minimum of the samples per bin, at the time of the ACK.
    rtt_idx = layout.index(rtt_gid >> 1, rtt_gid & 1, rtt_t)
    rtt_n = np.bincount(rtt_idx, minlength=layout.total)
    with np.errstate(invalid="ignore", divide="ignore"):
        rtt_mean_flat = np.bincount(rtt_idx, weights=rtt_val / 1e9, minlength=layout.total) / rtt_n
    rtt_min_flat = np.full(layout.total, np.inf)
    np.minimum.at(rtt_min_flat, rtt_idx, rtt_val / 1e9)
    rtt_min_flat[np.isinf(rtt_min_flat)] = np.nan
    rtt_rel_s = (rtt_t - layout.origin_ns[rtt_gid >> 1]) / 1e9

    # Goodput: new bytes acknowledged, not counting the SYN and FIN sequence numbers.
    inc = np.where(advancing & ~first_a, a_val - np.where(first_a, a_val, prev_max), 0)
    fin_seq = np.full(ng, np.iinfo(np.int64).max, dtype=np.int64)   # sequence number a FIN occupies
    fins = np.flatnonzero(fin[dpos])
    if len(fins):
        np.minimum.at(fin_seq, d_gid[fins], d_e[fins] - 1)
    if len(inc):
        crosses = advancing & ~first_a & (prev_max <= fin_seq[t_gid]) & (fin_seq[t_gid] < a_val)
        inc = inc - crosses
        # the SYN: an ACK that is the first to cover sequence number 0 of a direction seen from its SYN
        syn_seen = np.zeros(ng, dtype=bool)
        syn_seen[d_gid[syn[dpos]]] = True
        syn_cross = advancing & ~first_a & syn_seen[t_gid] & (prev_max <= 0) & (a_val > 0)
        inc = inc - syn_cross
    acked = np.bincount(t_gid, weights=inc, minlength=ng) if len(inc) else np.zeros(ng)
    good_flat = layout.accumulate(t_gid >> 1, t_gid & 1, a_ts, inc) if len(inc) else np.zeros(layout.total)

    # --- stalls ------------------------------------------------------------------------------------
    med = rtt_q[:, 1]
    other = med.reshape(-1, 2)[:, ::-1].reshape(-1)
    rtt_for = np.where(np.isfinite(med), med, other)
    hs_full = np.repeat(np.where(hs_rtt_ns >= 0, hs_rtt_ns / 1e9, np.nan), 2)
    rtt_for = np.where(np.isfinite(rtt_for), rtt_for, hs_full)
    thr_s = np.maximum(STALL_RTT_FACTOR * np.nan_to_num(rtt_for, nan=0.0), STALL_MIN_S)
    stalls = _stalls(d_gid, d_ts, d_e, d_plen, new, thr_s, gid, ts, fin, rst, nf, ng, a_gid, a_ts, a_max, ft, layout)

    # --- zero windows ------------------------------------------------------------------------------
    zwins = _zero_windows(gid, ts, flags, pk.tcp_win[rows], ng, layout)
    zw_packets = np.bincount(gid[ackf & ~syn & ~rst & (pk.tcp_win[rows] == 0)], minlength=ng)

    # --- assemble ------------------------------------------------------------------------------------
    L = {name: arr.tolist() for name, arr in dict(
        n_seg=n_seg, n_retx=n_retx, b_retx=b_retx, n_fill=n_fill, b_fill=b_fill, n_reord=n_reord, n_ka=n_ka,
        n_loss=n_loss, payload=payload, high=new_payload, acked=acked, thr=thr_s, half=half_ns,
        zwp=zw_packets).items()}
    qmin, qmed, qp95 = (rtt_q[:, j].tolist() for j in range(3))
    for f in np.flatnonzero(is_tcp).tolist():
        dirs = []
        for d in (0, 1):
            g = 2 * f + d
            dirs.append(TcpDirectionMetrics(
                segments=int(L["n_seg"][g]), payload_bytes=int(L["payload"][g]), new_bytes=int(L["high"][g]),
                retransmissions=int(L["n_retx"][g]), retransmitted_bytes=int(L["b_retx"][g]),
                gaps_filled=int(L["n_fill"][g]), gap_bytes_filled=int(L["b_fill"][g]),
                reordered=int(L["n_reord"][g]), keepalives=int(L["n_ka"][g]), inferred_losses=int(L["n_loss"][g]),
                retransmission_series=layout.series(retx_flat, f, d),
                rtt_samples_s=rtt_val[rtt_time_start[g]:rtt_time_start[g + 1]] / 1e9,
                rtt_times_s=rtt_rel_s[rtt_time_start[g]:rtt_time_start[g + 1]],
                rtt_mean_series_s=layout.series(rtt_mean_flat, f, d),
                rtt_min_series_s=layout.series(rtt_min_flat, f, d),
                rtt_min_s=opt(qmin[g]), rtt_median_s=opt(qmed[g]), rtt_p95_s=opt(qp95[g]),
                handshake_rtt_s=L["half"][g] / 1e9 if L["half"][g] >= 0 else None,
                acked_bytes=int(L["acked"][g]),
                goodput_series=layout.series(good_flat, f, d).astype(np.int64),
                stall_threshold_s=float(L["thr"][g]), stalls=stalls.get(g, ()),
                zero_windows=zwins.get(g, ()), zero_window_packets=int(L["zwp"][g]),
            ))
        out[f] = TcpFlowMetrics(flow=f, handshake=handshakes.get(f), ab=dirs[0], ba=dirs[1])
    return out


def _handshakes(gid, ts, flags, seq, ack, nf) -> dict[int, Handshake]:
    """SYN / SYN-ACK / ACK timing per flow that has a SYN or SYN-ACK (vectorised over flows)."""
    syn = (flags & SYN) != 0
    ackf = (flags & ACK) != 0
    rst = (flags & RST) != 0
    flow = gid >> 1
    out: dict[int, Handshake] = {}
    sa = np.flatnonzero(syn & ackf)
    pure_syn = np.flatnonzero(syn & ~ackf)
    if len(sa) == 0 and len(pure_syn) == 0:
        return out
    # The first SYN-ACK of each flow (either direction); the initiator is the other side.
    sa_first = np.full(nf, -1, dtype=np.int64)
    if len(sa):
        o = np.lexsort((ts[sa], flow[sa]))
        fl, idx = np.unique(flow[sa][o], return_index=True)
        sa_first[fl] = sa[o][idx]
    # Flows with SYNs but no SYN-ACK: the first SYN's sender initiated.
    syn_first = np.full(nf, -1, dtype=np.int64)
    if len(pure_syn):
        o = np.lexsort((ts[pure_syn], flow[pure_syn]))
        fl, idx = np.unique(flow[pure_syn][o], return_index=True)
        syn_first[fl] = pure_syn[o][idx]
    init_dir = np.full(nf, -1, dtype=np.int64)
    has_sa = sa_first >= 0
    init_dir[has_sa] = 1 - (gid[sa_first[has_sa]] & 1)
    only_syn = ~has_sa & (syn_first >= 0)
    init_dir[only_syn] = gid[syn_first[only_syn]] & 1
    t_sa = np.where(has_sa, ts[np.maximum(sa_first, 0)], np.iinfo(np.int64).max)
    # The SYNs from the initiator before the SYN-ACK: count, and the last one.
    syn_ok = (init_dir[flow[pure_syn]] == (gid[pure_syn] & 1)) & (ts[pure_syn] <= t_sa[flow[pure_syn]])
    ps = pure_syn[syn_ok]
    syn_count = np.bincount(flow[ps], minlength=nf)
    syn_last = np.full(nf, -1, dtype=np.int64)
    if len(ps):
        np.maximum.at(syn_last, flow[ps], ps)   # positions are time-ordered within a group
    # The initiator's first ACK after the SYN-ACK that acknowledges it.
    ack_first = np.full(nf, -1, dtype=np.int64)
    cand = np.flatnonzero(ackf & ~syn & ~rst & has_sa[flow])
    if len(cand):
        fc = flow[cand]
        sa_seq = seq[sa_first[fc]].astype(np.int64)
        okc = ((gid[cand] & 1) == init_dir[fc]) & (ts[cand] >= t_sa[fc]) & \
            (ack[cand].astype(np.int64) == (sa_seq + 1) % (1 << SEQ_BITS))
        cand = cand[okc]
        if len(cand):
            ack_first[:] = np.iinfo(np.int64).max
            np.minimum.at(ack_first, flow[cand], cand)
            ack_first[ack_first == np.iinfo(np.int64).max] = -1
    for f in np.flatnonzero(init_dir >= 0).tolist():
        s_i, a_i, k_i = int(syn_last[f]), int(sa_first[f]), int(ack_first[f])
        out[f] = Handshake(initiator="a" if init_dir[f] == 0 else "b",
                           syn_ns=int(ts[s_i]) if s_i >= 0 else None,
                           synack_ns=int(ts[a_i]) if a_i >= 0 else None,
                           ack_ns=int(ts[k_i]) if k_i >= 0 else None,
                           syns=int(syn_count[f]))
    return out


def _stalls(d_gid, d_ts, d_e, d_plen, new, thr_s, gid, ts, fin, rst, nf, ng, a_gid, a_ts, a_max, ft,
            layout) -> dict[int, tuple[Stall, ...]]:
    """Intervals without new data longer than the threshold of their direction (see module docstring)."""
    out: dict[int, tuple[Stall, ...]] = {}
    nd_ = np.flatnonzero((new > 0) & (d_plen > 0))     # new payload (not a bare SYN/FIN)
    if len(nd_) == 0:
        return out
    g, t, e = d_gid[nd_], d_ts[nd_], d_e[nd_]
    thr_ns = (thr_s * 1e9).astype(np.int64)
    # Gaps between consecutive new data of the same direction.
    same = g[1:] == g[:-1]
    gap = t[1:] - t[:-1]
    inner = np.flatnonzero(same & (gap > thr_ns[g[1:]]))
    s_g, s_t0, s_t1, s_high = g[inner], t[inner], t[inner + 1], e[inner]
    # After the last new data: until this side's FIN, either side's RST, or the flow's last packet.
    last = np.flatnonzero(np.r_[~same, True])
    flow_of_g = g[last] >> 1
    close = np.asarray(ft.last_ns, dtype=np.int64)[flow_of_g].copy()
    big = np.iinfo(np.int64).max
    fin_t = np.full(ng, big, dtype=np.int64)
    fin_pos = np.flatnonzero(fin)
    if len(fin_pos):
        np.minimum.at(fin_t, gid[fin_pos], ts[fin_pos])
    rst_t = np.full(nf, big, dtype=np.int64)
    rst_pos = np.flatnonzero(rst)
    if len(rst_pos):
        np.minimum.at(rst_t, gid[rst_pos] >> 1, ts[rst_pos])
    close = np.minimum(close, np.minimum(fin_t[g[last]], rst_t[flow_of_g]))
    tail = close - t[last] > thr_ns[g[last]]
    s_g = np.r_[s_g, g[last][tail]]
    s_t0 = np.r_[s_t0, t[last][tail]]
    s_t1 = np.r_[s_t1, close[tail]]
    s_high = np.r_[s_high, e[last][tail]]
    if len(s_g) == 0:
        return out
    # Outstanding: once the silence had lasted the threshold, the data sent before it was still
    # unacknowledged (a sender whose data was all acknowledged and that sends nothing is idle).
    acked = np.full(len(s_g), np.iinfo(np.int64).min, dtype=np.int64)
    if len(a_ts):
        # ACKs are grouped by the acknowledging side: the other group of the same flow.
        k = grouped_searchsorted(a_gid, a_ts, s_g ^ 1, s_t0 + thr_ns[s_g], "right") - 1
        kk = np.maximum(k, 0)
        hit = (k >= 0) & (a_gid[kk] == (s_g ^ 1))
        acked[hit] = a_max[kk[hit]]
    outstanding = acked < s_high
    o = np.lexsort((s_t0, s_g))
    origin = layout.origin_ns
    for i in o.tolist():          # one object per stall (each at least a second long)
        gg = int(s_g[i])
        st = Stall(start_s=(int(s_t0[i]) - int(origin[gg >> 1])) / 1e9, length_s=(int(s_t1[i]) - int(s_t0[i])) / 1e9,
                   outstanding=bool(outstanding[i]))
        out[gg] = out.get(gg, ()) + (st,)
    return out


def _zero_windows(gid, ts, flags, win, ng, layout) -> dict[int, tuple[ZeroWindow, ...]]:
    """Runs of zero-window advertisements per advertising group."""
    out: dict[int, tuple[ZeroWindow, ...]] = {}
    w = np.flatnonzero(((flags & ACK) != 0) & ((flags & (SYN | RST)) == 0))   # packets that advertise a window
    if len(w) == 0:
        return out
    zero = win[w] == 0
    if not zero.any():
        return out
    g = gid[w]
    new_group = np.r_[True, g[1:] != g[:-1]]
    start = zero & (new_group | ~np.r_[False, zero[:-1]])
    run = np.cumsum(start) - 1
    zi = np.flatnonzero(zero)
    r = run[zi]
    n_runs = int(run[zi[-1]]) + 1
    first = np.flatnonzero(start)
    count = np.bincount(r, minlength=n_runs)
    last = np.zeros(n_runs, dtype=np.int64)
    np.maximum.at(last, r, zi)
    nxt = last + 1
    reopened = (nxt < len(w))
    reopened[reopened] = g[nxt[reopened]] == g[last[reopened]]
    t_end = np.where(reopened, ts[w[np.minimum(nxt, len(w) - 1)]], ts[w[last]])
    t0 = ts[w[first]]
    origin = layout.origin_ns
    for i in range(n_runs):       # one object per zero-window episode
        gg = int(g[first[i]])
        z = ZeroWindow(start_s=(int(t0[i]) - int(origin[gg >> 1])) / 1e9, length_s=(int(t_end[i]) - int(t0[i])) / 1e9,
                       packets=int(count[i]), reopened=bool(reopened[i]))
        out[gg] = out.get(gg, ()) + (z,)
    return out


__all__ = ["compute_tcp_metrics", "TcpFlowMetrics", "TcpDirectionMetrics", "Handshake", "Stall", "ZeroWindow"]
