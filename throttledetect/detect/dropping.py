"""Selective dropping: the call's packets are lost more than the path loses other traffic.

Loss alone is not throttling: Wi-Fi, a congested uplink or a bad mobile cell lose packets of
every flow. A drop is *selective* when something shows that the loss is the call's own:

1. **Controls** (``controls``): other flows of the capture that cross the same path at the same
   time and have a loss signal of their own (RTP sequence numbers, TCP holes: context.controls).
   H0: the call flow loses packets at no higher a rate than the controls (the path's loss).
   Test: Fisher's exact test, one-sided (scipy.stats.fisher_exact), of lost/received in the
   flow against the controls pooled over the flow's span. Check: the flow's loss is at least
   twice the controls'.
2. **Onset** (``onset``): the loss starts at some point and stays. H0: the flow's bins
   (``onset_bin_s``: packets expected and lost in each) are exchangeable (no change of the loss
   probability); the split with the largest binomial likelihood ratio is searched, and its p-value
   comes from permuting the bins (maximum statistic, onset.count_change_point), so the search is
   paid for and losses bunched within a bin (bursty loss) stay bunched under the null. Checks: at least ``onset_min_s`` before and after; the step persists (the
   last third after the split keeps ``onset_persistence`` of it: a burst of congestion that ends
   is not a throttle switched on); controls with a loss signal did not step up with it; the losses do
   not come when a queue is full (policing.queue_at_losses: the frames just before them waited no
   longer than the others, significantly and by a packet's time at the flow's rate or more; a
   congested link's episodes and a shaper's tail drops step and stay too, but they drop only from
   a full buffer).
The two looks share alpha (Bonferroni: the smaller p-value doubled).
Effect: the loss in excess of the reference (the controls', or the flow's own before the onset).

When neither look is available — the call alone on the capture (or with no control that has a
loss signal) and loss steady since the start — a loss above ``lossy_path`` is ``inconclusive``
("lossy path: 2.0 % loss, nothing shows it is selective"), never ``dropping``. Loss below it
is nothing to find.

Loss signals without sequence numbers (a voice cadence's empty slots, streams/cadence.py) are
estimates: their reference is the same estimate on this host's own outbound voice, which the
network has not touched (what the estimator miscounts there, it miscounts inbound too).
"""
from __future__ import annotations

import numpy as np
from scipy import stats

from throttledetect.detect.context import DetectContext, dir_name
from throttledetect.detect.onset import count_change_point
from throttledetect.detect.detector import Detector
from throttledetect.detect.result import TOWARD_REMOTE, Detection
from throttledetect.streams import merge_loss
from throttledetect.streams.cadence import WINDOW_S

KIND = "dropping"
MIN_BIN_UNITS = 5
MAX_UNCOVERED_BYTES = 0.5     # a voice train that carries less than half the direction's bytes cannot speak for it


def no_signal(kind: str, ctx: DetectContext, i: int, d: int, test: str) -> Detection:
    """The inconclusive result of a loss test on a direction without a loss signal: why, and
    what the rate shows meanwhile (rate_step: a lasting step down, told, never decided on)."""
    from throttledetect.detect.rate_step import describe, step_down
    reason = no_signal_reason(ctx, i, d)
    step = step_down(ctx, i, d) if int(ctx.ft.proto[i]) == 17 else None     # step_down asks for its packets
    if step is None:
        return Detection.inconclusive(kind, dir_name(d), reason, test=test)
    return Detection.inconclusive(kind, dir_name(d), f"{reason}; {describe(step)}", test=test, **step)


