"""compare: Wehe's area and KS tests on known samples, then two real-kernel captures side by side."""
from __future__ import annotations

import json

import numpy as np
import pytest

from tests.test_robustness import ROOT, run_cli
from throttledetect.report.compare import AREA_THRESHOLD, area_test, two_sample_test

CLEAN = ROOT / "captures" / "call_clean.pcap"
POLICED = ROOT / "captures" / "call_policed.pcap"


def test_area_of_identical_samples_is_zero_and_grows_with_the_gap():
    rng = np.random.default_rng(1)
    a = rng.normal(600e3, 20e3, 200)
    assert area_test(a, a) == 0.0
    # a constant shift d: the area over quantiles 0.001..1 is 0.999 d, divided by the smaller maximum
    b = a - 300e3
    assert area_test(a, b) == pytest.approx(0.999 * 300e3 / b.max(), rel=1e-9)
    assert area_test(a, b) == area_test(b, a)


def test_decisions_follow_wehe_thresholds():
    rng = np.random.default_rng(2)
    same = two_sample_test(rng.normal(600e3, 30e3, 60), rng.normal(600e3, 30e3, 60))
    assert same.decision == "no difference" and same.ks_pvalue > 0.01
    halved = two_sample_test(rng.normal(600e3, 30e3, 60), rng.normal(300e3, 30e3, 60))
    assert halved.decision == "differs" and halved.area >= AREA_THRESHOLD and halved.ks_pvalue < 1e-6
    assert halved.jackknife_reject_share == 1.0
    # a large area on too few samples for the KS test to be sure: inconclusive, as Wehe says
    few = two_sample_test(np.array([600e3] * 6 + [1e3] * 5), np.array([1e3] * 6 + [600e3] * 5))
    assert few.decision in ("no difference", "inconclusive")
    tiny = two_sample_test(np.ones(5), np.ones(50))
    assert tiny.decision == "too few samples" and tiny.area is None
    # above 10 Mbit/s the area threshold is 0.3
    fast = two_sample_test(rng.normal(50e6, 1e6, 60), rng.normal(30e6, 1e6, 60))
    assert fast.area_threshold == 0.3 and fast.decision == "differs"


def test_compare_clean_and_policed_captures():
    proc = run_cli("compare", CLEAN, POLICED, "--format", "json")
    assert proc.returncode == 0, proc.stderr
    cmp = json.loads(proc.stdout)
    rows = {(r["protocol"], r["direction"]): r for r in cmp["protocols"]}
    down = rows[("webrtc", "to you")]
    assert down["baseline"]["verdict"] == "none" and down["test"]["verdict"] == "policing"
    assert down["test"]["median_rate_bps"] < down["baseline"]["median_rate_bps"]
    assert down["test"]["loss"] > 0.1 and down["baseline"]["loss"] < 0.01
    assert down["rate_test"]["decision"] == "differs"
    up = rows[("webrtc", "from you")]                # the policer was on the way to the client only
    assert up["rate_test"]["decision"] == "no difference"


def test_compare_a_saved_report_with_a_capture_and_fail_on(tmp_path):
    saved = tmp_path / "clean.json"
    assert run_cli("analyze", CLEAN, "--format", "json", "-o", saved).returncode == 0
    differs = run_cli("compare", saved, POLICED, "--fail-on", "differs")
    assert differs.returncode == 1, differs.stderr
    assert "differs" in differs.stdout and "none | policing" in differs.stdout
    same = run_cli("compare", saved, CLEAN, "--fail-on", "differs")
    assert same.returncode == 0 and "no difference" in same.stdout


def test_compare_bad_side_is_one_line(tmp_path):
    junk = tmp_path / "junk.json"
    junk.write_text('{"not": "a report"}')
    proc = run_cli("compare", junk, CLEAN)
    assert proc.returncode == 2 and proc.stderr.startswith("throttledetect: error: BASELINE:")
    assert len(proc.stderr.splitlines()) == 1
