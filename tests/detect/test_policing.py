"""Policing on synthetic calls: a token bucket that drops (simulate.Police, or a shaper whose queue
holds about one packet, as Linux tbf does) is called policing with its rate; random loss and a
shaper with a real queue are not policing.

Stated tolerances: the rate within 5 % on a voice stream (one packet per 20 ms: the bucket's rate
is pinned by every packet), within 10 % on video (bursty frames). When the detector says the rate
is not identifiable (``rate_identifiable`` False: the bucket refills between bursts), only its
lower bound is checked: the configured rate must not be below it.
"""
from __future__ import annotations

import numpy as np
import pytest

from tests.detect.calls import AUDIO, CALL_PORT, VIDEO, VIDEO_PORT, detected, flow_of, of_kind, rate_of, why
from throttledetect.detect.policing import passed_between_losses_bps
from throttledetect.simulate import MTU_BYTES, Congest, Drop, Police, Shape

SMALL, LARGE = 0.020, 0.250           # bucket depth: seconds at the rate


def police(rate, burst_s):
    return Police(rate, max(float(MTU_BYTES), rate / 8 * burst_s))


def check_rate(d, truth, tolerance):
    est = d["estimates"]
    if est["rate_identifiable"]:
        assert d["rate_bps"] == pytest.approx(truth, rel=tolerance), (d["rate_bps"], truth, est["rate_range_bps"])
    else:
        lo, _ = est["rate_range_bps"]
        assert lo <= truth * (1 + tolerance), (lo, truth)
        assert "rate_note" in est


@pytest.mark.parametrize("factor,burst_s", [
    (0.5, SMALL), (0.85, SMALL), (0.6, LARGE), (0.85, LARGE),
    pytest.param(0.6, SMALL, marks=pytest.mark.slow), pytest.param(0.7, SMALL, marks=pytest.mark.slow),
    pytest.param(0.5, LARGE, marks=pytest.mark.slow), pytest.param(0.7, LARGE, marks=pytest.mark.slow)])
def test_policer_on_voice(synthetic_call, scenario, factor, burst_s):
    rate = factor * rate_of(synthetic_call, AUDIO, CALL_PORT)
    cap, ft, cl, rep = scenario(AUDIO, police(rate, burst_s), seed=11)
    i = flow_of(ft, CALL_PORT)
    assert rep.verdict(i) == "policing", why(rep, i)
    (d,) = detected(rep, i, "policing")
    assert d["qvalue"] < 1e-3 and d["effect"] >= 0.5
    assert d["checks"].get("no_standing_queue", True)
    assert d["checks"].get("losses_without_a_full_queue", True)
    check_rate(d, rate, 0.05)
    assert d["burst_bytes"] > 0




@pytest.mark.parametrize("factor,burst_s", [
    (0.5, SMALL), (0.6, SMALL),
    pytest.param(0.6, LARGE, marks=[pytest.mark.slow]), (0.7, LARGE), (0.85, SMALL),
    pytest.param(0.85, LARGE, marks=pytest.mark.slow)])
def test_policer_on_video(synthetic_call, scenario, factor, burst_s):
    rate = factor * rate_of(synthetic_call, VIDEO, VIDEO_PORT)
    cap, ft, cl, rep = scenario(VIDEO, police(rate, burst_s), port=VIDEO_PORT, seed=12)
    v, a = flow_of(ft, VIDEO_PORT), flow_of(ft, CALL_PORT)
    assert rep.verdict(v) == "policing", why(rep, v)
    check_rate(detected(rep, v, "policing")[0], rate, 0.10)
    assert rep.verdict(a) == "none", why(rep, a)              # the audio flow was not touched


@pytest.mark.parametrize("factor", [0.5, 0.7])
def test_a_policer_on_a_talker_with_silences_at_its_rate(synthetic_call, scenario, factor):
    """A talker with pauses of 3-8 s (over half the time silent) policed at a factor of its mean
    rate, a one-packet bucket. The most that passed in any 5 s window spans a pause (talk spurts
    last 2-6 s) and read the rate low (0.29 of it on the validation's looped LINE call); what
    passed between the losses of each spurt is the rate."""
    call = dict(AUDIO, dtx=(150, 400))
    rate = factor * rate_of(synthetic_call, call, CALL_PORT)
    cap, ft, cl, rep = scenario(call, police(rate, SMALL), port=CALL_PORT, seed=25)
    i = flow_of(ft, CALL_PORT)
    assert rep.verdict(i) == "policing", why(rep, i)
    d = detected(rep, i, "policing")[0]
    assert d["rate_bps"] == pytest.approx(rate, rel=0.05), (d["rate_bps"], rate, d["estimates"].get("rate_read"))


