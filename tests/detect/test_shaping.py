"""Shaping on synthetic calls: a rate cap with a deep queue is shaping (not policing), with its rate;
what only looks like a queue (a sender clock that runs fast or slow, Wi-Fi jitter, a congested
link's episodes) is not."""
from __future__ import annotations

import numpy as np
import pytest

from tests.detect.calls import (AUDIO, CALL_PORT, VIDEO, VIDEO_PORT, detected, flow_of, of_kind, rate_of, why)
from throttledetect.simulate import Jitter, Shape


def shaper(rate, queue_s):
    return Shape(rate, rate / 8 * queue_s)


@pytest.mark.parametrize("call,port,factor", [
    (AUDIO, CALL_PORT, 0.6), (AUDIO, CALL_PORT, 0.85), (VIDEO, VIDEO_PORT, 0.6), (VIDEO, VIDEO_PORT, 0.8)],
    ids=["voice-0.6", "voice-0.85", "video-0.6", "video-0.8"])
def test_a_shaper_with_a_deep_queue_from_the_start(synthetic_call, scenario, call, port, factor):
    """Rate factor x the flow's, a queue of 500 ms at that rate, on from the first packet: shaping,
    rate within 5 %, the queue in the evidence, and not policing."""
    rate = factor * rate_of(synthetic_call, call, port)
    cap, ft, cl, rep = scenario(call, shaper(rate, 0.5), port=port, seed=21)
    i = flow_of(ft, port)
    assert rep.verdict(i) == "shaping", why(rep, i)
    (d,) = detected(rep, i, "shaping")
    assert d["rate_bps"] == pytest.approx(rate, rel=0.05)
    assert d["effect"] >= 100.0                                   # ms of queueing delay (the queue holds 500)
    assert d["estimates"]["queue_packets"] >= 2.0
    assert not detected(rep, i, "policing")


@pytest.mark.parametrize("factor", [0.7, 0.85])
def test_a_shaper_on_a_talker_with_silences(synthetic_call, scenario, factor):
    """A talker with pauses of 3-8 s and no comfort noise (over half the time silent), shaped at
    a factor of its mean rate with a 500 ms queue: the queue stands whenever it talks, never in
    its silences, and the cap is faster than the mean over talk and silence. Shaping all the same
    (its rate and the share of time a queue stood are read over the time the sender sends)."""
    call = dict(AUDIO, dtx=(150, 400))
    rate = factor * rate_of(synthetic_call, call, CALL_PORT)
    cap, ft, cl, rep = scenario(call, shaper(rate, 0.5), port=CALL_PORT, seed=23)
    i = flow_of(ft, CALL_PORT)
    assert rep.verdict(i) == "shaping", why(rep, i)
    d = detected(rep, i, "shaping")[0]
    assert d["rate_bps"] == pytest.approx(rate, rel=0.05)
    assert d["onset_s"] < 5.0, d["onset_s"]          # on from the start: no split of the delay moves it


READS_HIGH = pytest.mark.xfail(strict=True, reason=(
    "shaping's rate on a 30 s talker with pauses: the cap read from the arrival gaps' most common "
    "rate is 24.6 kbit/s for a 22.1 kbit/s shaper (+11 %), with one bin of gaps at the cap over 15 s"))


@pytest.mark.parametrize("seed", [pytest.param(s, marks=READS_HIGH) if s == 36 else s for s in range(30, 50)])
def test_a_shaper_switched_on_mid_call_on_a_talker_with_silences(synthetic_call, scenario, seed):
    """A talker with pauses of 3-8 s shaped from 15 s of a 30 s call at 0.7 of its rate: its pauses
    leave few windows with a delay to read, so where the queue began is often not significant on
    its own while the queue shows in the delay whenever packets leave at the cap. The cap's
    spacing is then read from the best split on, not from the call's start, whose unshaped half
    holds no gap at the cap (read so, the share at the cap fell under one half: the looped LINE
    call shaped from 30 s was inconclusive in all 10 trials). Where shaping is named, its rate is
    the shaper's."""
    call = dict(AUDIO, dtx=(150, 400), seconds=30.0, seed=seed)
    rate = 0.7 * rate_of(synthetic_call, call, CALL_PORT)
    cap, ft, cl, rep = scenario(call, shaper(rate, 0.5), port=CALL_PORT, onset_s=15.0, seed=seed)
    i = flow_of(ft, CALL_PORT)
    d = next(x for x in rep.detections[i] if x["kind"] == "shaping")
    if d["test"] in ("coupling", "spacing"):        # the queue seen without a significant onset
        assert 12.0 <= d["onset_s"] <= 15.0 + 8.0, (d["onset_s"], why(rep, i))
    if d["decision"] == "detected":
        assert d["rate_bps"] == pytest.approx(rate, rel=0.10), (d["rate_bps"], rate)


