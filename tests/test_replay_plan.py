"""Kernel replay, the parts that need no root: the send plan, the spec, the measurement, CLI errors.

The real-kernel runs are in test_replay.py (root, tc, tcpdump).
"""
from __future__ import annotations

import socket
import struct

import numpy as np
import pytest
from scapy.utils import checksum as _csum   # RFC 1071, the one's complement sum

from throttledetect.classify import classify
from throttledetect.flows import build_flows
from throttledetect.read import read_capture
from throttledetect.testbed import replay_measure as rm
from throttledetect.testbed.replay import ReplaySpec, parse_rate, parse_size, resolve, spec_from_option
from throttledetect.testbed.replay_plan import ETH_HDR, plan_replay
from throttledetect.write import write_pcap

LOCAL6, REMOTE6 = "2001:db8:1::23", "2a03:2880:f003:c07:face:b00c::2"
LOCAL4, REMOTE4 = "192.168.1.23", "157.240.20.51"
T0 = 1_700_000_000_000_000_000


def _eth(ethertype: int) -> bytes:
    return bytes.fromhex("020000000001020000000002") + struct.pack("!H", ethertype)


def udp6(src, dst, sport, dport, payload, hop=64) -> bytes:
    u = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    s6, d6 = socket.inet_pton(socket.AF_INET6, src), socket.inet_pton(socket.AF_INET6, dst)
    c = _csum(s6 + d6 + struct.pack("!IxxxB", len(u), 17) + u) or 0xFFFF
    u = u[:6] + struct.pack("!H", c) + u[8:]
    return _eth(0x86DD) + struct.pack("!IHBB", 0x60000000, len(u), 17, hop) + s6 + d6 + u


def ip4(src, dst, proto, l4, ttl=64, ip_id=1) -> bytes:
    h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), ip_id, 0x4000, ttl, proto, 0,
                    socket.inet_aton(src), socket.inet_aton(dst))
    return _eth(0x0800) + h[:10] + struct.pack("!H", _csum(h)) + h[12:] + l4


def tcp4(src, dst, sport, dport, seq, ack, flags, payload=b"", ttl=64, ip_id=1) -> bytes:
    t = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 0x50, flags, 65535, 0, 0) + payload
    c = _csum(socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!xBH", 6, len(t)) + t)
    return ip4(src, dst, 6, t[:16] + struct.pack("!H", c) + t[18:], ttl, ip_id)


def rtp(seq: int, ts: int, ssrc: int, n: int) -> bytes:
    return struct.pack("!BBHII", 0x80, 111, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc) + bytes(n)


def write_mixed_call(path, seconds: float = 5.0) -> None:
    """An IPv6 RTP flow at 50 packets/s each way, an IPv4 TCP connection (handshake, 1000-byte
    segments down, ACKs up), one multicast packet (never replayed), two TTL-1 probes."""
    frames, times = [], []
    for k in range(int(seconds * 50)):
        t = T0 + k * 20_000_000
        frames.append(udp6(LOCAL6, REMOTE6, 40000, 3478, rtp(k, k * 960, 0x1234, 120)))
        times.append(t)
        frames.append(udp6(REMOTE6, LOCAL6, 3478, 40000, rtp(k, k * 960, 0x9876, 160), hop=52))
        times.append(t + 7_000_000)
    seq_c, seq_s = 1000, 5000
    frames += [tcp4(LOCAL4, REMOTE4, 50001, 443, seq_c, 0, 0x02),
               tcp4(REMOTE4, LOCAL4, 443, 50001, seq_s, seq_c + 1, 0x12, ttl=55),
               tcp4(LOCAL4, REMOTE4, 50001, 443, seq_c + 1, seq_s + 1, 0x10, ip_id=2)]
    times += [T0 + 1_000_000, T0 + 30_000_000, T0 + 31_000_000]
    for k in range(int(seconds * 8) - 2):
        frames.append(tcp4(REMOTE4, LOCAL4, 443, 50001, seq_s + 1 + k * 1000, seq_c + 1, 0x18, bytes(1000), ttl=55,
                           ip_id=100 + k))
        times.append(T0 + 100_000_000 + k * 125_000_000)
        frames.append(tcp4(LOCAL4, REMOTE4, 50001, 443, seq_c + 1, seq_s + 1 + (k + 1) * 1000, 0x10, ip_id=3 + k))
        times.append(T0 + 101_000_000 + k * 125_000_000)
    frames.append(ip4(LOCAL4, "239.255.255.250", 17, struct.pack("!HHHH", 1900, 1900, 8, 0)))
    times.append(T0 + 2_000_000)
    # traceroute-like probes that die at the first hop: the router must not answer them
    frames.append(ip4(LOCAL4, REMOTE4, 17, struct.pack("!HHHH", 40001, 33434, 8, 0), ttl=1))
    times.append(T0 + 3_000_000)
    frames.append(udp6(LOCAL6, REMOTE6, 40002, 33434, b"", hop=1))
    times.append(T0 + 4_000_000)
    order = sorted(range(len(frames)), key=times.__getitem__)
    write_pcap(path, [frames[i] for i in order], [times[i] for i in order])


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("mixed") / "mixed.pcap")
    write_mixed_call(path)
    cap = read_capture(path)
    ft = build_flows(cap)
    return cap, ft, classify(cap, ft)