def test_policer_from_the_middle_reports_its_onset(synthetic_call, scenario):
    """A policer switched on at 20 s: the bucket fit starts empty at the first loss."""
    rate = 0.7 * rate_of(synthetic_call, AUDIO, CALL_PORT)
    cap, ft, cl, rep = scenario(AUDIO, police(rate, SMALL), onset_s=20.0, seed=13)
    i = flow_of(ft, CALL_PORT)
    assert rep.verdict(i) == "policing", why(rep, i)
    d = detected(rep, i, "policing")[0]
    assert d["onset_s"] == pytest.approx(20.0, abs=1.5)
    check_rate(d, rate, 0.05)


@pytest.mark.parametrize("call,port,factor,queue_bytes", [
    (AUDIO, CALL_PORT, 0.7, 250.0),          # a queue smaller than one voice packet
    (VIDEO, VIDEO_PORT, 0.5, None),   # 50 ms at the rate: about one video packet
], ids=["voice", "video"])
def test_a_tbf_with_a_tiny_queue_is_policing(synthetic_call, scenario, call, port, factor, queue_bytes):
    """Linux tbf with a queue of about one packet drops like a policer: it is called one."""
    rate = factor * rate_of(synthetic_call, call, port)
    q = queue_bytes if queue_bytes is not None else rate / 8 * 0.05
    cap, ft, cl, rep = scenario(call, Shape(rate, q), port=port, seed=14)
    i = flow_of(ft, port)
    assert rep.verdict(i) == "policing", why(rep, i)
    check_rate(detected(rep, i, "policing")[0], rate, 0.05)
    assert not detected(rep, i, "shaping")


@pytest.mark.parametrize("call,port", [(AUDIO, CALL_PORT), (VIDEO, VIDEO_PORT)], ids=["voice", "video"])
def test_a_shaper_with_a_deep_queue_is_not_policing(synthetic_call, scenario, call, port):
    """The shaper's tail drops are explained by a bucket too, but behind a queue of many packets."""
    rate = 0.6 * rate_of(synthetic_call, call, port)
    cap, ft, cl, rep = scenario(call, Shape(rate, rate / 8 * 0.5), port=port, seed=15)
    i = flow_of(ft, port)
    d = of_kind(rep, i, "policing")
    assert d["decision"] != "detected", why(rep, i)
    assert d["checks"]["no_standing_queue"] is False
    assert rep.verdict(i) != "policing", why(rep, i)


@pytest.mark.parametrize("seed", [0, 1])
def test_the_losses_of_a_congested_link_come_at_a_full_queue(scenario, seed):
    """A shared link's bad periods: the queueing delay climbs to 150 ms and only then does it drop
    (simulate.Congest). The frames just before the losses waited longest, which no policer's
    losses do: the policing test, whatever its p-value, fails that check, and the flows are not
    policing."""
    cap, ft, cl, rep = scenario(VIDEO, Congest(p_gb=0.02, p_bg=0.05, loss_bad=0.6, delay_ms=150), seed=seed)
    for port in (VIDEO_PORT, CALL_PORT):
        i = flow_of(ft, port)
        d = of_kind(rep, i, "policing")
        assert d["checks"]["losses_without_a_full_queue"] is False, why(rep, i)
        assert d["estimates"]["delay_rise_at_losses_ms"] > 30.0
        assert rep.verdict(i) != "policing", why(rep, i)


@pytest.mark.parametrize("p", [0.03, 0.1])
def test_random_loss_is_not_policing(scenario, p):
    cap, ft, cl, rep = scenario(AUDIO, Drop(p), seed=16)
    i = flow_of(ft, CALL_PORT)
    assert of_kind(rep, i, "policing")["decision"] != "detected", why(rep, i)
    assert rep.verdict(i) == "dropping"


def test_without_loss_there_is_nothing_to_explain(scenario):
    cap, ft, cl, rep = scenario(AUDIO)
    i = flow_of(ft, CALL_PORT)
    d = of_kind(rep, i, "policing")
    assert d["decision"] == "not_detected" and "no loss" in d["reason"]


# voice without RTP headers, 20 frames a second of two sizes (a codec with a few frame sizes): a
# queue's output is then nearly periodic, and a voice cadence is found in it
SPARSE_VOICE = dict(seed=8, seconds=40.0, encrypted=True, rate_pps=20, sizes=(60, 100))


