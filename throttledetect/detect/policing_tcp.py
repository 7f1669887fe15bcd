"""Policing of TCP: the SIGCOMM'16 policing detector (Flach et al.) over the packet table, with
a p-value and a host-pair scope. The method, H0 and the test are in policing.py's docstring.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from throttledetect.detect.policing_stats import (KIND, RankTest, ScoreTest, fill_score_test, fmt_rate as _fmt_rate,
                                                rank_test)
from throttledetect.detect.result import Detection
from throttledetect.jit import njit
from throttledetect.wire.tcpopts import MAX_SACK, tcp_options

# --------------------------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TcpPolicingParams:
    """Thresholds of the SIGCOMM'16 detector (the names and values of policing_detector.py)."""

    min_num_samples: int = 15                 # lost and passed packets, each
    min_num_slices_with_loss: int = 3         # RTT-long slices that contain a loss
    late_loss_threshold: float = 2e6          # bytes into the segment of the first loss
    zero_threshold_loss_rtt_multiplier: float = 2.0   # tokens of rate x 2 median RTTs
    zero_threshold_pass_rtt_multiplier: float = 0.75  # tokens of rate x 0.75 median RTTs
    zero_threshold_loss_out_of_range: float = 0.10    # share of losses allowed far from the median loss fill
    zero_threshold_pass_out_of_range: float = 0.03    # share of passes allowed far below it
    inflated_rtt_percentile: float = 10.0
    inflated_rtt_threshold: float = 1.3       # x the 10th percentile RTT
    inflated_rtt_min_ms: float = 20.0         # an RTT below this is never "inflated"
    inflated_rtt_tolerance: float = 0.20      # share of losses allowed after an inflated RTT
    cutoff: int = 0                           # losses ignored at each end for the rate (paper: 0 and 2)


PAPER_PARAMS = TcpPolicingParams()

# Result codes of the paper's detector, in the order it applies the checks.
RESULT_OK = 0
RESULT_INSUFFICIENT_LOSS = 1
RESULT_LATE_LOSS = 2
RESULT_NEGATIVE_FILL = 3
RESULT_HIGHER_FILL_ON_LOSS = 4
RESULT_LOSS_FILL_OUT_OF_RANGE = 5
RESULT_PASS_FILL_OUT_OF_RANGE = 6
RESULT_INFLATED_RTT = 7
RESULT_NAMES = {
    RESULT_OK: "ok",
    RESULT_INSUFFICIENT_LOSS: "insufficient_loss",
    RESULT_LATE_LOSS: "late_loss",
    RESULT_NEGATIVE_FILL: "negative_fill",
    RESULT_HIGHER_FILL_ON_LOSS: "higher_fill_on_loss",
    RESULT_LOSS_FILL_OUT_OF_RANGE: "loss_fill_out_of_range",
    RESULT_PASS_FILL_OUT_OF_RANGE: "pass_fill_out_of_range",
    RESULT_INFLATED_RTT: "inflated_rtt",
}
# Check name -> the result code its failure gives.
CHECK_CODES = {
    "enough_losses": RESULT_INSUFFICIENT_LOSS,
    "early_first_loss": RESULT_LATE_LOSS,
    "nonnegative_initial_fill": RESULT_NEGATIVE_FILL,
    "enough_slices_with_loss": RESULT_INSUFFICIENT_LOSS,
    "enough_samples": RESULT_INSUFFICIENT_LOSS,
    "lower_fill_on_loss": RESULT_HIGHER_FILL_ON_LOSS,
    "loss_fill_in_range": RESULT_LOSS_FILL_OUT_OF_RANGE,
    "pass_fill_in_range": RESULT_PASS_FILL_OUT_OF_RANGE,
    "no_inflated_rtt": RESULT_INFLATED_RTT,
}
# Checks that say "too little data to judge" (-> inconclusive) rather than "not a policer".
DATA_CHECKS = ("enough_losses", "enough_slices_with_loss", "enough_samples")

# --------------------------------------------------------------------------------------------
# TCP: one direction of a connection as wire segments, with losses and RTT samples
# --------------------------------------------------------------------------------------------

_M32 = 1 << 32
_H31 = 1 << 31


