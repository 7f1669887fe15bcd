"""The Wireshark fallback of the reader (throttledetect/read/fallback.py).

Captures are built here: the same IP packets once as a plain capture and once wrapped in what the
compiled decoder does not open (tunnels inside Ethernet; 802.11 with and without radiotap, Cisco
HDLC, PPP in HDLC framing and NFLOG as link types). After the fallback, every column that
describes the IP packet must equal the plain capture's, so flows, packet counts and RTP streams
come out as if the capture had been plain IP. Without tshark (or when it fails) nothing raises:
the records stay as the compiled decoder left them, with a message saying why.
"""
from __future__ import annotations

import struct

import numpy as np
import pytest

from throttledetect.flows import build_flows
from throttledetect.read import decode, fallback, read_capture
from throttledetect.write import write_pcap, write_pcapng

need_tshark = pytest.mark.skipif(fallback.find_tshark() is None,
                                 reason="tshark not found: the Wireshark fallback needs it (apt-get install tshark)")

scapy = pytest.importorskip("scapy.all")
from scapy.all import ICMP, IP, UDP, Ether, IPv6, Raw, TCP  # noqa: E402
from scapy.layers.dot11 import Dot11, Dot11Beacon, Dot11Elt, RadioTap  # noqa: E402
from scapy.layers.l2 import GRE, LLC, SNAP  # noqa: E402
from scapy.layers.vxlan import VXLAN  # noqa: E402
from scapy.contrib.geneve import GENEVE  # noqa: E402

T0 = 1_700_000_000_000_000_000
STEP = 20_000_000                       # 20 ms between packets
OUTER = dict(src="198.51.100.1", dst="198.51.100.2")
# Explicit addresses: an Ether() without them makes scapy look for the MAC of the IP destination (ARP).
MAC = dict(src="02:00:00:00:00:0a", dst="02:00:00:00:00:0b")
OUTER6 = dict(src="2001:db8:ffff::1", dst="2001:db8:ffff::2")

# The columns that describe the IP packet (the row's own timestamp, frame and lengths are the record's).
IP_COLUMNS = ("l3", "proto", "src_hi", "src_lo", "dst_hi", "dst_lo", "sport", "dport", "ttl", "ip_id", "frag",
              "tcp_seq", "tcp_ack", "tcp_flags", "tcp_win", "payload_len", "payload_wirelen", "prefix")


def rtp(seq: int, pt: int = 0) -> bytes:
    return struct.pack(">BBHII", 0x80, pt, seq & 0xFFFF, 160 * seq, 0x1234ABCD) + bytes(range(160)) * 1


def inner(kind: int, k: int) -> bytes:
    """The k-th packet of inner flow `kind`: UDP/RTP over IPv4, TCP over IPv4, UDP over IPv6."""
    if kind == 0:
        return bytes(IP(src="10.0.0.1", dst="10.0.0.2", id=k) / UDP(sport=5004, dport=5006) / Raw(rtp(k)))
    if kind == 1:
        return bytes(IP(src="10.0.0.3", dst="10.0.0.4", id=k) / TCP(sport=40000, dport=443, seq=1000 + 100 * k,
                                                                    flags="PA") / Raw(b"t" * 100))
    return bytes(IPv6(src="2001:db8::1", dst="2001:db8::2") / UDP(sport=6000, dport=6001) / Raw(b"six" * 20))


def esp_null(ip: bytes, seq: int) -> bytes:
    """ESP with NULL encryption (RFC 2410) and a 12-byte ICV, as HMAC-SHA1-96 would add."""
    pad = b"\x01\x02"
    nxt = 4 if ip[0] >> 4 == 4 else 41
    return struct.pack(">II", 0x1001, seq) + ip + pad + bytes([len(pad), nxt]) + b"\xaa" * 12


def et(ip: bytes) -> int:
    return 0x0800 if ip[0] >> 4 == 4 else 0x86DD


