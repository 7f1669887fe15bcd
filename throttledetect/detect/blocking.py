"""Blocking: a call that cannot be set up, or whose media stops for good while the host goes on.

Signs, for one call flow (capture on the local host; "inbound" = arriving at it):

1. STUN/ICE requests without answers (``stun``). STUN transactions (RFC 8489: a request and its
   retransmissions share one transaction ID) sent by the local side, matched by transaction ID to
   the success/error responses that came back. H0: the remote side is reachable and answers each
   transaction with probability at least STUN_ANSWER_RATE. Exact binomial tail
   (scipy.stats.binom.cdf) of the answered count. Transactions started in the last STUN_GRACE_S
   of the capture are left out (their answer may come after it ended).
   Why 0.8: a reachable STUN/TURN server or ICE peer answers essentially every transaction (the
   client retransmits a request up to 7 times over ~40 s, RFC 8489 6.2.1, so path loss alone
   hardly ever leaves a transaction unanswered); 0.8 leaves room for servers that rate-limit and
   for checks that cross. ICE also probes candidate pairs that fail by design (a peer's address
   unreachable from here) while another pair carries the call: so unanswered transactions count
   as blocking only when no flow of the app carries media (the setup failed), or when the same
   flow had answers before (it was reachable, then was not).
2. Media that dies (``silence``): the inbound packets of the flow stop while the local side keeps
   sending (in this flow or another call flow of the same label) for at least MIN_SILENCE_S more,
   at no less than KEEPS_SENDING_SHARE of its pace while packets arrived, over the whole silence
   or its first KEEPS_SENDING_WINDOW_S (the app still sends media; after a normal hang-up both directions stop together, and what follows, STUN consent or
   RTCP, is sparse). When another flow of the call still receives, the call moved there (ICE
   switched pairs): not blocking. H0: the inbound packets keep arriving as they did before. p-value: when every whole second of the flow's active period had packets, the Poisson
   probability of no packet in the silence at a low quantile (RATE_QUANTILE) of the per-second
   counts (a rate the flow always kept up, so DTX-thinned seconds do not inflate it); when it had
   pauses of a second or more (DTX without comfort noise, talk spurts), the rank of the silence
   among the flow's own earlier gaps, (1 + #gaps >= silence) / (1 + #gaps), which holds whatever
   the arrival process as long as gaps are exchangeable (its floor is 1 / (1 + #gaps)).
3. ICMP destination unreachable (``icmp``): ICMP type 3 / ICMPv6 type 1 in the same capture whose
   quoted header names this flow's 5-tuple. Direct evidence, no p-value: "detected" when the flow
   received nothing after the first such message and the message is the network's refusal: sent
   by a third address (a router or middlebox on the path). Unreachables from the remote host
   itself (port unreachable, or its own firewall's "administratively prohibited") are what a
   finished peer-to-peer call or ICE probing of a stale candidate produce: reported, not counted.
4. Setup without media (``setup``): the flow's app has STUN or signalling in the capture but no
   flow of that app carries media. Reported; alone it is not blocking (a rejected or unanswered
   call looks the same), it confirms 1 or 3.

The flow's p-value is the smallest of the tested components' times their number (Bonferroni).
Effect: the share of the local side's transactions left unanswered (STUN), or the silence in
units of the flow's longest earlier gap (silence); whichever decided.
"""
from __future__ import annotations

import numpy as np
from scipy import stats

from throttledetect.detect.common import DetectContext, clean, dir_name, fmt_p
from throttledetect.detect.result import Detection

KIND = "blocking"

STUN_ANSWER_RATE = 0.8      # H0: at least this share of transactions answered (see the docstring)
STUN_GRACE_S = 5.0          # transactions this close to the capture's end are not judged
MIN_STUN_TRANSACTIONS = 5   # a setup the capture may have cut short (a few probes) is not judged
MIN_SILENCE_S = 5.0         # the local side kept sending this long after the last inbound packet
KEEPS_SENDING_SHARE = 0.5   # ... at least half the packet rate it sent at before (a hang-up stops it),
KEEPS_SENDING_WINDOW_S = 3.0   # over the whole silence or its first seconds; and another flow of the
#                                call receiving this long after the silence began: the call moved
OUTBOUND_PAUSE_S = 10.0     # outbound activity ends at the first pause this long
MIN_ACTIVE_PACKETS = 20     # inbound packets before the silence (else there is no "before")
MIN_MEDIA_PACKETS = 50      # inbound non-STUN packets that make a flow a media flow
RATE_QUANTILE = 0.1         # the low quantile of per-second inbound counts used for the Poisson rate
STUN_COOKIE = np.array([0x21, 0x12, 0xA4, 0x42], dtype=np.uint8)


