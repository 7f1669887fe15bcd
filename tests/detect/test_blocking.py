"""Blocking: a call whose media stops arriving for good while this host keeps sending (silence),
an ICMP unreachable from a router on the path, and a call attempt whose requests are never
answered (setup). A hang-up, a rejected call and DTX pauses are not blocking."""
from __future__ import annotations

import numpy as np
import pytest

from tests.corpus import EXTERNAL_DIR, need_corpus
from tests.detect.calls import (AUDIO, CALL_PORT, PEER, SOLO, TCP_CTRL_PORT, THROTTLING, VIDEO, VIDEO_PORT, analyze, detect,
                                detected, flow_of, of_kind, why)
from throttledetect.simulate import BlockAfter, Jitter


@pytest.mark.parametrize("after", [5.0, 15.0])
def test_media_stops_while_the_host_keeps_sending(scenario, after):
    cap, ft, cl, rep = scenario(AUDIO, BlockAfter(after))
    i = flow_of(ft, CALL_PORT)
    assert rep.verdict(i) == "blocking", why(rep, i)
    d = detected(rep, i, "blocking")[0]
    assert d["test"] == "silence" and d["qvalue"] < 1e-6
    # BlockAfter counts from the flow's first packet (the first STUN check, at 0 s)
    assert d["onset_s"] == pytest.approx(after, abs=0.3)
    assert of_kind(rep, i, "dropping")["decision"] != "detected"        # no sequence gap: not loss
    assert not rep.tested[flow_of(ft, TCP_CTRL_PORT)]
    p = {x["protocol"]: x for x in rep.protocols}[cl.labels[i]]
    assert p["verdict"] == "blocking" and "blocking" in p["summary"] and f"from {d['onset_s']:.1f} s" in p["summary"]


def test_every_call_flow_blocked(scenario):
    cap, ft, cl, rep = scenario(VIDEO, BlockAfter(12.0))
    for port in (CALL_PORT, VIDEO_PORT):
        i = flow_of(ft, port)
        assert rep.verdict(i) == "blocking", why(rep, i)
        assert detected(rep, i, "blocking")[0]["onset_s"] == pytest.approx(12.0, abs=0.5)


@pytest.mark.parametrize("case", ["both-stop", "sparse-after", "call-alone"])
def test_the_far_end_hangs_up(scenario, case):
    """Both directions stop at 20 s of 40 (a normal end); the local side then sends nothing, or
    one small packet every 5 s (RTCP, keepalives); the controls go on. Never blocking; cleared
    only where this host fell silent too: a trickle that goes on is also what a blocked host
    that stopped talking sends (test_a_block_when_this_host_stops_talking_is_not_cleared)."""
    call = {"both-stop": dict(AUDIO, hangup_at=20.0), "sparse-after": dict(AUDIO, hangup_at=20.0,
                                                                          after_hangup_every_s=5.0),
            "call-alone": dict(SOLO, hangup_at=20.0, after_hangup_every_s=2.0)}[case]
    cap, ft, cl, rep = scenario(call, Jitter(2.0), seed=31)
    i = flow_of(ft, CALL_PORT)
    assert not detected(rep, i, "blocking"), why(rep, i)
    if case == "both-stop":
        assert rep.verdict(i) == "none", why(rep, i)
    else:
        assert rep.verdict(i) == "inconclusive", why(rep, i)
        d = of_kind(rep, i, "blocking", test="silence")
        assert d["decision"] == "inconclusive" and "goes on sending" in d["reason"], d


