"""App framings: packets built from the layouts in app-signatures.md, and fuzzing."""
import struct

from hypothesis import given, strategies as st

from throttledetect.wire import apps, stun

RTP = struct.pack("!BBHII", 0x90, 0x70, 513, 48000, 0xABCDEF01) + b"\xbe\xde\x00\x01\x10\xff\x00\x00" + b"\x42" * 60
RTCP_SR = struct.pack("!BBHI", 0x80, 200, 6, 0xABCDEF01) + bytes(20)


def zme(media_type: int, seq=7, ts=1234, filler=b"") -> bytes:
    """Zoom media encapsulation: type(1) ?(4) ?(4) seq(2) ts(4), then type-specific bytes."""
    return struct.pack("!BIIHI", media_type, 0, 0, seq, ts) + filler


def sfu(inner: bytes, direction=apps.ZOOM_FROM_SERVER) -> bytes:
    """Zoom server header: type 5, seq(2), ?(4), direction(1)."""
    return struct.pack("!BHIB", apps.ZOOM_SFU_MEDIA, 99, 0, direction) + inner


def test_zoom_audio_via_server():
    data = sfu(zme(apps.ZOOM_AUDIO, filler=b"\x00" * 4) + RTP)
    media = apps.parse_zoom_media(data)
    assert media.via_server and media.direction == apps.ZOOM_FROM_SERVER
    assert (media.media_type, media.seq, media.ts, media.inner) == (apps.ZOOM_AUDIO, 7, 1234, "rtp")
    assert apps.zoom_rtp_offset(data) == 8 + 19 == media.inner_offset


def test_zoom_video_with_and_without_frame_header():
    with_frame = zme(apps.ZOOM_VIDEO, filler=b"\x00" * 5 + b"\x02" + b"\x00\x01\x03") + RTP
    assert apps.zoom_rtp_offset(sfu(with_frame)) == 8 + 24
    without = zme(apps.ZOOM_VIDEO, filler=b"\x00" * 5) + RTP
    assert apps.zoom_rtp_offset(without) == 20                        # P2P, no server header


def test_zoom_screen_share_rtcp_and_unknown_types():
    assert apps.zoom_rtp_offset(zme(apps.ZOOM_P2P_SCREEN_SHARE, filler=b"\x00" * 5) + RTP) == 20
    assert apps.zoom_rtp_offset(sfu(zme(apps.ZOOM_SCREEN_SHARE, filler=b"\x00" * 12) + RTP)) == 8 + 27
    rtcp = apps.parse_zoom_media(sfu(zme(34, filler=b"\x00") + RTCP_SR))
    assert rtcp.inner == "rtcp" and rtcp.inner_offset == 8 + 16
    assert apps.zoom_rtp_offset(sfu(zme(34, filler=b"\x00") + RTCP_SR)) is None
    probe = apps.parse_zoom_media(sfu(zme(21, filler=b"\x01" * 40)))
    assert probe.via_server and probe.inner is None
    assert apps.parse_zoom_media(zme(21, filler=b"\x01" * 40)) is None   # P2P needs a real inner header
    assert apps.parse_zoom_media(zme(apps.ZOOM_AUDIO, filler=b"\x00" * 4) + b"\x00" * 20) is None


def test_zoom_p2p_hello():
    ip = b"192.168.1.226"
    hello = bytes.fromhex("1f0201000800010004005c9b637b0000006400000062a04c") + struct.pack("!I", len(ip)) + ip + b"\x00" * 8
    assert apps.parse_zoom_p2p_hello(hello) == "192.168.1.226"
    assert apps.parse_zoom_p2p_hello(hello[:-1] + b"\x01") is None
    assert apps.parse_zoom_p2p_hello(hello.replace(ip, b"192.168.1.2x6")) is None


def test_telegram_reflector():
    tag = bytes(range(16))
    request = tag + b"\xff" * 16 + b"\x01" * 8
    reply = tag + b"\xff" * 12 + struct.pack("<I", 0x27D9371C) + b"\x00" * 20
    assert apps.parse_telegram_reflector(request) == apps.TelegramReflector(tag, "request", None)
    assert apps.parse_telegram_reflector(reply) == apps.TelegramReflector(tag, "reply", 0x27D9371C)
    assert apps.parse_telegram_reflector(tag + b"\xff" * 11 + b"\x00" * 20) is None
    assert apps.parse_telegram_reflector(tag + b"\xff" * 12) is None


def test_discord():
    assert apps.parse_discord(bytes.fromhex("1337cafe0e000000")).kind == "keepalive"
    request = struct.pack("!HHI", 1, 70, 0xACE3) + bytes(64) + struct.pack("!H", 0)
    response = struct.pack("!HHI", 2, 70, 0xACE3) + b"84.59.132.100".ljust(64, b"\x00") + struct.pack("!H", 50004)
    assert apps.parse_discord(request) == apps.DiscordPacket("ip_discovery_request", 0xACE3, None, 0)
    assert apps.parse_discord(response) == apps.DiscordPacket("ip_discovery_response", 0xACE3, "84.59.132.100", 50004)
    assert apps.parse_discord(request[:-1]) is None
    assert apps.parse_discord(struct.pack("!HHI", 3, 70, 1) + bytes(66)) is None


