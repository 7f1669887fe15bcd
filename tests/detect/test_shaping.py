"""Shaping: a rate cap with a queue is called shaping (not policing), with its rate and onset;
policing, random loss, jitter and congestion are not called shaping."""
from __future__ import annotations

import numpy as np
import pytest

from throttledetect.detect import run_detectors
from throttledetect.detect.common import DetectContext
from throttledetect.detect.shaping import frame_pairs, spacing_test
from throttledetect.simulate import Congest, Jitter, Police, Shape
from tests.detect.test_registry import (CALL_PORT, VIDEO_PORT, analyze, base_call, flow_of, impaired,  # noqa: F401
                                        inbound_rate, make_call,
                                        of_kind, relabel)


@pytest.fixture(scope="module")
def video_call(tmp_path_factory):
    path = tmp_path_factory.mktemp("shape") / "video.pcap"
    make_call(path, seed=4, video=True, seconds=40.0)
    return path


def _run(src, out, imp, port=CALL_PORT, **kw):
    cap, ft, cl = impaired(src, out, imp, **kw)
    rep = run_detectors(cap, ft, cl)
    return rep, flow_of(ft, port), (cap, ft, cl)


def test_shaper_from_the_start_is_shaping_not_policing(base_call, tmp_path):
    cap, ft, _ = analyze(base_call)
    rate = 0.6 * inbound_rate(ft, flow_of(ft, CALL_PORT))
    rep, i, _ = _run(base_call, tmp_path / "s.pcap", Shape(rate))        # simulator default queue: 50 ms
    assert rep.verdict(i) == "shaping"
    d = of_kind(rep, i, "shaping")
    assert d.decision == "detected" and d.qvalue < 0.01
    assert d.estimates["rate_bps"] == pytest.approx(rate, rel=0.1)
    assert 0.3 < d.effect < 0.5                   # share of the offered rate held back (truth 0.4)
    assert of_kind(rep, i, "policing").decision != "detected"
    assert "spaced by their size" in d.evidence
    assert rep.protocols[0]["rate_bps"] == pytest.approx(rate, rel=0.1)


def test_shaper_with_deep_queue_after_onset(base_call, tmp_path):
    cap, ft, _ = analyze(base_call)
    rate = 0.75 * inbound_rate(ft, flow_of(ft, CALL_PORT))
    rep, i, _ = _run(base_call, tmp_path / "s.pcap", Shape(rate, queue_bytes=rate / 8 * 0.4), onset_s=20.0)
    d = of_kind(rep, i, "shaping")
    assert rep.verdict(i) == "shaping", d
    assert 20.0 <= d.estimates["onset_s"] <= 26.0
    assert d.estimates["delay_increase_ms"] == pytest.approx(400, rel=0.15)
    assert d.estimates["rate_bps"] == pytest.approx(rate, rel=0.1)
    assert d.estimates["queue_bytes"] == pytest.approx(rate / 8 * 0.4, rel=0.25)


def test_video_shaping(video_call, tmp_path):
    cap, ft, _ = analyze(video_call)
    rate = 0.6 * inbound_rate(ft, flow_of(ft, VIDEO_PORT))
    rep, i, _ = _run(video_call, tmp_path / "v.pcap", Shape(rate, queue_bytes=rate / 8 * 0.2), port=VIDEO_PORT)
    d = of_kind(rep, i, "shaping")
    assert rep.verdict(i) == "shaping", d
    assert d.estimates["rate_bps"] == pytest.approx(rate, rel=0.1)


@pytest.mark.parametrize("name,imp,select", [
    ("police", "police", "calls"),
    ("jitter", Jitter(10.0, shape=2.0), "calls"),
    ("congest", Congest(p_gb=0.02, p_bg=0.1, loss_bad=0.5, delay_ms=100), "calls"),
])
def test_not_shaping(base_call, tmp_path, name, imp, select):
    cap, ft, _ = analyze(base_call)
    if imp == "police":
        imp = Police(0.6 * inbound_rate(ft, flow_of(ft, CALL_PORT)))
    rep, i, _ = _run(base_call, tmp_path / f"{name}.pcap", imp, select=select)
    d = of_kind(rep, i, "shaping")
    assert d.decision == "not_detected", d
    assert rep.verdict(i) != "shaping"
    if name == "police":
        assert "timestamps" in d.evidence        # arrivals keep the sender's spacing


