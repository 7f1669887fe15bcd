"""Blocking: unanswered STUN, media that dies while the host keeps sending, ICMP unreachable are
found; a normal hang-up, DTX pauses and a clean call are not blocking."""
from __future__ import annotations

import pytest

from throttledetect.detect import run_detectors
from throttledetect.detect.blocking import STUN_ANSWER_RATE, icmp_unreachable
from throttledetect.detect.common import DetectContext
from throttledetect.simulate import BlockAfter, Jitter
from tests.detect.test_registry import (CALL_PORT, TCP_CTRL_PORT, UDP_CTRL_PORT, analyze, base_call,  # noqa: F401
                                        flow_of, impaired, make_call, of_kind)


def test_media_stops_at_10s_while_controls_continue(base_call, tmp_path):
    cap, ft, cl = impaired(base_call, tmp_path / "b.pcap", BlockAfter(10.0))
    rep = run_detectors(cap, ft, cl)
    i = flow_of(ft, CALL_PORT)
    d = of_kind(rep, i, "blocking")
    assert rep.verdict(i) == "blocking", d
    assert d.qvalue < 0.01
    assert d.estimates["onset_s"] == pytest.approx(10.0, abs=0.2)
    assert d.estimates["silence_s"] > 45
    assert "stop at" in d.evidence
    assert rep.verdict(flow_of(ft, TCP_CTRL_PORT)) == rep.verdict(flow_of(ft, UDP_CTRL_PORT)) == "none"
    assert of_kind(rep, i, "dropping").decision != "detected"     # no sequence gap: not loss
    p = {x["protocol"]: x for x in rep.protocols}[cl.labels[i]]
    assert p["verdict"] == "blocking" and "blocking" in p["summary"]


def test_stun_requests_unanswered_and_no_media(tmp_path):
    """Setup blocked: the local side's ICE checks get no answer, nothing of the call arrives."""
    src = tmp_path / "s.pcap"
    make_call(src, seed=11, stun_answered=False, seconds=20.0)
    cap, ft, cl = impaired(src, tmp_path / "b.pcap", BlockAfter(0.0))
    rep = run_detectors(cap, ft, cl)
    i = flow_of(ft, CALL_PORT)
    assert cl.is_call(i)
    d = of_kind(rep, i, "blocking")
    assert rep.verdict(i) == "blocking", d
    assert d.estimates["stun_transactions"] == 5 and d.estimates["stun_answered"] == 0
    assert d.pvalue == pytest.approx((1 - STUN_ANSWER_RATE) ** 5)    # exact binomial tail, one component
    assert d.estimates["media_flows_of_app"] == 0
    assert "unanswered" in d.evidence and "no flow of" in d.evidence


def test_icmp_unreachable_names_the_flow(tmp_path):
    src = tmp_path / "i.pcap"
    make_call(src, seed=12, icmp_at=8.0, seconds=30.0)
    cap, ft, cl = analyze(src)
    i = flow_of(ft, CALL_PORT)
    ctx = DetectContext(cap, ft, cl)
    hits = icmp_unreachable(ctx)
    assert set(hits) == {i} and len(hits[i]) >= 20 and hits[i][0][1:] == (3, 3, False, 1)   # from a router
    rep = run_detectors(cap, ft, cl)
    d = of_kind(rep, i, "blocking")
    assert rep.verdict(i) == "blocking", d
    assert d.estimates["icmp_unreachable"] == len(hits[i]) and d.estimates["inbound_after_icmp"] == 0
    assert "ICMP unreachable" in d.evidence


@pytest.mark.parametrize("case", ["clean", "hangup", "dtx"])
def test_not_blocking(tmp_path, case):
    src = tmp_path / f"{case}.pcap"
    if case == "hangup":       # both directions end at 25 s, the controls go on
        make_call(src, seed=13, hangup_at=25.0, seconds=40.0)
    else:
        make_call(src, seed=14, dtx=case == "dtx", seconds=40.0)
    cap, ft, cl = impaired(src, tmp_path / "j.pcap", Jitter(2.0), seed=3)
    rep = run_detectors(cap, ft, cl)
    i = flow_of(ft, CALL_PORT)
    d = of_kind(rep, i, "blocking")
    assert d.decision != "detected", d
    assert rep.verdict(i) == "none"
    if case == "clean":
        assert d.estimates["stun_answered"] == d.estimates["stun_transactions"] == 5
