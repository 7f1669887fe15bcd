"""Reader tests on captures built here (frames made by scapy, an independent encoder)."""
from __future__ import annotations

import bz2
import gzip
import lzma
import os
import struct
import subprocess
import sys

import pytest
from scapy.layers.inet import IP, TCP, UDP, fragment
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop
from scapy.layers.l2 import CookedLinux, CookedLinuxV2, Dot1AD, Dot1Q, Ether
from scapy.layers.ppp import PPP, PPPoE

from throttledetect.read import CaptureError, read_capture
from throttledetect.read.decode import STATUS_FRAGMENT, STATUS_NOT_IP
from throttledetect.read.table import address_to_halves, halves_to_address
from throttledetect.write import write_pcap, write_pcapng

T0 = 1_700_000_000_123_456_000  # ns, microsecond-exact so classic pcap keeps it


def udp(src="10.0.0.1", dst="93.184.216.34", sport=40000, dport=3478, payload=b"x" * 20):
    return IP(src=src, dst=dst) / UDP(sport=sport, dport=dport) / payload


def assert_udp_row(cap, i, src, dst, sport, dport):
    t = cap.packets
    assert str(halves_to_address(t.src_hi[i], t.src_lo[i])) == src
    assert str(halves_to_address(t.dst_hi[i], t.dst_lo[i])) == dst
    assert (int(t.sport[i]), int(t.dport[i]), int(t.proto[i])) == (sport, dport, 17)


@pytest.mark.parametrize("nano", [False, True])
@pytest.mark.parametrize("big_endian", [False, True])
def test_classic_pcap_byte_orders_and_resolutions(tmp_path, nano, big_endian):
    frames = [bytes(Ether() / udp(sport=40000 + k)) for k in range(5)]
    ts = [T0 + k * 20_000_000 + (789 if nano else 0) for k in range(5)]
    p = tmp_path / "a.pcap"
    write_pcap(p, frames, ts, 1, nano=nano, big_endian=big_endian)
    cap = read_capture(p)
    assert cap.format == "pcap" and len(cap.packets) == 5 and not cap.warnings
    assert list(cap.packets.ts_ns) == ts
    assert list(cap.packets.sport) == [40000 + k for k in range(5)]
    assert list(cap.packets.wirelen) == [len(f) for f in frames]
    assert cap.payload(0) == b"x" * 20


LINK_CASES = {
    # name: (linktype, frame)
    "ethernet": (1, bytes(Ether() / udp())),
    "vlan": (1, bytes(Ether() / Dot1Q(vlan=7) / udp())),
    "qinq": (1, bytes(Ether() / Dot1AD(vlan=3) / Dot1Q(vlan=7) / udp())),
    "pppoe": (1, bytes(Ether() / PPPoE(sessionid=1) / PPP(proto=0x0021) / udp())),
    "sll": (113, bytes(CookedLinux(proto=0x0800) / udp())),
    "sll2": (276, bytes(CookedLinuxV2(proto=0x0800) / udp())),
    "null_le": (0, struct.pack("<I", 2) + bytes(udp())),
    "null_be": (0, struct.pack(">I", 2) + bytes(udp())),
    "loop": (108, struct.pack(">I", 2) + bytes(udp())),
    "raw": (101, bytes(udp())),
    "raw_dlt12": (12, bytes(udp())),
    "ipv4": (228, bytes(udp())),
}


@pytest.mark.parametrize("name", sorted(LINK_CASES))
def test_link_types(tmp_path, name):
    linktype, frame = LINK_CASES[name]
    p = tmp_path / f"{name}.pcap"
    write_pcap(p, [frame], [T0], linktype)
    cap = read_capture(p)
    assert cap.linktypes == [linktype]
    assert_udp_row(cap, 0, "10.0.0.1", "93.184.216.34", 40000, 3478)
    assert cap.payload(0) == b"x" * 20


