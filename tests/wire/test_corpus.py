"""The wire parsers over real payloads: nDPI's test captures and the external call traces,
read in place with the project's reader. Skipped, with the reason shown, without the corpus."""
from __future__ import annotations

import collections
from functools import lru_cache

import numpy as np
import pytest

from tests.corpus import EXTERNAL_DIR, NDPI_PCAP_DIR, external_pcaps, malformed_pcaps, need_corpus, ndpi_pcaps
from throttledetect.read import read_capture
from throttledetect.read.table import halves_to_address
from throttledetect.wire import apps, dns, dtls, quic, rtp, sip, stun, tls

pytestmark = need_corpus

TCP, UDP = 6, 17


@lru_cache(maxsize=8)
def _payloads(path) -> tuple[tuple[int, str, int, str, int, bytes], ...]:
    """(proto, src, sport, dst, dport, payload) of every packet that has a transport payload."""
    cap = read_capture(path)
    p = cap.packets
    rows = []
    for i in np.flatnonzero(p.payload_len > 0):
        rows.append((int(p.proto[i]), str(halves_to_address(p.src_hi[i], p.src_lo[i])), int(p.sport[i]),
                     str(halves_to_address(p.dst_hi[i], p.dst_lo[i])), int(p.dport[i]), cap.payload(i)))
    return tuple(rows)


def payloads(name: str, directory=NDPI_PCAP_DIR, proto: int | None = None):
    return [row for row in _payloads(directory / name) if proto is None or row[0] == proto]


def _parse_everything(proto: int, data: bytes) -> None:
    tcp = proto == TCP
    msg = stun.parse_stun(data, tcp=tcp)
    if msg is not None:
        msg.xor_mapped_address, msg.xor_relayed_address, msg.xor_peer_addresses, msg.mapped_address, msg.realm
        apps.stun_app_hint(msg)
    stun.parse_channel_data(data, tcp=tcp)
    stun.parse_ms_turn(data)
    rtp.parse_rtp(data, tcp=tcp)
    rtp.parse_rtcp(data, tcp=tcp)
    rtp.classify_rtp_or_rtcp(data)
    dtls.parse_dtls(data)
    message = sip.parse_sip(data)
    if message is not None and message.sdp is not None:
        message.sdp.endpoints()
    tls.parse_client_hello(data)
    tls.parse_server_hello(data)
    dns.parse_dns(data, tcp=tcp)
    quic.parse_quic_long_header(data)
    quic.gquic_version(data)
    apps.parse_zoom_media(data)
    apps.parse_zoom_p2p_hello(data)
    apps.parse_telegram_reflector(data)
    apps.parse_discord(data)
    apps.parse_whatsapp_preamble(data)
    apps.is_viber_packet(data, tcp=tcp)
    apps.is_line_call_packet(data)


@pytest.mark.parametrize("path", ndpi_pcaps() + malformed_pcaps() + external_pcaps(), ids=lambda p: p.name)
def test_every_parser_survives_every_real_payload(path):
    cap = read_capture(path)
    p = cap.packets
    for i in np.flatnonzero(p.payload_len > 0):
        _parse_everything(int(p.proto[i]), cap.payload(i))
    # The vectorised RTP reader agrees with the scalar parser on the reader's prefix column.
    fields = rtp.rtp_fields(p.prefix, 0, p.payload_len)
    width = p.prefix.shape[1]
    for i in np.flatnonzero(p.payload_len > 0):
        data = cap.payload(i)
        header = rtp.parse_rtp(data)
        if data[0] & 0x10 and 12 + 4 * (data[0] & 0x0F) + 4 > width:
            continue  # extension length beyond the prefix: not checkable from the prefix
        assert bool(fields["valid"][i]) == (header is not None), (path.name, i)
        if header is not None:
            assert (fields["seq"][i], fields["ts"][i], fields["ssrc"][i], fields["pt"][i]) == (
                header.seq, header.ts, header.ssrc, header.pt)


