"""metrics.flow (and the binning helpers of metrics.series) on flows written here with known
pacing, gaps, sizes and RTP loss, plain and inside TURN ChannelData, MS-TURN and Zoom; and on
the Zoom capture of the corpus."""
from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from tests.corpus import NDPI_PCAP_DIR, need_corpus
from throttledetect.classify import classify
from throttledetect.flows import build_flows
from throttledetect.metrics.flow import (
    SIZE_EDGES,
    Gap,
    compute_flow_metrics,
    find_flow_rtp_streams,
    flow_metrics_json,
)
from throttledetect.metrics.rtp import rtp_stream_stats
from throttledetect.metrics.series import (
    bin_layout,
    group_by_direction,
    grouped_quantiles,
    grouped_searchsorted,
    grouped_sort,
    segmented_cummax,
    serial_unwrap,
)
from throttledetect.read import read_capture
from throttledetect.write import write_pcap

A, B, A_PORT, B_PORT = "192.168.1.10", "203.0.113.5", 50000, 3478
T0_NS = 1_700_000_000 * 1_000_000_000
MS = 1_000_000
UDP_FRAME_OVERHEAD = 14 + 20 + 8        # Ethernet, IPv4, UDP


def udp(from_a: bool, payload: bytes, sport: int = A_PORT, dport: int = B_PORT) -> bytes:
    ip = IP(src=A, dst=B) if from_a else IP(src=B, dst=A)
    sp, dp = (sport, dport) if from_a else (dport, sport)
    return bytes(Ether() / ip / UDP(sport=sp, dport=dp) / payload)


def analyse(tmp_path, packets, bin_s=1.0, name="c.pcap"):
    """packets: (t_ns from T0, frame); returns (cap, ft, cl, metrics)."""
    packets = sorted(packets, key=lambda p: p[0])
    path = tmp_path / name
    write_pcap(path, [f for _, f in packets], [T0_NS + t for t, _ in packets])
    cap = read_capture(path)
    ft = build_flows(cap)
    cl = classify(cap, ft)
    return cap, ft, cl, compute_flow_metrics(cap, ft, cl, bin_s=bin_s)


def paced_flow():
    """a->b: 50 packets of 160 bytes every 20 ms, a 1 s silence, 50 more; b->a: 10 packets of
    1200 bytes every 100 ms, starting 5 ms after a's first."""
    pk = []
    t = 0
    for i in range(100):
        pk.append((t, udp(True, b"\0" * 160)))
        t += 1000 * MS if i == 49 else 20 * MS
    for i in range(10):
        pk.append((5 * MS + 100 * MS * i, udp(False, b"\1" * 1200)))
    return pk


def test_counts_rates_and_distributions(tmp_path):
    _, _, _, ms = analyse(tmp_path, paced_flow(), bin_s=0.5)
    assert len(ms) == 1
    m = ms[0]
    ab, ba = m.ab, m.ba
    assert (ab.packets, ab.bytes, ab.payload_bytes) == (100, 100 * (160 + UDP_FRAME_OVERHEAD), 16000)
    assert ab.duration_s == pytest.approx(98 * 0.02 + 1.0, abs=1e-9)
    assert ba.first_s == 0.005
    # Flow: 0 .. 2.96 s -> 6 bins of 0.5 s, aligned to a's first packet.
    assert m.n_bins == 6 and len(ab.bytes_series) == 6 and len(ba.packets_series) == 6
    # 0 .. 0.98 s, the silence, then 1.98 .. 2.96 s
    assert ab.packets_series.tolist() == [25, 25, 0, 1, 25, 24]
    assert ab.bytes_series.tolist() == [202 * n for n in (25, 25, 0, 1, 25, 24)]
    assert ba.packets_series.tolist() == [5, 5, 0, 0, 0, 0]
    iat = ab.iat
    assert iat.min_s == pytest.approx(0.02) and iat.median_s == pytest.approx(0.02)
    assert iat.p5_s == pytest.approx(0.02) and iat.p95_s == pytest.approx(0.02)
    assert iat.max_s == pytest.approx(1.0)
    assert iat.mean_s == pytest.approx((98 * 0.02 + 1.0) / 99)
    diffs = np.r_[np.full(49, 0.02), 1.0, np.full(49, 0.02)]
    assert iat.cv == pytest.approx(diffs.std() / diffs.mean())
    assert ba.iat.cv == pytest.approx(0.0, abs=1e-9)
    assert ab.sizes.min == ab.sizes.max == 160 and ab.sizes.median == 160 and ab.sizes.std == 0
    assert ab.sizes.histogram.tolist() == [0, 0, 0, 100, 0, 0, 0, 0, 0]    # [128, 256)
    assert ba.sizes.histogram[SIZE_EDGES.index(1024)] == 10