TUNNELS = {
    # name -> wrap(ip bytes, k) -> Ethernet frame (the inner packet as Raw, so outer lengths count it)
    "GRE": lambda ip, k: bytes(Ether(**MAC) / IP(**OUTER) / GRE(proto=et(ip)) / Raw(ip)),
    "GRE over IPv6": lambda ip, k: bytes(Ether(**MAC) / IPv6(**OUTER6) / GRE(proto=et(ip)) / Raw(ip)),
    "VXLAN": lambda ip, k: bytes(Ether(**MAC) / IP(**OUTER) / UDP(sport=50000 + k, dport=4789) / VXLAN(vni=7)
                                 / Ether(type=et(ip), **MAC) / Raw(ip)),
    "VXLAN 8472": lambda ip, k: bytes(Ether(**MAC) / IP(**OUTER) / UDP(sport=50000 + k, dport=8472) / VXLAN(vni=7)
                                      / Ether(type=et(ip), **MAC) / Raw(ip)),
    "GENEVE": lambda ip, k: bytes(Ether(**MAC) / IP(**OUTER) / UDP(sport=50000 + k, dport=6081)
                                  / GENEVE(proto=et(ip)) / Raw(ip)),
    "IP-in-IP": lambda ip, k: bytes(Ether(**MAC) / IP(proto=4 if ip[0] >> 4 == 4 else 41, **OUTER) / Raw(ip)),
    "ESP NULL in UDP (NAT-T)": lambda ip, k: bytes(Ether(**MAC) / IP(**OUTER) / UDP(sport=4500, dport=4500)
                                                   / Raw(esp_null(ip, k + 1))),
    "ESP NULL": lambda ip, k: bytes(Ether(**MAC) / IP(proto=50, **OUTER) / Raw(esp_null(ip, k + 1))),
}


def write(path, frames, linktype=1):
    write_pcap(path, frames, [T0 + k * STEP for k in range(len(frames))], linktype)
    return str(path)


def ip_columns_equal(cap, rows, ref, ref_rows):
    for name in IP_COLUMNS:
        a, b = getattr(cap.packets, name)[rows], getattr(ref.packets, name)[ref_rows]
        assert np.array_equal(a, b), f"column {name} differs"
    for r, q in zip(rows.tolist(), ref_rows.tolist()):
        assert cap.payload(r) == ref.payload(q)


def flow_summary(cap):
    ft = build_flows(cap)
    return sorted((ft.flow(i).transport, ft.flow(i).a, ft.flow(i).b, int(ft.packets_ab[i]), int(ft.packets_ba[i]))
                  for i in range(len(ft)))


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """The inner packets as a raw-IP capture: 3 flows x 6 packets, then a plain outer UDP flow."""
    d = tmp_path_factory.mktemp("plain")
    frames = [inner(kind, k) for k in range(6) for kind in range(3)]
    return read_capture(write(d / "plain.pcap", frames, 101))


@need_tshark
def test_tunnels_open_as_if_plain_ip(tmp_path, plain):
    """Every tunnel kind carrying the same three inner flows, in one capture (one tshark run):
    the inner packets' columns equal the plain capture's; a plain flow and encrypted NAT-T stay."""
    frames = []
    for name, wrap in TUNNELS.items():
        for k in range(6):
            for kind in range(3):
                frames.append(wrap(inner(kind, k), k))
    n_tunnel = len(frames)
    frames.append(bytes(Ether(**MAC) / IP(src="192.168.1.10", dst="192.0.2.9") / UDP(sport=1111, dport=2222) / Raw(b"p" * 30)))
    rng = np.random.default_rng(1)
    frames.append(bytes(Ether(**MAC) / IP(**OUTER) / UDP(sport=4500, dport=4500) / Raw(rng.bytes(120))))   # encrypted
    # a flow on VXLAN's port by chance: tshark reads a VXLAN header, Ethernet and an IPv4 header whose
    # checksum is wrong and whose length runs past the frame; the row keeps its own decoding
    bogus = bytes(IP(src="10.7.7.7", dst="10.8.8.8", len=1400) / UDP(sport=1, dport=2))
    bogus = bogus[:10] + b"\x12\x34" + bogus[12:]
    frames.append(bytes(Ether(**MAC) / IP(src="192.168.1.10", dst="192.0.2.9") / UDP(sport=4789, dport=40000)
                        / Raw(b"\x08\0\0\0\0\0\x07\0" + bytes(Ether(type=0x0800, **MAC)) + bogus)))
    cap = read_capture(write(tmp_path / "tunnels.pcap", frames))

    st = cap.stats["fallback"]
    assert st["tunnel_records"] == n_tunnel + 1 and st["tunnels_opened"] == n_tunnel, st
    assert any("Wireshark fallback" in w.message and f"{n_tunnel} of {n_tunnel + 1} tunnel packets opened" in w.message
               for w in cap.warnings), cap.warnings
    ref_rows = np.arange(len(plain.packets))
    for t in range(len(TUNNELS)):
        rows = np.arange(t * 18, (t + 1) * 18)
        ip_columns_equal(cap, rows, plain, ref_rows)
        assert np.all(cap.packets.tunnel[rows] == fallback.TUNNEL_FALLBACK)
    assert np.all(cap.status[:n_tunnel] == decode.STATUS_OK)
    # the plain flow and the encrypted ESP keep their own (outer) decoding
    assert cap.packets.tunnel[n_tunnel] == 0 and cap.packets.sport[n_tunnel] == 1111
    assert cap.packets.tunnel[n_tunnel + 1] == 0 and cap.packets.sport[n_tunnel + 1] == 4500
    assert cap.packets.tunnel[n_tunnel + 2] == 0 and cap.packets.sport[n_tunnel + 2] == 4789
    # flows: each inner flow once per tunnel kind (same 5-tuple, so one flow with all its packets)
    flows = flow_summary(cap)
    plain_flows = flow_summary(plain)
    assert [f[:3] for f in flows if f[1].startswith(("10.", "[2001:db8::"))] == [f[:3] for f in plain_flows]
    assert [f[3] + f[4] for f in flows if f[1].startswith(("10.", "[2001:db8::"))] == [6 * len(TUNNELS)] * 3
    assert ("udp", "198.51.100.1:4500", "198.51.100.2:4500", 1, 0) in flows