@pytest.mark.parametrize("impairment", [None, Jitter(20.0), Jitter(8.0, shape=2.0)], ids=["clean", "jitter", "wifi-like"])
def test_a_talker_with_silences_is_not_shaped_by_its_pauses(scenario, impairment):
    """The same talker unshaped, clean or jittered: its pauses are no queue and its spurts no cap."""
    cap, ft, cl, rep = scenario(dict(AUDIO, dtx=(150, 400)), impairment, seed=24)
    i = flow_of(ft, CALL_PORT)
    assert not detected(rep, i, "shaping"), why(rep, i)
    assert rep.verdict(i) == "none", why(rep, i)


@pytest.mark.parametrize("call,port", [
    (AUDIO, CALL_PORT),
    (VIDEO, VIDEO_PORT)], ids=["voice", "video"])
def test_a_shaper_switched_on_mid_call(synthetic_call, scenario, call, port):
    rate = 0.7 * rate_of(synthetic_call, call, port)
    cap, ft, cl, rep = scenario(call, shaper(rate, 0.5), port=port, onset_s=20.0, seed=22)
    i = flow_of(ft, port)
    assert rep.verdict(i) == "shaping", why(rep, i)
    assert detected(rep, i, "shaping")[0]["rate_bps"] == pytest.approx(rate, rel=0.05)


@pytest.mark.parametrize("call,port", [(AUDIO, CALL_PORT), (VIDEO, VIDEO_PORT)], ids=["voice", "video"])
def test_a_shaper_switched_on_mid_call_reports_its_onset(synthetic_call, scenario, call, port):
    rate = 0.7 * rate_of(synthetic_call, call, port)
    cap, ft, cl, rep = scenario(call, shaper(rate, 0.5), port=port, onset_s=20.0, seed=22)
    i = flow_of(ft, port)
    assert detected(rep, i, "shaping")[0]["onset_s"] == pytest.approx(20.0, abs=3.0), why(rep, i)


@pytest.mark.parametrize("skew", [0.0025, -0.0025])
def test_a_sender_clock_skew_is_not_shaping(scenario, skew):
    """The remote sender's media clocks (audio and video) run 0.25 % fast or slow: 100 ms of "delay"
    drift over 40 s, no queue anywhere."""
    cap, ft, cl, rep = scenario(dict(VIDEO, skew=skew))
    for port in (CALL_PORT, VIDEO_PORT):
        i = flow_of(ft, port)
        assert rep.verdict(i) == "none", why(rep, i)
        d = of_kind(rep, i, "shaping")
        assert d["decision"] == "not_detected"
        assert abs(d["estimates"]["skew_ppm"]) == pytest.approx(2500, rel=0.1)


def test_a_sender_clock_skew_under_jitter_is_not_shaping(scenario):
    cap, ft, cl, rep = scenario(dict(VIDEO, skew=-0.0025), Jitter(8.0, shape=2.0), seed=23)
    for port in (CALL_PORT, VIDEO_PORT):
        i = flow_of(ft, port)
        assert rep.verdict(i) == "none", why(rep, i)


@pytest.mark.parametrize("mean_ms", [5.0, 20.0, 50.0])
def test_jitter_is_not_shaping(scenario, mean_ms):
    cap, ft, cl, rep = scenario(VIDEO, Jitter(mean_ms), seed=24)
    for port in (CALL_PORT, VIDEO_PORT):
        i = flow_of(ft, port)
        assert not detected(rep, i, "shaping"), why(rep, i)
        assert rep.verdict(i) == "none", why(rep, i)


