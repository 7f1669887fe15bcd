"""Selective dropping: does a call flow lose packets that comparable flows of the capture do not?

Loss is seen where packets arrive: for the direction toward the capturing host only (what the
host sends is captured before the network). Loss signals: missing RTP sequence numbers
(expected minus received, RFC 3550 A.3; DTX pauses lose nothing), or holes in a TCP
direction's sequence space. Encrypted UDP without visible RTP has no loss signal: the test is
inconclusive and only gaps and rates are reported.

Tests, for one arriving direction of a flow ("target"):

1. Target vs controls (``fisher``). Controls are other flows of the capture active at the same
   time with a loss signal, not of the target's label (the same app's chat first, then other
   traffic). H0: the target's loss proportion is not larger than the controls' pooled one.
   Fisher's exact test, one-sided (scipy.stats.fisher_exact). Effect: loss-rate difference
   (target - controls), also reported as a ratio.
2. Shared bottleneck (``correlation``), as WeHeY separates a common bottleneck from per-flow
   throttling: H0: the target's and a control's losses are unrelated in time. Two statistics
   per control: Spearman's rho of the per-bin loss fractions (one-sided, rho > 0), and the
   number of target losses within COINCIDENCE_S of a control loss, whose p-value comes from
   circular time shifts of the control's loss times (a permutation that keeps each process's
   own burstiness). Either one significant -> the losses are shared: congestion, not selective.
3. The same flow before a change point (``onset.loss_onset``): when no control has a loss
   signal, H0: the loss proportion after the onset is not larger than before (Fisher's exact).
   With neither a control nor an onset (RTP only): the pattern (``_pattern_only``): H0: the loss
   is at most P0_PATH (exact binomial); "detected" when rejected, at least MIN_LOSS_DIFF, the
   losses independent (test 4) and not preceded by a raised one-way delay (Mann-Whitney, H0: the
   delay before losses is not larger): random dropping rather than congestion; the evidence
   says selectivity is unconfirmed. The same pattern test backs test 1 when the controls lose at
   most P0_PATH but are too small for Fisher's test to reach alpha (p = twice the smaller).
4. Independence of the target's losses (``runs``): Wald-Wolfowitz runs test on the lost/received
   sequence of each RTP stream, summed over the streams of the direction. H0: losses are
   independent of each other (Bernoulli; gaps between losses are geometric). Few runs ->
   clustered (bursts: congestion or a policer's bucket) when also the mean loss burst is at
   least MIN_BURST_RATIO times the independent one (``clustered_losses``); many runs -> regular
   (a policer on a constant-rate stream drops every k-th packet). Reported, and used to refuse
   "selective random dropping" when only the flow's own past is there to compare with.

Decision: "detected" when test 1 (or, without controls, test 3 with unclustered losses) rejects
at alpha, no control shares the losses, the effect is at least MIN_LOSS_DIFF with the loss at
least MIN_LOSS_RATIO times the control's, and no queue precedes the losses (the one-way delay of
the packet before each loss is not raised by QUEUE_BEFORE_LOSS_MS or more, Mann-Whitney at
alpha): a queue that overflows is congestion on the call's own path, or a shaper, not dropping.
The floors are set by reasoning and checked by the simulation sweep of tests/detect/test_registry.py
(run_sweep): healthy paths differ by well under a percentage point of loss, and a codec notices
about 2 %; a control on another path may lose a little more or less than the call without
anything selective going on. The floor lets a 2 % drop on a minute-long call through (realised
loss 2.0 +- 0.5 %); below it (1 % selective loss) the test reports the difference, not a claim.
"""
from __future__ import annotations

import numpy as np
from scipy import stats

from throttledetect.detect.common import DetectContext, LossUnits, clean, dir_name, fmt_p
from throttledetect.detect.onset import loss_onset, rate_onset
from throttledetect.detect.result import Detection

KIND = "dropping"

