"""The validation harness's network model: each stage does what its docstring says, measured on
synthetic calls built here (no corpus needed), and the packet surgery keeps headers consistent.

Synthetic calls (tests.test_simulate._rtp_call): paced two-way RTP, PT 111, 20 ms, 50 pps x 200-byte
frames per direction; the local host 192.168.1.10 (IPv4, no UDP checksum) or fd00::10 (IPv6, valid
UDP checksums).
"""
from __future__ import annotations

import struct

import numpy as np
import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from tests.test_simulate import FLOW_BPS, FLOWS, LOCAL, MACS, T0_NS, Loaded, _rtp_call
from throttledetect import rewrite
from throttledetect.flows import build_flows
from throttledetect.metrics.rtp import find_rtp_streams, unwrap
from throttledetect.streams.reports import rtcp_report_blocks
from throttledetect.validate import bases as B
from throttledetect.validate import network as nw
from throttledetect.validate import scenarios as S
from throttledetect.write import write_pcap

NS = 1_000_000_000
SAME_HOST = [(LOCAL, "203.0.113.5", 40000, 3478), (LOCAL, "203.0.113.5", 40002, 3479)]


def _scene(path) -> nw.Scene:
    c = Loaded(path)
    return nw.Scene(c.cap, c.ft, c.cl)


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return _scene(_rtp_call(tmp_path_factory.mktemp("nw") / "call.pcap", seconds=20.0))


@pytest.fixture(scope="module")
def scene_long(tmp_path_factory):
    return _scene(_rtp_call(tmp_path_factory.mktemp("nw") / "long.pcap", seconds=90.0))


@pytest.fixture(scope="module")
def scene_host(tmp_path_factory):
    return _scene(_rtp_call(tmp_path_factory.mktemp("nw") / "host.pcap", flows=SAME_HOST, seconds=20.0))


@pytest.fixture(scope="module")
def scene_v6(tmp_path_factory):
    return _scene(_rtp_call(tmp_path_factory.mktemp("nw") / "v6.pcap", flows=[("fd00::10", "2001:db8::5", 40000, 3478)],
                            seconds=10.0, v6=True))


def _where(scene, direction="to-local", start=0.0, end=None):
    return nw.Where(tuple(range(len(scene.ft))), direction, start, end)


def _max_excess(t_ns: np.ndarray, size: np.ndarray, rate_bps: float) -> float:
    """max over windows [t_i, t_j] of bytes(i..j) - rate * (t_j - t_i): the smallest burst that
    explains the passed packets (a token bucket of depth b passes at most rate*T + b in any T)."""
    if not len(t_ns):
        return 0.0
    r = rate_bps / 8 / NS
    cs = np.cumsum(size)
    before = cs - size                                   # bytes before packet i
    head = np.minimum.accumulate(before - r * t_ns)      # best window start at or before j
    return float(np.max(cs - r * t_ns - head))


def _udp_checksums_ok(cap) -> None:
    p = cap.packets
    for i in range(0, len(p), 11):
        o = int(p.frame_off[i])
        e = Ether(cap.buffer[o:o + int(p.caplen[i])].tobytes())
        if UDP not in e or e[UDP].chksum == 0:
            continue
        given = e[UDP].chksum
        del e[UDP].chksum
        if IP in e:
            del e[IP].chksum
        assert Ether(bytes(e))[UDP].chksum == given, i


def _ip_checksums_ok(cap) -> None:
    p = cap.packets
    for i in range(0, len(p), 7):
        o = int(p.frame_off[i])
        e = Ether(cap.buffer[o:o + int(p.caplen[i])].tobytes())
        if IP in e:
            given = e[IP].chksum
            del e[IP].chksum
            assert Ether(bytes(e))[IP].chksum == given, i


# ----------------------------------------------------------------------------- throttlers

