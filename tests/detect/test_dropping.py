"""Selective dropping: loss on the call that other traffic on the path does not have (controls), or
that starts at some point and stays (onset). Loss alone, with nothing to show it is the call's own,
is "inconclusive" (a lossy path), never dropping."""
from __future__ import annotations

import numpy as np
import pytest

from tests.detect.calls import (AUDIO, BUNDLED, CALL_PORT, ENCRYPTED, SOLO, TCP_CTRL_PORT, THROTTLING, UDP_CTRL_PORT,
                                UDP_ONLY, analyze, detect, flow_of, of_kind, why)
from throttledetect.simulate import Congest, Drop, Jitter, Police, simulate


def _measured_drop(src, p, seed, onset_s=None):
    """What the simulator really dropped of the call's inbound packets (its truth)."""
    cap, ft, cl = analyze(src)
    i = flow_of(ft, CALL_PORT)
    res = simulate(cap, ft, cl, Drop(p), select="calls", direction="to-local", seed=seed, onset_s=onset_s)
    f = next(f for f in res.truth["flows"] if f["id"] == i)
    return next(v for v in f["measured"].values() if v["impaired"])["drop_fraction"]


@pytest.mark.parametrize("p", [0.02, 0.05, 0.2])
def test_random_drop_on_the_call_with_a_tcp_control_is_dropping(synthetic_call, scenario, p):
    cap, ft, cl, rep = scenario(AUDIO, Drop(p), seed=2)
    i, tcp = flow_of(ft, CALL_PORT), flow_of(ft, TCP_CTRL_PORT)
    assert rep.verdict(i) == "dropping", why(rep, i)
    d = of_kind(rep, i, "dropping")
    assert d["decision"] == "detected" and d["test"] == "controls" and d["qvalue"] < 1e-4
    est = d["estimates"]
    assert est["loss"] == pytest.approx(_measured_drop(synthetic_call(**AUDIO), p, seed=2), abs=0.005)
    assert est["loss_source"] == "rtp"
    assert est["control_loss"] == 0.0 and tcp in est["control_flows"]
    assert d["effect"] == pytest.approx(est["loss"], abs=1e-9)
    assert d["direction"] == "ba" and d["toward"] == "local"
    assert not rep.tested[tcp] and not rep.tested[flow_of(ft, UDP_CTRL_PORT)]


@pytest.mark.parametrize("base", [SOLO, UDP_ONLY], ids=["call-alone", "control-without-loss-signal"])
def test_random_drop_without_a_control_is_a_lossy_path(scenario, base):
    """5 % random loss from the start and nothing to compare with: inconclusive, with the reason."""
    cap, ft, cl, rep = scenario(base, Drop(0.05), seed=3)
    i = flow_of(ft, CALL_PORT)
    verdict, reason = rep.verdicts[i]
    assert verdict == "inconclusive", why(rep, i)
    assert reason.startswith("lossy path") and "nothing shows it is selective" in reason
    d = of_kind(rep, i, "dropping")
    assert d["decision"] == "inconclusive"
    assert d["estimates"]["loss"] == pytest.approx(0.05, abs=0.015)
    assert not any(x["decision"] == "detected" for x in rep.detections[i])


def test_a_little_loss_without_controls_is_nothing_to_find(scenario):
    """0.5 % loss, under DroppingParams.lossy_path (1 %): no sign of throttling, "none"."""
    cap, ft, cl, rep = scenario(SOLO, Drop(0.005), seed=4)
    i = flow_of(ft, CALL_PORT)
    assert rep.verdicts[i] == ("none", ""), why(rep, i)
    assert 0 < of_kind(rep, i, "dropping")["estimates"]["loss"] < 0.01


@pytest.mark.parametrize("onset", [15.0, 20.0])
def test_drop_from_the_middle_is_dropping_with_its_onset(scenario, onset):
    """The call alone, 5 % loss from `onset` s: the change point finds it (within 4 s)."""
    cap, ft, cl, rep = scenario(SOLO, Drop(0.05), onset_s=onset, seed=5)
    i = flow_of(ft, CALL_PORT)
    assert rep.verdict(i) == "dropping", why(rep, i)
    d = of_kind(rep, i, "dropping")
    assert d["test"] == "onset" and d["decision"] == "detected"
    assert d["onset_s"] == pytest.approx(onset, abs=4.0)
    assert d["estimates"]["loss_before"] < 0.01 and d["estimates"]["loss_after"] == pytest.approx(0.05, abs=0.02)
    assert all(d["checks"].values())


