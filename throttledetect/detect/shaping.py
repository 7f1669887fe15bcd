"""Shaping: a rate cap with a queue (token bucket + FIFO), seen where the packets arrive.

A shaper holds packets above the rate in a queue and releases them at the rate: while it is
backlogged, consecutive packets leave spaced by their own size over the rate (not by the time
the sender let pass between them), the one-way delay climbs to a plateau (the queue's size over
the rate), and packets are tail-dropped only when the queue overflows. A policer drops instead
and keeps the sender's spacing and a flat delay; congestion at a shared link varies with cross
traffic. ("Signs that separate the causes", docs of the project.)

RTP streams carry the sender's clock (RTP timestamps), so both signs can be measured:

A. Spacing (``spacing_test``): for consecutive received media frames (a frame = the packets
   sharing one timestamp, so video works too; pairs across a sender pause left out), is the
   arrival spacing explained better by the sender's clock (spacing = k x timestamp step) or by a
   queue releasing bytes at a rate C (spacing = 8 x frame bytes / C)? Both models have one
   fitted scale. H0: the queue model does not fit better; Wilcoxon signed-rank test of the
   per-pair error difference, one-sided (scipy.stats.wilcoxon). For frames of one size the
   models coincide and the test is on the stretch k instead (H0: arrivals not spaced wider than
   sent). C is the cap (rate_bps). Effect: the share of the offered rate held back,
   1 - C / offered, offered = (received + lost bytes) per second of RTP media time. Streams
   bundled on one 5-tuple share the queue: the bytes between two frames and the offered load
   are those of every packet of the direction (frame_pairs' ``fifo``).
B. Delay (``delay``): relative one-way delay (arrival minus RTP media time) in bins; the best
   split for an increase (onset.change_point, rank statistic, permutation p-value). H0: no
   change of level of the delay (exchangeable bins). Reported: delay increase in ms, onset.
   A queue that fills within the first second leaves no "before": then the first START_PACKETS
   packets against the rest (``start_rise``, Mann-Whitney, H0: the first packets' delay is not
   smaller).

Decision for RTP: "detected" when A rejects at alpha, the backlog is persistent (at least
MIN_HELD_BACK of the offered rate held back, and the queue model fitting at least
MIN_QUEUE_FIT_SHARE of the pairs, or a stretch for one-size frames) and the queue shows itself,
as a persistent backlog must: the delay rises (B significant, at least MIN_DELAY_MS and 4
baseline standard deviations) or packets are tail-dropped (loss in the backlogged period).
A stream that shares the shaper's queue with the call's heavier streams (audio behind video)
keeps its own spacing but sees the delay rise and tail drops follow: detected too when B
rejects and the loss after the rise exceeds the loss before (Fisher's exact, one-sided; the
p-value is the larger of the two, an intersection-union test), unless a control flow's loss
rose at the same time (congestion). Its rate_bps is then its share of the cap
(rate_is_share_of_cap); the per-protocol summary adds the shares up.

Without RTP (encrypted UDP, TCP) the sender's clock is unknown (TCP timestamps give one for TCP: the
one-way delay before and after the rate fall is reported, ``tcp_delay_rise``, not decisive since
congestion raises it too). What is tested then (ShaperProbe's level shift): the received rate
falls (onset.rate_onset, H0: no change of level) by at least MIN_RATE_DROP, and after the fall the packets are spaced by size / rate: their arrival gaps
grow with the next packet's size (Spearman, H0: gap and size unrelated; a policer keeps the
sender's grid) or, for equal-size packets (TCP at the MSS), most gaps sit within
PACED_TOLERANCE of size / rate while they did not before (Fisher's exact test, H0: no more paced
gaps after than before). A constant-bit-rate stream policed to an integer fraction of its rate
is paced too and cannot be told apart: that case is "inconclusive" unless sizes vary.

Estimates: rate_bps (the cap, link-layer bits/s), onset_s, delay_increase_ms, queue_bytes
(plateau delay x rate), burst_bytes_if_bucket (when the rate before the onset exceeded the cap:
a bucket that started full lasts burst / (rate_before - cap) seconds, ShaperProbe's estimate; a
throttle switched on at the onset looks the same, hence not reported as burst_bytes).
Thresholds: from the simulation sweep of tests/detect/test_registry.py (run_sweep: clean, jittered,
congested, randomly dropped, policed, shaped and blocked synthetic calls, audio / DTX / video /
encrypted, several seeds; THROTTLEDETECT_SWEEP=1 runs it); none is tuned to a single capture.
"""
from __future__ import annotations