@pytest.mark.parametrize("full", [True, False])
@pytest.mark.parametrize("burst", [1500.0, 12_000.0])
def test_policer_never_passes_more_than_rate_times_t_plus_burst(scene, full, burst):
    rate = 0.6 * FLOW_BPS
    tr = nw.run(scene, [nw.Police(_where(scene), rate, burst, full=full)], np.random.default_rng(1))
    assert (tr.t == tr.t_sent).all()                     # a policer delays nothing
    for f in range(len(scene.ft)):
        sel = np.flatnonzero(tr.to_local & (tr.flow == f) & ~tr.lost)
        assert _max_excess(tr.t[sel] - scene.t0, tr.size[sel].astype(float), rate) <= burst + 1e-6
        offered = np.flatnonzero(tr.to_local & (tr.flow == f))
        span = (tr.t[offered[-1]] - tr.t[offered[0]]) / NS
        passed_bps = tr.size[sel].sum() * 8 / span
        assert abs(passed_bps - rate - (burst * 8 / span if full else 0.0)) < 0.05 * rate
        # an empty bucket has no room for the first packet; a full one passes the first burst
        assert tr.lost[offered[0]] == (not full)


def test_shared_bucket_is_one_bucket_for_the_host(scene_host):
    rate = 0.6 * FLOW_BPS                                # for both flows together: 0.3 x their sum
    tr = nw.run(scene_host, [nw.Police(_where(scene_host), rate, 3000.0, per="host")], np.random.default_rng(2))
    sel = np.flatnonzero(tr.to_local & ~tr.lost)
    sel = sel[np.argsort(tr.t[sel], kind="stable")]
    assert _max_excess(tr.t[sel] - scene_host.t0, tr.size[sel].astype(float), rate) <= 3000.0 + 1e-6
    per_flow = [int((tr.lost & tr.to_local & (tr.flow == f)).sum()) for f in range(2)]
    assert min(per_flow) > 0                             # both flows draw on it


@pytest.mark.parametrize("queue_s", [0.05, 0.5])
def test_shaper_never_reorders_never_exceeds_its_queue_and_caps_the_rate(scene, queue_s):
    rate = 0.6 * FLOW_BPS
    q = rate / 8 * queue_s
    tr = nw.run(scene, [nw.Shape(_where(scene), rate, q)], np.random.default_rng(3))
    for f in range(len(scene.ft)):
        rows = np.flatnonzero(tr.to_local & (tr.flow == f))          # arrival (row) order
        kept = rows[~tr.lost[rows]]
        assert (np.diff(tr.t[kept]) >= 0).all()                       # departures in arrival order
        # at each arrival, the bytes waiting (arrived, kept, not yet departed) stay within the queue
        arr, dep, size = tr.t_sent[kept], tr.t[kept], tr.size[kept].astype(float)
        waiting = np.array([size[(arr <= a) & (dep > a)].sum() for a in arr[::25]])
        assert waiting.max() <= q + 1e-6
        assert _max_excess(dep - scene.t0, size, rate) <= 1500.0 + 200 + 1e-6
        assert tr.lost[rows].any() and (dep - arr).max() > 0
        assert (dep - arr).max() / 1e9 <= queue_s + 0.05


def test_drop_and_block_and_setup_block(scene):
    tr = nw.run(scene, [nw.Drop(_where(scene), 0.1)], np.random.default_rng(4))
    tl = tr.to_local
    assert 0.07 < tr.lost[tl].mean() < 0.13 and not tr.lost[~tl].any()
    tr = nw.run(scene, [nw.BlockInbound(_where(scene), 5.0, 4.0, 1.0)], np.random.default_rng(5))
    rel = (tr.t - scene.t0) / 1e9
    alive = tr.alive
    assert not (alive & tl_of(tr) & (rel >= 5.0)).any()              # nothing arrives after the block
    assert (alive & ~tl_of(tr) & (rel > 5.0) & (rel < 9.0)).sum() > 100   # the app goes on 4 s
    late = alive & ~tl_of(tr) & (rel > 9.5)
    assert 0 < late.sum() <= 2 * 11 + 2                               # then one probe a second per flow
    tr = nw.run(scene, [nw.SetupBlock(tuple(range(len(scene.ft))), 8.0, 0.5)], np.random.default_rng(6))
    assert not (tr.alive & tl_of(tr)).any()
    assert ((tr.t[tr.alive] - scene.t0) / 1e9 < 8.0).all()          # plain RTP: media until give-up


