"""Blocking of a call in progress: its media stops arriving for good while this host goes on.

For one media flow, seen on the local host ("inbound" = arriving at it):

1. **Silence while the host keeps sending** (``silence``): the inbound packets of the flow stop
   while the local side keeps sending (in this flow, or in another flow of the same call when
   nothing of the call arrives anywhere any more) for at least ``min_silence_s``, in the median
   whole second of the ``keeps_sending_window_s`` after the first (HANGUP_TAIL_S) at no less than
   ``keeps_sending_share`` of the packet rate it had in the RECENT_S before, and at least
   ``min_media_pps`` (a blocked app keeps sending its media until it gives up, ICE consent after
   ~30 s, and retries more slowly then), or in at least RESUMED_SECONDS whole seconds later in
   the silence (a host that was listening, in a one-way phase of the call, when the block began
   sends only RTCP at first and takes up its media again when it talks: a host whose call ended
   never does). A host that sent fewer than ``min_media_pps`` before the silence (keepalives,
   RTCP) and never sends media in it is ``inconclusive``: a block and a hang-up look the same.
   A hang-up stops the local side too within a second; only a host that then falls silent
   (at most TAIL_PACKETS packets after HANGUP_TAIL_S, or after a pause of OUTBOUND_PAUSE_S) is
   cleared (``none``). One that slows to a trickle and keeps it up (more than TAIL_PACKETS
   packets after HANGUP_TAIL_S, over ``min_silence_s`` or more, or after such a pause) is
   ``inconclusive``: a hang-up followed by RTCP or keepalives, and a block that met a host which
   stopped talking (it listens for an answer that never comes, sends RTCP and retries), look the
   same from here;
   a mute or hold keeps the far end's RTCP, STUN consent or comfort noise arriving, so the flow
   is not silent; a capture that ends stops both sides. When another flow of the call, or of
   the same local socket (a relay -> peer switch, whatever the new leg's label), still
   receives, the call moved there (ICE switched pairs): not blocking.
   H0: the inbound packets keep arriving as they did before. p-value: when every whole second
   of the flow's active period had packets, the Poisson probability of no packet in the silence
   at a low quantile of the per-second counts (a rate the flow always kept up); else the chance
   of a gap that long from the tail of the flow's own gaps (peaks over threshold: gap_tail_p);
   with too few gaps for that, the rank of the silence among them, (1 + #gaps >= silence) /
   (1 + #gaps), valid whatever the arrival process as long as gaps are exchangeable, or Markov's
   bound P(gap >= silence) <= mean gap / silence, valid for any gap distribution with the flow's
   mean gap (a call blocked 2 s into its media has twenty gaps: no rank can fall below 1/21, but a
   silence hundreds of times its mean gap is beyond any of them); the smaller of the two, doubled
   (Bonferroni).
2. **ICMP destination unreachable** from a router on the path (not from the remote host: a
   finished peer-to-peer call or ICE probing of a stale candidate produce those), after which
   nothing arrives: direct evidence, no p-value.

A one-way stream (this host sends nothing in the call) that stops long before the capture ends
is ``inconclusive``: from here a block and a hang-up look the same.
Effect: 1 - longest earlier gap / silence (0.5: the silence is twice the longest gap before it).
Call-setup blocking (requests never answered) is setup.py.
"""
from __future__ import annotations

import numpy as np

from throttledetect.detect.context import DetectContext, dir_name
from throttledetect.detect.detector import Detector
from throttledetect.detect.result import Detection

KIND = "blocking"
RECENT_S = 5.0              # the host's sending rate is taken over this long before the silence
HANGUP_TAIL_S = 1.0         # what a host sends in this long after the far end went quiet may be its call's tail
NAME = "silence"
RATE_QUANTILE = 0.1
OUTBOUND_PAUSE_S = 10.0     # the local side's activity ends at its first pause this long
TAIL_MIN = 5                # exceedances needed to fit the tail of the gaps
MOVED_MIN_PACKETS = 20      # media packets another flow of the call receives after the silence: it moved
RESUMED_SECONDS = 3         # whole seconds at media rate in the silence: the host is still in its call
TAIL_PACKETS = 2            # a hang-up's last packets after HANGUP_TAIL_S (an RTCP BYE, its repeat); more is a trickle