import numpy as np
from scipy import stats

from throttledetect.detect.common import DetectContext, DirPackets, RtpArrays, clean, dir_name, fmt_p, fmt_rate
from throttledetect.detect.onset import ChangePoint, change_point, rate_onset
from throttledetect.detect.result import Detection
from throttledetect.wire.tcpopts import tcp_options

KIND = "shaping"

MIN_RTP_PACKETS = 100      # per stream
MIN_PAIRS = 50             # consecutive frame pairs for the spacing test
MIN_HELD_BACK = 0.08       # the cap holds back at least 8 % of what the sender offered
MIN_QUEUE_FIT_SHARE = 0.55  # and the queue model fits most frame pairs (a persistent backlog)
EQUAL_SIZE_SPREAD = 0.1    # frames whose sizes' IQR is within 10 % of their median count as one size
MIN_DELAY_MS = 15.0        # a queue shallower than this is not told from jitter
DELAY_SIGMAS = 4.0
MIN_TAIL_LOSS = 0.005      # loss in the backlogged period that counts as the queue overflowing
TAIL_P0 = 0.005            # ... tested against this (a healthy path's loss) when there is no "before"
START_PACKETS = 10         # a delay rise at the very start: these first packets against the rest
DELAY_BIN_PACKETS = 10     # about this many packets per delay bin
MIN_RATE_DROP = 0.2        # non-RTP: the received rate falls by at least 20 %
PACED_TOLERANCE = 0.25     # a gap within 25 % of size / rate is "paced"
MIN_PACED_SHARE = 0.5


def detect(ctx: DetectContext, i: int) -> list[Detection]:
    out = []
    for d in ctx.inbound(i):
        streams = [s for s in ctx.rtp(i, d) if s.n >= MIN_RTP_PACKETS and s.clock]
        if streams:
            out.append(detect_rtp(ctx, i, d, streams))
        else:
            out.append(detect_unclocked(ctx, i, d))
    return out


# ------------------------------------------------------------------------------------------ RTP

def frame_pairs(s: RtpArrays, t0: float | None = None, t1: float | None = None, fifo: DirPackets | None = None):
    """Consecutive received media frames (in sender order) whose later one completed in [t0, t1).

    A frame is the received packets sharing one RTP timestamp (a video frame; an audio packet).
    Returns (completion time of the later frame, arrival spacing s, sender spacing s = timestamp
    step / clock, bytes received of the later frame). Frames with lost packets count with the
    bytes that arrived: a FIFO releases what it holds, so the spacing is set by those bytes.
    Pairs whose sender spacing is over twice the median (a DTX pause, a frame the encoder
    skipped) are left out: a queue drains in the pause, so they say nothing about a cap.

    ``fifo``: every packet of the direction (common.DirPackets). Streams bundled on one 5-tuple
    (audio, video, retransmissions, RTCP) share the shaper's queue, so what it released between
    two frames of this stream is all the bytes that arrived in between, not the frame's own:
    the bytes returned are then those."""
    o = np.lexsort((s.seq, s.ts))
    seq, ts, t, size = s.seq[o], s.ts[o], s.t[o], s.size[o]
    keep = np.r_[True, seq[1:] != seq[:-1]]            # duplicates once
    ts, t, size = ts[keep], t[keep], size[keep]
    starts = np.flatnonzero(np.r_[True, ts[1:] != ts[:-1]])
    f_ts = ts[starts]
    f_t = np.maximum.reduceat(t, starts)                # complete when its last packet is in
    f_bytes = np.add.reduceat(size, starts)
    if fifo is not None and fifo.n:
        o2 = np.argsort(fifo.t, kind="stable")
        ft_, cum = fifo.t[o2], np.concatenate(([0.0], np.cumsum(fifo.size[o2])))
        upto = cum[np.searchsorted(ft_, f_t, side="right")]
        between = np.diff(upto)
        f_bytes = np.r_[f_bytes[0], np.where(between > 0, between, f_bytes[1:])]
    dt = np.diff(f_t)
    dts = np.diff(f_ts) / float(s.clock)
    at = f_t[1:]
    ok = (dt > 0) & (dts > 0)
    if ok.any():
        # pairs across a sender pause (DTX, a frame skipped: a step over twice the usual) say
        # nothing about a cap: any queue drains in the pause
        ok &= dts <= 2.0 * np.median(dts[ok])
    if t0 is not None:
        ok &= at >= t0
    if t1 is not None:
        ok &= at < t1
    return at[ok], dt[ok], dts[ok], f_bytes[1:][ok]