def detect(ctx: DetectContext, i: int) -> list[Detection]:
    return [detect_flow(ctx, i, d) for d in ctx.inbound(i)]


# ------------------------------------------------------------------------------------------ parts

def stun_rows(ctx: DetectContext, i: int):
    """STUN messages of flow i (RFC 8489 header with the magic cookie, length matching the datagram):
    (rows, direction, class, transaction id as bytes)."""
    rows = ctx.ft.packet_indices(i)
    pk = ctx.cap.packets
    pre = pk.prefix[rows]
    if pre.shape[1] < 20 or len(rows) == 0:
        return rows[:0], np.zeros(0, np.int64), np.zeros(0, np.int64), []
    mtype = (pre[:, 0].astype(np.int64) << 8) | pre[:, 1]
    length = (pre[:, 2].astype(np.int64) << 8) | pre[:, 3]
    ok = ((pre[:, 0] & 0xC0) == 0) & np.all(pre[:, 4:8] == STUN_COOKIE, axis=1) & \
        (length + 20 == pk.payload_wirelen[rows].astype(np.int64)) & ((length & 3) == 0) & \
        ((mtype & 0x3EEF) <= 0x00C)
    rows = rows[ok]
    cls = ((mtype[ok] >> 7) & 2) | ((mtype[ok] >> 4) & 1)
    tids = [bytes(r) for r in pre[ok, 8:20]]   # one per STUN message (a few per call)
    return rows, ctx.ft.dir_of[rows].astype(np.int64), cls, tids


def stun_test(ctx: DetectContext, i: int, d_in: int) -> dict | None:
    rows, dirs, cls, tids = stun_rows(ctx, i)
    if len(rows) == 0:
        return None
    t = (ctx.cap.packets.ts_ns[rows].astype(np.int64) - ctx.t0_ns) / 1e9
    out_dir = 1 - d_in
    req = (dirs == out_dir) & (cls == 0)
    resp = (dirs == d_in) & ((cls == 2) | (cls == 3))
    first_sent: dict = {}
    for k in np.flatnonzero(req):              # per STUN message
        first_sent.setdefault(tids[k], t[k])
    answered = {tids[k] for k in np.flatnonzero(resp)}
    cutoff = ctx.t_end - STUN_GRACE_S
    judged = [tid for tid, ts in first_sent.items() if ts <= cutoff or tid in answered]
    n = len(judged)
    k = sum(1 for tid in judged if tid in answered)
    remote_req = int(np.count_nonzero((dirs == d_in) & (cls == 0)))
    res = {"stun_transactions": n, "stun_answered": k, "stun_requests_from_remote": remote_req}
    if n >= MIN_STUN_TRANSACTIONS:
        res["stun_pvalue"] = float(stats.binom.cdf(k, n, STUN_ANSWER_RATE))
        res["stun_unanswered_share"] = 1.0 - k / n
        unanswered = [first_sent[tid] for tid in judged if tid not in answered]
        if unanswered:
            first_un = float(min(unanswered))
            res["stun_first_unanswered_s"] = first_un
            res["stun_answered_before"] = any(first_sent[tid] < first_un for tid in judged if tid in answered)
    return res


def outbound_times(ctx: DetectContext, i: int, last_in: float) -> np.ndarray:
    """Send times of the local side in flow i and, when nothing of the call arrives anywhere after
    flow i fell silent, in the other call flows of its label active by then (the app still working
    on the call: its audio when the video died, its STUN retries ...), up to the first pause longer
    than OUTBOUND_PAUSE_S after last_in. When another flow of the label still receives, the call
    moved there (ICE switched pairs, a new relay): only flow i's own sending counts."""
    s0, _ = ctx.flow_span(i)
    others = []
    for j in ctx.same_label(i).tolist():          # the call's flows (a few)
        if j == i or not ctx.is_call(j):
            continue
        j0, j1 = ctx.flow_span(j)
        if j1 < s0 or j0 > last_in + OUTBOUND_PAUSE_S:
            continue
        others.append(j)
    alive_elsewhere = any(np.any(ctx.packets(j, ctx.inbound(j)[0]).t > last_in + KEEPS_SENDING_WINDOW_S)
                          for j in others)
    parts = [ctx.packets(i, 1 - ctx.inbound(i)[0]).t]
    if not alive_elsewhere:
        parts += [ctx.packets(j, 1 - ctx.inbound(j)[0]).t for j in others]
    t = np.sort(np.concatenate(parts)) if parts else np.zeros(0)
    after = t[t > last_in]
    if len(after):
        gaps = np.diff(np.r_[last_in, after])
        cut = np.flatnonzero(gaps > OUTBOUND_PAUSE_S)
        if len(cut):
            after = after[:cut[0]]
    return np.r_[t[t <= last_in], after]


