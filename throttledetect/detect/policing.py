"""Policing: does a token bucket that drops (rather than queues) explain a flow's losses?

A policer (RFC 2697/2698 style token bucket without a queue) forwards a packet when the bucket
holds at least its size in tokens and drops it otherwise; tokens arrive at the committed rate and
the bucket holds at most the burst size. Its signature, seen from the sender: losses happen
exactly when the sender has sent more than rate x time + burst, i.e. when a simulated bucket is
empty; packets pass when it is not; and the delay does not grow before losses (nothing queues).

Two detectors share that idea:

``detect_policing_tcp``
    The policing detector (PD) of Flach et al., "An Internet-Wide Analysis of Traffic Policing",
    SIGCOMM 2016 (public code: USC-NSL/policing-detection), reimplemented over the packet table,
    for server-side TCP traces. Losses are retransmitted sequence ranges (the first transmission
    of a range that was sent again is the lost packet; DSACK-reported spurious retransmissions are
    not losses). Per request/response segment of the connection: policing rate = goodput between
    the first and last loss; reject if the first loss comes after 2 MB or the implied initial
    bucket fill is negative; simulate a bucket that is empty at the first loss; require >= 15 lost
    and >= 15 passed packets, >= 3 RTT slices with loss, lower bucket fill at losses than at
    passes (mean and median), <= 10 % of losses far (2 median RTTs of tokens) from the median
    loss fill, <= 3 % of passes far below it (0.75 RTTs of tokens), and <= 20 % of losses after an
    inflated RTT (queueing: not a policer). The paper's constants are the defaults of
    ``TcpPolicingParams``. Added here: a p-value (below); a flow-level decision over the
    segments (policing in more than half of the testable ones); the rate also on link-layer
    bytes (what a policer meters; the paper's payload goodput is ``goodput_bps``); and a second
    scope, the flows that send the same way between the same two hosts analysed together, with
    the paper's segmentation extended to them (any member's new request starts a segment),
    because a policer on an access link meters them as one aggregate and each flow alone shows
    only its share of the tokens.

``fit_policer`` / ``detect_policing_flow`` (``detect_policing_rtp``: one stream only)
    The same idea for media, where the receiver-side view is all there is: lost packets are
    missing RTP sequence numbers (their size bounded by the largest nearby packet, their time
    placed from the neighbours: audio at the stream's usual spacing, a video frame's lost tail
    back to back with the frame, whole lost frames at their RTP timestamps), passed packets are
    the received ones. A policer meters packets, not RTP streams: every stream of the arriving
    direction (audio, video, retransmissions bundled on one 5-tuple) and its packets without
    RTP go into one bucket, and, when that does not show a policer, the call flows from the
    same remote host together (a host-level policer; the TCP detector's host-pair scope). A
    token bucket (rate, burst) that starts full (at a loss onset when the losses start at a
    change point) is fitted to explain the drops (grid search around the paper's goodput
    estimator), the paper's checks are applied to it with fills compared within streams, and
    the one-way delay (arrival minus RTP timestamp) must not be inflated before losses, which
    separates a policer from a shaper's tail drops. The rates that explain the drops about as
    well as the best are reported as a range: a bucket that refills to its depth between video
    frames passes the same packets at any rate above depth / frame interval, and then the data
    bound the rate from below only (rate_identifiable False, rate_note says so).

The p-value (both detectors)
    H0: losses are unrelated to the state of a token bucket (random loss, or loss caused by
    something else): whether a packet is lost does not depend on the bucket fill when it came.
    H1 (one-sided): lost packets see a lower fill. The fill at a packet is computed from the
    packets before it, so under H0 a packet's loss is independent of its fill. Test: the fill
    score test (``fill_score_test``): the losses' excess of low (standardised, winsorised)
    fills, whose sum is a martingale under H0 and asymptotically normal whatever the serial
    dependence of the fills; samples from the first loss on, as the paper's. (Mann-Whitney on
    the same fills ranks each among later fills too, which depend on the loss itself: a lost
    packet spends no tokens, TCP slows down after it; its p-value is reported as
    ``pvalue_mannwhitney``, for reference only.) Not exact: the TCP rate and the anchor come
    from the first and last loss, and the RTP (rate, burst) are fitted (hence Bonferroni over
    the grid). On synthetic paced streams with independent loss the uncorrected p-value is
    below 0.05 in 2-6 % of runs. On the two lab TCP traces with 2 % random loss behind a
    10 Mbit/s shaper it is 3e-4 and 0.01 (per segment z up to 2): H0 fails there too, whether
    from the shaper's own drops or from TCP dynamics is not established, so on TCP the
    p-value alone does not make a policer; the paper's checks reject both. A queue's tail
    drops (shaping, congestion) also fall on low fills: a small p-value says "a token bucket
    state explains the losses better than chance", and only with the checks (no delay
    inflation before losses) does it say "policer".
    Effect: the rank-biserial correlation r = 2 * CL - 1 of fills at losses vs passes, CL
    being the common-language effect size P(fill at a loss < fill at a pass) (ties count one
    half); r = 1 when every loss saw a lower fill than every pass. The caller controls false
    discoveries across flows (Benjamini-Hochberg, qvalue).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import stats
from scipy.ndimage import maximum_filter1d

from throttledetect.detect.result import Detection
from throttledetect.jit import njit

KIND = "policing"

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
# Rank test shared by both detectors
# --------------------------------------------------------------------------------------------


@dataclass
class RankTest:
    """One-sided stratified Mann-Whitney test: fills at losses lower than at passes."""

    u: float            # sum over strata of U = #(loss fill < pass fill) + 0.5 #ties
    pairs: float        # sum over strata of n_loss * n_pass
    z: float
    pvalue: float
    cles: float         # common-language effect size u / pairs
    effect: float       # rank-biserial correlation 2 * cles - 1
    log10_pvalue: float = float("nan")  # from the normal tail, for p-values that underflow to 0


def rank_test(strata) -> RankTest | None:
    """``strata``: iterable of (fills_at_losses, fills_at_passes) pairs.

    With one stratum the p-value is scipy.stats.mannwhitneyu's (asymptotic, tie-corrected,
    continuity-corrected); with several, U, its null mean and its tie-corrected null variance
    are summed over strata and referred to the normal distribution (van Elteren with equal
    weights, continuity-corrected by 0.5).
    """
    strata = [(np.asarray(a, float), np.asarray(b, float)) for a, b in strata]
    strata = [(a, b) for a, b in strata if len(a) and len(b)]
    if not strata:
        return None
    u_sum = mean_sum = var_sum = pairs = 0.0
    for lost, passed in strata:
        n1, n0 = len(lost), len(passed)
        ranks = stats.rankdata(np.concatenate([lost, passed]))
        # U counting pairs where the pass fill is larger (ties one half).
        u = n1 * n0 + n1 * (n1 + 1) / 2.0 - ranks[:n1].sum()
        _, counts = np.unique(ranks, return_counts=True)
        n = n1 + n0
        tie = (counts ** 3 - counts).sum()
        var = n1 * n0 / 12.0 * ((n + 1) - tie / (n * (n - 1))) if n > 1 else 0.0
        u_sum += u
        mean_sum += n1 * n0 / 2.0
        var_sum += var
        pairs += n1 * n0
    if len(strata) == 1:
        lost, passed = strata[0]
        res = stats.mannwhitneyu(passed, lost, alternative="greater", method="asymptotic")
        pvalue = float(res.pvalue)
        z = (u_sum - mean_sum) / np.sqrt(var_sum) if var_sum > 0 else 0.0
    else:
        if var_sum <= 0:
            z, pvalue = 0.0, 1.0
        else:
            z = (u_sum - mean_sum - 0.5) / np.sqrt(var_sum)
            pvalue = float(stats.norm.sf(z))
    cles = u_sum / pairs
    return RankTest(u=float(u_sum), pairs=float(pairs), z=float(z), pvalue=pvalue, cles=float(cles),
                    effect=float(2.0 * cles - 1.0), log10_pvalue=float(stats.norm.logsf(z) / np.log(10)))


@dataclass
class ScoreTest:
    """One-sided score test that losses fall on low bucket fills, valid under serial dependence."""

    z: float
    pvalue: float
    n: int
    log10_pvalue: float = float("nan")


def fill_score_test(strata, *, clip: float = 5.0) -> ScoreTest | None:
    """``strata``: iterable of (fills, lost mask), each packet's fill computed from the packets
    before it.

    Score of a packet: g_i = -fill_i / scale, winsorised at +-``clip`` (scale: the stratum's
    median absolute deviation of the fills, a constant). Statistic S = sum (L_i - p_k) g_i over
    packets, p_k being the stratum's loss share; variance sum p_k (1 - p_k) (g_i - mean_k g)^2;
    Z = S / sqrt(variance), one-sided. Under H0 (a packet's loss is independent of the past,
    hence of its fill, which the past determines), S is a martingale and Z asymptotically
    standard normal whatever the serial dependence of the fills: it is the permutation t-test
    of the fills at losses against passes, with a variance that stays honest for dependent
    data. (Mann-Whitney ranks each fill among later fills too, and those depend on the loss
    itself: a lost packet spends no tokens, TCP slows down after it.)
    """
    num = var = 0.0
    n = 0
    for x, lost in strata:
        x = np.asarray(x, dtype=np.float64)
        lost = np.asarray(lost, dtype=bool)
        ok = np.isfinite(x)
        x, lost = x[ok], lost[ok]
        if x.size < 2 or lost.all() or not lost.any():
            continue
        scale = float(np.median(np.abs(x - np.median(x)))) * 1.4826
        if not scale > 0:
            scale = float(np.std(x)) or 1.0
        g = -np.clip(x / scale, -clip, clip)
        p_k = lost.mean()
        num += float(np.sum((lost - p_k) * g))
        var += float(p_k * (1 - p_k) * np.sum((g - g.mean()) ** 2))
        n += int(x.size)
    if n == 0 or var <= 0:
        return None
    z = num / np.sqrt(var)
    return ScoreTest(z=float(z), pvalue=float(stats.norm.sf(z)), n=n,
                     log10_pvalue=float(stats.norm.logsf(z) / np.log(10)))


# --------------------------------------------------------------------------------------------
# TCP: one direction of a connection as wire segments, with losses and RTT samples
# --------------------------------------------------------------------------------------------

_TCP_OPT_END, _TCP_OPT_NOP, _TCP_OPT_MSS, _TCP_OPT_SACK, _TCP_OPT_TS = 0, 1, 2, 5, 8
_MAX_SACK = 4
_M32 = 1 << 32
_H31 = 1 << 31


@njit
def _parse_tcp_options(buf, l4_off, hdr_end, mss_out, ts_out, sack_start, sack_end, nsack):
    """MSS, timestamp presence and SACK blocks (raw 32-bit) of TCP headers in ``buf``.

    ``hdr_end`` bounds each header (data offset and capture length both respected).
    """
    n = l4_off.shape[0]
    for i in range(n):
        mss_out[i] = -1
        ts_out[i] = False
        nsack[i] = 0
        start = l4_off[i]
        if start < 0:
            continue
        p = start + 20
        end = hdr_end[i]
        while p < end:
            kind = buf[p]
            if kind == _TCP_OPT_END:
                break
            if kind == _TCP_OPT_NOP:
                p += 1
                continue
            if p + 1 >= end:
                break
            length = np.int64(buf[p + 1])
            if length < 2 or p + length > end:
                break
            if kind == _TCP_OPT_MSS and length == 4:
                mss_out[i] = (np.int64(buf[p + 2]) << 8) | np.int64(buf[p + 3])
            elif kind == _TCP_OPT_TS:
                ts_out[i] = True
            elif kind == _TCP_OPT_SACK and (length - 2) % 8 == 0:
                k = 0
                q = p + 2
                while q + 8 <= p + length and k < 4:
                    s = np.int64(0)
                    e = np.int64(0)
                    for b in range(4):
                        s = (s << 8) | np.int64(buf[q + b])
                        e = (e << 8) | np.int64(buf[q + 4 + b])
                    sack_start[i, k] = s
                    sack_end[i, k] = e
                    k += 1
                    q += 8
                nsack[i] = k
            p += length


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

    # Options: header length from the data offset nibble, bounded by the captured frame.
    buf = cap.buffer
    l4 = pk.l4_off[rows].astype(np.int64)
    frame_end = pk.frame_off[rows].astype(np.int64) + pk.caplen[rows].astype(np.int64)
    ok = (l4 >= 0) & (l4 + 13 <= frame_end) & (l4 + 13 <= buf.shape[0])
    doff = np.zeros(len(rows), dtype=np.int64)
    doff[ok] = (buf[l4[ok] + 12].astype(np.int64) >> 4) * 4
    hdr_end = np.minimum(l4 + doff, np.minimum(frame_end, buf.shape[0]))
    mss_opt = np.empty(len(rows), np.int64)
    ts_opt = np.empty(len(rows), np.bool_)
    sack_s_raw = np.zeros((len(rows), _MAX_SACK), np.int64)
    sack_e_raw = np.zeros((len(rows), _MAX_SACK), np.int64)
    nsack = np.zeros(len(rows), np.int64)
    _parse_tcp_options(buf, np.where(ok, l4, -1), hdr_end, mss_opt, ts_opt, sack_s_raw, sack_e_raw, nsack)

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
        for b in range(_MAX_SACK):
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


def _fmt_rate(bps: float) -> str:
    if bps >= 1e6:
        return f"{bps / 1e6:.3g} Mbit/s"
    return f"{bps / 1e3:.3g} kbit/s"


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


# --------------------------------------------------------------------------------------------
# Media streams (RTP): fit a token bucket to the received and missing packets
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MediaPolicingParams:
    """Thresholds of the media-stream adaptation (the paper's where they carry over)."""

    min_num_samples: int = 15                 # lost and passed packets, each (paper)
    min_num_slices_with_loss: int = 3         # slices with loss (paper) ...
    slice_s: float = 0.1                      # ... of this length: RTP gives no RTT; 100 ms stands in for one
    loss_out_of_range: float = 0.10           # share of losses the bucket had room for (paper: 10 %)
    pass_out_of_range: float = 0.03           # share of passes it had no room for (paper: 3 %)
    min_timing_uncertainty_s: float = 0.010   # floor of the timing uncertainty u (the stream's delay spread)
    loss_slack_multiplier: float = 2.0        # losses may have room up to rate x 2u (paper: 2 RTTs)
    pass_slack_multiplier: float = 0.75       # passes may lack room up to rate x 0.75u (paper: 0.75 RTTs)
    inflated_delay_ms: float = 20.0           # queueing delay above the stream's base that counts as inflated
    inflated_delay_tolerance: float = 0.20    # share of losses allowed after inflated delay (paper: 20 %)
    rate_span: float = 2.0                    # rate grid: [r0 / span, r0 * span] ...
    rate_coarse_step: float = 0.05            # ... in relative steps of 5 %, then 1 % around the best,
    rate_step: float = 0.01                   # then 0.1 % around the best of those
    n_bursts: int = 40                        # burst grid, log-spaced from min_burst_bytes up
    min_burst_bytes: float = 1500.0           # no policer holds less than one MTU (or the largest packet)
    size_neighbours: int = 10                 # a lost packet counts as the largest of this many received on each side
    max_median_seq_step: float = 8.0          # beyond this (over ~90 % missing) the "sequence" is not one stream's
    max_seq_gap: int = 1000                   # a longer run of missing numbers is a jump, not loss
    rate_tolerance: float = 0.01              # rates this close to the best fit's violations are as plausible
    rate_identifiable_width: float = 0.10     # a plausible range wider than this (hi / lo - 1): rate not identifiable
    onset_fit_gain: float = 0.5               # a fit from a loss onset replaces the whole-stream fit when it
    #                                           leaves at most this share of the latter's violations after the onset


MEDIA_PARAMS = MediaPolicingParams()


@dataclass
class PolicerFit:
    """A token bucket fitted to one packet stream's drops, and the test of H0 (see the module)."""

    rate_bps: float | None
    burst_bytes: float | None
    statistic: float | None           # z of the fill score test (see fill_score_test)
    pvalue: float | None              # its one-sided p, Bonferroni-corrected over the (rate, burst) grid
    effect: float | None              # rank-biserial correlation of fills at losses vs passes
    checks: dict = field(default_factory=dict)
    details: dict = field(default_factory=dict)
    reason: str = ""                  # set when the fit could not be tested

    def decision(self, alpha: float = 0.01) -> str:
        if self.pvalue is None or not self.checks:
            return "inconclusive"
        if any(self.checks.get(c) is False for c in ("enough_samples", "enough_slices_with_loss")):
            return "inconclusive"
        ok = all(v is not False for v in self.checks.values())
        return "detected" if ok and self.pvalue < alpha else "not_detected"


@njit
def _bucket_margins(t, size, lost, rate, burst, margin):
    """Room left in a token bucket (rate bytes/s, depth ``burst``) at each packet, minus its size.

    The bucket starts full. A policer drops a packet when the margin is negative. The
    simulation follows the observations: a passed packet takes its tokens (and shows that the
    bucket held at least that many), a lost packet shows that it held fewer. So the margin at
    packet i depends only on packets before i.
    """
    tokens = burst
    tp = t[0]
    for i in range(t.shape[0]):
        dt = t[i] - tp
        if dt > 0:
            tokens = min(burst, tokens + rate * dt)
            tp = t[i]
        margin[i] = tokens - size[i]
        if lost[i]:
            if tokens >= size[i]:
                tokens = size[i] * (1.0 - 1e-9)
        else:
            if tokens < size[i]:
                tokens = size[i]
            tokens -= size[i]


@njit
def _grid_errors(t, size, lost, rates, bursts, tol_s, out):
    """For each (rate, burst): [0] losses the bucket had room for and [1] passes it had no
    room for (beyond rate x tol_s); [2], [3] the same violations summed in bytes (no slack)."""
    margin = np.empty(t.shape[0])
    for a in range(rates.shape[0]):
        tol = rates[a] * tol_s
        for b in range(bursts.shape[0]):
            _bucket_margins(t, size, lost, rates[a], bursts[b], margin)
            el = 0
            ep = 0
            hl = 0.0
            hp = 0.0
            for i in range(t.shape[0]):
                m = margin[i]
                if lost[i]:
                    if m >= tol:
                        el += 1
                    if m > 0:
                        hl += m
                else:
                    if m < -tol:
                        ep += 1
                    if m < 0:
                        hp -= m
            out[a, b, 0] = el
            out[a, b, 1] = ep
            out[a, b, 2] = hl
            out[a, b, 3] = hp


def _interp_missing(x: np.ndarray) -> np.ndarray:
    """Fill NaNs by linear interpolation over the index (ends: nearest value)."""
    x = np.asarray(x, dtype=np.float64).copy()
    bad = ~np.isfinite(x)
    if bad.any() and (~bad).any():
        idx = np.arange(x.size)
        x[bad] = np.interp(idx[bad], idx[~bad], x[~bad])
    return x


def _lost_packet_times(arrival: np.ndarray, frame_end: np.ndarray | None = None,
                       send: np.ndarray | None = None) -> np.ndarray:
    """Times of the missing packets (NaN) of a stream in sequence order.

    A run of missing packets lies between the last received packet before it and the next one
    after it. Audio (no ``frame_end``): the run follows the last received packet at the
    stream's median arrival gap of consecutive sequence numbers. Not the packet time of the
    RTP clock: arrivals bunch on the path (a median gap of 15 ms for 20 ms packets is common),
    and a policer drops exactly the packets that came close behind others, so nominal spacing
    would place losses late, where the bucket had refilled.
    Video (``frame_end``: the RTP marker bit): after a packet that did not end its frame, the
    lost packets are the frame's tail, sent back to back with it: they follow it at the
    stream's spacing within frames (the median arrival gap of consecutive received packets
    with one timestamp, from ``send``), not at the next frame's time. After a frame's end, the
    run starts new frames: with send times (``send``: RTP timestamps over the clock rate,
    interpolated over the missing sequence numbers) in proportion of the send times between the
    received neighbours (frames lost whole at their frame times), else before the next
    received packet at the median gap. A video stream that never sets the marker bit: with
    frames of one packet, by the send times; with frames of several, runs between two packets
    of one timestamp within the frame, others just before the next received packet (the later
    of the possible places: it cannot make a random loss look like an empty bucket). Never
    after the next received packet.
    """
    a = np.asarray(arrival, dtype=np.float64)
    got = np.isfinite(a)
    if got.all() or not got.any():
        return a.copy()
    idx = np.arange(a.size)
    pair = got[1:] & got[:-1]
    multi = False
    if send is not None:
        snd = np.asarray(send, dtype=np.float64)
        same = pair & (snd[1:] == snd[:-1])
        multi = np.count_nonzero(same) >= 10        # frames of several packets
        if multi:
            pair = same
    gaps = np.diff(a)[pair]
    gap = max(float(np.median(gaps)) if gaps.size else 0.0, 0.0)
    prev = np.maximum.accumulate(np.where(got, idx, -1))
    nxt = np.minimum.accumulate(np.where(got, idx, a.size)[::-1])[::-1]
    out = a.copy()
    miss = ~got
    has_prev = miss & (prev >= 0)
    has_next = miss & (nxt < a.size)
    only_next = miss & ~has_prev
    est = np.full(a.size, np.nan)
    pi = np.maximum(prev, 0)
    ni = np.minimum(nxt, a.size - 1)
    fe = np.asarray(frame_end, dtype=bool) if frame_end is not None else None
    est[has_prev] = a[pi[has_prev]] + (idx - prev)[has_prev] * gap
    if send is not None and fe is not None:
        # A stream that never sets the marker bit gives no frame ends. With frames of one
        # packet the send times place every run; with frames of several, a run between packets
        # of one timestamp is a frame's middle, and any other run is put just before the next
        # received packet: the frame it belongs to is unknown, and the later place is the one
        # that cannot make a random loss look like an empty bucket.
        no_marks = not fe.any()
        by_clock = has_prev & (fe[pi] if not no_marks else (snd[ni] != snd[pi]) & (not multi))
        if no_marks and multi:
            before = has_prev & has_next & (snd[ni] != snd[pi])
            est[before] = np.maximum(a[ni[before]] - (nxt - idx)[before] * gap, a[pi[before]])
        est[by_clock] = a[pi[by_clock]] + np.maximum(snd[by_clock] - snd[pi[by_clock]], 0.0)
        # Between two received packets: in proportion of the send times, so that the jitter of
        # either neighbour does not carry over whole.
        span = np.where(by_clock & has_next, snd[ni] - snd[pi], 0.0)
        mid = by_clock & has_next & (span > 0)
        frac = (snd[mid] - snd[pi[mid]]) / span[mid]
        est[mid] = a[pi[mid]] + np.clip(frac, 0.0, 1.0) * (a[ni[mid]] - a[pi[mid]])
        est[only_next] = a[ni[only_next]] - np.maximum(snd[ni[only_next]] - snd[only_next], 0.0)
    else:
        est[only_next] = a[ni[only_next]] - (nxt - idx)[only_next] * gap
        if fe is not None:
            after_end = has_prev & has_next & fe[pi]
            est[after_end] = np.maximum(a[ni[after_end]] - (nxt - idx)[after_end] * gap, a[pi[after_end]])
    both = has_prev & has_next
    est[both] = np.minimum(est[both], a[ni[both]])
    out[miss] = est[miss]
    return out


def fit_policer(arrival_s, sizes, lost_mask, *, send_s=None, frame_end=None,
                params: MediaPolicingParams = MEDIA_PARAMS) -> PolicerFit:
    """Fit a token-bucket policer (rate, burst) to a stream's passed and lost packets, and test it.

    Arrays are per packet in sending order (RTP sequence order), lost packets included:
    ``arrival_s`` (NaN where lost: placed by ``_lost_packet_times``), ``sizes`` in bytes (NaN
    where lost: bounded by the largest received packet nearby), ``lost_mask``. ``send_s``, when
    given (RTP timestamp / clock rate, any origin), gives the one-way delay for the queueing
    check. ``frame_end`` (RTP marker bits of a video stream, False where lost) helps to place
    lost packets.

    Rate: the goodput between the first and last loss (the paper's estimator) as the centre of
    a grid (x 1/2 .. x 2 in 5 % steps, then 1 % and 0.1 % steps around the best), burst on a log grid
    from one MTU (or the largest packet) up; the pair whose violations are smallest wins
    (bytes of room the bucket had at losses plus bytes it lacked at passes, each averaged over
    its packets). Test: the fill score test of the fills (tokens when each packet came),
    Bonferroni-corrected for the number of grid points tried (valid whatever the selection);
    effect: rank-biserial correlation. Checks (the paper's, adapted, with the RTT replaced by
    the timing uncertainty u = max(10 ms, p90 - p10 of the one-way delay)): >= 15 lost and
    passed, losses in >= 3 slices of 100 ms, lower fill at losses (mean and median), <= 10 %
    of losses with more than rate x 2u of room, <= 3 % of passes short of more than rate x
    0.75u, and <= 20 % of losses right after a one-way delay >= the median and > 20 ms above
    the stream's least delay (a queue: shaping or congestion, not a policer).
    """
    t, size, lost, delay = stream_units(arrival_s, sizes, lost_mask, send_s=send_s, frame_end=frame_end,
                                        params=params)
    return fit_token_bucket(t, size, lost, delay, params=params)


def stream_units(arrival_s, sizes, lost_mask, *, send_s=None, frame_end=None,
                 params: MediaPolicingParams = MEDIA_PARAMS):
    """One stream's packets in sequence order -> (t, size, lost, delay) as the bucket sees them.

    Lost packets get a time (``_lost_packet_times``) and a size (the largest received packet
    among ``size_neighbours`` on each side: the policer dropped it because the bucket held less
    than its size, and its neighbours bound that size). ``delay``: one-way delay (arrival minus
    send time) above the stream's least, seconds, NaN where lost; None without send times.
    """
    p = params
    lost = np.asarray(lost_mask, dtype=bool)
    arrival = np.asarray(arrival_s, dtype=np.float64)
    size_in = np.asarray(sizes, dtype=np.float64)
    known = np.isfinite(size_in)
    local_max = maximum_filter1d(np.where(known & ~lost, size_in, 0.0), size=2 * p.size_neighbours + 1)
    size = np.where(known, size_in, np.where(lost, local_max, np.nan))
    size = _interp_missing(size)
    if int((~lost).sum()) < 1:
        return arrival.copy(), size, lost, None
    t = _lost_packet_times(np.where(lost, np.nan, arrival), frame_end, send_s)
    delay = None
    if send_s is not None:
        delay = np.where(lost, np.nan, arrival - np.asarray(send_s, dtype=np.float64))
        if np.isfinite(delay).any():
            delay = delay - np.nanmin(delay)
    return t, size, lost, delay


def fit_token_bucket(t, size, lost, delay=None, *, stratum=None,
                     params: MediaPolicingParams = MEDIA_PARAMS) -> PolicerFit:
    """``fit_policer``'s fit and test on packets already placed in time (``stream_units``), of one
    stream or of several merged (what a policer meters: every packet of the flow). ``delay``:
    seconds above each stream's least, NaN where unknown (lost packets, packets without RTP).

    ``stratum`` (an integer per packet, e.g. its stream) makes the comparison of fills at
    losses and passes within strata (stratified score test, van Elteren's rank-biserial, the
    lower-fill check on fills centred per stratum): a 150-byte audio packet passes with a fill
    that would drop a 1200-byte video packet, so pooled fills would compare packet sizes, not
    bucket states. Under H0 the loss is independent of the fill within each stratum too."""
    p = params
    t = np.asarray(t, dtype=np.float64)
    size = np.asarray(size, dtype=np.float64)
    lost = np.asarray(lost, dtype=bool)
    stratum = np.zeros(lost.size, np.int64) if stratum is None else np.asarray(stratum, dtype=np.int64)
    delay = None if delay is None else np.asarray(delay, dtype=np.float64)
    n = lost.size
    n_lost, n_pass = int(lost.sum()), int((~lost).sum())
    checks: dict = {}
    details: dict = {"packets": n, "lost_packets": n_lost, "loss_rate": n_lost / n if n else float("nan")}
    if n_pass < 2:
        return PolicerFit(None, None, None, None, None, checks, details, reason="fewer than 2 received packets")
    if delay is not None and np.count_nonzero(np.isfinite(delay) & ~lost) < 2:
        delay = None
    if not np.all(np.diff(t) >= 0):
        # Reordering on the path, or several streams: the bucket sees packets in time order.
        o = np.argsort(t, kind="stable")
        t, size, lost, stratum = t[o], size[o], lost[o], stratum[o]
        delay = delay[o] if delay is not None else None
    checks["enough_samples"] = bool(n_lost >= p.min_num_samples and n_pass >= p.min_num_samples)
    if n_lost < 2:
        details["slices_with_loss"] = n_lost
        checks["enough_slices_with_loss"] = False
        return PolicerFit(None, None, None, None, None, checks, details,
                          reason=f"{n_lost} lost packets: nothing to fit a policer to")

    # Timing slack: how far a packet's time at the policer may be from the one used here.
    if delay is not None:
        rel = delay[~lost & np.isfinite(delay)]
        spread = float(np.percentile(rel, 90) - np.percentile(rel, 10))
    else:
        gaps = np.diff(t[~lost])
        spread = float(np.percentile(gaps, 90) - np.percentile(gaps, 10)) if gaps.size > 2 else 0.0
    tol_s = max(p.min_timing_uncertainty_s, spread)
    details["timing_slack_s"] = tol_s

    loss_idx = np.flatnonzero(lost)
    first, last = loss_idx[0], loss_idx[-1]
    dt = t[last] - t[first]
    passed_bytes = np.where(lost, 0.0, size)
    r0 = float(passed_bytes[first:last].sum() / dt) if dt > 0 else float(passed_bytes.sum() / max(np.ptp(t), 1e-9))
    if not r0 > 0:
        r0 = float(passed_bytes.sum() / max(np.ptp(t), 1e-9))
    details["goodput_between_losses_bps"] = r0 * 8.0

    b_lo = max(float(size.max()), p.min_burst_bytes)
    head = float(passed_bytes[:first].sum())
    b_hi = max(20.0 * b_lo, 4.0 * head, 2.0 * r0)
    bursts = np.exp(np.linspace(np.log(b_lo), np.log(b_hi), p.n_bursts))
    k = int(np.ceil(np.log(p.rate_span) / np.log1p(p.rate_coarse_step)))
    rates = r0 * np.exp(np.arange(-k, k + 1) * np.log1p(p.rate_coarse_step))

    mean_size = float(size[~lost].mean())

    def search(rates):
        out = np.zeros((rates.size, bursts.size, 4))
        _grid_errors(t, size, lost, rates, bursts, tol_s, out)
        be = 0.5 * (out[:, :, 0] / max(n_lost, 1) + out[:, :, 1] / max(n_pass, 1))
        # Objective: the violations in bytes (balanced between losses and passes, in packets);
        # unlike counts it has no plateaus, so the optimum is one point.
        hinge = 0.5 * (out[:, :, 2] / max(n_lost, 1) + out[:, :, 3] / max(n_pass, 1)) / mean_size
        a, b = np.unravel_index(int(np.argmin(hinge)), hinge.shape)
        return a, b, be, out, hinge
    # Coarse to fine (the cost is grid points x packets): 5 % steps over the span, 1 % steps
    # around the best, then 0.1 %.
    a, b, be, _, hinge1 = search(rates)
    half = int(np.ceil(np.log1p(p.rate_coarse_step) / np.log1p(p.rate_step)))
    mid = rates[a] * np.exp(np.arange(-half, half + 1) * np.log1p(p.rate_step))
    am, _, _, _, hinge_mid = search(mid)
    fine = mid[am] * np.exp(np.arange(-20, 21) * np.log1p(p.rate_step / 10.0))
    a2, b2, be2, out2, hinge2 = search(fine)
    n_grid = (rates.size + mid.size + fine.size) * bursts.size
    rate, burst = float(fine[a2]), float(bursts[b2])
    # How closely the data pin the rate down: every rate whose best burst leaves violations
    # within rate_tolerance of the optimum's (in mean packets per packet) explains them as well.
    # A bucket that refills to its depth between a video stream's frame bursts passes the same
    # packets at any rate above depth / frame interval: the data then bound the rate from below only.
    best = float(hinge2[a2, b2])
    ok = hinge1.min(axis=1) <= best + p.rate_tolerance
    ok_mid = hinge_mid.min(axis=1) <= best + p.rate_tolerance
    both = np.concatenate([rates[ok], mid[ok_mid], [rate]])
    lo_r, hi_r = float(both.min()), float(both.max())
    details.update({"violation": best, "rate_range_bps": [lo_r * 8.0, hi_r * 8.0],
                    "rate_range_open_above": bool(ok[-1]), "rate_range_open_below": bool(ok[0]),
                    "rate_identifiable": bool(hi_r / lo_r - 1.0 <= p.rate_identifiable_width
                                              and not ok[-1] and not ok[0])})
    margin = np.empty(t.size)
    _bucket_margins(t, size, lost, rate, burst, margin)
    fill = margin + size                       # tokens in the bucket when the packet came
    # Samples from the first loss on, as the paper's (before it the bucket only drains).
    tail_lost, tail_fill, tail_k = lost[first:], fill[first:], stratum[first:]
    ml, mp = margin[first:][tail_lost], margin[first:][~tail_lost]
    strata = [(tail_fill[tail_k == k], tail_lost[tail_k == k]) for k in np.unique(tail_k).tolist()]
    # Fills centred on the passes' median of their stratum, for the lower-fill check.
    centred = tail_fill.copy()
    for k in np.unique(tail_k).tolist():
        m = tail_k == k
        if (m & ~tail_lost).any():
            centred[m] -= np.median(tail_fill[m & ~tail_lost])
    fl, fp = centred[tail_lost], centred[~tail_lost]
    tol_loss = rate * tol_s * p.loss_slack_multiplier
    tol_pass = rate * tol_s * p.pass_slack_multiplier
    details.update({"balanced_error": float(be2[a2, b2]), "grid_points": int(n_grid),
                    "losses_with_room": int(out2[a2, b2, 0]), "passes_without_room": int(out2[a2, b2, 1])})

    # Slices with loss (the paper's RTT slices, of slice_s here)
    slices, slice_end = 1, t[first] + p.slice_s
    for tl in t[loss_idx]:
        if tl > slice_end:
            slice_end = tl + p.slice_s
            slices += 1
    details["slices_with_loss"] = slices
    checks["enough_slices_with_loss"] = slices >= p.min_num_slices_with_loss
    checks["lower_fill_on_loss"] = bool(fl.mean() < fp.mean() and np.median(fl) < np.median(fp))
    share_l = float(np.mean(ml >= tol_loss))
    share_p = float(np.mean(mp < -tol_pass))
    details.update({"loss_out_of_range_share": share_l, "pass_out_of_range_share": share_p})
    checks["loss_fill_in_range"] = share_l <= p.loss_out_of_range
    checks["pass_fill_in_range"] = share_p <= p.pass_out_of_range

    if delay is not None:
        # One-way delay above the stream's base (its least-delayed packet) just before each loss.
        # Within each stratum (stream): another stream's packet just before a loss says nothing
        # about the queue this stream's packets waited in.
        excess_ms = delay * 1e3
        known_d = ~lost & np.isfinite(delay)
        has_prev = np.zeros(loss_idx.size, bool)
        d_prev = np.zeros(loss_idx.size)
        above_med = np.zeros(loss_idx.size, bool)
        loss_k = stratum[loss_idx]
        for k in np.unique(loss_k).tolist():
            recv = np.flatnonzero(known_d & (stratum == k))
            sel = np.flatnonzero(loss_k == k)
            if recv.size == 0:
                continue
            prev = np.searchsorted(recv, loss_idx[sel], side="left") - 1
            ok = prev >= 0
            has_prev[sel] = ok
            d_prev[sel] = np.where(ok, excess_ms[recv[np.maximum(prev, 0)]], 0.0)
            above_med[sel] = d_prev[sel] >= float(np.median(excess_ms[recv]))
        med = float(np.median(excess_ms[known_d]))
        inflated = has_prev & above_med & (d_prev > p.inflated_delay_ms)
        share = float(inflated.mean())
        details.update({"inflated_delay_share": share, "median_excess_delay_ms": med,
                        "excess_delay_before_losses_ms":
                            float(np.median(d_prev[has_prev])) if has_prev.any() else None})
        checks["no_inflated_delay"] = share <= p.inflated_delay_tolerance

    test = rank_test([(f[lo], f[~lo]) for f, lo in strata])
    # From the first loss on, as the paper's samples (before it the bucket only drains).
    seq = fill_score_test(strata)
    if seq is None:
        return PolicerFit(rate * 8.0, burst, None, None, test.effect, checks, details,
                          reason="too few packets after the first ones to test")
    pvalue = min(1.0, seq.pvalue * n_grid)
    details.update({"pvalue_raw": seq.pvalue, "log10_pvalue_raw": seq.log10_pvalue, "z": seq.z, "cles": test.cles,
                    "pvalue_mannwhitney": test.pvalue})
    return PolicerFit(rate_bps=rate * 8.0, burst_bytes=burst, statistic=seq.z, pvalue=pvalue, effect=test.effect,
                      checks=checks, details=details)


def rtp_loss_arrays(arrival_s, seq, rtp_ts, sizes, *, clock_rate: float | None = None, marker=None):
    """Received RTP packets -> per-sequence-number arrays with the missing ones as losses.

    ``arrival_s``, ``seq`` (16-bit or extended), ``rtp_ts`` (32-bit or extended), ``sizes`` of
    the received packets, in arrival order. Duplicates keep their first arrival. Returns
    (arrival_s, sizes, lost, send_s, clock_rate, marker): arrival and size NaN where lost;
    send_s from the RTP timestamps (interpolated over the sequence numbers of missing packets),
    relative, or None when no clock rate is known or estimable; marker per sequence number
    (False where lost or not given).
    """
    from throttledetect.metrics.rtp import TS_MOD, estimate_clock_rate, unwrap

    arrival = np.asarray(arrival_s, dtype=np.float64)
    order = np.argsort(arrival, kind="stable")
    arrival = arrival[order]
    ext = unwrap(np.asarray(seq, dtype=np.int64)[order], 1 << 16)
    ts = unwrap(np.asarray(rtp_ts, dtype=np.int64)[order], TS_MOD).astype(np.float64)
    size = np.asarray(sizes, dtype=np.float64)[order]
    if clock_rate is None:
        clock_rate = estimate_clock_rate(arrival, np.asarray(rtp_ts, dtype=np.int64)[order] % TS_MOD)
    # First arrival of each sequence number, in sequence order.
    uniq, first = np.unique(ext, return_index=True)
    lo = int(uniq[0]) if uniq.size else 0
    n = int(uniq[-1]) - lo + 1 if uniq.size else 0
    pos = uniq - lo
    out_arr = np.full(n, np.nan)
    out_size = np.full(n, np.nan)
    out_ts = np.full(n, np.nan)
    out_arr[pos] = arrival[first]
    out_size[pos] = size[first]
    out_ts[pos] = ts[first]
    lost = np.ones(n, dtype=bool)
    lost[pos] = False
    out_marker = np.zeros(n, dtype=bool)
    if marker is not None:
        out_marker[pos] = np.asarray(marker, dtype=bool)[order][first]
    send = None
    if clock_rate:
        send = (_interp_missing(out_ts) - (out_ts[pos[0]] if n else 0.0)) / float(clock_rate)
    return out_arr, out_size, lost, send, clock_rate, out_marker


def _detection_from_fit(fit: PolicerFit, direction: str, alpha: float, extra: dict) -> Detection:
    decision = fit.decision(alpha)
    est = dict(extra)
    est.update({k: v for k, v in fit.details.items()})
    est["checks"] = dict(fit.checks)
    if fit.rate_bps is not None:
        est["rate_bps"] = fit.rate_bps
        est["burst_bytes"] = fit.burst_bytes
    failed = [k for k, v in fit.checks.items() if v is False]
    if decision == "inconclusive":
        if fit.reason:
            reason = fit.reason
        else:
            reason = (f"too little loss to test: {fit.details.get('lost_packets', 0)} lost packets in "
                      f"{fit.details.get('slices_with_loss', 0)} slices (failed: {', '.join(failed)})")
        return Detection(kind=KIND, direction=direction, decision=decision, statistic=fit.statistic,
                         pvalue=fit.pvalue, effect=fit.effect, estimates=est, reason=reason,
                         evidence=(f"{fit.details.get('lost_packets', 0)} of {fit.details.get('packets', 0)} "
                                   "packets lost"))
    loss_pct = 100.0 * fit.details.get("loss_rate", 0.0)
    if decision == "detected":
        rng_ = fit.details.get("rate_range_bps")
        if rng_ and not fit.details.get("rate_identifiable", True):
            if fit.details.get("rate_range_open_above"):
                est["rate_note"] = (f"any rate of {_fmt_rate(rng_[0])} or more fits as well: the bucket refills to "
                                    "its depth between the stream's bursts, so the data bound the rate from below only")
            else:
                est["rate_note"] = (f"rates from {_fmt_rate(rng_[0])} to {_fmt_rate(rng_[1])} fit about as well; "
                                    f"{_fmt_rate(fit.rate_bps)} fits best")
        when = f" from {extra['onset_s']:.1f} s" if extra.get("onset_s") is not None else ""
        evidence = (f"{loss_pct:.1f} % of packets lost{when}, each when a token bucket of {_fmt_rate(fit.rate_bps)} and "
                    f"{fit.burst_bytes:.0f} B ran dry "
                    f"({100 * (1 - fit.details['loss_out_of_range_share']):.0f} % of losses, "
                    f"{100 * (1 - fit.details['pass_out_of_range_share']):.0f} % of passes fit), without one-way delay "
                    f"growth before them (p={fit.pvalue:.2g}, rank-biserial {fit.effect:.2f})")
        if est.get("rate_note"):
            evidence += "; " + est["rate_note"]
        reason = "" if "no_inflated_delay" in fit.checks else \
            "no sender timestamps: queueing (shaping) before losses could not be ruled out"
    else:
        evidence = (f"{loss_pct:.1f} % of packets lost; best token bucket {_fmt_rate(fit.rate_bps)} / "
                    f"{fit.burst_bytes:.0f} B explains them with balanced error "
                    f"{fit.details.get('balanced_error', 0):.2f} "
                    f"(p={fit.pvalue:.2g})")
        reason = ("checks failed: " + ", ".join(failed)) if failed else f"p-value {fit.pvalue:.2g} not below {alpha}"
        if "no_inflated_delay" in failed:
            reason += ("; the one-way delay was inflated before "
                       f"{100 * fit.details['inflated_delay_share']:.0f} % of losses (a queue: shaping or congestion)")
    return Detection(kind=KIND, direction=direction, decision=decision, statistic=fit.statistic, pvalue=fit.pvalue,
                     effect=fit.effect, estimates=est, evidence=evidence, reason=reason)


def policing_from_rtp(arrival_s, seq, rtp_ts, sizes, *, marker=None, clock_rate: float | None = None,
                      direction: str = "ab", alpha: float = 0.01,
                      params: MediaPolicingParams = MEDIA_PARAMS) -> Detection:
    """``detect_policing_rtp`` on plain arrays of one RTP stream's received packets.

    ``marker``: the RTP marker bits, given for video (they end frames); leave None for audio
    (there they start talkspurts).
    """
    arr, size, lost, send, clock, mark = rtp_loss_arrays(arrival_s, seq, rtp_ts, sizes, clock_rate=clock_rate,
                                                         marker=marker)
    return _rtp_detection(arr, size, lost, send, mark if marker is not None else None, direction, alpha, params,
                          {"clock_rate": clock})


def _rtp_detection(arr, size, lost, send, frame_end, direction, alpha, params, extra) -> Detection:
    if lost.size < 2:
        return Detection.inconclusive(KIND, direction, "fewer than 2 RTP packets", **extra)
    # A jump of the sequence number by thousands is a restart or a new stream, not loss:
    # analyse the longest stretch between such jumps.
    recv = np.flatnonzero(~lost)
    cut = np.flatnonzero(np.diff(recv) > params.max_seq_gap)
    if cut.size:
        bounds = np.concatenate([[0], cut + 1, [recv.size]])
        k = int(np.argmax(np.diff(bounds)))
        lo_, hi_ = recv[bounds[k]], recv[bounds[k + 1] - 1] + 1
        arr, size, lost = arr[lo_:hi_], size[lo_:hi_], lost[lo_:hi_]
        send = send[lo_:hi_] if send is not None else None
        frame_end = frame_end[lo_:hi_] if frame_end is not None else None
        extra = dict(extra, sequence_jumps=int(cut.size))
        if lost.size < 2:
            return Detection.inconclusive(KIND, direction, "fewer than 2 RTP packets between sequence jumps", **extra)
    steps = np.diff(np.flatnonzero(~lost))
    if steps.size and np.median(steps) > params.max_median_seq_step:
        return Detection.inconclusive(
            KIND, direction, f"sequence numbers advance by a median {np.median(steps):.0f} per packet "
            f"({100 * lost.mean():.0f} % missing): not one RTP sequence (several streams, or not RTP)", **extra)
    fit = fit_policer(arr, size, lost, send_s=send, frame_end=frame_end, params=params)
    return _detection_from_fit(fit, direction, alpha, extra)


def detect_policing_rtp(cap, ft, flow_index: int, direction: str, *, cl=None, ssrc: int | None = None,
                        alpha: float = 0.01, params: MediaPolicingParams = MEDIA_PARAMS) -> Detection:
    """Is the RTP stream that ``direction`` of flow ``flow_index`` carries policed on its way here?

    Losses are missing RTP sequence numbers of one SSRC (the busiest unless ``ssrc`` is given);
    sizes are link-layer frame bytes; send times come from the RTP timestamps (clock rate of the
    static payload type, else estimated). See ``fit_policer`` for the fit, the checks and the
    test. H0: losses are unrelated to the fill of a token bucket (fill score test of the
    fill at lost vs received packets, one-sided, Bonferroni over the fitted grid); effect:
    rank-biserial correlation. "detected" needs every check (including flat one-way delay before losses: a
    shaper's tail drops come after its queue has grown) and p < alpha.

    ``cl``: the capture's Classification (computed here if omitted), for the RTP header offsets.
    """
    from throttledetect.metrics.rtp import clock_rate_for
    from throttledetect.wire.rtp import rtp_fields

    if direction not in ("ab", "ba"):
        raise ValueError("direction must be 'ab' or 'ba'")
    if cl is None:
        from throttledetect.classify import classify
        cl = classify(cap, ft)
    pk = cap.packets
    rows = ft.packet_indices(flow_index)
    rows = rows[ft.dir_of[rows] == (0 if direction == "ab" else 1)]
    off = cl.evidence.rtp_offset_of[rows]
    enc = cl.evidence.rtp_encap_of[rows]
    rows, off = rows[enc >= 0], off[enc >= 0]
    if rows.size == 0:
        return Detection.inconclusive(KIND, direction, "no RTP packets in this direction")
    f = rtp_fields(pk.prefix[rows], off, length=pk.payload_len[rows])
    ok = f["valid"]
    if not ok.any():
        return Detection.inconclusive(KIND, direction, "no readable RTP headers in this direction")
    ssrcs, counts = np.unique(f["ssrc"][ok], return_counts=True)
    if ssrc is None:
        ssrc = int(ssrcs[np.argmax(counts)])
    sel = ok & (f["ssrc"] == ssrc)
    if sel.sum() < 2:
        return Detection.inconclusive(KIND, direction, f"fewer than 2 packets of SSRC {ssrc:#010x}")
    # Payload types of one SSRC normally share its sequence (RFC 3550; DTMF, comfort noise,
    # codec switches), but some apps number each payload type apart: then the busiest payload
    # type's own sequence is far cleaner (steps of +1 in arrival order) than the merged one.
    pts, pcount = np.unique(f["pt"][sel], return_counts=True)
    pt = int(pts[np.argmax(pcount)])
    by_pt = sel & (f["pt"] == pt)

    def unit_steps(mask):
        sq = f["seq"][mask].astype(np.int64)
        return float(np.mean(((np.diff(sq) % 65536) == 1))) if sq.size > 1 else 0.0
    if pts.size > 1 and by_pt.sum() >= 2 and unit_steps(by_pt) > unit_steps(sel) + 0.1:
        sel = by_pt
    else:
        pt = None
    main_pt = pt if pt is not None else int(np.bincount(f["pt"][sel]).argmax())
    clock_rate = clock_rate_for(main_pt)
    arr, size, lost, send, clock, mark = rtp_loss_arrays(pk.ts_ns[rows[sel]] / 1e9, f["seq"][sel], f["ts"][sel],
                                                         pk.wirelen[rows[sel]], clock_rate=clock_rate,
                                                         marker=f["marker"][sel])
    # Video (90 kHz clock) marks the last packet of a frame; audio marks talkspurt starts.
    video = (clock or 0) >= 90000
    return _rtp_detection(arr, size, lost, send, mark if video else None, direction, alpha, params,
                          {"ssrc": ssrc, "payload_types": [pt] if pt is not None else [int(x) for x in pts],
                           "clock_rate": clock, "ssrcs_in_direction": int(ssrcs.size)})


def _longest_run(lost: np.ndarray, max_gap: int) -> slice | None:
    """The longest stretch of sequence numbers between jumps of more than ``max_gap`` (a restart
    or a new stream, not loss); None when there is no jump."""
    recv = np.flatnonzero(~lost)
    cut = np.flatnonzero(np.diff(recv) > max_gap)
    if not cut.size:
        return None
    bounds = np.concatenate([[0], cut + 1, [recv.size]])
    k = int(np.argmax(np.diff(bounds)))
    return slice(int(recv[bounds[k]]), int(recv[bounds[k + 1] - 1]) + 1)


def _stream_parts(s, params: MediaPolicingParams):
    """One RTP stream (common.RtpArrays) -> list of (t, size, lost, delay, info) parts: the stream
    itself, or one part per payload type when the app numbers each payload type apart (the merged
    sequence then advances by more than max_median_seq_step per packet). Parts that still do
    not read as one sequence are left out (their packets count as passes)."""
    def part(sel):
        arr, size, lost, send, clock, mark = rtp_loss_arrays(s.t[sel], s.seq[sel], s.ts[sel], s.size[sel],
                                                             clock_rate=s.clock, marker=s.marker[sel])
        if lost.size < 2:
            return None
        run = _longest_run(lost, params.max_seq_gap)
        if run is not None:
            arr, size, lost, mark = arr[run], size[run], lost[run], mark[run]
            send = send[run] if send is not None else None
        steps = np.diff(np.flatnonzero(~lost))
        if steps.size and np.median(steps) > params.max_median_seq_step:
            return None
        video = (clock or 0) >= 90000        # video marks the last packet of a frame; audio a talkspurt start
        t, sz, lo, dl = stream_units(arr, size, lost, send_s=send, frame_end=mark if video else None, params=params)
        return t, sz, lo, dl, {"ssrc": int(s.ssrc), "clock_rate": clock, "packets": int(lo.size),
                               "lost": int(lo.sum()), "jumped": run is not None}
    whole = part(np.ones(s.n, dtype=bool))
    if whole is not None:
        return [whole]
    out = []
    for pt in np.unique(s.pt).tolist():
        sel = s.pt == pt
        if np.count_nonzero(sel) >= 3:
            got = part(sel)
            if got is not None:
                got[4]["payload_type"] = int(pt)
                out.append(got)
    return out


def direction_units(ctx, i: int, d: int, params: MediaPolicingParams = MEDIA_PARAMS):
    """Every packet of one arriving direction of flow i as the bucket sees it, lost RTP packets
    included: (t, size, lost, delay, stratum, infos, non-RTP packets), time-ordered; None without
    RTP streams, a reason string when their sequence numbers do not read as streams. Strata:
    one per stream part, one for the packets without RTP (see detect_policing_flow)."""
    key = ("police-units", i, d)
    if key in ctx._cache:
        return ctx._cache[key]
    streams = [s for s in ctx.rtp(i, d) if s.n >= 3]
    out = None
    if streams:
        parts, infos = [], []
        for s in streams:
            for t, sz, lo, dl, info in _stream_parts(s, params):
                parts.append((t, sz, lo, dl if dl is not None else np.full(lo.size, np.nan)))
                infos.append(info)
        if not parts:
            out = "the RTP sequence numbers do not read as streams (several sources interleaved, or not RTP)"
        else:
            pk = ctx.packets(i, d)
            used = np.concatenate([s.rows for s in streams])
            other = ~np.isin(pk.rows, used)
            n_other = int(other.sum())
            t = np.concatenate([p[0] for p in parts] + [pk.t[other]])
            size = np.concatenate([p[1] for p in parts] + [pk.size[other]])
            lost = np.concatenate([p[2] for p in parts] + [np.zeros(n_other, bool)])
            delay = np.concatenate([p[3] for p in parts] + [np.full(n_other, np.nan)])
            stratum = np.concatenate([np.full(p[2].size, k) for k, p in enumerate(parts)]
                                     + [np.full(n_other, len(parts))])
            o = np.argsort(t, kind="stable")
            out = (t[o], size[o], lost[o], delay[o], stratum[o], infos, n_other)
    ctx._cache[key] = out
    return out


def _fit_with_onset(ctx, key, t, size, lost, delay, stratum, params):
    """fit_token_bucket over the packets, replaced by a fit from the loss onset when that one
    leaves at most onset_fit_gain of the whole fit's violations after the onset. Returns (fit, extra)."""
    delay = delay if delay is not None and np.isfinite(delay).any() else None
    fit = fit_token_bucket(t, size, lost, delay, stratum=stratum, params=params)
    extra: dict = {}
    onset = _policer_onset(ctx, key, t, size, lost, fit, params)
    if onset is not None:
        m = t >= onset
        fit2 = fit_token_bucket(t[m], size[m], lost[m], None if delay is None else delay[m], stratum=stratum[m],
                                params=params)
        if fit2.rate_bps is not None:
            before = _violation(t, size, lost, fit.rate_bps / 8.0, fit.burst_bytes, m)
            extra["whole_stream_fit"] = {"rate_bps": fit.rate_bps, "burst_bytes": fit.burst_bytes,
                                         "violation_after_onset": before}
            if fit2.details["violation"] <= params.onset_fit_gain * before:
                fit = fit2
                extra["onset_s"] = float(onset)
    return fit, extra


def host_pair_group(ctx, i: int) -> list:
    """The call flows of flow i's transport that arrive from its remote host (i included): what
    one policer on the path between the two hosts meters together (audio and video on separate
    5-tuples, a call's several relays' ports). One group per host, whatever each flow's span (a
    flow outside another's time only adds passes where the other has none), so the fit over it
    is computed once."""
    a = ctx._flow_arrays
    same = (a["r_hi"] == a["r_hi"][i]) & (a["r_lo"] == a["r_lo"][i]) & a["call"] & (a["proto"] == a["proto"][i])
    same[i] = True
    return np.flatnonzero(same).tolist()


def detect_policing_flow(ctx, i: int, d: int, *, params: MediaPolicingParams = MEDIA_PARAMS) -> Detection:
    """Is one arriving direction of a media flow policed? Every RTP stream of the direction
    together, plus its other packets; then, if that does not show a policer, every call flow
    from the same remote host together.

    A policer meters a flow (or a host's traffic), not an RTP stream: the audio, video and
    retransmission streams bundled on one 5-tuple (WebRTC, Teams, Zoom) draw on one bucket, so
    a fit to one stream sees only its share of the tokens and misplaces the drops (a video
    burst empties the bucket; the audio packet after it is the one lost). Here each stream's
    lost packets are placed in time and sized from its own sequence (``stream_units``), then all
    streams are merged in time order with the direction's packets that carry no RTP (RTCP,
    STUN: they took tokens too) as passes, and ``fit_token_bucket`` fits and tests one bucket.
    H0, test, effect and checks as in ``fit_policer`` (the one-way delay per stream, above its
    own least). Clock rates: the static payload type's, else common.robust_clock_rate.

    Second scope (as detect_policing_tcp's host pair): a policer on the access link meters the
    call's audio and video flows as one aggregate, and each flow alone shows only its share of
    the tokens. When the flow's own fit is not a detection and other call flows arrive from the
    same remote host (``host_pair_group``), their packets are merged and fitted as one bucket;
    the two looks share alpha (the aggregate's p-value is doubled). A detection in that scope
    needs the flow itself to have lost at least min_num_samples packets, and reports the
    aggregate's rate (estimates["scope"] = "host pair"). A flow detected on its own gets the
    aggregate's rate as host_pair_rate_bps (the cap the per-protocol summary reports) only when
    every flow of the pair lost that many: a cap that bites on all of them.
    """
    from throttledetect.detect.common import dir_name
    direction = dir_name(d)
    units = direction_units(ctx, i, d, params)
    if units is None:
        return Detection.inconclusive(KIND, direction, "no RTP packets in this direction")
    if isinstance(units, str):
        return Detection.inconclusive(KIND, direction, units, ssrcs_in_direction=len(ctx.rtp(i, d)))
    t, size, lost, delay, stratum, infos, n_other = units
    fit, extra0 = _fit_with_onset(ctx, (i, d), t, size, lost, delay, stratum, params)
    extra = {"ssrcs": [x["ssrc"] for x in infos], "streams": infos, "ssrcs_in_direction": len(ctx.rtp(i, d)),
             "non_rtp_packets": n_other, "scope": "flow"}
    extra.update(extra0)
    main = max(infos, key=lambda x: x["packets"])
    extra["clock_rate"] = main["clock_rate"]
    extra["ssrc"] = main["ssrc"]
    own = _detection_from_fit(fit, direction, ctx.alpha, extra)
    group = host_pair_group(ctx, i)
    agg = _host_pair_fit(ctx, group, params) if len(group) > 1 else None
    if agg is None:
        return own
    fit2, extra2 = agg
    fit2 = PolicerFit(**{**fit2.__dict__, "pvalue": None if fit2.pvalue is None else min(1.0, 2.0 * fit2.pvalue)})
    # A flow that loses (almost) nothing is not shown policed by its neighbours' losses, and a cap
    # is "shared" only when it bites on every flow of the pair.
    n_lost = {j: _lost_count(ctx, j, params) for j in group}
    if own.decision == "detected":
        if fit2.decision(ctx.alpha) == "detected" and min(n_lost.values()) >= params.min_num_samples:
            # the cap the flows share (the per-protocol summary reports it as their common rate)
            own.estimates.update(host_pair_rate_bps=fit2.rate_bps, host_pair_burst_bytes=fit2.burst_bytes,
                                 host_pair_flows=group,
                                 host_pair_rate_range_bps=fit2.details.get("rate_range_bps"),
                                 host_pair_rate_range_open_above=fit2.details.get("rate_range_open_above"),
                                 host_pair_rate_identifiable=fit2.details.get("rate_identifiable"))
            own.evidence += (f"; the {len(group)} call flows from this remote host together fit one bucket of "
                             f"{_fmt_rate(fit2.rate_bps)} and {fit2.burst_bytes:.0f} B: this flow's rate is its share")
        return own
    if fit2.decision(ctx.alpha) != "detected" or n_lost[i] < params.min_num_samples:
        own.estimates["host_pair_fit"] = {"flows": group, "rate_bps": fit2.rate_bps, "pvalue": fit2.pvalue,
                                          "failed_checks": [k for k, v in fit2.checks.items() if v is False]}
        return own
    extra2 = dict(extra, **extra2, scope="host pair", flows=group, own_flow_decision=own.decision,
                  own_flow_reason=own.reason, host_pair_rate_bps=fit2.rate_bps, host_pair_flows=group)
    det = _detection_from_fit(fit2, direction, ctx.alpha, extra2)
    det.evidence = (f"the {len(group)} call flows from this remote host together: " + det.evidence
                    + "; this flow alone shows only its share of the bucket")
    return det


def _lost_count(ctx, j: int, params) -> int:
    u = direction_units(ctx, j, ctx.inbound(j)[0], params)
    return 0 if u is None or isinstance(u, str) else int(u[2].sum())


def _host_pair_fit(ctx, group: list, params):
    """The bucket fit over every call flow of ``group`` (their arriving directions), cached per group."""
    key = ("police-host-pair", tuple(group))
    if key in ctx._cache:
        return ctx._cache[key]
    parts = []
    k0 = 0
    for j in group:
        u = direction_units(ctx, j, ctx.inbound(j)[0], params)
        if u is None or isinstance(u, str):
            continue
        t, size, lost, delay, stratum, _, _ = u
        parts.append((t, size, lost, delay, stratum + k0))
        k0 += int(stratum.max()) + 1
    out = None
    if len(parts) > 1:
        t = np.concatenate([p[0] for p in parts])
        o = np.argsort(t, kind="stable")
        cols = [np.concatenate([p[c] for p in parts])[o] for c in range(5)]
        out = _fit_with_onset(ctx, ("host", tuple(group)), *cols, params)
    ctx._cache[key] = out
    return out


def _violation(t, size, lost, rate, burst, mask) -> float:
    """fit_token_bucket's objective for one (rate bytes/s, burst) on the packets in ``mask``
    (the bucket simulated over all packets): bytes of room at losses plus bytes missing at
    passes, each per packet, in mean packet sizes."""
    margin = np.empty(t.size)
    _bucket_margins(t, size, lost, float(rate), float(burst), margin)
    lm, pm = lost & mask, ~lost & mask
    hl = float(np.clip(margin[lm], 0.0, None).sum()) / max(int(lm.sum()), 1)
    hp = float(np.clip(-margin[pm], 0.0, None).sum()) / max(int(pm.sum()), 1)
    return 0.5 * (hl + hp) / float(size[pm].mean() if pm.any() else 1.0)


def _policer_onset(ctx, key, t, size, lost, fit, params) -> float | None:
    """The time a policer was switched on, when the losses start at a change point (onset.loss_onset
    on the merged packets, p < alpha, the loss before it under a third of the loss after) and the
    whole-stream fit did not already explain them by a bucket that drained from the start."""
    from throttledetect.detect.common import LossUnits
    from throttledetect.detect.onset import loss_onset
    if fit.rate_bps is None or lost.sum() < params.min_num_samples:
        return None
    cp = loss_onset(LossUnits(t=t, lost=lost, size=size, source="rtp"), rng=ctx.rng("police-onset", key))
    if cp is None or cp.pvalue >= ctx.alpha or cp.onset_s is None or not cp.after > 3.0 * cp.before:
        return None
    return float(cp.onset_s)