def spacing_test(dt: np.ndarray, dts: np.ndarray, fbytes: np.ndarray) -> dict:
    """Which explains the arrival spacing of consecutive frames: the sender's clock, or a queue
    that releases bytes at a fixed rate?

    Clock model: spacing = k x sender spacing. Queue model: spacing = 8 x bytes / C. Each has one
    scale, fitted L1-optimally (k = exp(median log(spacing / sender spacing)), C = exp(median
    log(8 bytes / spacing))), so neither gains from a free parameter. Per pair, the absolute log
    errors of the two; H0: the queue model does not fit better than the clock (Wilcoxon
    signed-rank test of clock error minus queue error, one-sided; zero differences dropped).
    With frames of (nearly) one size the two models coincide; then what is left is the stretch k:
    H0: arrivals are not spaced wider than sent (Wilcoxon signed-rank, log(spacing / sender
    spacing) > 0, one-sided); a sustained stretch means a queue draining slower than it fills.
    Returns rate C (bit/s), stretch k, which test was used, p, statistic, the share of pairs the
    queue fits better, and the two models' median errors (as ratios)."""
    r = 8.0 * fbytes / dt
    c = float(np.exp(np.median(np.log(r))))
    ls = np.log(dt / dts)
    k = float(np.exp(np.median(ls)))
    e_clock = np.abs(ls - np.log(k))
    e_queue = np.abs(np.log(dt * c / (8.0 * fbytes)))
    diff = e_clock - e_queue
    nz = np.abs(diff) > 1e-9
    q75, q25 = np.percentile(fbytes, [75, 25])
    equal_sizes = (q75 - q25) <= EQUAL_SIZE_SPREAD * float(np.median(fbytes))
    out = {"rate_bps": c, "stretch": k, "queue_fit_share": float(np.mean(diff[nz] > 0)) if nz.any() else 0.0,
           "queue_error": float(np.exp(np.median(e_queue))), "clock_error": float(np.exp(np.median(e_clock))),
           "pairs": int(len(dt)), "equal_sizes": bool(equal_sizes)}
    if equal_sizes:
        w = stats.wilcoxon(ls, alternative="greater") if np.count_nonzero(ls) >= 10 else None
        out.update(test="stretch", pvalue=float(w.pvalue) if w else 1.0, statistic=float(w.statistic) if w else 0.0)
        return out
    if np.count_nonzero(nz) < 10:
        out.update(test="models", pvalue=1.0, statistic=0.0)
        return out
    w = stats.wilcoxon(diff[nz], alternative="greater")
    out.update(test="models", pvalue=float(w.pvalue), statistic=float(w.statistic))
    return out


def _delay_bins(s: RtpArrays):
    d = s.delay_ms
    dur = s.t[-1] - s.t[0]
    bin_s = float(np.clip(DELAY_BIN_PACKETS * dur / max(s.n, 1), 0.2, 2.0))
    k = np.floor((s.t - s.t[0]) / bin_s).astype(np.int64)
    nb = int(k.max()) + 1
    order = np.argsort(k, kind="stable")
    ks, ds = k[order], d[order]
    starts = np.flatnonzero(np.r_[True, ks[1:] != ks[:-1]])
    counts = np.diff(np.r_[starts, len(ks)])
    med = np.array([np.median(ds[a:a + c]) for a, c in zip(starts, counts)])   # one per bin
    good = counts >= 3
    return s.t[0] + bin_s * ks[starts][good], med[good], bin_s, nb