def silence_test(ctx: DetectContext, i: int, d_in: int) -> dict | None:
    p_in = ctx.packets(i, d_in)
    if p_in.n < MIN_ACTIVE_PACKETS:
        return None
    last_in = float(p_in.t[-1])
    t_out = outbound_times(ctx, i, last_in)
    if len(t_out) == 0:
        return None
    after_out = t_out > last_in
    last_out = float(t_out[-1])
    silence = last_out - last_in
    # did the local side keep sending at its pace? (a hang-up stops it; keepalives are sparse)
    first_in = float(p_in.t[0])
    span_before = max(last_in - first_in, 1e-3)
    before_rate = np.count_nonzero((t_out >= first_in) & (t_out <= last_in)) / span_before
    after_rate = np.count_nonzero(after_out) / silence if silence > 0 else 0.0
    early = min(silence, KEEPS_SENDING_WINDOW_S)
    early_rate = np.count_nonzero(after_out & (t_out <= last_in + early)) / early if early > 0 else 0.0
    # at its pace over the whole silence (bursty senders), or over its first seconds (an app that
    # gives up the media after a while and only retries STUN)
    kept = max(after_rate, early_rate) >= KEEPS_SENDING_SHARE * before_rate and after_rate > 0
    res = {"inbound_last_s": last_in, "outbound_after": int(np.count_nonzero(after_out)), "silence_s": silence,
           "outbound_pps_before": before_rate, "outbound_pps_after": after_rate, "outbound_pps_early": early_rate}
    if silence < MIN_SILENCE_S or np.count_nonzero(after_out) < 3 or not kept:
        return res
    t = p_in.t
    gaps = np.diff(t)
    dur = float(t[-1] - t[0])
    nb = int(np.floor(dur))
    if nb >= 3:
        counts = np.bincount(np.floor(t - t[0]).astype(np.int64), minlength=nb + 1)[:nb]
        lam = float(np.quantile(counts, RATE_QUANTILE))
    else:
        lam = (p_in.n - 1) / dur if dur > 0 else 0.0
    p_pois = float(np.exp(-lam * silence)) if lam > 0 else 1.0
    p_emp = float((1 + np.count_nonzero(gaps >= silence)) / (1 + len(gaps)))
    longest = float(gaps.max()) if len(gaps) else 0.0
    # Poisson at the low-quantile rate when every second had packets; else (pauses of a second or
    # more: DTX, talk spurts) only the distribution-free rank among the flow's own gaps.
    p_sil = p_pois if lam >= 1.0 else p_emp
    res.update(silence_pvalue=p_sil, silence_poisson_p=p_pois, silence_rank_p=p_emp,
               inbound_rate_low_pps=lam, longest_earlier_gap_s=longest,
               silence_ratio=silence / longest if longest > 0 else float("inf"))
    return res


def icmp_unreachable(ctx: DetectContext) -> dict:
    """flow -> [(time s, icmp type, code, sent by the remote host itself, 1|58)] for ICMP/ICMPv6
    destination-unreachable messages whose quoted packet is one of this capture's TCP/UDP flows
    (matched on the exact 5-tuple)."""
    key = ("icmp_unreach",)
    if key in ctx._cache:
        return ctx._cache[key]
    pk = ctx.cap.packets
    out: dict = {}
    rows = np.flatnonzero(((pk.proto == 1) | (pk.proto == 58)) & (pk.payload_off >= 0) & (pk.payload_len >= 8))
    if len(rows):
        pre = pk.prefix[rows]
        unreach = ((pk.proto[rows] == 1) & (pre[:, 0] == 3)) | ((pk.proto[rows] == 58) & (pre[:, 0] == 1))
        rows = rows[unreach]
    if len(rows):
        index = {}
        for f in range(len(ctx.ft)):                # one dict entry per flow
            if int(ctx.ft.proto[f]) not in (6, 17):
                continue
            a = (int(ctx.ft.a_hi[f]), int(ctx.ft.a_lo[f]), int(ctx.ft.a_port[f]))
            b = (int(ctx.ft.b_hi[f]), int(ctx.ft.b_lo[f]), int(ctx.ft.b_port[f]))
            index[(int(ctx.ft.proto[f]),) + a + b] = f
            index[(int(ctx.ft.proto[f]),) + b + a] = f
        for r in rows.tolist():                    # ICMP errors are few
            q = _quoted_tuple(ctx.cap.payload(r))
            if q is None or q not in index:
                continue
            pl = ctx.cap.payload(r)
            from_remote = (int(pk.src_hi[r]), int(pk.src_lo[r])) == (q[4], q[5])   # sent by the quoted destination
            out.setdefault(index[q], []).append(((int(pk.ts_ns[r]) - ctx.t0_ns) / 1e9, pl[0], pl[1], from_remote,
                                                 int(pk.proto[r])))
    ctx._cache[key] = out
    return out