def test_gaps_and_silence(tmp_path):
    _, _, _, (m,) = analyse(tmp_path, paced_flow())
    assert m.ab.gap_threshold_s == pytest.approx(0.2)            # max(5 x 20 ms, 0.2 s)
    assert len(m.ab.gaps) == 1
    gap = m.ab.gaps[0]
    assert gap.start_s == pytest.approx(49 * 0.02)
    assert gap.length_s == pytest.approx(1.0)
    assert m.ab.silent_s == pytest.approx(1.0)
    assert m.ba.gap_threshold_s == pytest.approx(0.5)            # 5 x 100 ms
    assert m.ba.gaps == ()


def test_json_is_plain_and_complete(tmp_path):
    _, _, _, ms = analyse(tmp_path, paced_flow())
    (js,) = flow_metrics_json(ms)
    assert js == ms[0].to_json()
    text = json.dumps(js)                      # no numpy scalars or arrays left
    back = json.loads(text)
    assert back["ab"]["rate"]["bytes"] == ms[0].ab.bytes_series.tolist()
    assert back["ab"]["gaps"]["list"] == [{"start_s": ms[0].ab.gaps[0].start_s, "length_s": ms[0].ab.gaps[0].length_s}]
    assert back["ba"]["tcp"] is None and back["ab"]["rtp_streams"] == []
    assert set(back) >= {"bin_s", "bins", "start_ts", "ab", "ba"}


def test_empty_direction_and_bin_size(tmp_path):
    pk = [(i * 300 * MS, udp(True, b"x" * 10)) for i in range(4)]
    _, _, _, (m,) = analyse(tmp_path, pk, bin_s=0.25)
    assert m.ba.packets == 0 and m.ba.iat is None and m.ba.sizes is None and m.ba.first_s is None
    assert m.ba.packets_series.tolist() == [0] * m.n_bins
    assert m.n_bins == 4                      # 0 .. 0.9 s in bins of 0.25 s
    assert m.ab.packets_series.tolist() == [1, 1, 1, 1]
    json.dumps(m.to_json())
    with pytest.raises(ValueError):
        bin_layout(np.zeros(1, np.int64), np.ones(1, np.int64), 0.0)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 3000), st.integers(0, 1400)), min_size=1, max_size=40),
       st.sampled_from([0.05, 0.1, 0.5, 1.0]))
def test_properties_of_random_flows(tmp_path_factory, packets, bin_s):
    """Bins sum to the totals, gaps never overlap and exceed their threshold, and the
    distributions agree with numpy on the same numbers."""
    frames, t = [], 0
    for from_a, step_ms, size in packets:
        t += step_ms * MS // 10
        frames.append((t, udp(from_a, b"z" * size)))
    _, _, _, ms = analyse(tmp_path_factory.mktemp("p"), frames, bin_s=bin_s)
    (m,) = ms
    first_from_a = packets[0][0]
    for name, d in (("ab", m.ab), ("ba", m.ba)):
        mine = [(tt, len(f) - UDP_FRAME_OVERHEAD) for (tt, f), (fa, _, _) in zip(frames, packets)
                if fa == (first_from_a if name == "ab" else not first_from_a)]
        assert d.packets == len(mine) == d.packets_series.sum()
        assert d.bytes == d.bytes_series.sum() == sum(s + UDP_FRAME_OVERHEAD for _, s in mine)
        assert len(d.bytes_series) == m.n_bins
        if len(mine) >= 2:
            times = np.array([tt for tt, _ in mine]) / 1e9
            iat = np.diff(times)
            assert d.iat.median_s == pytest.approx(np.median(iat), abs=1e-12)
            assert d.iat.p95_s == pytest.approx(np.quantile(iat, 0.95), abs=1e-12)
            assert d.iat.min_s == pytest.approx(iat.min(), abs=1e-12)
            ends = [g.start_s + g.length_s for g in d.gaps]
            for g, nxt in zip(d.gaps, d.gaps[1:]):
                assert g.start_s + g.length_s <= nxt.start_s + 1e-12
            assert all(g.length_s > d.gap_threshold_s for g in d.gaps)
            assert d.silent_s == pytest.approx(sum(g.length_s for g in d.gaps))
            assert all(e <= m.n_bins * bin_s + 1e-9 for e in ends)
            assert len(d.gaps) == int(np.sum(iat > d.gap_threshold_s))
        if mine:
            sizes = np.array([s for _, s in mine])
            assert d.sizes.median == np.median(sizes)
            assert d.sizes.std == pytest.approx(sizes.std())
            assert d.sizes.histogram.sum() == len(mine)