@need_tshark
def test_icmp_error_in_a_tunnel_is_the_icmp_packet(tmp_path):
    """The innermost IP is the one the tunnel carried, not the header an ICMP error quotes."""
    icmp = bytes(IP(src="10.9.9.1", dst="10.0.0.1") / ICMP(type=3, code=3) / IP(src="10.0.0.1", dst="10.9.9.9")
                 / UDP(sport=5004, dport=5006))
    cap = read_capture(write(tmp_path / "icmp.pcap", [TUNNELS["GRE"](icmp, 0)]))
    t = cap.packets
    assert t.tunnel[0] == fallback.TUNNEL_FALLBACK and t.proto[0] == 1
    assert cap.payload(0)[:1] == b"\x03"
    assert build_flows(cap).flow(0).a.startswith("10.9.9.1")


def dot11(ip: bytes, k: int, *, radiotap: bool) -> bytes:
    frame = Dot11(type=2, subtype=0, FCfield="to_DS", addr1="02:00:00:00:00:01", addr2="02:00:00:00:00:02",
                  addr3="02:00:00:00:00:03", SC=(k % 4096) << 4) / LLC() / SNAP(code=et(ip)) / Raw(ip)
    return bytes((RadioTap() / frame) if radiotap else frame)


def nflog(ip: bytes) -> bytes:
    def tlv(t, v):
        n = 4 + len(v)
        return struct.pack("<HH", n, t) + v + b"\0" * (-n % 4)
    fam = 2 if ip[0] >> 4 == 4 else 10
    return bytes([fam, 0]) + struct.pack(">H", 5) + tlv(1, struct.pack(">HBB", et(ip), 3, 0)) + tlv(9, ip)


LINKS = {
    # link type -> wrap(ip, k)
    127: lambda ip, k: dot11(ip, k, radiotap=True),
    105: lambda ip, k: dot11(ip, k, radiotap=False),
    104: lambda ip, k: (b"\x0f\x00\x08\x00" if ip[0] >> 4 == 4 else b"\x0f\x00\x86\xdd") + ip,   # Cisco HDLC
    50: lambda ip, k: (b"\xff\x03\x00\x21" if ip[0] >> 4 == 4 else b"\xff\x03\x00\x57") + ip,    # PPP in HDLC framing
    239: lambda ip, k: nflog(ip),
}