def _quoted_tuple(msg: bytes):
    """(proto, src_hi, src_lo, sport, dst_hi, dst_lo, dport) of the packet quoted in an ICMP error."""
    q = msg[8:]
    if len(q) < 1:
        return None
    ver = q[0] >> 4
    if ver == 4:
        ihl = (q[0] & 0x0F) * 4
        if len(q) < ihl + 4 or ihl < 20:
            return None
        proto = q[9]
        src, dst = int.from_bytes(q[12:16], "big"), int.from_bytes(q[16:20], "big")
        src_hi, src_lo = 0, (0xFFFF << 32) | src
        dst_hi, dst_lo = 0, (0xFFFF << 32) | dst
        l4 = q[ihl:]
    elif ver == 6:
        if len(q) < 44:
            return None
        proto = q[6]
        src, dst = int.from_bytes(q[8:24], "big"), int.from_bytes(q[24:40], "big")
        src_hi, src_lo = src >> 64, src & 0xFFFFFFFFFFFFFFFF
        dst_hi, dst_lo = dst >> 64, dst & 0xFFFFFFFFFFFFFFFF
        l4 = q[40:]
    else:
        return None
    if proto not in (6, 17) or len(l4) < 4:
        return None
    sport, dport = int.from_bytes(l4[0:2], "big"), int.from_bytes(l4[2:4], "big")
    return (proto, src_hi, src_lo, sport, dst_hi, dst_lo, dport)


def setup_without_media(ctx: DetectContext, i: int) -> dict:
    """Does any flow with flow i's label carry media toward the local side?"""
    key = ("media_of_label", ctx.label(i))
    if key not in ctx._cache:
        media = []
        for j in ctx.same_label(i).tolist():      # the app's flows
            d = ctx.inbound(j)[0]
            rtp = sum(s.n for s in ctx.rtp(j, d))
            pk = ctx.packets(j, d)
            big = int(np.count_nonzero(pk.payload >= 60))
            if rtp >= MIN_MEDIA_PACKETS or big >= MIN_MEDIA_PACKETS:
                media.append(j)
        ctx._cache[key] = media
    return {"media_flows_of_app": len(ctx._cache[key])}


# ------------------------------------------------------------------------------------------ detector