def test_whatsapp_call_stun_types_and_attributes():
    messages = [stun.parse_stun(row[5]) for row in payloads("stun_wa_call.pcapng", proto=UDP)]
    messages = [m for m in messages if m is not None]
    types = {m.msg_type for m in messages}
    assert {0x0800, 0x0801, 0x0802} <= types
    assert any(m.has_attribute(0x4000) for m in messages)
    assert collections.Counter(apps.stun_app_hint(m) for m in messages)["whatsapp"] >= 100
    # The relay's Allocate success names the relayed and mapped addresses.
    allocate = next(m for m in messages if m.msg_type == 0x0103)
    assert allocate.is_turn and allocate.xor_mapped_address is not None
    relayed = next(m.xor_relayed_address for m in messages if m.xor_relayed_address is not None)
    assert 0 < relayed.port < 65536


def test_signal_realm():
    realms = {m.realm for m in (stun.parse_stun(r[5]) for r in payloads("stun_signal.pcapng", proto=UDP)) if m and m.realm}
    assert any("signal" in realm for realm in realms)


def test_telegram_realm():
    hints = {apps.stun_app_hint(m) for m in (stun.parse_stun(r[5]) for r in payloads("telegram_videocall.pcapng")) if m}
    assert "telegram" in hints


def test_stun_over_tcp_with_rfc4571_framing_and_channel_data():
    tcp = [stun.parse_stun(r[5], tcp=True) for r in payloads("stun.pcap", proto=TCP)]
    assert any(m is not None and m.offset == 2 for m in tcp)         # ICE-TCP framing
    assert any(m is not None and m.offset == 0 and m.is_turn for m in tcp)   # TURN over TCP
    channels = [stun.parse_channel_data(r[5]) for r in payloads("stun.pcap", proto=UDP)]
    assert sum(c is not None for c in channels) >= 10


def test_classic_stun():
    messages = [m for m in (stun.parse_stun(r[5]) for r in payloads("stun_classic.pcap")) if m]
    assert messages and not any(m.cookie_ok for m in messages)
    assert any(m.mapped_address is not None for m in messages)


def test_teams_multiplexed_turn_and_attributes():
    rows = payloads("teams.pcap", proto=UDP)
    frames = [f for f in (stun.parse_ms_turn(r[5]) for r in rows) if f]
    assert frames and all(stun.parse_stun(f.payload) is not None for f in frames)
    hints = collections.Counter(apps.stun_app_hint(m) for m in (stun.parse_stun(r[5]) for r in rows) if m)
    assert hints["teams"] >= 10


def test_teams_tls_sni():
    names = {h.sni for h in (tls.parse_client_hello(r[5]) for r in payloads("teams.pcap", proto=TCP)) if h and h.sni}
    assert any(name.endswith("teams.microsoft.com") for name in names)


def test_sip_invite_announces_the_rtp_flow():
    """sip.pcap: the INVITE's SDP and the 183's SDP name the two ends of the RTP flow."""
    rows = payloads("sip.pcap", proto=UDP)
    messages = [m for m in (sip.parse_sip(r[5]) for r in rows) if m]
    invite = next(m for m in messages if m.method == "INVITE" and m.sdp)
    answer = next(m for m in messages if m.status_code == 183 and m.sdp)
    assert invite.sdp.endpoints() == (("audio", "192.168.1.2", 30000),)
    assert invite.sdp.media[0].rtpmap(0).encoding.upper() == "PCMU"
    (_, caller_ip, caller_port), = invite.sdp.endpoints()
    (_, callee_ip, callee_port), = answer.sdp.endpoints()
    rtp_flows = {(r[1], r[2], r[3], r[4]) for r in rows if rtp.parse_rtp(r[5]) is not None}
    assert (caller_ip, caller_port, callee_ip, callee_port) in rtp_flows


def test_external_sip_call_rtp_matches_sdp():
    rows = payloads("sip_rtp.pcap", directory=EXTERNAL_DIR, proto=UDP)
    ports = {port for m in (sip.parse_sip(r[5]) for r in rows) if m and m.sdp for _, _, port in m.sdp.endpoints()}
    rtp_rows = [r for r in rows if rtp.parse_rtp(r[5]) is not None]
    assert len(rtp_rows) > 400
    assert all(r[2] in ports and r[4] in ports for r in rtp_rows)
    assert {rtp.parse_rtp(r[5]).pt for r in rtp_rows} == {0}