def test_no_queue_no_shaping(scenario):
    cap, ft, cl, rep = scenario(VIDEO)
    for port in (CALL_PORT, VIDEO_PORT):
        i = flow_of(ft, port)
        d = of_kind(rep, i, "shaping")
        assert d["decision"] == "not_detected" and (d.get("effect") or 0.0) < 5.0, why(rep, i)


# ------------------------------------------------------------------------------- how a queue spaces packets

def _direction(t, size):
    import numpy as np
    from throttledetect.streams.packets import DirectionPackets
    t, size = np.asarray(t, float), np.asarray(size, float)
    return DirectionPackets(flow=0, direction=1, rows=np.arange(len(t)), t=t, size=size,
                            payload=size.astype("int64") - 42)


def _video_sizes(n, seed):
    import numpy as np
    return np.random.default_rng(seed).integers(200, 1250, n).astype(float)


@pytest.mark.parametrize("how", ["packets", "bursts"])
def test_the_spacing_of_a_backlogged_queue_reads_its_rate(how):
    """A queue releasing at 400 kbit/s, backlogged throughout: one packet at a time (a link or a
    tbf: each packet size / C after the one before), or in bursts of 1-4 packets back to back
    after which it waits until the tokens spent are earned back (an htb class). Either way most
    gaps sit at the cap, the cap is the rate, and the cap binds."""
    import numpy as np
    from throttledetect.detect.config import DEFAULT_CONFIG
    from throttledetect.detect.shaping import binding_cap, spacing_test
    P, C = DEFAULT_CONFIG.shaping, 400_000.0
    size = _video_sizes(3000, 5)
    if how == "packets":
        t = np.cumsum(size * 8 / C)
    else:
        rng = np.random.default_rng(6)
        t, now, k = [], 0.0, 0
        while k < len(size):
            m = int(rng.integers(1, 5))
            burst = size[k:k + m]
            t += [now + 12e-6 * j for j in range(len(burst))]
            now += burst.sum() * 8 / C
            k += m
    sp = spacing_test(_direction(t, size), P)
    assert sp["reading"] == how
    assert sp["cap"] == pytest.approx(C, rel=0.02) and sp["share"] >= 0.9
    assert binding_cap(sp, P)[0]


def test_a_sender_clock_is_no_cap():
    """Voice frames every 20 ms and video frames every 33 ms sent as bursts at line rate, sizes
    varying, no queue: neither reading finds most gaps at one rate."""
    import numpy as np
    from throttledetect.detect.config import DEFAULT_CONFIG
    from throttledetect.detect.shaping import binding_cap, spacing_test
    P = DEFAULT_CONFIG.shaping
    rng = np.random.default_rng(7)
    voice_t = np.arange(1500) * 0.02 + rng.exponential(0.001, 1500)
    voice_s = rng.integers(80, 161, 1500).astype(float)
    sp = spacing_test(_direction(np.sort(voice_t), voice_s), P)
    assert not binding_cap(sp, P)[0] and sp["share"] < 0.5
    t, s = [], []
    for f in range(900):
        n = int(rng.integers(1, 6))
        t += [f / 30 + 40e-6 * j for j in range(n)]
        s += list(rng.integers(300, 1250, n).astype(float))
    sp = spacing_test(_direction(t, s), P)
    assert not binding_cap(sp, P)[0] and sp["share"] < 0.5


def test_the_queue_a_shaper_already_on_filled_is_read_from_the_first_frames_base():
    """A queue that fills while the first frames pass (30 at the base delay, then 3 ms more per
    frame up to 170 ms, where it stands with a little jitter): the leading frames are the ramp
    too, so the queue's delay is the standing level over the least delay the ramp began at, not
    over the highest leading frame."""
    from throttledetect.detect.shaping import leading_test
    rng = np.random.default_rng(5)
    ramp = np.r_[np.zeros(30), np.arange(1, 57) * 3.0]
    ms = np.r_[ramp, 170.0 + rng.exponential(3.0, 2000)]
    r = leading_test(ms)
    assert r.pvalue < 1e-50 and r.statistic >= 30
    assert r.estimates["gap_ms"] == pytest.approx(170.0, abs=5.0)