MIN_UNITS = 200            # expected packets in the target direction (a 60 s call has ~3000 per stream)
MIN_CONTROL_UNITS = 100    # packets of a control flow during the target's life
MIN_LOSS_DIFF = 0.015      # loss-rate difference target - controls that counts (1.5 percentage points: a
#                            2 % drop on a minute of 50 pps audio, 2.0 +- 0.5 % realised, clears it 99 % of the time)
MIN_LOSS_RATIO = 3.0       # and the target loses at least 3x what the controls do
SUSPECT_LOSS = 0.02        # a loss this high, left unexplained, makes the flow "inconclusive" not "none"
P0_PATH = 0.005            # without controls, H0: loss <= what a healthy path loses (ITU-T Y.1541 classes 0-4
#                            allow 0.1 %; 0.5 % leaves room for busy access links and Wi-Fi)
QUEUE_BEFORE_LOSS_MS = 5.0  # delay raised this much before losses = a queue overflowing
MIN_AFTER_ONSET_S = 10.0   # a loss onset is a throttle switched on only if it lasts (not a last-second burst)
SUSPECT_GAP_LOSS = 0.05    # without a loss signal: gaps that would hide this many packets of a paced stream
PAUSE_GAPS = 10            # a gap longer than this many median gaps is a sender pause, not loss
CORR_BIN_S = 0.5           # bins of the loss-fraction series for the Spearman correlation
COINCIDENCE_S = 0.1        # a target loss this close to a control loss "coincides"
N_SHIFTS = 199             # circular shifts for the coincidence test
MIN_SHIFT_S = 2.0          # shifts shorter than this could keep real coincidences
MIN_SHARED_LOSSES = 5      # each flow needs this many losses before their timing is compared
MIN_SHARED_SHARE = 0.3     # losses "shared" when coincidences beyond chance are >= 30 % of the target's
MIN_SHARED_RHO = 0.3       # or the per-bin loss fractions correlate at least this much
MIN_BURST_RATIO = 1.15     # losses "clustered" when their mean burst is this much longer than independent loss's


def detect(ctx: DetectContext, i: int) -> list[Detection]:
    return [detect_direction(ctx, i, d) for d in ctx.inbound(i)]


# ----------------------------------------------------------------------------------------- tests

def runs_test(lost) -> dict | None:
    """Wald-Wolfowitz runs test. H0: the lost/received indicators are independent (exchangeable).

    ``lost``: one boolean array in sending order, or a list of them (one per RTP stream of a
    direction): then runs, their null means and variances are summed over the streams (each
    stream's order is its own sequence; merging streams by interpolated times would order lost
    packets by where they were placed, not where they were sent). Returns z (negative: fewer
    runs than expected = clustered), p_clustered (one-sided, few runs), p_regular (one-sided,
    many runs), mean loss-burst length. None with fewer than 5 losses."""
    parts = [np.asarray(x, dtype=bool) for x in (lost if isinstance(lost, (list, tuple)) else [lost])]
    runs = mu = var = 0.0
    n1_all = n_all = starts = 0
    for x in parts:
        n = len(x)
        n1 = int(np.count_nonzero(x))
        n0 = n - n1
        n1_all += n1
        n_all += n
        starts += int(np.count_nonzero(x & ~np.r_[False, x[:-1]]))
        if n1 < 1 or n0 < 1 or n < 2:
            continue
        runs += 1 + int(np.count_nonzero(x[1:] != x[:-1]))
        mu += 2.0 * n1 * n0 / n + 1.0
        var += 2.0 * n1 * n0 * (2.0 * n1 * n0 - n) / (n * n * (n - 1.0))
    if n1_all < 5 or n_all - n1_all < 5:
        return None
    z = (runs - mu) / np.sqrt(var) if var > 0 else 0.0
    return {"runs": int(runs), "runs_expected": mu, "z": float(z), "p_clustered": float(stats.norm.cdf(z)),
            "p_regular": float(stats.norm.sf(z)), "mean_burst": n1_all / max(starts, 1),
            "mean_burst_expected": 1.0 / (1.0 - n1_all / n_all)}


def clustered_losses(runs: dict | None, alpha: float) -> bool:
    """Losses come in bursts: the runs test rejects independence (p_clustered < alpha) and the
    mean loss burst is at least MIN_BURST_RATIO times what independent loss gives. The effect
    floor keeps a chance rejection (alpha of random drops) from passing for congestion, whose
    bursts are far longer (a Gilbert-Elliott link: 1.3-1.7x, with queueing delay before them)."""
    return bool(runs is not None and runs["p_clustered"] < alpha
                and runs["mean_burst"] >= MIN_BURST_RATIO * runs["mean_burst_expected"])