@pytest.mark.parametrize("seed", [0, 1])
def test_congestion_from_the_middle_is_not_dropping(scenario, seed):
    """The call alone; a shared link congests from 20 s on (simulate.Congest: the queueing delay
    climbs to 150 ms in bad periods and only then does it drop): the loss steps up and stays, as
    a dropper's would (onset p down to 1e-5), but each loss comes when the queue is full: not
    dropping."""
    cap, ft, cl, rep = scenario(SOLO, Congest(p_gb=0.02, p_bg=0.05, loss_bad=0.6, delay_ms=150), onset_s=20.0,
                                seed=seed)
    i = flow_of(ft, CALL_PORT)
    assert rep.verdict(i) not in THROTTLING, why(rep, i)
    d = of_kind(rep, i, "dropping")
    assert d["test"] == "onset" and d["checks"]["losses_without_a_full_queue"] is False
    assert d["estimates"]["delay_rise_at_losses_ms"] > 30.0
    assert rep.verdict(i) == "inconclusive" and "a queue was full" in d["reason"], why(rep, i)


def test_drop_from_the_middle_with_controls_reports_the_onset(scenario):
    cap, ft, cl, rep = scenario(AUDIO, Drop(0.05), onset_s=20.0, seed=5)
    i = flow_of(ft, CALL_PORT)
    assert rep.verdict(i) == "dropping", why(rep, i)
    assert of_kind(rep, i, "dropping").get("onset_s") == pytest.approx(20.0, abs=4.0)


def test_a_loss_burst_that_ends_is_not_an_onset(synthetic_call, tmp_path):
    """10 % loss from 12 s to 20 s only (a bad patch that ended), the call alone: the step does not
    persist, so it is not dropping."""
    from throttledetect.write import write_rows
    src = synthetic_call(**SOLO)
    cap, ft, cl = analyze(src)
    res = simulate(cap, ft, cl, Drop(0.1), select="calls", direction="to-local", seed=6, onset_s=12.0)
    t = (cap.packets.ts_ns[res.dropped].astype(np.int64) - int(cap.packets.ts_ns.min())) / 1e9
    dropped = res.dropped[t < 20.0]
    assert len(dropped) > 20
    rows = np.setdiff1d(np.arange(len(cap.packets)), dropped)
    write_rows(cap, rows, cap.packets.ts_ns[rows], tmp_path / "burst.pcap")
    cap2, ft2, cl2 = analyze(tmp_path / "burst.pcap")
    rep = detect(cap2, ft2, cl2)
    j = flow_of(ft2, CALL_PORT)
    assert rep.verdict(j) not in THROTTLING, why(rep, j)


def test_dropping_on_encrypted_voice_from_the_cadence(scenario):
    """Media without RTP headers (relabelled as a telegram call: the classifier cannot name it):
    5 % dropped, a TCP control clean: dropping, read from the voice cadence's empty slots."""
    cap, ft, cl, rep = scenario(ENCRYPTED, Drop(0.05), port=CALL_PORT, seed=7, label="telegram_call")
    i = flow_of(ft, CALL_PORT)
    assert rep.tested[i]
    assert rep.verdict(i) == "dropping", why(rep, i)
    d = of_kind(rep, i, "dropping")
    assert d["estimates"]["loss_source"] == "cadence"
    assert d["estimates"]["loss"] == pytest.approx(0.05, abs=0.015)


def test_no_loss_signal_is_inconclusive(scenario):
    """Encrypted media whose arrival times hold no clock (30 ms jitter): loss cannot be measured."""
    cap, ft, cl, rep = scenario(ENCRYPTED, Jitter(30.0), seed=8, label="telegram_call")
    i = flow_of(ft, CALL_PORT)
    d = of_kind(rep, i, "dropping")
    assert d["decision"] == "inconclusive" and d["reason"].startswith("no loss signal")
    assert rep.verdict(i) == "inconclusive"


# ------------------------------------------------------------------- the uplink, as the far end reports it

def _uplink(rep, i):
    return [d for d in rep.detections[i] if d["kind"] == "dropping" and d.get("test") == "uplink"]


