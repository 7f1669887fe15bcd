"""Policing: a token bucket that drops, rather than queues, explains the flow's losses.

A policer (RFC 2697/2698 token bucket without a queue) forwards a packet when the bucket holds
its size in tokens and drops it otherwise; tokens come at the rate r, the bucket holds at most
b. Seen where the packets arrive, with a loss signal that says which packets were lost and when
(RTP sequence numbers, TCP holes, a voice cadence's empty slots: streams.loss), its signature is
that the losses are exactly the packets a simulated bucket had no room for.

The fit (``fit_bucket``): over a grid of rates (from a third of the received rate to 1.5 x it)
and depths (the largest packet to ``max_burst_s`` at the rate), a bucket is run over the
expected packets (received and lost, in time order), full from the start or empty from the first
loss (a policer switched on mid-call, or one whose bucket was drained when losses began); a
packet is predicted lost when the bucket lacks its size. Quality: Youden's J = share of losses
predicted minus share of passes predicted lost (1: the bucket explains everything, 0: no better
than chance). A received packet takes its tokens (the real bucket had them); a lost one takes
none.

Two tests, each of a null under which the losses have nothing to do with a bucket:

1. **Alignment** (``alignment``). H0: within any short stretch (PERM_BLOCK_S) which packets are
   lost has nothing to do with the flow's own traffic (random path loss, selective random drops,
   congestion caused by others: their slower patterns, an onset, an episode, are kept). The
   bucket is fitted on alternate blocks and judged on the others (cross-fitting: the search is
   not tested on the data that chose it), against permutations of the loss labels within
   short stretches of the judged half (alignment_test has the details).
2. **Regularity** (``regularity``, RTP and TCP loss only). A bucket that empties under a steady
   sender drops at a steady share (every third packet at 0.67 x the rate): the losses per window
   of ``dispersion_window`` expected packets vary less than independent losses would. H0:
   independent losses with one probability (Bernoulli) between the first and last loss. Test:
   the dispersion statistic sum (x - k p)^2 / (k p (1 - p)), lower tail of chi-square (m - 1).
   Bursty loss (congestion, Wi-Fi) is over-dispersed and never passes.
The two share alpha (Bonferroni). Effect: J of the best fit (checked against ``floor.policing``).

Checks: at least ``min_losses`` lost and passed; and **no standing queue**: a shaper's full
queue drops the same packets a bucket would, but holds the others for the queue's delay. Where
the sender's clock is known (RTP timestamps), shaping.queue_estimate sizes the queue from the
delay; one of ``min_queue_packets`` or more packets at the fitted rate fails the check (that is
shaping's). A tbf whose queue holds a packet or two drops like a policer and is one. And **no full
queue at the losses** (``queue_at_losses``): a FIFO drops only when full, so where the frames just
before the losses waited longer than the others by ``min_queue_packets`` at the fitted rate
(Mann-Whitney, one-sided), the losses are a queue's tail drops: a shaper's, or a congested link's,
whose buffer the flow's own bursts overflow, so that its losses line up with the flow's load as a
policer's do (the validation's congested link on the Teams call: alignment p 1e-52, J 0.64).

Estimates: rate_bps (link-layer bits/s: what arrived between consecutive losses of each talk spurt
over the time between them, passed_between_losses_bps, every packet of the flow counted, RTP or not
(the bucket is empty at each loss, so this is the rate to a packet while the sender offers more;
intervals that passed clearly less, where the bucket filled, are left out); with under a second of
such time, the most that arrived in any RATE_WINDOW_S between the first and last loss,
passed_rate_bps (at most rate + depth / window); ``rate_read`` says which; the best fit's rate is
rate_fit_bps), the range of rates that fit about as well (``rate_range_bps``: a bucket that refills
to its depth between bursts passes the same packets at any rate above depth / burst interval: then the rate is bounded
from below only, ``rate_identifiable`` False), burst_bytes, onset_s (the first loss when the
bucket was empty then).
"""
from __future__ import annotations

import numpy as np
from scipy import stats

from throttledetect.detect.context import PAUSE_S, DetectContext, dir_name
from throttledetect.detect.detector import Detector
from throttledetect.detect.result import Detection, TestResult
from throttledetect.detect.shaping import queue_unit_bytes
from throttledetect.jit import njit
from throttledetect.streams import merge_loss
from throttledetect.verdicts import fmt_rate

KIND = "policing"
J_TOLERANCE = 0.02          # rates whose J is within this of the best fit as well
GROUP_MIN_LOSS = 0.005      # a host's flow joins the shared-bucket fit when it lost at least this share
RATE_WINDOW_S = 5.0         # the window over which the passed rate is read (passed_rate_bps)
HALF_BLOCK_S = 2.0          # cross-fitting: alternate blocks of this length fit and judge
PERM_BLOCK_S = 0.2          # the null shuffles loss labels within blocks this short ...
PERM_BLOCK_UNITS = 8        # ... or long enough to hold this many units on average
MIN_LOSS_FRAMES = 5         # frames just before losses needed to compare their delay with the others'


