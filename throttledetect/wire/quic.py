"""QUIC long headers and Google QUIC versions.

RFC 8999 (version-independent invariants), RFC 9000 section 17.2 (long header, Initial
token and length), RFC 9369 (QUIC v2 packet type numbering). Google QUIC (gQUIC) puts an
ASCII version such as "Q046" where IETF QUIC has its 32-bit version: from Q046 on in an
IETF-style long header, before that after an 8-byte connection ID in its "public header".
Decrypting Initial packets (to read the SNI) is not done here.
"""
from __future__ import annotations

from dataclasses import dataclass

from throttledetect.wire import Layout

LONG_PREFIX = Layout("QuicLongPrefix", ("first", "B"), ("version", "I"))
LONG_HEADER_FORM = 0x80
FIXED_BIT = 0x40
LONG_TYPE_SHIFT, LONG_TYPE_MASK = 4, 0x03
MAX_CID_LEN = 20                    # RFC 9000 17.2 for version 1; the invariants allow 255

VERSION_NEGOTIATION = 0x00000000
QUIC_V1 = 0x00000001
QUIC_V2 = 0x6B3343CF
_DRAFT_PREFIX = 0xFF000000          # draft-ietf-quic-transport-NN is 0xff0000NN
_MVFST_PREFIX = 0xFACEB000          # Facebook's mvfst: 0xfaceb001, 0xfaceb002, ...

# Long packet types by their 2-bit field; QUIC v2 rotates the numbering (RFC 9369 3.2).
INITIAL, ZERO_RTT, HANDSHAKE, RETRY = "initial", "0rtt", "handshake", "retry"
_TYPES_V1 = (INITIAL, ZERO_RTT, HANDSHAKE, RETRY)
_TYPES_V2 = (RETRY, INITIAL, ZERO_RTT, HANDSHAKE)

# gQUIC Q046-Q049 long headers pack both connection ID lengths in one byte, 4 bits each,
# encoding 3 + length (0 for none); Q050 and the T05x versions use one byte per ID like RFC 8999.
GQUIC_FIRST_SEPARATE_CID_LENGTHS = 50
_GQUIC_CID_LEN_BYTES = Layout("GquicCidLengths", ("lengths", "B"))

# gQUIC public header (pre-Q046): flags(1), then an 8-byte connection ID when flag 0x08 is
# set, then the version when flag 0x01 is set.
GQUIC_FLAG_VERSION = 0x01
GQUIC_FLAG_CID = 0x08
GQUIC_CID_LEN = 8


@dataclass(frozen=True, slots=True)
class QuicLongHeader:
    """An IETF-style long header. ``packet_type`` is None for Version Negotiation;
    ``token`` and ``length`` (of packet number + payload) are set on Initial packets,
    ``length`` also on 0-RTT and Handshake packets (RFC 9000 versions only, not gQUIC)."""

    version: int
    packet_type: str | None
    dcid: bytes
    scid: bytes
    token: bytes | None = None
    length: int | None = None

    @property
    def version_name(self) -> str:
        return version_name(self.version)

    @property
    def is_gquic(self) -> bool:
        return gquic_version_string(self.version) is not None


def parse_quic_long_header(data: bytes) -> QuicLongHeader | None:
    """Parse a long header of a known version (v1, v2, IETF drafts, mvfst, gQUIC) or a
    Version Negotiation packet; None otherwise."""
    prefix = LONG_PREFIX.unpack(data)
    if prefix is None or not prefix.first & LONG_HEADER_FORM:
        return None
    version = prefix.version
    gquic = gquic_version_string(version)
    if gquic is not None and gquic[0] == "Q" and int(gquic[1:]) < GQUIC_FIRST_SEPARATE_CID_LENGTHS:
        return _gquic_nibble_header(data, prefix)
    pos = LONG_PREFIX.size
    dcid, pos = _cid(data, pos)
    scid, pos = _cid(data, pos) if dcid is not None else (None, pos)
    if scid is None:
        return None
    if version == VERSION_NEGOTIATION:
        return QuicLongHeader(version, None, dcid, scid)
    types = _packet_types(version)
    if types is None:
        # The invariants would allow any version, but then every RTP packet (first byte
        # 0x80-0xBF) would pass for a QUIC packet of some unknown version.
        return None
    # Versions we know set the fixed bit and cap connection IDs at 20 bytes.
    if not prefix.first & FIXED_BIT or len(dcid) > MAX_CID_LEN or len(scid) > MAX_CID_LEN:
        return None
    packet_type = types[(prefix.first >> LONG_TYPE_SHIFT) & LONG_TYPE_MASK]
    token = length = None
    if gquic is not None:
        # gQUIC's Initial/length fields differ from RFC 9000's and are not read.
        return QuicLongHeader(version, packet_type, dcid, scid)
    if packet_type == INITIAL:
        token_len, pos = read_varint(data, pos)
        if token_len is None or pos + token_len > len(data):
            return None
        token = bytes(data[pos:pos + token_len])
        pos += token_len
    if packet_type in (INITIAL, ZERO_RTT, HANDSHAKE):
        length, pos = read_varint(data, pos)
        if length is None:
            return None
    return QuicLongHeader(version, packet_type, dcid, scid, token, length)