def tl_of(tr):
    return tr.to_local


def test_setup_block_retransmits_the_unanswered_probe(tmp_path):
    """A flow that starts with a STUN binding request: the client repeats it every 0.5 s and never
    sends media; the far end's answer and media never arrive."""
    path = _rtp_call(tmp_path / "c.pcap", flows=FLOWS[:1], seconds=10.0)
    c = Loaded(path)
    stun = struct.pack("!HHI", 1, 0, 0x2112A442) + bytes(range(12))
    probe = bytes(Ether(**MACS) / IP(src=LOCAL, dst="203.0.113.5") / UDP(sport=40000, dport=3478, chksum=0) / stun)
    frames = [probe] + [c.cap.buffer[int(o):int(o) + int(n)].tobytes()
                        for o, n in zip(c.cap.packets.frame_off, c.cap.packets.caplen)]
    times = [T0_NS - 200_000_000] + c.cap.packets.ts_ns.tolist()
    write_pcap(tmp_path / "s.pcap", frames, times)
    sc = _scene(tmp_path / "s.pcap")
    tr = nw.run(sc, [nw.SetupBlock((0,), 6.0, 0.5)], np.random.default_rng(0))
    out = tr.alive & ~tr.to_local
    assert not (tr.alive & tr.to_local).any()
    assert (tr.rows[out] == 0).all() and 10 <= out.sum() <= 13      # the probe, then ~11 retransmissions
    assert ((tr.t[out] - sc.t0) / 1e9 < 6.0 + 1e-9).all()


# ----------------------------------------------------------------------------- confounders

@pytest.mark.parametrize("model", ["bernoulli", "gilbert"])
def test_path_loss_hits_every_flow(scene_long, model):
    scene = scene_long
    p = 0.03
    tr = nw.run(scene, [nw.PathLoss(nw.Where(None, "to-local"), p, model, 60.0, 0.5)], np.random.default_rng(7))
    for f in range(len(scene.ft)):
        m = tr.to_local & (tr.flow == f)
        assert 0.4 * p < tr.lost[m].mean() < 2 * p
    if model == "gilbert":
        # bursty: losses of the two flows fall in the same bad periods
        lost_t = [np.sort(tr.t[tr.lost & (tr.flow == f)]) for f in range(2)]
        near = np.abs(lost_t[0][:, None] - lost_t[1][None, :]).min(axis=1) < 30_000_000
        assert near.mean() > 0.4


def test_congestion_delays_before_it_drops_and_hits_flows_together(scene):
    st = nw.Congestion(nw.Where(None, "to-local"), capacity_bps=2 * FLOW_BPS / 0.3, queue_ms=150, on_load=1.4,
                       off_load=0.3, on_s=2.0, off_s=3.0)
    tr = nw.run(scene, [st], np.random.default_rng(8))
    tl = tr.to_local
    d = (tr.t - tr.t_sent)[tl & ~tr.lost]
    assert d.max() > 100e6 and tr.lost[tl].any()
    # every loss happens while the queue is long (the delay of the packet just before it)
    rows = np.flatnonzero(tl)
    rows = rows[np.argsort(tr.t_sent[rows], kind="stable")]
    delay = (tr.t - tr.t_sent)[rows].astype(float)
    kept = ~tr.lost[rows]
    last_kept = np.maximum.accumulate(np.where(kept, np.arange(len(rows)), 0))
    before = np.concatenate([[0.0], delay[last_kept][:-1]])        # the last kept packet's delay
    assert (before[~kept] > 50e6).mean() > 0.9
    assert all(tr.lost[tl & (tr.flow == f)].any() for f in range(2))