# ------------------------------------------------------------------------------- without a sender clock

ENCRYPTED_VIDEO = dict(seed=12, seconds=40.0, encrypted=True, video=True)   # voice and video, no RTP headers


def test_a_queue_that_drains_for_a_moment_still_stands():
    """A token-bucket shaper at 400 kbit/s whose queue drains for a moment every 90 packets (a
    quieter frame) and then sends 3 packets back to back on its refilled tokens: strict runs of
    gaps at the cap last about 2 s, but the queue stands all along (most of every few gaps at the
    cap), so the backlog lasts the whole 30 s."""
    from throttledetect.detect.config import DEFAULT_CONFIG
    from throttledetect.detect.shaping import binding_cap, spacing_test
    P, C = DEFAULT_CONFIG.shaping, 400_000.0
    size = _video_sizes(1800, 8)
    gaps = size * 8 / C
    burst = np.zeros(len(size), bool)
    for k in range(90, len(size) - 3, 90):
        burst[k + 1:k + 4] = True
    gaps[burst] = 20e-6
    t = np.cumsum(gaps)
    sp = spacing_test(_direction(t, size), P)
    assert sp["share"] >= 0.9 and binding_cap(sp, P)[0]
    assert sp["backlog_s"] >= 0.9 * (t[-1] - t[0]), sp["backlog_s"]


def test_a_shaper_switched_on_mid_call_without_a_sender_clock(synthetic_call, scenario):
    """Encrypted video (no RTP timestamps: the spacing reading alone) shaped from 20 s of a 40 s
    call at 0.7 of its rate: over the whole flow half of the gaps come on the sender's clock,
    too few at the cap for the checks; read from the onset of the per-second share of gaps at
    the cap they pass. Shaping, with the onset and the shaper's rate."""
    rate = 0.7 * rate_of(synthetic_call, ENCRYPTED_VIDEO, VIDEO_PORT)
    cap, ft, cl, rep = scenario(ENCRYPTED_VIDEO, shaper(rate, 0.5), port=VIDEO_PORT, onset_s=20.0, seed=25)
    i = flow_of(ft, VIDEO_PORT)
    assert rep.verdict(i) == "shaping", why(rep, i)
    (d,) = detected(rep, i, "shaping")
    assert d["test"] == "spacing" and d["rate_bps"] == pytest.approx(rate, rel=0.05)
    assert d["onset_s"] == pytest.approx(20.0, abs=3.0), d["onset_s"]


@pytest.mark.parametrize("impairment", [None, Jitter(20.0), Jitter(8.0, shape=2.0)], ids=["clean", "jitter", "wifi-like"])
def test_encrypted_video_is_not_shaped_by_jitter_from_mid_call(scenario, impairment):
    """The same encrypted call, clean or jittered from 20 s (a change mid-call that is no cap): no
    onset of gaps at a cap, no shaping."""
    cap, ft, cl, rep = scenario(ENCRYPTED_VIDEO, impairment, port=None if impairment is None else VIDEO_PORT,
                                onset_s=None if impairment is None else 20.0, seed=26)
    for port in (CALL_PORT, VIDEO_PORT):
        i = flow_of(ft, port)
        assert not detected(rep, i, "shaping"), why(rep, i)


# ------------------------------------------------------------------------------- a load that comes and goes

PAGED = dict(AUDIO, seed=31, pages=(5.0, 12.0, 5.0))    # 5 s at 5x the payloads, 12 s at 1x, never a pause


@pytest.mark.parametrize("factor,queue_s", [(0.6, 0.2), (0.7, 0.15), (0.85, 0.2)])
def test_a_shaper_that_binds_only_while_the_load_is_high(synthetic_call, scenario, factor, queue_s):
    """A sender whose load comes and goes (5 s of payloads 5x larger, then 12 s at 1x: a fax's
    pages), shaped at 0.6-0.85 of its mean rate with a queue of 150-200 ms: the cap is 1.3-1.9x
    the low load and under half the high one, so the queue stands and drops only during the pages. Over the whole flow under
    half the gaps sit at the cap and the queue stands under half the time (the whole-flow reading
    of the cap does not bind; a looped T.38 fax trace under 0.5-0.85x shapers was inconclusive in
    29 of 30 trials). Where the flow sent more than the cap (its lost packets counted by their
    sequence numbers), only the cap arrived: shaping, at its rate, not policing."""
    rate = factor * rate_of(synthetic_call, PAGED, CALL_PORT)
    cap, ft, cl, rep = scenario(PAGED, shaper(rate, queue_s), port=CALL_PORT, seed=32)
    i = flow_of(ft, CALL_PORT)
    assert rep.verdict(i) == "shaping", why(rep, i)
    (d,) = detected(rep, i, "shaping")
    assert d["rate_bps"] == pytest.approx(rate, rel=0.05)
    assert d["estimates"]["cap_checks"]["load_over_cap_s"] >= 10.0, d["estimates"]


