"""The test both policing detectors share (policing.py has the whole method): are losses
where a token bucket's fill was low?

H0: whether a packet is lost does not depend on the bucket fill when it came (the fill at a
packet is computed from the packets before it). ``fill_score_test`` is the test (a martingale
score, honest under serial dependence); ``rank_test`` the stratified Mann-Whitney whose
rank-biserial correlation is the reported effect.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

KIND = "policing"


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


def fmt_rate(bps: float) -> str:
    if bps >= 1e6:
        return f"{bps / 1e6:.3g} Mbit/s"
    return f"{bps / 1e3:.3g} kbit/s"