def test_a_block_when_this_host_stops_talking_is_not_cleared(scenario):
    """The call is blocked at 20 s while this host talks; a second later it stops talking (it
    listens for an answer that never comes) and sends only RTCP, two packets a second, to the end.
    A hang-up followed by RTCP looks the same from the capture: not blocking, and not `none`
    either (it was `none`, a false all-clear, before)."""
    cap, ft, cl, rep = scenario(dict(AUDIO, seconds=45.0, local_quiet=(21.0, 45.0)), BlockAfter(20.0))
    i = flow_of(ft, CALL_PORT)
    assert not detected(rep, i, "blocking"), why(rep, i)
    assert rep.verdict(i) == "inconclusive", why(rep, i)
    d = of_kind(rep, i, "blocking", test="silence")
    assert d["decision"] == "inconclusive" and "look the same" in d["reason"], d
    assert d["estimates"]["outbound_pps_before"] > 20


def test_a_host_that_pauses_and_sends_again_into_the_silence_is_not_cleared(scenario):
    """Both directions stop at 20 s; this host sends one packet at 20.5 s and then one every 12 s
    (a retry or keepalive after a pause longer than OUTBOUND_PAUSE_S) while nothing arrives to the
    end at 60 s. It did not stop when the inbound did: `inconclusive`, not `none`."""
    from throttledetect.detect.blocking import OUTBOUND_PAUSE_S
    assert 12.0 > OUTBOUND_PAUSE_S
    cap, ft, cl, rep = scenario(dict(AUDIO, seconds=60.0, hangup_at=20.0, after_hangup_every_s=12.0), seed=31)
    i = flow_of(ft, CALL_PORT)
    assert not detected(rep, i, "blocking"), why(rep, i)
    d = of_kind(rep, i, "blocking", test="silence")
    assert d["decision"] == "inconclusive" and d["estimates"]["outbound_after_pause"] == 3, d
    assert rep.verdict(i) == "inconclusive", why(rep, i)


def test_a_block_while_this_host_listens_is_found_when_it_talks_again(scenario):
    """This host is in a one-way phase (from 20 s to 30 s it sends only RTCP, two packets a
    second, while the far end talks) when the call is blocked at 20 s; at 30 s it talks again, at
    its media rate, for 10 s, while nothing arrives. A host whose call ended does not take up its
    media again: blocking, from 20 s."""
    call = dict(AUDIO, seconds=45.0, local_quiet=(20.0, 30.0))
    cap, ft, cl, rep = scenario(call, BlockAfter(20.0))
    i = flow_of(ft, CALL_PORT)
    assert rep.verdict(i) == "blocking", why(rep, i)
    d = detected(rep, i, "blocking")[0]
    assert d["test"] == "silence" and d["onset_s"] == pytest.approx(20.0, abs=0.5)
    assert d["estimates"]["outbound_media_seconds"] >= 5
    # the same host, not blocked: the far end talks throughout, nothing to find
    cap, ft, cl, rep = scenario(call)
    assert rep.verdict(flow_of(ft, CALL_PORT)) == "none", why(rep, flow_of(ft, CALL_PORT))


def test_a_silence_after_few_gaps_is_judged_by_their_mean():
    """A flow that got three STUN answers 1.5 s apart (a second with none), then 2 s of voice at 10 packets a second,
    then nothing for 40 s: 23 earlier gaps, so the silence's rank among them cannot give less
    than 1/24; Markov's bound (mean gap / silence) can, for any gap distribution with that mean."""
    from throttledetect.detect.blocking import silence_pvalue
    t = np.r_[0.0, 1.5, 3.0, 3.5 + np.arange(20) * 0.1]
    p, how, lam = silence_pvalue(t, 40.0)
    mean_gap = float(np.diff(t).mean())
    assert lam < 1.0 and "Markov" in how
    assert p == pytest.approx(2 * mean_gap / 40.0) and p < 1 / 24
    # a silence no longer than the gaps already seen gives no evidence at all
    p_short, _, _ = silence_pvalue(t, 1.5)
    assert p_short > 0.1