# --- RTP, plain and encapsulated -------------------------------------------------------------------


def rtp_header(seq: int, ts: int, ssrc: int, pt: int, marker: bool = False) -> bytes:
    return struct.pack("!BBHII", 0x80, (0x80 if marker else 0) | pt, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc)


def rtp_call(wrap, lost=(10, 11, 12, 40), n=100, ssrc=0x1234ABCD, pt=0, seq0=65500):
    """a->b: n 20 ms G.711 packets (seq wraps at 65536) minus `lost`, each wrapped by `wrap`;
    arrival jitter of a few ms so that jitter is not zero."""
    out, kept = [], []
    rng = np.random.default_rng(7)
    for i in range(n):
        if i in lost:
            continue
        t = 20 * MS * i + int(rng.integers(0, 3 * MS))
        pkt = rtp_header(seq0 + i, 1000 + 160 * i, ssrc, pt) + b"\xd5" * 160
        out.append((t, udp(True, wrap(pkt))))
        kept.append((t, (seq0 + i) & 0xFFFF, (1000 + 160 * i), len(pkt)))
    return out, kept


def turn_channel(pkt: bytes) -> bytes:
    return struct.pack("!HH", 0x4001, len(pkt)) + pkt                 # RFC 8656 12.4 ChannelData


def ms_turn(pkt: bytes) -> bytes:
    return struct.pack("!HH", 0xFF10, len(pkt) + 8) + b"sessionX" + pkt   # [MS-TURN] 2.2.3


def zoom_sfu_audio(pkt: bytes) -> bytes:
    # Zoom SFU header (type 5, seq, 4 bytes, direction), media header of type 15 (audio), RTP at 8 + 19.
    return b"\x05\x00\x01\x00\x00\x00\x00\x00" + bytes([15]) + b"\0" * 18 + pkt


@pytest.mark.parametrize("wrap, encap", [(lambda p: p, "plain"), (turn_channel, "turn-channel"),
                                         (ms_turn, "ms-turn"), (zoom_sfu_audio, "zoom")],
                         ids=["plain", "turn-channel", "ms-turn", "zoom"])
def test_rtp_stats_inside_encapsulations(tmp_path, wrap, encap):
    pk, kept = rtp_call(wrap)
    _, _, _, (m,) = analyse(tmp_path, pk)
    assert m.ba.rtp == ()
    (r,) = m.ab.rtp
    assert r.stream.encap == encap and r.stream.ssrc == 0x1234ABCD and r.stream.split_payload_type is None
    s = r.stats
    assert (s.packets, s.expected, s.lost) == (96, 100, 4)
    assert s.loss_runs.tolist() == [3, 1]
    assert s.loss_fraction == 0.04
    assert s.duplicates == 0 and s.reordered == 0
    assert s.clock_rate == 8000 and s.ptime_ms == 20.0
    # The same numbers as metrics.rtp on the bare header fields.
    t, seq, ts, size = (np.array(c) for c in zip(*kept))
    ref = rtp_stream_stats((t - t[0]) / 1e9, seq, ts, np.zeros(len(t), bool), np.zeros(len(t), int), size)
    assert s.mean_jitter_ms == pytest.approx(ref.mean_jitter_ms)
    assert s.max_delta_ms == pytest.approx(ref.max_delta_ms)
    np.testing.assert_allclose(s.delay_ms, ref.delay_ms)
    assert s.bytes == ref.bytes == 96 * 172                       # the RTP packet, without the wrapping
    # Series over the flow's bins (2 s): missing sequence numbers at the packet after each gap.
    assert r.packets_series.sum() == 96 and r.lost_series.tolist() == [4, 0]
    json.dumps(m.to_json())


def test_payload_types_split_only_with_separate_sequence_spaces(tmp_path):
    pk = []
    # Zoom-like: video (PT 98) and its FEC (PT 110) under one SSRC, each with its own sequence numbers.
    v = f = 0
    for i in range(80):
        t = 10 * MS * i
        if i % 8 == 7:
            pkt = rtp_header(30000 + f, 90 * 10 * i, 0xAA, 110) + b"f" * 300
            f += 1
        else:
            pkt = rtp_header(1000 + v, 90 * 10 * i, 0xAA, 98) + b"v" * 900
            v += 1
        pk.append((t, udp(True, pkt)))
    # Audio (PT 0) with comfort noise (PT 13) in one sequence space, on another flow.
    for i in range(60):
        pkt = rtp_header(500 + i, 160 * i, 0xBB, 13 if 20 <= i < 25 else 0) + b"a" * (1 if 20 <= i < 25 else 160)
        pk.append((20 * MS * i + 1, udp(True, pkt, sport=50002)))
    _, _, _, ms = analyse(tmp_path, pk)
    streams = {(r.stream.ssrc, r.stream.split_payload_type): r for m in ms for r in m.rtp_streams}
    assert set(streams) == {(0xAA, 98), (0xAA, 110), (0xBB, None)}
    assert streams[(0xAA, 98)].stats.lost == 0 and streams[(0xAA, 98)].stats.packets == 70
    assert streams[(0xAA, 110)].stats.lost == 0 and streams[(0xAA, 110)].stats.packets == 10
    audio = streams[(0xBB, None)].stats
    assert audio.lost == 0 and audio.packets == 60 and audio.payload_types == (0, 13)


