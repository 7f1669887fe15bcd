"""Call-setup blocking: a call attempt whose requests go unanswered and that never gets two-way media.

The August 2025 signature: the client sends STUN binding requests and the app's own relay probes
(Telegram: 40-byte UDP to 91.108.0.0/16; WhatsApp: STUN to its relays), again and again, and
nothing comes back; the call "dies at key exchange". Judged per call attempt (context.calls: the
call flows of one app from one host close in time), not per flow: ICE probes many candidate
pairs that fail by design while another pair carries the call.

- An attempt that got two-way media on some flow was set up: its other flows' unanswered checks
  are ICE at work (``not_detected``); so was one when the same app's call from the same host at
  the same time (within ``same_call_gap_s``) got two-way media (a one-way leg or a probe that
  the grouping kept apart).
- Otherwise its requests are counted: STUN transactions sent by this host (a request and its
  retransmissions are one transaction; answered = a success or error response with its ID), and
  for flows without STUN, the half-second bins in which this host sent something (answered =
  anything arriving on that flow within ANSWER_WINDOW_S). Requests to a port the remote host itself
  refused (ICMP port unreachable from that host: reachable, the port closed, a candidate that fails
  by design, as Signal's UDP 443 beside its TURN port) are left out, neither answered nor
  unanswered: counting them as answers hid a block of the ports that serve the call behind the
  kernel's refusals of the ports that never did; they are reported (``refused_by_remote``), and an
  attempt whose only requests were refused is not blocked. Requests in the capture's last
  ``request_grace_s`` are not judged (their answer may come after the capture ended).
  H0: the far end is reachable and answers each request with probability at least
  ``answer_rate_h0`` (0.8: a STUN transaction retransmits up to 7 times, RFC 8489 6.2.1, so even
  a path losing half the packets each way answers 87 % of transactions; a flow's probe bin is
  answered by anything arriving within ANSWER_WINDOW_S, which a live flow always has).
  Test: exact binomial lower tail of the answered count (scipy.stats.binom.cdf).
  Effect: the share of requests left unanswered; at least ``floor.setup`` (0.9: none or nearly none
  answered, the 2025 signature; an app probing many relays and using the first that answers, or a
  signalling server that drops some keepalives, leaves a good share answered).
- Requests answered but no media (a call that rang out or was rejected) is not blocking.
- Significantly fewer answered than H0 but a share unanswered below the floor (some relays answer,
  most do not) is ``inconclusive``, not a clean setup: a partial block, a path losing most packets
  and ICE candidates that fail by design cannot be told apart from the requests alone.
- An ICMP destination unreachable from a router on the path for the attempt's flows, with
  nothing answered, is direct evidence.
One p-value per attempt, shared by its flows (one entry in the false-discovery family).
"""
from __future__ import annotations

import numpy as np
from scipy import stats

from throttledetect.detect.context import CallAttempt, DetectContext, dir_name
from throttledetect.detect.detector import Detector
from throttledetect.detect.result import Detection

KIND = "blocking"
NAME = "setup"
ANSWER_WINDOW_S = 2.0
PROBE_BIN_S = 0.5


def attempt_requests(ctx: DetectContext, call: CallAttempt) -> dict:
    """Requests this host sent in the attempt and how many were answered (see the module)."""
    P = ctx.config.blocking
    cutoff = ctx.t_end - P.request_grace_s
    n = k = 0
    first = None
    stun_n = stun_k = 0
    refused = 0
    icmp = ctx.icmp_unreachable()
    for i in call.flows:                          # the attempt's flows (a handful)
        if ctx.streams.one_way_unknown(i):
            continue                              # sent or received? cannot be told: not a request
        d_in = ctx.toward_local(i)
        st = ctx.stun(i)
        sent = st.requests_from(1 - d_in)
        if any(x[3] for x in icmp.get(i, [])):
            # the remote host's own kernel said "port unreachable": the host is reachable and this
            # port closed (a candidate that fails by design). Neither an answer of the service nor
            # a sign of a block: left out of the count, reported as what shows the path works.
            refused += len([t for t in (sent.values() if sent else ctx.packets(i, 1 - d_in).t) if t <= cutoff])
            continue
        if sent:
            answered = st.answered_in(d_in)
            judged = {tid: t for tid, t in sent.items() if t <= cutoff or tid in answered}
            stun_n += len(judged)
            stun_k += sum(1 for tid in judged if tid in answered)
            if judged:
                first = min(first if first is not None else np.inf, min(judged.values()))
            continue
        t_out = ctx.packets(i, 1 - d_in).t
        t_in = ctx.packets(i, d_in).t
        if len(t_out) == 0:
            continue
        bins = np.unique(np.floor(t_out / PROBE_BIN_S))
        t_req = bins * PROBE_BIN_S
        t_req = t_req[t_req <= cutoff]
        if len(t_req) == 0:
            continue
        if len(t_in):
            j = np.searchsorted(t_in, t_req)
            nxt = np.where(j < len(t_in), t_in[np.minimum(j, len(t_in) - 1)], np.inf)
            ans = nxt - t_req <= ANSWER_WINDOW_S + PROBE_BIN_S
        else:
            ans = np.zeros(len(t_req), dtype=bool)
        n += len(t_req)
        k += int(np.count_nonzero(ans))
        first = min(first if first is not None else np.inf, float(t_req[0]))
    return {"requests": n + stun_n, "answered": k + stun_k, "stun_transactions": stun_n, "stun_answered": stun_k,
            "first_request_s": first, "refused_by_remote": refused}