def test_a_block_while_this_host_only_listens_is_inconclusive(scenario):
    """This host listens from 10 s to the end (RTCP only, two packets a second) and the call is
    blocked at 15 s: it never sends media again, so from the capture a block and a hang-up with an
    RTCP trickle look the same."""
    cap, ft, cl, rep = scenario(dict(AUDIO, seconds=40.0, local_quiet=(10.0, 40.0)), BlockAfter(15.0))
    i = flow_of(ft, CALL_PORT)
    assert rep.verdict(i) == "inconclusive", why(rep, i)
    d = of_kind(rep, i, "blocking", test="silence")
    assert d["decision"] == "inconclusive" and "look the same" in d["reason"], d


def test_a_hang_up_during_a_one_way_phase_is_not_blocking(scenario):
    """The far end hangs up at 25 s while this host listens (20-30 s: RTCP only); this host's
    media never resumes (its RTCP trickles on, one packet every 5 s)."""
    call = dict(AUDIO, seconds=45.0, local_quiet=(20.0, 30.0), hangup_at=25.0, after_hangup_every_s=5.0)
    cap, ft, cl, rep = scenario(call, Jitter(2.0), seed=31)
    i = flow_of(ft, CALL_PORT)
    assert not detected(rep, i, "blocking"), why(rep, i)


def test_a_move_to_a_peer_on_the_same_socket_is_not_blocking(scenario):
    """At 20 s of 40 the call's media moves from the relay to a peer, on the same local socket;
    the host goes on sending to the relay (20 small packets a second, unanswered). The call went on
    elsewhere (tests/test_validate.py has the case where the new leg got another label)."""
    cap, ft, cl, rep = scenario(dict(AUDIO, seconds=40.0, migrate_at=20.0), label="telegram_call")
    i = flow_of(ft, CALL_PORT)           # the first flow on the call's port: the relay leg
    peer = [j for j in range(len(ft)) if j != i and ft.endpoint(j, "a").rsplit(":", 1)[0] in (PEER,)
            or ft.endpoint(j, "b").rsplit(":", 1)[0] == PEER]
    assert len(peer) == 1 and int(ft.packets_ab[peer[0]]) > 500 and int(ft.packets_ba[peer[0]]) > 500
    assert rep.tested[i] and cl.labels[i] == "telegram_call" and cl.labels[peer[0]] != "telegram_call"
    assert not detected(rep, i, "blocking"), why(rep, i)
    d = of_kind(rep, i, "blocking", test="silence")
    assert d["decision"] == "not_detected" and "moved" in (d.get("reason") or ""), d


def test_dtx_pauses_are_not_blocking(scenario):
    cap, ft, cl, rep = scenario(dict(AUDIO, dtx=True))
    i = flow_of(ft, CALL_PORT)
    assert not detected(rep, i, "blocking") and rep.verdict(i) == "none", why(rep, i)


def test_icmp_unreachable_from_a_router(scenario):
    """From 8 s nothing of the call arrives and a router answers the host's media with ICMP port
    unreachable (one a second)."""
    cap, ft, cl, rep = scenario(dict(AUDIO, icmp_at=8.0))
    i = flow_of(ft, CALL_PORT)
    n_icmp = int(np.count_nonzero(cap.packets.proto == 1))
    assert n_icmp >= 30
    assert rep.verdict(i) == "blocking", why(rep, i)
    d = detected(rep, i, "blocking")[0]
    assert d["onset_s"] == pytest.approx(8.0, abs=0.3)
    assert d["estimates"]["icmp_unreachable"] == n_icmp and d["estimates"]["icmp_from_path"] is True


# ------------------------------------------------------------------------------- call setup

