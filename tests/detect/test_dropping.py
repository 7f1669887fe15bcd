"""Selective dropping: random loss on the call only is found against clean controls; loss shared by
every flow (congestion, or random loss on all) is not selective; DTX is not loss; no loss signal
means inconclusive."""
from __future__ import annotations

import numpy as np
import pytest

from throttledetect.detect import run_detectors
from throttledetect.detect.common import DetectContext
from throttledetect.detect.dropping import coincidence_test, runs_test
from throttledetect.simulate import Congest, Drop, Jitter
from tests.detect.test_registry import (CALL_PORT, TCP_CTRL_PORT, UDP_CTRL_PORT, analyze, base_call,  # noqa: F401
                                        flow_of, impaired, make_call, of_kind, relabel)


def test_random_drop_on_the_call_only(base_call, tmp_path):
    cap, ft, cl = impaired(base_call, tmp_path / "d.pcap", Drop(0.05), seed=2)
    rep = run_detectors(cap, ft, cl)
    i, tcp, udp = flow_of(ft, CALL_PORT), flow_of(ft, TCP_CTRL_PORT), flow_of(ft, UDP_CTRL_PORT)
    d = of_kind(rep, i, "dropping")
    assert rep.verdict(i) == "dropping", d
    assert d.decision == "detected" and d.qvalue < 1e-6
    assert d.estimates["loss_rate"] == pytest.approx(0.05, abs=0.012)
    assert d.estimates["control_loss_rate"] == 0.0 and tcp in d.estimates["controls"]
    assert d.effect == pytest.approx(d.estimates["loss_rate"])
    assert d.estimates["runs_p_clustered"] > 0.01          # independent losses
    assert rep.verdict(tcp) == rep.verdict(udp) == "none"
    ctx = DetectContext(cap, ft, cl)
    assert ctx.loss(tcp, ctx.inbound(tcp)[0]).n_lost == 0   # the control is clean


def test_drop_starting_mid_call(base_call, tmp_path):
    cap, ft, cl = impaired(base_call, tmp_path / "d.pcap", Drop(0.05), onset_s=30.0, seed=3)
    rep = run_detectors(cap, ft, cl)
    i = flow_of(ft, CALL_PORT)
    d = of_kind(rep, i, "dropping")
    assert rep.verdict(i) == "dropping", d
    assert 26.0 <= d.estimates["onset_s"] <= 34.0


def test_congestion_on_all_flows_is_not_selective(base_call, tmp_path):
    """Correlated bursty losses on every flow (a congested shared link) -> not selective dropping."""
    cap, ft, cl = impaired(base_call, tmp_path / "c.pcap", Congest(p_gb=0.02, p_bg=0.1, loss_bad=0.5), seed=4)
    rep = run_detectors(cap, ft, cl)
    i = flow_of(ft, CALL_PORT)
    d = of_kind(rep, i, "dropping")
    assert d.estimates["loss_rate"] > 0.02                  # the call did lose packets
    assert d.decision == "not_detected" and rep.verdict(i) != "dropping", d
    assert flow_of(ft, TCP_CTRL_PORT) in d.estimates["shared_with"]
    assert "congestion" in d.evidence
    assert d.estimates["runs_p_clustered"] < 0.01           # bursts


def test_random_loss_on_every_flow_is_not_selective(base_call, tmp_path):
    cap, ft, cl = impaired(base_call, tmp_path / "a.pcap", Drop(0.04), select="all", seed=5)
    rep = run_detectors(cap, ft, cl)
    i = flow_of(ft, CALL_PORT)
    assert of_kind(rep, i, "dropping").decision == "not_detected"
    assert rep.verdict(i) == "none"


def test_dtx_is_not_loss(tmp_path):
    src = tmp_path / "dtx.pcap"
    make_call(src, seed=7, dtx=True)
    cap, ft, cl = impaired(src, tmp_path / "j.pcap", Jitter(3.0), seed=7)
    rep = run_detectors(cap, ft, cl)
    i = flow_of(ft, CALL_PORT)
    d = of_kind(rep, i, "dropping")
    assert d.estimates["loss_rate"] == 0.0 and d.decision == "not_detected"
    assert of_kind(rep, i, "blocking").decision != "detected"
    assert rep.verdict(i) == "none"


