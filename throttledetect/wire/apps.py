"""App-specific framings of call and chat apps, as far as public reverse engineering goes.

No RFC describes these. Sources: nDPI's dissectors (rtp.c, telegram.c, discord.c,
whatsapp.c, viber.c, line.c, stun.c; summarised in ../shared/reference/app-signatures.md),
Princeton-Cabernet/zoom-analysis (Zoom media encapsulation), libtgvoip (Telegram reflector
packets) and Discord's developer documentation (voice IP discovery). Each function looks
at one payload; evidence that needs several packets or addresses is the classifier's job.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from throttledetect.wire import Layout
from throttledetect.wire.rtp import classify_rtp_or_rtcp
from throttledetect.wire.stun import StunMessage

# --- Zoom -----------------------------------------------------------------------------------
# Server (SFU/MMR) packets on UDP 8801-8810 start with an 8-byte header; type 5 wraps a Zoom
# media encapsulation (ZME) header, which P2P packets carry directly. RTP/RTCP follow the ZME
# header at an offset that depends on its media type.
ZOOM_SFU = Layout("ZoomSfuHeader", ("sfu_type", "B"), ("seq", "H"), ("unknown", "I"), ("direction", "B"))
ZOOM_SFU_MEDIA = 5
ZOOM_TO_SERVER, ZOOM_FROM_SERVER = 0, 4
ZOOM_MEDIA = Layout("ZoomMediaHeader", ("media_type", "B"), ("unknown1", "I"), ("unknown2", "I"),
                    ("seq", "H"), ("ts", "I"))

ZOOM_SCREEN_SHARE = 13
ZOOM_AUDIO = 15
ZOOM_VIDEO = 16
ZOOM_P2P_SCREEN_SHARE = 30
ZOOM_RTCP_TYPES = frozenset({33, 34, 35})
# Offset of the RTP header inside the ZME header, by media type. Video has a 4-byte frame
# header (frame number, packets in frame) when byte 20 is 0x02; without it RTP is at 20.
_ZOOM_RTP_AT = {ZOOM_SCREEN_SHARE: 27, ZOOM_AUDIO: 19, ZOOM_VIDEO: 24, ZOOM_P2P_SCREEN_SHARE: 20}
_ZOOM_VIDEO_FRAME_FLAG_AT, _ZOOM_VIDEO_FRAME_FLAG = 20, 0x02
_ZOOM_VIDEO_NO_FRAME_HEADER_RTP_AT = 20
_ZOOM_RTCP_AT = 16

# P2P hello: 1F 02 01 ..., the sender's private IP as ASCII after a u32 length at 24.
ZOOM_P2P_HELLO_PREFIX = b"\x1f\x02\x01"
_ZOOM_P2P_HELLO_IP_LEN_AT = 24

# --- Telegram (libtgvoip reflectors) ---------------------------------------------------------
# Every packet relayed by a reflector starts with the call's 16-byte peer tag. Reflector
# control packets follow it with 0xFF bytes: 16 in a request (then a random 64-bit id), 12 in
# a reply (then the 32-bit TL id of the reply, little-endian like all of TL).
TELEGRAM_PEER_TAG_LEN = 16
TELEGRAM_REPLY_FF_RUN = 12
TELEGRAM_REQUEST_FF_RUN = 16

# --- Discord ---------------------------------------------------------------------------------
DISCORD_KEEPALIVE_MAGIC = b"\x13\x37\xca\xfe"
# Voice IP discovery (74 bytes): type (1 request, 2 response), length (70), SSRC, the
# client's address as NUL-padded ASCII, port.
DISCORD_IP_DISCOVERY = Layout("DiscordIpDiscovery", ("kind", "H"), ("length", "H"), ("ssrc", "I"),
                              ("address", "64s"), ("port", "H"))
DISCORD_IP_DISCOVERY_REQUEST, DISCORD_IP_DISCOVERY_RESPONSE = 1, 2
DISCORD_IP_DISCOVERY_BODY_LEN = 70

# --- WhatsApp chat ---------------------------------------------------------------------------
# An optional edge-routing preamble ("ED", version 0.1, 3-byte length, routing data), then
# the Noise prologue "WA" + two version bytes (very old clients: "WA\x01\x05").
WHATSAPP_EDGE_ROUTING = b"ED\x00\x01"
WHATSAPP_PROLOGUE = b"WA"
_EDGE_ROUTING_LEN = Layout("EdgeRoutingLength", ("hi", "B"), ("lo", "H"))

# --- imo (nDPI imo.c) -------------------------------------------------------------------------
# imo's UDP call packets: a 10-byte packet starting 09 02, an 11-byte one starting 00 09 03, a
# 1099-byte one starting 88 49 1A 00; also two consecutive one-byte packets with the same byte
# (checked per flow by the classifier).
_IMO_SHAPES = ((10, b"\x09\x02"), (11, b"\x00\x09\x03"), (1099, b"\x88\x49\x1a\x00"))

# --- Mumble (nDPI mumble.c; Mumble's UDP ping, mumble.info protocol documentation) ---------------
# The client pings a server with 12 bytes: a zero 32-bit request type and a 64-bit identifier;
# the server answers with 24 bytes echoing the identifier at offset 4 (then its version, user
# counts and bandwidth).
MUMBLE_PING = Layout("MumblePing", ("kind", "I"), ("ident", "Q"))
MUMBLE_PING_LEN, MUMBLE_PONG_LEN = 12, 24
MUMBLE_PORT = 64738

# --- Tencent Meeting / VooV -------------------------------------------------------------------
# Observed in the VCA-sense Tencent Meeting captures (two clients, a week apart): media packets
# to the relay (UDP 8000/8016) start 0x51, a zero byte, 0x11, a flag byte (0x00/0x01), a type
# byte, then an 8-byte id beginning 02 00 00; the RTCP legs wrap each RTCP packet in the same id after a 0x08
# byte (RTCP at offset 9). Replies from the relay may be bare RTCP or other framings.
TENCENT_MEDIA_PREFIX = b"\x51\x00\x11"
TENCENT_WRAP_BYTE = 0x08
TENCENT_ID_PREFIX = b"\x02\x00\x00"
TENCENT_RTCP_AT = 9

# --- STUN attributes and realms that name the app (nDPI stun.c) -------------------------------
STUN_WHATSAPP_ATTRIBUTES = frozenset({0x4000, 0x4001, 0x4002, 0x4003, 0x4004, 0x4007})
STUN_ZOOM_ATTRIBUTES = frozenset({0x0101, 0x0103})
STUN_TEAMS_ATTRIBUTES = frozenset({0x8054, 0x24DF, 0x3802, 0x8036, 0x8095, 0x0800, 0x8006, 0x8070, 0x8055})
STUN_GOOGLE_ATTRIBUTE = 0xFF03
STUN_REALM_APPS = (
    ("google.com", "google"), ("signal.org", "signal"), ("whispersystems.org", "signal"),
    ("facebook", "facebook"), ("telegram", "telegram"), ("viber", "viber"),
    # Beyond nDPI: realms of self-hosted and other apps' TURN servers (coturn realms are the
    # operator's domain; these are the apps' public deployments' names).
    ("jitsi", "jitsi"), ("jit.si", "jitsi"), ("8x8.vc", "jitsi"), ("bigbluebutton", "bigbluebutton"),
    ("instagram", "instagram"), ("messenger", "facebook"), ("line.me", "line"), ("line-apps", "line"),
    ("kakao", "kakaotalk"), ("feishu", "feishu"), ("larksuite", "feishu"), ("weixin", "wechat"),
    ("wechat", "wechat"), ("imo.im", "imo"), ("skype", "teams"),
)
# SOFTWARE attribute (0x8022) values that name the app (case-insensitive substrings).
STUN_SOFTWARE_APPS = (
    ("jitsi", "jitsi"), ("jvb", "jitsi"), ("ice4j", "jitsi"), ("bigbluebutton", "bigbluebutton"),
    ("kurento", "bigbluebutton"), ("mediasoup", None), ("skype", "teams"), ("microsoft", "teams"),
)


@dataclass(frozen=True, slots=True)
class ZoomMedia:
    """A Zoom media packet. ``inner_offset`` is where its RTP (``inner == 'rtp'``) or RTCP
    header starts in the payload; None for media types with no known inner header."""

    via_server: bool
    direction: int | None           # ZOOM_TO_SERVER / ZOOM_FROM_SERVER on server packets
    media_type: int
    seq: int
    ts: int
    inner: str | None
    inner_offset: int | None


@dataclass(frozen=True, slots=True)
class TelegramReflector:
    peer_tag: bytes
    kind: str                       # 'request' or 'reply'
    tl_id: int | None               # reply type, for 'reply'


@dataclass(frozen=True, slots=True)
class DiscordPacket:
    kind: str                       # 'keepalive', 'ip_discovery_request', 'ip_discovery_response'
    ssrc: int | None = None
    address: str | None = None
    port: int | None = None


@dataclass(frozen=True, slots=True)
class WhatsAppPreamble:
    edge_routing: bool
    version: tuple[int, int] | None


def parse_zoom_media(data: bytes) -> ZoomMedia | None:
    """Parse a Zoom media packet, server-encapsulated (first byte 5) or P2P."""
    via_server = bool(data[:1]) and data[0] == ZOOM_SFU_MEDIA
    direction = None
    zme_at = 0
    if via_server:
        sfu = ZOOM_SFU.unpack(data)
        if sfu is None:
            return None
        direction, zme_at = sfu.direction, ZOOM_SFU.size
    zme = ZOOM_MEDIA.unpack(data, zme_at)
    if zme is None:
        return None
    inner, offset = _zoom_inner(data, zme_at, zme.media_type)
    if inner is None and not via_server:
        return None  # a P2P packet is only believed when its inner header checks out
    return ZoomMedia(via_server, direction, zme.media_type, zme.seq, zme.ts, inner, offset)


def zoom_rtp_offset(data: bytes) -> int | None:
    """Offset of the RTP header inside a Zoom audio/video/screen-share packet, or None."""
    media = parse_zoom_media(data)
    if media is None or media.inner != "rtp":
        return None
    return media.inner_offset


def parse_zoom_p2p_hello(data: bytes) -> str | None:
    """The private IP address a Zoom P2P hello announces, or None if it is not one."""
    if not data.startswith(ZOOM_P2P_HELLO_PREFIX) or data[-4:] != b"\x00\x00\x00\x00":
        return None
    at = _ZOOM_P2P_HELLO_IP_LEN_AT
    if len(data) < at + 4:
        return None
    ip_len = int.from_bytes(data[at:at + 4], "big")
    text = data[at + 4:at + 4 + ip_len]
    if not 7 <= ip_len <= 45 or len(text) != ip_len:
        return None
    try:
        return str(ipaddress.ip_address(text.decode("ascii")))
    except (UnicodeDecodeError, ValueError):
        return None


def parse_telegram_reflector(data: bytes) -> TelegramReflector | None:
    """A libtgvoip reflector control packet (request or reply), or None."""
    tag_end = TELEGRAM_PEER_TAG_LEN
    reply_end = tag_end + TELEGRAM_REPLY_FF_RUN
    if len(data) < tag_end + TELEGRAM_REQUEST_FF_RUN or data[tag_end:reply_end] != b"\xff" * TELEGRAM_REPLY_FF_RUN:
        return None
    peer_tag = bytes(data[:tag_end])
    tail = data[reply_end:tag_end + TELEGRAM_REQUEST_FF_RUN]
    if tail == b"\xff" * len(tail):
        return TelegramReflector(peer_tag, "request", None)
    return TelegramReflector(peer_tag, "reply", int.from_bytes(tail, "little"))


def parse_discord(data: bytes) -> DiscordPacket | None:
    """A Discord voice keepalive or IP discovery packet, or None."""
    if data.startswith(DISCORD_KEEPALIVE_MAGIC):
        return DiscordPacket("keepalive")
    if len(data) != DISCORD_IP_DISCOVERY.size:
        return None
    packet = DISCORD_IP_DISCOVERY.unpack(data)
    if packet.length != DISCORD_IP_DISCOVERY_BODY_LEN or packet.kind not in (
            DISCORD_IP_DISCOVERY_REQUEST, DISCORD_IP_DISCOVERY_RESPONSE):
        return None
    address = packet.address.split(b"\x00", 1)[0].decode("ascii", errors="replace") or None
    kind = "ip_discovery_request" if packet.kind == DISCORD_IP_DISCOVERY_REQUEST else "ip_discovery_response"
    return DiscordPacket(kind, packet.ssrc, address, packet.port)


def parse_whatsapp_preamble(data: bytes) -> WhatsAppPreamble | None:
    """The start of a WhatsApp chat connection (TCP 443/5222), or None."""
    edge_routing = data.startswith(WHATSAPP_EDGE_ROUTING)
    pos = 0
    if edge_routing:
        routing_len = _EDGE_ROUTING_LEN.unpack(data, len(WHATSAPP_EDGE_ROUTING))
        if routing_len is None:
            return WhatsAppPreamble(True, None)  # the preamble often travels in its own segment
        pos = len(WHATSAPP_EDGE_ROUTING) + _EDGE_ROUTING_LEN.size + (routing_len.hi << 16 | routing_len.lo)
    if data[pos:pos + 2] == WHATSAPP_PROLOGUE and len(data) >= pos + 4 and 1 <= data[pos + 2] <= 9:
        return WhatsAppPreamble(edge_routing, (data[pos + 2], data[pos + 3]))
    return WhatsAppPreamble(True, None) if edge_routing else None


def is_viber_packet(data: bytes, tcp: bool = False) -> bool:
    """nDPI's Viber byte tests. Weak on their own (two fixed bytes over UDP): use them with
    the flow's ports or addresses."""
    if tcp:
        if len(data) < 11 or int.from_bytes(data[:2], "little") != len(data):
            return False
        return (data[6:8] == b"\xfc\xff" and data[9] == 0x80) or (data[4:6] == b"\x03\x80" and data[10] == 0x0A)
    if len(data) <= 5:
        return False
    marker = data[2:4]
    return (
        marker == b"\x03\x00"
        or (len(data) == 20 and marker == b"\x09\x00")
        or data[2:6] == b"\x01\x00\x05\x00"
        or (len(data) == 34 and marker in (b"\x19\x00", b"\x1b\x00"))
    )