def test_setup_blocked_host_keeps_sending_stun(scenario):
    """Every inbound packet of the call dropped from the start (BlockAfter(0) towards the local
    host); the host keeps sending STUN consent checks (one a second) and its media."""
    cap, ft, cl, rep = scenario(dict(AUDIO, stun_every_s=1.0), BlockAfter(0.0))
    i = flow_of(ft, CALL_PORT)
    assert cl.is_call(i)
    assert rep.verdict(i) == "blocking", why(rep, i)
    d = of_kind(rep, i, "blocking", test="setup")
    assert d["decision"] == "detected"
    est = d["estimates"]
    assert est["stun_answered"] == 0 and est["stun_transactions"] >= 30
    # exact binomial lower tail of 0 answered of n at H0 "answered with probability 0.8"
    assert d["pvalue"] == pytest.approx(0.2 ** est["requests"])
    assert d["onset_s"] == pytest.approx(0.0, abs=0.1)
    assert d["family_key"].startswith("call-setup:")


def test_setup_blocked_synthetic_attempt(scenario):
    """The same built directly: STUN never answered, nothing of the call arrives."""
    cap, ft, cl, rep = scenario(dict(AUDIO, stun_every_s=1.0, stun_answered=False, inbound=False))
    i = flow_of(ft, CALL_PORT)
    assert rep.verdict(i) == "blocking", why(rep, i)
    assert of_kind(rep, i, "blocking", test="setup")["decision"] == "detected"
    # the report's line for the attempt: what was tried, nothing answered, blocked
    (att,) = [a for a in rep.attempts if i in a["flows"]]
    assert att["verdict"] == "blocking" and att["app"] == cl.labels[i]
    assert att["requests"] >= 30 and att["answered"] == 0 and att["received"] == 0 and att["sent"] > 0
    remote = ft.endpoint(i, "a" if att["local"] != ft.endpoint(i, "a").rsplit(":", 1)[0] else "b")
    assert f"udp {remote}" in att["tried"]
    assert att["reason"] and "unanswered" in att["reason"]


def test_the_hosts_own_icmp_refusals_are_no_answer(scenario):
    """Nothing of the call arrives, and the local host itself sends ICMP port unreachable to the
    far end (quoting the far end's packets: what a replayed trace, or a host whose socket closed,
    shows). Those are the host's refusals, not the far end answering its requests."""
    cap, ft, cl, rep = scenario(dict(AUDIO, stun_every_s=1.0, stun_answered=False, inbound=False,
                                     local_refuses_every_s=2.0))
    i = flow_of(ft, CALL_PORT)
    assert int(np.count_nonzero(cap.packets.proto == 1)) >= 20
    assert rep.verdict(i) == "blocking", why(rep, i)
    d = of_kind(rep, i, "blocking", test="setup")
    assert d["decision"] == "detected" and d["estimates"]["answered"] == 0


def test_a_call_that_was_set_up_then_blocked_has_one_attempt_line(scenario):
    cap, ft, cl, rep = scenario(AUDIO, BlockAfter(10.0))
    i = flow_of(ft, CALL_PORT)
    (att,) = [a for a in rep.attempts if i in a["flows"]]
    assert att["verdict"] == "set up" and i in att["media_flows"] and att["media_verdict"] == "blocking"


def test_a_rejected_call_is_not_blocking(scenario):
    """STUN checks answered for 40 s, no media (the far end declined): the attempt's requests
    were answered. The classifier calls such a flow "stun"; relabelled as the call it was."""
    cap, ft, cl, rep = scenario(dict(AUDIO, media=False, stun_every_s=1.0), label="webrtc")
    i = flow_of(ft, CALL_PORT)
    assert rep.tested[i] and rep.roles[i] == "setup"
    d = of_kind(rep, i, "blocking", test="setup")
    assert d["decision"] == "not_detected"
    assert d["estimates"]["stun_answered"] == d["estimates"]["stun_transactions"] >= 30
    assert rep.verdicts[i] == ("none", ""), why(rep, i)


def test_an_answered_call_elsewhere_clears_unanswered_checks(scenario):
    """ICE probes a pair that never answers while the call flows on another: not blocking."""
    cap, ft, cl, rep = scenario(dict(VIDEO, stun_every_s=1.0), BlockAfter(0.0), port=VIDEO_PORT)
    i, v = flow_of(ft, CALL_PORT), flow_of(ft, VIDEO_PORT)
    assert rep.verdict(i) == "none", why(rep, i)
    assert of_kind(rep, v, "blocking", test="setup")["decision"] != "detected", why(rep, v)


