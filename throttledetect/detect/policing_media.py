"""Policing of media (RTP): a token bucket fitted to the received and missing packets of a flow's
streams, merged as a policer meters them. The method, H0 and the test are in policing.py's docstring.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
from scipy.ndimage import maximum_filter1d

from throttledetect.detect.common import LossUnits, dir_name
from throttledetect.detect.onset import loss_onset
from throttledetect.detect.policing_stats import KIND, fill_score_test, fmt_rate as _fmt_rate, rank_test
from throttledetect.detect.result import Detection
from throttledetect.jit import njit

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
    jump = _longest_run(lost, params.max_seq_gap)
    if jump is not None:
        run, n_jumps = jump
        arr, size, lost = arr[run], size[run], lost[run]
        send = send[run] if send is not None else None
        frame_end = frame_end[run] if frame_end is not None else None
        extra = dict(extra, sequence_jumps=n_jumps)
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


def _longest_run(lost: np.ndarray, max_gap: int) -> tuple[slice, int] | None:
    """The longest stretch of sequence numbers between jumps of more than ``max_gap`` (a restart
    or a new stream, not loss), and the number of jumps; None when there is no jump."""
    recv = np.flatnonzero(~lost)
    cut = np.flatnonzero(np.diff(recv) > max_gap)
    if not cut.size:
        return None
    bounds = np.concatenate([[0], cut + 1, [recv.size]])
    k = int(np.argmax(np.diff(bounds)))
    return slice(int(recv[bounds[k]]), int(recv[bounds[k + 1] - 1]) + 1), int(cut.size)


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
        jump = _longest_run(lost, params.max_seq_gap)
        run = jump[0] if jump is not None else None
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
    fit2 = replace(fit2, pvalue=None if fit2.pvalue is None else min(1.0, 2.0 * fit2.pvalue))   # two looks
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
    """The time a policer may have been switched on: where the losses start at a change point
    (onset.loss_onset on the merged packets, p < alpha, the loss before it under a third of the
    loss after). Whether a fit from there beats a bucket that drained from the start is the
    caller's comparison (_fit_with_onset)."""
    if fit.rate_bps is None or lost.sum() < params.min_num_samples:
        return None
    cp = loss_onset(LossUnits(t=t, lost=lost, size=size, source="rtp"), rng=ctx.rng("police-onset", key))
    if cp is None or cp.pvalue >= ctx.alpha or cp.onset_s is None or not cp.after > 3.0 * cp.before:
        return None
    return float(cp.onset_s)
