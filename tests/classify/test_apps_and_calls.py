"""Issue 12: apps named by their own framings and by context, media without calls, call grouping.

Synthetic captures are built packet by packet (Ethernet/IPv4/UDP) and go through the same reader,
flow table and classifier as real ones. Each test has a twin that differs in the one sign under
test, so that it fails if the sign is ignored.
"""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from tests.corpus import CORPUS, need_corpus
from throttledetect.classify import classify
from throttledetect.classify.calls import summarize_calls
from throttledetect.classify.labels import CALL_LABELS, is_call
from throttledetect.flows import build_flows
from throttledetect.read import read_capture
from throttledetect.warm import internet_checksum
from throttledetect.wire import apps
from throttledetect.wire.stun import parse_stun
from throttledetect.write import write_pcap

VCA = CORPUS / "vca-sense"
T0 = 1_700_000_000 * 10**9


# ---------------------------------------------------------------------------------------------
# Packet building


_csum = internet_checksum


def _ip(a: str) -> bytes:
    return bytes(int(x) for x in a.split("."))


def frame(src: str, dst: str, payload: bytes, proto: int = 17) -> bytes:
    (sip, sport), (dip, dport) = src.split(":"), dst.split(":")
    if proto == 17:
        l4 = struct.pack("!HHHH", int(sport), int(dport), 8 + len(payload), 0) + payload
    else:   # TCP with PSH/ACK, no options
        l4 = struct.pack("!HHIIBBHHH", int(sport), int(dport), 1, 1, 5 << 4, 0x18, 65535, 0, 0) + payload
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 1, 0, 64, proto, 0, _ip(sip), _ip(dip))
    hdr = hdr[:10] + struct.pack("!H", _csum(hdr)) + hdr[12:]
    return b"\x02\0\0\0\0\x01" + b"\x02\0\0\0\0\x02" + b"\x08\x00" + hdr + l4


def capture(tmp_path: Path, packets: list, name: str = "t.pcap"):
    """packets: (time s, src 'ip:port', dst 'ip:port', payload[, proto]) -> (cap, ft, cl)."""
    packets = sorted(packets, key=lambda p: p[0])
    path = tmp_path / name
    write_pcap(path, [frame(p[1], p[2], p[3], *(p[4:])) for p in packets], [T0 + int(p[0] * 1e9) for p in packets])
    cap = read_capture(str(path))
    ft = build_flows(cap, idle_timeout=None)
    return cap, ft, classify(cap, ft)


def flow_of(ft, a: str, b: str) -> int:
    for i in range(len(ft)):
        if {ft.endpoint(i, "a"), ft.endpoint(i, "b")} == {a, b}:
            return i
    raise KeyError((a, b))


def rtp(seq: int, ssrc: int = 0x1234, pt: int = 111, size: int = 160) -> bytes:
    return struct.pack("!BBHII", 0x80, pt, seq & 0xFFFF, seq * 960, ssrc) + bytes(size)


def rtcp_sr(ssrc: int = 0x1234) -> bytes:
    return struct.pack("!BBHI", 0x80, 200, 6, ssrc) + bytes(20)


def stun_binding(txid: int, attrs: bytes = b"", cls_response: bool = False) -> bytes:
    return struct.pack("!HHI", 0x0101 if cls_response else 0x0001, len(attrs), 0x2112A442) + \
        txid.to_bytes(12, "big") + attrs


def dtls_client_hello() -> bytes:
    body = b"\x01" + bytes(3) + bytes(8) + b"\xfe\xfd" + bytes(32) + b"\x00" + b"\x00" + b"\x00\x02\xc0\x2b\x01\x00"
    return b"\x16\xfe\xfd" + bytes(8) + struct.pack("!H", len(body)) + body


def tls_client_hello(sni: str) -> bytes:
    name = sni.encode()
    ext_sni = struct.pack("!HHHBH", 0, len(name) + 5, len(name) + 3, 0, len(name)) + name
    hello = b"\x03\x03" + bytes(32) + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00" + struct.pack("!H", len(ext_sni)) + ext_sni
    hs = b"\x01" + len(hello).to_bytes(3, "big") + hello
    return b"\x16\x03\x01" + struct.pack("!H", len(hs)) + hs


# ---------------------------------------------------------------------------------------------
# Wire signs