def test_rtp_capture_has_rtp_with_consecutive_sequence_numbers():
    headers = [h for h in (rtp.parse_rtp(r[5]) for r in payloads("rtp.pcapng", proto=UDP)) if h]
    assert len(headers) >= 50
    by_ssrc = collections.defaultdict(list)
    for h in headers:
        by_ssrc[h.ssrc].append(h.seq)
    steps = [(b - a) & 0xFFFF for seqs in by_ssrc.values() for a, b in zip(seqs, seqs[1:])]
    assert sum(step == 1 for step in steps) >= 0.8 * len(steps)
    # RTP over TCP with RFC 4571 framing is in there too.
    assert any(rtp.parse_rtp(r[5], tcp=True) for r in payloads("rtp.pcapng", proto=TCP))


def test_compound_rtcp():
    compounds = [p for p in (rtp.parse_rtcp(r[5]) for r in payloads("rtcp_multiple_pkts_in_the_same_datagram.pcap")) if p]
    assert compounds and all(len(c) > 1 for c in compounds)
    assert all(rtp.classify_rtp_or_rtcp(r[5]) == "rtcp" for r in payloads("rtcp_multiple_pkts_in_the_same_datagram.pcap"))


def test_dns_answers():
    for name, qname in (("zoom.pcap", "log.zoom.us"), ("viber.pcap", None), ("teams.pcap", None), ("netflix.pcap", None)):
        from_resolver = [dns.parse_dns(r[5]) for r in payloads(name, proto=UDP) if 53 in (r[2], r[4])]
        responses = [m for m in from_resolver if m and m.answers]
        assert responses, name
        assert any(m.addresses() for m in responses), name
        if qname:
            assert any(m.qname == qname and m.addresses() for m in responses)


def test_discord_keepalive_and_ip_discovery():
    packets = [d for d in (apps.parse_discord(r[5]) for r in payloads("discord.pcap", proto=UDP)) if d]
    kinds = collections.Counter(d.kind for d in packets)
    assert kinds["keepalive"] > 10 and kinds["ip_discovery_request"] and kinds["ip_discovery_response"]
    assert any(d.address == "84.59.132.100" for d in packets)
    pts = {h.pt for h in (rtp.parse_rtp(r[5]) for r in payloads("discord.pcap", proto=UDP)) if h}
    assert 120 in pts


def test_zoom_p2p_media_and_hello():
    rows = payloads("zoom_p2p.pcapng", proto=UDP)
    offsets = collections.Counter(apps.zoom_rtp_offset(r[5]) for r in rows)
    assert offsets[19] > 10 and offsets[24] > 100                       # audio and video
    assert any(apps.parse_zoom_p2p_hello(r[5]) == "192.168.1.226" for r in rows)
    hints = {apps.stun_app_hint(m) for m in (stun.parse_stun(r[5]) for r in rows) if m}
    assert hints == {"zoom"}


def test_zoom_server_packets():
    rows = [r for r in payloads("zoom.pcap", proto=UDP) if 8801 in (r[2], r[4])]
    media = [m for m in (apps.parse_zoom_media(r[5]) for r in rows) if m]
    assert len(media) > 100 and all(m.via_server for m in media)


def test_quic_versions():
    assert {quic.gquic_version(r[5]) for r in payloads("quic.pcap")} >= {"Q024", "Q025", "Q030", "Q033"}
    assert "Q035" in {quic.gquic_version(r[5]) for r in payloads("youtube_quic.pcap")}
    initials = [quic.parse_quic_long_header(r[5]) for r in payloads("snapchat_call_v1.pcapng") if quic.is_quic_initial(r[5])]
    assert initials and all(h.version == quic.QUIC_V1 and h.length > 0 for h in initials)


def test_dtls_handshake():
    records = [d for d in (dtls.parse_dtls(r[5]) for r in payloads("dtls.pcap")) if d]
    assert any(d.is_client_hello for d in records) and any(d.is_server_hello for d in records)


def test_whatsapp_chat_preamble():
    preambles = {apps.parse_whatsapp_preamble(r[5]) for r in payloads("whatsapp.pcap", proto=TCP)}
    assert apps.WhatsAppPreamble(True, None) in preambles
    assert apps.WhatsAppPreamble(False, (5, 2)) in preambles
    old = {apps.parse_whatsapp_preamble(r[5]) for r in payloads("whatsapp_login_chat.pcap", proto=TCP)}
    assert apps.WhatsAppPreamble(False, (1, 5)) in old