def test_plan_sends_recorded_packets_from_their_own_side(mixed):
    cap, ft, cl = mixed
    plan = plan_replay(cap, ft, cl, "all")
    t = cap.packets
    assert plan.skipped == {"multicast": 1}
    assert len(plan.rows) == len(t) - 1 and plan.has_ipv6
    assert {str(a) for a in plan.local_addrs} == {LOCAL4, LOCAL6}
    assert {str(a) for a in plan.remote_addrs} == {REMOTE4, "2a03:2880:f003:c07:face:b00c:0:2"}
    for k in range(len(plan.rows)):
        row = int(plan.rows[k])
        orig = cap.buffer[int(t.frame_off[row]) + ETH_HDR:int(t.frame_off[row]) + int(t.caplen[row])].tobytes()
        sent = plan.frames[plan.frame_start[k]:plan.frame_start[k + 1]].tobytes()
        src_is_local = str(orig[8:24] if orig[0] >> 4 == 6 else orig[12:16]) == str(
            socket.inet_pton(socket.AF_INET6, LOCAL6) if orig[0] >> 4 == 6 else socket.inet_aton(LOCAL4))
        assert bool(plan.to_local[k]) == (not src_is_local)
        assert sent[12:14] == (b"\x86\xdd" if orig[0] >> 4 == 6 else b"\x08\x00")
        if not plan.to_local[k]:
            assert sent[ETH_HDR:] == orig      # leaves the client exactly as recorded
            continue
        # towards the client: TTL / hop limit one higher (the router takes it off), checksum still valid
        ip = bytearray(sent[ETH_HDR:])
        ttl_at = 7 if ip[0] >> 4 == 6 else 8
        assert ip[ttl_at] == orig[ttl_at] + 1
        ip[ttl_at] -= 1
        if ip[0] >> 4 == 4:
            assert _csum(bytes(sent[ETH_HDR:ETH_HDR + 20])) == 0
            ip[10:12] = orig[10:12]
        assert bytes(ip) == orig
    assert np.all(np.diff(plan.rel_ns) >= 0) and plan.rel_ns[0] == 0


def test_plan_selects_call_flows_and_measures_their_rate(mixed):
    cap, ft, cl = mixed
    plan = plan_replay(cap, ft, cl, "calls")
    calls = [i for i in range(len(ft)) if cl.is_call(i)]
    assert calls and list(np.flatnonzero(plan.throttled_flow)) == calls
    # 50 packets/s of 14 + 40 + 8 + 12 + 160 bytes towards the client
    assert plan.mean_rate_bps(plan.throttled_flow, True) == pytest.approx(50 * 234 * 8, rel=0.01)
    assert plan.max_frame(plan.throttled_flow, True) == 234


def test_plan_cuts_at_seconds(mixed):
    cap, ft, cl = mixed
    plan = plan_replay(cap, ft, cl, "all", seconds=1.0)
    assert plan.duration_s <= 1.0 and len(plan.rows) < 200


def test_spec_parsing():
    assert parse_rate("0.7x") == (0.7, None) and parse_rate("1.5M") == (None, 1.5e6)
    assert parse_size("20ms") == (None, 0.02) and parse_size("10k") == (10000.0, None)
    s = spec_from_option("shape", "0.7x:300ms:3000", direction="both", onset_s=2)
    assert (s.rate_factor, s.queue_s, s.burst_bytes, s.directions) == (0.7, 0.3, 3000.0, ["to-local", "from-local"])
    assert spec_from_option("htb", "400k:20").queue_packets == 20
    assert spec_from_option("block", 2).effective_onset_s == 2.0
    for bad in (("police", "fast"), ("police", "0.7x:1:2"), ("drop", 0), ("htb", "1x:a"), ("wobble", 1)):
        with pytest.raises(ValueError):
            spec_from_option(*bad)
    assert ReplaySpec.from_dict({"kind": "drop", "drop_probability": 0.1}).drop_probability == 0.1
    with pytest.raises(ValueError):
        ReplaySpec.from_dict({"kind": "none", "colour": 1})