def test_imo_mumble_and_tencent_signs():
    assert apps.is_imo_packet(b"\x09\x02" + bytes(8))
    assert apps.is_imo_packet(b"\x00\x09\x03" + bytes(8))
    assert not apps.is_imo_packet(b"\x09\x02" + bytes(9))          # the length is part of the sign
    assert apps.mumble_ping_ident(bytes(4) + (77).to_bytes(8, "big")) == 77
    assert apps.mumble_ping_ident(b"\x01\x02\x03\x04" + (77).to_bytes(8, "big") + bytes(12)) == 77
    assert apps.mumble_ping_ident(b"\x00\x00\x00\x01" + bytes(8)) is None   # not a ping request
    media = b"\x51\x00\x11\x01\x15" + b"\x02\x00\x00\x06\xea\x46\x0b\xee" + bytes(40)
    assert apps.tencent_media_id(media) == b"\x02\x00\x00\x06\xea\x46\x0b\xee"
    wrapped = b"\x08" + b"\x02\x00\x00\x06\xea\x46\x0b\xf8" + rtcp_sr()
    assert apps.tencent_media_id(wrapped) == b"\x02\x00\x00\x06\xea\x46\x0b\xf8"
    assert apps.tencent_media_id(b"\x08" + b"\x02\x00\x00\x06\xea\x46\x0b\xf8" + bytes(28)) is None   # no RTCP inside
    assert apps.tencent_media_id(b"\x51\x00\x11\x01\x15" + bytes(48)) is None


@pytest.mark.parametrize("attr_type, value, app", [
    (0x8022, b"JVB ice4j", "jitsi"),
    (0x0014, b"meet.jit.si", "jitsi"),
    (0x0014, b"turn.bigbluebutton.org", "bigbluebutton"),
    (0x8022, b"coturn-4.6", None),
])
def test_stun_realm_and_software_name_apps(attr_type, value, app):
    pad = bytes(-len(value) % 4)
    attr = struct.pack("!HH", attr_type, len(value)) + value + pad
    msg = parse_stun(stun_binding(1, attr))
    assert msg is not None
    assert apps.stun_app_hint(msg) == app


def test_new_call_labels_are_calls():
    for label in ("imo_call", "mumble", "tencent_meeting", "wechat_call", "feishu_call", "jitsi",
                  "bigbluebutton", "messenger_call", "instagram_call", "unknown_call"):
        assert label in CALL_LABELS and is_call(label)


# ---------------------------------------------------------------------------------------------
# Rules on synthetic captures

HOST = "192.168.1.10"


def test_mumble_ping_answered_with_its_identifier(tmp_path):
    c, s = f"{HOST}:50085", "198.51.100.20:64738"
    ident = (0x1122334455667788).to_bytes(8, "big")
    _, ft, cl = capture(tmp_path, [(0.0, c, s, bytes(4) + ident), (0.05, s, c, b"\x00\x01\x05\x00" + ident + bytes(12))])
    assert cl.labels[flow_of(ft, c, s)] == "mumble"
    # The same ping answered with another identifier is not Mumble.
    other = (0x99).to_bytes(8, "big")
    _, ft, cl = capture(tmp_path, [(0.0, c, s, bytes(4) + ident), (0.05, s, c, b"\x00\x01\x05\x00" + other + bytes(12))],
                        "u.pcap")
    assert cl.labels[flow_of(ft, c, s)] != "mumble"


def test_imo_call_packets(tmp_path):
    c, s = f"{HOST}:49207", "198.51.100.30:57604"
    pkts = [(0.0, c, s, b"\x09\x02" + bytes(8))] + [(0.1 * k, s, c, bytes(300)) for k in range(1, 6)]
    _, ft, cl = capture(tmp_path, pkts)
    assert cl.labels[flow_of(ft, c, s)] == "imo_call"
    _, ft, cl = capture(tmp_path, [(0.0, c, s, b"\x09\x03" + bytes(8))] + pkts[1:], "u.pcap")
    assert cl.labels[flow_of(ft, c, s)] != "imo_call"


def test_quic_with_rtcp_on_one_tuple_is_snapchat(tmp_path):
    c, s = f"{HOST}:42083", "198.51.100.40:443"
    q046 = b"\xc3Q046" + b"\x50" + bytes(8) + bytes(60)
    pkts = [(0.0, c, s, q046), (0.05, s, c, q046)] + [(0.5 + k, c, s, rtcp_sr()) for k in range(3)]
    _, ft, cl = capture(tmp_path, pkts)
    assert cl.labels[flow_of(ft, c, s)] == "snapchat_call"
    _, ft, cl = capture(tmp_path, pkts[:2], "u.pcap")          # QUIC alone is QUIC
    assert cl.labels[flow_of(ft, c, s)] == "quic"


def _stun_dtls(c, s, t0=1.0):
    return [(t0, c, s, stun_binding(1)), (t0 + 0.01, s, c, stun_binding(1, cls_response=True)),
            (t0 + 0.02, c, s, dtls_client_hello()), (t0 + 0.03, s, c, dtls_client_hello())]