@need_tshark
def test_link_types_mixed_with_ethernet_in_one_pcapng(tmp_path, plain):
    """A pcapng with an Ethernet interface and five link types we do not decode: every IP packet
    comes out (Ethernet rows untouched), time order kept; Wi-Fi frames without IP stay skipped."""
    lts = list(LINKS)
    ifaces = [(1, 9)] + [(lt, 9) for lt in lts]
    packets, where = [], {}
    ts = T0
    for k in range(6):
        for kind in range(3):
            ip = inner(kind, k)
            packets.append((0, ts, bytes(Ether(**MAC) / IP(src="192.168.1.10", dst="192.0.2.9", id=len(packets))
                                         / UDP(sport=1111, dport=2222) / Raw(b"e" * 20))))
            ts += 1000
            for j, lt in enumerate(lts):
                where.setdefault(lt, []).append(len(packets))
                packets.append((j + 1, ts, LINKS[lt](ip, len(packets))))   # k: the 802.11 sequence number
                ts += 1000
    beacon = bytes(RadioTap() / Dot11(type=0, subtype=8, addr1="ff:ff:ff:ff:ff:ff", addr2="02:00:00:00:00:02",
                                      addr3="02:00:00:00:00:02") / Dot11Beacon() / Dot11Elt(ID=0, info=b"net"))
    protected = bytes(RadioTap() / Dot11(type=2, subtype=0, FCfield="to_DS+protected", addr1="02:00:00:00:00:01",
                                         addr2="02:00:00:00:00:02", addr3="02:00:00:00:00:03", SC=4000 << 4)
                      / Raw(np.random.default_rng(2).bytes(100)))
    packets += [(1, ts, beacon), (1, ts + 1000, protected)]
    path = tmp_path / "mixed.pcapng"
    write_pcapng(path, packets, ifaces)
    cap = read_capture(str(path))

    t = cap.packets
    assert np.all(np.diff(t.ts_ns) > 0)
    ref_rows = np.arange(len(plain.packets))
    for lt, rows in where.items():
        rows = np.asarray(rows)
        assert np.all(t.linktype[rows] == lt)
        ip_columns_equal(cap, rows, plain, ref_rows)
    eth = np.flatnonzero(t.linktype == 1)
    assert len(eth) == 18 and np.all(t.tunnel[eth] == 0) and np.all(t.sport[eth] == 1111)
    assert cap.stats["skipped"][decode.STATUS_LINKTYPE] == 2          # the beacon and the protected frame
    assert cap.stats["decoded"] == len(packets) - 2
    msgs = " | ".join(w.message for w in cap.warnings)
    assert "90 of 92 records of" in msgs and "802.11 radiotap" in msgs and "NFLOG" in msgs, msgs
    assert "2 records of an unsupported link type hold no IP packet" in msgs
    assert "unsupported link type(s) [127]: 2 packets not decoded" in msgs
    flows = flow_summary(cap)
    assert ("udp", "192.168.1.10:1111", "192.0.2.9:2222", 18, 0) in flows
    assert [f for f in flows if not f[1].startswith("192.168.")] == \
        [(*f[:3], f[3] * len(LINKS), f[4]) for f in flow_summary(plain)]


@need_tshark
def test_rtp_over_radiotap_measures_as_plain(tmp_path):
    """The RTP statistics of a Wi-Fi monitor-mode capture equal those of the same packets on Ethernet."""
    from throttledetect.metrics.rtp import find_rtp_streams
    seqs = [s for s in range(120) if s not in (40, 41, 77)]          # three lost
    ips = [bytes(IP(src="192.168.1.20", dst="203.0.113.5") / UDP(sport=40000, dport=3478) / Raw(rtp(s)))
           for s in seqs]
    wifi = read_capture(write(tmp_path / "wifi.pcap", [dot11(ip, k, radiotap=True) for k, ip in enumerate(ips)], 127))
    eth = read_capture(write(tmp_path / "eth.pcap", [bytes(Ether(type=0x0800, **MAC)) + ip for ip in ips]))
    assert wifi.stats["fallback"]["link_decoded"] == len(ips)

    def streams(cap):
        return {s.key: s.stats(wireshark_compatible=True) for s in find_rtp_streams(cap, build_flows(cap))}
    a, b = streams(wifi), streams(eth)
    assert list(a) == list(b) and len(a) == 1
    (sa,), (sb,) = a.values(), b.values()
    assert (sa.packets, sa.lost, sa.max_jitter_ms, sa.max_delta_ms) == (sb.packets, sb.lost, sb.max_jitter_ms,
                                                                         sb.max_delta_ms)
    assert sa.packets == len(seqs) and sa.lost == 3


# --- no tshark, tshark failing, switched off, bounded -------------------------------------------


@pytest.fixture(scope="module")
def wifi_and_gre(tmp_path_factory):
    d = tmp_path_factory.mktemp("nots")
    wifi = write(d / "wifi.pcap", [dot11(inner(0, k), k, radiotap=True) for k in range(5)], 127)
    gre = write(d / "gre.pcap", [TUNNELS["GRE"](inner(0, k), k) for k in range(5)])
    return wifi, gre


def test_without_tshark_records_stay_skipped_with_a_note(monkeypatch, wifi_and_gre):
    monkeypatch.setattr(fallback, "find_tshark", lambda: None)
    wifi, gre = wifi_and_gre
    cap = read_capture(wifi)
    assert cap.stats["skipped"][decode.STATUS_LINKTYPE] == 5 and cap.stats["decoded"] == 0
    msgs = [w.message for w in cap.warnings]
    assert any("not decoded: 5 link type 127 (802.11 radiotap)" in m and "needs tshark" in m for m in msgs), msgs
    assert cap.stats["fallback"]["reason"] == "tshark not found"
    cap = read_capture(gre)
    assert np.all(cap.packets.proto == 47) and np.all(cap.packets.tunnel == 0)     # the outer flow, as before
    assert any("tunnels not opened" in w.message and "5 GRE" in w.message for w in cap.warnings)


