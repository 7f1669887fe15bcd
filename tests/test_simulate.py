"""The known-truth simulator: each impairment does what its model says, measured on the output.

Synthetic captures: paced RTP calls built here (50 pps x 200-byte frames = 80 kbit/s per direction,
both directions), plus the Teams trace of the corpus where present.
"""
from __future__ import annotations

import hashlib
import json
import struct
import time

import numpy as np
import pytest
from click.testing import CliRunner
from scipy.stats import binom
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from tests.corpus import EXTERNAL_DIR, need_corpus
from throttledetect import simulate as sim
from throttledetect.classify import classify
from throttledetect.flows import build_flows
from throttledetect.jit import JIT_ENABLED
from throttledetect.metrics.rtp import find_rtp_streams, unwrap
from throttledetect.read import read_capture
from throttledetect.write import write_pcap

PPS = 50
FRAME = 200                     # link-layer bytes per packet
FLOW_BPS = PPS * FRAME * 8      # 80 kbit/s per direction
T0_NS = 1_700_000_000 * 10**9
LOCAL = "192.168.1.10"
FLOWS = [(LOCAL, "203.0.113.5", 40000, 3478), (LOCAL, "198.51.100.7", 40002, 50000)]
TEAMS = EXTERNAL_DIR / "MicrosoftTeam_05152024_rebuilt.pcap"
MACS = dict(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")


def _rtp_call(path, flows=FLOWS, seconds=20.0, v6=False, pt_at=None):
    """Paced two-way RTP (PT 111, 20 ms, 48 kHz clock) per flow; sequence numbers wrap at 65536.

    IPv4 frames carry no UDP checksum (0); IPv6 frames a valid one (scapy computes it). pt_at(k):
    the payload type of the k-th packet (default 111), on the one sequence counter of the SSRC."""
    frames, times = [], []
    n = int(seconds * PPS)
    for fi, (local, remote, lport, rport) in enumerate(flows):
        for d in (0, 1):
            src, dst, sp, dp = (local, remote, lport, rport) if d == 0 else (remote, local, rport, lport)
            ssrc = 0x1000 + 2 * fi + d
            ip = IPv6(src=src, dst=dst) if v6 else IP(src=src, dst=dst)
            head_len = len(Ether(**MACS) / ip / UDP())
            pad = bytes(FRAME - head_len - 12)
            for k in range(n):
                rtp = struct.pack("!BBHII", 0x80, pt_at(k) if pt_at else 111, (65400 + k) & 0xFFFF, (4_000_000_000 + 960 * k) % (1 << 32),
                                  ssrc) + pad
                if v6 or k == 0:
                    udp = UDP(sport=sp, dport=dp) if v6 else UDP(sport=sp, dport=dp, chksum=0)
                    fr = bytes(Ether(**MACS) / ip / udp / rtp)
                    if not v6:
                        tmpl = fr[:head_len]
                else:
                    fr = tmpl + rtp
                frames.append(fr)
                times.append(T0_NS + k * 10**9 // PPS + d * 3_000_000 + fi * 1_000_000)
    order = np.argsort(times, kind="stable")
    write_pcap(path, [frames[i] for i in order], [times[i] for i in order])
    return str(path)


class Loaded:
    def __init__(self, path):
        self.path = str(path)
        self.cap = read_capture(self.path)
        self.ft = build_flows(self.cap)
        self.cl = classify(self.cap, self.ft)

    def run(self, imp, **kw):
        return sim.simulate(self.cap, self.ft, self.cl, imp, **kw)


@pytest.fixture(scope="module")
def call(tmp_path_factory):
    return Loaded(_rtp_call(tmp_path_factory.mktemp("sim") / "call.pcap"))


@pytest.fixture(scope="module")
def long_call(tmp_path_factory):
    return Loaded(_rtp_call(tmp_path_factory.mktemp("sim") / "long.pcap", seconds=120.0))


@pytest.fixture(scope="module")
def teams():
    return Loaded(TEAMS)


def _to_local_rows(s: Loaded, flow: int) -> np.ndarray:
    local_is_a, _ = sim.local_side_is_a(s.ft)
    rows = s.ft.packet_indices(flow)
    return rows[sim.to_local_of(s.ft, local_is_a)[rows]]


def _kept_delay(res) -> dict:
    return dict(zip(res.rows.tolist(), res.delay_ns.tolist()))


# ---------------------------------------------------------------------------- basics

def test_synthetic_call_is_two_call_flows_with_local_side_by_address(call):
    assert len(call.ft) == 2 and all(call.cl.is_call(i) for i in range(2))
    local_is_a, by_ranges = sim.local_side_is_a(call.ft)
    assert local_is_a.all() and by_ranges.all()
    to_local = sim.to_local_of(call.ft, local_is_a)
    assert to_local.sum() == len(call.cap.packets) // 2
    t = call.cap.packets
    dst_local = t.dst_lo[to_local] == np.uint64(0x0000FFFFC0A8010A)
    assert dst_local.all()


def test_drop_fraction_within_binomial_bounds(call):
    p = 0.1
    res = call.run(sim.Drop(p), seed=7)
    n = len(res.impaired)
    assert n == 2 * 20 * PPS                              # to-local packets of both call flows
    lo, hi = binom.ppf(0.0005, n, p), binom.ppf(0.9995, n, p)
    assert lo <= len(res.dropped) <= hi
    assert np.isin(res.dropped, res.impaired).all()       # only impaired packets dropped
    assert not res.delay_ns.any()
    for f in res.truth["flows"]:
        m = f["measured"]
        assert m["ab"]["dropped"] == 0 and not m["ab"]["impaired"]
        k = m["ba"]["packets_in"]
        assert binom.ppf(0.0005, k, p) <= m["ba"]["dropped"] <= binom.ppf(0.9995, k, p)
    print(f"drop p=0.1: {len(res.dropped)}/{n} = {len(res.dropped) / n:.4f} (99.9 % bounds {lo:.0f}..{hi:.0f})")


def _passed_rate_bps(s: Loaded, res, flow: int, onset_ns: int = 0) -> float:
    rows = _to_local_rows(s, flow)
    keep = np.isin(res.rows, rows)
    t = res.ts_ns[keep]
    t = t[t >= onset_ns]
    size = s.cap.packets.wirelen[res.rows[keep]][res.ts_ns[keep] >= onset_ns].astype(float)
    arrivals = s.cap.packets.ts_ns[rows]
    arrivals = arrivals[arrivals >= onset_ns]
    return size.sum() * 8 / ((arrivals[-1] - arrivals[0]) / 1e9)


def test_police_passes_the_policer_rate_and_never_delays(call):
    rate = 0.6 * FLOW_BPS
    res = call.run(sim.Police(rate), seed=1)
    assert not res.delay_ns.any()
    kept = res.rows
    assert (res.ts_ns == call.cap.packets.ts_ns[kept]).all()
    for flow in range(2):
        got = _passed_rate_bps(call, res, flow)
        assert abs(got - rate) <= 0.05 * rate, got
    print(f"police 48 kbit/s on 80 kbit/s: passed {got:.0f} bit/s, dropped "
          f"{res.truth['measured']['drop_fraction']:.3f}")


def test_shared_bucket_polices_the_aggregate(call):
    rate = 0.6 * FLOW_BPS                          # one bucket for both flows' 160 kbit/s
    res = call.run(sim.Police(rate, shared=True), seed=1)
    got = _passed_rate_bps(call, res, 0) + _passed_rate_bps(call, res, 1)
    assert abs(got - rate) <= 0.05 * rate
    assert res.truth["impairment"]["params"]["shared"] is True


def _max_excess(t_ns: np.ndarray, size: np.ndarray, rate_bps: float) -> float:
    """max over windows [t_i, t_j] of bytes departed in it minus rate * (t_j - t_i): must be <= burst."""
    o = np.argsort(t_ns, kind="stable")
    t = (t_ns[o] - t_ns[o][0]) / 1e9
    c = np.cumsum(size[o].astype(float))
    r = rate_bps / 8
    before = np.concatenate(([0.0], c[:-1])) - r * t     # bytes before i, minus r t_i
    return float(np.max((c - r * t) - np.minimum.accumulate(before)))


def test_shape_delays_to_the_queue_and_caps_the_rate(call):
    rate, queue = 0.6 * FLOW_BPS, 2000.0
    imp = sim.Shape(rate, queue)
    res = call.run(imp, seed=1)
    qdelay_ms = queue * 8 / rate * 1000                     # 333 ms
    rows = _to_local_rows(call, 0)
    keep = np.isin(res.rows, rows)
    delay_ms = res.delay_ns[keep] / 1e6
    # the queue fills: the first packet passes at once, later ones wait up to about QUEUE/RATE
    assert delay_ms[0] == 0
    assert 0.85 * qdelay_ms <= delay_ms.max() <= qdelay_ms + FRAME * 8 / rate * 1000
    assert np.median(delay_ms[len(delay_ms) // 2:]) > 0.8 * qdelay_ms
    # output never exceeds rate + burst over any window, and the long-run rate is the shaper's
    size = call.cap.packets.wirelen[res.rows[keep]]
    assert _max_excess(res.ts_ns[keep], size, rate) <= max(imp.burst, FRAME) + 1e-6
    got = _passed_rate_bps(call, res, 0)
    assert abs(got - rate) <= 0.05 * rate
    # FIFO: order kept within the flow; losses are tail drops of the overflowing queue
    assert (np.diff(res.rows[keep]) > 0).all()
    assert res.truth["flows"][0]["measured"]["ba"]["dropped"] > 0
    print(f"shape 48 kbit/s, queue 2000 B: max delay {delay_ms.max():.1f} ms (Q/R {qdelay_ms:.1f}), "
          f"rate {got:.0f} bit/s, excess over any window {_max_excess(res.ts_ns[keep], size, rate):.0f} B")


def test_block_after_drops_everything_later_in_selected_flows_only(call):
    res = call.run(sim.BlockAfter(5.0), select="0", direction="both")
    t = call.cap.packets
    start = int(call.ft.first_ns[0])
    f0 = call.ft.packet_indices(0)
    late = f0[t.ts_ns[f0] >= start + 5 * 10**9]
    early = f0[t.ts_ns[f0] < start + 5 * 10**9]
    assert set(res.dropped.tolist()) == set(late.tolist())
    assert np.isin(early, res.rows).all()
    assert np.isin(call.ft.packet_indices(1), res.rows).all()
    assert [f["id"] for f in res.truth["flows"]] == [0]
    assert res.truth["expected_verdict"] == "blocking"


def _loss_series(s: Loaded, res, flow: int, bin_s: float = 0.5) -> np.ndarray:
    rows = _to_local_rows(s, flow)
    lost = np.isin(rows, res.dropped)
    t = (s.cap.packets.ts_ns[rows] - T0_NS) / 1e9
    b = (t // bin_s).astype(int)
    return np.bincount(b, weights=lost) / np.maximum(np.bincount(b), 1)


def test_congest_losses_are_bursty_correlated_across_flows_and_delayed(long_call):
    imp = sim.Congest()
    assert 0.02 <= imp.loss_upper_bound <= 0.05
    res = long_call.run(imp, seed=3)
    assert res.truth["impairment"]["scope"] == "all flows (confounder)"
    loss = res.truth["measured"]["drop_fraction"]
    assert 0.02 <= loss <= 0.05
    a, b = _loss_series(long_call, res, 0), _loss_series(long_call, res, 1)
    r = float(np.corrcoef(a, b)[0, 1])
    assert r > 0.5
    # losses come while the queueing delay is up: the kept neighbours (before or after) of lost
    # packets were delayed far more than the average packet
    delays = _kept_delay(res)
    rows = _to_local_rows(long_call, 0)
    lost = np.isin(rows, res.dropped)
    idx = np.arange(len(rows))
    prev_kept = np.maximum.accumulate(np.where(~lost, idx, 0))
    next_kept = np.minimum.accumulate(np.where(~lost, idx, len(rows) - 1)[::-1])[::-1]
    pos = np.flatnonzero(lost)
    neighbours = np.array([max(delays[int(rows[prev_kept[i]])], delays[int(rows[next_kept[i]])]) for i in pos],
                          dtype=float)
    all_delays = np.array([delays[int(x)] for x in rows if int(x) in delays], dtype=float)
    assert np.mean(neighbours > 0) > 0.9
    assert neighbours.mean() > 3 * all_delays.mean()
    # bursty: more consecutive losses than independent drops at that rate would give
    pair = np.mean(lost[1:] & lost[:-1]) / max(lost.mean(), 1e-9)
    assert pair > 3 * lost.mean()
    print(f"congest defaults: loss {loss:.4f}, loss correlation between flows {r:.2f} (0.5 s bins), "
          f"delay near losses {neighbours.mean() / 1e6:.1f} ms vs mean {all_delays.mean() / 1e6:.1f} ms, "
          f"P(loss | previous lost) {pair:.2f}")


def test_jitter_resorts_and_keeps_every_packet(call):
    res = call.run(sim.Jitter(20.0), seed=5)
    n = len(call.cap.packets)
    assert len(res.rows) == n and len(res.dropped) == 0
    assert (np.diff(res.ts_ns) >= 0).all()
    rows = _to_local_rows(call, 0)
    order_out = res.rows[np.isin(res.rows, rows)]
    assert (np.diff(order_out) < 0).any()                # some packets overtaken
    d = res.delay_ns[np.isin(res.rows, res.impaired)] / 1e6
    assert abs(d.mean() - 20.0) < 2.0
    assert not res.delay_ns[~np.isin(res.rows, res.impaired)].any()   # from-local untouched
    print(f"jitter 20 ms: mean added {d.mean():.2f} ms, {int(np.sum(np.diff(order_out) < 0))} reorderings in flow 0")


@pytest.mark.parametrize("imp", [sim.Drop(0.5), sim.Shape(0.3 * FLOW_BPS), sim.Police(0.3 * FLOW_BPS),
                                 sim.Jitter(30.0), sim.Congest(p_gb=0.2)], ids=lambda i: i.kind)
def test_onset_leaves_earlier_packets_untouched(call, imp):
    onset = 8.0
    res = call.run(imp, onset_s=onset, seed=2)
    t = call.cap.packets
    t0 = int(t.ts_ns.min())
    before = np.flatnonzero(t.ts_ns < t0 + int(onset * 1e9))
    assert not np.isin(before, res.dropped).any()
    assert not np.isin(before, res.impaired).any()
    d = _kept_delay(res)
    assert all(d[int(r)] == 0 for r in before)
    assert len(res.dropped) > 0 or isinstance(imp, sim.Jitter)
    assert res.truth["onset_s"] == onset


def test_from_local_impairs_the_other_direction_and_says_where_it_is_seen(call):
    res = call.run(sim.Drop(0.3), direction="from-local", seed=1)
    local_is_a, _ = sim.local_side_is_a(call.ft)
    to_local = sim.to_local_of(call.ft, local_is_a)
    assert not to_local[res.dropped].any() and len(res.dropped) > 0
    assert "far end" in res.truth["vantage"]
    assert all(f["impaired_directions"] == ["ab"] for f in res.truth["flows"])


def test_unselected_flows_untouched_byte_for_byte(call, tmp_path):
    res = call.run(sim.Jitter(15.0), seed=1)        # confounder: every flow ...
    assert len(res.truth["flows"]) == 2
    res = call.run(sim.Drop(0.4), select=[0], direction="both", seed=1)
    out = tmp_path / "o.pcap"
    sim.write(res, call.cap, out)
    back = read_capture(str(out))
    ft = build_flows(back)
    # flow 1 of the input is the flow with its 5-tuple in the output
    f_in = call.ft.packet_indices(1)
    j = [i for i in range(len(ft)) if ft.endpoint(i, "b") == call.ft.endpoint(1, "b")][0]
    f_out = ft.packet_indices(j)
    assert len(f_in) == len(f_out)

    def frame(c, r):
        o = int(c.packets.frame_off[r])
        return c.buffer[o:o + int(c.packets.caplen[r])].tobytes()

    assert all(frame(call.cap, a) == frame(back, b) for a, b in zip(f_in, f_out))
    assert (call.cap.packets.ts_ns[f_in] == back.packets.ts_ns[f_out]).all()


def test_same_seed_same_bytes(call, tmp_path):
    outs = []
    for i, seed in enumerate((11, 11, 12)):
        res = call.run(sim.Congest(), seed=seed)
        p = tmp_path / f"s{i}.pcap"
        sim.write(res, call.cap, p)
        outs.append(p.read_bytes())
    assert outs[0] == outs[1] and outs[0] != outs[2]
    t0, t1 = (json.loads((tmp_path / f"s{i}.pcap.truth.json").read_text()) for i in (0, 1))
    t0.pop("output"), t1.pop("output")
    assert t0 == t1


def test_compiled_and_interpreted_writers_agree(call, tmp_path, monkeypatch):
    from throttledetect import write as writer
    res = call.run(sim.Jitter(10.0), seed=1)
    writer.write_rows(call.cap, res.rows, res.ts_ns, tmp_path / "a.pcap")
    monkeypatch.setattr(writer, "JIT_ENABLED", False)   # the numpy path the fuzzer and no-numba runs take
    writer.write_rows(call.cap, res.rows, res.ts_ns, tmp_path / "b.pcap")
    assert (tmp_path / "a.pcap").read_bytes() == (tmp_path / "b.pcap").read_bytes()


def test_truth_file_records_input_config_and_measured_effects(call, tmp_path):
    res = call.run(sim.Police(48000), onset_s=2.0, seed=4)
    out = tmp_path / "p.pcap"
    truth = sim.write(res, call.cap, out)
    on_disk = json.loads((tmp_path / "p.pcap.truth.json").read_text())
    assert on_disk == json.loads(json.dumps(truth))
    assert truth["input"]["sha256"] == hashlib.sha256(open(call.path, "rb").read()).hexdigest()
    assert truth["output"]["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert truth["impairment"]["kind"] == "police"
    assert truth["impairment"]["params"]["burst_bytes"] == 1500.0
    assert truth["expected_verdict"] == "policing" and truth["direction"] == "to-local" and truth["seed"] == 4
    f = truth["flows"][0]
    assert f["a"] == "192.168.1.10:40000" and f["b"] == "203.0.113.5:3478" and f["label"] == "rtp"
    assert f["local_side"] == "a" and f["impaired_directions"] == ["ba"]
    m = f["measured"]["ba"]
    assert m["packets_in"] - m["packets_out"] == m["dropped"] > 0
    assert m["direction"] == "to-local"
    assert sum(x["measured"][d]["packets_out"] for x in truth["flows"] for d in ("ab", "ba")) == \
        truth["output"]["packets"] == len(read_capture(str(out)).packets)


# ---------------------------------------------------------------------------- looping

def _check_continuous(cap, ft):
    streams = find_rtp_streams(cap, ft)
    assert streams
    for s in streams:
        st = s.stats()
        assert st.lost == 0 and st.sequence_errors == 0 and st.duplicates == 0, s.key
        steps = np.diff(unwrap(s.rtp_ts, 1 << 32))
        assert (steps == 960).all()
    return streams


def test_loop_keeps_rtp_continuous(tmp_path):
    src = Loaded(_rtp_call(tmp_path / "short.pcap", seconds=5.0))
    looped, info = sim.loop_capture(src.cap, src.ft, src.cl, 60.0)
    assert info["looped_duration_s"] >= 60.0 and info["copies"] == 13
    out = tmp_path / "looped_clean.pcap"
    res = sim.simulate(looped, build_flows(looped), None, sim.Jitter(0.0), seed=0)
    sim.write(res, looped, out)
    back = read_capture(str(out))
    ft = build_flows(back)
    assert len(ft) == 2
    streams = _check_continuous(back, ft)
    assert all(s.packets == 13 * 5 * PPS for s in streams)
    # other bytes as in the source; the truth names the real input
    assert res.truth["input"]["path"] == src.path and res.truth["loop"]["copies"] == 13
    print(f"loop 5 s -> {info['looped_duration_s']:.2f} s: {len(streams)} streams, 0 lost, 0 sequence errors")


def test_loop_keeps_arrival_minus_timestamp_level_at_every_join():
    """captures/call_clean.pcap: its video's timestamps span the whole loop window, so a copy shifted
    by the capture's duration plus one packet gap had to advance its timestamps by a frame more
    than its time: arrival minus timestamp fell 33 ms at every join, a queue draining in steps (on
    the real-kernel replay of the 0.5x policer, the video was called shaping). Each copy's least
    arrival-minus-timestamp (the path's base delay) must be the same in every stream."""
    from pathlib import Path
    from throttledetect.pipeline import analyze_capture
    from throttledetect.streams import Streams
    from throttledetect.validate import bases
    path = Path(__file__).resolve().parents[1] / "captures" / "call_clean.pcap"
    spec = bases.discover_file(("captures/call_clean.pcap", str(path)))["base"]   # the validation's loop window
    cap = read_capture(str(path))
    ft = build_flows(cap)
    looped, info = sim.loop_capture(cap, ft, classify(cap, ft), 40.0, window=tuple(spec["window_ns"]))
    assert info["copies"] >= 4
    a = analyze_capture(looped, with_metrics=False, with_detection=False)
    st = Streams(a.capture, a.flows, a.classification)
    period = info["period_s"]
    checked = 0
    for j in range(len(a.flows)):
        for d in (0, 1):
            for s in st.rtp(j, d):
                if not s.clock or s.n < 100:
                    continue
                copy = np.floor((s.t - s.t.min()) / period + 1e-6).astype(int)
                base = [float(np.min(s.t[copy == k] - s.ts[copy == k] / s.clock)) for k in np.unique(copy)]
                assert np.ptp(base) < 0.002, (j, d, s.clock, np.round(np.diff(base) * 1e3, 1))
                checked += 1
    assert checked >= 4     # audio and video, both ways


def test_loop_updates_ipv6_udp_checksums(tmp_path):
    src = Loaded(_rtp_call(tmp_path / "v6.pcap", flows=[("fd00::10", "2001:db8::5", 40000, 3478)], seconds=2.0,
                           v6=True))
    looped, info = sim.loop_capture(src.cap, src.ft, src.cl, 10.0)
    _check_continuous(looped, build_flows(looped))
    p = looped.packets
    for i in range(0, len(p), 7):
        o = int(p.frame_off[i])
        e = Ether(looped.buffer[o:o + int(p.caplen[i])].tobytes())
        given = e[UDP].chksum
        del e[UDP].chksum
        assert Ether(bytes(e))[UDP].chksum == given


needs_jit = pytest.mark.skipif(not JIT_ENABLED, reason="timing applies to the compiled loops (numba disabled)")


@needs_jit
def test_simulating_a_looped_minute_is_fast(tmp_path):
    src = Loaded(_rtp_call(tmp_path / "short.pcap", seconds=5.0, flows=FLOWS[:1]))
    looped, _ = sim.loop_capture(src.cap, src.ft, src.cl, 60.0)
    ft = build_flows(looped)
    cl = classify(looped, ft)
    for imp in (sim.Shape(48000), sim.Police(48000), sim.Congest(), sim.Drop(0.1)):
        sim.simulate(looped, ft, cl, imp)                   # compile
        t = time.perf_counter()
        sim.simulate(looped, ft, cl, imp)
        elapsed = time.perf_counter() - t
        assert elapsed < 0.5, (imp.kind, elapsed)


@needs_jit
def test_large_capture_simulates_in_seconds(call):
    looped, _ = sim.loop_capture(call.cap, call.ft, call.cl, 1000.0)   # ~200k packets
    ft = build_flows(looped)
    sim.simulate(looped, ft, None, sim.Shape(48000), select="all")
    t = time.perf_counter()
    res = sim.simulate(looped, ft, None, sim.Shape(48000), select="all", direction="both")
    assert time.perf_counter() - t < 3.0
    assert len(res.rows) + len(res.dropped) == len(looped.packets) > 190_000


# ---------------------------------------------------------------------------- command line

def test_cli(call, tmp_path):
    from throttledetect.cli import cli
    out = tmp_path / "c.pcap"
    r = CliRunner().invoke(cli, ["simulate", call.path, str(out), "--police", "48k:3000", "--onset", "1",
                                 "--seed", "2"])
    assert r.exit_code == 0, r.output
    truth = json.loads((tmp_path / "c.pcap.truth.json").read_text())
    assert truth["impairment"]["params"]["rate_bps"] == 48000 and truth["impairment"]["params"]["burst_bytes"] == 3000
    assert truth["onset_s"] == 1.0 and truth["selector"] == "calls"
    r = CliRunner().invoke(cli, ["simulate", call.path, str(out), "--shape", "48k:100ms", "--flows", "1",
                                 "--direction", "from-local", "--loop", "30"])
    assert r.exit_code == 0, r.output
    truth = json.loads((tmp_path / "c.pcap.truth.json").read_text())
    assert truth["impairment"]["params"]["queue_bytes"] == pytest.approx(600.0)
    assert truth["loop"]["copies"] == 2 and [f["id"] for f in truth["flows"]] == [1]
    r = CliRunner().invoke(cli, ["simulate", call.path, str(out), "--drop", "0.1", "--jitter", "5"])
    assert r.exit_code == 2 and "exactly one impairment" in r.output
    r = CliRunner().invoke(cli, ["simulate", call.path, str(out), "--drop", "0.1", "--flows", "zoom"])
    assert r.exit_code == 1 and "no flow matches" in r.output


def test_rate_and_size_parsing():
    from throttledetect.commands.simulate import parse_bytes, parse_rate
    assert parse_rate("64k") == 64000 and parse_rate("1.5M") == 1.5e6 and parse_rate("2Mbit") == 2e6
    assert parse_bytes("3000", 1) == 3000 and parse_bytes("10k", 1) == 10000
    assert parse_bytes("50ms", 80000) == pytest.approx(500)
    with pytest.raises(ValueError):
        parse_rate("fast")


# ---------------------------------------------------------------------------- corpus

@need_corpus
def test_teams_drop_police_shape(teams):
    assert teams.cl.labels[0] == "teams"
    res = teams.run(sim.Drop(0.05), seed=1)
    n = len(res.impaired)
    assert binom.ppf(0.0005, n, 0.05) <= len(res.dropped) <= binom.ppf(0.9995, n, 0.05)
    # The first 3 s carry almost nothing; from 4 s on the video runs at ~0.9 Mbit/s to the client.
    onset = 4.0
    rows = _to_local_rows(teams, 0)
    t = teams.cap.packets
    onset_ns = int(t.ts_ns.min()) + int(onset * 1e9)
    busy = rows[t.ts_ns[rows] >= onset_ns]
    offered = t.wirelen[busy].sum() * 8 / (np.ptp(t.ts_ns[busy]) / 1e9)
    rate = 0.6 * offered
    # Video frames come as bursts of ~1200-byte packets: a bucket of 250 ms lets the long-run rate
    # reach the policer's; the default (20 ms) one wastes tokens between frames and passes less.
    res = teams.run(sim.Police(rate, rate / 8 * 0.25), onset_s=onset, seed=1)
    assert not res.delay_ns.any()
    got = _passed_rate_bps(teams, res, 0, onset_ns)
    assert abs(got - rate) <= 0.05 * rate
    small = _passed_rate_bps(teams, teams.run(sim.Police(rate), onset_s=onset), 0, onset_ns)
    assert small < got
    imp = sim.Shape(rate, rate / 8 * 0.2)
    res = teams.run(imp, onset_s=onset, seed=1)
    keep = np.isin(res.rows, busy)                  # shaped from the onset on
    size = t.wirelen[res.rows[keep]]
    assert _max_excess(res.ts_ns[keep], size, rate) <= max(imp.burst, size.max()) + 1e-6
    d = res.delay_ns[keep] / 1e6
    assert 0.8 * 200 <= d.max() <= 200 + size.max() * 8 / rate * 1000
    print(f"teams: offered {offered:.0f} bit/s to-local after 4 s; police at 0.6x (250 ms burst) passes "
          f"{got:.0f} bit/s ({got / rate - 1:+.2%}), with the default 20 ms burst {small:.0f}; "
          f"shape (200 ms queue) max delay {d.max():.0f} ms")


@need_corpus
def test_teams_loop_keeps_rtp_sequence(teams):
    before = {s.key: s.stats() for s in find_rtp_streams(teams.cap, teams.ft)}
    looped, info = sim.loop_capture(teams.cap, teams.ft, teams.cl, 60.0)
    ft = build_flows(looped)
    assert classify(looped, ft).labels == ["teams"]
    after = {s.key: s.stats() for s in find_rtp_streams(looped, ft)}
    assert after.keys() == before.keys()
    for k, st in after.items():
        assert st.lost == 0
        assert st.packets == info["copies"] * before[k].packets
        if st.packets < 100:
            # a 5-packet stream whose first timestamp is 0 and the next 1.6e9: its timestamp span
            # (> 2^31 / 2) cannot be continued in Wireshark's sense; only its sequence is checked
            continue
        # no sequence error at the joins: only those of the source, once per copy
        assert st.sequence_errors == info["copies"] * before[k].sequence_errors