def is_line_call_packet(data: bytes) -> bool:
    """nDPI's single-packet LINE call tests (it applies them to LINE's addresses only)."""
    n = len(data)
    if n < 2:
        return False
    b0, b1 = data[0], data[1]
    if n == 110 and data[:4] == b"\xb6\x18\x00\x6a":
        return True
    if n >= 738 and b0 in (0xDA, 0xDB) and data[4:6] == b"\x06\x02":
        return True
    if n >= 150 and b0 in (0xD8, 0xD9) and (b1 & 0xF0) in (0x90, 0xD0, 0xE0) and data[4:6] == b"\x06\x02":
        return True
    if (n, data[:4]) in ((46, b"\xb6\x13\x00\x06"), (8, b"\xb6\x07\x00\x04"), (16, b"\xb6\x09\x00\x0c")):
        return True
    return b0 == 0xD0 and b1 in (0xB3, 0xB4, 0xDA, 0xDB)


def line_packet_number(data: bytes) -> int | None:
    """Byte 3 of LINE's pre-RTP packets, a per-direction counter (nDPI looks for 4
    consecutive values each way); None for payloads too short to carry it."""
    return data[3] if len(data) > 10 else None


def is_imo_packet(data: bytes) -> bool:
    """One of imo's fixed-shape call packets (length and first bytes, per nDPI)."""
    return any(len(data) == n and data.startswith(head) for n, head in _IMO_SHAPES)