def detect_rtp(ctx: DetectContext, i: int, d: int, streams: list[RtpArrays]) -> Detection:
    """The strongest of the stream-level tests of one direction, Bonferroni-adjusted over streams."""
    results = [_rtp_stream(ctx, i, d, s) for s in streams]
    tested = [r for r in results if r.pvalue is not None]
    if not tested:
        return results[0]
    m = len(tested)
    best = min(tested, key=lambda r: (r.decision != "detected", r.pvalue))
    best.pvalue = min(1.0, best.pvalue * m)
    if m > 1:
        best.estimates["streams_tested"] = m
    if best.decision == "detected" and best.pvalue >= ctx.alpha:
        best.decision = "not_detected"
        best.reason = "not significant over the streams of this direction"
    return best


def _rtp_stream(ctx: DetectContext, i: int, d: int, s: RtpArrays) -> Detection:
    direction = dir_name(d)
    rng = ctx.rng("shape", i, d, s.ssrc)
    est: dict = {"ssrc": f"0x{s.ssrc:08x}", "clock_hz": s.clock}

    # B. delay level shift
    tb, med, bin_s, _ = _delay_bins(s)
    delay_cp = change_point(med, tb, min_size=max(3, int(np.ceil(2.0 / bin_s))), alternative="increase",
                            rng=rng) if len(med) >= 8 else None
    rise = None
    if delay_cp is not None:
        before = s.delay_ms[s.t < delay_cp.onset_s]
        sigma = 1.4826 * float(np.median(np.abs(before - np.median(before)))) if len(before) >= 5 else 0.0
        floor = max(MIN_DELAY_MS, DELAY_SIGMAS * sigma)
        inc = delay_cp.after - delay_cp.before
        est.update(delay_onset_s=delay_cp.onset_s, delay_before_ms=delay_cp.before, delay_after_ms=delay_cp.after,
                   delay_increase_ms=inc, delay_pvalue=delay_cp.pvalue, delay_floor_ms=floor)
        if delay_cp.pvalue < ctx.alpha and inc >= floor:
            rise = delay_cp
    if rise is None:
        # a queue that fills within the first second (a cap from the start) leaves no "before" for
        # the change point: compare the stream's first packets with the rest
        sr = start_rise(s)
        if sr is not None:
            est.update(start_delay_ms=sr.before, delay_after_ms=sr.after, delay_increase_ms=sr.after - sr.before,
                       start_rise_pvalue=sr.pvalue)
            if sr.pvalue < ctx.alpha and sr.after - sr.before >= sr.statistic:
                rise = sr

    # A. spacing, over the backlogged period (after the delay rose, else the whole stream)
    onset = rise.onset_s if rise is not None else None
    at, dt, dts, fbytes = frame_pairs(s, onset, fifo=ctx.packets(i, d))
    if len(dt) < MIN_PAIRS:
        return Detection.inconclusive(KIND, direction, f"too few consecutive media frames ({len(dt)}, need "
                                      f"{MIN_PAIRS}) to compare arrival and sender spacing", **clean(est))
    sp = spacing_test(dt, dts, fbytes)
    if rise is None and sp["pvalue"] >= ctx.alpha:
        # the backlog may have started mid-stream without a measurable delay rise (a shallow
        # queue): look for the change in which model fits, and test again after it
        better = (np.abs(np.log(dt / dts) - np.log(sp["stretch"]))
                  - np.abs(np.log(dt * sp["rate_bps"] / (8 * fbytes)))) > 0
        cp = change_point(better.astype(float), at, min_size=max(MIN_PAIRS // 2, 10), alternative="increase",
                          rng=rng, binary=True) if len(better) >= 2 * MIN_PAIRS else None
        if cp is not None and cp.pvalue < ctx.alpha:
            sel = at >= cp.onset_s
            sp2 = spacing_test(dt[sel], dts[sel], fbytes[sel])
            if sp2["pvalue"] < sp["pvalue"]:
                sp, onset = sp2, cp.onset_s
                sp["pvalue"] = min(1.0, sp["pvalue"] * 2)     # two looks: Bonferroni
    p_spacing = sp["pvalue"]
    rate = sp["rate_bps"]
    window_t0 = onset if onset is not None else float(s.t[0])
    # what the sender offered over the same media time: received + lost bytes per second of RTP time
    lu = s.loss_units().window(window_t0, float(s.t[-1]) + 1e-9)
    tail_loss = lu.fraction if lu.n else 0.0
    win = s.t >= window_t0
    media_s = float((s.ts[win].max() - s.ts[win].min()) / s.clock) if win.sum() > 1 else 0.0
    # the shaper's queue holds every stream of the direction: the offered load is theirs together
    fifo = ctx.packets(i, d)
    t_end = float(s.t[-1]) + 1e-9
    recv_bytes = float(fifo.size[(fifo.t >= window_t0) & (fifo.t < t_end)].sum())
    lu_all = ctx.loss(i, d)             # every stream's loss units, merged and cached
    lu_all = lu_all.window(window_t0, t_end) if lu_all is not None else None
    lost_bytes = float(lu_all.size[lu_all.lost].sum()) if lu_all is not None else 0.0
    offered = float((recv_bytes + lost_bytes) * 8 / media_s) if media_s > 0 else None
    held_back = 1.0 - rate / offered if offered else 0.0
    est.update(spacing_test=sp["test"], stretch=sp["stretch"], spacing_pvalue=p_spacing,
               queue_fit_share=sp["queue_fit_share"], queue_model_error=sp["queue_error"],
               clock_model_error=sp["clock_error"], pairs=sp["pairs"], rate_bps=rate, offered_bps=offered,
               onset_s=onset, loss_in_backlog=tail_loss)
    if rise is not None:
        est["queue_bytes"] = (rise.after - rise.before) / 1e3 * rate / 8
        before_pk = s.t < rise.onset_s
        if before_pk.sum() > 10 and rise.onset_s - s.t[0] > 1.0:
            rate_before = float(s.size[before_pk].sum() * 8 / (rise.onset_s - s.t[0]))
            est["rate_before_bps"] = rate_before
            if rate_before > 1.2 * rate:
                # ShaperProbe's depth estimate, valid if the onset is a bucket that started full running dry
                est["burst_bytes_if_bucket"] = (rate_before - rate) / 8 * (rise.onset_s - s.t[0])
    effect = float(max(held_back, 0.0))
    queue_seen = rise is not None or tail_loss >= MIN_TAIL_LOSS
    if sp["equal_sizes"]:       # one size: the sustained stretch is the backlog's sign
        backlog = held_back >= MIN_HELD_BACK and sp["stretch"] >= 1.0 / (1.0 - MIN_HELD_BACK)
    else:
        backlog = held_back >= MIN_HELD_BACK and sp["queue_fit_share"] >= MIN_QUEUE_FIT_SHARE
    detected = p_spacing < ctx.alpha and backlog and queue_seen
    if not detected and rise is not None:
        shared = _shared_queue(ctx, i, s, rise)
        if shared is not None:
            est.update(shared)
            if shared["shared_queue_pvalue"] < ctx.alpha:
                recv = s.t >= rise.onset_s
                span = float(s.t[recv][-1] - rise.onset_s) if recv.sum() > 1 else 0.0
                got = float(s.size[recv].sum() * 8 / span) if span > 0 else None
                est["rate_bps"] = got       # this stream's share of the cap
                est["rate_is_share_of_cap"] = True
                held = 1.0 - got / offered if (got and offered) else shared["loss_after"]
                return Detection(
                    kind=KIND, direction=direction, decision="detected", statistic=sp["statistic"],
                    pvalue=float(shared["shared_queue_pvalue"]), effect=float(max(held, 0.0)), estimates=clean(est),
                    evidence=f"one-way delay up {rise.after - rise.before:.0f} ms from {rise.onset_s:.1f} s "
                    f"({fmt_p(rise.pvalue)}), then {shared['loss_after']:.1%} of packets lost against "
                    f"{shared['loss_before']:.1%} before (tail drops, {fmt_p(shared['loss_increase_pvalue'])}): a "
                    f"queue overflowing at a rate cap; the stream's own spacing cannot show the cap (equal-size "
                    f"packets, or a queue shared with the call's other streams), so rate_bps is what this stream "
                    f"received, {fmt_rate(got)}",
                    reason="")
    if sp["equal_sizes"]:
        parts = [f"equal-size packets arrive {sp['stretch']:.2f}x further apart than sent, at {fmt_rate(rate)} "
                 f"(Wilcoxon {fmt_p(p_spacing)})"]
    elif p_spacing < ctx.alpha:
        parts = [f"frames arrive spaced by their size at {fmt_rate(rate)} rather than by their timestamps "
                 f"({sp['queue_fit_share']:.0%} of {sp['pairs']} pairs fit the queue better, "
                 f"Wilcoxon {fmt_p(p_spacing)})"]
    else:
        parts = [f"frames arrive spaced by their timestamps ({1 - sp['queue_fit_share']:.0%} of {sp['pairs']} pairs "
                 f"fit the sender's clock at least as well, {fmt_p(p_spacing)})"]
    if offered:
        parts.append(f"{held_back:.0%} of the offered {fmt_rate(offered)} held back")
    if rise is not None:
        parts.append(f"one-way delay up {rise.after - rise.before:.0f} ms from {rise.onset_s:.1f} s "
                     f"({fmt_p(rise.pvalue)})")
    if tail_loss:
        parts.append(f"{tail_loss:.1%} tail-dropped")
    reason = ""
    if not detected:
        if p_spacing >= ctx.alpha:
            reason = "arrivals keep the sender's spacing: no backlog at a rate cap"
            if rise is not None:
                reason += " (the delay rose without one: a path change or a queue elsewhere)"
        elif not backlog:
            reason = (f"no persistent backlog ({held_back:.0%} of the offered rate held back, "
                      f"{sp['queue_fit_share']:.0%} of pairs fit the queue)")
        else:
            reason = "spacing follows a queue but neither delay growth nor tail drops: no queue evident"
    return Detection(kind=KIND, direction=direction, decision="detected" if detected else "not_detected",
                     statistic=sp["statistic"], pvalue=p_spacing, effect=effect, estimates=clean(est),
                     evidence="; ".join(parts), reason=reason)
def start_rise(s: RtpArrays):
    """Did the one-way delay rise right at the start of the stream and stay up?

    H0: the delays of the first START_PACKETS packets are not smaller than the others' (Mann-Whitney
    U, one-sided). Returned as an onset.ChangePoint whose ``statistic`` holds the effect floor
    (max(MIN_DELAY_MS, 4 robust standard deviations of the first packets)); None if too short."""
    d = s.delay_ms
    if d is None or len(d) < 5 * START_PACKETS:
        return None
    first, rest = d[:START_PACKETS], d[START_PACKETS:]
    sigma = 1.4826 * float(np.median(np.abs(first - np.median(first))))
    p = float(stats.mannwhitneyu(rest, first, alternative="greater").pvalue)
    return ChangePoint(index=START_PACKETS, statistic=max(MIN_DELAY_MS, DELAY_SIGMAS * sigma), pvalue=p,
                       before=float(np.median(first)), after=float(np.median(rest)), n_before=START_PACKETS,
                       n_after=len(rest), onset_s=float(s.t[START_PACKETS]), alternative="increase")


def _shared_queue(ctx: DetectContext, i: int, s: RtpArrays, rise) -> dict | None:
    """A queue shared with other traffic: the stream's delay rose (rise) and losses followed.

    H0 (loss): the loss proportion after the delay rise is not larger than before (Fisher's exact,
    one-sided). Combined with the delay test as an intersection-union test: p = max of the two.
    Congestion also queues and drops; when a control flow with a loss signal shows its loss rising
    at the same time (Fisher, same split), the queue is not the call's own: None is returned."""
    lu = s.loss_units()
    b, a = lu.window(-np.inf, rise.onset_s), lu.window(rise.onset_s, np.inf)
    if a.n < 50:
        return None
    if b.n >= 20:
        table = [[a.n_lost, a.n - a.n_lost], [b.n_lost, b.n - b.n_lost]]
        p_loss = float(stats.fisher_exact(table, alternative="greater").pvalue)
    else:       # the queue filled at once: against what a healthy path loses
        p_loss = float(stats.binomtest(a.n_lost, a.n, TAIL_P0, alternative="greater").pvalue)
    if a.fraction < MIN_TAIL_LOSS:
        return None
    t1 = float(s.t[-1])
    for j in ctx.controls(i):
        cu = ctx.loss(j, ctx.inbound(j)[0])
        if cu is None:
            continue
        cb, ca = cu.window(float(s.t[0]), rise.onset_s), cu.window(rise.onset_s, t1)
        if ca.n < 50 or cb.n < 20 or ca.n_lost == 0:
            continue
        pc = stats.fisher_exact([[ca.n_lost, ca.n - ca.n_lost], [cb.n_lost, cb.n - cb.n_lost]],
                                alternative="greater").pvalue
        if pc < ctx.alpha:
            return None
    return {"loss_before": b.fraction, "loss_after": a.fraction, "loss_increase_pvalue": p_loss,
            "shared_queue_pvalue": max(p_loss, rise.pvalue)}


# ------------------------------------------------------------------------------------------ no RTP

TS_CLOCKS_HZ = (1000.0, 250.0, 100.0, 10.0)   # TCP timestamp clocks in use (RFC 7323 leaves it to the host)


def tcp_delay_rise(ctx: DetectContext, i: int, d: int, onset_s: float):
    """Did the one-way delay of a TCP direction rise at ``onset_s``? From the sender's TCP
    timestamps (TSval, RFC 7323): arrival minus TSval over its clock (the clock from the TSval
    slope, snapped to a rate in TS_CLOCKS_HZ within 15 %; else unusable). H0: the delay after the
    onset is not larger than before (Mann-Whitney, one-sided). Returns (increase ms, p) or None
    (no timestamps, unknown clock, or too few segments on either side)."""
    tcp = ctx.tcp(i, d)
    if tcp is None or tcp.n < 40:
        return None
    tsval = tcp_options(ctx.cap, tcp.rows).tsval.astype(np.float64)
    ok = tsval >= 0
    if ok.sum() < 40:
        return None
    t, ts = tcp.t[ok], np.unwrap(tsval[ok], period=2.0 ** 32)
    span = float(t[-1] - t[0])
    if span <= 0 or ts[-1] <= ts[0]:
        return None
    slope = (ts[-1] - ts[0]) / span
    hz = next((c for c in TS_CLOCKS_HZ if abs(slope / c - 1.0) <= 0.15), None)
    if hz is None:
        return None
    delay = (t - t[0]) * 1e3 - (ts - ts[0]) * 1e3 / hz
    before, after = delay[t < onset_s], delay[t >= onset_s]
    if len(before) < 10 or len(after) < 10:
        return None
    p = float(stats.mannwhitneyu(after, before, alternative="greater").pvalue)
    return float(np.median(after) - np.median(before)), p


def detect_unclocked(ctx: DetectContext, i: int, d: int) -> Detection:
    direction = dir_name(d)
    pk = ctx.packets(i, d)
    if int(ctx.ft.proto[i]) == 6:
        tcp = ctx.tcp(i, d)
        if tcp is None or tcp.n < 40:
            return Detection.inconclusive(KIND, direction, "too few TCP data segments arriving")
        t, size = tcp.t, tcp.size
    else:
        t, size = pk.t, pk.size
    if len(t) < 40:
        return Detection.inconclusive(KIND, direction, f"too few packets ({len(t)})")

    p = DirPackets(flow=i, direction=d, rows=np.zeros(0, np.int64), t=t, size=size, payload=np.zeros(0, np.int64))
    cp, bin_s = rate_onset(p, alternative="decrease", rng=ctx.rng("shape-rate", i, d))
    if cp is None:
        return Detection.inconclusive(KIND, direction, "flow too short for a rate level-shift test; no RTP "
                                      "timestamps to measure queueing delay")
    est = {"rate_onset_s": cp.onset_s, "rate_before_bps": cp.before, "rate_after_bps": cp.after,
           "rate_change_pvalue": cp.pvalue}
    drop = 1.0 - cp.after / cp.before if cp.before > 0 else 0.0
    if cp.pvalue >= ctx.alpha or drop < MIN_RATE_DROP:
        return Detection(kind=KIND, direction=direction, decision="not_detected", statistic=cp.statistic,
                         pvalue=cp.pvalue, effect=float(max(drop, 0.0)), estimates=clean(est),
                         evidence=f"received rate steady (largest fall {max(drop, 0):.0%}, {fmt_p(cp.pvalue)})",
                         reason="no level shift of the received rate")
    after = t >= cp.onset_s
    dur = float(t[after][-1] - cp.onset_s) if after.any() else 0.0
    rate = float(size[after].sum() * 8 / dur) if dur > 0 else cp.after
    est.update(rate_bps=rate, onset_s=cp.onset_s)
    gaps = np.diff(t)
    nxt = size[1:]
    a_m = after[1:] & after[:-1]
    b_m = ~after[1:]
    ideal = nxt * 8 / rate
    paced = np.abs(np.log(np.maximum(gaps, 1e-9) / ideal)) < np.log1p(PACED_TOLERANCE)
    f_a, f_b = float(paced[a_m].mean()) if a_m.any() else 0.0, float(paced[b_m].mean()) if b_m.any() else 0.0
    est.update(paced_share_after=f_a, paced_share_before=f_b)
    varied = np.ptp(nxt[a_m]) > 0.2 * np.median(nxt[a_m]) if a_m.sum() > 10 else False
    what = f"received rate fell {drop:.0%} from {fmt_rate(cp.before)} to {fmt_rate(cp.after)} at {cp.onset_s:.1f} s " \
           f"({fmt_p(cp.pvalue)})"
    rise = tcp_delay_rise(ctx, i, d, cp.onset_s) if int(ctx.ft.proto[i]) == 6 else None
    if rise is not None:
        # Reported, not decisive: congestion raises the delay too; the spacing below decides.
        est.update(delay_increase_ms=rise[0], delay_pvalue=rise[1], delay_source="tcp timestamps")
        if rise[1] < ctx.alpha and rise[0] >= MIN_DELAY_MS:
            what += f"; one-way delay (TCP timestamps) up {rise[0]:.0f} ms with it ({fmt_p(rise[1])})"
    if varied:
        r = stats.spearmanr(gaps[a_m], nxt[a_m], alternative="greater")
        est.update(gap_size_spearman=float(r.statistic), gap_size_pvalue=float(r.pvalue))
        pval = max(cp.pvalue, float(r.pvalue))          # both must hold (intersection-union test)
        ok = r.pvalue < ctx.alpha and r.statistic >= 0.5
        return Detection(kind=KIND, direction=direction, decision="detected" if ok else "not_detected",
                         statistic=float(r.statistic), pvalue=pval, effect=float(drop), estimates=clean(est),
                         evidence=what + (f"; after it, gaps grow with packet size (Spearman {r.statistic:.2f}): "
                                          f"packets leave a queue at {fmt_rate(rate)}" if ok else
                                          "; gaps do not follow packet sizes: no queue evident"),
                         reason="" if ok else "rate fell but packets are not spaced by size/rate (policing, "
                         "or the sender lowered its rate)")
    if a_m.sum() > 10 and b_m.sum() > 10:
        table = [[int(paced[a_m].sum()), int((~paced[a_m]).sum())], [int(paced[b_m].sum()), int((~paced[b_m]).sum())]]
        pf = float(stats.fisher_exact(table, alternative="greater").pvalue)
        est["paced_pvalue"] = pf
        if pf < ctx.alpha and f_a >= MIN_PACED_SHARE and int(ctx.ft.proto[i]) == 6:
            # TCP: equal-size segments evenly spaced after the fall (ACK clock through a shaper);
            # a policer makes line-rate bursts and holes instead.
            return Detection(kind=KIND, direction=direction, decision="detected", statistic=f_a - f_b,
                             pvalue=max(cp.pvalue, pf), effect=float(drop), estimates=clean(est),
                             evidence=what + f"; after it {f_a:.0%} of segments are evenly spaced at "
                             f"{fmt_rate(rate)} (before: {f_b:.0%})")
    out = Detection.inconclusive(
        KIND, direction, "the rate fell to a cap, but without RTP timestamps or varying packet sizes a shaper "
        "cannot be told from a policer or from the sender lowering its rate", suspect=True, **clean(est))
    out.evidence = what
    return out
