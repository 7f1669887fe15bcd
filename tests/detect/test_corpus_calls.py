"""Real call traces (the Wehe Teams and Skype captures of the corpus: one UDP flow carrying audio
and video RTP), looped to 40 s and impaired by throttledetect.simulate towards the client, as the
validation matrix does. These traces hold no other flow: there is no control on the path, so random
loss from the start can only be "inconclusive" (a lossy path).

Stated tolerances: policer and shaper rates within 10 % of the configured rate when the detector
says the rate is identifiable (else its lower bound must not exceed the rate); onsets within 5 s.
"""
from __future__ import annotations

import pytest

from tests.corpus import need_corpus
from tests.detect.calls import THROTTLING, trace_base as base, trace_run as run, why
from throttledetect.simulate import MTU_BYTES, BlockAfter, Congest, Drop, Jitter, Police, Shape

SECONDS = 40.0          # calls.TRACE_SECONDS
pytestmark = need_corpus


def rate(name: str) -> float:
    b = base(name)
    return b.rate_bps[b.targets[0]]


TRACES = ["teams", "skype"]


def detected(a, j, kind):
    return [d for d in a.detections.detections[j] if d["kind"] == kind and d["decision"] == "detected"]


def check_rate(d, truth, tolerance=0.10):
    est = d["estimates"]
    if est.get("rate_identifiable", True):
        assert d["rate_bps"] == pytest.approx(truth, rel=tolerance), (d["rate_bps"], truth, est.get("rate_range_bps"))
    else:
        assert est["rate_range_bps"][0] <= truth * (1 + tolerance), (est["rate_range_bps"], truth)


@pytest.mark.parametrize("name", TRACES)
def test_the_trace_is_one_call_flow(name):
    b = base(name)
    assert len(b.targets) == 1 and b.info["duration_s"] >= SECONDS - 1
    assert rate(name) > 50_000


@pytest.mark.parametrize("name", TRACES)
def test_clean_is_none(name):
    a, j = run(name)
    assert a.detections.verdicts[j] == ("none", ""), why(a.detections, j)


@pytest.mark.parametrize("name", TRACES)
def test_random_drop_from_the_start_without_controls_is_inconclusive(name):
    a, j = run(name, Drop(0.05))
    v, reason = a.detections.verdicts[j]
    assert v == "inconclusive" and reason.startswith("lossy path"), why(a.detections, j)


@pytest.mark.parametrize("name", TRACES)
def test_drop_from_the_middle_is_dropping_at_its_onset(name):
    a, j = run(name, Drop(0.05), onset_s=20.0)
    assert a.detections.verdict(j) == "dropping", why(a.detections, j)
    assert detected(a, j, "dropping")[0]["onset_s"] == pytest.approx(20.0, abs=5.0)


TEAMS_RATE = pytest.mark.xfail(strict=True, reason=(
    "detect.policing on the Teams trace (bursty video) under a 1.5 kB bucket: the bucket fills between the "
    "video's bursts, so what it passes, read between the losses, is below its configured rate, and the "
    "bucket fit's range, reported identifiable, excludes the rate too -- 0.5x: 302 kbit/s read (fit "
    "304-330) for 363; 0.85x: 305 (fit 306-327) for 618 (the rate is not identifiable there; the estimate "
    "should say 'at least'). Under a 250 ms bucket the rate is read right (0.7x: 508 for 509; 0.85x: 618 for "
    "618) since the reading leaves out the intervals where the bucket filled"))
SLOW = pytest.mark.slow
POLICE_CASES = [pytest.param("teams", 0.5, 0.02, marks=TEAMS_RATE), ("teams", 0.7, 0.25),
                pytest.param("teams", 0.85, 0.02, marks=[TEAMS_RATE, SLOW]),
                pytest.param("teams", 0.85, 0.25, marks=SLOW),
                ("skype", 0.5, 0.02), pytest.param("skype", 0.7, 0.25, marks=SLOW),
                pytest.param("skype", 0.85, 0.02, marks=SLOW), ("skype", 0.85, 0.25)]


@pytest.mark.parametrize("name,factor,burst_s", POLICE_CASES)
def test_policer_is_policing_with_its_rate(name, factor, burst_s):
    r = factor * rate(name)
    a, j = run(name, Police(r, max(float(MTU_BYTES), r / 8 * burst_s)))
    assert a.detections.verdict(j) == "policing", why(a.detections, j)
    check_rate(detected(a, j, "policing")[0], r)


@pytest.mark.parametrize("name", TRACES)
def test_shaper_with_a_deep_queue_is_shaping_with_its_rate(name):
    r = 0.5 * rate(name)
    a, j = run(name, Shape(r, r / 8 * 0.5))
    assert a.detections.verdict(j) == "shaping", why(a.detections, j)
    check_rate(detected(a, j, "shaping")[0], r, 0.05)
    assert not detected(a, j, "policing")


# A tbf whose queue holds one video packet (1500 B) is a policer: it queues no more than the packet
# waiting for its tokens. On the Skype trace (0.2 kB mean packets beside 1.2 kB video ones) the
# queue read 2 mean packets and the verdict was shaping until the queue was counted in the flow's
# large packets (shaping.queue_unit_bytes).
@pytest.mark.parametrize("name", TRACES)
def test_tbf_with_a_tiny_queue_is_policing(name):
    r = 0.7 * rate(name)
    a, j = run(name, Shape(r, float(MTU_BYTES)))
    assert a.detections.verdict(j) == "policing", why(a.detections, j)


@pytest.mark.parametrize("imp", [Drop(0.03), Congest(), Jitter(20.0), Jitter(50.0)],
                         ids=["drop-every-flow", "congest", "jitter20", "jitter50"])
@pytest.mark.parametrize("name", TRACES)
def test_confounders_are_never_throttling(name, imp):
    a, j = run(name, imp, select="all")
    assert a.detections.verdict(j) not in THROTTLING, why(a.detections, j)


def test_blocking_after_15_s_of_a_host_that_sends_media(name="skype"):
    a, j = run(name, BlockAfter(15.0))
    assert a.detections.verdict(j) == "blocking", why(a.detections, j)
    # BlockAfter counts from the flow's first packet
    start = (int(a.flows.first_ns[j]) - int(a.capture.packets.ts_ns.min())) / 1e9
    assert detected(a, j, "blocking")[0]["onset_s"] == pytest.approx(start + 15.0, abs=0.5)


def test_blocking_while_the_host_listens_is_found_when_its_media_comes_back():
    """The Teams trace's client sends 1-4 packets a second after its first 10 s of each 20 s loop
    (it listens; RTCP-like), so when inbound stops at 15 s it looks like a hang-up at first; but
    at the loop's next turn it sends its media again (50 a second) while nothing arrives: a host
    whose call ended never does."""
    from throttledetect.detect.blocking import RESUMED_SECONDS
    a, j = run("teams", BlockAfter(15.0))
    assert a.detections.verdict(j) == "blocking", why(a.detections, j)
    d = detected(a, j, "blocking")[0]
    start = (int(a.flows.first_ns[j]) - int(a.capture.packets.ts_ns.min())) / 1e9
    assert d["onset_s"] == pytest.approx(start + 15.0, abs=0.5)
    assert d["estimates"]["outbound_media_seconds"] >= RESUMED_SECONDS