def test_resolved_buckets_hold_the_largest_frame(mixed):
    cap, ft, cl = mixed
    plan = plan_replay(cap, ft, cl, "calls")
    mean = plan.mean_rate_bps(plan.throttled_flow, True)
    (police, info), = resolve(spec_from_option("police", "0.5x:1ms"), plan).values()
    assert police.kind == "policing" and police.rate_bps == round(0.5 * mean)
    assert police.burst_bytes == police.limit_bytes == info["max_frame_bytes"] == 234   # 1 ms is less
    (shape, _), = resolve(spec_from_option("shape", "0.5x:1s"), plan).values()
    assert shape.limit_bytes == int(shape.rate_bps / 8) and shape.burst_bytes == 1500
    both = resolve(spec_from_option("police", "0.5x", direction="both"), plan)
    assert set(both) == {"to-local", "from-local"} and both["from-local"][0].rate_bps < police.rate_bps


def test_token_bucket_excess():
    # 10 packets of 1000 bytes at once, then one per second at 8000 bit/s: a bucket of 10000 bytes
    t = np.array([0.0] * 10 + [1.0, 2.0, 3.0])
    size = np.full(13, 1000)
    assert rm.max_window_excess(t, size, 8000) == pytest.approx(10000)
    assert rm.max_window_excess(t[10:], size[10:], 8000) == pytest.approx(1000)


def test_matching_is_fifo_within_identical_packets():
    buf = np.frombuffer(bytes([0x45] + [0] * 7 + [64, 17, 0, 0] + [1] * 8) * 2, dtype=np.uint8).copy()
    buf[20 + 8] = 50     # second copy: another TTL and checksum, the same packet for the router
    buf[20 + 10] = 0x7F
    k = rm.packet_keys(buf, np.array([0, 20]), np.array([20, 20]))
    assert k[0] == k[1]
    # three sends of the same bytes 1 s apart; the first dropped, the others delayed 0.2 s
    sent_keys, sent_t = np.full(3, k[0]), np.array([0.0, 1.0, 2.0])
    m = rm.match(sent_keys, sent_t, np.full(2, k[0]), np.array([1.2, 2.2]), max_delay_s=0.5)
    assert m.tolist() == [1, 2]
    recv = rm.received_time(3, m, np.array([1.2, 2.2]))
    assert np.isnan(recv[0]) and recv[1] == pytest.approx(1.2)


def test_cli_refuses_without_root_in_one_line(monkeypatch, tmp_path):
    from click.testing import CliRunner

    from throttledetect.cli import cli
    from throttledetect.testbed import netns
    monkeypatch.setattr(netns.os, "geteuid", lambda: 1000)
    r = CliRunner().invoke(cli, ["replay", "captures/call_clean.pcap", str(tmp_path / "o.pcap"), "--none"])
    assert r.exit_code == 2
    assert r.output.strip() == "throttledetect: error: cannot replay here: testbed needs root (network namespaces and tc)"


def test_cli_usage_errors(tmp_path):
    from click.testing import CliRunner

    from throttledetect.cli import cli
    out = str(tmp_path / "o.pcap")
    for args, words in ((["--police", "0.7x", "--shape", "0.7x"], "exactly one"), ([], "exactly one"),
                        (["--police", "fast"], "not a rate"), (["--block-after", "2", "--onset", "1"], "onset")):
        r = CliRunner().invoke(cli, ["replay", "captures/call_clean.pcap", out, *args])
        assert r.exit_code == 2 and words in r.output, (args, r.output)


def test_a_window_is_looped_even_when_the_capture_is_longer(tmp_path):
    """A 20 s capture whose window [8 s, 10 s] is to be played for 6 s: prepare() loops that
    window (a call a few seconds long inside a longer capture) instead of cutting the first 6 s."""
    from throttledetect.testbed.replay import prepare
    path = str(tmp_path / "long.pcap")
    write_mixed_call(path, seconds=20.0)
    w0, w1 = T0 + 8_000_000_000, T0 + 10_000_000_000
    spec = ReplaySpec(kind="police", rate_factor=0.7, window_ns=(w0, w0, w1))
    plan, ft, cl, loop = prepare(path, spec, seconds=6.0)
    assert loop is not None and loop["copies"] >= 3
    assert 5.5 <= plan.duration_s <= 6.5
    assert plan.throttled_flow.any()
    # without the window the first 6 s are cut, as before
    plan2, _, _, loop2 = prepare(path, ReplaySpec(kind="police", rate_factor=0.7), seconds=6.0)
    assert loop2 is None and plan2.duration_s <= 6.0
