"""The benchmark's synthetic capture: valid frames, exact ground truth, and the flows stage
reproducing that ground truth (no timing here: speed is checked only by `make bench`)."""
import ipaddress
import json
from collections import defaultdict

import numpy as np
import pytest

from bench.synth import make_mixed_capture, manifest_path

N = 5000


@pytest.fixture(scope="module")
def capture(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "mixed.pcap"
    manifest = make_mixed_capture(path, packets=N, seed=7)
    return path, manifest


@pytest.fixture(scope="module")
def frames(capture):
    import scapy.layers.dns  # noqa: F401  (registers the dissectors rdpcap uses)
    import scapy.layers.inet  # noqa: F401
    import scapy.layers.inet6  # noqa: F401
    import scapy.layers.l2  # noqa: F401
    from scapy.utils import rdpcap

    return rdpcap(str(capture[0]))


def _truth(manifest):
    f = manifest["flows"]
    return {
        (p, a, b): (pab, pba, bab, bba)
        for p, a, b, pab, pba, bab, bba in zip(f["proto"], f["a"], f["b"], f["packets_ab"], f["packets_ba"],
                                               f["bytes_ab"], f["bytes_ba"])
    }


def _ep(addr, port):
    ip = ipaddress.ip_address(addr)
    return f"{ip}:{port}" if ip.version == 4 else f"[{ip}]:{port}"


def test_manifest_is_consistent(capture):
    path, m = capture
    f = m["flows"]
    assert m["packets"] == N
    assert sum(f["packets_ab"]) + sum(f["packets_ba"]) == N
    assert sum(m["packets_by_kind"].values()) == N
    assert m["flow_count"] == len(f["a"]) == sum(m["flows_by_kind"].values())
    assert all(m["flows_by_kind"][k] > 0 for k in ("rtp", "tcp", "dns"))
    assert m["ipv6_flows"] > 0 and m["vlan_flows"] > 0
    assert sum(f["bytes_ab"]) + sum(f["bytes_ba"]) == m["total_frame_bytes"]
    assert m["file_bytes"] == path.stat().st_size == 24 + 16 * N + m["total_frame_bytes"]
    assert len(_truth(m)) == m["flow_count"]  # every 5-tuple is used by one flow only
    assert all(pab > 0 for pab in f["packets_ab"])  # "a" sent the first packet
    assert f["first_ns"] == sorted(f["first_ns"])
    on_disk = json.loads(manifest_path(path).read_text())
    assert on_disk["flows"] == f


def test_cached_and_deterministic(capture, tmp_path):
    path, m = capture
    mtime = path.stat().st_mtime_ns
    again = make_mixed_capture(path, packets=N, seed=7)
    assert again["cached"] and path.stat().st_mtime_ns == mtime
    assert again["flows"] == m["flows"]
    a = make_mixed_capture(tmp_path / "a.pcap", packets=800, seed=3)
    b = make_mixed_capture(tmp_path / "b.pcap", packets=800, seed=3)
    c = make_mixed_capture(tmp_path / "c.pcap", packets=800, seed=4)
    assert (tmp_path / "a.pcap").read_bytes() == (tmp_path / "b.pcap").read_bytes()
    assert (tmp_path / "a.pcap").read_bytes() != (tmp_path / "c.pcap").read_bytes()
    assert a["packets"] == b["packets"] == c["packets"] == 800


def test_frames_are_valid_and_match_the_manifest(capture, frames):
    from scapy.layers.dns import DNS
    from scapy.layers.inet import IP, TCP, UDP, in4_chksum
    from scapy.layers.inet6 import IPv6, in6_chksum
    from scapy.layers.l2 import Dot1Q, Ether
    from scapy.utils import checksum

    path, m = capture
    assert len(frames) == N
    ts = np.array([float(p.time) for p in frames])
    assert (np.diff(ts) >= 0).all(), "records are merged in timestamp order"

    truth = _truth(m)
    got = defaultdict(lambda: [0, 0, 0, 0])
    kinds = defaultdict(int)
    for p in frames:
        assert Ether in p
        wire = len(p)
        assert p.wirelen in (None, wire)
        if Dot1Q in p:
            kinds["vlan"] += 1
        if IP in p:
            ip = p[IP]
            raw_ip = bytes(ip)
            assert checksum(raw_ip[:20]) == 0, "IPv4 header checksum"
            assert ip.len == len(raw_ip)
            l3, proto, csum = ip, ip.proto, in4_chksum
        else:
            assert IPv6 in p
            ip = p[IPv6]
            assert ip.plen == len(bytes(ip)) - 40
            l3, proto, csum = ip, ip.nh, in6_chksum
            kinds["ipv6"] += 1
        l4 = p[TCP] if proto == 6 else p[UDP]
        assert csum(proto, l3, bytes(l4)) == 0, "transport checksum"
        src, dst = _ep(l3.src, l4.sport), _ep(l3.dst, l4.dport)
        if (proto, src, dst) in truth:
            c = got[(proto, src, dst)]
            c[0] += 1
            c[2] += wire
        else:
            assert (proto, dst, src) in truth, f"packet of an unknown flow {src} -> {dst}"
            c = got[(proto, dst, src)]
            c[1] += 1
            c[3] += wire
        if proto == 17 and 53 in (l4.sport, l4.dport):
            kinds["dns"] += 1
            dns = p[DNS]
            assert dns.qd[0].qname.endswith(b".example.com.")
            assert dns.qr == (l4.sport == 53) and dns.ancount == (1 if dns.qr else 0)
        elif proto == 17:
            kinds["rtp"] += 1
            rtp = bytes(l4.payload)
            assert len(rtp) == 12 + 160 and rtp[0] == 0x80 and (rtp[1] & 0x7F) in (0, 111, 120)
    assert {k: tuple(v) for k, v in got.items()} == truth
    assert kinds["vlan"] == m["vlan_packets"] and kinds["ipv6"] == m["ipv6_packets"]
    assert kinds["dns"] == m["packets_by_kind"]["dns"] and kinds["rtp"] == m["packets_by_kind"]["rtp"]


def test_rtp_and_tcp_sequences(frames):
    from scapy.layers.inet import TCP, UDP

    rtp = defaultdict(list)
    tcp = defaultdict(list)
    for p in frames:
        if TCP in p:
            t = p[TCP]
            tcp[frozenset([(p.payload.src, t.sport), (p.payload.dst, t.dport)])].append(
                (p.payload.src, t.sport, int(t.flags), t.seq, t.ack, len(t.payload)))
        elif UDP in p and 53 not in (p[UDP].sport, p[UDP].dport):
            b = bytes(p[UDP].payload)
            rtp[(p.payload.src, p[UDP].sport)].append((int.from_bytes(b[2:4], "big"), int.from_bytes(b[4:8], "big"),
                                                       b[8:12], b[1] >> 7))
    assert rtp and tcp
    for stream in rtp.values():
        seq = np.array([s[0] for s in stream])
        ts = np.array([s[1] for s in stream], dtype=np.int64)
        assert ((np.diff(seq) % 65536) == 1).all()
        steps = set(((np.diff(ts)) % 2**32).tolist())
        assert len(steps) <= 1 and steps <= {160, 960, 1800}
        assert len({s[2] for s in stream}) == 1  # one SSRC per direction
        assert stream[0][3] == 1 and all(s[3] == 0 for s in stream[1:])  # marker on the first packet
    for conv in tcp.values():
        client = (conv[0][0], conv[0][1])
        assert conv[0][2] == 0x02 and conv[1][2] == 0x12 and conv[2][2] == 0x10  # SYN, SYN-ACK, ACK
        isn_c, isn_s = conv[0][3], conv[1][3]
        assert conv[1][4] == (isn_c + 1) % 2**32 and conv[2][4] == (isn_s + 1) % 2**32
        assert [c[2] & 0x01 for c in conv[-3:]] == [1, 1, 0]  # FIN, FIN, ACK
        nxt = (isn_s + 1) % 2**32
        acked = 0
        for src, sport, flags, seq, ack, plen in conv[3:-3]:
            if (src, sport) == client:
                assert plen == 0 and seq == (isn_c + 1) % 2**32
                assert ack == nxt and ack != acked  # acks exactly what was received, each ack new
                acked = ack
            else:
                assert seq == nxt and plen > 0
                nxt = (seq + plen) % 2**32
        fin = conv[-3]
        assert fin[3] == nxt and conv[-2][4] == (nxt + 1) % 2**32 and acked == nxt


def test_build_flows_reproduces_the_manifest(capture):
    try:
        from throttledetect.flows import build_flows
        from throttledetect.read import read_capture
        from throttledetect.read.table import format_endpoint
    except ImportError as exc:
        pytest.skip(f"throttledetect.read / throttledetect.flows not importable yet: {exc}")
    path, m = capture
    cap = read_capture(path)
    assert len(cap.packets) == N
    ft = build_flows(cap)
    assert len(ft) == m["flow_count"]
    f = m["flows"]
    truth = {
        (p, a, b): (pab, pba, bab, bba, t0, t1)
        for p, a, b, pab, pba, bab, bba, t0, t1 in zip(f["proto"], f["a"], f["b"], f["packets_ab"], f["packets_ba"],
                                                       f["bytes_ab"], f["bytes_ba"], f["first_ns"], f["last_ns"])
    }
    got = {}
    for i in range(len(ft)):
        key = (int(ft.proto[i]), format_endpoint(ft.a_hi[i], ft.a_lo[i], int(ft.a_port[i])),
               format_endpoint(ft.b_hi[i], ft.b_lo[i], int(ft.b_port[i])))
        got[key] = (int(ft.packets_ab[i]), int(ft.packets_ba[i]), int(ft.bytes_ab[i]), int(ft.bytes_ba[i]),
                    int(ft.first_ns[i]), int(ft.last_ns[i]))
    missing = truth.keys() - got.keys()
    extra = got.keys() - truth.keys()
    assert not missing and not extra, f"missing {sorted(missing)[:5]}, unexpected {sorted(extra)[:5]}"
    wrong = {k: (got[k], truth[k]) for k in truth if got[k] != truth[k]}
    assert not wrong, f"{len(wrong)} flows differ (got, expected): {list(wrong.items())[:5]}"
    # per-packet assignment agrees with the per-flow counters
    flow_of = np.asarray(ft.flow_of)
    assert (flow_of >= 0).all()
    per = np.bincount(flow_of.astype(np.int64) * 2 + np.asarray(ft.dir_of), minlength=2 * len(ft)).reshape(-1, 2)
    assert (per[:, 0] == np.asarray(ft.packets_ab)).all() and (per[:, 1] == np.asarray(ft.packets_ba)).all()