@njit
def _j_grid(t, size, lost, rates, bursts, first_lost, out):
    """out[m, a, b] = Youden's J of a bucket (rate rates[a] bytes/s, depth bursts[b]) run from the
    start full (m = 0) or from the first loss empty (m = 1)."""
    n = len(t)
    for m in range(2):
        start = 0 if m == 0 else first_lost
        n_lost = 0
        n_pass = 0
        for k in range(start, n):
            if lost[k]:
                n_lost += 1
            else:
                n_pass += 1
        if n_lost == 0 or n_pass == 0:
            for a in range(len(rates)):
                for b in range(len(bursts)):
                    out[m, a, b] = -1.0
            continue
        for a in range(len(rates)):
            r = rates[a]
            for b in range(len(bursts)):
                depth = bursts[b]
                tokens = depth if m == 0 else 0.0
                last = t[start]
                tp = 0
                fp = 0
                for k in range(start, n):
                    tokens += r * (t[k] - last)
                    last = t[k]
                    if tokens > depth:
                        tokens = depth
                    room = tokens >= size[k]
                    if lost[k]:
                        if not room:
                            tp += 1
                    else:
                        if not room:
                            fp += 1
                        tokens -= size[k]
                        if tokens < 0.0:
                            tokens = 0.0
                out[m, a, b] = tp / n_lost - fp / n_pass


@njit
def _bucket_j(t, size, lost, use, rate, depth, mode, first_lost):
    """Youden's J over the units marked ``use`` of one bucket (see _j_grid)."""
    n = len(t)
    start = 0 if mode == 0 else first_lost
    n_lost = 0
    n_pass = 0
    tp = 0
    fp = 0
    tokens = depth if mode == 0 else 0.0
    last = t[start]
    for k in range(start, n):
        tokens += rate * (t[k] - last)
        last = t[k]
        if tokens > depth:
            tokens = depth
        room = tokens >= size[k]
        if lost[k]:
            if use[k]:
                n_lost += 1
                if not room:
                    tp += 1
        else:
            if use[k]:
                n_pass += 1
                if not room:
                    fp += 1
            tokens -= size[k]
            if tokens < 0.0:
                tokens = 0.0
    if n_lost == 0 or n_pass == 0:
        return -1.0
    return tp / n_lost - fp / n_pass


@njit
def _reinterpolate(t, size, lost, stream, n_streams, t_out, s_out):
    """Times and sizes of the units marked lost, interpolated between the received units of the
    same stream before and after them (as streams.rtp places a lost packet); received units keep
    their own."""
    n = len(t)
    prev = np.full(n_streams, -1)
    # forward: the previous received unit of each unit's stream; backward: the next
    prev_of = np.full(n, -1)
    for k in range(n):
        st = stream[k]
        prev_of[k] = prev[st]
        if not lost[k]:
            prev[st] = k
    nxt = np.full(n_streams, -1)
    for k in range(n - 1, -1, -1):
        st = stream[k]
        if not lost[k]:
            t_out[k] = t[k]
            s_out[k] = size[k]
            nxt[st] = k
            continue
        a = prev_of[k]
        b = nxt[st]
        if a >= 0 and b >= 0:
            # position by unit count between the two received neighbours of the stream
            frac = 0.5
            cnt = 0
            pos = 0
            for j in range(a + 1, b):
                if stream[j] == st:
                    cnt += 1
                    if j == k:
                        pos = cnt
            frac = pos / (cnt + 1)
            t_out[k] = t[a] + (t[b] - t[a]) * frac
            s_out[k] = size[a] + (size[b] - size[a]) * frac
        elif a >= 0:
            t_out[k] = t[a]
            s_out[k] = size[a]
        elif b >= 0:
            t_out[k] = t[b]
            s_out[k] = size[b]
        else:
            t_out[k] = t[k]
            s_out[k] = size[k]


@njit
def _permuted_j(t, size, lost, stream, n_streams, use, group_start, group_end, rate, depth, mode, n_perm, seed,
                out):
    """J of the fixed bucket after shuffling the loss labels within each group of test units,
    the lost units' times and sizes placed again from their neighbours (as for the observed)."""
    np.random.seed(seed)
    work = lost.copy()
    t_p = np.empty(len(t))
    s_p = np.empty(len(t))
    order = np.empty(len(t), dtype=np.int64)
    for p in range(n_perm):
        for g in range(len(group_start)):
            a = group_start[g]
            b = group_end[g]
            for k in range(b - 1, a, -1):           # Fisher-Yates within the group
                j = a + np.random.randint(0, k - a + 1)
                tmp = work[k]
                work[k] = work[j]
                work[j] = tmp
        _reinterpolate(t, size, work, stream, n_streams, t_p, s_p)
        order[:] = np.argsort(t_p, kind="mergesort")
        tt = t_p[order]
        ss = s_p[order]
        ww = work[order]
        uu = use[order]
        first = 0
        while first < len(ww) and not ww[first]:
            first += 1
        if first >= len(ww):
            first = 0
        out[p] = _bucket_j(tt, ss, ww, uu, rate, depth, mode, first)