def stream_losses(ctx: DetectContext, i: int, d: int, t0: float = -np.inf) -> list:
    """The lost flags of each RTP stream of a direction in its own sequence order (units expected
    from t0 on), or the one TCP loss signal: the strata of runs_test."""
    streams = [s for s in ctx.rtp(i, d) if s.n >= 3]
    if streams:
        return [u.lost for u in (s.loss_units().window(t0, np.inf) for s in streams) if u.n]
    lu = ctx.loss(i, d)
    return [lu.window(t0, np.inf).lost] if lu is not None else []


def coincidence_test(t_target: np.ndarray, t_control: np.ndarray, t0: float, t1: float, *,
                     window: float = COINCIDENCE_S, n_shifts: int = N_SHIFTS, rng=None) -> tuple[int, float, float]:
    """Target losses within `window` s of a control loss, against circular shifts of the control.

    H0: the two loss processes are independent in time (then any shift of one is as likely as the
    observed alignment). Returns (observed count, mean count under shifts, permutation p-value).
    """
    tt = np.sort(t_target[(t_target >= t0) & (t_target < t1)])
    tc = np.sort(t_control[(t_control >= t0) & (t_control < t1)])
    span = t1 - t0
    if len(tt) == 0 or len(tc) == 0 or span <= 2 * MIN_SHIFT_S:
        return 0, 0.0, 1.0

    def count(tc_sorted):
        j = np.searchsorted(tc_sorted, tt)
        left = np.abs(tt - tc_sorted[np.clip(j - 1, 0, len(tc_sorted) - 1)])
        right = np.abs(tc_sorted[np.clip(j, 0, len(tc_sorted) - 1)] - tt)
        return int(np.count_nonzero(np.minimum(left, right) <= window))

    obs = count(tc)
    rng = rng or np.random.default_rng(0)
    shifts = rng.uniform(MIN_SHIFT_S, span - MIN_SHIFT_S, n_shifts)
    null = np.empty(n_shifts)
    for k, s in enumerate(shifts):          # n_shifts small sorts, not per packet
        null[k] = count(np.sort(t0 + (tc - t0 + s) % span))
    p = (1 + np.count_nonzero(null >= obs)) / (1 + n_shifts)
    return obs, float(null.mean()), float(p)


def spearman_bins(a: LossUnits, b: LossUnits, t0: float, t1: float, bin_s: float = CORR_BIN_S, *,
                  n_shifts: int = N_SHIFTS, rng=None):
    """Spearman's rho of two flows' per-bin loss fractions, with a one-sided (rho > 0) p-value from
    circular shifts of one series (shifts of at least MIN_SHIFT_S keep each series' own
    autocorrelation, which the t-approximation would ignore; ties at zero loss are common).
    H0: the two flows' loss fractions over time are unrelated. Returns (rho, p) or (None, None)."""
    nb = int(np.floor((t1 - t0) / bin_s))
    if nb < 10:
        return None, None
    edges = t0 + bin_s * np.arange(nb + 1)
    ua, la = a.binned(edges)
    ub, lb = b.binned(edges)
    ok = (ua > 0) & (ub > 0)
    if np.count_nonzero(ok) < 10:
        return None, None
    fa = np.where(ua > 0, la / np.maximum(ua, 1), np.nan)
    fb = np.where(ub > 0, lb / np.maximum(ub, 1), np.nan)
    if np.ptp(fa[ok]) == 0 or np.ptp(fb[ok]) == 0:
        return None, None
    rho = float(stats.spearmanr(fa[ok], fb[ok]).statistic)
    rng = rng or np.random.default_rng(0)
    lo = max(1, int(np.ceil(MIN_SHIFT_S / bin_s)))
    if nb - 2 * lo < 1:
        return rho, None
    null = []
    for sh in rng.integers(lo, nb - lo + 1, n_shifts):     # n_shifts small rank correlations
        fs = np.roll(fb, sh)
        m = ok & np.isfinite(fs) & (ua > 0)
        m = np.isfinite(fa) & np.isfinite(fs)
        if np.count_nonzero(m) < 10 or np.ptp(fs[m]) == 0 or np.ptp(fa[m]) == 0:
            null.append(0.0)
            continue
        null.append(stats.spearmanr(fa[m], fs[m]).statistic)
    null = np.nan_to_num(np.asarray(null))
    return rho, float((1 + np.count_nonzero(null >= rho - 1e-12)) / (1 + len(null)))


