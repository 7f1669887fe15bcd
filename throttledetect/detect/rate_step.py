"""Rate evidence where there is no loss signal: the rate arriving steps down and stays, while this
host's own sending holds (issue 11, "rate evidence").

Media without readable sequence numbers and without a whole voice cadence (Telegram's, an
encrypted app's video) says nothing of its losses, so neither a policer's drops nor random ones
can be counted and the loss tests are ``inconclusive``. What the capture still shows is the rate:
a cap that begins mid-call takes the received rate down at one moment and keeps it there. So do
the far end lowering its bitrate (its congestion control, a switch to audio only), muting and
holding; none of them can be told from a cap without a loss signal. This is therefore never a
verdict: it is said, with its test, beside the reason the loss tests could not run, so that a user
sees when the flow changed and by how much.

H0 (``step_down``): the per-second rates arriving, over the seconds in which the call carried
anything either way, are exchangeable (no lasting change of level). Test: the best split of a
one-sided rank-sum statistic, p-value from permutations of the maximum (onset.change_point;
serial correlation of real rates makes small p-values easier to get, hence the effect and check).
Effect: the level after over the level before (means of the bins), at most STEP_FACTOR to be
said. Check: this host's own sending holds across the same split (at least HOLD_FACTOR of its
level before): when both directions fall together the call itself went quiet (hold, a hang-up),
which is not a change of the path. A capture without this host's sending cannot check it and
says so.
"""
from __future__ import annotations

import numpy as np

from throttledetect.detect.context import DetectContext
from throttledetect.detect.onset import change_point
from throttledetect.verdicts import fmt_rate

BIN_S = 1.0
MIN_BINS = 5            # seconds on each side of the split
STEP_FACTOR = 0.85      # the rate after at most this share of the rate before (policers, shapers: 0.5-0.85 x)
HOLD_FACTOR = 0.85      # this host's own sending keeps at least this share of its level before
MIN_PACKETS = 50


def step_down(ctx: DetectContext, i: int, d: int) -> dict | None:
    """The direction's lasting step down (see the module), or None: too short to test, no step
    below alpha and STEP_FACTOR, or both directions falling together. Cached per direction."""
    key = ("rate-step", i, d)
    if key not in ctx._cache:
        ctx._cache[key] = _step_down(ctx, i, d)
    return ctx._cache[key]


def _step_down(ctx: DetectContext, i: int, d: int) -> dict | None:
    inb, out = ctx.packets(i, d), ctx.packets(i, 1 - d)
    if inb.n < MIN_PACKETS:
        return None
    t0 = min(float(inb.t[0]), float(out.t[0]) if out.n else np.inf)
    t1 = max(float(inb.t[-1]), float(out.t[-1]) if out.n else -np.inf)
    t_bin, r_in = inb.rate_series(BIN_S, t0, t1)
    # the same bins both ways (same start, end and width), or none sent
    r_out = out.rate_series(BIN_S, t0, t1)[1] if out.n else np.zeros(len(t_bin))
    active = (r_in > 0) | (r_out > 0)
    if np.count_nonzero(active) < 2 * MIN_BINS:
        return None
    x, t, y = r_in[active], t_bin[active], r_out[active]
    cp = change_point(x, t, min_size=MIN_BINS, alternative="decrease", rng=ctx.rng("rate-step", i, d))
    if cp is None or cp.pvalue >= ctx.alpha:
        return None
    k = cp.index
    before, after = float(x[:k].mean()), float(x[k:].mean())
    if before <= 0 or after > STEP_FACTOR * before:
        return None
    out_seen = bool(out.n)
    out_before, out_after = float(y[:k].mean()), float(y[k:].mean())
    if out_seen and out_after < HOLD_FACTOR * out_before:
        return None
    return {"rate_step_onset_s": float(t[k]), "rate_before_bps": before, "rate_after_bps": after,
            "rate_step_pvalue": float(cp.pvalue), "sent_before_bps": out_before if out_seen else None,
            "sent_after_bps": out_after if out_seen else None}


def describe(step: dict) -> str:
    """The step in words a user can check against the capture."""
    if step["sent_before_bps"] is None:
        held = "this host's own sending is not in the capture to compare"
    else:
        held = (f"while this host's own sending holds ({fmt_rate(step['sent_before_bps'])} -> "
                f"{fmt_rate(step['sent_after_bps'])})")
    return (f"the rate arriving steps down from {fmt_rate(step['rate_before_bps'])} to "
            f"{fmt_rate(step['rate_after_bps'])} at {step['rate_step_onset_s']:.1f} s and stays (best split, "
            f"permutation p={step['rate_step_pvalue']:.2g}) {held}: a cap from then on, or the far end lowering "
            "its bitrate, muting or holding; without a loss signal these look alike")