@njit
def _tcp_annotate(is_data, seq, end, is_ack, ack, sack_s, sack_e, nsack, ts_ns,
                  rtx_of, spurious, ack_index, ack_delay_ns):
    """The per-connection bookkeeping of the paper's tcp_endpoint.py, in one pass.

    Rows are the connection's packets in capture order. For data rows of the analysed
    direction (``is_data``): a segment that does not advance the highest sequence sent is a
    retransmission; the most recent earlier segment holding its first byte is marked
    ``rtx_of`` = this row (lost). ACK rows of the other direction (``is_ack``) acknowledge
    unacked segments (cumulative ACK or SACK: ``ack_index``, ``ack_delay_ns``), and DSACK
    blocks below the cumulative ACK mark the latest retransmitted segment holding them as a
    spurious retransmission (``spurious``: not a loss).
    """
    n = is_data.shape[0]
    big = np.int64(1) << np.int64(62)
    seq_next = -big
    seq_acked = -big
    unacked = np.empty(n, dtype=np.int64)
    n_unacked = 0
    for i in range(n):
        rtx_of[i] = -1
        spurious[i] = False
        ack_index[i] = -1
        ack_delay_ns[i] = -1
    for i in range(n):
        if is_data[i]:
            if end[i] > seq_next:
                seq_next = end[i]
            else:
                s = seq[i]
                for j in range(i - 1, -1, -1):
                    if is_data[j] and (seq[j] == s or (seq[j] < s and s < end[j])):
                        rtx_of[j] = i
                        break
            unacked[n_unacked] = i
            n_unacked += 1
        elif is_ack[i]:
            k = nsack[i]
            advanced = ack[i] > seq_acked
            if advanced:
                seq_acked = ack[i]
            if advanced or k > 0:
                m = 0
                for u in range(n_unacked):
                    j = unacked[u]
                    done = end[j] <= seq_acked
                    if not done:
                        for b in range(k):
                            if sack_s[i, b] <= seq[j] and end[j] <= sack_e[i, b]:
                                done = True
                                break
                    if done:
                        ack_index[j] = i
                        ack_delay_ns[j] = ts_ns[i] - ts_ns[j]
                    else:
                        unacked[m] = j
                        m += 1
                n_unacked = m
            for b in range(k):
                # DSACK (RFC 2883): a block at or below the cumulative ACK.
                if sack_s[i, b] < ack[i] and sack_e[i, b] <= ack[i]:
                    for j in range(i - 1, -1, -1):
                        if is_data[j] and rtx_of[j] >= 0 and seq[j] <= sack_s[i, b] and sack_e[i, b] <= end[j]:
                            spurious[j] = True
                            break


def _unwrap32(raw: np.ndarray, ref_raw: int, ref_rel: int) -> np.ndarray:
    """32-bit sequence numbers -> int64 relative numbers, nearest to a running reference."""
    raw = raw.astype(np.int64)
    if raw.size == 0:
        return raw
    step = np.diff(raw, prepend=np.int64(ref_raw))
    step = ((step + _H31) % _M32) - _H31
    return ref_rel + np.cumsum(step)


def _near32(raw: np.ndarray, ref_raw: np.ndarray, ref_rel: np.ndarray) -> np.ndarray:
    """32-bit numbers -> relative numbers nearest to a per-row reference (raw, relative)."""
    d = ((raw.astype(np.int64) - ref_raw.astype(np.int64) + _H31) % _M32) - _H31
    return ref_rel + d


@dataclass
class TcpDirectionTrace:
    """The wire segments of one direction of a TCP connection, annotated as the paper does.

    Arrays have one row per data segment (after splitting TSO super-segments at the MSS);
    ``index`` is the segment's packet row in the capture, which the RTT filter compares with
    ``ack_index`` (the row of the ACK that covered it), so several flows can be merged.
    """

    ts_s: np.ndarray          # float64, seconds since the flow's first packet
    seq: np.ndarray           # int64, relative to the direction's first data byte
    length: np.ndarray        # int64 payload bytes
    index: np.ndarray         # int64 packet row in the capture
    rtx: np.ndarray           # bool: this segment's range was sent again
    lost: np.ndarray          # rtx and not reported spurious by DSACK
    ack_index: np.ndarray     # int64 packet row of the ACK that covered it (-1: never)
    rtt_ms: np.ndarray        # float64 ACK delay in ms (NaN: never acknowledged)
    segment: np.ndarray       # int64 request/response segment of the connection (0, 1, ...)
    segment_base: np.ndarray  # int64 per segment: relative sequence number where it starts
    mss: int
    t0_ns: int = 0            # capture time of the flow's first packet (ts_s is relative to it)
    wire_bytes: np.ndarray | None = None  # float64 link-layer bytes per wire segment (headers shared out)