def test_ipv6_null_and_sll2(tmp_path):
    pkt = IPv6(src="2001:db8::1", dst="2001:db8::2") / UDP(sport=5004, dport=5006) / b"abc"
    for linktype, frame in [(0, struct.pack("<I", 30) + bytes(pkt)), (229, bytes(pkt)),
                            (276, bytes(CookedLinuxV2(proto=0x86DD) / pkt))]:
        p = tmp_path / f"v6-{linktype}.pcap"
        write_pcap(p, [frame], [T0], linktype)
        cap = read_capture(p)
        assert_udp_row(cap, 0, "2001:db8::1", "2001:db8::2", 5004, 5006)
        assert cap.payload(0) == b"abc"


def test_ipv4_options_and_ethernet_padding(tmp_path):
    pkt = IP(src="192.168.1.2", dst="8.8.8.8", options=b"\x94\x04\x00\x00") / UDP(sport=1, dport=53) / b"q"
    frame = bytes(Ether() / pkt) + b"\0" * 20   # padded as short Ethernet frames are
    p = tmp_path / "opt.pcap"
    write_pcap(p, [frame], [T0])
    cap = read_capture(p)
    assert_udp_row(cap, 0, "192.168.1.2", "8.8.8.8", 1, 53)
    assert cap.payload(0) == b"q"  # padding is not payload
    assert int(cap.packets.wirelen[0]) == len(frame)


def test_ipv6_extension_headers(tmp_path):
    pkt = (IPv6(src="2001:db8::a", dst="2001:db8::b") / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt()
           / TCP(sport=443, dport=50000, flags="SA", seq=123, ack=456) / b"hello")
    p = tmp_path / "ext.pcap"
    write_pcap(p, [bytes(Ether() / pkt)], [T0])
    t = read_capture(p).packets
    assert (int(t.proto[0]), int(t.sport[0]), int(t.dport[0])) == (6, 443, 50000)
    assert (int(t.tcp_seq[0]), int(t.tcp_ack[0]), int(t.tcp_flags[0])) == (123, 456, 0x12)
    assert int(t.payload_len[0]) == 5


def test_ipv4_fragments_join_their_flow(tmp_path):
    big = IP(src="10.1.1.1", dst="10.2.2.2", id=777) / UDP(sport=1111, dport=2222) / (b"z" * 3000)
    frags = fragment(big, fragsize=1000)
    assert len(frags) >= 3
    p = tmp_path / "frag.pcap"
    write_pcap(p, [bytes(Ether() / f) for f in frags], [T0 + k for k in range(len(frags))])
    cap = read_capture(p)
    t = cap.packets
    assert list(t.sport) == [1111] * len(frags)          # later fragments took the first's ports
    assert cap.stats["fragments"] == len(frags)
    assert cap.stats["fragments_reassigned"] == len(frags) - 1
    assert int(cap.status[1]) == STATUS_FRAGMENT


def test_ipv6_fragment(tmp_path):
    base = IPv6(src="2001:db8::1", dst="2001:db8::2")
    first = base / IPv6ExtHdrFragment(id=9, m=1, offset=0, nh=17) / bytes(UDP(sport=7, dport=8, len=2008) / (b"a" * 1000))[:1008]
    later = base / IPv6ExtHdrFragment(id=9, m=0, offset=126, nh=17) / (b"b" * 1000)
    p = tmp_path / "frag6.pcap"
    write_pcap(p, [bytes(Ether() / first), bytes(Ether() / later)], [T0, T0 + 1000])
    t = read_capture(p).packets
    assert list(t.sport) == [7, 7] and list(t.dport) == [8, 8]
    assert list(t.frag) == [1, 2 | 4]