def test_whatsapp_preamble():
    assert apps.parse_whatsapp_preamble(b"ED\x00\x01") == apps.WhatsAppPreamble(True, None)
    routed = b"ED\x00\x01" + b"\x00\x00\x02" + b"\x08\x00" + b"WA\x06\x02" + b"\x00" * 8
    assert apps.parse_whatsapp_preamble(routed) == apps.WhatsAppPreamble(True, (6, 2))
    assert apps.parse_whatsapp_preamble(b"WA\x05\x02") == apps.WhatsAppPreamble(False, (5, 2))
    assert apps.parse_whatsapp_preamble(b"WA\x01\x05\x00\x00\x1a\xf8") == apps.WhatsAppPreamble(False, (1, 5))
    assert apps.parse_whatsapp_preamble(b"WAT?") is None
    assert apps.parse_whatsapp_preamble(b"\x16\x03\x01\x00") is None


def test_viber_and_line():
    assert apps.is_viber_packet(b"\x12\x34\x03\x00\x00\x00\x00")
    assert apps.is_viber_packet(b"\x00\x00\x09\x00" + bytes(16))
    assert not apps.is_viber_packet(b"\x00\x00\x09\x00" + bytes(17))
    assert apps.is_viber_packet(bytes(34)[:2] + b"\x1b\x00" + bytes(30))
    tcp = struct.pack("<H", 12) + b"\x00\x00\x00\x00\xfc\xff\x00\x80\x00\x00"
    assert apps.is_viber_packet(tcp, tcp=True) and not apps.is_viber_packet(tcp[:-1], tcp=True)
    assert apps.is_line_call_packet(b"\xb6\x18\x00\x6a" + bytes(106))
    assert apps.is_line_call_packet(b"\xdb\x64\x00\xb9\x06\x02" + bytes(800))
    assert apps.is_line_call_packet(b"\xd0\xb3")
    assert not apps.is_line_call_packet(b"\x90\x60\x00\x01" + bytes(100))
    assert apps.line_packet_number(b"\xd1\x5c\x00\xbb" + bytes(20)) == 0xBB
    assert apps.line_packet_number(b"\xd1\x5c\x00\xbb") is None


def _stun(msg_type=0x0001, attrs=()):
    body = b"".join(struct.pack("!HH", t, len(v)) + v + b"\x00" * (-len(v) % 4) for t, v in attrs)
    return stun.parse_stun(struct.pack("!HHI", msg_type, len(body), stun.MAGIC_COOKIE) + bytes(12) + body)


def test_stun_app_hint():
    assert apps.stun_app_hint(_stun(0x0801)) == "whatsapp"
    assert apps.stun_app_hint(_stun(attrs=[(0x4003, b"\x00\x01")])) == "whatsapp"
    assert apps.stun_app_hint(_stun(attrs=[(0x0103, b"x")])) == "zoom"
    assert apps.stun_app_hint(_stun(attrs=[(0x8070, b"\x00\x00\x00\x03")])) == "teams"
    assert apps.stun_app_hint(_stun(attrs=[(0xFF03, b"")])) == "google"
    for realm, app in ((b"signal.org", "signal"), (b"turn.telegram.org", "telegram"), (b"x.viber.com", "viber"),
                       (b"turner.facebook", "facebook"), (b"turn.l.google.com", "google")):
        assert apps.stun_app_hint(_stun(0x0113, [(stun.REALM, realm)])) == app
    assert apps.stun_app_hint(_stun(attrs=[(stun.SOFTWARE, b"x")])) is None


@given(st.binary(max_size=200), st.booleans())
def test_never_raises(data, tcp):
    apps.parse_zoom_media(data)
    apps.zoom_rtp_offset(data)
    apps.parse_zoom_p2p_hello(data)
    apps.parse_telegram_reflector(data)
    apps.parse_discord(data)
    apps.parse_whatsapp_preamble(data)
    apps.is_viber_packet(data, tcp=tcp)
    apps.is_line_call_packet(data)
    apps.line_packet_number(data)


@given(st.sampled_from([apps.ZOOM_AUDIO, apps.ZOOM_VIDEO, apps.ZOOM_SCREEN_SHARE, apps.ZOOM_P2P_SCREEN_SHARE, 33, 34, 35]),
       st.binary(max_size=60))
def test_zoom_never_raises_after_real_headers(media_type, rest):
    apps.parse_zoom_media(sfu(zme(media_type) + rest))
    apps.parse_zoom_media(zme(media_type) + rest)


@given(st.integers(0, 0xFFFF), st.integers(0, 2**32 - 1))
def test_zoom_round_trip(seq, ts):
    media = apps.parse_zoom_media(sfu(zme(apps.ZOOM_AUDIO, seq, ts, b"\x00" * 4) + RTP))
    assert (media.seq, media.ts) == (seq, ts)