def test_wifi_delays_in_order_and_rarely_loses(scene):
    st = nw.WiFi(nw.Where(None, "to-local"), access_ms=2.0, stall_p=0.02, stall_ms=60.0, loss_p=0.003)
    tr = nw.run(scene, [st], np.random.default_rng(9))
    rows = np.flatnonzero(tr.to_local & ~tr.lost)
    rows = rows[np.argsort(tr.t_sent[rows], kind="stable")]
    assert (np.diff(tr.t[rows]) >= 0).all()                 # one FIFO: never reordered
    d = (tr.t - tr.t_sent)[rows] / 1e6
    assert 1.0 < np.median(d) < 10.0 and d.max() > 40.0    # stalls make aggregation bursts
    assert tr.lost[tr.to_local].mean() < 0.02


def test_clock_skew_changes_rtp_timestamps_by_the_stated_ppm(scene_v6):
    ppm = 2500.0
    tr = nw.run(scene_v6, [nw.ClockSkew(_where(scene_v6), ppm)], np.random.default_rng(0))
    cap = tr.capture()
    ft = build_flows(cap)
    streams = {s.key: s for s in find_rtp_streams(cap, ft)}
    skewed = [s for s in streams.values() if len(s.rtp_ts) and (s.rtp_ts[0] != 0)]
    assert skewed
    ix = scene_v6.rtp
    for s in find_rtp_streams(cap, ft):
        ts = unwrap(s.rtp_ts, 1 << 32).astype(float)
        steps = (ts[-1] - ts[0]) / (len(ts) - 1)
        to_local = bool(scene_v6.to_local[ix.row[ix.ssrc == s.ssrc][0]])
        want = 960 * (1 + ppm * 1e-6) if to_local else 960
        assert steps == pytest.approx(want, rel=2e-5)
    _udp_checksums_ok(cap)


def test_sender_stages_leave_no_sequence_gap(scene_v6):
    for st in (nw.Mute(_where(scene_v6), 3.0, 0.4, "dtx"), nw.Hold(_where(scene_v6), 2.0, 4.0, 1.0),
               nw.AdaptRate(_where(scene_v6), 2.0, 0.5)):
        tr = nw.run(scene_v6, [st], np.random.default_rng(1))
        cap = tr.capture()
        for s in find_rtp_streams(cap, build_flows(cap)):
            st_ = s.stats()
            assert st_.lost == 0 and st_.sequence_errors == 0, type(st).__name__
        _udp_checksums_ok(cap)
    # the adapted stream is audio: same cadence, smaller packets, lengths consistent
    tr = nw.run(scene_v6, [nw.AdaptRate(_where(scene_v6), 2.0, 0.5)], np.random.default_rng(1))
    cap = tr.capture()
    p = cap.packets
    late = ((p.ts_ns - p.ts_ns.min()) / 1e9 > 2.5) & (p.payload_wirelen < 150)
    assert late.sum() > 100
    for i in np.flatnonzero(late)[:20]:
        o = int(p.frame_off[i])
        e = Ether(cap.buffer[o:o + int(p.caplen[i])].tobytes())
        assert e[IPv6].plen == e[UDP].len == len(e[UDP])


