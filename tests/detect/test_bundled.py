"""Throttling of calls whose streams share a bucket or a queue: audio, video and retransmission
streams bundled on one 5-tuple (Teams, Skype), and a call's flows behind one host-level policer.

What could fail: a fit to one RTP stream sees only its share of the tokens; merging streams by
their placed times makes random loss look bursty; a shaper's spacing measured on one stream's
bytes misses the bytes of the others in the same queue.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.corpus import CORPUS, need_corpus
from throttledetect.detect import run_detectors
from throttledetect.detect.dropping import runs_test
from throttledetect.detect.policing_media import _lost_packet_times
from throttledetect.pipeline import analyze_capture
from throttledetect.read import read_capture
from throttledetect.simulate import BlockAfter, Police, Shape, simulate
from throttledetect.write import write_rows

REPO = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------- placement

def _video(n_frames=300, per_frame=8, fps=30.0, gap=1e-5, seed=0):
    """Frames of back-to-back packets (1..per_frame of them): arrival, RTP send time (s),
    marker (last of frame), frame index, position in the frame."""
    counts = np.random.default_rng(seed).integers(1, per_frame + 1, n_frames) if per_frame > 1 else \
        np.ones(n_frames, np.int64)
    f = np.repeat(np.arange(n_frames), counts)
    k = np.arange(f.size) - np.repeat(np.cumsum(counts) - counts, counts)
    send = f / fps
    arrival = send + 0.02 + k * gap
    marker = k == np.repeat(counts, counts) - 1
    return arrival, send, marker, f, k


def _interp_send(send, lost):
    return np.interp(np.arange(send.size), np.flatnonzero(~lost), send[~lost])


def test_lost_frame_tails_stay_with_their_frame():
    """A policer passing only the first packets of each frame: the lost tail is placed within
    its frame (back to back), not at the next frame's time as the median received gap would."""
    arrival, send, marker, f, k = _video()
    lost = k >= 3
    placed = _lost_packet_times(np.where(lost, np.nan, arrival), np.where(lost, False, marker),
                                _interp_send(send, lost))
    err = np.abs(placed[lost] - arrival[lost])
    assert err.max() < 1e-3, err.max()


def test_without_marker_bits_lost_packets_are_never_placed_early():
    """A stream of multi-packet frames that never sets the marker bit: which frame a lost packet
    between two frames belonged to is unknown, so it is never put earlier than it was sent (right
    behind the previous frame, where a bucket would look drained): a lost frame head lands at its
    frame, a lost tail no earlier than its own frame."""
    arrival, send, marker, f, k = _video(per_frame=3, seed=4)
    lost = np.random.default_rng(5).random(arrival.size) < 0.1
    lost[0] = lost[-1] = False
    placed = _lost_packet_times(np.where(lost, np.nan, arrival), np.zeros(arrival.size, bool),
                                _interp_send(send, lost))
    err = placed[lost] - arrival[lost]
    assert err.min() > -1e-3, err.min()
    after = np.minimum(np.flatnonzero(lost) + 1, lost.size - 1)
    heads = (k[lost] == 0) & ~lost[after] & (f[after] == f[lost])     # the rest of the frame arrived
    assert np.abs(err[heads]).max() < 1e-3


def test_single_packet_frames_without_markers_follow_the_timestamps():
    """One packet per frame, no marker bits: lost frames are placed at their frame times."""
    arrival, send, marker, f, k = _video(per_frame=1)
    lost = np.random.default_rng(6).random(arrival.size) < 0.2
    lost[0] = lost[-1] = False
    placed = _lost_packet_times(np.where(lost, np.nan, arrival), np.zeros(arrival.size, bool),
                                _interp_send(send, lost))
    assert np.abs(placed[lost] - arrival[lost]).max() < 1e-3


def test_frames_lost_whole_are_placed_at_their_frame_time():
    """After a frame's last packet (marker received), a run of whole lost frames is spread by
    the RTP timestamps: each lost frame near its own time, not bunched before the next one."""
    arrival, send, marker, f, k = _video(per_frame=1)
    rng = np.random.default_rng(3)
    lost = rng.random(arrival.size) < 0.3
    lost[0] = lost[-1] = False
    placed = _lost_packet_times(np.where(lost, np.nan, arrival), np.where(lost, False, marker),
                                _interp_send(send, lost))
    err = np.abs(placed[lost] - arrival[lost])
    assert np.median(err) < 1e-3 and err.max() < 5e-3, (np.median(err), err.max())


# ------------------------------------------------------------------------------- runs test

def test_runs_test_sums_over_streams():
    """Independent loss in two streams: each stream's runs and their null moments add up; the
    strata give the same z as computing the sums by hand."""
    rng = np.random.default_rng(11)
    a, b = rng.random(3000) < 0.1, rng.random(2000) < 0.1
    both = runs_test([a, b])
    one_a, one_b = runs_test(a), runs_test(b)
    assert both["runs"] == one_a["runs"] + one_b["runs"]
    assert both["runs_expected"] == pytest.approx(one_a["runs_expected"] + one_b["runs_expected"])
    assert both["p_clustered"] > 0.001


# ------------------------------------------------------------------------------- corpus traces

def _impaired(tmp_path, cap, ft, cl, imp, select, **kw):
    res = simulate(cap, ft, cl, imp, select=select, direction="to-local", seed=5, **kw)
    out = tmp_path / "impaired.pcap"
    write_rows(cap, res.rows, res.ts_ns, out)
    return analyze_capture(read_capture(out)), res