def tcp_direction_trace(cap, ft, flow_index: int, direction: str) -> TcpDirectionTrace:
    """Annotate the data segments sent in ``direction`` ("ab" or "ba") of TCP flow ``flow_index``."""
    pk = cap.packets
    rows = ft.packet_indices(flow_index)
    sender = 0 if direction == "ab" else 1
    fwd = ft.dir_of[rows] == sender
    flags = pk.tcp_flags[rows].astype(np.int64)
    plen = pk.payload_wirelen[rows].astype(np.int64)
    seq_raw = pk.tcp_seq[rows].astype(np.int64)
    ack_raw = pk.tcp_ack[rows].astype(np.int64)
    ts_ns = pk.ts_ns[rows].astype(np.int64)

    opts = tcp_options(cap, rows)
    mss_opt, ts_opt, sack_s_raw, sack_e_raw, nsack = opts.mss, opts.has_ts, opts.sack_start, opts.sack_end, opts.nsack

    syn = (flags & 0x02) != 0
    # Sequence base: the sender's SYN, else its first segment.
    fwd_rows = np.flatnonzero(fwd)
    if fwd_rows.size == 0:
        raise ValueError("no packets in that direction")
    syn_fwd = np.flatnonzero(fwd & syn)
    if syn_fwd.size:
        base_raw, base_rel = int(seq_raw[syn_fwd[0]]), -1
    else:
        base_raw, base_rel = int(seq_raw[fwd_rows[0]]), 0
    seq_rel = np.zeros(len(rows), np.int64)
    seq_rel[fwd_rows] = _unwrap32(seq_raw[fwd_rows], base_raw, base_rel)
    # ACK numbers of the other direction and its SACK blocks, in the sender's space.
    rev = ~fwd
    is_ack = rev & ((flags & 0x10) != 0)
    ack_rows = np.flatnonzero(is_ack)
    ack_rel = np.zeros(len(rows), np.int64)
    ack_rel[ack_rows] = _unwrap32(ack_raw[ack_rows], base_raw, base_rel)
    sack_s = np.zeros_like(sack_s_raw)
    sack_e = np.zeros_like(sack_e_raw)
    if ack_rows.size:
        for b in range(MAX_SACK):
            sack_s[ack_rows, b] = _near32(sack_s_raw[ack_rows, b], ack_raw[ack_rows], ack_rel[ack_rows])
            sack_e[ack_rows, b] = _near32(sack_e_raw[ack_rows, b], ack_raw[ack_rows], ack_rel[ack_rows])

    # MSS: the receiver's SYN option (less 12 with timestamps), else the usual full size.
    data = fwd & (plen > 0)
    syn_rev = np.flatnonzero(rev & syn & (mss_opt > 0))
    if syn_rev.size:
        mss = int(mss_opt[syn_rev[0]]) - (12 if ts_opt[syn_rev[0]] else 0)
    else:
        big = plen[data & (plen > 500) & (plen <= 1460)]
        mss = int(np.bincount(big).argmax()) if big.size else 0
    if mss <= 0:
        mss = int(plen[data].max()) if data.any() else 1

    # Split super-segments (TSO/GRO captures) into MSS-sized wire segments.
    d_rows = np.flatnonzero(data)
    pieces = np.maximum(1, -(-plen[d_rows] // mss))
    rep = np.repeat(np.arange(d_rows.size), pieces)
    first_piece = np.repeat(np.cumsum(pieces) - pieces, pieces)
    k = np.arange(rep.size) - first_piece
    w_row = d_rows[rep]
    w_seq = seq_rel[w_row] + k * mss
    w_len = np.minimum(mss, plen[w_row] - k * mss)

    # Link-layer bytes of each wire segment: its payload plus the frame's headers (a split
    # super-segment gives each piece the headers once, as on the wire).
    w_hdr = (pk.wirelen[rows].astype(np.int64) - plen)[w_row]
    w_wire = (w_len + w_hdr).astype(np.float64)

    # Merge wire segments with the ACK rows, in capture order, for the bookkeeping pass.
    a_rows = ack_rows
    order_row = np.concatenate([w_row, a_rows])
    order_sub = np.concatenate([k, np.zeros(a_rows.size, np.int64)])
    o = np.lexsort((order_sub, order_row))
    m_row = order_row[o]
    m_is_data = np.concatenate([np.ones(w_row.size, bool), np.zeros(a_rows.size, bool)])[o]
    m_seq = np.concatenate([w_seq, np.zeros(a_rows.size, np.int64)])[o]
    m_end = np.concatenate([w_seq + w_len, np.zeros(a_rows.size, np.int64)])[o]
    m_ack = ack_rel[m_row]
    wire = np.concatenate([w_wire, np.zeros(a_rows.size)])[o]
    m_is_ack = ~m_is_data
    n = m_row.size
    rtx_of = np.empty(n, np.int64)
    spurious = np.empty(n, np.bool_)
    ack_index = np.empty(n, np.int64)
    ack_delay = np.empty(n, np.int64)
    _tcp_annotate(m_is_data, m_seq, m_end, m_is_ack, m_ack, sack_s[m_row], sack_e[m_row], nsack[m_row],
                  ts_ns[m_row], rtx_of, spurious, ack_index, ack_delay)

    sel = np.flatnonzero(m_is_data)
    # Request/response segments (the paper's split_flow_into_segments): a data packet of the
    # other side that follows data of this side starts a new segment.
    kinds = np.where(data, 1, np.where(rev & (plen > 0), 2, 0))
    ev = np.flatnonzero(kinds > 0)
    kk = kinds[ev]
    prev = np.concatenate([[0], kk[:-1]])
    seg_start_rows = ev[(kk == 2) & (prev == 1)].astype(np.int64)
    seg_of_row = np.searchsorted(seg_start_rows, m_row[sel], side="right")
    nseg = int(seg_of_row.max()) + 1 if sel.size else 0
    # Segment base: highest sequence sent before the segment's first row.
    seg_base = np.zeros(nseg, np.int64)
    d_end = m_end[sel]
    run_max = np.maximum.accumulate(d_end) if d_end.size else d_end
    first_in_seg = np.searchsorted(seg_of_row, np.arange(nseg), side="left")
    for s in range(nseg):
        f = first_in_seg[s]
        seg_base[s] = run_max[f - 1] if f > 0 else max(0, int(m_seq[sel][0]))
    rtx = rtx_of[sel] >= 0
    t0 = ts_ns[0]
    acked = ack_index[sel] >= 0
    return TcpDirectionTrace(
        ts_s=(ts_ns[m_row[sel]] - t0) / 1e9,
        seq=m_seq[sel],
        length=(m_end - m_seq)[sel],
        index=rows[m_row[sel]].astype(np.int64),
        rtx=rtx,
        lost=rtx & ~spurious[sel],
        ack_index=np.where(acked, rows[m_row[np.where(acked, ack_index[sel], 0)]], -1).astype(np.int64),
        rtt_ms=np.where(ack_delay[sel] >= 0, ack_delay[sel] / 1e6, np.nan),
        segment=seg_of_row.astype(np.int64),
        segment_base=seg_base,
        mss=mss,
        t0_ns=int(t0),
        wire_bytes=wire[sel],
    )


# --------------------------------------------------------------------------------------------
# TCP: the paper's detector on one segment
# --------------------------------------------------------------------------------------------


@njit
def _inflated_before_losses(sample_pos, samples, loss_pos, pct_lo, factor, min_ms):
    """For each loss, is the second-to-last RTT sample so far inflated?

    ``sample_pos``: packet position at which each RTT sample was appended (increasing);
    ``loss_pos``: packet position of each loss (increasing). As the paper: the sample must be
    >= the median of the samples so far, > ``factor`` x their ``pct_lo`` percentile, and
    >= ``min_ms``. Percentiles interpolate linearly (numpy's default).
    """
    m = loss_pos.shape[0]
    out = np.zeros(m, dtype=np.bool_)
    sorted_buf = np.empty(samples.shape[0], dtype=np.float64)
    k = 0
    ns = samples.shape[0]
    for q in range(m):
        while k < ns and sample_pos[k] <= loss_pos[q]:
            # insertion into the sorted prefix
            x = samples[k]
            j = k
            while j > 0 and sorted_buf[j - 1] > x:
                sorted_buf[j] = sorted_buf[j - 1]
                j -= 1
            sorted_buf[j] = x
            k += 1
        if k < 2:
            continue
        last2 = samples[k - 2]
        # median and low percentile of sorted_buf[:k]
        pos = 0.5 * (k - 1)
        lo = int(np.floor(pos))
        hi = min(lo + 1, k - 1)
        med = sorted_buf[lo] + (sorted_buf[hi] - sorted_buf[lo]) * (pos - lo)
        pos = pct_lo / 100.0 * (k - 1)
        lo = int(np.floor(pos))
        hi = min(lo + 1, k - 1)
        low = sorted_buf[lo] + (sorted_buf[hi] - sorted_buf[lo]) * (pos - lo)
        out[q] = last2 >= med and last2 > factor * low and last2 >= min_ms
    return out


@dataclass
class SegmentResult:
    """The paper's detector on one request/response segment of a connection."""

    segment: int
    code: int
    checks: dict                     # check name -> True/False (absent: not reached)
    n_packets: int
    n_lost: int
    goodput_bps: float | None = None       # the paper's rate: payload goodput between first and last loss
    rate_bps: float | None = None          # the same on link-layer bytes (what a policer counts)
    burst_bytes: float | None = None       # the paper's burst: payload bytes sent before the first loss
    initial_fill_bytes: float | None = None  # bucket fill at the segment start implied by the rate (link-layer bytes)
    start_s: float | None = None
    duration_s: float | None = None
    median_rtt_ms: float | None = None
    slices_with_loss: int = 0
    inflated_share: float | None = None
    loss_out_of_range_share: float | None = None
    pass_out_of_range_share: float | None = None
    fills_lost: np.ndarray = field(default_factory=lambda: np.zeros(0))
    fills_passed: np.ndarray = field(default_factory=lambda: np.zeros(0))
    fills: np.ndarray = field(default_factory=lambda: np.zeros(0))          # from the first loss, in time order
    fills_lost_mask: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))

    @property
    def policed(self) -> bool:
        return self.code == RESULT_OK

    def summary(self) -> dict:
        d = {k: v for k, v in asdict(self).items()
             if k not in ("fills_lost", "fills_passed", "fills", "fills_lost_mask")}
        d["result"] = RESULT_NAMES[self.code]
        d["n_fills_lost"] = int(self.fills_lost.size)
        d["n_fills_passed"] = int(self.fills_passed.size)
        return d