def gap_summary(t: np.ndarray) -> dict:
    """Arrival gaps of a direction without a loss signal: the median gap, long gaps, and the share
    of packets missing if the stream were paced at its median gap (indicative only).

    Inferred loss = 1 - received / expected, expected = active time / median gap, where the
    active time sums the gaps up to PAUSE_GAPS medians (longer ones are sender pauses, DTX).
    Jitter moves packets but keeps the sum of gaps, so it does not inflate the estimate; a
    stream that is not paced (video, variable rate) makes it meaningless."""
    if len(t) < 3:
        return {}
    iat = np.diff(np.sort(t))
    med = float(np.median(iat))
    if med <= 0:
        return {"median_gap_ms": 0.0}
    use = iat <= PAUSE_GAPS * med
    expected = float(iat[use].sum()) / med
    received = int(np.count_nonzero(use))
    return {"median_gap_ms": med * 1e3, "gaps_over_3x": int(np.count_nonzero(iat > 3 * med)),
            "longest_gap_s": float(iat.max()),
            "gap_inferred_loss": float(max(0.0, 1.0 - received / expected)) if expected > 0 else 0.0}


# ----------------------------------------------------------------------------------------- detector

def detect_direction(ctx: DetectContext, i: int, d: int) -> Detection:
    direction = dir_name(d)
    target = ctx.loss(i, d)
    if target is None:
        pk = ctx.packets(i, d)
        est = gap_summary(pk.t)
        cp, _ = rate_onset(pk, rng=ctx.rng("drop-rate", i, d)) if pk.n >= 40 else (None, 1.0)
        if cp is not None and cp.pvalue < ctx.alpha:
            est.update(rate_onset_s=cp.onset_s, rate_before_bps=cp.before, rate_after_bps=cp.after,
                       rate_change_pvalue=cp.pvalue)
        if est.get("gap_inferred_loss", 0.0) >= SUSPECT_GAP_LOSS:
            est["suspect"] = True
        return Detection.inconclusive(KIND, direction, "no loss signal: no RTP sequence numbers or TCP sequence "
                                      "space in this direction (encrypted UDP); gaps and rate reported only",
                                      **clean(est))
    if target.n < MIN_UNITS:
        return Detection.inconclusive(KIND, direction, f"too few packets ({target.n} expected, need {MIN_UNITS})",
                                      loss_rate=target.fraction, expected=target.n)
    t0, t1 = float(target.t[0]), float(target.t[-1])
    est = {"loss_rate": target.fraction, "lost": target.n_lost, "expected": target.n, "loss_source": target.source}
    runs = runs_test(stream_losses(ctx, i, d))
    if runs:
        est.update(runs_z=runs["z"], runs_p_clustered=runs["p_clustered"], mean_loss_burst=runs["mean_burst"])
    cp = loss_onset(target, rng=ctx.rng("drop-onset", i, d))
    onset = cp if (cp is not None and cp.pvalue < ctx.alpha) else None
    if onset is not None:
        est.update(onset_s=onset.onset_s, loss_before=onset.before, loss_after=onset.after,
                   onset_pvalue=onset.pvalue)

    # controls with a loss signal during the target's life
    ctrl_units, ctrl_ids, shared = [], [], []
    for j in ctx.controls(i):
        lu = ctx.loss(j, ctx.inbound(j)[0])
        if lu is None:
            continue
        lu = lu.window(t0, t1 + 1e-9)
        if lu.n < MIN_CONTROL_UNITS:
            continue
        ctrl_units.append(lu)
        ctrl_ids.append(j)
        if target.n_lost >= MIN_SHARED_LOSSES and lu.n_lost >= MIN_SHARED_LOSSES:
            rho, p_rho = spearman_bins(target, lu, t0, t1, rng=ctx.rng("drop-rho", i, d, j))
            obs, exp_, p_co = coincidence_test(target.t[target.lost], lu.t[lu.lost], t0, t1,
                                               rng=ctx.rng("drop-co", i, d, j))
            share = (obs - exp_) / target.n_lost
            if (p_rho is not None and p_rho < ctx.alpha and rho >= MIN_SHARED_RHO) or \
                    (p_co < ctx.alpha and share >= MIN_SHARED_SHARE):
                shared.append((j, rho, p_rho, obs, exp_, p_co))

    if not target.n_lost and not ctrl_units:
        return Detection(kind=KIND, direction=direction, decision="not_detected", statistic=0.0, pvalue=1.0,
                         effect=0.0, estimates=clean(est),
                         evidence=f"no packet lost of {target.n} expected ({target.source})")

    if ctrl_units:
        pval, diff, ratio, p_c, c_n, odds, tgt = _vs_controls(target, ctrl_units)
        window = ""
        if onset is not None and onset.after > onset.before:
            # the dropping may start mid-call: compare the part after the onset as well (two looks)
            after = target.window(onset.onset_s, np.inf)
            ctrl_after = [u.window(onset.onset_s, np.inf) for u in ctrl_units]
            ctrl_after = [u for u in ctrl_after if u.n]
            if after.n >= MIN_UNITS // 2 and sum(u.n for u in ctrl_after) >= MIN_CONTROL_UNITS // 2:
                alt = _vs_controls(after, ctrl_after)
                if alt[0] < pval:
                    pval, diff, ratio, p_c, c_n, odds, tgt = alt
                    window = f" after {onset.onset_s:.1f} s"
            pval = min(1.0, 2.0 * pval)
        est.update(control_loss_rate=p_c, control_expected=c_n, controls=ctrl_ids, loss_ratio=ratio, odds_ratio=odds,
                   compared=("after the onset" if window else "whole flow"))
        what = (f"{tgt.fraction:.1%} of {tgt.n} packets lost{window} ({target.source}) vs {p_c:.2%} in "
                f"{len(ctrl_ids)} control flow(s) ({fisher_note(pval)})")
        if shared:
            j, rho, p_rho, obs, exp_, p_co = min(shared, key=lambda s: s[5])
            est.update(shared_with=[s[0] for s in shared], coincident_losses=obs, coincident_expected=exp_,
                       coincidence_pvalue=p_co, loss_spearman=rho, loss_spearman_pvalue=p_rho)
            return Detection(kind=KIND, direction=direction, decision="not_detected", statistic=float(diff),
                             pvalue=pval, effect=float(diff), estimates=clean(est),
                             evidence=what + f"; losses coincide with those of flow {j} ({obs} within "
                             f"{COINCIDENCE_S * 1e3:.0f} ms vs {exp_:.1f} by chance, {fmt_p(p_co)}): a shared "
                             f"bottleneck (congestion), not selective",
                             reason="losses shared with a control flow")
        detected = pval < ctx.alpha and diff >= MIN_LOSS_DIFF and ratio >= MIN_LOSS_RATIO
        reason = "" if detected or pval >= ctx.alpha else \
            f"difference below the effect floor ({MIN_LOSS_DIFF:.1%} and x{MIN_LOSS_RATIO:g})"
        queue = _queue_check(ctx, i, d)
        if queue is not None:
            est.update(delay_before_loss_pvalue=queue[0], delay_before_loss_ms=queue[1])
            if detected and queue[0] < ctx.alpha and queue[1] >= QUEUE_BEFORE_LOSS_MS:
                detected = False
                reason = (f"the one-way delay was {queue[1]:.0f} ms higher just before losses ({fmt_p(queue[0])}): a "
                          "queue overflowing (congestion on the call's path, or a shaper), not dropping")
        if p_c <= P0_PATH and diff >= MIN_LOSS_DIFF and not reason.startswith("the one-way delay"):
            # The controls lose nothing to speak of, yet may be too small to make the difference
            # significant on their own: the pattern of the target's losses is a second look
            # (H0: loss at most a healthy path's), and the two looks share alpha (Bonferroni).
            pattern = _pattern_only(ctx, i, d, target, runs)
            est.update(pattern["estimates"])
            p_pattern = pattern["pvalue"] if pattern["decision"] == "detected" else 1.0
            p2 = min(1.0, 2.0 * min(pval, p_pattern))
            est.update(fisher_pvalue=pval, looks=2)
            if p_pattern < pval and p2 < ctx.alpha:
                est["selectivity"] = "controls lose nothing, but are too small to confirm it alone"
                return Detection(kind=KIND, direction=direction, decision="detected", statistic=float(diff),
                                 pvalue=p2, effect=float(diff), estimates=clean(est),
                                 evidence=what + f"; more than a healthy path's {P0_PATH:.1%} (binomial "
                                 f"{fmt_p(pattern['pvalue'])}), losses independent of each other and without "
                                 "queueing before them: random dropping")
            pval = p2
            detected = detected and pval < ctx.alpha
        return Detection(kind=KIND, direction=direction, decision="detected" if detected else "not_detected",
                         statistic=float(diff), pvalue=pval, effect=float(diff), estimates=clean(est),
                         evidence=what + (f"; losses look {_pattern(runs)}" if runs else ""),
                         reason=reason)

    # no control with a loss signal: the same flow before its onset
    suspect = target.fraction >= SUSPECT_LOSS
    if onset is not None and onset.after > onset.before and t1 - onset.onset_s >= MIN_AFTER_ONSET_S:
        k = int(np.searchsorted(target.t, onset.onset_s))
        b, a = target.lost[:k], target.lost[k:]
        table = [[int(a.sum()), int(len(a) - a.sum())], [int(b.sum()), int(len(b) - b.sum())]]
        pval = float(stats.fisher_exact(table, alternative="greater").pvalue)
        diff = float(a.mean() - b.mean())
        ratio = float(a.mean() / max(b.mean(), 1.0 / max(len(b), 1)))
        runs_after = runs_test(stream_losses(ctx, i, d, onset.onset_s))
        clustered = clustered_losses(runs_after, ctx.alpha)
        est.update(loss_ratio=ratio, control="the same flow before the onset")
        what = (f"loss rose from {b.mean():.1%} to {a.mean():.1%} at {onset.onset_s:.1f} s "
                f"(Fisher {fmt_p(pval)}); no other flow with a loss signal to compare with")
        queue = _queue_check(ctx, i, d)
        queued = queue is not None and queue[0] < ctx.alpha and queue[1] >= QUEUE_BEFORE_LOSS_MS
        if queue is not None:
            est.update(delay_before_loss_pvalue=queue[0], delay_before_loss_ms=queue[1])
        if clustered or queued:
            est["suspect"] = suspect
            sign = (f"losses come in bursts (runs test {fmt_p(runs_after['p_clustered'])}), as congestion or a "
                    "policer makes them") if clustered else \
                f"the delay was {queue[1]:.0f} ms higher before losses (a queue overflowing)"
            return Detection(kind=KIND, direction=direction, decision="inconclusive", statistic=diff, pvalue=pval,
                             effect=diff, estimates=clean(est), evidence=what + "; " + sign,
                             reason="loss increase with signs of congestion and no control flow: congestion cannot "
                             "be ruled out")
        detected = pval < ctx.alpha and diff >= MIN_LOSS_DIFF and ratio >= MIN_LOSS_RATIO
        return Detection(kind=KIND, direction=direction, decision="detected" if detected else "not_detected",
                         statistic=diff, pvalue=pval, effect=diff, estimates=clean(est),
                         evidence=what + "; losses independent of each other (random dropping)")
    # no control and no onset: the pattern of the losses (independent, no queue before them)
    pattern = _pattern_only(ctx, i, d, target, runs)
    est.update(pattern["estimates"])
    if pattern["decision"] == "detected":
        return Detection(kind=KIND, direction=direction, decision="detected", statistic=pattern["diff"],
                         pvalue=pattern["pvalue"], effect=pattern["diff"], estimates=clean(est),
                         evidence=pattern["evidence"],
                         reason="no control flow: the pattern is random dropping's, selectivity unconfirmed")
    est["suspect"] = suspect
    return Detection.inconclusive(
        KIND, direction, "no control flow with a loss signal overlaps this one and its loss does not change over "
        f"time: {target.fraction:.1%} loss cannot be told apart from path loss" + pattern["why"], **clean(est))