def test_spacing_test_separates_clock_from_queue():
    rng = np.random.default_rng(0)
    size = rng.integers(100, 200, 500).astype(float)
    dts = np.full(500, 0.02)
    clock = dts + rng.normal(0, 0.002, 500).clip(-0.015)           # sender's spacing + jitter
    queued = size * 8 / 50_000 + rng.normal(0, 0.0005, 500).clip(-0.01)   # released at 50 kbit/s
    assert spacing_test(clock, dts, size)["pvalue"] > 0.5
    q = spacing_test(queued, dts, size)
    assert q["pvalue"] < 1e-10 and q["rate_bps"] == pytest.approx(50_000, rel=0.03)
    # equal sizes, unshaped: the two models coincide and nothing is claimed
    eq = spacing_test(np.full(100, 0.02), np.full(100, 0.02), np.full(100, 150.0))
    assert eq["pvalue"] == 1.0


def test_frame_pairs_skip_dtx_pauses(tmp_path):
    src = tmp_path / "dtx.pcap"
    make_call(src, seed=5, dtx=True, seconds=30.0)
    cap, ft, cl = analyze(src)
    ctx = DetectContext(cap, ft, cl)
    i = flow_of(ft, CALL_PORT)
    s = ctx.rtp(i, ctx.inbound(i)[0])[0]
    at, dt, dts, fb = frame_pairs(s)
    assert len(dt) > 500 and np.all(dts <= 0.041)        # pauses (1-3 s steps) left out
    rep = run_detectors(cap, ft, cl)
    assert of_kind(rep, i, "shaping").decision == "not_detected"


def test_encrypted_media_rate_cap(tmp_path):
    """No RTP: a shaper spaces variable-size packets by size (detected); a policer on the same
    stream is inconclusive, not shaping."""
    src = tmp_path / "enc.pcap"
    make_call(src, seed=6, encrypted=True, seconds=40.0)
    cap, ft, cl = analyze(src)
    i = flow_of(ft, CALL_PORT)
    rate = 0.6 * inbound_rate(ft, i)
    out = {}
    for name, imp in (("shape", Shape(rate, queue_bytes=rate / 8 * 0.3)), ("police", Police(rate))):
        cap2, ft2, cl2 = impaired(src, tmp_path / f"{name}.pcap", imp, select=str(i), onset_s=15.0)
        k = flow_of(ft2, CALL_PORT)
        rep = run_detectors(cap2, ft2, relabel(cl2, k, "telegram_call"))
        out[name] = (rep.verdict(k), of_kind(rep, k, "shaping"))
    v, d = out["shape"]
    assert v == "shaping" and d.estimates["rate_bps"] == pytest.approx(rate, rel=0.15), d
    assert 14.0 <= d.estimates["onset_s"] <= 18.0
    v, d = out["police"]
    assert d.decision != "detected" and v != "shaping", d


def _tcp_download(tmp_path, with_ts=True, rise_s=30.0, rise_ms=100.0):
    """60 s of 20 data segments/s from a remote server to a local client, the server's TCP
    timestamps at 1 kHz; the one-way delay steps up by rise_ms at rise_s."""
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether
    from throttledetect.write import write_pcap
    frames, times = [], []
    seq = 1000
    for k in range(1200):
        send = k / 20.0
        opts = [("NOP", None), ("NOP", None), ("Timestamp", (5_000_000 + int(send * 1000), 1))] if with_ts else []
        p = Ether() / IP(src="203.0.113.5", dst="192.168.1.2") / TCP(sport=443, dport=50000, flags="PA", seq=seq,
                                                                    options=opts) / (b"x" * 1000)
        seq += 1000
        frames.append(bytes(p))
        times.append(int((1_700_000_000 + send + 0.02 + (rise_ms / 1e3 if send >= rise_s else 0.0)) * 1e9))
    path = tmp_path / "tcp.pcap"
    write_pcap(path, frames, times)
    return path


def test_tcp_timestamps_show_the_one_way_delay_rise(tmp_path):
    from throttledetect.classify import classify
    from throttledetect.detect.shaping import tcp_delay_rise
    from throttledetect.flows import build_flows
    from throttledetect.read import read_capture
    for with_ts in (True, False):
        cap = read_capture(_tcp_download(tmp_path, with_ts))
        ft = build_flows(cap)
        ctx = DetectContext(cap, ft, classify(cap, ft))
        d = ctx.inbound(0)[0]
        rise = tcp_delay_rise(ctx, 0, d, 30.0)
        if with_ts:
            assert rise is not None and rise[0] == pytest.approx(100.0, abs=2.0) and rise[1] < 1e-10
            assert tcp_delay_rise(ctx, 0, d, 15.0)[0] < rise[0]      # a split in the wrong place shows less
        else:
            assert rise is None