def pd_segment(ts_s, seq, length, index, rtx, lost, ack_index, rtt_ms, *, wire=None, base=0, segment=0,
               params: TcpPolicingParams = PAPER_PARAMS) -> SegmentResult:
    """The SIGCOMM'16 detector (get_policing_params_for_endpoint) on one segment's data packets.

    All checks are evaluated where they can be (not only up to the first failure) so that a
    reader sees which held; ``code`` is the first failure in the paper's order.
    """
    p = params
    n = ts_s.size
    checks: dict = {}
    loss_idx = np.flatnonzero(lost)
    res = SegmentResult(segment=segment, code=RESULT_OK, checks=checks, n_packets=int(n), n_lost=int(loss_idx.size),
                        start_s=float(ts_s[0]) if n else None,
                        duration_s=float(ts_s[-1] - ts_s[0]) if n else None)
    if wire is None:
        wire = length
    # 1. first and last loss (after skipping `cutoff` at each end)
    if loss_idx.size < 2 * p.cutoff + 2:
        checks["enough_losses"] = False
        res.code = RESULT_INSUFFICIENT_LOSS
        return res
    checks["enough_losses"] = True
    first_ns, first, last = loss_idx[0], loss_idx[p.cutoff], loss_idx[loss_idx.size - 1 - p.cutoff]
    seq_first = seq[first] - base
    checks["early_first_loss"] = bool(seq_first <= p.late_loss_threshold)

    # 2. goodput between first and last loss
    dt = ts_s[last] - ts_s[first]
    passed_bytes = np.where(lost, 0, length)
    payload_in = passed_bytes[first:last].sum()
    rate_bps = float(payload_in * 8.0 / dt) if dt > 0 else 0.0
    wire_ratio = float(np.where(lost, 0, wire)[first:last].sum() / payload_in) if payload_in > 0 else 1.0
    res.goodput_bps = rate_bps
    res.rate_bps = rate_bps * wire_ratio
    rtt_ok = ~rtx & np.isfinite(rtt_ms)
    median_rtt_ms = float(np.median(rtt_ms[rtt_ok])) if rtt_ok.any() else float("nan")
    res.median_rtt_ms = median_rtt_ms
    if not np.isfinite(median_rtt_ms):
        median_rtt_ms = 0.0
    rate_Bps = rate_bps / 8.0
    loss_zero = p.zero_threshold_loss_rtt_multiplier * median_rtt_ms / 1e3 * rate_Bps
    pass_zero = p.zero_threshold_pass_rtt_multiplier * median_rtt_ms / 1e3 * rate_Bps
    # 2a. initial bucket fill implied by the rate line through the first loss
    y0 = seq_first - rate_Bps * (ts_s[first] - ts_s[0])
    res.initial_fill_bytes = float(y0 * wire_ratio)
    checks["nonnegative_initial_fill"] = bool(y0 >= -pass_zero)
    res.burst_bytes = float(length[:first_ns].sum())

    # 3. bucket empty at the first loss, filled at the rate, drained by passed packets
    tail = slice(first, n)
    used_before = np.concatenate([[0], np.cumsum(passed_bytes[tail])[:-1]])
    fills = rate_Bps * (ts_s[tail] - ts_s[first]) - used_before
    lost_t = lost[tail]
    fl, fp = fills[lost_t], fills[~lost_t]
    res.fills_lost, res.fills_passed = fl, fp
    res.fills, res.fills_lost_mask = fills, lost_t

    # RTT slices containing a loss
    t_loss = ts_s[tail][lost_t]
    slices = 1
    slice_end = ts_s[first] + median_rtt_ms / 1e3
    for t in t_loss:
        if t > slice_end:
            slice_end = t + median_rtt_ms / 1e3
            slices += 1
    res.slices_with_loss = slices
    checks["enough_slices_with_loss"] = slices >= p.min_num_slices_with_loss
    checks["enough_samples"] = bool(fl.size >= p.min_num_samples and fp.size >= p.min_num_samples)

    # 4a. fewer tokens on loss than on pass
    if fl.size and fp.size:
        checks["lower_fill_on_loss"] = bool(fl.mean() < fp.mean() and np.median(fl) < np.median(fp))
        med_loss = float(np.median(fl))
        # 4b. bucket about empty at losses
        share = float(np.mean(np.abs(fl - med_loss) > loss_zero))
        res.loss_out_of_range_share = share
        checks["loss_fill_in_range"] = share <= p.zero_threshold_loss_out_of_range
        # 4c. bucket not overly negative at passes
        share = float(np.mean(fp - med_loss < -pass_zero))
        res.pass_out_of_range_share = share
        checks["pass_fill_in_range"] = share <= p.zero_threshold_pass_out_of_range

    # 4d. no inflated RTT before losses. RTT samples: never-retransmitted packets sent after the
    # ACK that covered every earlier lost packet (no out-of-order delay).
    lost_ack = np.where(rtx, ack_index, -1)
    ignore = np.maximum.accumulate(lost_ack) if n else lost_ack
    sample = rtt_ok & (index > ignore)
    spos = np.flatnonzero(sample)
    loss_pos = np.flatnonzero(lost)
    loss_pos = loss_pos[loss_pos >= first]
    if loss_pos.size:
        infl = _inflated_before_losses(spos.astype(np.int64), rtt_ms[spos].astype(np.float64),
                                       loss_pos.astype(np.int64),
                                       float(p.inflated_rtt_percentile), float(p.inflated_rtt_threshold),
                                       float(p.inflated_rtt_min_ms))
        share = float(infl.mean())
        res.inflated_share = share
        checks["no_inflated_rtt"] = bool(infl.sum() <= p.inflated_rtt_tolerance * loss_pos.size)

    for name, code in CHECK_CODES.items():
        if checks.get(name) is False:
            res.code = code
            break
    else:
        if len(checks) < len(CHECK_CODES):
            res.code = RESULT_INSUFFICIENT_LOSS
    return res