def test_pcapng_two_interfaces_with_tsresol(tmp_path):
    eth = bytes(Ether() / udp(sport=1000))
    sll2 = bytes(CookedLinuxV2(proto=0x0800) / udp(sport=2000))
    # iface 0: nanoseconds (tsresol 9); iface 1: default microseconds; iface 2: 2^-20 s.
    sec = T0 // 1_000_000_000
    pkts = [(0, sec * 10**9 + 5, eth), (1, sec * 10**6 + 7, sll2), (2, (sec << 20) + (1 << 19), eth)]
    p = tmp_path / "multi.pcapng"
    write_pcapng(p, pkts, [(1, 9), (276, None), (1, 0x80 | 20)])
    cap = read_capture(p)
    assert cap.format == "pcapng" and cap.linktypes == [1, 276]
    t = cap.packets
    assert list(t.iface) == [0, 1, 2]
    assert list(t.ts_ns) == [sec * 10**9 + 5, sec * 10**9 + 7000, sec * 10**9 + 500_000_000]
    assert list(t.sport) == [1000, 2000, 1000]


def test_pcapng_big_endian_and_unknown_blocks(tmp_path):
    p = tmp_path / "be.pcapng"
    write_pcapng(p, [(0, 1, bytes(Ether() / udp()))], [(1, None)], big_endian=True)
    data = p.read_bytes()
    # An unknown (custom) block between the IDB and the EPB must be skipped by its length.
    shb_len = struct.unpack(">I", data[4:8])[0]
    idb_len = struct.unpack(">I", data[shb_len + 4:shb_len + 8])[0]
    cut = shb_len + idb_len
    custom = struct.pack(">II", 0x40000BAD, 20) + b"\1\2\3\4\5\6\7\x08" + struct.pack(">I", 20)
    p.write_bytes(data[:cut] + custom + data[cut:])
    cap = read_capture(p)
    assert len(cap.packets) == 1 and not cap.warnings
    assert_udp_row(cap, 0, "10.0.0.1", "93.184.216.34", 40000, 3478)


