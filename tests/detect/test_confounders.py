"""What is not throttling must not be called throttling: clean calls (jitter, DTX, video), a
congested shared link, random loss on every flow, Wi-Fi jitter. A clean call is "none"."""
from __future__ import annotations

import pytest

from tests.detect.calls import (AUDIO, CALL_PORT, THROTTLING, UDP_ONLY, VIDEO, VIDEO_PORT, analyze, detect, flow_of,
                                why)
from throttledetect.simulate import Congest, Drop, Jitter


def call_flows(ft, cl):
    return [i for i in range(len(ft)) if cl.is_call(i)]


def test_clean_calls_are_none(synthetic_call):
    """Eight clean calls: path jitter 0.5-8 ms, half with DTX, some with video: every call flow is
    tested and "none" (no false throttling, and nothing left untested on a clean call)."""
    bad, n = [], 0
    for k in range(8):
        call = dict(seed=100 + k, seconds=30.0, jitter_ms=[0.5, 1.0, 3.0, 8.0][k % 4], dtx=k % 2 == 1,
                    video=k % 3 == 0)
        cap, ft, cl = analyze(synthetic_call(**call))
        rep = detect(cap, ft, cl)
        for i in call_flows(ft, cl):
            n += 1
            if not rep.tested[i] or rep.verdict(i) != "none":
                bad.append((call, why(rep, i)))
    assert n >= 10
    assert not bad, "\n".join(f"{c}: {w}" for c, w in bad)




DEFAULT_CONGEST, HEAVY_CONGEST = Congest(), Congest(p_gb=0.02, p_bg=0.1, loss_bad=0.6, delay_ms=120.0)


@pytest.mark.parametrize("call,congest", [
    (UDP_ONLY, DEFAULT_CONGEST), (UDP_ONLY, HEAVY_CONGEST),
    (AUDIO, DEFAULT_CONGEST),
    (VIDEO, HEAVY_CONGEST)],
    ids=["udp-control-default", "udp-control-heavy", "tcp-control-default", "video+tcp-control-heavy"])
def test_congestion_is_never_throttling(scenario, congest, call):
    cap, ft, cl, rep = scenario(call, congest, seed=51)
    flows = call_flows(ft, cl)
    assert flows
    for i in flows:
        assert rep.verdict(i) not in THROTTLING, why(rep, i)
    # the congestion did hit the call (otherwise the test shows nothing)
    assert any(d.get("estimates", {}).get("loss", 0) > 0.005 for i in flows for d in rep.detections[i]
               if d["kind"] == "dropping")


@pytest.mark.parametrize("call,p", [
    (UDP_ONLY, 0.03), (UDP_ONLY, 0.08),
    (AUDIO, 0.05), (VIDEO, 0.05)],
    ids=["udp-control-0.03", "udp-control-0.08", "tcp-control-0.05", "video+tcp-control-0.05"])
def test_random_loss_on_every_flow_is_never_throttling(scenario, p, call):
    """Drop applied to every flow (the controls lose as much as the call): not selective."""
    cap, ft, cl, rep = scenario(call, Drop(p), select="all", seed=52)
    for i in call_flows(ft, cl):
        assert rep.verdict(i) not in THROTTLING, why(rep, i)
        d = next(d for d in rep.detections[i] if d["kind"] == "dropping")
        assert d["estimates"]["loss"] == pytest.approx(p, abs=0.02)


@pytest.mark.parametrize("jitter", [Jitter(15.0, shape=2.0), Jitter(40.0)], ids=["15ms-gamma2", "40ms-exp"])
def test_wifi_jitter_is_never_throttling(scenario, jitter):
    cap, ft, cl, rep = scenario(VIDEO, jitter, seed=53)
    for port in (CALL_PORT, VIDEO_PORT):
        i = flow_of(ft, port)
        assert rep.verdict(i) == "none", why(rep, i)


def test_a_clean_call_without_rtp_headers_is_none(scenario):
    cap, ft, cl, rep = scenario(dict(AUDIO, encrypted=True), label="telegram_call")
    i = flow_of(ft, CALL_PORT)
    assert rep.tested[i]
    assert rep.verdicts[i] == ("none", ""), why(rep, i)