@pytest.mark.parametrize("impairment", [None, Jitter(20.0), "congest"], ids=["clean", "jitter", "congested"])
def test_a_load_that_comes_and_goes_is_not_a_shaper(scenario, impairment):
    """The same sender clean, under Wi-Fi-like jitter and on a congested shared link (bursty loss
    and queueing in episodes): its load steps up 4x and back without any cap holding it, and
    congestion's losses come with others' traffic, not above one rate of this flow's."""
    from throttledetect.simulate import Congest
    imp = Congest() if impairment == "congest" else impairment
    cap, ft, cl, rep = scenario(PAGED, imp, select="all" if impairment is not None else None, seed=33)
    i = flow_of(ft, CALL_PORT)
    assert not detected(rep, i, "shaping"), why(rep, i)
    assert rep.verdict(i) in ("none", "inconclusive"), why(rep, i)


def test_a_policer_on_a_load_that_comes_and_goes_is_policing(synthetic_call, scenario):
    """A token-bucket policer (no queue) at 0.7 of the paged sender's mean rate: it drops during
    the pages as the shaper does, but nothing waits, so no queue couples to the spacing."""
    from throttledetect.simulate import Police
    rate = 0.7 * rate_of(synthetic_call, PAGED, CALL_PORT)
    cap, ft, cl, rep = scenario(PAGED, Police(rate), port=CALL_PORT, seed=34)
    i = flow_of(ft, CALL_PORT)
    assert not detected(rep, i, "shaping"), why(rep, i)
    assert rep.verdict(i) == "policing", why(rep, i)


TWO_READINGS = pytest.mark.xfail(strict=True, reason=(
    "detect.shaping and detect.policing read one queue two ways: a 100 ms tbf at 0.85x the paged "
    "sender's rate (1.5 kB) is 1.3 of the large packets that arrive after where shaping reads the "
    "queue from (a split of the delay at 34.5 s, not significant alone) and 1.7 of the whole "
    "direction's, where policing reads it: too small for shaping, too large for policing, and the "
    "verdict is dropping. Counting both in the direction's packets fixed this and cost the looped "
    "LINE call's shapers from 30 s (10/10 -> 0/10: its packets before the shaper are 4x larger)"))


@pytest.mark.parametrize("factor,queue_s", [(0.6, 0.1), (0.7, 0.1), pytest.param(0.85, 0.1, marks=TWO_READINGS),
                                            (0.7, 0.05)])
def test_a_tbf_of_a_packet_or_two_is_policing_or_shaping_never_neither(synthetic_call, scenario, factor, queue_s):
    """A tbf whose queue holds one or two of the paged sender's large packets (50-100 ms at 0.6-0.85
    of its rate) is a policer or a shaper by the size of its queue, and the two detectors read
    that size the same way: where the shaping check says the queue holds several packets the
    policing check says it stands, and the other way round; never neither (`dropping`)."""
    rate = factor * rate_of(synthetic_call, PAGED, CALL_PORT)
    cap, ft, cl, rep = scenario(PAGED, shaper(rate, queue_s), port=CALL_PORT, seed=32)
    i = flow_of(ft, CALL_PORT)
    assert rep.verdict(i) in ("policing", "shaping"), why(rep, i)
    sh = of_kind(rep, i, "shaping")
    po = of_kind(rep, i, "policing")
    several = sh["checks"]["queue_of_several_packets"]
    assert po["checks"]["no_standing_queue"] is (not several), why(rep, i)