def test_without_tshark_on_path(monkeypatch, tmp_path, wifi_and_gre):
    """pyshark's own discovery with an empty PATH (and a config.ini in the working directory that
    pyshark cannot read: it must not matter)."""
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.ini").write_text("[something]\nelse = 1\n")
    import pyshark.tshark.tshark as pt
    monkeypatch.setattr(pt.os.path, "exists", lambda p: False)       # not even /usr/bin/tshark
    assert fallback.find_tshark() is None
    cap = read_capture(wifi_and_gre[0])
    assert any("needs tshark" in w.message for w in cap.warnings)


def test_tshark_failing_is_a_note(monkeypatch, wifi_and_gre):
    monkeypatch.setattr(fallback, "find_tshark", lambda: "/bin/false")
    cap = read_capture(wifi_and_gre[0])
    assert cap.stats["skipped"][decode.STATUS_LINKTYPE] == 5
    assert any(w.message.startswith("Wireshark fallback failed (tshark exited with status 1)")
               for w in cap.warnings), cap.warnings

    def boom(*a):
        raise RuntimeError("tshark crashed\nbadly")
    monkeypatch.setattr(fallback, "find_tshark", lambda: "/usr/bin/tshark")
    monkeypatch.setattr(fallback, "_dissect", boom)
    cap = read_capture(wifi_and_gre[1])
    assert np.all(cap.packets.proto == 47)
    (msg,) = [w.message for w in cap.warnings if "fallback" in w.message]
    assert msg.startswith("Wireshark fallback failed (RuntimeError: tshark crashed badly)") and "5 GRE" in msg


@need_tshark
def test_a_preference_this_tshark_lacks_is_dropped(monkeypatch, wifi_and_gre):
    """Another tshark version may not know one of our preferences: it refuses to start, so the
    run is repeated without it."""
    monkeypatch.setattr(fallback, "PREFS", dict(fallback.PREFS, **{"nosuch.preference": "TRUE"}))
    cap = read_capture(wifi_and_gre[0])
    assert cap.stats["decoded"] == 5, cap.warnings


def test_switched_off(monkeypatch, wifi_and_gre):
    monkeypatch.setenv(fallback.ENV_OFF, "1")
    monkeypatch.setattr(fallback, "_dissect", lambda *a: pytest.fail("tshark run although switched off"))
    cap = read_capture(wifi_and_gre[0])
    assert cap.stats["fallback"] == {} and cap.stats["skipped"][decode.STATUS_LINKTYPE] == 5
    assert not any("fallback" in w.message for w in cap.warnings)


def test_plain_captures_never_start_tshark(monkeypatch, plain, tmp_path):
    monkeypatch.setattr(fallback, "_dissect", lambda *a: pytest.fail("tshark run for a plain capture"))
    frames = [bytes(Ether(**MAC) / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=4500, dport=4500) / Raw(b"\0\0\0\0ike"))]
    cap = read_capture(write(tmp_path / "ike.pcap", frames))       # IKE on the NAT-T port: not ESP
    assert cap.stats["fallback"] == {}


@need_tshark
def test_bounded_by_max_records(monkeypatch, wifi_and_gre):
    monkeypatch.setenv(fallback.ENV_MAX, "3")
    cap = read_capture(wifi_and_gre[0])
    assert cap.stats["decoded"] == 3 and cap.stats["skipped"][decode.STATUS_LINKTYPE] == 2
    assert any("only the first 3 records" in w.message for w in cap.warnings)


def test_esp_prefilter():
    """Only ESP whose first bytes after SPI and sequence read as an IP header is worth tshark's time."""
    ip4 = inner(0, 1)
    ip6 = inner(2, 1)
    rng = np.random.default_rng(3)
    payloads = [esp_null(ip4, 1), esp_null(ip6, 1)] + [rng.bytes(200) for _ in range(2000)]
    pre = np.zeros((len(payloads), 48), dtype=np.uint8)
    for i, p in enumerate(payloads):
        pre[i, :min(48, len(p))] = np.frombuffer(p[:48], dtype=np.uint8)
    ok = fallback._esp_null_plausible(pre, np.array([len(p) for p in payloads]), 8)
    assert ok[0] and ok[1] and ok[2:].sum() <= 1
