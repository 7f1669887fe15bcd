"""Shaping: a rate cap with a queue (token bucket + FIFO), seen where the packets arrive.

A shaper holds the packets above its rate C in a queue and releases them at C: while it is
backlogged the one-way delay stands higher by the queue (queue bytes / C) and consecutive
packets leave spaced by their own size over C, not by the sender's clock; it drops only when
the queue overflows. A policer drops without the queue; congestion raises the delay in episodes
with others' traffic, at no fixed rate; Wi-Fi jitters packets around their times; a sender that
lowers its own rate adds no delay; its pacer spaces a video frame's packets at a high rate but
the queue empties between frames.

**The queue, from the sender's clock** (``queue_estimate``; RTP timestamps, with pacing and clock
skew removed by streams/rtp.py). The minimum delay per ``window_s`` (a packet that met no queue:
robust to jitter) is read three ways; each is a test of H0 "no standing queue":
- ``onset``: a rise at some point that stays (the split is searched; its p-value comes from
  permuting the window minima, the maximum statistic: onset.change_point);
- ``leading``: a queue that filled as the capture began (a shaper already on) leaves only the
  first frames at the base delay. Statistic: L, the number of leading frames all below every
  later frame; under H0 (frames' delays exchangeable) P(L >= k) = 1 / C(N, k), exact;
- ``coupling``: a shaper couples its queue and its spacing (while packets wait they leave size / C
  apart): frames whose first packet came at that spacing against the others (Mann-Whitney,
  one-sided; H0 their delay is not higher). Congestion spaces packets by others' traffic, Wi-Fi
  by its own timing, a sender by its clock: none ties the spacing to the delay;
- the spread of the window minima (95th - 5th percentile): a queue that fills and drains with
  the load (no p-value; it sizes the queue).
The queue's depth is the largest of the significant rises and the spread, in ms and in packets
at the rate that arrives while it stands. policing.py reads the same estimate: losses behind a
queue of ``min_queue_packets`` or more are a shaper's tail drops, not a policer's.

**Spacing** (``spacing``, for flows without a sender clock): H0 arrival gaps do not depend on
the size of the packet that ends them (the sender's clock sets them). Spearman's rank correlation,
one-sided. Effect: the share of gaps within ``cap_tolerance`` of size / C at the best C
("floor.shaping_spacing"). Checks: packet sizes vary (for equal sizes a cap and a sender's clock
look the same: the test then cannot clear the flow either), and the backlog lasts
``min_backlog_s`` at a stretch (most of every STANDING_GAPS gaps at the cap: a token bucket sends
a few packets back to back whenever its queue drains for a moment). A shaper that began mid-flow
(spacing_onset: the rise of the per-second share of gaps at the cap) has them read from its
onset, which is reported; the p-value stays the whole flow's.

Decision: the smallest p-value of the available looks (Bonferroni); effect the queue's delay in
ms (floor.shaping). Checks: the queue holds ``min_queue_packets`` packets at the cap (a tbf whose
queue holds a packet or so drops like a policer and is one); an onset's rise persists (the last
third of the windows after it keep half of it: congestion episodes end, shapers stay); and the cap
binds (binding_cap: most arrival gaps are the packet's size over one rate C, or, for a queue that
releases several packets at a time (an htb class), most gaps between bursts the burst's bytes over
C (spacing_test's two readings); C is no faster than
the flow's own rate, unlike a Wi-Fi aggregate or a pacer's burst; the queue stands most of the
time, unlike congestion's, which comes and goes with the cross traffic); the call's flows from
the same host are also read merged, as a queue they share releases them together; and for a
sender whose load comes and goes (cap_holds_the_load), the cap binds where the flow sent more than
it: there only the cap arrived, its gaps at the cap. The coupling
look needs packet sizes that vary (with one size, the sender's clock spaces packets at "a cap").
Estimates: rate_bps (the cap: what arrives while the queue stands), onset_s, delay_rise_ms,
queue_packets, queue_bytes.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import stats

from throttledetect.detect.context import PAUSE_S, DetectContext, dir_name
from throttledetect.detect.onset import change_point
from throttledetect.detect.detector import Detector
from throttledetect.detect.result import Detection, TestResult
from throttledetect.verdicts import fmt_rate

KIND = "shaping"
MIN_PACKETS = 50
BINDING_CAP = 1.5           # a cap faster than this times the flow's own rate is not what holds it back
MAX_LEADING = 50
BACK_TO_BACK = 0.1          # a gap under this share of a packet's time at the flow's mean rate: sent in one burst
STANDING_GAPS = 10          # the backlog stands while most of every this many gaps are at the cap
OVER_CAP = 1.2              # load over the cap: beyond the cap's tolerance both ways (cap_holds_the_load)


def at_cap(size, gap, cap: float, P) -> np.ndarray:
    """Which gaps are the size of the packet ending them over the cap, within ``cap_tolerance``."""
    return np.abs(8.0 * size / np.maximum(gap, 1e-9) / cap - 1.0) < P.cap_tolerance


def queue_unit_bytes(size) -> float:
    """The packet a queue's depth is counted in: the 90th percentile of the flow's sizes. A queue
    fills with the packets that come faster than the cap, a video frame's large ones; a call flow
    carrying audio and video has a mean size far below them (Skype's 0.2 kB against 1.2 kB), so
    counted in mean packets a tbf that holds one video packet read as a queue of two or more, a
    shaper's. With one size (audio) the percentile is the mean."""
    size = np.asarray(size)
    return float(np.percentile(size, 90)) if len(size) else 1.0


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


def leading_test(ms: np.ndarray) -> TestResult:
    """L (statistic) leading frames all below every later frame; p = 1 / C(N, L), exact under
    exchangeable delays; estimates["gap_ms"]: the later frames' low level (their 10th percentile:
    jitter only adds to a queue's delay) above the least delay of the leading ones (the base: the
    queue fills while they pass, so the highest of them already met most of it)."""
    n = len(ms)
    null = "the frames' delays are exchangeable (no queue that the first frames alone escaped)"
    if n < 10:
        return TestResult(0, 1.0, "greater", null, n, {"gap_ms": 0.0})
    later_min = np.minimum.accumulate(ms[::-1])[::-1]      # min of ms[k:]
    lead_max = np.maximum.accumulate(ms)
    L = 0
    for k in range(1, min(MAX_LEADING, n - 1) + 1):        # at most MAX_LEADING steps
        if lead_max[k - 1] < later_min[k]:
            L = k
    if L == 0:
        return TestResult(0, 1.0, "greater", null, n, {"gap_ms": 0.0})
    gap = float(np.quantile(ms[L:], 0.1) - np.min(ms[:L]))
    log_p = -(math.lgamma(n + 1) - math.lgamma(L + 1) - math.lgamma(n - L + 1))
    return TestResult(L, float(math.exp(log_p)), "greater", null, n, {"gap_ms": gap})


def _leading_all(ctx: DetectContext, i: int, d: int):
    """The leading test on every clocked stream of the direction (audio may see the empty queue
    that video, starting later, never met); the best, Bonferroni over streams."""
    best, n = None, 0
    for s in ctx.streams.rtp(i, d):
        if s.n < 20 or not s.clock:
            continue
        dl = s.delay()
        if dl is None or dl.n < 10:
            continue
        n += 1
        r = leading_test(dl.ms)
        if r.statistic and (best is None or r.pvalue < best[1]):
            best = (int(r.statistic), r.pvalue, r.estimates["gap_ms"], float(dl.t[0]))
    if best is None:
        return None
    return best[0], min(1.0, best[1] * n), best[2], best[3]


def _cap_delay_test(ctx: DetectContext, i: int, d: int, dl, pk):
    """A shaper couples its queue and its spacing: while packets wait, they leave size / C apart.
    H0: whether a frame's first packet arrived at the cap spacing (the gap before it within
    cap_tolerance of its size over C) is unrelated to its delay. Mann-Whitney, one-sided: frames
    that came at the cap have higher delay. Returns (p, delay difference ms, C) or None."""
    P = ctx.config.shaping
    sp = spacing_test(pk, P)
    if sp is None:
        return None
    cap = sp["cap"]
    j = np.searchsorted(pk.t, dl.t)               # the frame's first packet in the direction
    ok = (j >= 1) & (j < pk.n)
    j = j[ok]
    gap = pk.t[j] - pk.t[j - 1]
    at = at_cap(pk.size[j], gap, cap, P)
    ms = dl.ms[ok]
    if at.sum() < 10 or (~at).sum() < 10:
        return None
    p = float(stats.mannwhitneyu(ms[at], ms[~at], alternative="greater").pvalue)
    return p, float(np.median(ms[at]) - np.median(ms[~at])), cap


def queue_estimate(ctx: DetectContext, i: int, d: int) -> dict | None:
    """The standing queue on a clocked direction (see the module docstring), cached; None
    without a sender clock or with too few frames."""
    key = ("queue", i, d)
    if key in ctx._cache:
        return ctx._cache[key]
    P = ctx.config.shaping
    out = None
    ds = _delay_series(ctx, i, d)
    if ds is not None and ds[0].n >= P.min_frames:
        dl, stream = ds
        c, m = dl.window_minima(P.window_s)
        if len(m) >= P.min_windows:
            looks = []
            cp = change_point(m, c, min_size=3, alternative="increase", rng=ctx.rng("shape-delay", i))
            if cp is not None:
                k = cp.index
                before, after = float(np.median(m[:k])), float(np.median(m[k:]))
                third = m[k:][-max(1, (len(m) - k) // 3):]
                looks.append({"how": "onset", "p": cp.pvalue, "onset": float(c[k] - P.window_s / 2),
                              "rise": after - before, "persist": float(np.median(third)) - before})
            lead = _leading_all(ctx, i, d)
            if lead is not None:
                L, p_lead, gap, t0 = lead
                looks.append({"how": "leading", "p": p_lead, "onset": t0, "rise": gap, "persist": gap,
                              "leading_frames": L})
            pk_all = ctx.packets(i, d)
            sizes_vary = pk_all.n > 2 and float(np.std(pk_all.size) / max(np.mean(pk_all.size), 1.0)) >= 0.1
            cd = _cap_delay_test(ctx, i, d, dl, pk_all) if sizes_vary else None
            if cd is not None:
                looks.append({"how": "coupling", "p": cd[0], "onset": float(dl.t[0]), "rise": cd[1],
                              "persist": cd[1], "cap": cd[2]})
            spread = float(np.quantile(m, 0.95) - np.quantile(m, 0.05))
            out = {"looks": looks, "spread_ms": spread, "skew_ppm": dl.skew_ppm, "clock": stream.clock,
                   "frames": dl.n, "windows": len(m)}
    ctx._cache[key] = out
    return out


def queue_depth_ms(q: dict, alpha: float) -> float:
    """The queue's delay: the largest significant rise, or the window minima's spread (the
    shaping detector reads the same, with its spacing look added: one reading of one queue)."""
    rises = [lk["rise"] for lk in q["looks"] if lk["p"] * (max(len(q["looks"]), 1) + 1) < alpha]
    return max(rises + [q["spread_ms"]])


def spacing_test(pk, P) -> dict | None:
    """Gaps against the size of what they pay for (see the module docstring), read two ways, the
    one with more gaps at one rate kept (``reading``):
    - ``packets``: each gap against the size of the packet ending it (a link or a tbf releasing
      one packet at a time, size / C after the one before);
    - ``bursts``: packets that arrive back to back (a gap under BACK_TO_BACK of the packet's own
      time at the flow's mean rate) are one burst, and the time from one burst's start to the
      next against the burst's bytes (an htb class, or any token bucket dequeuing several packets
      per tick, sends a burst and then waits until the tokens it spent are earned back).
    The p-value (Spearman, gap against size) is always the packets' reading: the bursts only
    locate the cap and the time it held (``cap``, ``share``, ``busy``, ``backlog_s``). The
    flow's rate and the share of time a queue stood (``busy``) are over the time the sender
    sends: gaps over PAUSE_S (a talker's silence without comfort noise, a hold, the setup before
    media) are left out, since no queue stands in them, else a shaper that binds whenever the
    sender talks looked like a cap faster than the flow and a queue that seldom stood."""
    if pk.n < MIN_PACKETS:
        return None
    g = np.diff(pk.t)
    # the time the sender sends: its pauses (silence without comfort noise, hold, the setup
    # before media) hold no queue, and the flow's own rate is its rate while it sends
    span = float(g[g <= PAUSE_S].sum())
    rate = float(pk.size.sum() * 8.0 / span) if span > 0 else 0.0
    best = _spacing_reading(g, pk.size[1:], pk.t[1:], span, rate, P, "packets")
    if rate > 0:
        b2b = g < BACK_TO_BACK * 8.0 * pk.size[1:] / rate
        if b2b.any():
            first = np.r_[True, ~b2b]
            burst = np.cumsum(first) - 1
            t0 = pk.t[first]
            nbytes = np.bincount(burst, weights=pk.size)
            r = _spacing_reading(np.diff(t0), nbytes[:-1], t0[1:], span, rate, P, "bursts")
            if r is not None and best is not None and r["share"] > best["share"]:
                # the test stays the packets' (H0: a gap does not depend on the size of the packet
                # ending it); the bursts only say better where the cap is and how long it held
                best = dict(r, rho=best["rho"], p=best["p"], size_cv=best["size_cv"])
    return best


def _spacing_reading(g, s, t, span, rate, P, how) -> dict | None:
    ok = g > 0
    g, s, t = g[ok], s[ok], t[ok]
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
    # do the sizes vary at all (else a cap and the sender's clock space packets alike)?
    size_cv = float(np.std(s) / np.mean(s)) if len(s) > 2 and np.mean(s) > 0 else 0.0
    runs = _runs_s(at, g, t)
    busy = float(runs.sum() / span) if span > 0 else 0.0      # share of the time a queue stood
    # the backlog at a stretch: most of every STANDING_GAPS gaps at the cap. A token bucket whose
    # queue drains for a moment (a quieter frame of a variable-rate sender) sends the next few
    # packets back to back on its refilled tokens, which breaks a strict run of gaps at the cap,
    # though the queue stands again at once (looped Zoom video under a 50-200 ms shaper: 93 % of
    # gaps at the cap, strict runs of 1.3 s at most, broken every 90 packets by 2-5 back to back)
    k = min(STANDING_GAPS, len(at))
    most = np.convolve(at.astype(np.float64), np.ones(k) / k, mode="same") >= P.min_busy_share
    longest = float(max(_runs_s(most, g, t).max(initial=0.0), runs.max(initial=0.0)))
    if np.ptp(g) > 0 and np.ptp(s) > 0:
        r = stats.spearmanr(g, s, alternative="greater")
        rho_s, p = float(r.statistic), float(r.pvalue)
    else:                       # one size or one gap: no correlation to speak of
        rho_s, p = 0.0, 1.0
    return {"cap": cap, "share": share, "size_cv": size_cv, "backlog_s": longest, "rho": rho_s, "p": p,
            "busy": busy, "rate": rate, "reading": how}


def _runs_s(mask, g, t) -> np.ndarray:
    """Seconds spanned by each run of True in mask (over gaps g ending at times t)."""
    edges = np.diff(np.r_[0, mask.astype(np.int8), 0])
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1) - 1
    return t[ends] - t[starts] + g[starts] if len(starts) else np.zeros(0)


def spacing_onset(pk, sp: dict, P, alpha: float):
    """Where a shaper that began mid-flow took hold: the change point (onset.change_point,
    one-sided; H0 the per-second share of arrival gaps at the whole flow's cap does not rise).
    The time before such a shaper dilutes the whole flow's reading (looped WhatsApp and Zoom
    calls shaped from 30 s keep 0-15 % of gaps at the cap before and 70-100 % after, too few over
    the whole flow for the checks), and the user is told since when. Per-second shares, not
    single gaps: a queue's gaps come in runs and would fake a significant split. Returns
    (onset_s, the spacing read from there) when the split is significant at alpha, the share
    after it is at least min_busy_share, and the reading from there shows a cap that binds for
    min_backlog_s; else None. The shaping test's p-value stays the whole flow's (the split is
    chosen on the same gaps, so a p-value read after it would be biased); the split only places
    the checks."""
    g = np.diff(pk.t)
    ok = g > 0
    if ok.sum() < MIN_PACKETS:
        return None
    at = at_cap(pk.size[1:][ok], g[ok], sp["cap"], P).astype(np.float64)
    sec = np.floor(pk.t[1:][ok] - pk.t[0]).astype(np.int64)
    n = np.bincount(sec)
    has = n > 0
    share = np.bincount(sec, weights=at)[has] / n[has]
    t_bin = pk.t[0] + np.flatnonzero(has).astype(np.float64)
    cp = change_point(share, t_bin, min_size=max(3, int(math.ceil(P.min_backlog_s))), alternative="increase")
    if cp is None or cp.pvalue >= alpha or cp.after < P.min_busy_share or cp.onset_s is None:
        return None
    w = pk.window(cp.onset_s, pk.t[-1] + 1e-9)
    later = spacing_test(w, P) if w.n >= MIN_PACKETS else None
    if later is None or later["backlog_s"] < P.min_backlog_s or not binding_cap(later, P)[0]:
        return None
    return cp.onset_s, later


def binding_cap(sp: dict | None, P) -> tuple[bool, dict]:
    """Does the spacing show a cap that binds: most gaps at it, the cap no faster than the flow's
    own rate over the period (a Wi-Fi aggregate or a pacer's burst leaves at far more than the
    flow's rate), and a queue standing most of the time (congestion's queue comes and goes with
    the cross traffic; a shaper below the offered rate holds one throughout)?"""
    if sp is None:
        return False, {}
    ok = {"at_cap": sp["share"] >= P.min_busy_share,
          "cap_binds": sp["cap"] <= BINDING_CAP * max(sp["rate"], 1.0),
          "backlog_persists": sp["busy"] >= P.min_busy_share}
    return all(ok.values()), ok


def cap_holds_the_load(pk, lu, cap: float, P) -> tuple[bool, dict]:
    """Does the cap hold back the flow's own load: in the windows (``window_s``) where the sender
    sent more than the cap (what arrived plus what RTP sequence numbers show lost, over
    OVER_CAP times C), did only C arrive (most gaps at the cap, the arrival rate within
    ``cap_tolerance`` of it) for ``min_backlog_s`` windows or more? The reading for a sender whose
    load comes and goes (a fax's pages at 4.5x a shaper's rate for 10 s, then 0.1x; video's key
    frames): its queue stands only while it sends above the cap, so over the whole flow too few
    gaps sit at the cap and the queue seldom stands (binding_cap), though wherever the load
    exceeds the cap it binds. Congestion's queue does not follow the flow's own load; a sender's
    clock or pacer spaces packets at its own rate, which its load cannot exceed by OVER_CAP while
    nothing is lost."""
    if lu is None or lu.source != "rtp" or pk.n < MIN_PACKETS or not cap > 0:
        return False, {}
    w = P.window_s
    t0 = float(pk.t[0])
    nb = int((float(pk.t[-1]) - t0) // w) + 1
    k = np.floor((lu.t - t0) / w).astype(np.int64)
    ok = (k >= 0) & (k < nb)
    offered = np.bincount(k[ok], weights=8.0 * lu.size[ok], minlength=nb) / w
    ka = np.floor((pk.t - t0) / w).astype(np.int64)
    arrived = np.bincount(ka, weights=8.0 * pk.size, minlength=nb) / w
    at = at_cap(pk.size[1:], np.diff(pk.t), cap, P)
    over = offered >= OVER_CAP * cap
    # a window's own gaps: both ends in it (the first and last windows hold part of a second)
    inside = over[ka[1:]] & (ka[1:] == ka[:-1])
    share = float(at[inside].mean()) if inside.any() else 0.0
    held = float(np.median(arrived[over] / cap)) if over.any() else 0.0
    why = {"load_over_cap_s": float(over.sum() * w), "at_cap_when_over": share, "arrived_over_cap": held}
    holds = (over.sum() * w >= P.min_backlog_s and share >= P.min_busy_share
             and abs(held - 1.0) < P.cap_tolerance)
    return bool(holds), why


def detect_tcp(ctx: DetectContext, i: int) -> Detection:
    """A TCP flow: the queue shows in its round-trip times (metrics.tcp: ACK RTT samples, Karn-
    clean) of the direction carrying data. H0: no standing queue (the window minima of the RTT do
    not rise); the same onset test as the media's delay. A bulk TCP flow fills the buffer of any
    bottleneck on its path, deliberate or not: a queue alone says nothing about throttling, so
    without another flow that got more than this one's rate at the same time the result cannot
    clear or convict the flow (``otherwise`` inconclusive, ``selective`` check)."""
    P = ctx.config.shaping
    data = [int(ctx.packets(i, k).payload.sum()) for k in (0, 1)]
    k = int(np.argmax(data))
    direction = dir_name(k)
    toward = "local" if k == ctx.toward_local(i) else "remote"
    fm = ctx.metrics[i] if ctx.metrics is not None else None
    tcp = getattr(fm, "tcp", None)
    dm = None if tcp is None else (tcp.ab if k == 0 else tcp.ba)
    if dm is None or len(dm.rtt_samples_s) < P.min_frames:
        return Detection.inconclusive(KIND, direction, "TCP: too few round-trip samples to see a queue",
                                      toward=toward, test="rtt")
    t = np.asarray(dm.rtt_times_s, dtype=np.float64)
    rtt_ms = np.asarray(dm.rtt_samples_s, dtype=np.float64) * 1e3
    width = max(P.window_s, (t[-1] - t[0]) / 200.0)
    kk = np.floor((t - t[0]) / width).astype(np.int64)
    nb = int(kk[-1]) + 1
    mins = np.full(nb, np.inf)
    np.minimum.at(mins, kk, rtt_ms)
    ok = np.isfinite(mins)
    m, c = mins[ok], t[0] + (np.flatnonzero(ok) + 0.5) * width
    if len(m) < P.min_windows:
        return Detection.inconclusive(KIND, direction, "TCP: too short to see a queue build", toward=toward,
                                      test="rtt")
    base = float(np.min(m))
    cp = change_point(m, c, min_size=3, alternative="increase", rng=ctx.rng("tcp-rtt", i))
    rise = float(np.median(m) - base)
    p = cp.pvalue if cp is not None else 1.0
    pk = ctx.packets(i, k)
    rate = pk.mean_rate_bps()
    mss = float(np.max(pk.size)) if pk.n else 1500.0
    q_pk = rise / 1e3 * rate / 8.0 / mss
    # another flow getting more than this flow's rate at the same time shows the limit is this flow's
    t0, t1 = ctx.flow_span(i)
    faster = [j for j in range(len(ctx.ft)) if j != i and int(ctx.ft.proto[j]) in (6, 17)
              and ctx.packets(j, ctx.toward_local(j)).window(t0, t1).mean_rate_bps() > 1.2 * rate]
    checks = {"queue_of_several_packets": q_pk >= P.min_queue_packets, "selective": bool(faster)}
    det = Detection(kind=KIND, direction=direction, toward=toward, decision="not_detected", test="rtt",
                    statistic=rise, pvalue=p, effect=rise, effect_unit="ms of queueing delay", checks=checks,
                    estimates={"rate_bps": rate, "rtt_base_ms": base, "rtt_median_ms": base + rise,
                               "queue_packets": q_pk, "faster_flows": faster[:10]},
                    evidence=f"round-trip time rises from {base:.0f} ms to a median {base + rise:.0f} ms: a queue of "
                             f"{q_pk:.0f} packets at {fmt_rate(rate)} (p={p:.2g})",
                    null="no standing queue: the round-trip time's window minima do not rise")
    if not faster:
        det.otherwise = "inconclusive"
        det.reason = ("TCP fills the buffer of any bottleneck: with no other flow faster than this one at the same "
                      "time, a queue cannot be told from the link's own")
    return det


def detect(ctx: DetectContext, i: int) -> list:
    d = ctx.toward_local(i)
    direction = dir_name(d)
    P = ctx.config.shaping
    pk = ctx.packets(i, d)
    if pk.n < MIN_PACKETS:
        return [Detection.inconclusive(KIND, direction, f"only {pk.n} packets arrived", test="delay")]
    if int(ctx.ft.proto[i]) == 6:
        return [detect_tcp(ctx, i)]
    q = queue_estimate(ctx, i, d)
    if q is not None:
        looks = list(q["looks"])
        sp_all = spacing_test(pk, P)
        if sp_all is not None and sp_all["size_cv"] >= 0.1:
            # a queue that never empties couples spacing and size all along (no delay change to see)
            looks.append({"how": "spacing", "p": sp_all["p"], "onset": float(pk.t[0]), "rise": q["spread_ms"],
                          "persist": q["spread_ms"]})
        if not looks:
            return [Detection.nothing_to_find(KIND, direction, "the minimum one-way delay never rises",
                                              test="delay", delay_spread_ms=q["spread_ms"], skew_ppm=q["skew_ppm"])]
        best = min(looks, key=lambda x: x["p"])
        p = min(1.0, best["p"] * len(looks))
        # the queue: its deepest significant sign (the same reading policing takes: queue_depth_ms);
        # where it began: an onset that was seen, else the start
        significant = [lk for lk in looks if lk["p"] * len(looks) < ctx.alpha]
        depth = max([lk["rise"] for lk in significant] + [q["spread_ms"]])
        onsets = [lk for lk in significant if lk["how"] == "onset"]
        start = onsets[0]["onset"] if onsets else float(pk.t[0])

        def read_from(t0):
            w = pk.window(t0 + P.window_s, pk.t[-1] + 1e-9)
            sp = spacing_test(w if w.n >= MIN_PACKETS else pk, P)
            return (w, sp) + binding_cap(sp, P)

        w, sp, binds, why_cap = read_from(start)
        if not binds and not onsets and significant:
            # Another look shows the queue, but its cap does not bind read from the start: where
            # the queue began is still the change point's best split where that split rose and
            # stayed up, though alone it was not significant (a talker's pauses leave few windows:
            # a shaper from 30 s of the looped LINE call, p 0.05), and over the whole flow the
            # part before the shaper holds no gap at the cap. Read from the split instead, and
            # kept if the cap binds there; a shaper on from the start binds read from the start
            # and keeps its start.
            split = [lk for lk in looks if lk["how"] == "onset" and lk["rise"] > 0
                     and lk["persist"] >= 0.5 * lk["rise"]]
            if split:
                again = read_from(split[0]["onset"])
                if again[2]:
                    start, (w, sp, binds, why_cap) = split[0]["onset"], again
        rate = w.mean_rate_bps() if w.n >= 10 else pk.mean_rate_bps()
        q_bytes = max(depth, 0.0) / 1e3 * rate / 8.0
        q_pk = q_bytes / max(queue_unit_bytes(w.size if w.n else pk.size), 1.0)
        est = {"rate_bps": rate, "onset_s": start, "delay_rise_ms": best["rise"],
               "delay_spread_ms": q["spread_ms"], "queue_bytes": q_bytes, "queue_packets": q_pk,
               "skew_ppm": q["skew_ppm"], "clock_hz": q["clock"]}
        if best["how"] == "leading":
            est["leading_frames"] = best["leading_frames"]
        at_cap = sp["share"] if sp is not None else 0.0
        if sp is not None and best["how"] in ("spacing", "coupling"):
            est["rate_bps"] = sp["cap"]
        group = ctx.host_group(i)
        if len(group) > 1 and not binds:
            # a queue shared with the call's other flows from this host spaces their packets together
            agg = ctx.merged_packets(group)
            spg = spacing_test(agg.window(start, agg.t[-1] + 1e-9), P)
            binds_g, why_g = binding_cap(spg, P)
            if binds_g or (spg is not None and spg["share"] > at_cap):
                binds, why_cap, at_cap = binds_g, why_g, spg["share"]
                est.update(rate_bps=spg["cap"], shared_with_flows=[j for j in group if j != i], rate_is_shared=True)
        load_note = ""
        if not binds and sp is not None:
            # a sender whose load comes and goes: the cap binds wherever the load exceeds it
            holds, why_load = cap_holds_the_load(w, ctx.streams.loss(i, d), sp["cap"], P)
            if holds:
                binds, why_cap = True, dict(why_cap, **why_load)
                est["rate_bps"] = sp["cap"]
                for key in ("shared_with_flows", "rate_is_shared"):
                    est.pop(key, None)
                at_cap = sp["share"]
                load_note = (f"; in the {why_load['load_over_cap_s']:.0f} s the flow sent more than that, "
                             f"{why_load['at_cap_when_over']:.0%} of gaps at it and only it arrived")
            else:
                why_cap = dict(why_cap, **why_load)
        est["at_cap_share"] = at_cap
        est["cap_checks"] = why_cap
        persist = onsets[0] if onsets else best
        checks = {"queue_of_several_packets": q_pk >= P.min_queue_packets,
                  "rise_persists": persist["persist"] >= 0.5 * persist["rise"],
                  "spaced_at_a_binding_cap": binds}
        how = {"leading": f"after the first {best.get('leading_frames', 0)} frames, which alone met no queue (a "
                          "shaper already on)",
               "coupling": "whenever packets arrive spaced at size / rate (a queue releasing them)",
               "spacing": "and stands: arrival gaps follow packet sizes all along (a queue that never empties)",
               "onset": f"at {best['onset']:.1f} s"}[best["how"]]
        if start > float(pk.t[0]) and best["how"] != "onset":
            how += f" (from {start:.1f} s)"
        ev = (f"one-way delay (window minima, sender clock skew {q['skew_ppm']:+.0f} ppm removed) rises by "
              f"{depth:.0f} ms {how}: a queue of {q_bytes / 1e3:.1f} kB, {q_pk:.1f} packets at "
              f"the {fmt_rate(est['rate_bps'])} that arrive, {at_cap:.0%} of arrival gaps at size / rate{load_note} (p={p:.2g})")
        return [Detection(kind=KIND, direction=direction, decision="not_detected", test=best["how"],
                          statistic=best["rise"], pvalue=p, effect=depth, effect_unit="ms of queueing delay",
                          checks=checks, estimates=est, evidence=ev,
                          null="no standing queue: the minimum one-way delay does not rise")]
    sp = spacing_test(pk, P)
    if sp is None:
        return [Detection.inconclusive(KIND, direction, "too few packets to read their spacing", test="spacing")]
    whole, onset = sp, None
    later = spacing_onset(pk, sp, P, ctx.alpha)
    if later is not None:
        # the checks read from where the queue began; the test stays the whole flow's
        onset, sp = later
    binds, why_cap = binding_cap(sp, P)
    est = {"rate_bps": sp["cap"], "at_cap_share": sp["share"], "size_cv": sp["size_cv"], "backlog_s": sp["backlog_s"],
           "spearman_rho": whole["rho"]}
    if onset is not None:
        est["onset_s"] = onset
    est["cap_checks"] = why_cap
    checks = {"sizes_vary": sp["size_cv"] >= 0.1, "backlog_lasts": sp["backlog_s"] >= P.min_backlog_s,
              "spaced_at_a_binding_cap": binds}
    since = "" if onset is None else f" from {onset - float(pk.t[0]):.1f} s into the flow"
    ev = (f"{sp['share']:.0%} of arrival gaps{since} equal the packet's size over {fmt_rate(sp['cap'])} (a queue "
          f"releasing at that rate), for up to {sp['backlog_s']:.1f} s at a stretch; gap and size correlate "
          f"(Spearman {whole['rho']:.2f}, p={whole['p']:.2g}, whole flow)")
    det = Detection(kind=KIND, direction=direction, decision="not_detected", test="spacing", statistic=whole["rho"],
                    pvalue=whole["p"], effect=sp["share"], effect_unit="share of gaps at the cap", checks=checks,
                    estimates=est, evidence=ev, null="arrival gaps unrelated to packet sizes (the sender's clock)",
                    floor_key="floor.shaping_spacing")
    if not checks["sizes_vary"]:
        det.otherwise = "inconclusive"
        clock = ("too few frames with RTP timestamps to read the delay" if ctx.streams.rtp(i, d)
                 else "no sender clock (no RTP timestamps)")
        det.reason = f"{clock} and packets of one size: a cap cannot be told from the sender's own pacing"
    return [det]


DETECTOR = Detector(name="shaping", kind=KIND, params="shaping", detect=detect, roles=('media',))