@need_corpus
def test_rtp_inside_zoom_on_a_real_capture():
    path = NDPI_PCAP_DIR / "zoom_p2p.pcapng"
    cap = read_capture(path)
    ft = build_flows(cap)
    cl = classify(cap, ft)
    streams = [s for s in find_flow_rtp_streams(cap, ft, cl) if s.encap == "zoom"]
    assert len(streams) >= 2
    ms = compute_flow_metrics(cap, ft, cl)
    found = [r for m in ms for r in m.rtp_streams if r.stream.encap == "zoom"]
    assert sum(r.stats.packets for r in found) == sum(s.packets for s in streams)
    for r in found:
        assert 0 <= r.stats.loss_fraction < 0.5
        assert r.stats.expected >= r.stats.packets - r.stats.duplicates
    # video and its FEC share an SSRC with separate sequence spaces: split by payload type
    assert any(r.stream.split_payload_type is not None for r in found)


# --- the shared helpers of metrics.series ---------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6), st.integers(0, 10**6)), min_size=0, max_size=60))
def test_grouped_quantiles_equal_numpy(pairs):
    g = np.array([p[0] for p in pairs], dtype=np.int64)
    v = np.array([p[1] for p in pairs], dtype=np.int64)
    srt, start = grouped_sort(v, g, 7)
    q = grouped_quantiles(srt, start, (0.0, 0.05, 0.5, 0.95, 1.0))
    for k in range(7):
        vals = v[g == k]
        if len(vals):
            np.testing.assert_allclose(q[k], np.quantile(vals, [0.0, 0.05, 0.5, 0.95, 1.0]))
        else:
            assert np.isnan(q[k]).all()
    srt_f, _ = grouped_sort(v.astype(float) - 0.5, g, 7)         # the lexsort path
    np.testing.assert_array_equal(srt_f + 0.5, srt)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.integers(-50, 50)), min_size=0, max_size=50),
       st.lists(st.tuples(st.integers(0, 4), st.integers(-60, 60)), min_size=0, max_size=20))
def test_grouped_searchsorted_and_cummax(a, q):
    a = sorted(a)
    ga = np.array([x[0] for x in a], dtype=np.int64)
    va = np.array([x[1] for x in a], dtype=np.int64)
    gq = np.array([x[0] for x in q], dtype=np.int64)
    vq = np.array([x[1] for x in q], dtype=np.int64)
    for side in ("left", "right"):
        got = grouped_searchsorted(ga, va, gq, vq, side)
        want = [sum(1 for x in a if (x < y if side == "left" else x <= y)) for y in q]
        assert got.tolist() == want
    if len(a):
        cm = segmented_cummax(va, ga)
        want = [max(x[1] for x in a[:i + 1] if x[0] == a[i][0]) for i in range(len(a))]
        assert cm.tolist() == want


@settings(max_examples=60, deadline=None)
@given(st.integers(0, (1 << 32) - 1), st.lists(st.integers(-5000, 5000), min_size=1, max_size=40))
def test_serial_unwrap_crosses_the_wrap(start, steps):
    true = start + np.cumsum(np.r_[0, steps])
    got = serial_unwrap(true % (1 << 32), np.zeros(len(true), dtype=np.int64), 32)
    assert got.tolist() == (true - start).tolist()


def test_group_by_direction_matches_a_stable_sort(tmp_path):
    cap, ft, _, _ = analyse(tmp_path, paced_flow() + [(7 * MS, udp(True, b"q", sport=1111))])
    g = group_by_direction(ft)
    key = ft.flow_of[ft.order].astype(np.int64) * 2 + ft.dir_of[ft.order]
    ref = ft.order[np.argsort(key, kind="stable")]
    assert g.rows.tolist() == ref.tolist()
    assert g.counts.tolist() == np.bincount(key, minlength=2 * len(ft)).tolist()
    assert g.gid.tolist() == np.sort(key).tolist()


def test_gap_dataclass_json():
    assert Gap(1.5, 0.25).to_json() == {"start_s": 1.5, "length_s": 0.25}