def _grids(recv_bps: float, max_size: float, P, fine: bool = False, peak_bps: float | None = None):
    """Rates from a third of the received rate up to 1.5 x the larger of it and the offered peak
    (a bursty sender's policer may sit far above its long-run rate and bite only in bursts)."""
    lo, hi = recv_bps / P.rate_span, max(recv_bps, peak_bps or 0.0) * 1.5
    nr = P.rate_steps * (4 if fine else 1)
    rates = np.geomspace(lo, hi, nr) / 8.0                      # bytes/s
    bmax = max(2.0 * max_size, hi / 8.0 * P.max_burst_s)
    bursts = np.geomspace(max_size, bmax, P.burst_steps * (2 if fine else 1))
    return rates, bursts


def passed_rate_bps(t, size, lost, window_s: float = RATE_WINDOW_S) -> float | None:
    """A policer's rate read from what it let through: the most bytes received in any window of
    window_s between the first and the last loss, over window_s. A bucket passes at most
    rate x W + burst in W, and while the sender offers more than the rate (it does: it loses
    packets) about that much: the estimate errs by burst / W at most, above."""
    idx = np.flatnonzero(lost)
    if len(idx) < 2:
        return None
    a, b = idx[0], idx[-1]
    tt, ss = t[a:b + 1][~lost[a:b + 1]], size[a:b + 1][~lost[a:b + 1]]
    if len(tt) < 2 or tt[-1] - tt[0] < window_s:
        return None
    cum = np.concatenate(([0.0], np.cumsum(ss)))
    j = np.searchsorted(tt, tt + window_s, side="left")      # packets in [tt[k], tt[k] + W)
    return float((cum[j] - cum[np.arange(len(tt))]).max() * 8.0 / window_s)


def passed_between_losses_bps(t_units, lost, t_arrived, size_arrived, pause_s: float = PAUSE_S) -> float | None:
    """A policer's rate read from what it let through between losses. Right after a loss the
    bucket holds less than a packet, and again at the next loss, so what arrived between two
    consecutive losses is the rate times the time between, to a packet either way, unless the
    bucket filled to its depth in between (the sender offered less than the rate for a while).
    Read over the intervals between consecutive losses within a talk spurt (the offered units split
    at pauses of pause_s or more: a bucket refills in a pause), summed: every packet that arrived
    counts, RTP or not (the policer meters the flow's bytes, not only those the loss signal can
    follow). An interval that passed less than the rate times its length by more than two packets
    cannot have had an empty bucket at both ends without filling it: the sender offered less than
    the rate there (a fax's 24 s of comfort noise between its bursts read the 25 kbit/s policer at
    11), so it is left out and the rate read again, until nothing changes. None with under a second
    of such time."""
    lost = np.asarray(lost, dtype=np.bool_)
    if lost.sum() < 2:
        return None
    spurt = np.cumsum(np.r_[0, np.diff(t_units) >= pause_s])
    li = np.flatnonzero(lost)
    same = spurt[li[1:]] == spurt[li[:-1]]
    t0, t1 = t_units[li[:-1]][same], t_units[li[1:]][same]
    cum = np.concatenate(([0.0], np.cumsum(size_arrived)))
    i0 = np.searchsorted(t_arrived, t0, side="right")
    i1 = np.searchsorted(t_arrived, t1, side="right")
    passed, span = cum[i1] - cum[i0], t1 - t0
    slack = 2.0 * float(np.max(size_arrived)) if len(size_arrived) else 0.0
    keep = np.ones(len(span), dtype=np.bool_)
    for _ in range(5):              # each round only drops intervals: a few rounds settle it
        if span[keep].sum() < 1.0:
            return None
        again = passed >= passed[keep].sum() / span[keep].sum() * span - slack
        if np.array_equal(again, keep):
            break
        keep = again
    if span[keep].sum() < 1.0:
        return None
    return float(passed[keep].sum() / span[keep].sum() * 8.0)


def offered_peak_bps(t, size, window_s: float = 1.0) -> float:
    """The 95th percentile of the offered (received and lost) rate over windows of window_s."""
    if len(t) < 2 or t[-1] - t[0] <= window_s:
        return 0.0
    k = np.floor((t - t[0]) / window_s).astype(np.int64)
    per = np.bincount(k, weights=size) * 8.0 / window_s
    return float(np.quantile(per[per > 0], 0.95)) if np.any(per > 0) else 0.0


def fit_bucket(t, size, lost, recv_bps, P, fine=False, use=None):
    """(J grid [mode, rate, burst], rates bytes/s, bursts bytes); J over the units ``use``
    (all by default) while the bucket runs over every unit."""
    rates, bursts = _grids(recv_bps, float(size.max()), P, fine, offered_peak_bps(t, size))
    first = int(np.argmax(lost)) if lost.any() else 0
    out = np.zeros((2, len(rates), len(bursts)))
    if use is None:
        _j_grid(t, size, lost, rates, bursts, first, out)
    else:
        for m in range(2):                      # a grid point is one compiled run
            for a in range(len(rates)):
                for b in range(len(bursts)):
                    out[m, a, b] = _bucket_j(t, size, lost, use, rates[a], bursts[b], m, first)
    return out, rates, bursts


