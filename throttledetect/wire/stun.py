"""STUN and TURN messages.

RFC 8489 (STUN, obsoletes RFC 5389) and RFC 3489 (classic STUN, no magic cookie);
RFC 8656 (TURN) for its methods, attributes and ChannelData framing; RFC 4571 for the
2-byte length framing ICE-TCP (RFC 6544) puts around STUN; [MS-TURN] 2.2.3 for Microsoft's
multiplexed TURN wrapper. Validity rules follow nDPI's stun.c so that what we call STUN is
what the reference labels call STUN.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import NamedTuple

from throttledetect.wire import Layout

HEADER = Layout("StunHeader", ("msg_type", "H"), ("length", "H"), ("cookie", "I"), ("txid", "12s"))
HEADER_LEN = HEADER.size            # 20
MAGIC_COOKIE = 0x2112A442
MAX_ATTRIBUTES = 64                 # real messages carry about a dozen

# Message classes (RFC 8489 section 5), two bits interleaved with the method bits.
CLASS_REQUEST, CLASS_INDICATION, CLASS_SUCCESS, CLASS_ERROR = 0, 1, 2, 3

# Methods (IANA "STUN Methods").
BINDING = 0x001
SHARED_SECRET = 0x002               # RFC 3489 only
ALLOCATE = 0x003
REFRESH = 0x004
DATA_INDICATION_OLD = 0x005         # pre-RFC TURN drafts and [MS-TURN]: 0x0115 Data Indication
SEND = 0x006
DATA = 0x007
CREATE_PERMISSION = 0x008
CHANNEL_BIND = 0x009
CONNECT = 0x00A                     # RFC 6062 (TURN over TCP)
CONNECTION_BIND = 0x00B
CONNECTION_ATTEMPT = 0x00C
TURN_METHODS = frozenset(range(ALLOCATE, CONNECTION_ATTEMPT + 1))

# nDPI accepts (type & 0x3EEF) <= 0x000B; we let 0x000C through as well, since RFC 6062's
# Connection Attempt indication is a TURN method nDPI itself lists as one.
_METHOD_BITS = 0x3EEF
_MAX_METHOD = CONNECTION_ATTEMPT

# Message types WhatsApp uses outside the IANA space, with the magic cookie. The reference
# notes list 0x0800-0x0802; 0x0804/0x0805 occur in stun_wa_call.pcapng and later nDPI accepts them.
WHATSAPP_MESSAGE_TYPES = frozenset({0x0800, 0x0801, 0x0802, 0x0804, 0x0805})

# RFC 3489 messages have no magic cookie, so only these known types are believed
# (list from Wireshark/nDPI: Binding, Shared Secret, Allocate, Send, Data, Set Active Dest.).
CLASSIC_MESSAGE_TYPES = frozenset({
    0x0001, 0x0101, 0x0111, 0x0002, 0x0102, 0x0112, 0x0003, 0x0103, 0x0113,
    0x0004, 0x0104, 0x0114, 0x0115, 0x0006, 0x0106, 0x0116,
})

# Attributes (IANA "STUN Attributes").
MAPPED_ADDRESS = 0x0001
RESPONSE_ADDRESS = 0x0002
CHANGE_REQUEST = 0x0003
SOURCE_ADDRESS = 0x0004
CHANGED_ADDRESS = 0x0005
USERNAME = 0x0006
PASSWORD = 0x0007
MESSAGE_INTEGRITY = 0x0008
ERROR_CODE = 0x0009
UNKNOWN_ATTRIBUTES = 0x000A
CHANNEL_NUMBER = 0x000C
LIFETIME = 0x000D
XOR_PEER_ADDRESS = 0x0012
DATA_ATTRIBUTE = 0x0013
REALM = 0x0014
NONCE = 0x0015
XOR_RELAYED_ADDRESS = 0x0016
REQUESTED_ADDRESS_FAMILY = 0x0017
EVEN_PORT = 0x0018
REQUESTED_TRANSPORT = 0x0019
XOR_MAPPED_ADDRESS = 0x0020
PRIORITY = 0x0024
USE_CANDIDATE = 0x0025
SOFTWARE = 0x8022
ALTERNATE_SERVER = 0x8023
FINGERPRINT = 0x8028
ICE_CONTROLLED = 0x8029
ICE_CONTROLLING = 0x802A
RESPONSE_ORIGIN = 0x802B
OTHER_ADDRESS = 0x802C

_ADDRESS_FAMILY_IPV4 = 0x01
_ADDRESS_FAMILY_IPV6 = 0x02
_ADDRESS_LEN = {_ADDRESS_FAMILY_IPV4: 4, _ADDRESS_FAMILY_IPV6: 16}

# TURN ChannelData (RFC 8656 section 12.4): channel numbers 0x4000-0x4FFF, i.e. first byte
# 0x40-0x4F, the range RFC 7983 reserves for it when demultiplexing.
CHANNEL_DATA = Layout("ChannelDataHeader", ("channel", "H"), ("length", "H"))
CHANNEL_MIN, CHANNEL_MAX = 0x4000, 0x4FFF

# [MS-TURN] 2.2.3 multiplexed TURN: Channel_ID 0xFF10, Length (bytes after the Length
# field), an 8-byte MTURN_Session_ID, then the wrapped STUN/RTP packet.
MS_TURN = Layout("MsTurnHeader", ("channel", "H"), ("length", "H"), ("session_id", "8s"))
MS_TURN_CHANNEL = 0xFF10

_RFC4571 = Layout("Rfc4571Frame", ("length", "H"))


class TransportAddress(NamedTuple):
    ip: str
    port: int


@dataclass(frozen=True, slots=True)
class StunMessage:
    """One STUN message. ``txid`` is 12 bytes (RFC 8489), or 16 for classic STUN, where the
    cookie position is part of the transaction id. ``offset`` is where the message starts in
    the payload (2 after RFC 4571 framing) and ``size`` its length with the header."""

    msg_type: int
    method: int
    cls: int
    cookie_ok: bool
    txid: bytes
    attributes: tuple[tuple[int, bytes], ...]
    offset: int = 0
    size: int = HEADER_LEN

    @property
    def is_turn(self) -> bool:
        return self.method in TURN_METHODS

    @property
    def is_whatsapp_type(self) -> bool:
        return self.msg_type in WHATSAPP_MESSAGE_TYPES

    def attribute(self, attr_type: int) -> bytes | None:
        """Value of the first attribute of that type."""
        for t, value in self.attributes:
            if t == attr_type:
                return value
        return None

    def has_attribute(self, attr_type: int) -> bool:
        return any(t == attr_type for t, _ in self.attributes)

    @property
    def mapped_address(self) -> TransportAddress | None:
        return _decode_address(self.attribute(MAPPED_ADDRESS), None)

    @property
    def xor_mapped_address(self) -> TransportAddress | None:
        return _decode_address(self.attribute(XOR_MAPPED_ADDRESS), self._xor_key)

    @property
    def xor_relayed_address(self) -> TransportAddress | None:
        return _decode_address(self.attribute(XOR_RELAYED_ADDRESS), self._xor_key)

    @property
    def xor_peer_addresses(self) -> tuple[TransportAddress, ...]:
        """All XOR-PEER-ADDRESS values: a CreatePermission may name several peers."""
        found = (_decode_address(v, self._xor_key) for t, v in self.attributes if t == XOR_PEER_ADDRESS)
        return tuple(a for a in found if a is not None)

    @property
    def xor_peer_address(self) -> TransportAddress | None:
        peers = self.xor_peer_addresses
        return peers[0] if peers else None

    @property
    def realm(self) -> str | None:
        return _text(self.attribute(REALM))

    @property
    def software(self) -> str | None:
        return _text(self.attribute(SOFTWARE))

    @property
    def username(self) -> str | None:
        return _text(self.attribute(USERNAME))

    @property
    def _xor_key(self) -> bytes:
        # RFC 8489 14.2: XOR with the cookie (IPv4, port) or cookie + transaction id (IPv6).
        # Classic messages have no cookie; their 16-byte id already sits in that position.
        if len(self.txid) == 16:
            return self.txid
        return MAGIC_COOKIE.to_bytes(4, "big") + self.txid


@dataclass(frozen=True, slots=True)
class ChannelData:
    channel: int
    length: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class MsTurnFrame:
    session_id: bytes
    payload: bytes


def split_message_type(msg_type: int) -> tuple[int, int]:
    """(method, class) of a 14-bit STUN message type (RFC 8489 section 5, figure 3)."""
    method = (msg_type & 0x000F) | ((msg_type & 0x00E0) >> 1) | ((msg_type & 0x3E00) >> 2)
    cls = ((msg_type & 0x0100) >> 7) | ((msg_type & 0x0010) >> 4)
    return method, cls


def parse_stun(data: bytes, tcp: bool = False) -> StunMessage | None:
    """Parse one STUN message, or None if ``data`` is not one.

    UDP: the message must fill the payload exactly (length + 20 == len(data)). TCP: either
    RFC 4571 framing (2-byte length, then the message) or a bare message at the start of the
    segment (TURN over TCP, RFC 8656 section 12.5); the magic cookie is then mandatory, and
    bytes after the first message (the next one in the stream) are ignored.
    """
    if not tcp:
        return _parse_message(data, 0, len(data), classic_ok=True)
    frame = _RFC4571.unpack(data)
    if frame is not None and _RFC4571.size + frame.length <= len(data):
        msg = _parse_message(data, _RFC4571.size, _RFC4571.size + frame.length, classic_ok=False)
        if msg is not None:
            return msg
    hdr = HEADER.unpack(data)
    if hdr is None or HEADER_LEN + hdr.length > len(data):
        return None
    return _parse_message(data, 0, HEADER_LEN + hdr.length, classic_ok=False)


def parse_channel_data(data: bytes, tcp: bool = False) -> ChannelData | None:
    """Parse a TURN ChannelData message (RFC 8656 section 12.4).

    Over UDP the datagram may carry up to 3 bytes of padding after the data; over TCP the
    message is padded to a multiple of 4 and the next message may follow.
    """
    hdr = CHANNEL_DATA.unpack(data)
    if hdr is None or not CHANNEL_MIN <= hdr.channel <= CHANNEL_MAX:
        return None
    end = CHANNEL_DATA.size + hdr.length
    if end > len(data) or (not tcp and len(data) - end > 3):
        return None
    return ChannelData(hdr.channel, hdr.length, bytes(data[CHANNEL_DATA.size:end]))


def parse_ms_turn(data: bytes) -> MsTurnFrame | None:
    """Unwrap a Microsoft multiplexed TURN packet ([MS-TURN] 2.2.3); the inner packet is
    STUN or RTP and is left for the caller to parse."""
    hdr = MS_TURN.unpack(data)
    if hdr is None or hdr.channel != MS_TURN_CHANNEL or hdr.length + 4 != len(data):
        return None
    return MsTurnFrame(hdr.session_id, bytes(data[MS_TURN.size:]))


def _parse_message(data: bytes, start: int, end: int, classic_ok: bool) -> StunMessage | None:
    hdr = HEADER.unpack(data, start)
    if hdr is None or start + HEADER_LEN + hdr.length != end:
        return None
    msg_type = hdr.msg_type
    # RFC 8489 section 5: the two top bits are zero, which is what keeps STUN apart from
    # RTP/DTLS on a shared port (RFC 7983).
    if msg_type == 0 or msg_type & 0xC000:
        return None
    if (msg_type & _METHOD_BITS) > _MAX_METHOD and msg_type not in WHATSAPP_MESSAGE_TYPES:
        return None
    cookie_ok = hdr.cookie == MAGIC_COOKIE
    if not cookie_ok and not (classic_ok and msg_type in CLASSIC_MESSAGE_TYPES):
        return None
    attributes = _parse_attributes(data, start + HEADER_LEN, end, exact=not cookie_ok)
    if attributes is None:
        return None
    method, cls = split_message_type(msg_type)
    txid = hdr.txid if cookie_ok else bytes(data[start + 4:start + HEADER_LEN])
    return StunMessage(msg_type, method, cls, cookie_ok, txid, attributes, start, end - start)


def _parse_attributes(data: bytes, pos: int, end: int, exact: bool):
    """TLVs padded to 4 bytes (RFC 8489 section 14). With ``exact`` (classic STUN, the only
    evidence it is STUN at all) the list must end exactly at ``end``; otherwise a bad tail
    just ends the list."""
    attributes = []
    while pos + 4 <= end and len(attributes) < MAX_ATTRIBUTES:
        attr_type = int.from_bytes(data[pos:pos + 2], "big")
        length = int.from_bytes(data[pos + 2:pos + 4], "big")
        value_end = pos + 4 + length
        if value_end > end:
            break
        attributes.append((attr_type, bytes(data[pos + 4:value_end])))
        pos = pos + 4 + ((length + 3) & ~3)
    if exact and pos != end:
        return None
    return tuple(attributes)


def _decode_address(value: bytes | None, key: bytes | None) -> TransportAddress | None:
    # Value layout (RFC 8489 14.1): reserved(1) family(1) port(2) address(4 or 16).
    if value is None or len(value) < 4:
        return None
    family = value[1]
    size = _ADDRESS_LEN.get(family)
    if size is None or len(value) < 4 + size:
        return None
    port = int.from_bytes(value[2:4], "big")
    raw = value[4:4 + size]
    if key is not None:
        port ^= int.from_bytes(key[:2], "big")
        raw = bytes(a ^ b for a, b in zip(raw, key))
    ip = ipaddress.IPv4Address(raw) if family == _ADDRESS_FAMILY_IPV4 else ipaddress.IPv6Address(raw)
    return TransportAddress(str(ip), port)


def _text(value: bytes | None) -> str | None:
    # RFC 8489 says UTF-8; some stacks pad or NUL-terminate, and junk must not raise.
    if value is None:
        return None
    return value.rstrip(b"\x00").decode("utf-8", errors="replace")