def mumble_ping_ident(data: bytes) -> int | None:
    """The identifier of a Mumble UDP ping (12 bytes, zero type) or of its 24-byte answer."""
    if len(data) == MUMBLE_PING_LEN:
        ping = MUMBLE_PING.unpack(data)
        return ping.ident if ping is not None and ping.kind == 0 else None
    if len(data) == MUMBLE_PONG_LEN:
        return int.from_bytes(data[4:12], "big")
    return None


def tencent_media_id(data: bytes) -> bytes | None:
    """The 8-byte session id of a Tencent Meeting media packet or wrapped RTCP packet, else None."""
    if len(data) >= 13 and data.startswith(TENCENT_MEDIA_PREFIX) and data[3] in (0, 1) \
            and data[5:8] == TENCENT_ID_PREFIX:
        return data[5:13]
    if len(data) >= TENCENT_RTCP_AT + 8 and data[0] == TENCENT_WRAP_BYTE and data[1:4] == TENCENT_ID_PREFIX \
            and classify_rtp_or_rtcp(data[TENCENT_RTCP_AT:]) == "rtcp":
        return data[1:9]
    return None


def stun_app_hint(message: StunMessage) -> str | None:
    """The app a STUN message names through its type, attributes, REALM or SOFTWARE: nDPI's
    'whatsapp', 'zoom', 'teams', 'google', 'signal', 'facebook', 'telegram', 'viber', and
    'jitsi', 'bigbluebutton', 'instagram', 'line', 'kakaotalk', 'feishu', 'wechat', 'imo'."""
    if message.is_whatsapp_type:
        return "whatsapp"
    types = {attr_type for attr_type, _ in message.attributes}
    if types & STUN_ZOOM_ATTRIBUTES:
        return "zoom"
    realm = (message.realm or "").lower()
    for needle, app in STUN_REALM_APPS:
        if needle in realm:
            return app
    if types & STUN_WHATSAPP_ATTRIBUTES:
        return "whatsapp"
    if types & STUN_TEAMS_ATTRIBUTES:
        return "teams"
    if STUN_GOOGLE_ATTRIBUTE in types:
        return "google"
    software = (message.software or "").lower()
    for needle, app in STUN_SOFTWARE_APPS:
        if needle in software:
            return app
    return None


def _zoom_inner(data: bytes, zme_at: int, media_type: int) -> tuple[str | None, int | None]:
    if media_type in ZOOM_RTCP_TYPES:
        kind, offset = "rtcp", zme_at + _ZOOM_RTCP_AT
    elif media_type in _ZOOM_RTP_AT:
        kind, offset = "rtp", zme_at + _ZOOM_RTP_AT[media_type]
        flag_at = zme_at + _ZOOM_VIDEO_FRAME_FLAG_AT
        if media_type == ZOOM_VIDEO and len(data) > flag_at and data[flag_at] != _ZOOM_VIDEO_FRAME_FLAG:
            offset = zme_at + _ZOOM_VIDEO_NO_FRAME_HEADER_RTP_AT
    else:
        return None, None
    # The inner header must parse as what the media type says it is.
    if classify_rtp_or_rtcp(data[offset:]) != kind:
        return None, None
    return kind, offset