def queue_before_losses(s, lost_seq: np.ndarray) -> tuple[float, float] | None:
    """Is the one-way delay raised just before losses (a queue filling: congestion, a shaper)?

    H0: the delay of the last packet received before each loss is not larger than the delay of
    the other packets (Mann-Whitney U, one-sided). Returns (p, median difference in ms) or None
    without a clock or with too few losses."""
    d = s.delay_ms
    if d is None or len(lost_seq) < 5:
        return None
    o = np.argsort(s.seq, kind="stable")
    seq, dd = s.seq[o], d[o]
    k = np.searchsorted(seq, lost_seq) - 1          # the packet received before the gap
    k = np.unique(k[k >= 0])
    rest = np.ones(len(seq), bool)
    rest[k] = False
    if len(k) < 5 or rest.sum() < 5:
        return None
    p = float(stats.mannwhitneyu(dd[k], dd[rest], alternative="greater").pvalue)
    return p, float(np.median(dd[k]) - np.median(dd[rest]))


def _queue_check(ctx: DetectContext, i: int, d: int):
    """queue_before_losses on the busiest RTP stream of the direction (None without RTP/clock)."""
    streams = [s for s in ctx.rtp(i, d) if s.n >= 3]
    if not streams:
        return None
    s = streams[0]
    lu = s.loss_units()
    return queue_before_losses(s, np.flatnonzero(lu.lost) + int(np.min(s.seq)))