def test_cloud_gaming_stream_named_by_sni_is_not_a_call(tmp_path):
    c, s = f"{HOST}:52441", "198.51.100.50:18452"
    tls = (0.0, f"{HOST}:57490", "198.51.100.50:49100", tls_client_hello("x.cloudmatchbeta.nvidiagrid.net"), 6)
    _, ft, cl = capture(tmp_path, [tls] + _stun_dtls(c, s))
    i = flow_of(ft, c, s)
    assert not is_call(cl.labels[i]) and "not a call" in cl.reasons[i]
    # Without the gaming service's name the same flow is WebRTC.
    _, ft, cl = capture(tmp_path, _stun_dtls(c, s), "u.pcap")
    assert cl.labels[flow_of(ft, c, s)] == "webrtc"


def test_generic_media_named_from_the_hosts_context(tmp_path):
    c, s = f"{HOST}:40000", "198.51.100.60:10000"
    media = [(1.0 + 0.02 * k, c if k % 2 else s, s if k % 2 else c, rtp(k // 2 + (1000 if k % 2 else 0),
                                                                       0xAA if k % 2 else 0xBB)) for k in range(60)]
    tls = (0.0, f"{HOST}:50000", "198.51.100.61:443", tls_client_hello("meet.jit.si"), 6)
    _, ft, cl = capture(tmp_path, [tls] + media)
    i = flow_of(ft, c, s)
    assert cl.labels[i] == "jitsi", cl.reasons[i]
    _, ft, cl = capture(tmp_path, media, "u.pcap")
    assert cl.labels[flow_of(ft, c, s)] == "rtp"


# ---------------------------------------------------------------------------------------------
# Call grouping


def _audio(c, s, t0, n, ssrc_up=1, ssrc_down=2, down=True):
    out = []
    for k in range(n):
        out.append((t0 + 0.02 * k, c, s, rtp(k, ssrc_up)))
        if down:
            out.append((t0 + 0.02 * k + 0.005, s, c, rtp(k, ssrc_down)))
    return out


def test_flows_of_one_call_share_a_call_id(tmp_path):
    sock = f"{HOST}:40000"
    relay, peer = "198.51.100.70:3478", "203.0.113.9:50000"
    other_host = "192.168.1.11:40000"
    pkts = [(0.0, sock, relay, stun_binding(1)), (0.01, relay, sock, stun_binding(1, cls_response=True))]
    pkts += _audio(sock, peer, 0.5, 100)                       # peer leg from the same socket
    pkts += _audio(f"{HOST}:40001", peer.replace("50000", "50001"), 0.5, 20)   # RTCP-port-like second leg
    pkts += _audio(other_host, "198.51.100.80:5004", 0.5, 100)  # another host's call at the same time
    pkts += [(0.2, f"{HOST}:53000", "192.0.2.53:53", b"\x12\x34" + bytes(10))]
    _, ft, cl = capture(tmp_path, pkts)
    a, b, c = flow_of(ft, sock, relay), flow_of(ft, sock, peer), flow_of(ft, f"{HOST}:40001", peer.replace("50000", "50001"))
    d = flow_of(ft, other_host, "198.51.100.80:5004")
    dns = flow_of(ft, f"{HOST}:53000", "192.0.2.53:53")
    assert cl.call_of[a] == cl.call_of[b] == cl.call_of[c] >= 0
    assert cl.call_of[d] >= 0 and cl.call_of[d] != cl.call_of[a]
    assert cl.call_of[dns] == -1
    assert cl.call_of.dtype == np.int64 and len(cl.call_of) == len(ft)
    calls = {s.call: s for s in cl.calls()}
    assert set(calls) == {int(cl.call_of[a]), int(cl.call_of[d])}
    mine = calls[int(cl.call_of[a])]
    assert sorted(mine.flows) == sorted([a, b, c]) and mine.two_way_media and mine.host == HOST
    assert mine.start_ns == int(ft.first_ns[[a, b, c]].min()) and mine.end_ns == int(ft.last_ns[[a, b, c]].max())


def test_one_way_media_is_not_two_way(tmp_path):
    c, s = f"{HOST}:40000", "198.51.100.90:5004"
    _, ft, cl = capture(tmp_path, _audio(c, s, 0.0, 50, down=False))
    (summary,) = summarize_calls(ft, cl.labels, cl.call_of, cl.evidence)
    assert summary.sent_packets == 50 and summary.received_packets == 0 and not summary.two_way_media