def test_payload_types_on_one_counter_are_renumbered_together(tmp_path):
    """G.711 (PT 0) and its comfort noise (PT 13) draw from one sequence counter: packets a held
    call never sent leave no gap in that counter, whichever type they were."""
    path = _rtp_call(tmp_path / "cn.pcap", seconds=10.0, pt_at=lambda k: 0 if (k // 25) % 2 == 0 else 13)
    sc = _scene(path)
    tr = nw.run(sc, [nw.Hold(_where(sc), 2.0, 4.0, 1.0)], np.random.default_rng(1))
    cap = tr.capture()
    p = cap.packets
    buf = cap.buffer
    key, seq = [], []
    for i in np.flatnonzero(p.payload_off >= 0).tolist():
        o = int(p.payload_off[i])
        key.append((int(p.sport[i]), int(p.dport[i])))
        seq.append(int.from_bytes(bytes(buf[o + 2:o + 4]), "big"))
    key = np.array([hash(k) for k in key])
    seq = np.array(seq)
    pts = 0
    for k in np.unique(key):
        s = seq[key == k]
        assert np.all(np.diff(s) % 65536 == 1), np.flatnonzero(np.diff(s) % 65536 != 1)[:5]
        pts += 1
    assert pts == 2 * len(FLOWS)


def test_hangup_mute_hold_truncate_keeponly(scene):
    tr = nw.run(scene, [nw.HangUp(_where(scene, "both"), 5.0, 0.5, None)], np.random.default_rng(2))
    rel = (tr.t - scene.t0) / 1e9
    assert not (tr.alive & tr.to_local & (rel >= 5.0)).any()
    assert not (tr.alive & ~tr.to_local & (rel >= 5.5)).any()
    tr = nw.run(scene, [nw.Mute(_where(scene), 4.0, 0.4, "dtx")], np.random.default_rng(2))
    late = tr.alive & tr.to_local & ((tr.t - scene.t0) / 1e9 >= 5.0)
    assert 0 < late.sum() <= 2 * 16 * 2.5 + 4                       # one packet per 0.4 s per flow
    tr = nw.run(scene, [nw.TruncateEnd(7.0)], np.random.default_rng(2))
    assert ((tr.t[tr.alive] - scene.t0) / 1e9 < 7.0).all()
    tr = nw.run(scene, [nw.KeepOnly((0,), "to-local")], np.random.default_rng(2))
    assert (tr.flow[tr.alive] == 0).all() and tr.to_local[tr.alive].all()


def test_ssrc_change_and_migration(scene):
    tr = nw.run(scene, [nw.SsrcChange(_where(scene), 6.0), nw.Migrate(nw.Where((1,), "both"), 8.0)],
                np.random.default_rng(3))
    cap = tr.capture()
    _ip_checksums_ok(cap)
    ft = build_flows(cap)
    assert len(ft) == 3                                             # flow 1 moved to a new remote endpoint
    ssrcs = {s.ssrc for s in find_rtp_streams(cap, ft)}
    assert len(ssrcs) == 4 + 2                                      # two inbound streams restarted
    new = [i for i in range(len(ft)) if ft.endpoint(i, "b").startswith("192.0.2.")
           or ft.endpoint(i, "a").startswith("192.0.2.")]
    assert len(new) == 1 and ft.first_ns[new[0]] >= scene.t0 + 8 * NS


def test_far_end_reports_count_the_uplink_losses(tmp_path):
    """A call whose far end sends plain RTCP receiver reports about the local stream: after a drop
    of the local host's packets past the capture point, every report's cumulative lost equals the
    packets lost up to its highest sequence number, and its fraction lost the interval's share."""
    c = Loaded(_rtp_call(tmp_path / "c.pcap", flows=FLOWS[:1], seconds=10.0))
    p = c.cap.packets
    frames = [c.cap.buffer[int(o):int(o) + int(n)].tobytes() for o, n in zip(p.frame_off, p.caplen)]
    times = p.ts_ns.tolist()
    local_ssrc, first_seq = 0x1000, 65400
    for k in range(1, 10):                                    # one RR a second, about packets sent so far
        high = first_seq + 50 * k - 1
        rr = struct.pack("!BBHI", 0x81, 201, 7, 0x1001) + struct.pack("!IIIIII", local_ssrc, 0, high, 0, 0, 0)
        frames.append(bytes(Ether(**MACS) / IP(src="203.0.113.5", dst=LOCAL) / UDP(sport=3478, dport=40000) / rr))
        times.append(T0_NS + k * NS + 5_000_000)
    order = np.argsort(times, kind="stable")
    write_pcap(tmp_path / "rr.pcap", [frames[i] for i in order], [times[i] for i in order])
    sc = _scene(tmp_path / "rr.pcap")
    assert len(sc.rr_blocks()["row"]) == 9
    tr = nw.run(sc, [nw.Drop(nw.Where((0,), "from-local"), 0.2), nw.FarEndReports()], np.random.default_rng(4))
    assert tr.lost_beyond.sum() > 50 and not tr.lost.any()   # lost past the capture point: still captured
    cap = tr.capture()
    _udp_checksums_ok(cap)
    blocks = rtcp_report_blocks(cap, np.flatnonzero(cap.packets.sport == 3478))
    ix = sc.rtp
    lost_seq = np.sort(ix.xseq[sc.rtp_pos[np.flatnonzero(tr.lost_beyond[:sc.n])]])
    prev_h, prev_c = first_seq - 1, 0
    for h, cum, frac in zip(blocks["highest"], blocks["cumulative"], blocks["fraction"]):
        want = int(np.searchsorted(lost_seq, first_seq + ((h - first_seq) % 65536), side="right"))
        assert cum == want
        assert frac == min(255, (256 * (cum - prev_c)) // max(1, (h - prev_h) % 65536))
        prev_h, prev_c = h, cum


# ----------------------------------------------------------------------------- packet surgery

def test_loop_window_keeps_setup_once_and_tcp_continuous(tmp_path):
    """A TCP control and an RTP call: looping a window keeps what precedes it once, and the TCP
    connection's sequence and acknowledgement numbers continue across the joins."""
    c = Loaded(_rtp_call(tmp_path / "c.pcap", flows=FLOWS[:1], seconds=4.0))
    p = c.cap.packets
    frames = [c.cap.buffer[int(o):int(o) + int(n)].tobytes() for o, n in zip(p.frame_off, p.caplen)]
    times = p.ts_ns.tolist()
    seq, ack = 1000, 5000
    for k in range(40):                               # a server sends 500-byte segments, the client acks
        frames.append(bytes(Ether(**MACS) / IP(src="198.51.100.9", dst=LOCAL) /
                            TCP(sport=443, dport=50000, flags="PA", seq=seq, ack=ack) / bytes(500)))
        times.append(T0_NS + k * 100_000_000 + 1)
        seq += 500
        frames.append(bytes(Ether(**MACS) / IP(src=LOCAL, dst="198.51.100.9") /
                            TCP(sport=50000, dport=443, flags="A", seq=ack, ack=seq)))
        times.append(T0_NS + k * 100_000_000 + 2)
    order = np.argsort(times, kind="stable")
    write_pcap(tmp_path / "t.pcap", [frames[i] for i in order], [times[i] for i in order])
    c = Loaded(tmp_path / "t.pcap")
    win = (T0_NS, T0_NS + NS, T0_NS + 4 * NS)
    looped, info = rewrite.loop_capture(c.cap, c.ft, c.cl, 20.0, window=win)
    assert info["copies"] == 7 and info["kept_once"] > 0 and info["tcp_directions"] == 2
    q = looped.packets
    srv = np.flatnonzero((q.proto == 6) & (q.sport == 443))
    seqs = q.tcp_seq[srv].astype(np.int64)
    assert (np.diff(seqs) == 500).all()                # new bytes in every copy, no repeat
    cli_rows = np.flatnonzero((q.proto == 6) & (q.sport == 50000))
    assert (np.diff(q.tcp_ack[cli_rows].astype(np.int64)) == 500).all()
    for i in srv[::9]:
        o = int(q.frame_off[i])
        e = Ether(looped.buffer[o:o + int(q.caplen[i])].tobytes())
        given = e[TCP].chksum
        del e[TCP].chksum
        assert Ether(bytes(e))[TCP].chksum == given
    ft = build_flows(looped)
    for s in find_rtp_streams(looped, ft):
        assert s.stats().lost == 0 and s.stats().sequence_errors == 0


def test_rewrite_endpoint_keeps_checksums(scene_v6, scene):
    buf = scene.cap.buffer.copy()
    rows = np.flatnonzero(scene.flow == 0)
    n = rewrite.rewrite_endpoint(buf, scene.cap, rows[scene.to_local[rows]], "src", "192.0.2.7", 4242)
    assert n == int(scene.to_local[rows].sum())
    cap = rewrite.build_capture(buf, scene.cap, np.arange(scene.n), scene.ts, "moved")
    _ip_checksums_ok(cap)
    assert "192.0.2.7:4242" in {build_flows(cap).endpoint(i, s) for i in range(3) for s in "ab"}


# ----------------------------------------------------------------------------- seeds and bases

@pytest.fixture(scope="module")
def synthetic_base(tmp_path_factory):
    path = _rtp_call(tmp_path_factory.mktemp("nw") / "base.pcap", seconds=12.0)
    d = B.discover_file(("synthetic/base.pcap", path))
    assert d["base"], d["why"]
    return B.prepare(B.BaseSpec(**d["base"]), 30.0)


def test_discovery_of_a_two_way_call(synthetic_base):
    b = synthetic_base
    assert b.spec.kind == "two-way" and b.spec.rtp and len(b.targets) == 2
    assert b.info["copies"] == 3 and b.duration_s >= 30.0
    assert all(abs(r - FLOW_BPS) < 0.05 * FLOW_BPS for r in b.rate_bps.values())


def test_short_or_sparse_calls_are_not_bases(tmp_path):
    path = _rtp_call(tmp_path / "short.pcap", seconds=0.5)             # 25 packets each way
    assert B.discover_file(("x", path))["base"] is None


def test_loopback_one_way_stream_becomes_a_one_way_base(tmp_path):
    path = _rtp_call(tmp_path / "lo.pcap", flows=[("127.0.0.1", "127.0.0.1", 6000, 6001)], seconds=3.0)
    c = Loaded(path)
    keep = np.flatnonzero(c.cap.packets.sport == 6001)                 # one direction only
    cap = rewrite.build_capture(c.cap.buffer, c.cap, keep, c.cap.packets.ts_ns[keep], "one way")
    write_pcap(tmp_path / "one.pcap", [cap.buffer[int(o):int(o) + int(n)].tobytes()
                                       for o, n in zip(cap.packets.frame_off, cap.packets.caplen)],
               cap.packets.ts_ns.tolist())
    d = B.discover_file(("lo", str(tmp_path / "one.pcap")))
    assert d["base"] and d["base"]["kind"] == "one-way" and d["base"]["loopback_remap"]
    b = B.prepare(B.BaseSpec(**d["base"]), 10.0)
    assert b.targets and b.scene.to_local[b.scene.flow == b.targets[0]].all()


@pytest.mark.parametrize("name", ["drop 5%", "police 0.5-0.65x burst small", "shape 0.5-0.85x queue 50-200 ms",
                                  "block after ~30 s", "path loss 0.5-3% bursty", "Wi-Fi"])
def test_the_seed_changes_the_trial(synthetic_base, name):
    from throttledetect.validate.runner import trial_rng
    sc = S.BY_NAME[name]
    outs = []
    for i in (0, 1):
        rng = trial_rng(sc.name, synthetic_base.id, i)
        stages, params = sc.build(synthetic_base, rng)
        tr = nw.run(synthetic_base.scene, stages, rng)
        outs.append((params, np.flatnonzero(tr.lost | ~tr.sent), tr.t.copy()))
    (p0, l0, t0), (p1, l1, t1) = outs
    differs = p0 != p1 or not np.array_equal(l0, l1) or not np.array_equal(t0, t1)
    assert differs, name
    if name != "drop 5%" and p0:
        assert p0 != p1                                             # drawn parameters differ too
    # and the same seed repeats the trial exactly
    rng = trial_rng(sc.name, synthetic_base.id, 0)
    stages, params = sc.build(synthetic_base, rng)
    tr = nw.run(synthetic_base.scene, stages, rng)
    assert params == p0 and np.array_equal(np.flatnonzero(tr.lost | ~tr.sent), l0)


def test_every_scenario_builds_on_a_synthetic_base(synthetic_base):
    for sc in S.SCENARIOS:
        if sc.applies(synthetic_base):
            continue
        rng = np.random.default_rng(0)
        stages, params = sc.build(synthetic_base, rng)
        tr = nw.run(synthetic_base.scene, stages, rng)
        cap = tr.capture()
        assert cap is None or len(cap.packets) > 0, sc.name