def _pattern_only(ctx: DetectContext, i: int, d: int, target: LossUnits, runs: dict | None) -> dict:
    """Without any control: random dropping or path trouble? H0: the loss proportion is at most
    P0_PATH, what a healthy path loses (exact binomial test, one-sided). "detected" when it is
    rejected, the loss is at least MIN_LOSS_DIFF, the losses are independent of each other (runs
    test does not find bursts) and no queue precedes them (queue_before_losses): the signs of
    random dropping, against congestion (bursts after the delay rises). Selectivity itself is
    unconfirmed without a control, and the evidence says so."""
    out = {"decision": "inconclusive", "estimates": {}, "why": "", "pvalue": None, "diff": None, "evidence": ""}
    if target.source != "rtp":
        return out
    p = float(stats.binomtest(target.n_lost, target.n, P0_PATH, alternative="greater").pvalue)
    diff = target.fraction - P0_PATH
    out["estimates"].update(path_loss_pvalue=p, path_loss_assumed=P0_PATH)
    clustered = clustered_losses(runs, ctx.alpha)
    queue = _queue_check(ctx, i, d)
    queued = queue is not None and queue[0] < ctx.alpha and queue[1] >= QUEUE_BEFORE_LOSS_MS
    if queue is not None:
        out["estimates"].update(delay_before_loss_pvalue=queue[0], delay_before_loss_ms=queue[1])
    if p < ctx.alpha and target.fraction >= MIN_LOSS_DIFF and not clustered and not queued:
        out.update(decision="detected", pvalue=p, diff=diff, evidence=(
            f"{target.fraction:.1%} of {target.n} packets lost (rtp; binomial vs {P0_PATH:.1%} on a healthy path, "
            f"{fmt_p(p)}), losses independent of each other (runs test) and without queueing before them: "
            "random dropping, not congestion; no control flow in the capture, so selectivity is unconfirmed"))
        out["estimates"]["selectivity"] = "unconfirmed: no control flow"
    elif clustered:
        out["why"] = "; losses come in bursts (congestion or a policer)"
    elif queued:
        out["why"] = f"; the delay rose {queue[1]:.0f} ms before losses (a queue: congestion or shaping)"
    return out


def _vs_controls(target: LossUnits, ctrl: list):
    """Fisher's exact test, one-sided: target loss proportion > pooled controls'.
    Returns (p, difference, ratio, control proportion, control units, odds ratio, target)."""
    c_lost = sum(u.n_lost for u in ctrl)
    c_n = sum(u.n for u in ctrl)
    p_c = c_lost / c_n
    res = stats.fisher_exact([[target.n_lost, target.n - target.n_lost], [c_lost, c_n - c_lost]],
                             alternative="greater")
    odds = float(res.statistic) if np.isfinite(res.statistic) else None
    return (float(res.pvalue), target.fraction - p_c, target.fraction / max(p_c, 1.0 / c_n), p_c, c_n, odds,
            target)


def fisher_note(p: float) -> str:
    return f"Fisher {fmt_p(p)}"


def _pattern(runs: dict) -> str:
    if clustered_losses(runs, 0.01):
        return f"bursty (mean burst {runs['mean_burst']:.1f} packets, runs test p={runs['p_clustered']:.2g})"
    if runs["p_regular"] < 0.01:
        return (f"regular (more alternations than chance, runs test p={runs['p_regular']:.2g}), "
                "as a rate limit makes them")
    return "independent of each other (runs test), as random dropping makes them"