def detect_attempt(ctx: DetectContext, call: CallAttempt) -> Detection:
    P = ctx.config.blocking
    i0 = call.flows[0]
    direction = dir_name(ctx.toward_local(i0))
    key = f"call-setup:{call.id}"
    if call.two_way_media:
        return Detection.nothing_to_find(
            KIND, direction, f"the call got two-way media (flow{'s' * (len(call.media_flows) > 1)} "
            f"{', '.join(str(j) for j in call.media_flows)}); unanswered checks elsewhere are ICE at work",
            test=NAME, call=call.id)
    # the same app's call at the same time got through (a leg or probe the grouping kept apart)
    gap = ctx.config.blocking.same_call_gap_s
    through = [c for c in ctx.calls if c is not call and c.label == call.label and c.two_way_media
               and c.start <= call.end + gap and call.start <= c.end + gap]
    if through:
        return Detection.nothing_to_find(
            KIND, direction, f"{call.label}'s call at the same time got two-way media (flows "
            f"{', '.join(str(j) for c in through for j in c.media_flows)}): these flows were part of it",
            test=NAME, call=call.id)
    if all(ctx.streams.one_way_unknown(j) for j in call.flows):
        return Detection.inconclusive(
            KIND, direction, "every flow of the attempt goes one way and which end is this host cannot be told "
            "(both addresses private, no other flow names it): sent unanswered or received, alike; "
            "--local ADDR/32 names this host", test=NAME,
            call=call.id)
    icmp = [x for j in call.flows for x in ctx.icmp_unreachable().get(j, []) if not x[3]]
    req = attempt_requests(ctx, call)
    est = {"call": call.id, **req}
    if icmp and req["answered"] == 0:
        first = min(x[0] for x in icmp)
        return Detection(kind=KIND, direction=direction, decision="detected", test=NAME, family_key=key,
                         estimates={**est, "onset_s": first, "icmp_from_path": len(icmp)},
                         evidence=f"the {call.label} call attempt got no answer and {len(icmp)} ICMP unreachable "
                                  "from a router on the path; no media ever flowed")
    n, k = req["requests"], req["answered"]
    refusals = (f"; {req['refused_by_remote']} more went to ports the remote host refused (ICMP port "
                f"unreachable from it: reachable, those ports closed), not counted") if req["refused_by_remote"] else ""
    if n == 0 and req["refused_by_remote"]:
        return Detection.nothing_to_find(
            KIND, direction, f"the remote host refused every request ({req['refused_by_remote']}, ICMP port unreachable "
            "from the host itself): it is reachable, the ports were closed, nothing on the path blocked them",
            test=NAME, **est)
    if n < P.min_requests or call.end - call.start < P.request_grace_s:
        return Detection.inconclusive(
            KIND, direction, f"no two-way media, but only {n} request{'s' * (n != 1)} to judge the setup by{refusals}",
            test=NAME, **est)
    p = float(stats.binom.cdf(k, n, P.answer_rate_h0))
    effect = 1.0 - k / n
    est["onset_s"] = req["first_request_s"]
    what = "STUN transactions" if req["stun_transactions"] == n else "requests"
    return Detection(
        kind=KIND, direction=direction, decision="not_detected", test=NAME, statistic=float(k), pvalue=p,
        effect=effect, effect_unit="share of requests unanswered", family_key=key, estimates=est,
        floor_key="floor.setup", short_of_floor="inconclusive",
        reason=f"{n - k} of {n} {what} unanswered and no two-way media: more than a reachable far end "
               f"leaves (p={p:.2g}), fewer than a block leaves (nearly all); a partial block, a path losing "
               "most packets and candidates that fail by design look alike",
        null=f"each request answered with probability >= {P.answer_rate_h0:g}",
        evidence=f"{n - k} of {n} {what} this host sent in the {call.label} call attempt "
                 f"({call.end - call.start:.0f} s, {len(call.flows)} flow{'s' * (len(call.flows) > 1)}) went "
                 f"unanswered and no two-way media ever flowed (binomial vs {P.answer_rate_h0:.0%} answered, "
                 f"p={p:.2g}){refusals}")


def detect(ctx: DetectContext, i: int) -> list:
    call = ctx.call_of(i)
    if call is None:
        return []
    key = ("setup", call.id)
    if key not in ctx._cache:
        ctx._cache[key] = detect_attempt(ctx, call)
    shared = ctx._cache[key]
    # every flow of the attempt carries the same test (one p-value: family_key)
    from dataclasses import replace
    return [replace(shared, direction=dir_name(ctx.toward_local(i)), estimates=dict(shared.estimates),
                    checks=dict(shared.checks))]


DETECTOR = Detector(name="setup", kind=KIND, params="blocking", detect=detect, roles=('media', 'setup'))