@pytest.mark.parametrize("queue_s", [0.5, 3.0])
def test_a_shaper_on_voice_without_rtp_is_not_a_policer(synthetic_call, scenario, queue_s):
    """That voice behind a shaper at half its rate with a deep queue from the first packet: the
    full queue drops every other frame, as regularly as a bucket would (the cadence's empty slots
    pass the regularity test), but it also re-times the packets it passes (size / rate apart, off
    the sender's clock), which a policer never does; so not policing, and the spacing names the
    shaper. A queue full from the first packet also leaves no window of the cadence whole, and
    with no whole cadence the other way its empty slots are no loss signal at all
    (Streams.cadence_sound): then policing says why it cannot test, and where the regularity test
    does run, the re-timing check vetoes it."""
    rate = 0.5 * rate_of(synthetic_call, SPARSE_VOICE, CALL_PORT)
    cap, ft, cl, rep = scenario(SPARSE_VOICE, Shape(rate, rate / 8 * queue_s), port=CALL_PORT, seed=9,
                                label="telegram_call")
    i = flow_of(ft, CALL_PORT)
    d = of_kind(rep, i, "policing")
    if d["test"] == "regularity":
        assert d["pvalue"] < 1e-6, why(rep, i)
        assert d["checks"]["arrivals_on_the_sender_clock"] is False and "re-times" in d["evidence"]
    else:
        assert d["decision"] == "inconclusive" and "never whole" in d["reason"], why(rep, i)
    assert not detected(rep, i, "policing")
    assert rep.verdict(i) == "shaping", why(rep, i)


@pytest.mark.parametrize("factor", [0.5, 0.7])
def test_a_policer_on_voice_without_rtp_is_still_a_policer(synthetic_call, scenario, factor):
    """The same voice behind a token bucket (20 ms at the rate, no queue): the packets that pass
    keep the sender's clock, so the check that vetoes a queue holds, and the cadence's regular
    losses name the policer."""
    rate = factor * rate_of(synthetic_call, SPARSE_VOICE, CALL_PORT)
    cap, ft, cl, rep = scenario(SPARSE_VOICE, police(rate, SMALL), port=CALL_PORT, seed=9, label="telegram_call")
    i = flow_of(ft, CALL_PORT)
    d = of_kind(rep, i, "policing")
    assert d["test"] == "regularity" and d["checks"]["arrivals_on_the_sender_clock"], why(rep, i)
    assert rep.verdict(i) == "policing", why(rep, i)


def _token_bucket(t, size, rate_Bps, depth):
    """An oracle policer (a full bucket at the start): which packets it drops."""
    tokens, last, lost = depth, t[0], np.zeros(len(t), dtype=bool)
    for k in range(len(t)):
        tokens = min(depth, tokens + (t[k] - last) * rate_Bps)
        last = t[k]
        if tokens >= size[k]:
            tokens -= size[k]
        else:
            lost[k] = True
    return lost


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("clocked", [True, False], ids=["clocked", "poisson"])
def test_the_rate_read_between_losses_leaves_out_where_the_bucket_filled(seed, clocked):
    """A sender that alternates 6 s at twice a policer's rate with 20 s at a tenth of it, packets
    never over a second apart (a fax's or a muted video's comfort traffic): between the last loss
    of one burst and the first of the next the bucket filled, and what passed there is not the
    rate (read so, 9-12 kbit/s for 24). Read over the intervals where it stayed empty: within 2 %
    for a sender on a clock (media); within 10 % for Poisson arrivals, whose chance lulls let a
    two-packet bucket fill now and then inside the bursts too (it reads low, never high)."""
    rng = np.random.default_rng(seed)
    rate = 24_000 / 8.0
    t, size, now = [], [], 0.0
    for _ in range(3):
        for pps, dur, bytes_ in ((2 * rate / 150.0, 6.0, 150.0), (0.1 * rate / 60.0, 20.0, 60.0)):
            n = int(pps * dur)
            at = np.arange(n) / pps + rng.uniform(0, 0.002, n) if clocked else np.sort(rng.uniform(0, dur, n))
            t.append(now + at)
            size.append(np.full(n, bytes_) + rng.integers(-10, 10, n))
            now += dur
    t, size = np.concatenate(t), np.concatenate(size).astype(float)
    lost = _token_bucket(t, size, rate, 300.0)
    got = passed_between_losses_bps(t, lost, t[~lost], size[~lost])
    assert got <= rate * 8 * 1.02 and got == pytest.approx(rate * 8, rel=0.02 if clocked else 0.10), (got, rate * 8)
