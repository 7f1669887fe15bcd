"""Onset: where does a series change level (throttling that starts after N seconds or bytes)?

One change point, found as the split that maximises a standardised rank-sum (Mann-Whitney)
statistic between the part before and the part after, as ShaperProbe's level-shift test and
Pettitt's test do. Because the split is searched for, the statistic at the best split is not
normal under H0; its p-value comes from a permutation test of the maximum (the same search
repeated on shuffled series), which is exact for exchangeable data. When no permutation reaches
the observed maximum, the tail beyond them is read from a Gumbel distribution fitted to the
permutation maxima (maxima of many near-normal statistics are close to Gumbel; Knijnenburg et
al., Bioinformatics 2009, extrapolate permutation tails the same way), so that strong evidence is
not floored at 1 / (1 + N_PERM) and survives a strict false-discovery level.

Null hypothesis of ``change_point``: the series is exchangeable (no change of level at any
point: every order of the values is equally likely). Alternative: the values after some point
are stochastically larger ("increase"), smaller ("decrease"), or either ("two-sided").

Caveat: a series with serial correlation (rates and delays of real traffic are) is not
exchangeable, so small p-values are easier to get than they should be; the detectors using
an onset therefore also require an effect size (a level change large enough to matter) and
test on binned series (bins of a second or so), which weakens the correlation.

Other modules use it to split "the same flow before and after" (selective dropping that starts
mid-call, a shaper whose bucket ran dry, blocking after N seconds) and report ``onset_s``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

N_PERM = 999              # permutations: p-values down to 1e-3, enough for alpha = 0.01 before BH
MAX_SERIES = 4000         # longer series are averaged in blocks before the search (cost O(n x N_PERM))
_PERM_CHUNK_ELEMENTS = 4_000_000


@dataclass
class ChangePoint:
    index: int              # first element of the "after" part (in the series passed in)
    statistic: float        # rank-sum z at the split, signed: > 0 when the after part is larger
    pvalue: float           # permutation p-value of the maximum statistic (accounts for the search)
    before: float           # level before (median, or mean for binary series)
    after: float            # level after
    n_before: int
    n_after: int
    onset_s: float | None = None
    alternative: str = "two-sided"

    def estimates(self, prefix: str = "") -> dict:
        return {f"{prefix}onset_s": self.onset_s, f"{prefix}before": self.before, f"{prefix}after": self.after,
                f"{prefix}onset_pvalue": self.pvalue}



def _max_stat_pvalue(stat: float, maxima: np.ndarray) -> float:
    """Permutation p-value of a maximum statistic, (1 + #maxima >= stat) / (1 + #maxima); when no
    permutation reaches it, the Gumbel tail fitted to the maxima (extreme-value law of a maximum)
    resolves it below 1 / (1 + #maxima)."""
    exceed = int(np.count_nonzero(maxima >= stat - 1e-9))
    p = (1 + exceed) / (1 + len(maxima))
    if exceed == 0 and np.ptp(maxima) > 0:
        loc, scale = stats.gumbel_r.fit(maxima)
        p = min(p, float(stats.gumbel_r.sf(stat, loc, scale)))
    return p

def _z_all(ranks: np.ndarray, k: np.ndarray, n: int, sd_unit: np.ndarray) -> np.ndarray:
    """z of the rank sum of the *after* part for every split k (rows of ranks: series)."""
    cs = np.cumsum(ranks, axis=-1)
    total = cs[..., -1:]
    after_sum = total - cs[..., k - 1]
    m = n - k
    return (after_sum - m * (n + 1) / 2.0) / sd_unit


def _side(z: np.ndarray, alternative: str) -> np.ndarray:
    if alternative == "increase":
        return z
    if alternative == "decrease":
        return -z
    return np.abs(z)


def change_point(x, t=None, *, min_size: int = 5, alternative: str = "two-sided", n_perm: int = N_PERM,
                 rng: np.random.Generator | None = None, binary: bool = False) -> ChangePoint | None:
    """The best single change of level in x (see the module docstring for the test).

    x: values in time order (NaN not allowed); t: their times (onset_s = t of the first
    element after the change). min_size: least elements on each side. binary: x holds 0/1
    (levels reported as means, i.e. proportions). Returns None when x is too short to split.
    """
    x = np.asarray(x, dtype=np.float64)
    t = None if t is None else np.asarray(t, dtype=np.float64)
    n = len(x)
    block = 1
    if n > MAX_SERIES:                     # average in blocks: the search keeps its resolution in time
        block = int(np.ceil(n / MAX_SERIES))
        nb = n // block
        x_b = x[:nb * block].reshape(nb, block).mean(axis=1)
        t_b = None if t is None else t[:nb * block:block]
        cp = change_point(x_b, t_b, min_size=max(1, min_size // block), alternative=alternative, n_perm=n_perm,
                          rng=rng, binary=False)
        if cp is None:
            return None
        idx = cp.index * block
        lev = np.mean if binary else np.median
        cp.index, cp.n_before, cp.n_after = idx, idx, n - idx
        cp.before, cp.after = float(lev(x[:idx])), float(lev(x[idx:]))
        cp.onset_s = None if t is None else float(t[idx])
        return cp
    if n < 2 * min_size or min_size < 1:
        return None
    rng = rng or np.random.default_rng(0)
    ranks = stats.rankdata(x)
    _, tie_counts = np.unique(x, return_counts=True)
    tie = 1.0 - float(np.sum(tie_counts.astype(np.float64) ** 3 - tie_counts)) / float(n ** 3 - n)
    k = np.arange(min_size, n - min_size + 1)
    lev = np.mean if binary else np.median
    if tie <= 0:                            # all values equal: nothing can change
        idx = int(k[len(k) // 2])
        return ChangePoint(idx, 0.0, 1.0, float(lev(x[:idx])), float(lev(x[idx:])), idx, n - idx,
                           None if t is None else float(t[idx]), alternative)
    sd = np.sqrt(k * (n - k) * (n + 1) / 12.0 * tie)
    z = _z_all(ranks, k, n, sd)
    s = _side(z, alternative)
    best = int(np.argmax(s))
    stat = float(s[best])
    idx = int(k[best])

    done = 0
    chunk = max(1, _PERM_CHUNK_ELEMENTS // n)
    maxima = []
    while done < n_perm:
        b = min(chunk, n_perm - done)
        perm = rng.permuted(np.broadcast_to(ranks, (b, n)), axis=1)
        maxima.append(_side(_z_all(perm, k, n, sd), alternative).max(axis=1))
        done += b
    p = _max_stat_pvalue(stat, np.concatenate(maxima))
    return ChangePoint(index=idx, statistic=float(z[best]), pvalue=float(p), before=float(lev(x[:idx])),
                       after=float(lev(x[idx:])), n_before=idx, n_after=n - idx,
                       onset_s=None if t is None else float(t[idx]), alternative=alternative)


def _binom_ll(l: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Binomial log-likelihood at the MLE of l successes in u trials (0 log 0 = 0)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(u > 0, l / np.maximum(u, 1), 0.0)
        a = np.where(l > 0, l * np.log(np.where(p > 0, p, 1.0)), 0.0)
        b = np.where(u - l > 0, (u - l) * np.log(np.where(p < 1, 1.0 - p, 1.0)), 0.0)
    return a + b


def _count_lr(units: np.ndarray, lost: np.ndarray, k: np.ndarray, alternative: str) -> np.ndarray:
    """Likelihood-ratio statistic of one change of the loss probability at every split k (rows:
    series), 0 where the change goes the other way than the alternative."""
    cu, cl = np.cumsum(units, axis=-1), np.cumsum(lost, axis=-1)
    U, L = cu[..., -1:], cl[..., -1:]
    ub, lb = cu[..., k - 1], cl[..., k - 1]
    ua, la = U - ub, L - lb
    lr = 2.0 * (_binom_ll(lb, ub) + _binom_ll(la, ua) - _binom_ll(L, U))
    up = la * ub > lb * ua
    if alternative == "increase":
        lr = np.where(up, lr, 0.0)
    elif alternative == "decrease":
        lr = np.where(up, 0.0, lr)
    return np.maximum(lr, 0.0)


def count_change_point(units, lost, t=None, *, min_size: int = 5, alternative: str = "increase",
                       n_perm: int = N_PERM, rng: np.random.Generator | None = None) -> ChangePoint | None:
    """The best single change of a loss probability in binned counts (units expected, lost per bin).

    H0: the bins are exchangeable (the loss probability does not change at any point; every order
    of the bins is equally likely). Statistic: the binomial likelihood ratio of one change, maximised
    over the split; p-value by permuting the bins (maximum statistic, accounts for the search), its
    tail beyond the permutations read from a Gumbel fit as in change_point. Counts, not the bins'
    fractions, are compared: a bin of 200 packets weighs more than a bin of 5, and 0.2 % -> 6 % over
    thousands of packets is not limited by how many bins there are."""
    units = np.asarray(units, dtype=np.float64)
    lost = np.asarray(lost, dtype=np.float64)
    n = len(units)
    if n < 2 * min_size or min_size < 1 or lost.sum() == 0:
        return None
    rng = rng or np.random.default_rng(0)
    k = np.arange(min_size, n - min_size + 1)
    lr = _count_lr(units, lost, k, alternative)
    best = int(np.argmax(lr))
    stat = float(lr[best])
    idx = int(k[best])
    done = 0
    chunk = max(1, _PERM_CHUNK_ELEMENTS // n)
    maxima = []
    order = np.arange(n)
    while done < n_perm:
        b = min(chunk, n_perm - done)
        o = rng.permuted(np.broadcast_to(order, (b, n)), axis=1)
        maxima.append(_count_lr(units[o], lost[o], k, alternative).max(axis=1))
        done += b
    p = _max_stat_pvalue(stat, np.concatenate(maxima))
    before = float(lost[:idx].sum() / max(units[:idx].sum(), 1.0))
    after = float(lost[idx:].sum() / max(units[idx:].sum(), 1.0))
    return ChangePoint(index=idx, statistic=stat, pvalue=float(p), before=before, after=after, n_before=idx,
                       n_after=n - idx, onset_s=None if t is None else float(np.asarray(t)[idx]),
                       alternative=alternative)


def loss_onset(units, *, rng=None, min_units: int = 50) -> ChangePoint | None:
    """Change of the loss proportion in a loss signal (common.LossUnits): binary series, one
    element per expected packet. H0: every expected packet is lost with the same probability,
    independently of its position (exchangeable). Returns None when there are fewer than
    2 x min_units units or no loss at all."""
    if units is None or units.n < 2 * min_units or units.n_lost == 0:
        return None
    return change_point(units.lost.astype(np.float64), units.t, min_size=min_units, alternative="two-sided",
                        rng=rng, binary=True)


def rate_bin_s(n_packets: int, duration_s: float, *, per_bin: int = 10, lo: float = 0.25, hi: float = 2.0) -> float:
    """A bin width giving about `per_bin` packets per bin, within [lo, hi] seconds."""
    if duration_s <= 0 or n_packets <= 0:
        return hi
    return float(np.clip(per_bin * duration_s / n_packets, lo, hi))


def rate_onset(packets, *, alternative: str = "decrease", rng=None, min_bins: int = 5,
               t_end: float | None = None) -> tuple[ChangePoint | None, float]:
    """Change of the received bit rate of a direction (common.DirPackets), on a binned rate
    series from its first to its last packet. Returns (change point or None, bin width)."""
    if packets.n < 2:
        return None, 1.0
    dur = float(packets.t[-1] - packets.t[0])
    bin_s = rate_bin_s(packets.n, dur)
    t_bins, rate = packets.rate_series(bin_s, packets.t[0], packets.t[-1] if t_end is None else t_end)
    if len(rate) < 2 * min_bins:
        return None, bin_s
    return change_point(rate, t_bins, min_size=min_bins, alternative=alternative, rng=rng), bin_s
