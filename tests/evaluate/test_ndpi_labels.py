"""Tests of the nDPI `.out` label parser, on lines copied verbatim from the corpus label files."""
from __future__ import annotations

import pytest

from tests.corpus import HAVE_CORPUS, NDPI_LABEL_DIR, need_corpus
from throttledetect.evaluate.ndpi_labels import (
    NdpiParseError,
    flow_key,
    ndpi_ip_text,
    parse_flow_line,
    parse_ndpi_out,
    parse_ndpi_report,
)

# stun_wa_call.pcapng.out, flow 1: STUN master + app, Mapped/Relayed addresses, bidirectional.
WA_STUN = (
    "\t1\tUDP 192.168.12.156:46652 <-> 93.57.123.227:3478 [proto: 78.45/STUN.WhatsAppCall][IP: 0/Unknown]"
    "[ClearText][Confidence: DPI][FPC: 78.45/STUN.WhatsAppCall, Confidence: DPI][DPI packets: 7][cat: VoIP/10]"
    "[171 pkts/28371 bytes <-> 206 pkts/29803 bytes][Goodput ratio: 75/71][31.78 sec][bytes ratio: -0.025 (Mixed)]"
    "[IAT c2s/s2c min/avg/max/stddev: 0/0 178/151 2505/2463 255/222][Pkt Len c2s/s2c min/avg/max/stddev: "
    "62/62 166/145 434/446 100/85][Mapped IP/Port: 93.35.171.3:61494][Relayed IP/Port: 93.57.123.227:3478]"
    "[Plen Bins: 14,41,11,8,2,2,3,2,5,4,1,1,2,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0]"
)
# stun_wa_call.pcapng.out, flow 8: unidirectional ('->'), label from nDPI's cache.
WA_UNIDIR = (
    "\t8\tUDP 192.168.12.156:49526 -> 10.82.40.241:40436 [proto: 78.45/STUN.WhatsAppCall][IP: 0/Unknown]"
    "[ClearText][Confidence: DPI (cache)][FPC: 78.45/STUN.WhatsAppCall, Confidence: DPI][DPI packets: 7]"
    "[cat: VoIP/10][20 pkts/1720 bytes -> 0 pkts/0 bytes][Goodput ratio: 51/0][10.68 sec][bytes ratio: 1.000 (Upload)]"
    "[IAT c2s/s2c min/avg/max/stddev: 548/0 562/0 602/0 20/0][Pkt Len c2s/s2c min/avg/max/stddev: 86/0 86/0 86/0 0/0]"
    "[Risk: ** Known Proto on Non Std Port **** Unidirectional Traffic **][Risk Score: 60]"
    "[Risk Info: No server to client traffic][Plen Bins: 0,100,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,"
    "0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0]"
)
# zoom.pcap.out, flow 5: inside a GTP tunnel, on a VLAN, single protocol id.
ZOOM_GTP = (
    "\t5\tUDP 10.140.117.35:45634 <-> 193.122.35.237:8801 [VLAN: 113][proto: GTP:189/Zoom][IP: 0/Unknown]"
    "[Encrypted][Confidence: DPI][FPC: 0/Unknown, Confidence: Unknown][DPI packets: 8][cat: Video/26]"
    "[34 pkts/5678 bytes <-> 47 pkts/7940 bytes][Goodput ratio: 48/49][154.35 sec][bytes ratio: -0.166 (Mixed)]"
    "[IAT c2s/s2c min/avg/max/stddev: 39/2 1919/1250 3741/3741 1619/1357][Pkt Len c2s/s2c min/avg/max/stddev: "
    "167/167 167/169 167/174 0/3][Plen Bins: 0,0,100,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,"
    "0,0,0,0,0,0,0,0,0,0,0,0,0,0]"
)
# stun.pcap.out, flow 1: Peer IP/Port and a Hostname/SNI (the TURN realm).
FB_STUN_PEER = (
    "\t1\tUDP 192.168.12.169:38123 <-> 31.13.86.54:40003 [proto: 78.268/STUN.FacebookVoip][IP: 119/Facebook]"
    "[ClearText][Confidence: DPI][FPC: 78/STUN, Confidence: DPI][DPI packets: 7][cat: VoIP/10]"
    "[40 pkts/6134 bytes <-> 35 pkts/4420 bytes][Goodput ratio: 73/67][10.09 sec][Hostname/SNI: turner.facebook]"
    "[bytes ratio: 0.162 (Mixed)][IAT c2s/s2c min/avg/max/stddev: 0/0 260/331 6004/5997 1040/1126]"
    "[Pkt Len c2s/s2c min/avg/max/stddev: 70/68 153/126 190/174 31/39][Mapped IP/Port: 93.47.226.1:11162]"
    "[Peer IP/Port: 192.168.0.102:44459][Relayed IP/Port: 31.13.86.54:53789]"
)
# dns_fragmented.pcap.out, flow 3: IPv6 endpoints, a bare "[0.0.0.0]" field (the DNS answer).
DNS_V6 = (
    "\t3\tUDP [2001:470:1f0b:16b0:20c:29ff:fe7c:a4cb]:55729 <-> [2001:470:765b::a25:53]:53 [proto: 5/DNS]"
    "[IP: 0/Unknown][ClearText][Confidence: DPI][FPC: 5/DNS, Confidence: DPI][DPI packets: 3][cat: Network/14]"
    "[2 pkts/228 bytes <-> 1 pkts/1494 bytes][Goodput ratio: 45/95][5.01 sec][Hostname/SNI: weberlab.de][0.0.0.0]"
    "[Risk: ** Large DNS Packet (512+ bytes) **** Fragmented DNS Message **][Risk Score: 100]"
    "[Risk Info: 1424 Bytes DNS Packet][PLAIN TEXT (weberlab)]"
)
# fuzz-2006-09-29-28586.pcap.out, flow 1: an IP protocol nDPI prints as a number; no ports.
NUMERIC_L4 = (
    "\t1\t115 172.20.3.13:0 -> 172.20.3.5:0 [proto: 0/Unknown][IP: 0/Unknown][ClearText][Confidence: Unknown]"
    "[FPC: 0/Unknown, Confidence: Unknown][DPI packets: 1][1 pkts/541 bytes -> 0 pkts/0 bytes][Goodput ratio: 0/0]"
    "[< 1 sec][Risk: ** Unidirectional Traffic **][Risk Score: 10][Risk Info: No server to client traffic]"
    "[PLAIN TEXT (HTTP/1.1 200 OK)]"
)
# fuzz-2021-10-13.pcap.out, flow 1: nDPI's ':0:' -> '::' patch printed an invalid IPv6 address.
PATCHED_V6 = (
    "\t1\tTCP [3400:3a30:3035:2f75:706c:6f32:643f:6c3d]:44288 -> [302e::3d00::8001]:0 [proto: 0/Unknown]"
    "[IP: 0/Unknown][ClearText][Confidence: Unknown][FPC: 0/Unknown, Confidence: Unknown][DPI packets: 1]"
    "[1 pkts/197 bytes -> 0 pkts/0 bytes][Goodput ratio: 75/0][< 1 sec]"
)
# sip.pcap.out, "Undetected flows:" section, flow 1 (no [cat: ...] field).
SIP_UNDETECTED = (
    "\t1\tUDP 192.168.1.2:30001 -> 212.242.33.36:40393 [proto: 0/Unknown][IP: 0/Unknown][ClearText]"
    "[Confidence: Unknown][FPC: 0/Unknown, Confidence: Unknown][DPI packets: 1][1 pkts/146 bytes -> 0 pkts/0 bytes]"
    "[Goodput ratio: 71/0][< 1 sec][Risk: ** Susp Entropy **** Unidirectional Traffic **][Risk Score: 20]"
    "[Risk Info: No server to client traffic / Entropy: 5.220 (Executable?)][PLAIN TEXT (11894297)]"
)
# JA3 host statistics lines also start with a TAB but are not flows (stun.pcap.out).
JA3_HEADER = "\t\t IP Address                  \t # JA3C     "
JA3_ROW = "\t1\t 192.168.12.169           \t 1      "