def _media_after(ctx: DetectContext, j: int, t0: float) -> int:
    """Non-STUN packets flow j received after t0."""
    d = ctx.toward_local(j)
    p = ctx.packets(j, d)
    st = ctx.stun(j)
    n_stun = int(np.count_nonzero((st.direction == d) & (st.t > t0)))
    return int(np.count_nonzero(p.t > t0)) - n_stun


def gap_tail_p(gaps: np.ndarray, silence: float) -> float | None:
    """P(a gap at least as long as the silence) from the flow's own gaps, peaks over threshold:
    above their 90th percentile u the gaps' excesses are taken as exponential with their mean
    excess b (the generalised Pareto tail of shape 0), so P = P(gap > u) exp(-(silence - u) / b).
    Heavy-tailed gaps (DTX pauses, talk spurts) give a large b and a modest p; None with fewer
    than TAIL_MIN exceedances."""
    if len(gaps) < 10:
        return None
    u = float(np.quantile(gaps, 0.9))
    exc = gaps[gaps > u] - u
    if len(exc) < TAIL_MIN or silence <= u:
        return None
    b = float(exc.mean())
    if b <= 0:
        return None
    return float(len(exc) / len(gaps) * np.exp(-(silence - u) / b))


def silence_pvalue(t: np.ndarray, silence: float) -> tuple[float, str, float]:
    """P(no inbound packet for `silence` seconds) given the flow's arrivals t before it (see the
    module docstring, 1.). Returns (p, how it was computed, the per-second rate kept)."""
    gaps = np.diff(t)
    dur = float(t[-1] - t[0])
    nb = int(np.floor(dur))
    if nb >= 3:
        counts = np.bincount(np.floor(t - t[0]).astype(np.int64), minlength=nb + 1)[:nb]
        lam = float(np.quantile(counts, RATE_QUANTILE))
    else:
        lam = (len(t) - 1) / dur if dur > 0 else 0.0
    if lam >= 1.0:
        return float(np.exp(-lam * silence)), f"Poisson at {lam:.0f} packets/s, the rate every second kept", lam
    tail = gap_tail_p(gaps, silence)
    if tail is not None:
        return tail, f"exponential tail of its {len(gaps)} earlier gaps", lam
    rank = float((1 + np.count_nonzero(gaps >= silence)) / (1 + len(gaps)))
    markov = float(gaps.mean() / silence) if len(gaps) else 1.0
    how = (f"rank among its {len(gaps)} earlier gaps" if rank <= markov else
           f"Markov's bound: mean gap {gaps.mean():.2f} s of {len(gaps)} earlier gaps / silence")
    return min(1.0, 2.0 * min(rank, markov)), how + ", doubled for the choice", lam


def outbound_times(ctx: DetectContext, i: int, last_in: float) -> tuple[np.ndarray, bool, np.ndarray]:
    """Send times of the local side in flow i and, when nothing of the call arrives anywhere after
    flow i fell silent, in the call's other flows (its audio when the video died, its STUN retries,
    a new relay it tries) — up to the first pause longer than OUTBOUND_PAUSE_S. Returns (times,
    whether another flow of the call still receives: the call moved, the send times after that
    pause: the host came back)."""
    P = ctx.config.blocking
    call = ctx.call_of(i)
    others = [j for j in (call.flows if call else []) if j != i]
    # the call moved when another of its flows, or another flow of the same local socket (a
    # relay -> peer switch whose new leg got another label), goes on receiving media (not just
    # STUN answers)
    moved_to = list(dict.fromkeys(others + ctx.socket_siblings(i)))
    alive_elsewhere = any(_media_after(ctx, j, last_in + P.keeps_sending_window_s) >= MOVED_MIN_PACKETS
                          for j in moved_to)
    parts = [ctx.packets(i, 1 - ctx.toward_local(i)).t]
    if not alive_elsewhere:
        parts += [ctx.packets(j, 1 - ctx.toward_local(j)).t for j in others]
    t = np.sort(np.concatenate(parts))
    after = t[t > last_in]
    later = after[:0]
    if len(after):
        cut = np.flatnonzero(np.diff(np.r_[last_in, after]) > OUTBOUND_PAUSE_S)
        if len(cut):
            after, later = after[:cut[0]], after[cut[0]:]
    return np.r_[t[t <= last_in], after], alive_elsewhere, later