def test_calls_far_apart_in_time_are_two_calls(tmp_path):
    c1, c2, s = f"{HOST}:40000", f"{HOST}:40010", "198.51.100.95:5004"
    _, ft, cl = capture(tmp_path, _audio(c1, s, 0.0, 50) + _audio(c2, s, 200.0, 50))
    assert cl.call_of[flow_of(ft, c1, s)] != cl.call_of[flow_of(ft, c2, s)]


# ---------------------------------------------------------------------------------------------
# Real Tencent Meeting calls


def _vca_files():
    return sorted(p for p in VCA.glob("*.pcapng.xz")) if VCA.is_dir() else []


@need_corpus
def test_tencent_meeting_media_flows_are_calls():
    """Every UDP flow of 500 packets or more in the VCA-sense captures is call media or its
    RTCP/control leg to the relay, except Tencent's UDP/443 signalling (about 1 packet/s)."""
    found, total, missed = 0, 0, []
    for path in _vca_files():
        cap = read_capture(str(path))
        ft = build_flows(cap)
        cl = classify(cap, ft)
        n = ft.packets_ab + ft.packets_ba
        for i in np.flatnonzero((ft.proto == 17) & (n >= 500)):
            rate = n[i] / max((ft.last_ns[i] - ft.first_ns[i]) / 1e9, 1e-3)
            if 443 in (int(ft.a_port[i]), int(ft.b_port[i])) and rate < 3:
                continue
            total += 1
            if is_call(cl.labels[i]) and cl.call_of[i] >= 0:
                found += 1
            else:
                missed.append(f"{path.name}: {ft.endpoint(i, 'a')} {ft.endpoint(i, 'b')} {cl.labels[i]}")
    assert total >= 20
    assert found / total >= 0.9, "\n".join(missed)


def test_committed_model_reports_leave_one_app_out():
    from throttledetect.classify.media_model import load_media_model

    loao = load_media_model().trained["cv"]["leave_one_app_out"]
    assert loao["method"].startswith("leave-one-app-out")
    per_app = loao["per_app"]
    assert loao["apps"] == len(per_app) >= 10
    media = {a: r for a, r in per_app.items() if "media_flows" in r}
    assert loao["worst_app"] in media
    assert loao["worst_app_recall"] == min(r["recall"] for r in media.values())
    dep = loao["at_deployed_threshold"]
    assert dep["tp"] == sum(r["found_at_deployed_threshold"] for r in media.values())
    assert dep["tp"] + dep["fn"] == sum(r["media_flows"] for r in media.values())
    assert dep["fp"] == sum(r.get("false_calls_at_deployed_threshold", 0) for r in per_app.values())


def _invite_with_sdp(addr: str, port: int) -> bytes:
    body = (f"v=0\r\no=alice 1 1 IN IP4 {addr}\r\ns=-\r\nc=IN IP4 {addr}\r\nt=0 0\r\n"
            f"m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")
    head = ("INVITE sip:bob@biloxi.example.com SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.5;branch=z9hG4bK1\r\n"
            "From: <sip:alice@atlanta.example.com>;tag=1\r\nTo: <sip:bob@biloxi.example.com>\r\n"
            "Call-ID: nat-1@10.0.0.5\r\nCSeq: 1 INVITE\r\nContent-Type: application/sdp\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    return (head + body).encode()


@pytest.mark.parametrize("sdp_addr, named", [("10.0.0.5", True), ("192.0.2.77", False)])
def test_media_on_the_port_sdp_gave_behind_a_nat(tmp_path, sdp_addr, named):
    """A capture beyond a NAT (at the router's outside, a server, a mirror port): the SDP names the
    caller's private address, the packets carry the NAT's public one with the port kept. The media
    (encrypted here: no RTP header to read) is the stream SDP negotiated, by its port. An SDP
    address that is routable is what the packets would show: another address on the same port is
    then not that stream."""
    nat, proxy, far = "203.0.113.5", "198.51.100.40", "198.51.100.41"
    rng = np.random.default_rng(7)
    pkts = [(0.0, f"{nat}:5060", f"{proxy}:5060", _invite_with_sdp(sdp_addr, 40000))]
    pkts += [(0.5 + 0.02 * k, f"{nat}:40000", f"{far}:30000", bytes([0x01]) + rng.bytes(171)) for k in range(40)]
    _, ft, cl = capture(tmp_path, pkts)
    i = flow_of(ft, f"{nat}:40000", f"{far}:30000")
    if named:
        assert cl.labels[i] == "rtp" and "behind a NAT" in cl.reasons[i], cl.reasons[i]
    else:
        assert "SDP" not in cl.reasons[i], cl.reasons[i]
