"""Shaping: a rate cap with a queue (token bucket + FIFO), seen where the packets arrive.

A shaper holds the packets above its rate C in a queue and releases them at C: while it is
backlogged the one-way delay stands higher by the queue (queue bytes / C) and consecutive
packets leave spaced by their own size over C, not by the sender's clock; it drops only when
the queue overflows. A policer drops without the queue; congestion raises the delay in episodes
with others' traffic, at no fixed rate; Wi-Fi jitters packets around their times; a sender that
lowers its own rate adds no delay; its pacer spaces a video frame's packets at a high rate but
the queue empties between frames.

1. **Delay** (``delay``, needs the sender's clock: RTP timestamps; streams/rtp.py removes pacing
   and clock skew). The minimum delay per ``window_s`` (robust to jitter: a window's minimum is
   a packet that met no queue) is tested for a rise that stays:
   - a change of level at some point: H0 the window minima are exchangeable; the split is
     searched and its p-value comes from permutations (onset.change_point, maximum statistic);
   - a queue that filled in the first second (a shaper active from the start): the first frames'
     delay against the window minima after them (Mann-Whitney, one-sided; H0 the first frames
     are not earlier than the rest).
   The smaller p-value, doubled (Bonferroni). Effect: the rise in ms (floor.shaping). Checks: the
   queue holds at least ``min_queue_packets`` packets at the cap (a tbf whose queue holds a packet
   or two drops like a policer and is policing's), and the rise persists to the end (the last
   third of the windows after it keep half of it: congestion episodes end, a shaper stays).
2. **Spacing** (``spacing``, for flows without a sender clock). H0: arrival gaps do not depend
   on the size of the packet that ends them (the sender's clock sets them). Spearman's rank
   correlation, one-sided (scipy.stats.spearmanr). Effect: the share of gaps within
   ``cap_tolerance`` of size / C at the best C ("floor.shaping_spacing"). Checks: packet sizes
   vary (for equal sizes a cap and a sender's clock look the same), the backlog lasts at least
   ``min_backlog_s``.

Estimates: rate_bps (the cap: the received rate while the queue stands, or the spacing's C),
onset_s, delay_rise_ms, queue_packets, queue_bytes.
"""
from __future__ import annotations

import numpy as np
from scipy import stats

from throttledetect.detect.context import DetectContext, dir_name
from throttledetect.detect.onset import change_point
from throttledetect.detect.result import Detection
from throttledetect.verdicts import fmt_rate

KIND = "shaping"
START_FRAMES = 10
MIN_PACKETS = 50


def _delay_series(ctx: DetectContext, i: int, d: int):
    """The delay series of the direction's stream with the most frames (and its stream)."""
    best = None
    for s in ctx.streams.rtp(i, d):
        if s.n < 20 or not s.clock:
            continue
        dl = s.delay()
        if dl is not None and (best is None or dl.n > best[0].n):
            best = (dl, s)
    return best