def test_no_loss_signal_is_inconclusive(tmp_path):
    """Encrypted media without RTP headers: loss cannot be measured; gaps are reported."""
    src = tmp_path / "enc.pcap"
    make_call(src, seed=8, encrypted=True, seconds=30.0)
    cap, ft, cl = impaired(src, tmp_path / "d.pcap", Drop(0.1), select=str(flow_of(analyze(src)[1], CALL_PORT)))
    i = flow_of(ft, CALL_PORT)
    rep = run_detectors(cap, ft, relabel(cl, i, "telegram_call"))
    d = of_kind(rep, i, "dropping")
    assert d.decision == "inconclusive" and "no loss signal" in d.reason
    assert d.estimates["gap_inferred_loss"] == pytest.approx(0.1, abs=0.04)


def test_without_controls_the_loss_pattern_decides(tmp_path):
    """The call alone: random drops (independent, no queue before them) are called dropping with
    selectivity unconfirmed; congestion (bursts after the delay rises) is not."""
    src = tmp_path / "solo.pcap"
    make_call(src, seed=9, seconds=40.0, controls=False)
    cap, ft, cl = impaired(src, tmp_path / "d.pcap", Drop(0.04), seed=9)
    rep = run_detectors(cap, ft, cl)
    i = flow_of(ft, CALL_PORT)
    d = of_kind(rep, i, "dropping")
    assert rep.verdict(i) == "dropping", d
    assert "unconfirmed" in d.estimates["selectivity"] and d.estimates["path_loss_pvalue"] < 1e-6
    cap, ft, cl = impaired(src, tmp_path / "c.pcap", Congest(p_gb=0.02, p_bg=0.1, loss_bad=0.5), seed=9)
    rep = run_detectors(cap, ft, cl)
    i = flow_of(ft, CALL_PORT)
    d = of_kind(rep, i, "dropping")
    assert d.estimates["loss_rate"] > 0.02 and d.decision != "detected", d
    assert rep.verdict(i) == "inconclusive" and d.estimates["suspect"]


def test_tcp_holes_are_losses_and_reordering_is_not(base_call, tmp_path):
    cap, ft, cl = impaired(base_call, tmp_path / "j.pcap", Jitter(4.0), seed=1)   # re-sorts: reordering
    ctx = DetectContext(cap, ft, cl)
    tcp = flow_of(ft, TCP_CTRL_PORT)
    assert ctx.loss(tcp, ctx.inbound(tcp)[0]).n_lost == 0
    cap, ft, cl = impaired(base_call, tmp_path / "d.pcap", Drop(0.03), select=str(tcp), seed=1)
    ctx = DetectContext(cap, ft, cl)
    lu = ctx.loss(tcp, ctx.inbound(tcp)[0])
    assert lu.source == "tcp" and lu.fraction == pytest.approx(0.03, abs=0.01)


def test_runs_and_coincidence_tests():
    rng = np.random.default_rng(0)
    iid = rng.random(5000) < 0.05
    assert runs_test(iid)["p_clustered"] > 0.01
    bursty = np.zeros(5000, bool)
    for s in rng.integers(0, 4990, 40):
        bursty[s:s + 6] = True
    assert runs_test(bursty)["p_clustered"] < 1e-6
    assert runs_test(np.zeros(100, bool)) is None
    shared = np.sort(rng.uniform(0, 60, 80))
    obs, exp_, p = coincidence_test(shared + rng.normal(0, 0.01, 80), shared, 0, 60, rng=rng)
    assert p < 0.01 and obs > 3 * exp_
    obs, exp_, p = coincidence_test(np.sort(rng.uniform(0, 60, 80)), shared, 0, 60, rng=rng)
    assert p > 0.01