def alignment_test(t, size, lost, stream, recv_bps, P, seed: int) -> TestResult:
    """J of the bucket on the held-out half (statistic), its permutation p-value, and z against
    the permutations (estimates["z"]).

    The lost units' times and sizes are first placed as the null places them (_reinterpolate),
    whatever placement the caller's loss signal used, so the test compares like with like.
    Cross-fitting: the bucket is fitted on alternate blocks of HALF_BLOCK_S and judged on the
    others (then the halves swap; the smaller p-value doubled), so the search over rates and
    depths is not tested on the data that chose it. Null: within each PERM_BLOCK_S of the judged
    half the loss labels are exchangeable (they keep their number and any slower pattern:
    an onset, a congestion episode), so the bucket's alignment with single packets is what is
    tested. p = (1 + #permuted J >= observed) / (1 + n); when no permutation reaches the
    observed J, the normal tail of its z against the permutations stands in (they are close to
    normal), so that strong evidence is not floored at 1 / n."""
    from dataclasses import replace
    Pc = replace(P, rate_steps=max(8, P.rate_steps // 2), burst_steps=max(4, P.burst_steps // 2))
    # The observed lost units are placed again the way the null places its permuted ones (between
    # received neighbours of their stream, by unit count), so that observed and permuted data
    # differ only in which units are lost. The streams' own placement (on the sender's clock, with
    # the video frame) is better for fitting, but a null placing its units differently lets the
    # placement itself line up with a bucket: random path loss on a looped Zoom video scored
    # p = 1e-21 that way (J 0.64 held out), 0.6 placed alike.
    t_re, s_re = np.empty(len(t)), np.empty(len(t))
    _reinterpolate(t, size, lost, stream, int(stream.max()) + 1 if len(stream) else 1, t_re, s_re)
    o = np.argsort(t_re, kind="stable")
    t, size, lost, stream = t_re[o], s_re[o], lost[o], stream[o]
    # blocks that hold a few units each, however slow the flow (a voice stream at 3 packets/s)
    per_s = len(t) / max(float(t[-1] - t[0]), 1e-9)
    perm_block = max(PERM_BLOCK_S, PERM_BLOCK_UNITS / per_s)
    half_block = perm_block * max(int(np.ceil(HALF_BLOCK_S / perm_block)), 4)
    half = (np.floor(t / half_block).astype(np.int64) % 2) == 0
    best = None
    for k, use_fit in enumerate((half, ~half)):
        use_test = ~use_fit
        if np.count_nonzero(lost & use_fit) < 3 or np.count_nonzero(lost & use_test) < 3:
            continue
        grid, rates, bursts = fit_bucket(t, size, lost, recv_bps, Pc, use=use_fit)
        m, a, b = np.unravel_index(int(np.argmax(grid)), grid.shape)
        first = int(np.argmax(lost))
        j_obs = float(_bucket_j(t, size, lost, use_test, rates[a], bursts[b], m, first))
        g = np.floor(t / perm_block).astype(np.int64)
        idx = np.flatnonzero(use_test)
        # groups: runs of test units sharing a block (test units of one block are contiguous)
        starts = idx[np.r_[True, (np.diff(idx) != 1) | (np.diff(g[idx]) != 0)]]
        ends = np.r_[idx[np.r_[(np.diff(idx) != 1) | (np.diff(g[idx]) != 0), True]] + 1]
        perm = np.zeros(P.permutations)
        _permuted_j(t, size, lost, stream, int(stream.max()) + 1, use_test, starts.astype(np.int64),
                    ends.astype(np.int64), rates[a], bursts[b], m, P.permutations, seed + k, perm)
        exceed = int(np.count_nonzero(perm >= j_obs - 1e-12))
        sd = float(perm.std())
        z = (j_obs - float(perm.mean())) / sd if sd > 0 else (np.inf if j_obs > perm.mean() else 0.0)
        p = (1 + exceed) / (1 + P.permutations)
        if exceed == 0 and np.isfinite(z):
            p = min(p, float(stats.norm.sf(z)))
        elif exceed == 0:
            p = 0.0
        if best is None or p < best[1]:
            best = (j_obs, p, z)
    null = "within short stretches, which packets are lost has nothing to do with the traffic"
    if best is None:
        return TestResult(0.0, 1.0, "greater", null, len(t), {"z": 0.0})
    return TestResult(best[0], min(1.0, 2.0 * best[1]), "greater", null, len(t), {"z": best[2]})


def regularity_test(lost: np.ndarray, k: int) -> TestResult | None:
    """Under-dispersion of the losses per window of k expected packets, between the first and
    the last loss (see the module docstring); None with fewer than 5 windows."""
    idx = np.flatnonzero(lost)
    seg = lost[idx[0]:idx[-1] + 1]
    m = len(seg) // k
    if m < 5:
        return None
    x = seg[:m * k].reshape(m, k).sum(axis=1).astype(np.float64)
    p = x.sum() / (m * k)
    if p <= 0 or p >= 1:
        return None
    d = float(np.sum((x - k * p) ** 2) / (k * p * (1 - p)))
    return TestResult(statistic=d, pvalue=float(stats.chi2.cdf(d, m - 1)), alternative="less",
                      null="independent losses with one probability (Bernoulli)", n=m * k)


def queue_packets(ctx: DetectContext, i: int, d: int, rate_Bps: float, packet_bytes: float) -> float | None:
    """Packets of standing queue at the fitted rate, as the shaping detector reads a queue: the
    delay's rise (shaping.queue_estimate) counts only when the arrivals are also spaced at a cap
    that binds (shaping.binding_cap, the flow or its host's call flows together): a queue releases
    packets back to back at its rate. A rise without that spacing is the sender's timing (a stall
    of its media clock, a jitter buffer reset), not a queue; 0.0 then. None without a sender clock.
    Counted in packets of ``packet_bytes`` (for policing the received packets' 90th percentile,
    shaping.queue_unit_bytes; the shaping detector takes it over what arrives from the queue's onset)."""
    from throttledetect.detect.shaping import MIN_PACKETS, binding_cap, queue_depth_ms, queue_estimate, spacing_test
    q = queue_estimate(ctx, i, d)
    if q is None:
        return None
    depth = max(queue_depth_ms(q, ctx.alpha), 0.0) / 1e3 * rate_Bps / max(packet_bytes, 1.0)
    P = ctx.config.shaping
    pk = ctx.packets(i, d)
    # the spacing is read where the shaping detector reads it: from a queue's onset when one was seen
    n_looks = max(len(q["looks"]), 1) + 1
    onsets = [lk for lk in q["looks"] if lk["how"] == "onset" and lk["p"] * n_looks < ctx.alpha]
    start = onsets[0]["onset"] if onsets else float(pk.t[0])
    w = pk.window(start + P.window_s, pk.t[-1] + 1e-9)
    w = w if w.n >= MIN_PACKETS else pk
    # a queue shown directly: the delay rises whenever packets arrive spaced at size / rate (the
    # coupling look; a busy shared link interleaves other traffic, so the cap itself need not bind)
    if any(lk["how"] == "coupling" and lk["p"] * n_looks < ctx.alpha for lk in q["looks"]):
        return depth
    binds = w.n >= MIN_PACKETS and binding_cap(spacing_test(w, P), P)[0]
    group = ctx.host_group(i)
    if not binds and len(group) > 1:
        agg = ctx.merged_packets(group)
        binds = binding_cap(spacing_test(agg.window(start, agg.t[-1] + 1e-9), P), P)[0]
    return depth if binds else 0.0


def _re_timed(ctx: DetectContext, i: int, d: int):
    """(shaping's spacing reading, are the arrivals spaced at a binding cap with a lasting backlog,
    significantly, with sizes varying so that a cap and a clock differ): a queue re-timed them."""
    from throttledetect.detect.shaping import binding_cap, spacing_test
    S = ctx.config.shaping
    sp = spacing_test(ctx.packets(i, d), S)
    return sp, bool(sp is not None and sp["p"] < ctx.alpha and sp["size_cv"] >= 0.1
                    and sp["backlog_s"] >= S.min_backlog_s and binding_cap(sp, S)[0])


def _from_regularity(ctx: DetectContext, i: int, d: int, loss, reg) -> Detection:
    """Policing on a loss signal that is an estimate (a voice cadence's empty slots): a bucket is
    not fitted to estimated times and sizes (the estimate's errors follow the sender's load and
    would fake an alignment); the regularity of the losses alone is tested (a bucket emptied by
    a steady voice train drops at a steady share).

    Check ``arrivals_on_the_sender_clock``: a queue's full buffer drops a steady train's excess
    just as regularly, and it also re-times what it passes: packets leave size / C apart, off the
    sender's clock, so the cadence's "empty slots" may be the queue's spacing. A policer passes
    packets when they come. When the arrivals are spaced at a binding cap with a lasting backlog
    (shaping's spacing reading, significant, sizes varying so that a cap and a clock differ), the
    check fails."""
    direction = dir_name(d)
    if reg is None:
        return Detection.inconclusive(KIND, direction, "losses counted from the voice cadence are too few to "
                                      "show a bucket's regular drops", test="regularity", loss=loss.fraction)
    disp, p = reg.statistic, reg.pvalue
    cad = ctx.streams.cadence(i, d)
    sp, re_timed = _re_timed(ctx, i, d)
    return Detection(kind=KIND, direction=direction, decision="not_detected", test="regularity", statistic=disp,
                     pvalue=p, effect=None, checks={"arrivals_on_the_sender_clock": not re_timed},
                     estimates={"loss": loss.fraction, "loss_source": loss.source,
                                "dispersion": disp,
                                "cadence": cad.describe() if cad else None},
                     evidence=f"{loss.fraction:.1%} of the voice slots empty ({cad.describe() if cad else ''}); the "
                              f"losses spread more evenly than random loss would (dispersion test, p={p:.2g}): a "
                              "bucket emptied by a steady sender" + (
                                  f"; but the arrivals are spaced at {fmt_rate(sp['cap'])} by a queue that never "
                                  "empties (a queue re-times what it passes, a policer does not): the empty slots "
                                  "may be its spacing" if re_timed else ""),
                     null="independent losses with one probability")


def fit_and_test(ctx: DetectContext, loss, key) -> dict | None:
    """The two tests and the estimate on one loss signal (a flow's, or its host group's merged);
    cached by ``key``. None when there is too little to fit."""
    ck = ("police-fit", key)
    if ck in ctx._cache:
        return ctx._cache[ck]
    P = ctx.config.policing
    out = None
    lost0 = loss.lost.astype(np.bool_)
    stream0 = loss.stream.astype(np.int64) if loss.stream is not None else np.zeros(loss.n, np.int64)
    span = float(loss.t[-1] - loss.t[0]) if loss.n > 1 else 0.0
    if span > 0 and loss.n_lost >= P.min_losses and loss.n - loss.n_lost >= P.min_losses:
        size0 = loss.size.astype(np.float64)
        recv_bps = float(size0[~lost0].sum() * 8.0 / span)
        seed = int(ctx.rng("police", key).integers(1, 2**31 - 1))
        # Two clocks on which a bucket may have met the packets: their arrivals (a policer near
        # the capture point, jitter before it) and the sender's stamps carried by the least
        # delay (a policer upstream, jitter after it: the access link, Wi-Fi). Each is tested;
        # the better counts, Bonferroni-corrected for the choice.
        bases = [("arrival", loss.t)]
        if loss.t_sender is not None:
            bases.append(("sender clock", loss.t_sender))
        tried = []
        for name, tb in bases:
            o = np.argsort(tb, kind="stable")
            t, lost, size, stream = tb[o] - tb[o][0], lost0[o], size0[o], stream0[o]
            al = alignment_test(t, size, lost, stream, recv_bps, P, seed)
            tried.append((al.pvalue, name, al, t, lost, size))
        p_align, basis, al, t, lost, size = min(tried, key=lambda x: x[0])
        p_align = min(1.0, p_align * len(bases))
        j_obs, z_align = al.statistic, al.estimates["z"]
        reg = regularity_test(lost0, P.dispersion_window) if loss.source in ("rtp", "tcp", "srtcp") else None
        looks = {"alignment": p_align}
        if reg is not None:
            looks["regularity"] = reg.pvalue
        name, pmin = min(looks.items(), key=lambda kv: kv[1])
        grid, rates, bursts = fit_bucket(t, size, lost, recv_bps, P, fine=True)
        m, a, b = np.unravel_index(int(np.argmax(grid)), grid.shape)
        j_best = float(grid[m, a, b])
        fits = np.flatnonzero(grid[m].max(axis=1) >= j_best - J_TOLERANCE)
        r_lo, r_hi = float(rates[fits.min()] * 8), float(rates[fits.max()] * 8)
        passed = passed_rate_bps(t, size, lost)
        flows = [key[1]] if key[0] == "flow" else list(key[1])
        arrived = [ctx.streams.packets(j, ctx.toward_local(j)) for j in flows]
        t_arr = np.concatenate([p.t for p in arrived])
        o = np.argsort(t_arr, kind="stable")
        between = passed_between_losses_bps(loss.t, lost0, t_arr[o], np.concatenate([p.size for p in arrived])[o])
        # What passed between the losses of each talk spurt is the rate to a packet while the
        # sender offers more than it (the bucket is empty at each loss); it reads low only where
        # the sender's own dips let the bucket refill between losses (VBR video under a deep
        # bucket: the Teams trace's 0.7x, 250 ms bucket reads -11 %). The best window, used when
        # there are no such spurts, spans a talker's pauses (0.29 of the rate on the looped LINE
        # call) and is high by depth / window on a slow flow (+17 % on WhatsApp's audio): over the
        # validation's policers (3 seeds of each) the median error is 2.6 % against 11 %.
        readings = {k: v for k, v in (("between losses", between), ("best window", passed)) if v is not None and v > 0}
        source = next(iter(readings), "fit")
        out = {"rate_read": source, "test": name, "p": min(1.0, pmin * len(looks)), "j_obs": j_obs, "j_best": j_best,
               "p_align": p_align, "z_align": z_align, "reg": reg, "clock": basis,
               "rate": readings.get(source, float(rates[a] * 8)),
               "rate_fit": float(rates[a] * 8),
               "burst": float(bursts[b]), "r_lo": r_lo, "r_hi": r_hi,
               "identifiable": r_hi / r_lo - 1.0 <= 0.10 and fits.max() < len(rates) - 1,
               "mode": int(m), "first_loss_t": float(loss.t[int(np.argmax(lost0))]), "recv_bps": recv_bps,
               "unit_size": queue_unit_bytes(size0[~lost0]), "loss": loss.fraction, "lost": loss.n_lost, "n": loss.n}
    ctx._cache[ck] = out
    return out


def queue_at_losses(ctx: DetectContext, i: int, d: int, loss, rate_Bps: float, packet_bytes: float) -> dict | None:
    """Do the losses come when a queue stands full? A FIFO drops only when it is full (a shaper's
    tail drops; a congested link's, shared with others' traffic), so the frames that met the path
    just before each loss waited longest; a policer keeps no queue, and its losses meet the delay
    of any other moment. The delay is each frame's least (shaping's delay series: the sender's
    clock, pacing and skew removed), so a paced frame's own spread does not count. H0: the
    delays of the frames just before losses (each frame once) are no higher than the others'
    (Mann-Whitney, one-sided). Effect: their median over all frames', in ms and in packets of
    ``packet_bytes`` at ``rate_Bps`` (for policing the fitted rate and the received packets' 90th
    percentile, whose check asks ``min_queue_packets`` as for the standing queue; for dropping the
    flow's own rate and mean packet, whose check asks one). None without a sender clock or with
    fewer than MIN_LOSS_FRAMES such frames."""
    from throttledetect.detect.shaping import _delay_series
    best = _delay_series(ctx, i, d)
    if best is None or best[0].n < 20:
        return None
    dl = best[0]
    j = np.searchsorted(dl.t, loss.t[loss.lost.astype(np.bool_)], side="right") - 1
    j = np.unique(j[j >= 0])
    if len(j) < MIN_LOSS_FRAMES or len(j) > dl.n - MIN_LOSS_FRAMES:
        return None
    at = dl.ms[j]
    rest = np.delete(dl.ms, j)
    r = stats.mannwhitneyu(at, rest, alternative="greater")
    rise = float(np.median(at) - np.median(dl.ms))
    return {"p": float(r.pvalue), "rise_ms": rise, "packets": rise / 1e3 * rate_Bps / max(packet_bytes, 1.0),
            "frames": int(len(j))}


def detect(ctx: DetectContext, i: int) -> list:
    if int(ctx.ft.proto[i]) == 6:
        from throttledetect.detect import policing_tcp
        return policing_tcp.detect(ctx, i)
    from throttledetect.detect.dropping import unless_uncovered
    return unless_uncovered(ctx, i, ctx.toward_local(i), _detect_udp(ctx, i))


def _detect_udp(ctx: DetectContext, i: int) -> list:
    d = ctx.toward_local(i)
    direction = dir_name(d)
    P = ctx.config.policing
    loss = ctx.streams.loss(i, d)
    if loss is None:
        from throttledetect.detect.dropping import no_signal
        return [no_signal(KIND, ctx, i, d, "bucket")]
    nl = loss.n_lost
    if nl == 0:
        return [Detection.nothing_to_find(KIND, direction, "no loss to explain", test="bucket")]
    if nl < P.min_losses or loss.n - nl < P.min_losses:
        return [Detection.nothing_to_find(KIND, direction, f"only {nl} lost packets: too few to fit a bucket",
                                          test="bucket", lost=nl)]
    if loss.source == "cadence":
        reg = regularity_test(loss.lost.astype(np.bool_), P.dispersion_window)
        return [_from_regularity(ctx, i, d, loss, reg)]
    scopes = [("flow", [i], fit_and_test(ctx, loss, ("flow", i)))]
    # the host's call flows that lost packets too (a flow that lost nothing met no empty bucket: a
    # policer on another flow alone; pooled, it would raise the rate by its own)
    group = [j for j in ctx.host_group(i) if ctx.streams.loss_source(j, ctx.toward_local(j)) in ("rtp", "tcp", "srtcp")
             and ctx.streams.loss(j, ctx.toward_local(j)).fraction >= GROUP_MIN_LOSS]
    if len(group) > 1:
        # one policer on the path to this host meters the call's flows together: each alone shows
        # only its share of the bucket (the tests on the merged signal count once: family_key)
        merged = merge_loss([ctx.streams.loss(j, ctx.toward_local(j)) for j in group])
        scopes.append(("host", group, fit_and_test(ctx, merged, ("host", tuple(group)))))
    scopes = [s for s in scopes if s[2] is not None]
    if not scopes:
        return [Detection.nothing_to_find(KIND, direction, "too few losses and passes to fit a bucket", test="bucket")]
    # The scope whose bucket explains the losses better (J): the host's unless the flow's own is
    # better by more than the tolerance of a fit (as good, the host's bucket explains the other
    # flows' losses too, and a shared policer's flows then all report its rate). Not the smaller
    # p-value: both are far below any alpha when there is a policer, and the merged signal, having
    # more packets, wins on p whatever it explains. A policer per flow (audio and video metered
    # apart, at their own rates) was fitted over both flows, the audio at the video's rate (290
    # kbit/s for a 40 kbit/s policer: J 0.42 against the flow's own 0.69). Bonferroni over the
    # scopes covers any rule of choice.
    scope, flows, f = scopes[-1]
    if scope == "host" and scopes[0][2]["j_best"] > f["j_best"] + J_TOLERANCE:
        scope, flows, f = scopes[0]
    p = min(1.0, f["p"] * len(scopes))
    q_pk = queue_packets(ctx, i, d, f["rate"] / 8.0, f["unit_size"])
    checks = {}
    if q_pk is not None:
        checks["no_standing_queue"] = q_pk < P.min_queue_packets
    full = queue_at_losses(ctx, i, d, loss, f["rate"] / 8.0, f["unit_size"])
    if full is not None:
        checks["losses_without_a_full_queue"] = not (full["p"] < ctx.alpha and full["packets"] >= P.min_queue_packets)
    sp = None
    if loss.source == "srtcp":
        # RTCP has no sender clock to show a queue by its delay; a queue still shows in the arrivals
        # it re-times (size / rate apart), as on a voice cadence (_from_regularity): its tail drops
        # fit a bucket as well as a policer's drops do (a shaper's, on Snapchat's looped call)
        sp, re_timed = _re_timed(ctx, i, d)
        checks["arrivals_on_the_sender_clock"] = not re_timed
    est = {"rate_bps": f["rate"], "rate_fit_bps": f["rate_fit"], "burst_bytes": f["burst"],
           "rate_range_bps": [f["r_lo"], f["r_hi"]],
           "rate_identifiable": bool(f["identifiable"]), "loss": loss.fraction, "lost": nl, "expected": loss.n,
           "loss_source": loss.source, "j_held_out": f["j_obs"], "z_alignment": f["z_align"],
           "p_alignment": f["p_align"], "bucket_start": "full" if f["mode"] == 0 else "empty at the first loss",
           "received_bps": f["recv_bps"], "scope": scope, "bucket_clock": f["clock"], "rate_read": f["rate_read"]}
    if scope == "host":
        est["flows"] = flows
    if f["reg"] is not None:
        est.update(dispersion=f["reg"].statistic, p_regularity=f["reg"].pvalue)
    if f["mode"] == 1:
        est["onset_s"] = f["first_loss_t"]
    if q_pk is not None:
        est["queue_packets"] = q_pk
    if full is not None:
        est.update(delay_rise_at_losses_ms=full["rise_ms"], p_delay_at_losses=full["p"],
                   queue_packets_at_losses=full["packets"])
    why = ("losses line up with the packets' own load (cross-fitted permutation test)" if f["test"] == "alignment"
           else "losses spread more evenly than random loss would (dispersion test)")
    # what passed between losses is a lower bound of the rate (tight while the sender offers more
    # than it): with a fit that bounds the rate from below only, the larger of the two bounds is said
    lower = max(f["r_lo"], f["rate"]) if f["rate_read"] == "between losses" else f["r_lo"]
    rate_txt = fmt_rate(f["rate"]) if f["identifiable"] else f"at least {fmt_rate(lower)}"
    where = "" if scope == "flow" else f" over the {len(flows)} call flows from this host together ({f['loss']:.1%} lost)"
    ev = (f"{loss.fraction:.1%} of packets lost; a token bucket of {rate_txt} and {f['burst']:.0f} B "
          f"({est['bucket_start']}){where} explains them (J {f['j_best']:.2f}); {why}, p={p:.2g}")
    if q_pk is not None:
        ev += f"; the delay shows a queue of {q_pk:.1f} packets at that rate"
    if full is not None and not checks["losses_without_a_full_queue"]:
        ev += (f"; but the frames just before the losses waited {full['rise_ms']:.0f} ms longer than the median "
               f"(p={full['p']:.2g}, {full['packets']:.1f} packets at that rate): the losses come when a queue is "
               "full, as a shaper's or a congested link's tail drops do")
    if sp is not None and not checks["arrivals_on_the_sender_clock"]:
        ev += (f"; but the arrivals are spaced at {fmt_rate(sp['cap'])} by a queue that never empties (a shaper's "
               "tail drops fit a bucket as well)")
    if not f["identifiable"]:
        est["rate_note"] = "the bucket refills between bursts: the rate is bounded from below only"
    return [Detection(kind=KIND, direction=direction, decision="not_detected", test=f["test"], statistic=f["j_obs"],
                      pvalue=p, effect=f["j_best"], effect_unit="Youden's J of the bucket's explanation of the losses",
                      checks=checks, estimates=est, evidence=ev,
                      family_key=None if scope == "flow" else f"police-host:{tuple(flows)}",
                      null="losses unrelated to a token bucket on the traffic it meters")]


DETECTOR = Detector(name="policing", kind=KIND, params="policing", detect=detect, roles=('media',))