@pytest.mark.parametrize("comp", ["gz", "xz", "bz2"])
def test_compressed(tmp_path, comp):
    frames = [bytes(Ether() / udp(sport=k + 1)) for k in range(50)]
    raw = tmp_path / "c.pcap"
    write_pcap(raw, frames, [T0 + k for k in range(50)])
    packed = {"gz": gzip.compress, "xz": lzma.compress, "bz2": bz2.compress}[comp](raw.read_bytes())
    p = tmp_path / f"c.pcap.{comp}"
    p.write_bytes(packed)
    cap = read_capture(p)
    assert len(cap.packets) == 50 and not cap.warnings
    # Cut short: the packets before the cut survive, with a warning.
    q = tmp_path / f"cut.pcap.{comp}"
    q.write_bytes(packed[: len(packed) * 2 // 3])
    if comp == "bz2":
        # bzip2 decodes whole 900 kB blocks: a cut single-block file has nothing recoverable.
        with pytest.raises(CaptureError, match=r"cut.pcap.bz2: byte \d+: .*ends early"):
            read_capture(q)
        return
    cut = read_capture(q)
    assert 0 < len(cut.packets) < 50
    assert any("ends early" in w.message or "truncated" in w.message for w in cut.warnings)


def test_not_a_capture_names_file_and_offset(tmp_path):
    p = tmp_path / "notes.txt"
    p.write_text("hello, this is not a capture\n")
    with pytest.raises(CaptureError, match=r"notes.txt: byte 0: not a pcap or pcapng"):
        read_capture(p)
    e = tmp_path / "empty.pcap"
    e.write_bytes(b"")
    with pytest.raises(CaptureError, match="byte 0"):
        read_capture(e)


def test_corrupt_record_resynchronises(tmp_path):
    frames = [bytes(Ether() / udp(sport=k + 1)) for k in range(10)]
    p = tmp_path / "bad.pcap"
    write_pcap(p, frames, [T0 + k * 1000 for k in range(10)], nano=False)
    data = bytearray(p.read_bytes())
    rec = 16 + len(frames[0])
    bad_at = 24 + 4 * rec
    data[bad_at + 8:bad_at + 16] = struct.pack("<II", 0x7FFFFFF0, 0x7FFFFFF0)  # record 4's lengths destroyed
    p.write_bytes(bytes(data))
    cap = read_capture(p)
    assert list(cap.packets.sport) == [1, 2, 3, 4, 6, 7, 8, 9, 10]
    msgs = [(w.offset, w.message) for w in cap.warnings]
    assert msgs[0][0] == bad_at and "corrupt record" in msgs[0][1]
    assert msgs[1][0] == bad_at + rec and "resynchronised" in msgs[1][1]


def test_truncated_last_record(tmp_path):
    frames = [bytes(Ether() / udp(sport=k + 1)) for k in range(3)]
    p = tmp_path / "t.pcap"
    write_pcap(p, frames, [T0] * 3)
    p.write_bytes(p.read_bytes()[:-10])
    cap = read_capture(p)
    assert len(cap.packets) == 2
    assert "truncated record: 10 bytes missing" in cap.warnings[0].message


def test_non_ip_counted_and_skipped(tmp_path):
    arp = bytes(Ether(type=0x0806) / (b"\0" * 28))
    p = tmp_path / "arp.pcap"
    write_pcap(p, [arp, bytes(Ether() / udp())], [T0, T0 + 1])
    cap = read_capture(p)
    assert cap.stats["skipped"][STATUS_NOT_IP] == 1 and cap.stats["decoded"] == 1
    assert "1 not IP" in cap.skipped_summary()


def test_address_halves_round_trip():
    for a in ["1.2.3.4", "255.255.255.255", "::1", "2001:db8::ff", "::ffff:0:1"]:
        hi, lo = address_to_halves(a)
        back = halves_to_address(hi, lo)
        assert str(back) == (a if a != "::ffff:0:1" else "0.0.0.1")


def test_interpreted_and_compiled_decoders_agree(tmp_path):
    """The fuzzer runs the decoder interpreted (THROTTLEDETECT_NO_JIT=1): it must be the same code."""
    frames = [bytes(Ether() / Dot1Q() / udp(sport=5)), bytes(Ether() / IPv6() / UDP() / b"k"),
              bytes(Ether() / IP(src="1.1.1.1", dst="2.2.2.2") / TCP(sport=80, dport=9))[:40], b"\x01\x02"]
    p = tmp_path / "mix.pcap"
    write_pcap(p, frames, [T0 + k for k in range(len(frames))])
    code = ("import sys, json; from throttledetect.read import read_capture; t = read_capture(sys.argv[1]).packets;"
            "print(json.dumps({c: getattr(t, c).tolist() for c in ('sport','dport','proto','l3','payload_len')}))")
    out = []
    for env_no_jit in ("0", "1"):
        env = dict(os.environ, THROTTLEDETECT_NO_JIT=env_no_jit)
        out.append(subprocess.run([sys.executable, "-c", code, str(p)], env=env, check=True,
                                  capture_output=True, text=True).stdout)
    assert out[0] == out[1]


def test_dense_file_grows_its_arrays(tmp_path):
    # 200,000 tiny records: far denser than the first allocation assumes, so the arrays must grow.
    frame = bytes(Ether() / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1, dport=2))
    n = 200_000
    p = tmp_path / "dense.pcap"
    write_pcap(p, [frame] * n, [T0 + k for k in range(n)])
    cap = read_capture(p)
    assert len(cap.packets) == n and not cap.warnings
    assert int(cap.packets.ts_ns[-1]) == T0 + n - 1 and (cap.packets.sport == 1).all()


def test_record_limit_is_a_warning_not_a_crash(tmp_path):
    frames = [bytes(Ether() / udp(sport=k + 1)) for k in range(100)]
    p = tmp_path / "many.pcap"
    write_pcap(p, frames, [T0 + k for k in range(100)])
    code = ("import sys; from throttledetect.read import read_capture; c = read_capture(sys.argv[1]);"
            "print(len(c.packets)); print(c.warnings[-1].message)")
    env = dict(os.environ, THROTTLEDETECT_MAX_RECORDS="30")
    out = subprocess.run([sys.executable, "-c", code, str(p)], env=env, check=True, capture_output=True,
                         text=True).stdout.splitlines()
    assert out[0] == "30" and "record limit reached" in out[1]