# --------------------------------------------------------------------------------------------
# TCP: segments of one flow, or of the flows that share a host pair
# --------------------------------------------------------------------------------------------

_TRACE_COLUMNS = ("ts_s", "seq", "length", "wire_bytes", "index", "rtx", "lost", "ack_index", "rtt_ms")


def _segment_results(cols: dict, segment: np.ndarray, base: np.ndarray, params: TcpPolicingParams) -> list:
    out = []
    for s in range(base.size):
        m = segment == s
        if not m.any():
            continue
        out.append(pd_segment(cols["ts_s"][m], cols["seq"][m], cols["length"][m], cols["index"][m], cols["rtx"][m],
                              cols["lost"][m], cols["ack_index"][m], cols["rtt_ms"][m], wire=cols["wire_bytes"][m],
                              base=int(base[s]), segment=s, params=params))
    return out


def flow_segments(tr: TcpDirectionTrace, params: TcpPolicingParams = PAPER_PARAMS) -> list:
    """The paper's detector on each request/response segment of one flow direction."""
    cols = {c: getattr(tr, c) for c in _TRACE_COLUMNS}
    return _segment_results(cols, tr.segment, tr.segment_base, params)


def group_segments(traces: list, params: TcpPolicingParams = PAPER_PARAMS) -> list:
    """The paper's detector on the merged data of several flows that one policer would see.

    The flows' data segments are merged in time; the sequence position is the group's
    cumulative bytes sent. The paper's segmentation generalises to a group: every request/
    response segment of any member flow (and every member's first data) starts a new group
    segment, since the bucket may have refilled while that flow was idle.
    """
    t0 = min(t.t0_ns for t in traces)
    ts = np.concatenate([t.ts_s + (t.t0_ns - t0) / 1e9 for t in traces])
    order = np.argsort(ts, kind="stable")
    cols = {c: np.concatenate([getattr(t, c) for t in traces])[order] for c in _TRACE_COLUMNS if c != "ts_s"}
    cols["ts_s"] = ts[order]
    starts = []
    for t in traces:
        tt = t.ts_s + (t.t0_ns - t0) / 1e9
        first = np.searchsorted(t.segment, np.arange(t.segment_base.size), side="left")
        first = first[first < tt.size]
        starts.append(tt[first])
    starts = np.unique(np.concatenate(starts)) if starts else np.zeros(0)
    starts = starts[starts > cols["ts_s"][0]] if cols["ts_s"].size else starts
    segment = np.searchsorted(starts, cols["ts_s"], side="right")
    cum = np.cumsum(cols["length"]) - cols["length"]
    cols["seq"] = cum
    nseg = int(segment.max()) + 1 if segment.size else 0
    first = np.searchsorted(segment, np.arange(nseg), side="left")
    base = cum[np.minimum(first, max(cum.size - 1, 0))] if cum.size else np.zeros(0, np.int64)
    return _segment_results(cols, segment, base, params)