def delay_test(ctx: DetectContext, i: int, d: int, dl, pk) -> dict | None:
    P = ctx.config.shaping
    c, m = dl.window_minima(P.window_s)
    if len(m) < P.min_windows:
        return None
    looks = []
    cp = change_point(m, c, min_size=3, alternative="increase", rng=ctx.rng("shape-delay", i))
    if cp is not None:
        k = cp.index
        before, after = float(np.median(m[:k])), float(np.median(m[k:]))
        third = m[k:][-max(1, (len(m) - k) // 3):]
        looks.append({"how": "change", "p": cp.pvalue, "onset": float(c[k] - P.window_s / 2),
                      "before": before, "after": after, "persist": float(np.median(third)) - before})
    first = dl.ms[:START_FRAMES]
    if len(first) == START_FRAMES and len(m) > 3:
        rest = m[1:]
        p = float(stats.mannwhitneyu(first, rest, alternative="less").pvalue)
        before, after = float(np.median(first)), float(np.median(rest))
        third = rest[-max(1, len(rest) // 3):]
        looks.append({"how": "start", "p": p, "onset": float(dl.t[0]), "before": before, "after": after,
                      "persist": float(np.median(third)) - before})
    if not looks:
        return None
    best = min(looks, key=lambda x: x["p"])
    best["p"] = min(1.0, best["p"] * len(looks))
    rise = best["after"] - best["before"]
    best["rise"] = rise
    # the cap: what arrived while the queue stood
    w = pk.window(best["onset"] + P.window_s, pk.t[-1] + 1e-9)
    best["rate"] = w.mean_rate_bps() if w.n >= 10 else pk.mean_rate_bps()
    best["mean_size"] = float(w.size.mean()) if w.n else float(pk.size.mean())
    return best


def spacing_test(pk, P) -> dict | None:
    """Gaps against the size of the packet ending them (see the module docstring)."""
    if pk.n < MIN_PACKETS:
        return None
    g = np.diff(pk.t)
    s = pk.size[1:]
    ok = g > 0
    g, s, t = g[ok], s[ok], pk.t[1:][ok]
    if len(g) < MIN_PACKETS:
        return None
    rho = 8.0 * s / g
    lr = np.log(rho)
    width = np.log1p(P.cap_tolerance)
    hist, edges = np.histogram(lr, bins=np.arange(lr.min(), lr.max() + width, width))
    if len(hist) == 0:
        return None
    k = int(np.argmax(hist))
    cap = float(np.exp(np.median(lr[(lr >= edges[k]) & (lr < edges[k + 1])])))
    at = np.abs(rho / cap - 1.0) < P.cap_tolerance
    share = float(at.mean())
    size_cv = float(np.std(s[at]) / np.mean(s[at])) if at.sum() > 2 else 0.0
    # the longest stretch the queue stood: consecutive gaps at the cap
    runs = np.diff(np.flatnonzero(np.diff(np.r_[False, at, False].astype(np.int8)) != 0).reshape(-1, 2), axis=1)
    starts = np.flatnonzero(np.diff(np.r_[False, at].astype(np.int8)) == 1)
    longest = 0.0
    if len(starts):
        ends = starts + runs.ravel() - 1
        longest = float(np.max(t[ends] - t[starts] + g[starts]))
    r = stats.spearmanr(g, s, alternative="greater")
    return {"cap": cap, "share": share, "size_cv": size_cv, "backlog_s": longest, "rho": float(r.statistic),
            "p": float(r.pvalue)}


def detect(ctx: DetectContext, i: int) -> list:
    d = ctx.toward_local(i)
    direction = dir_name(d)
    P = ctx.config.shaping
    pk = ctx.packets(i, d)
    if pk.n < MIN_PACKETS:
        return [Detection.inconclusive(KIND, direction, f"only {pk.n} packets arrived", test="delay")]
    ds = _delay_series(ctx, i, d)
    if ds is not None and ds[0].n >= P.min_frames:
        dl, stream = ds
        res = delay_test(ctx, i, d, dl, pk)
        if res is not None:
            rise = res["rise"]
            q_bytes = max(rise, 0.0) / 1e3 * res["rate"] / 8.0
            q_pk = q_bytes / max(res["mean_size"], 1.0)
            est = {"rate_bps": res["rate"], "onset_s": res["onset"], "delay_rise_ms": rise, "queue_bytes": q_bytes,
                   "queue_packets": q_pk, "delay_before_ms": res["before"], "delay_after_ms": res["after"],
                   "skew_ppm": dl.skew_ppm, "clock_hz": stream.clock}
            checks = {"queue_of_several_packets": q_pk >= P.min_queue_packets,
                      "rise_persists": res["persist"] >= 0.5 * rise}
            how = ("from the start (the first frames against the rest)" if res["how"] == "start"
                   else f"at {res['onset']:.1f} s")
            ev = (f"one-way delay (window minima, sender clock skew {dl.skew_ppm:+.0f} ppm removed) rises by "
                  f"{rise:.0f} ms {how} and stays: a queue of {q_bytes / 1e3:.1f} kB, {q_pk:.1f} packets at the "
                  f"{fmt_rate(res['rate'])} that arrive (p={res['p']:.2g})")
            return [Detection(kind=KIND, direction=direction, decision="not_detected", test="delay",
                              statistic=rise, pvalue=res["p"], effect=rise, effect_unit="ms of queueing delay",
                              checks=checks, estimates=est, evidence=ev,
                              null="the minimum one-way delay does not rise (no standing queue)")]
    sp = spacing_test(pk, P)
    if sp is None:
        return [Detection.inconclusive(KIND, direction, "too few packets to read their spacing", test="spacing")]
    est = {"rate_bps": sp["cap"], "at_cap_share": sp["share"], "size_cv": sp["size_cv"], "backlog_s": sp["backlog_s"],
           "spearman_rho": sp["rho"]}
    checks = {"sizes_vary": sp["size_cv"] >= 0.1, "backlog_lasts": sp["backlog_s"] >= P.min_backlog_s}
    ev = (f"{sp['share']:.0%} of arrival gaps equal the packet's size over {fmt_rate(sp['cap'])} (a queue "
          f"releasing at that rate), for up to {sp['backlog_s']:.1f} s at a stretch; gap and size correlate "
          f"(Spearman {sp['rho']:.2f}, p={sp['p']:.2g})")
    det = Detection(kind=KIND, direction=direction, decision="not_detected", test="spacing", statistic=sp["rho"],
                    pvalue=sp["p"], effect=sp["share"], effect_unit="share of gaps at the cap", checks=checks,
                    estimates=est, evidence=ev, null="arrival gaps unrelated to packet sizes (the sender's clock)")
    det.floor_key = "floor.shaping_spacing"
    if not checks["sizes_vary"]:
        # equal sizes: a cap and the sender's own clock space packets alike, so a negative says nothing
        det.otherwise = "inconclusive"
        det.reason = "no sender clock (no RTP timestamps) and packets of one size: a cap cannot be told from the " \
                     "sender's own pacing"
    return [det]