def test_stun_flow_fields():
    f = parse_flow_line(WA_STUN)
    assert (f.index, f.l4, f.l4_proto) == (1, "UDP", 17)
    assert (f.a_ip, f.a_port, f.b_ip, f.b_port) == ("192.168.12.156", 46652, "93.57.123.227", 3478)
    assert f.bidirectional and not f.undetected
    assert (f.tunnel, f.master, f.app, f.proto_ids, f.label) == (None, "STUN", "WhatsAppCall", (78, 45), "STUN.WhatsAppCall")
    assert (f.confidence, f.category, f.ip_match) == ("DPI", "VoIP", "0/Unknown")
    assert (f.c2s_packets, f.c2s_bytes, f.s2c_packets, f.s2c_bytes) == (171, 28371, 206, 29803)
    assert (f.packets, f.bytes) == (377, 58174)
    assert f.extras["Mapped IP/Port"] == "93.35.171.3:61494"
    assert f.extras["Relayed IP/Port"] == "93.57.123.227:3478"
    assert f.extras["DPI packets"] == "7"
    assert f.extras["FPC"] == "78.45/STUN.WhatsAppCall, Confidence: DPI"
    assert "ClearText" in f.extras["tags"].split("|")


def test_unidirectional_flow_and_cache_confidence():
    f = parse_flow_line(WA_UNIDIR)
    assert not f.bidirectional
    assert f.confidence == "DPI (cache)"
    assert (f.c2s_packets, f.c2s_bytes, f.s2c_packets, f.s2c_bytes) == (20, 1720, 0, 0)
    assert f.extras["Risk Info"] == "No server to client traffic"