def _same_host_pair_flows(cap, ft, flow_index: int, direction: str) -> list:
    """Other TCP flows that send data the same way between the same two hosts, at the same time."""
    i = flow_index
    if direction == "ab":
        s_hi, s_lo, r_hi, r_lo = ft.a_hi[i], ft.a_lo[i], ft.b_hi[i], ft.b_lo[i]
    else:
        s_hi, s_lo, r_hi, r_lo = ft.b_hi[i], ft.b_lo[i], ft.a_hi[i], ft.a_lo[i]
    tcp = ft.proto == 6
    overlap = (ft.first_ns <= ft.last_ns[i]) & (ft.last_ns >= ft.first_ns[i])
    fwd = (ft.a_hi == s_hi) & (ft.a_lo == s_lo) & (ft.b_hi == r_hi) & (ft.b_lo == r_lo)
    bwd = (ft.b_hi == s_hi) & (ft.b_lo == s_lo) & (ft.a_hi == r_hi) & (ft.a_lo == r_lo)
    out = []
    for j in np.flatnonzero(tcp & overlap & (fwd | bwd)):
        if j == i:
            continue
        d = "ab" if fwd[j] else "ba"
        # some payload in that direction (frame bytes beyond bare headers)
        npk = ft.packets_ab[j] if d == "ab" else ft.packets_ba[j]
        nby = ft.bytes_ab[j] if d == "ab" else ft.bytes_ba[j]
        if npk and nby > 80 * npk:
            out.append((int(j), d))
    return out


@dataclass
class ScopeResult:
    """The detector over one scope (a flow, or a host pair's flows): segments and the test."""

    scope: str
    flows: list
    segments: list
    eligible: list
    policed: list
    test: RankTest | None             # Mann-Whitney: the effect size
    seq: ScoreTest | None             # fill score test: the p-value
    n_lost: int
    n_packets: int

    @property
    def policed_share(self) -> float:
        return len(self.policed) / len(self.eligible) if self.eligible else 0.0


def _scope_result(scope: str, flows: list, segs: list) -> ScopeResult:
    eligible = [r for r in segs if all(r.checks.get(c, False) for c in DATA_CHECKS)]
    policed = [r for r in eligible if r.policed]
    test = rank_test([(r.fills_lost, r.fills_passed) for r in eligible])
    seq = fill_score_test([(r.fills, r.fills_lost_mask) for r in eligible])
    return ScopeResult(scope=scope, flows=flows, segments=segs, eligible=eligible, policed=policed, test=test,
                       seq=seq, n_lost=int(sum(r.n_lost for r in segs)), n_packets=int(sum(r.n_packets for r in segs)))