@need_corpus
def test_whatsapp_rejected_call_is_not_blocking():
    from throttledetect.pipeline import analyze_capture
    a = analyze_capture(EXTERNAL_DIR / "whatsAppCallRejected.pcapng", with_metrics=False)
    rep = a.detections
    tested = np.flatnonzero(rep.tested)
    assert len(tested) >= 1
    assert all(rep.verdict(i) not in THROTTLING for i in tested), [rep.verdicts[i] for i in tested]
    setup = [d for i in tested for d in rep.detections[i] if d.get("test") == "setup"]
    assert setup and all(d["decision"] != "detected" for d in setup)
    assert len({d.get("family_key") for d in setup}) == 1             # one attempt, one p-value


def test_five_unanswered_stun_transactions_and_nothing_else_is_setup_blocking(synthetic_call):
    """Five STUN transactions unanswered and nothing else from the far end in 20 s: a reachable
    host answers a transaction (retransmitted up to 7 times) with probability >= 0.8 even over a
    lossy path, so 0.2^5 = 3e-4 rejects it: call-setup blocking, never "none"."""
    cap, ft, cl = analyze(synthetic_call(seed=41, seconds=20.0, stun_answered=False, inbound=False))
    rep = detect(cap, ft, cl)
    i = flow_of(ft, CALL_PORT)
    assert rep.verdict(i) == "blocking", why(rep, i)
    assert of_kind(rep, i, "blocking", test="setup")["decision"] == "detected"


def test_a_port_the_far_end_refuses_does_not_hide_a_block_of_the_others(synthetic_call):
    """Nothing of the call arrives; beside its unanswered STUN the host tries a port the far end
    itself refuses (ICMP port unreachable from the far end's own address, once a second). The
    refusals say the host is reachable and that port closed; they are no answer of the service,
    so the unanswered requests alone are judged: call-setup blocking, the refusals reported."""
    cap, ft, cl = analyze(synthetic_call(seed=43, seconds=30.0, stun_answered=False, inbound=False,
                                         stun_every_s=1.0, remote_refuses_port=443))
    i = flow_of(ft, CALL_PORT)
    (j,) = [j for j in range(len(ft)) if j != i and ft.endpoint(j, "b") == "203.0.113.50:443"]
    # one call, as the classifier makes it where the app is named on both flows (Signal's STUN
    # realm names its TURN host's flows; the synthetic flow on 443 carries no name of its own)
    cl.labels[j] = cl.labels[i]
    cl.call_of[j] = cl.call_of[i]
    rep = detect(cap, ft, cl)
    assert rep.verdict(i) == "blocking", why(rep, i)
    d = of_kind(rep, i, "blocking", test="setup")
    est = d["estimates"]
    assert d["decision"] == "detected"
    assert est["answered"] == 0 and est["refused_by_remote"] >= 25
    assert "refused" in d["evidence"]


def test_a_rejected_call_that_also_tried_a_refused_port_is_not_blocking(synthetic_call):
    """The far end answers the STUN checks, refuses the other port, and no media follows (the
    call was declined): the refusals are left out and what was judged was answered."""
    cap, ft, cl = analyze(synthetic_call(seed=44, seconds=30.0, media=False, stun_every_s=1.0,
                                         remote_refuses_port=443))
    rep = detect(cap, ft, cl)
    i = flow_of(ft, CALL_PORT)
    assert rep.verdict(i) not in THROTTLING, why(rep, i)
    d = of_kind(rep, i, "blocking", test="setup")
    assert d["decision"] == "not_detected"
    assert d["estimates"]["answered"] == d["estimates"]["requests"] > 0
    assert d["estimates"]["refused_by_remote"] >= 25