def no_signal_reason(ctx: DetectContext, i: int, d: int) -> str:
    """Why a direction has no loss signal, in words a user can check."""
    if int(ctx.ft.proto[i]) == 6:
        return "no loss signal: too few TCP data segments"
    n = ctx.packets(i, d).n
    if n == 0:
        return "nothing arrives in this direction"
    if ctx.streams.rtp(i, d):
        return "no loss signal: RTP streams too short"
    idx = ctx.streams.srtcp(i, d)
    if idx is not None and not idx.covers_direction:
        return (f"no loss signal: no RTP sequence numbers; the RTCP packets carry a counter ({idx.describe()}), "
                f"but the other {1 - idx.byte_share:.0%} of the bytes, what a policer takes first, have none")
    cad = ctx.streams.cadence(i, d)
    if cad is not None and not cad.one_per_slot:
        return (f"no loss signal: no RTP sequence numbers (encrypted UDP), and the packets on its "
                f"{cad.period_s * 1e3:.1f} ms cadence are more than one per slot ({cad.overfill:.0%} more than "
                "its slots): a packet lost there leaves no slot empty (the grid is not the sender's clock, or "
                "other packets of the voice's size share it)")
    if cad is not None and not ctx.streams.cadence_sound(i, d):
        return (f"no loss signal: no RTP sequence numbers (encrypted UDP), and the packets keep a "
                f"{cad.period_s * 1e3:.1f} ms cadence that is never whole (at best {cad.best_window_loss:.0%} of "
                f"a {WINDOW_S:g} s window's slots empty, and no whole cadence the other way): its empty slots may "
                "be the sender's own pacing, not losses")
    return "no loss signal: no RTP sequence numbers and no voice cadence (encrypted UDP)"


def uncovered_reason(ctx: DetectContext, i: int, d: int) -> str | None:
    """Why a loss test that found nothing on the SRTCP index never clears a direction (it counts
    the RTCP, and what else was sent may all have been taken), or on a voice cadence cannot: the
    cadence counts the voice packets only, and the larger packets (video, data, on the same
    5-tuple) carry most of the bytes without a loss signal of their own. A policer takes a rate,
    so it drops the large packets first and can leave every voice slot filled. None when the
    loss signal is RTP's or TCP's, or a cadence whose voice carries at least half the bytes."""
    lu = ctx.streams.loss(i, d)
    if lu is not None and lu.source == "srtcp":
        return (f"the RTCP's own counter shows nothing ({ctx.streams.srtcp(i, d).describe()}), but it counts the "
                "RTCP only: media that a policer or a block took whole would leave a direction of RTCP alone, as a "
                "far end that sends no media does, so nothing lost on it clears nothing")
    if lu is None or lu.source != "cadence":
        return None
    cad = ctx.streams.cadence(i, d)
    size = ctx.packets(i, d).size
    total = float(size.sum())
    outside = float(size[size > cad.max_size].sum()) / total if total > 0 else 0.0
    if outside <= MAX_UNCOVERED_BYTES:
        return None
    return (f"the voice cadence ({cad.period_s * 1e3:.1f} ms, packets up to {cad.max_size:.0f} B) shows nothing, "
            f"but {outside:.0%} of this direction's bytes are larger packets (video or data) that have no loss "
            "signal: a policer drops those first")


def unless_uncovered(ctx: DetectContext, i: int, d: int, dets: list) -> list:
    """dets, with a direction's "nothing found" on a voice cadence made inconclusive where the
    cadence leaves most of the bytes out (uncovered_reason); a detection stays a detection."""
    reason = None
    for det in dets:
        if det.direction != dir_name(d) or det.toward == TOWARD_REMOTE or det.decision == "inconclusive":
            continue
        reason = reason or uncovered_reason(ctx, i, d)
        if reason is None:
            return dets
        if det.pvalue is None:
            det.decision, det.reason = "inconclusive", reason
        elif det.otherwise == "not_detected":
            det.otherwise, det.reason = "inconclusive", reason
    return dets


def control_loss(ctx: DetectContext, i: int, t0: float, t1: float):
    """The controls' pooled loss units over [t0, t1), and the flows they came from."""
    parts, used = [], []
    for j in ctx.controls(i):
        dj = ctx.toward_local(j)
        lu = ctx.streams.loss(j, dj)
        if lu is None or lu.source == "cadence":
            continue
        w = lu.window(t0, t1)
        if w.n:
            parts.append(w)
            used.append(j)
    return merge_loss(parts), used