def detect_policing_tcp(cap, ft, flow_index: int, direction: str, *, alpha: float = 0.01,
                        params: TcpPolicingParams = PAPER_PARAMS, group: bool = True,
                        min_policed_share: float = 0.5, max_group_flows: int = 64,
                        cache: dict | None = None) -> Detection:
    """Is the data that ``direction`` ("ab"/"ba") of TCP flow ``flow_index`` sends policed?

    The SIGCOMM'16 policing detector (Flach et al.; see the module docstring), run on each
    request/response segment of the flow. With ``group`` (default), the flows that send data
    the same way between the same two hosts at the same time are also analysed together
    (a policer on the path meters them as one aggregate; per flow, each sees only its share of
    the tokens), and the scope that finds policing is reported (p-value Bonferroni-corrected
    for the two scopes tried).

    H0: losses are unrelated to the state of a token bucket (a packet's loss does not depend
    on the bucket fill when it was sent). Test: one-sided fill score test over the
    testable segments (``fill_score_test``; statistic = its z) that losses fall on low
    fills; effect: rank-biserial correlation of fills at losses vs passes (1: every loss saw a
    lower fill than every pass). See the module docstring for how far the p-value can be
    trusted on TCP.

    "detected": more than ``min_policed_share`` of the testable segments (>= 15 lost and >= 15
    passed packets, >= 3 RTT slices with loss) pass every check of the paper, and p < alpha.
    "not_detected": testable segments exist but fail the checks or the test (``reason`` says
    which). "inconclusive": no testable segment (too few losses or packets).

    ``cache``: a dict the caller keeps for one capture, so that running this on every flow
    annotates each flow once (the host-pair scope reuses the other flows' annotations).
    ``max_group_flows``: the host-pair scope takes at most this many flows (the busiest).

    Estimates: rate_bps (link-layer bytes, median over policed segments; goodput_bps is the
    paper's payload goodput), burst_bytes (largest bucket fill at a segment start implied by the
    rate: a lower bound of the bucket depth), checks (flow level: a check holds when it held in
    the majority of testable segments), segments (per-segment results and failed checks).
    """
    kind = KIND
    if direction not in ("ab", "ba"):
        raise ValueError("direction must be 'ab' or 'ba'")
    if int(ft.proto[flow_index]) != 6:
        return Detection.inconclusive(kind, direction, "not a TCP flow")
    def trace(j: int, d: str) -> TcpDirectionTrace | None:
        key = (int(j), d)
        if cache is not None and key in cache:
            return cache[key]
        try:
            t = tcp_direction_trace(cap, ft, j, d)
        except ValueError:
            t = None
        if cache is not None:
            cache[key] = t
        return t

    tr = trace(flow_index, direction)
    if tr is None or tr.ts_s.size == 0:
        return Detection.inconclusive(kind, direction, "no data sent in this direction")

    scopes = [_scope_result("flow", [int(flow_index)], flow_segments(tr, params))]
    if group:
        others = _same_host_pair_flows(cap, ft, flow_index, direction)
        if len(others) > max_group_flows - 1:
            weight = [(ft.bytes_ab[j] if d == "ab" else ft.bytes_ba[j]) for j, d in others]
            keep = np.argsort(weight)[::-1][:max_group_flows - 1]
            others = [others[k] for k in sorted(keep)]
        traces, flows = [tr], [int(flow_index)]
        for j, d in others:
            t = trace(j, d)
            if t is not None and t.ts_s.size:
                traces.append(t)
                flows.append(j)
        if len(traces) > 1:
            scopes.append(_scope_result("host_pair", flows, group_segments(traces, params)))

    n_scopes = len(scopes)

    def passes(sc: ScopeResult) -> bool:
        return bool(sc.eligible) and sc.policed_share > min_policed_share and sc.seq is not None \
            and min(1.0, sc.seq.pvalue * n_scopes) < alpha

    def strength(sc: ScopeResult):
        return (sc.policed_share, sc.test.effect if sc.test else -1.0)
    detected = [sc for sc in scopes if passes(sc)]
    testable = [sc for sc in scopes if sc.eligible]
    # Where both scopes fit, the one whose segments fit better: a per-flow policer leaves the
    # aggregate without the pattern, a shared one leaves each flow with only part of it.
    chosen = max(detected or testable or scopes[:1], key=strength)

    est: dict = {"scope": chosen.scope, "flows": chosen.flows, "lost_packets": chosen.n_lost,
                 "data_packets": chosen.n_packets, "segments_total": len(chosen.segments),
                 "segments_testable": len(chosen.eligible), "segments_policed": len(chosen.policed)}
    est["segments"] = [_segment_summary(r) for r in chosen.segments]
    # Flow-level check results: majority of testable segments (or of all segments if none is).
    pool = chosen.eligible or chosen.segments
    checks = {}
    for name in CHECK_CODES:
        vals = [r.checks[name] for r in pool if name in r.checks]
        if vals:
            checks[name] = bool(np.mean(vals) > 0.5)
    est["checks"] = checks
    src = chosen.policed or chosen.eligible
    if src:
        est["rate_bps"] = float(np.median([r.rate_bps for r in src]))
        est["goodput_bps"] = float(np.median([r.goodput_bps for r in src]))
        fills = [r.initial_fill_bytes for r in src if r.initial_fill_bytes is not None]
        if fills:
            est["burst_bytes"] = float(max(0.0, max(fills)))
        est["paper_burst_bytes"] = float(src[0].burst_bytes)
        est["median_rtt_ms"] = float(np.nanmedian([r.median_rtt_ms for r in src]))
    if not chosen.eligible:
        biggest = max(chosen.segments, key=lambda r: r.n_lost, default=None)
        lost = biggest.n_lost if biggest else 0
        why = []
        if biggest is not None:
            if not biggest.checks.get("enough_losses", False):
                why.append("too few losses")
            else:
                if not biggest.checks.get("enough_samples", False):
                    why.append(f"{biggest.fills_lost.size} lost / {biggest.fills_passed.size} passed packets "
                               f"after the first loss (need {params.min_num_samples} each)")
                if not biggest.checks.get("enough_slices_with_loss", False):
                    why.append(f"losses in {biggest.slices_with_loss} RTT slices (need "
                               f"{params.min_num_slices_with_loss}; median RTT {biggest.median_rtt_ms:.0f} ms)")
        return Detection(kind=kind, direction=direction, decision="inconclusive", estimates=est,
                         reason=("no segment has enough loss to test policing; the lossiest segment has "
                                 f"{lost} lost packets: " + "; ".join(why or ["no data"])),
                         evidence=f"{chosen.n_lost} lost of {chosen.n_packets} data packets")
    t, sq = chosen.test, chosen.seq
    if sq is None:
        return Detection(kind=kind, direction=direction, decision="inconclusive", estimates=est,
                         reason="no testable segment has losses and passes after its first packets",
                         evidence=f"{chosen.n_lost} lost of {chosen.n_packets} data packets")
    pvalue = min(1.0, sq.pvalue * n_scopes)
    est.update({"z": sq.z, "pvalue_raw": sq.pvalue, "log10_pvalue_raw": sq.log10_pvalue, "scopes_tried": n_scopes,
                "cles": t.cles, "pvalue_mannwhitney": t.pvalue})
    failed = {}
    for r in chosen.eligible:
        if not r.policed:
            failed[RESULT_NAMES[r.code]] = failed.get(RESULT_NAMES[r.code], 0) + 1
    decision = "detected" if detected else "not_detected"
    where = "this flow" if chosen.scope == "flow" else f"the {len(chosen.flows)} flows between these hosts together"
    if decision == "detected":
        evidence = (f"{len(chosen.policed)} of {len(chosen.eligible)} testable segments of {where} lose packets when a "
                    f"token bucket at {_fmt_rate(est['rate_bps'])} (link-layer rate between first and last loss) "
                    f"is empty and "
                    f"pass when it is not, without RTT inflation before losses "
                    f"(p={pvalue:.2g}, rank-biserial {t.effect:.2f})")
        reason = ""
    else:
        evidence = (f"{len(chosen.policed)} of {len(chosen.eligible)} testable segments of {where} fit a policer; "
                    f"fill at losses vs passes: p={pvalue:.2g}, rank-biserial {t.effect:.2f}")
        parts = [f"{k} in {v}" for k, v in sorted(failed.items(), key=lambda kv: -kv[1])]
        reason = ("segments failed the paper's checks: " + ", ".join(parts)) if parts else \
            f"p-value {pvalue:.2g} not below {alpha}"
    return Detection(kind=kind, direction=direction, decision=decision, statistic=sq.z, pvalue=pvalue,
                     effect=t.effect, estimates=est, evidence=evidence, reason=reason)