def detect(ctx: DetectContext, i: int) -> list:
    d = ctx.toward_local(i)
    direction = dir_name(d)
    P = ctx.config.blocking
    p_in = ctx.packets(i, d)
    p_out = ctx.packets(i, 1 - d)
    icmp = ctx.icmp_unreachable().get(i, [])
    est: dict = {}
    if icmp:
        first = min(x[0] for x in icmp)
        after = int(np.count_nonzero(p_in.t > first))
        from_path = [x for x in icmp if not x[3]]
        est.update(icmp_unreachable=len(icmp), icmp_first_s=first, icmp_code=int(icmp[0][2]),
                   icmp_from_path=bool(from_path), inbound_after_icmp=after)
        if after == 0 and from_path:
            return [Detection(kind=KIND, direction=direction, decision="detected", test="icmp",
                              estimates={**est, "onset_s": first},
                              evidence=f"{len(icmp)} ICMP destination unreachable (code {est['icmp_code']}) for "
                                       f"this flow from a router on the path at {first:.1f} s; nothing arrived "
                                       "after it")]
    if p_in.n < P.min_active_packets:
        # too little ever arrived to speak of a stop: the call-setup test (setup.py) judges this flow
        return [Detection.inconclusive(KIND, direction, f"only {p_in.n} packets arrived: judged as call setup",
                                       test=NAME, required=False, inbound_packets=p_in.n)]
    last_in = float(p_in.t[-1])
    if p_out.n == 0 and not (ctx.call_of(i) and len(ctx.call_of(i).flows) > 1):
        rest = ctx.t_end - last_in
        if rest >= P.min_silence_s:
            return [Detection.inconclusive(
                KIND, direction, f"one-way stream: inbound stops at {last_in:.1f} s, {rest:.0f} s before the "
                "capture ends, and this host sends nothing in the call to tell a hang-up from a block",
                test=NAME, inbound_last_s=last_in, capture_goes_on_s=rest)]
        return [Detection.nothing_to_find(KIND, direction, "inbound media lasts until the capture ends", test=NAME)]
    t_out, moved, came_back = outbound_times(ctx, i, last_in)
    after_out = t_out > last_in
    silence = float(t_out[-1] - last_in) if after_out.any() else 0.0
    first_in = float(p_in.t[0])
    # The host's rate just before the silence, not over the whole call: a host whose own media
    # changed earlier (video off, a one-way phase) is compared with what it was doing then.
    b0 = max(first_in, last_in - RECENT_S)
    before_rate = np.count_nonzero((t_out >= b0) & (t_out <= last_in)) / max(last_in - b0, 1e-3)
    after_rate = np.count_nonzero(after_out) / silence if silence > 0 else 0.0
    # Does this host go on sending its media once nothing arrives? A blocked app does (until it
    # gives up: ICE consent fails after ~30 s); one whose call ended sends its last frames and then
    # keepalives. The first second after the silence begins is skipped: it holds a hang-up's tail.
    # The median whole second of the next few counts, so that a pause of the host's own (a talk
    # spurt's end, an encoder restart) does not hide that it went on, and a keepalive or two (a
    # hang-up's trickle) does not pass for media.
    w0 = last_in + HANGUP_TAIL_S
    # packets this host sent in each whole second of the silence after the first
    n_sec = int(max(silence - HANGUP_TAIL_S, 0.0))
    per_sec = np.bincount(np.floor(t_out[(t_out > w0) & (t_out < w0 + n_sec)] - w0).astype(np.int64),
                          minlength=n_sec)[:n_sec]
    early = min(max(silence - HANGUP_TAIL_S, 0.0), P.keeps_sending_window_s)
    whole = int(early)
    if whole >= 1:
        early_rate = float(np.median(per_sec[:whole]))
    else:
        early_rate = np.count_nonzero((t_out > w0) & (t_out <= w0 + early)) / early if early > 0 else 0.0
    media_rate = max(P.keeps_sending_share * before_rate, P.min_media_pps)
    # ... or does it send its media later in the silence, for several whole seconds? (it was
    # listening when the block began, and talks again; a hang-up's keepalives never reach this)
    media_seconds = int(np.count_nonzero(per_sec >= media_rate))
    resumed = media_seconds >= RESUMED_SECONDS
    kept = (early_rate >= media_rate or resumed) and after_rate > 0
    est.update(inbound_last_s=last_in, outbound_after=int(np.count_nonzero(after_out)), silence_s=silence,
               outbound_pps_before=before_rate, outbound_pps_after=after_rate,
               outbound_media_seconds=media_seconds)
    # what the host sends after the hang-up tail: a hang-up leaves at most its last packets there
    trickle = int(np.count_nonzero(t_out > w0)) + len(came_back)
    est.update(outbound_after_pause=len(came_back))
    if silence < P.min_silence_s and len(came_back) <= TAIL_PACKETS:
        return [Detection.nothing_to_find(KIND, direction, "packets arrive for as long as this host sends",
                                          test=NAME, **est)]
    if silence < P.min_silence_s and not moved:
        # the host paused, then sent again into a silence that had not ended: its call had not ended
        # either, or it was a new one; a block and a finished call look the same from here
        return [Detection.inconclusive(
            KIND, direction, f"inbound stops at {last_in:.1f} s; this host pauses and sends {len(came_back)} more "
            f"packets from {float(came_back[0]):.1f} s to {float(came_back[-1]):.1f} s while nothing arrives: "
            "from the capture a block and a call that ended look the same", test=NAME, **est)]
    if before_rate < P.min_media_pps and not moved and not resumed:
        return [Detection.inconclusive(
            KIND, direction, f"inbound stops at {last_in:.1f} s, but this host sent only {before_rate:.1f} packets/s "
            f"before it (keepalives, RTCP): from the capture a block and a hang-up look the same",
            test=NAME, **est)]
    if moved:
        return [Detection.nothing_to_find(KIND, direction, "the call moved to another flow, which still receives",
                                          test=NAME, **est)]
    if not kept and trickle > TAIL_PACKETS:
        return [Detection.inconclusive(
            KIND, direction, f"inbound stops at {last_in:.1f} s; this host slows from {before_rate:.1f} packets/s to a "
            f"trickle but goes on sending ({trickle} packets over {silence:.0f} s"
            + (" and again after a pause" if len(came_back) else "") + "): a hang-up followed by RTCP or "
            "keepalives and a block of a host that stopped talking look the same from the capture",
            test=NAME, **est)]
    if not kept:
        return [Detection.nothing_to_find(
            KIND, direction, f"inbound stops at {last_in:.1f} s and this host slows to {early_rate:.1f} packets/s "
            f"(from {before_rate:.1f}) and " + (f"sends media in only {media_seconds} whole second(s) after it"
                                                if media_seconds else "never sends media again")
            + ": the call ended (hang-up), not a block", test=NAME, **est)]
    t = p_in.t
    gaps = np.diff(t)
    longest = float(gaps.max()) if len(gaps) else 0.0
    p, how, lam = silence_pvalue(t, silence)
    effect = float(max(0.0, 1.0 - longest / silence)) if silence > 0 else 0.0
    est.update(onset_s=last_in, longest_earlier_gap_s=longest, inbound_rate_low_pps=lam)
    return [Detection(
        kind=KIND, direction=direction, decision="not_detected", test=NAME, statistic=silence, pvalue=p,
        effect=effect, effect_unit="share of the silence beyond the longest earlier gap", checks={"longer_than_any_gap": silence > longest},
        estimates=est, null="inbound packets keep arriving as before",
        evidence=f"nothing arrives after {last_in:.1f} s while this host sends {est['outbound_after']} more packets "
                 f"over {silence:.1f} s at {after_rate:.1f}/s (before: {before_rate:.1f}/s; {media_seconds} whole "
                 f"seconds at {media_rate:.0f}/s or more); the longest earlier "
                 f"gap was {longest:.2f} s ({how}, p={p:.2g})")]


DETECTOR = Detector(name="blocking", kind=KIND, params="blocking", detect=detect, roles=('media',))