def detect_flow(ctx: DetectContext, i: int, d: int) -> Detection:
    direction = dir_name(d)
    est: dict = {}
    parts, pvals = [], {}
    st = stun_test(ctx, i, d)
    if st:
        est.update(st)
        if "stun_pvalue" in st:
            pvals["stun"] = st["stun_pvalue"]
    si = silence_test(ctx, i, d)
    if si:
        est.update(si)
        if "silence_pvalue" in si:
            pvals["silence"] = si["silence_pvalue"]
    icmp = icmp_unreachable(ctx).get(i, [])
    p_in = ctx.packets(i, d)
    icmp_dead = False
    est.update(setup_without_media(ctx, i))
    no_media = est["media_flows_of_app"] == 0
    if icmp:
        first = min(x[0] for x in icmp)
        after = int(np.count_nonzero(p_in.t > first))
        from_path = [x for x in icmp if not x[3]]
        icmp_dead = after == 0 and bool(from_path)
        est.update(icmp_unreachable=len(icmp), icmp_first_s=first, icmp_code=int(icmp[0][2]),
                   icmp_from_path=any(not x[3] for x in icmp), inbound_after_icmp=after)
    ice_normal = False
    if "stun" in pvals and not no_media and not st.get("stun_answered_before") \
            and st["stun_answered"] < st["stun_transactions"]:
        # other flows of the app carry the call: failing candidate pairs are ICE at work
        ice_normal = True
        del pvals["stun"]

    if not pvals and not icmp and not ice_normal:
        why = []
        if p_in.n < MIN_ACTIVE_PACKETS and not st:
            why.append(f"only {p_in.n} inbound packets and no STUN")
        if si is not None and si.get("silence_s", 0) < MIN_SILENCE_S:
            why.append("inbound traffic lasts as long as the outbound")
        if si is None and p_in.n >= MIN_ACTIVE_PACKETS:
            why.append("no outbound packets to compare with")
            # A one-way stream (a receive-only leg, an announcement) that stops long before the
            # capture does: a block and a hang-up look the same from here, but the stop is worth a look.
            rest = float(ctx.t_end - p_in.t[-1])
            dur = float(p_in.t[-1] - p_in.t[0])
            if rest >= MIN_SILENCE_S and dur > 0:
                lam = (p_in.n - 1) / dur
                p_stop = float(np.exp(-lam * rest))
                est.update(inbound_last_s=float(p_in.t[-1]), capture_goes_on_s=rest, silence_poisson_p=p_stop)
                if p_stop < ctx.alpha:
                    est["suspect"] = True
                    why[-1] = (f"inbound media stops at {p_in.t[-1]:.1f} s, {rest:.0f} s before the capture ends, "
                               "and this host sends nothing in the call to tell a hang-up from a block (one-way "
                               "stream)")
        if st is not None and "stun_pvalue" not in st:
            why.append(f"{st['stun_transactions']} STUN transaction(s) only")
        if p_in.n >= MIN_ACTIVE_PACKETS and si is not None and si.get("silence_s", 0) < MIN_SILENCE_S:
            return Detection(kind=KIND, direction=direction, decision="not_detected", pvalue=None, effect=0.0,
                             estimates=clean(est), evidence="media arrives until the flow ends; no unanswered "
                             "STUN or ICMP unreachable", reason="nothing to test against")
        return Detection.inconclusive(KIND, direction, "; ".join(why) or "nothing to test", **clean(est))

    m = len(pvals)
    name, pmin = min(pvals.items(), key=lambda kv: kv[1]) if pvals else (None, None)
    pval = min(1.0, pmin * m) if pmin is not None else None
    detected = (pval is not None and pval < ctx.alpha) or icmp_dead
    effect = None
    if st and "stun_unanswered_share" in st:
        parts.append(f"{st['stun_transactions'] - st['stun_answered']} of {st['stun_transactions']} STUN "
                     f"transactions unanswered (binomial vs {STUN_ANSWER_RATE:.0%} answered, "
                     f"{fmt_p(st['stun_pvalue'])})"
                     + (" while other flows of the app carry media (ICE probing pairs that fail)"
                        if ice_normal else ""))
    if si and "silence_pvalue" in si:
        parts.append(f"inbound packets stop at {si['inbound_last_s']:.1f} s while the local side sends "
                     f"{si['outbound_after']} more over {si['silence_s']:.1f} s (longest earlier gap "
                     f"{si['longest_earlier_gap_s']:.2f} s, {fmt_p(si['silence_pvalue'])})")
    if icmp:
        parts.append(f"{len(icmp)} ICMP unreachable (code {est['icmp_code']}) for this flow from "
                     + ("a router on the path" if est["icmp_from_path"] else "the remote host")
                     + (", nothing received after it" if icmp_dead else ""))
    if no_media:
        parts.append(f"no flow of {ctx.label(i)} carries media")
    if name == "stun":
        effect = st["stun_unanswered_share"]
    elif name == "silence":
        effect = float(min(si["silence_ratio"], 1e6))
    onset = None
    if si and "silence_pvalue" in si and name == "silence":
        onset = si["inbound_last_s"]
    elif st and "stun_first_unanswered_s" in st and name == "stun":
        onset = st["stun_first_unanswered_s"]
    elif icmp_dead:
        onset = est["icmp_first_s"]
    if onset is not None and detected:
        est["onset_s"] = onset
    reason = ""
    if not detected:
        if ice_normal and pval is None:
            reason = "unanswered STUN on a candidate pair while the call's media flows elsewhere (normal ICE)"
        elif pval is not None:
            reason = "answers and media arrive as expected"
        elif est.get("inbound_after_icmp"):
            reason = "ICMP unreachable, but traffic still arrives after it"
        else:
            reason = "ICMP unreachable from the remote host itself: a finished call or ICE probing, not the network"
    return Detection(kind=KIND, direction=direction, decision="detected" if detected else "not_detected",
                     statistic=None if pmin is None else float(-np.log10(max(pmin, 1e-300))), pvalue=pval,
                     effect=effect, estimates=clean(est), evidence="; ".join(parts) or "nothing unusual",
                     reason=reason)
