"""Rate evidence without a loss signal (detect/rate_step.py): a lasting step down of the rate
arriving, told beside the loss tests' inconclusive reason, never turned into a verdict; not told
when the rate holds, or when both directions fall together (the call went quiet)."""
from __future__ import annotations

import numpy as np
import pytest

from tests.detect.calls import CALL_PORT, ENCRYPTED, flow_of, of_kind, rate_of, why
from throttledetect.detect.rate_step import describe, step_down
from throttledetect.simulate import Police
from throttledetect.streams.packets import DirectionPackets

JITTERED = dict(ENCRYPTED, seed=21, jitter_ms=30.0)     # no voice cadence survives: no loss signal


def test_a_cap_from_mid_call_is_told_not_decided(scenario, synthetic_call):
    rate = rate_of(synthetic_call, JITTERED, CALL_PORT)
    cap, ft, cl, rep = scenario(JITTERED, Police(0.5 * rate), port=CALL_PORT, onset_s=20.0,
                                label="telegram_call")
    i = flow_of(ft, CALL_PORT)
    assert rep.verdict(i) == "inconclusive", why(rep, i)
    d = of_kind(rep, i, "dropping")
    assert d["decision"] == "inconclusive" and d["reason"].startswith("no loss signal"), d
    est = d["estimates"]
    assert est["rate_step_onset_s"] == pytest.approx(20.0, abs=2.0)
    assert est["rate_after_bps"] <= 0.7 * est["rate_before_bps"]
    assert est["rate_step_pvalue"] < 0.01
    assert est["sent_after_bps"] == pytest.approx(est["sent_before_bps"], rel=0.15)
    assert "steps down" in d["reason"] and "look alike" in d["reason"]
    assert "steps down" in rep.verdicts[i][1]
    p = of_kind(rep, i, "policing")
    assert p["decision"] == "inconclusive" and p["estimates"]["rate_step_onset_s"] == est["rate_step_onset_s"]


def test_the_same_call_untouched_tells_no_step(scenario):
    cap, ft, cl, rep = scenario(JITTERED, None, label="telegram_call")
    i = flow_of(ft, CALL_PORT)
    d = of_kind(rep, i, "dropping")
    assert d["decision"] == "inconclusive" and d["reason"].startswith("no loss signal"), d
    assert "rate_step_onset_s" not in d.get("estimates", {}) and "steps down" not in d["reason"]


class _Ctx:
    """What step_down reads of a DetectContext."""

    alpha = 0.01

    def __init__(self, inbound, outbound):
        self._cache = {}
        self._dirs = {0: inbound, 1: outbound}

    def packets(self, i, d):
        return self._dirs[d]

    def rng(self, *key):
        return np.random.default_rng(0)


def _train(rate_pps_before, rate_pps_after, seconds=60.0, at=30.0, size=200.0, d=0, seed=0):
    rng = np.random.default_rng(seed)
    t = np.concatenate([np.arange(0.0, at, 1.0 / rate_pps_before), np.arange(at, seconds, 1.0 / rate_pps_after)])
    t = np.sort(t + rng.uniform(0, 0.002, len(t)))
    n = len(t)
    return DirectionPackets(0, d, np.arange(n), t, np.full(n, size) + rng.integers(0, 40, n), np.full(n, 150))


def _none(d):
    return DirectionPackets(0, d, np.zeros(0, np.int64), np.zeros(0), np.zeros(0), np.zeros(0, np.int64))


def test_step_down_while_this_host_keeps_sending():
    step = step_down(_Ctx(_train(50, 25), _train(50, 50, d=1, seed=1)), 0, 0)
    assert step is not None and step["rate_step_onset_s"] == pytest.approx(30.0, abs=1.5)
    assert step["rate_after_bps"] / step["rate_before_bps"] == pytest.approx(0.5, abs=0.05)
    assert "holds" in describe(step)


def test_no_step_when_both_directions_fall_together_or_nothing_changes():
    assert step_down(_Ctx(_train(50, 25), _train(50, 25, d=1, seed=1)), 0, 0) is None     # the call went quiet
    assert step_down(_Ctx(_train(50, 50), _train(50, 50, d=1, seed=1)), 0, 0) is None     # steady
    assert step_down(_Ctx(_train(50, 46), _train(50, 50, d=1, seed=1)), 0, 0) is None     # below the effect asked


def test_a_capture_of_one_direction_says_it_cannot_compare():
    step = step_down(_Ctx(_train(50, 25), _none(1)), 0, 0)
    assert step is not None and step["sent_before_bps"] is None
    assert "not in the capture" in describe(step)