def _teams(seconds=40.0):
    from throttledetect import validate as v
    spec = next(s for s in v.TRACES if s.name == "teams")
    return v.prepare_trace(spec, CORPUS, seconds)


@need_corpus
def test_policer_on_bundled_teams_flow(tmp_path):
    """Teams carries audio (PT 111), video (PT 102) and a third SSRC on one 5-tuple. A policer
    at 0.7x of the flow's rate with a 250 ms bucket: policing, rate within 5 %, and the range of
    rates that fit as well contains it and is narrow."""
    b = _teams()
    f = b.targets[0]
    rate = 0.7 * b.rate_bps[f]
    a, _ = _impaired(tmp_path, b.cap, b.ft, b.cl, Police(rate, rate / 8 * 0.25), [f])
    j = next(j for j in range(len(a.flows)) if a.detections.tested[j])
    rep = a.detections
    assert rep.verdict(j) == "policing", [d.reason for d in rep.per_flow[j]]
    d = rep.detected(j, "policing")[0]
    assert len(d.estimates["ssrcs"]) >= 2                     # the streams were fitted together
    assert d.estimates["rate_bps"] == pytest.approx(rate, rel=0.05)
    lo, hi = d.estimates["rate_range_bps"]
    assert lo <= rate <= hi and hi / lo < 1.25, (lo, hi, rate)


@need_corpus
def test_tiny_bucket_on_bursty_video_reports_a_lower_bound(tmp_path):
    """A one-MTU bucket refills completely between video frames, so any rate above about
    1500 B per frame interval drops the same packets: policing detected, and the reported range
    contains the configured rate instead of pretending to pin it."""
    b = _teams()
    f = b.targets[0]
    rate = 0.85 * b.rate_bps[f]
    a, _ = _impaired(tmp_path, b.cap, b.ft, b.cl, Police(rate, 1500.0), [f])
    rep = a.detections
    j = next(j for j in range(len(a.flows)) if rep.tested[j])
    assert rep.verdict(j) == "policing"
    e = rep.detected(j, "policing")[0].estimates
    lo, hi = e["rate_range_bps"]
    assert lo <= rate * 1.01 and (e["rate_range_open_above"] or hi >= rate * 0.99), (lo, hi, rate)
    if not e["rate_identifiable"]:
        assert "rate_note" in e


@need_corpus
def test_shaper_on_bundled_flow_measures_the_cap(tmp_path):
    """A shaper at half the rate with a 500 ms queue: shaping, and the cap measured on all the
    bytes that left the queue (every stream), within 5 %."""
    b = _teams()
    f = b.targets[0]
    rate = 0.5 * b.rate_bps[f]
    a, _ = _impaired(tmp_path, b.cap, b.ft, b.cl, Shape(rate, rate / 8 * 0.5), [f])
    rep = a.detections
    j = next(j for j in range(len(a.flows)) if rep.tested[j])
    assert rep.verdict(j) == "shaping"
    assert rep.detected(j, "shaping")[0].estimates["rate_bps"] == pytest.approx(rate, rel=0.05)


@need_corpus
def test_random_drop_on_bundled_flow_is_dropping_not_bursts(tmp_path):
    """30 % independent loss on every stream of the Teams flow, no control in the capture:
    the losses read as independent (runs test per stream), so the verdict is dropping."""
    from throttledetect.simulate import Drop
    b = _teams()
    f = b.targets[0]
    a, _ = _impaired(tmp_path, b.cap, b.ft, b.cl, Drop(0.3), [f])
    rep = a.detections
    j = next(j for j in range(len(a.flows)) if rep.tested[j])
    d = next(d for d in rep.per_flow[j] if d.kind == "dropping")
    assert d.estimates["runs_p_clustered"] > 0.001
    assert rep.verdict(j) == "dropping"


def test_host_level_policer_on_the_testbed_capture():
    """captures/call_policed.pcap: one tbf policer (358 kbit/s, 10 kB) on the call's audio and
    video flows together. Both flows are called policing and the protocol's common rate is the
    configured one: the flows' packets fitted against one bucket."""
    truth = next(c["truth"] for c in json.loads((REPO / "captures" / "MANIFEST.json").read_text())["captures"]
                 if c["file"] == "call_policed.pcap")
    a = analyze_capture(REPO / "captures" / "call_policed.pcap")
    rep = a.detections
    calls = [j for j in range(len(a.flows)) if rep.tested[j]]
    assert [rep.verdict(j) for j in calls] == ["policing"] * len(calls)
    proto = next(p for p in rep.protocols if p["verdict"] == "policing")
    assert proto["rate_bps"] == pytest.approx(truth["rate_bps"], rel=0.03)


@need_corpus
def test_one_way_stream_that_stops_is_worth_a_look(tmp_path):
    """The SIP trace's one-way G.711 stream cut after 10 s of a 30 s capture: the host sends
    nothing in the call, so a block cannot be told from a hang-up; the flow is inconclusive with
    that reason rather than "none"."""
    from throttledetect import validate as v
    spec = next(s for s in v.TRACES if s.name == "sip-g711")
    b = v.prepare_trace(spec, CORPUS, 30.0)
    f = b.targets[0]
    a, _ = _impaired(tmp_path, b.cap, b.ft, b.cl, BlockAfter(10.0), [f])
    rep = run_detectors(a.capture, a.flows, a.classification)
    j = next(j for j in range(len(a.flows)) if rep.tested[j] and a.classification.labels[j] == "rtp")
    assert rep.verdict(j) == "inconclusive"
    assert any("one-way stream" in d.reason for d in rep.per_flow[j] if d.kind == "blocking")