def test_tunnel_prefix_and_single_protocol_id():
    f = parse_flow_line(ZOOM_GTP)
    assert (f.tunnel, f.master, f.app, f.proto_ids) == ("GTP", None, "Zoom", (189,))
    assert f.label == "Zoom"
    assert f.category == "Video"
    assert f.extras["VLAN"] == "113"
    assert (f.c2s_packets, f.s2c_packets) == (34, 47)


def test_peer_address_and_hostname():
    f = parse_flow_line(FB_STUN_PEER)
    assert f.app == "FacebookVoip" and f.ip_match == "119/Facebook"
    assert f.hostname == "turner.facebook"
    assert f.extras["Peer IP/Port"] == "192.168.0.102:44459"


def test_ipv6_endpoints_and_bare_fields():
    f = parse_flow_line(DNS_V6)
    assert f.a_ip == "2001:470:1f0b:16b0:20c:29ff:fe7c:a4cb" and f.a_port == 55729
    assert f.b_ip == "2001:470:765b::a25:53" and f.b_port == 53
    assert f.hostname == "weberlab.de"
    # The IPv6-looking bare field must not be taken for a "key: value" pair.
    assert f.extras["tags"].split("|") == ["ClearText", "5.01 sec", "0.0.0.0"]
    assert f.extras["PLAIN TEXT"] == "(weberlab)"
    assert f.extras["Risk Score"] == "100"


def test_numeric_transport():
    f = parse_flow_line(NUMERIC_L4)
    assert f.l4 == 115 and f.l4_proto == 115
    assert (f.a_port, f.b_port) == (0, 0)
    assert (f.app, f.proto_ids, f.confidence, f.category) == ("Unknown", (0,), "Unknown", None)
    # A ": " inside the PLAIN TEXT must not be split as a key.
    assert f.extras["PLAIN TEXT"] == "(HTTP/1.1 200 OK)"


def test_invalid_patched_ipv6_is_kept_as_printed():
    f = parse_flow_line(PATCHED_V6)
    assert f.b_ip == "302e::3d00::8001"
    assert f.key == (6, ("302e::3d00::8001", 0), ("3400:3a30:3035:2f75:706c:6f32:643f:6c3d", 44288))


def test_ndpi_ip_text_reproduces_ndpi_patch():
    # inet_ntop gives 302e:0:3d00::8001 for the address of PATCHED_V6; nDPI then rewrites ':0:'.
    assert ndpi_ip_text("302e:0:3d00:0:0:0:0:8001") == "302e::3d00::8001"
    assert ndpi_ip_text("302e:0:3d00:0:8001::") == "302e::3d00::8001::"
    assert ndpi_ip_text("2001:db8:0:1::1") == "2001:db8::1::1"
    assert ndpi_ip_text("2001:470:765b::a25:53") == "2001:470:765b::a25:53"
    assert ndpi_ip_text("192.168.0.1") == "192.168.0.1"