def _segment_summary(r: SegmentResult) -> dict:
    d = {"segment": r.segment, "result": RESULT_NAMES[r.code], "data_packets": r.n_packets, "lost_packets": r.n_lost,
         "failed": [k for k, v in r.checks.items() if not v]}
    for k in ("rate_bps", "goodput_bps", "initial_fill_bytes", "burst_bytes", "start_s", "duration_s",
              "median_rtt_ms", "slices_with_loss", "inflated_share", "loss_out_of_range_share",
              "pass_out_of_range_share"):
        v = getattr(r, k)
        if v is not None and not (isinstance(v, float) and not np.isfinite(v)):
            d[k] = v
    return d


def detect(ctx, i: int) -> list:
    """The registry's TCP entry: the SIGCOMM'16 detector on the direction that carries the data
    (at a server the losses show as resends of what it sends; at a client as holes). Its own
    decision rule (policing in more than half of the testable segments) is a check; its p-value
    joins the capture's false-discovery family like every other test."""
    from dataclasses import replace
    data = [int(ctx.packets(i, k).payload.sum()) for k in (0, 1)]
    k = int(np.argmax(data))
    toward = "local" if k == ctx.toward_local(i) else "remote"
    name = ("ab", "ba")[k]
    if data[k] == 0:
        return [Detection.inconclusive(KIND, name, "no TCP data in either direction", toward=toward, test="sigcomm16")]
    cache = ctx._cache.setdefault(("tcp-policing-traces",), {})
    det = detect_policing_tcp(ctx.cap, ctx.ft, i, name, alpha=ctx.alpha, cache=cache)
    det = replace(det, toward=toward, test="sigcomm16",
                  null="losses unrelated to the state of a token bucket (fill score test)")
    if det.decision != "inconclusive" and det.pvalue is not None:
        est = det.estimates
        share = est.get("segments_policed", 0) / max(est.get("segments_testable", 0), 1)
        det.checks = {"most_segments_fit_a_policer": share > 0.5}
        det.effect = None
        det.decision = "not_detected"        # decided after the false-discovery control (verdicts.decide)
    if det.decision == "inconclusive" and "too few losses" in det.reason:
        # nothing to explain: the data went through without the losses a policer makes
        det.decision = "not_detected"
    return [det]