def test_the_uplink_losing_more_from_some_point_is_dropping_toward_the_far_end(scenario):
    """The far end's receiver reports (plain RTCP, one a second) count none of this host's packets
    lost for 20 s, then 15 % of them: every packet is in the capture (the loss is past it), so only
    the reports show it. Dropping, toward the remote end, from about 20 s."""
    cap, ft, cl, rep = scenario(dict(AUDIO, uplink_loss=(20.0, 0.0, 0.15)))
    i = flow_of(ft, CALL_PORT)
    (d,) = _uplink(rep, i)
    assert d["decision"] == "detected" and d["toward"] == "remote", why(rep, i)
    assert d["onset_s"] == pytest.approx(20.0, abs=1.5)
    assert d["estimates"]["loss_after"] == pytest.approx(0.15, abs=0.02)
    assert d["direction"] != of_kind(rep, i, "dropping", test="loss")["direction"]
    assert rep.verdict(i) == "dropping"


def test_a_lossy_uplink_without_a_step_is_inconclusive_and_a_clean_one_is_nothing(scenario):
    """Steady 10 % uplink loss from the start: lossy, nothing shows it is selective (the reports do
    not say which packets, so no bucket can be fitted): inconclusive, never none. Reports of no
    loss: nothing to find, and the flow's verdict is none."""
    cap, ft, cl, rep = scenario(dict(AUDIO, uplink_loss=(0.0, 0.10, 0.10)))
    i = flow_of(ft, CALL_PORT)
    (d,) = _uplink(rep, i)
    assert d["decision"] == "inconclusive" and "lossy uplink" in d["reason"], why(rep, i)
    assert rep.verdict(i) == "inconclusive"
    cap, ft, cl, rep = scenario(dict(AUDIO, uplink_loss=(0.0, 0.0, 0.0)))
    i = flow_of(ft, CALL_PORT)
    (d,) = _uplink(rep, i)
    assert d["decision"] == "not_detected" and d["estimates"]["loss"] == 0.0
    assert d["estimates"]["report_intervals"] >= 30
    assert rep.verdict(i) == "none", why(rep, i)


def test_no_reports_no_uplink_test(scenario):
    cap, ft, cl, rep = scenario(AUDIO)
    assert not _uplink(rep, flow_of(ft, CALL_PORT))


def test_voice_clean_beside_policed_video_in_one_encrypted_flow_is_not_none(scenario):
    """Voice and video in one encrypted flow (BUNDLE), a policer at about half the video's rate:
    the bucket drops the large video packets first, the voice cadence may stay whole. Its empty
    slots cannot speak for the video's bytes, so "no loss" on the cadence is not "none": the
    flow is throttling if a test shows it, else inconclusive, naming the packets left out."""
    cap, ft, cl, rep = scenario(BUNDLED, Police(250_000, 3000), port=CALL_PORT, seed=11, label="telegram_call")
    i = flow_of(ft, CALL_PORT)
    assert rep.tested[i]
    assert rep.verdict(i) != "none", why(rep, i)
    for kind in ("dropping", "policing"):
        d = of_kind(rep, i, kind)
        if d["decision"] != "detected":
            assert d["decision"] == "inconclusive" and "larger packets" in d["reason"], d


def test_voice_alone_in_an_encrypted_flow_can_be_clean(scenario):
    """The same voice without video in its flow: the cadence covers the bytes, and a clean call is
    "none" (the rule above does not make every encrypted call inconclusive)."""
    cap, ft, cl, rep = scenario(ENCRYPTED, None, port=CALL_PORT, label="telegram_call")
    i = flow_of(ft, CALL_PORT)
    assert rep.verdict(i) == "none", why(rep, i)
    assert of_kind(rep, i, "dropping")["estimates"]["loss_source"] == "cadence"


def test_a_clean_bundled_flow_says_what_it_could_not_test(scenario):
    """Clean voice and video in one encrypted flow: the voice lost nothing, the video has no loss
    signal: inconclusive, and the reason says so."""
    cap, ft, cl, rep = scenario(BUNDLED, None, port=CALL_PORT, label="telegram_call")
    i = flow_of(ft, CALL_PORT)
    assert rep.verdict(i) == "inconclusive", why(rep, i)
    assert "larger packets" in of_kind(rep, i, "dropping")["reason"]