def test_undetected_flag_and_missing_category():
    f = parse_flow_line(SIP_UNDETECTED, undetected=True)
    assert f.undetected and f.category is None and f.app == "Unknown"
    assert f.extras["Risk Info"] == "No server to client traffic / Entropy: 5.220 (Executable?)"


def test_key_is_direction_free_and_counts_follow_endpoints():
    f = parse_flow_line(WA_STUN)
    assert f.key == flow_key(17, "93.57.123.227", 3478, "192.168.12.156", 46652)
    assert f.key == flow_key(17, "192.168.12.156", 46652, "93.57.123.227", 3478)
    assert f.key != flow_key(6, "192.168.12.156", 46652, "93.57.123.227", 3478)
    assert f.counts_from("93.57.123.227", 3478) == (206, 29803)
    assert f.counts_from("192.168.12.156", 46652) == (171, 28371)
    with pytest.raises(KeyError):
        f.counts_from("192.168.12.156", 1)


def test_non_flow_lines_are_ignored():
    assert parse_flow_line(JA3_HEADER) is None
    assert parse_flow_line(JA3_ROW) is None
    assert parse_flow_line("WhatsAppCall\t590\t133579\t12") is None


def test_flow_line_without_counts_is_an_error():
    cut = WA_STUN[: WA_STUN.index("[171 pkts")]
    with pytest.raises(NdpiParseError):
        parse_flow_line(cut)


def test_whole_file_sections(tmp_path):
    # A miniature .out: header, summaries, JA3 block, flows, then the Undetected section.
    text = "\n".join([
        "Guessed flow protos:\t2",
        "DPI Packets (UDP):\t76\t(6.33 pkts/flow)",
        "",
        "WhatsAppCall\t397\t59894\t2",
        "Unknown\t1\t146\t1",
        "",
        "Acceptable                     591 133689        13           ",
        "",
        "JA3 Host Stats: ",
        JA3_HEADER,
        JA3_ROW,
        "",
        "",
        WA_STUN,
        WA_UNIDIR,
        "",
        "",
        "Undetected flows:",
        SIP_UNDETECTED,
        "",
    ])
    path = tmp_path / "mini.pcap.out"
    path.write_text(text)
    report = parse_ndpi_report(path)
    assert report.guessed_flow_protos == 2
    assert report.protocol_totals == {"WhatsAppCall": (397, 59894, 2), "Unknown": (1, 146, 1)}
    flows = parse_ndpi_out(path)
    assert [(f.index, f.undetected) for f in flows] == [(1, False), (8, False), (1, True)]


def test_empty_file(tmp_path):
    path = tmp_path / "empty.pcap.out"
    path.write_bytes(b"")
    assert parse_ndpi_out(path) == []


_LABELS = sorted(NDPI_LABEL_DIR.glob("*.out")) if HAVE_CORPUS else []


@need_corpus
@pytest.mark.parametrize("label", _LABELS, ids=[p.name for p in _LABELS])
def test_corpus_label_file_parses(label):
    report = parse_ndpi_report(label)
    if label.stat().st_size == 0:
        assert report.flows == ()
        return
    assert len(report.flows) > 0
    # The per-protocol summary counts every flow, packet and byte once: if a flow line had been
    # skipped or misread, these totals would not match.
    totals = report.protocol_totals.values()
    assert sum(t[2] for t in totals) == len(report.flows)
    assert sum(t[0] for t in totals) == sum(f.packets for f in report.flows)
    assert sum(t[1] for t in totals) == sum(f.bytes for f in report.flows)
    # One line per flow: nDPI never prints the same endpoint pair twice in these files.
    assert len({f.key for f in report.flows}) == len(report.flows)


@need_corpus
def test_corpus_has_labels():
    # Guards the parametrised test above against silently running on nothing.
    assert len(_LABELS) == 69