def is_quic_initial(data: bytes) -> bool:
    """True for a QUIC Initial packet of a known version. RFC 9000 14.1 pads client Initials
    to 1200 bytes; we do not require it, since server Initials are not padded."""
    header = parse_quic_long_header(data)
    return header is not None and header.packet_type == INITIAL


def gquic_version(data: bytes) -> str | None:
    """The gQUIC version ("Q043", "Q046", "T051", ...) of a packet that announces one, in
    either the IETF-style long header or the older public header; None otherwise."""
    prefix = LONG_PREFIX.unpack(data)
    if prefix is None:
        return None
    if prefix.first & LONG_HEADER_FORM:
        return gquic_version_string(prefix.version)
    flags = data[0]
    if flags & GQUIC_FLAG_VERSION and flags & GQUIC_FLAG_CID and len(data) >= 1 + GQUIC_CID_LEN + 4:
        at = 1 + GQUIC_CID_LEN
        return gquic_version_string(int.from_bytes(data[at:at + 4], "big"))
    return None


def gquic_version_string(version: int) -> str | None:
    """"Q046"-style name of a 32-bit version if it is a gQUIC one: 'Q' (QUIC crypto) or 'T'
    (TLS) followed by three ASCII digits."""
    raw = version.to_bytes(4, "big")
    if raw[:1] in (b"Q", b"T") and raw[1:].isdigit():
        return raw.decode("ascii")
    return None


def version_name(version: int) -> str:
    if version == QUIC_V1:
        return "v1"
    if version == QUIC_V2:
        return "v2"
    if version & 0xFFFFFF00 == _DRAFT_PREFIX:
        return f"draft-{version & 0xFF}"
    if version & 0xFFFFFFF0 == _MVFST_PREFIX:
        return f"mvfst-{version & 0xF}"
    return gquic_version_string(version) or f"0x{version:08x}"


def read_varint(data: bytes, pos: int) -> tuple[int | None, int]:
    """RFC 9000 16 variable-length integer at ``pos``: (value, position after), or (None, pos)."""
    if pos >= len(data):
        return None, pos
    size = 1 << (data[pos] >> 6)
    if pos + size > len(data):
        return None, pos
    value = int.from_bytes(data[pos:pos + size], "big") & ((1 << (8 * size - 2)) - 1)
    return value, pos + size


def _packet_types(version: int):
    if version == QUIC_V2:
        return _TYPES_V2
    if (
        version == QUIC_V1
        or version & 0xFFFFFF00 == _DRAFT_PREFIX
        or version & 0xFFFFFFF0 == _MVFST_PREFIX
        or gquic_version_string(version)
    ):
        return _TYPES_V1
    return None


def _gquic_nibble_header(data: bytes, prefix) -> QuicLongHeader | None:
    pos = LONG_PREFIX.size
    cid_lengths = _GQUIC_CID_LEN_BYTES.unpack(data, pos)
    if cid_lengths is None:
        return None
    dcid_len, scid_len = (_nibble_cid_len(cid_lengths.lengths >> 4), _nibble_cid_len(cid_lengths.lengths & 0x0F))
    pos += _GQUIC_CID_LEN_BYTES.size
    if pos + dcid_len + scid_len > len(data):
        return None
    dcid = bytes(data[pos:pos + dcid_len])
    scid = bytes(data[pos + dcid_len:pos + dcid_len + scid_len])
    packet_type = _TYPES_V1[(prefix.first >> LONG_TYPE_SHIFT) & LONG_TYPE_MASK]
    return QuicLongHeader(prefix.version, packet_type, dcid, scid)


def _nibble_cid_len(nibble: int) -> int:
    return nibble + 3 if nibble else 0


def _cid(data: bytes, pos: int) -> tuple[bytes | None, int]:
    if pos >= len(data):
        return None, pos
    length = data[pos]
    end = pos + 1 + length
    if end > len(data):
        return None, pos
    return bytes(data[pos + 1:end]), end