def loss_step(units, lost, t, min_size: int, persistence: float, rng) -> dict | None:
    """The best single rise of the loss probability over bins (units expected, lost per bin, the
    bins' times t): count_change_point's split and p-value, the loss before and after it, and
    whether it persists (the last third of the bins after it keep ``persistence`` of the step: a
    burst of congestion that ends is not a throttle switched on). None without a split."""
    cp = count_change_point(units, lost, t, min_size=min_size, alternative="increase", rng=rng)
    if cp is None:
        return None
    u, lo = np.asarray(units, dtype=np.float64), np.asarray(lost, dtype=np.float64)
    k = cp.index
    before, after = lo[:k].sum() / u[:k].sum(), lo[k:].sum() / u[k:].sum()
    third = max(1, (len(u) - k) // 3)
    step = after - before
    persists = step > 0 and (lo[-third:].sum() / u[-third:].sum() - before) >= persistence * step
    return {"index": k, "pvalue": cp.pvalue, "before": float(before), "after": float(after), "effect": float(step),
            "persists": bool(persists)}


def _onset(ctx: DetectContext, i: int, loss, controls) -> dict | None:
    P = ctx.config.dropping
    t0, t1 = float(loss.t[0]), float(loss.t[-1])
    if t1 - t0 < 2 * P.onset_min_s:
        return None
    edges = np.arange(t0, t1 + P.onset_bin_s, P.onset_bin_s)
    units, lost = loss.binned(edges)
    ok = units >= MIN_BIN_UNITS
    if np.count_nonzero(ok) < 2 * int(P.onset_min_s / P.onset_bin_s):
        return None
    tb = edges[:-1][ok]
    min_bins = max(2, int(P.onset_min_s / P.onset_bin_s))
    st = loss_step(units[ok], lost[ok], tb, min_bins, P.onset_persistence, ctx.rng("drop-onset", i))
    if st is None:
        return None
    k, step = st["index"], st["effect"]
    ctrl_rose = False
    if controls is not None and controls.n:
        onset_t = float(tb[k])
        cb, ca = controls.window(t0, onset_t), controls.window(onset_t, t1 + 1)
        if cb.n >= 50 and ca.n >= 50:
            ctrl_rose = ca.fraction - cb.fraction >= 0.5 * step
    checks = {"persists": st["persists"], "controls_did_not_step": not ctrl_rose,
              "long_enough": (t1 - tb[k]) >= P.onset_min_s}
    # a dropper keeps no queue: losses that come when one is full are a queue's (a congested link's
    # overflow, a shaper's tail drops), however they step
    from throttledetect.detect.policing import queue_at_losses
    d = ctx.toward_local(i)
    pk = ctx.packets(i, d)
    span = float(pk.t[-1] - pk.t[0]) if pk.n > 1 else 0.0
    full = queue_at_losses(ctx, i, d, loss, float(pk.size.sum()) / span, float(pk.size.mean())) if span > 0 else None
    if full is not None:
        # a dropper keeps no queue at all: one packet's time at the flow's rate is a queue (a shared
        # buffer holds others' packets too, so a sparse voice flow's own count understates it)
        checks["losses_without_a_full_queue"] = not (full["p"] < ctx.alpha and full["packets"] >= 1.0)
    return {"pvalue": st["pvalue"], "onset_s": float(tb[k]), "before": st["before"], "after": st["after"],
            "effect": step, "checks": checks, "full_queue": full}


def detect(ctx: DetectContext, i: int) -> list:
    up = uplink(ctx, i)
    return unless_uncovered(ctx, i, ctx.toward_local(i), _downlink(ctx, i)) + ([up] if up is not None else [])


def _downlink(ctx: DetectContext, i: int) -> list:
    d = ctx.toward_local(i)
    direction = dir_name(d)
    P = ctx.config.dropping
    loss = ctx.streams.loss(i, d)
    if loss is None:
        return [no_signal(KIND, ctx, i, d, "loss")]
    if loss.n < P.min_units:
        return [Detection.inconclusive(KIND, direction, f"too few packets to measure loss ({loss.n} expected)",
                                       test="loss", expected=loss.n, source=loss.source)]
    est = {"loss": loss.fraction, "expected": loss.n, "lost": loss.n_lost, "loss_source": loss.source}
    what = {"rtp": "RTP sequence numbers", "tcp": "TCP sequence holes", "cadence": "empty voice slots",
            "srtcp": "SRTCP index of its RTCP packets"}.get(
        loss.source, loss.source)
    reference = 0.0
    if loss.source == "cadence":
        # the estimator's own miscount, measured on this host's outbound voice (untouched by the network)
        out = ctx.streams.cadence(i, 1 - d)
        if out is not None and out.expected >= P.min_units // 2:
            reference = out.fraction
            est["outbound_cadence_loss"] = reference
        cad = ctx.streams.cadence(i, d)
        est["cadence"] = cad.describe()
    elif loss.source == "srtcp":
        est["srtcp"] = ctx.streams.srtcp(i, d).describe()
    excess = loss.fraction - reference
    t0, t1 = float(loss.t[0]), float(loss.t[-1]) + 1e-9
    ctrl, used = control_loss(ctx, i, t0, t1)
    looks = []
    if ctrl is not None and ctrl.n >= P.min_control_units:
        table = [[loss.n_lost, loss.n - loss.n_lost], [ctrl.n_lost, ctrl.n - ctrl.n_lost]]
        p = float(stats.fisher_exact(table, alternative="greater")[1])
        eff = loss.fraction - max(ctrl.fraction, reference)
        looks.append({"test": "controls", "pvalue": p, "effect": eff,
                      "checks": {"twice_the_controls": loss.fraction >= 2 * ctrl.fraction},
                      "evidence": f"{loss.fraction:.1%} of {loss.n} expected packets lost ({what}) against "
                                  f"{ctrl.fraction:.2%} of {ctrl.n} on {len(used)} other flow"
                                  f"{'s' * (len(used) != 1)} on the same path (Fisher, p={p:.2g})",
                      "est": {"control_loss": ctrl.fraction, "control_units": ctrl.n, "control_flows": used}})
    on = _onset(ctx, i, loss, ctrl)
    if on is not None:
        looks.append({"test": "onset", "pvalue": on["pvalue"], "effect": on["effect"], "checks": on["checks"],
                      "evidence": f"loss steps from {on['before']:.1%} to {on['after']:.1%} at {on['onset_s']:.1f} s "
                                  f"({what}) and stays (permutation test of the best split, p={on['pvalue']:.2g})",
                      "est": {"onset_s": on["onset_s"], "loss_before": on["before"], "loss_after": on["after"],
                              **({"delay_rise_at_losses_ms": on["full_queue"]["rise_ms"],
                                  "p_delay_at_losses": on["full_queue"]["p"]} if on["full_queue"] else {})}})
    if not looks or loss.n_lost == 0:
        if excess <= P.lossy_path:
            return [Detection.nothing_to_find(KIND, direction, f"{loss.fraction:.1%} loss ({what})", test="loss",
                                              **est)]
        return [Detection.inconclusive(
            KIND, direction, f"lossy path: {loss.fraction:.1%} loss ({what}), nothing shows it is selective "
            "(no other flow with a loss signal to compare, loss steady since the start)", test="loss", **est)]
    m = len(looks)
    best = min(looks, key=lambda x: x["pvalue"])
    p = min(1.0, best["pvalue"] * m)
    for look in looks:             # every look's measurements (the onset too when controls decided)
        if look is best or look["pvalue"] * m < ctx.alpha:
            est.update(look["est"])
    det = Detection(kind=KIND, direction=direction, decision="not_detected", test=best["test"],
                    statistic=best["pvalue"], pvalue=p, effect=float(best["effect"]), effect_unit="excess loss",
                    checks=best["checks"], estimates=est, evidence=best["evidence"],
                    null="the flow loses no more than the path loses other traffic (controls) and no more "
                         "after any point than before it (onset)")
    if excess > P.lossy_path and best["test"] == "controls" and \
            best["est"]["control_loss"] < loss.fraction / 2:
        # the controls lost too little to explain this loss but are too few to show it selective
        det.otherwise = "inconclusive"
        det.reason = (f"{loss.fraction:.1%} loss ({what}); the other flows on the path "
                      f"({best['est']['control_units']} packets, {best['est']['control_loss']:.1%} lost) are too few "
                      "to show it is selective")
    if excess > P.lossy_path and not any(x["test"] == "controls" for x in looks):
        # only the onset could show selectivity: if it does not, the loss is unexplained, not "none"
        det.otherwise = "inconclusive"
        why = "no onset"
        if best["test"] == "onset" and best["checks"].get("losses_without_a_full_queue") is False:
            why = (f"the loss steps up at {best['est']['onset_s']:.1f} s, but each loss came when a queue was full: "
                   f"the frames just before them waited {best['est']['delay_rise_at_losses_ms']:.0f} ms longer, "
                   "as a congested link's or a shaper's tail drops do")
        det.reason = (f"lossy path: {loss.fraction:.1%} loss ({what}), nothing shows it is selective "
                      f"(no other flow with a loss signal to compare, {why})")
    return [det]


def uplink(ctx: DetectContext, i: int) -> Detection | None:
    """The uplink's loss as the far end reports it (plain RTCP receiver reports about the RTP this
    host sends: streams.reports), tested as the downlink's is without controls: H0 the loss
    probability does not change over the report intervals (count_change_point, the intervals as
    bins, the search paid for by permutation). Checks: the step persists (the last third of the
    intervals after it keeps ``onset_persistence`` of it) and lasts ``onset_min_s``. Without a
    step, loss above ``lossy_path`` is ``inconclusive`` ("lossy uplink"): the reports count the
    lost packets but do not say which, so no bucket can be fitted, and nothing here compares the
    uplink with other traffic. None when the far end reports nothing readable (SRTCP, no RTCP)."""
    rep = ctx.uplink_reports(i)
    if rep is None or rep.n == 0:
        return None
    P = ctx.config.dropping
    direction = dir_name(1 - ctx.toward_local(i))
    total, n_lost, frac = int(rep.expected.sum()), int(rep.lost.sum()), rep.fraction
    est = {"loss": frac, "expected": total, "lost": n_lost, "loss_source": "rtcp", "report_intervals": rep.n,
           "report_blocks": rep.blocks}
    what = f"the far end's RTCP receiver reports, {rep.n} intervals"
    if total < P.min_units:
        return Detection.inconclusive(KIND, direction, f"the far end reports on too few of this host's packets "
                                      f"({total})", toward=TOWARD_REMOTE, test="uplink", **est)
    span = float(np.median(rep.t1 - rep.t0))
    min_size = max(2, int(np.ceil(P.onset_min_s / max(span, 1e-3))))
    st = None
    if n_lost and rep.n >= 2 * min_size:
        st = loss_step(rep.expected, rep.lost, rep.t1, min_size, P.onset_persistence, ctx.rng("uplink-onset", i))
    lossy = (f"lossy uplink: the far end reports {frac:.1%} of this host's packets lost ({what}); nothing shows it "
             "is selective (the reports do not say which packets, so no bucket can be fitted; no step in time)")
    if st is not None:
        k, before, after = st["index"], st["before"], st["after"]
        onset = float(rep.t0[k])
        est.update(onset_s=onset, loss_before=float(before), loss_after=float(after))
        det = Detection(kind=KIND, direction=direction, decision="not_detected", toward=TOWARD_REMOTE, test="uplink",
                        statistic=st["pvalue"], pvalue=st["pvalue"], effect=st["effect"], effect_unit="excess loss",
                        checks={"persists": st["persists"], "long_enough": float(rep.t1[-1]) - onset >= P.onset_min_s},
                        estimates=est, null="the uplink's loss probability does not change over the report intervals",
                        evidence=f"the far end reports this host's packets lost at {before:.1%}, then {after:.1%} from "
                                 f"{onset:.1f} s ({what}), and it stays (permutation test of the best split, "
                                 f"p={st['pvalue']:.2g})")
        if frac > P.lossy_path:
            det.otherwise = "inconclusive"
            det.reason = lossy
        return det
    if frac <= P.lossy_path:
        return Detection.nothing_to_find(KIND, direction, f"{frac:.1%} of this host's packets lost ({what})",
                                         toward=TOWARD_REMOTE, test="uplink", **est)
    return Detection.inconclusive(KIND, direction, lossy, toward=TOWARD_REMOTE, test="uplink", **est)


DETECTOR = Detector(name="dropping", kind=KIND, params="dropping", detect=detect, roles=('media',))
