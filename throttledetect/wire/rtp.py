"""RTP headers and RTCP compound packets.

RFC 3550 (RTP, RTCP SR/RR/SDES/BYE/APP), RFC 4585 (RTPFB/PSFB feedback), RFC 3611 (XR),
RFC 5761 (RTP and RTCP on one port: tell them apart by the second byte), RFC 4571 (2-byte
length framing over TCP). SRTP (RFC 3711) leaves the 12-byte RTP header in clear, so these
headers are readable on encrypted calls too; SRTCP encrypts everything after the first
8 bytes, so only the first packet's type, length and sender SSRC are reliable there.

``rtp_fields`` reads the RTP header of many packets at once from the reader's ``prefix``
column with numpy indexing, for the metrics stage.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from throttledetect.wire import Layout

RTP_VERSION = 2
FIXED_HEADER = Layout("RtpFixedHeader", ("v_p_x_cc", "B"), ("m_pt", "B"), ("seq", "H"), ("ts", "I"), ("ssrc", "I"))
RTP_HEADER_LEN = FIXED_HEADER.size  # 12
# Bits of the first two bytes (RFC 3550 5.1).
VERSION_SHIFT = 6
PADDING_BIT = 0x20
EXTENSION_BIT = 0x10
CSRC_COUNT_MASK = 0x0F
MARKER_BIT = 0x80
PT_MASK = 0x7F
EXTENSION_HEADER = Layout("RtpExtensionHeader", ("profile", "H"), ("length", "H"))  # length in 32-bit words

# Payload types that can be RTP (RFC 3551 static 0-34, dynamic 96-127); 35-95 are
# unassigned or would collide with RTCP packet types 192-223 once the marker bit is set.
STATIC_PT_MAX = 34
DYNAMIC_PT_MIN, DYNAMIC_PT_MAX = 96, 127

# One-byte (RFC 8285) header extension profile that WebRTC stacks use.
ONE_BYTE_EXTENSION_PROFILE = 0xBEDE

# RTCP packet types (IANA "RTCP Control Packet Types").
RTCP_FIR_OLD = 192          # RFC 2032
RTCP_NACK_OLD = 193
RTCP_SR = 200
RTCP_RR = 201
RTCP_SDES = 202
RTCP_BYE = 203
RTCP_APP = 204
RTCP_RTPFB = 205            # RFC 4585 transport-layer feedback (NACK, TWCC, ...)
RTCP_PSFB = 206             # RFC 4585 payload-specific feedback (PLI, FIR, REMB, ...)
RTCP_XR = 207               # RFC 3611
RTCP_TYPE_MIN, RTCP_TYPE_MAX = 192, 213   # the range nDPI accepts (up to RFC 8861 SNM)

SEQ_MOD = 1 << 16           # sequence numbers and timestamps wrap (RFC 3550 A.1)
TS_MOD = 1 << 32
DYNAMIC_PT_FIRST = 96

# RFC 3551 6, table 4 and 5: clock rates of the static payload types. PT 1 (1016), 2 (G721)
# and 19 (CN) are withdrawn assignments that Wireshark still rates, so they are kept.
STATIC_CLOCK_RATES: dict[int, int] = {
    0: 8000, 1: 8000, 2: 8000, 3: 8000, 4: 8000, 5: 8000, 6: 16000, 7: 8000, 8: 8000,
    9: 8000,    # G.722 samples at 16 kHz but RFC 3551 4.5.2 fixes its RTP clock at 8000
    10: 44100, 11: 44100, 12: 8000, 13: 8000, 14: 90000, 15: 8000, 16: 11025, 17: 22050,
    18: 8000, 19: 8000, 25: 90000, 26: 90000, 28: 90000, 31: 90000, 32: 90000, 33: 90000,
    34: 90000,
}

# Clock rates met in practice for dynamic payload types (Opus and WebRTC audio 48000,
# video 90000, wideband speech codecs 16000 ...); an estimated rate snaps to one of them.
COMMON_CLOCK_RATES = (8000, 16000, 24000, 32000, 44100, 48000, 90000)


def clock_rate_for(payload_type: int) -> int | None:
    """RTP clock rate (Hz) of a static payload type (RFC 3551), None for dynamic/unassigned."""
    return STATIC_CLOCK_RATES.get(int(payload_type))


def unwrap(values: np.ndarray, modulus: int) -> np.ndarray:
    """Extend wrapping counters (sequence numbers, timestamps) to int64, in arrival order.

    Each step is read as the shortest signed distance modulo `modulus` (serial number
    arithmetic, RFC 1982), so wraps count a cycle (RFC 3550 A.1) and late packets step back
    without counting one. The result is shifted by whole cycles so that it is never negative.
    """
    v = np.asarray(values, dtype=np.int64) % modulus
    if len(v) == 0:
        return v
    half = modulus // 2
    steps = (np.diff(v) + half) % modulus - half
    ext = v[0] + np.concatenate((np.zeros(1, np.int64), np.cumsum(steps)))
    lowest = ext.min()
    if lowest < 0:
        ext += modulus * ((-lowest + modulus - 1) // modulus)
    return ext



RTCP_COMMON = Layout("RtcpCommonHeader", ("v_p_count", "B"), ("packet_type", "B"), ("length", "H"))  # length: words - 1
RTCP_COUNT_MASK = 0x1F
SENDER_INFO = Layout("SenderInfo", ("ntp_ts", "Q"), ("rtp_ts", "I"), ("packet_count", "I"), ("octet_count", "I"))
REPORT_BLOCK = Layout("ReportBlock", ("ssrc", "I"), ("fraction_and_lost", "I"), ("highest_seq", "I"),
                      ("jitter", "I"), ("lsr", "I"), ("dlsr", "I"))
SSRC_LEN = 4
MAX_RTCP_PACKETS = 64       # per datagram; a compound packet has a handful

_RFC4571 = Layout("Rfc4571Frame", ("length", "H"))


@dataclass(frozen=True, slots=True)
class RtpHeader:
    """RFC 3550 5.1 header. ``header_len`` covers CSRCs and the extension; ``padding`` is the
    number of padding bytes at the end (0 when the P bit is clear, or when the count byte does
    not fit: under SRTP the last byte is the authentication tag, not the count)."""

    marker: bool
    pt: int
    seq: int
    ts: int
    ssrc: int
    csrc_count: int
    has_ext: bool
    ext_profile: int | None
    header_len: int
    payload_len: int
    padding: int


@dataclass(frozen=True, slots=True)
class ReportBlock:
    """RFC 3550 6.4.1 reception report. ``cumulative_lost`` is signed (duplicates can
    make it negative); ``jitter`` is in RTP timestamp units."""

    ssrc: int
    fraction_lost: int          # fixed point /256
    cumulative_lost: int
    highest_seq: int            # extended: cycles << 16 | seq
    jitter: int
    lsr: int
    dlsr: int


@dataclass(frozen=True, slots=True)
class SenderInfo:
    ntp_ts: int                 # 64-bit NTP timestamp
    rtp_ts: int
    packet_count: int
    octet_count: int


@dataclass(frozen=True, slots=True)
class RtcpPacket:
    """One packet of a compound RTCP datagram. ``count`` is the 5-bit RC/SC/FMT field.
    ``ssrc`` is the sender's SSRC (first SDES chunk / first BYE source for those types);
    ``media_ssrc`` is the media source of RTPFB/PSFB feedback."""

    packet_type: int
    count: int
    length: int                 # bytes, header included
    ssrc: int | None
    sender_info: SenderInfo | None = None
    reports: tuple[ReportBlock, ...] = ()
    media_ssrc: int | None = None
    app_name: bytes | None = None
    body: bytes = b""           # everything after the common header


def parse_rtp(data: bytes, tcp: bool = False) -> RtpHeader | None:
    """Parse an RTP header, or None if ``data`` cannot be RTP (version, payload type and the
    CSRC/extension lengths must fit). With ``tcp``, ``data`` starts with an RFC 4571 length
    and lengths are measured inside that frame."""
    if tcp:
        data = _unframe(data)
        if data is None:
            return None
    hdr = FIXED_HEADER.unpack(data)
    if hdr is None or hdr.v_p_x_cc >> VERSION_SHIFT != RTP_VERSION:
        return None
    pt = hdr.m_pt & PT_MASK
    if not is_rtp_payload_type(pt):
        return None
    csrc_count = hdr.v_p_x_cc & CSRC_COUNT_MASK
    header_len = RTP_HEADER_LEN + 4 * csrc_count
    has_ext = bool(hdr.v_p_x_cc & EXTENSION_BIT)
    ext_profile = None
    if has_ext:
        ext = EXTENSION_HEADER.unpack(data, header_len)
        if ext is None:
            return None
        ext_profile = ext.profile
        header_len += EXTENSION_HEADER.size + 4 * ext.length
    if header_len > len(data):
        return None
    padding = 0
    if hdr.v_p_x_cc & PADDING_BIT:
        count = data[-1]
        if 0 < count <= len(data) - header_len:
            padding = count
    return RtpHeader(
        marker=bool(hdr.m_pt & MARKER_BIT), pt=pt, seq=hdr.seq, ts=hdr.ts, ssrc=hdr.ssrc,
        csrc_count=csrc_count, has_ext=has_ext, ext_profile=ext_profile,
        header_len=header_len, payload_len=len(data) - header_len - padding, padding=padding,
    )


def parse_rtcp(data: bytes, tcp: bool = False) -> list[RtcpPacket] | None:
    """Parse a compound RTCP datagram into its packets, or None if the first is not RTCP.

    The walk stops at the first bytes that are not a whole RTCP packet (the SRTCP index and
    authentication tag that follow the compound, or trailing junk).
    """
    if tcp:
        data = _unframe(data)
        if data is None:
            return None
    packets: list[RtcpPacket] = []
    pos = 0
    while pos < len(data) and len(packets) < MAX_RTCP_PACKETS:
        packet = _parse_rtcp_packet(data, pos)
        if packet is None:
            break
        packets.append(packet)
        pos += packet.length
    return packets or None


def classify_rtp_or_rtcp(data: bytes) -> str | None:
    """'rtcp', 'rtp' or None (RFC 5761 section 4). RTCP is tried first: with the marker bit
    set, RTP payload types 72-76 share the second byte with RTCP SR/RR/SDES/BYE/APP."""
    if _rtcp_header_ok(data, 0):
        return "rtcp"
    if parse_rtp(data) is not None:
        return "rtp"
    return None


def is_rtp_payload_type(pt: int) -> bool:
    return 0 <= pt <= STATIC_PT_MAX or DYNAMIC_PT_MIN <= pt <= DYNAMIC_PT_MAX


def rtp_fields(prefix: np.ndarray, offset=0, length: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """RTP header fields of many packets at once.

    ``prefix`` is the reader's uint8[n, k] column of first payload bytes; ``offset`` (a scalar
    or one per row) is where the RTP header starts in each payload (2 for RFC 4571 framing,
    27 inside a Zoom SFU packet, ...; negative for rows known to have none); ``length``, when
    given, is each payload's captured length, so that headers whose CSRC list or extension
    would run past the packet are invalid. Pass it: without it, zero bytes after a short
    payload are read as if they were the packet's own.

    Returns arrays of n rows: ``valid`` (bool; the other fields are 0 where it is False),
    ``pt``, ``marker``, ``seq``, ``ts``, ``ssrc``, ``csrc_count``, ``has_ext``.
    """
    prefix = np.asarray(prefix, dtype=np.uint8)
    n, width = prefix.shape
    start = np.broadcast_to(np.asarray(offset, dtype=np.int64), (n,))
    fields = {
        "valid": np.zeros(n, dtype=bool),
        "pt": np.zeros(n, dtype=np.uint8),
        "marker": np.zeros(n, dtype=bool),
        "seq": np.zeros(n, dtype=np.uint16),
        "ts": np.zeros(n, dtype=np.uint32),
        "ssrc": np.zeros(n, dtype=np.uint32),
        "csrc_count": np.zeros(n, dtype=np.uint8),
        "has_ext": np.zeros(n, dtype=bool),
    }
    if n == 0 or width < RTP_HEADER_LEN:
        return fields
    inside = (start >= 0) & (start + RTP_HEADER_LEN <= width)
    # Rows whose header is not inside the prefix read from column 0 and are masked out below.
    base = np.where(inside, start, 0)
    hdr = np.take_along_axis(prefix, base[:, None] + np.arange(RTP_HEADER_LEN), axis=1).astype(np.uint32)

    v_p_x_cc, m_pt = hdr[:, 0], hdr[:, 1]
    pt = m_pt & PT_MASK
    csrc_count = v_p_x_cc & CSRC_COUNT_MASK
    has_ext = (v_p_x_cc & EXTENSION_BIT) != 0
    valid = inside & ((v_p_x_cc >> VERSION_SHIFT) == RTP_VERSION)
    valid &= (pt <= STATIC_PT_MAX) | ((pt >= DYNAMIC_PT_MIN) & (pt <= DYNAMIC_PT_MAX))
    if length is not None:
        available = np.asarray(length, dtype=np.int64) - start
        header_len = RTP_HEADER_LEN + 4 * csrc_count.astype(np.int64) + 4 * has_ext
        valid &= header_len <= available
        # The extension length word is only checkable when it lies inside the prefix.
        ext_at = start + RTP_HEADER_LEN + 4 * csrc_count.astype(np.int64)
        readable = valid & has_ext & (ext_at + 4 <= width)
        rows = np.arange(n)
        words_at = np.where(readable, ext_at + 2, 0)
        ext_words = (prefix[rows, words_at].astype(np.int64) << 8) | prefix[rows, words_at + 1]
        valid &= ~readable | (header_len + 4 * ext_words <= available)

    fields["valid"] = valid
    fields["pt"] = np.where(valid, pt, 0).astype(np.uint8)
    fields["marker"] = valid & ((m_pt & MARKER_BIT) != 0)
    fields["seq"] = np.where(valid, _big_endian(hdr[:, 2:4]), 0).astype(np.uint16)
    fields["ts"] = np.where(valid, _big_endian(hdr[:, 4:8]), 0).astype(np.uint32)
    fields["ssrc"] = np.where(valid, _big_endian(hdr[:, 8:12]), 0).astype(np.uint32)
    fields["csrc_count"] = np.where(valid, csrc_count, 0).astype(np.uint8)
    fields["has_ext"] = valid & has_ext
    return fields


def _big_endian(columns: np.ndarray) -> np.ndarray:
    """Rows of big-endian bytes (as uint32 columns) to unsigned integers."""
    value = np.zeros(len(columns), dtype=np.uint32)
    for i in range(columns.shape[1]):  # 2 or 4 columns, not a loop over packets
        value = (value << 8) | columns[:, i]
    return value


def _unframe(data: bytes) -> bytes | None:
    frame = _RFC4571.unpack(data)
    if frame is None or _RFC4571.size + frame.length > len(data):
        return None
    return data[_RFC4571.size:_RFC4571.size + frame.length]


def _rtcp_header_ok(data: bytes, pos: int) -> bool:
    common = RTCP_COMMON.unpack(data, pos)
    return (
        common is not None
        and common.v_p_count >> VERSION_SHIFT == RTP_VERSION
        and RTCP_TYPE_MIN <= common.packet_type <= RTCP_TYPE_MAX
        and pos + 4 * (common.length + 1) <= len(data)
    )


def _parse_rtcp_packet(data: bytes, pos: int) -> RtcpPacket | None:
    if not _rtcp_header_ok(data, pos):
        return None
    common = RTCP_COMMON.unpack(data, pos)
    size = 4 * (common.length + 1)
    body = bytes(data[pos + RTCP_COMMON.size:pos + size])
    count = common.v_p_count & RTCP_COUNT_MASK
    ptype = common.packet_type
    ssrc = int.from_bytes(body[:SSRC_LEN], "big") if len(body) >= SSRC_LEN else None
    sender_info = None
    reports: tuple[ReportBlock, ...] = ()
    media_ssrc = None
    app_name = None
    if ptype == RTCP_SR:
        info = SENDER_INFO.unpack(body, SSRC_LEN)
        if info is not None:
            sender_info = SenderInfo(*info)
            reports = _report_blocks(body, SSRC_LEN + SENDER_INFO.size, count)
    elif ptype == RTCP_RR:
        reports = _report_blocks(body, SSRC_LEN, count)
    elif ptype in (RTCP_RTPFB, RTCP_PSFB) and len(body) >= 2 * SSRC_LEN:
        media_ssrc = int.from_bytes(body[SSRC_LEN:2 * SSRC_LEN], "big")
    elif ptype == RTCP_APP and len(body) >= 2 * SSRC_LEN:
        app_name = body[SSRC_LEN:2 * SSRC_LEN]          # 4 ASCII characters
    elif ptype in (RTCP_SDES, RTCP_BYE) and count == 0:
        ssrc = None  # no chunks / no sources: the bytes are padding, not an SSRC
    return RtcpPacket(ptype, count, size, ssrc, sender_info, reports, media_ssrc, app_name, body)


def _report_blocks(body: bytes, pos: int, count: int) -> tuple[ReportBlock, ...]:
    blocks = []
    for i in range(count):  # count is a 5-bit field: at most 31
        block = REPORT_BLOCK.unpack(body, pos + i * REPORT_BLOCK.size)
        if block is None:
            break
        # 8-bit fraction lost, then a 24-bit two's complement cumulative count (RFC 3550 6.4.1).
        lost = block.fraction_and_lost & 0xFFFFFF
        if lost & 0x800000:
            lost -= 1 << 24
        blocks.append(ReportBlock(block.ssrc, block.fraction_and_lost >> 24, lost, block.highest_seq,
                                  block.jitter, block.lsr, block.dlsr))
    return tuple(blocks)


def _be16(b: np.ndarray) -> np.ndarray:
    return (b[:, 0].astype(np.int64) << 8) | b[:, 1]


def _be32(b: np.ndarray) -> np.ndarray:
    return (_be16(b[:, 0:2]) << 16) | _be16(b[:, 2:4])


def rtp_header_mask(prefix: np.ndarray, payload_len: np.ndarray, payload_wirelen: np.ndarray,
                    buffer: np.ndarray, payload_off: np.ndarray) -> np.ndarray:
    """Which UDP payloads carry an RTP header (RFC 3550 5.1); RTCP is told apart first.

    prefix: uint8[n, >=12] first payload bytes; payload_len / payload_wirelen: payload bytes
    captured / on the wire; buffer, payload_off: the capture bytes, for what lies beyond the
    prefix (header extension length, padding count).

    - version 2;
    - not RTCP: a second byte of 192-213 whose length field fits is RTCP (RFC 5761 4);
    - payload type 0-34 (RFC 3551's audio and video range) or 96-127 (dynamic);
    - the CSRC list and the header extension (RFC 3550 5.3.1) fit in the packet;
    - with the P bit, the padding count (last octet, which counts itself) is 1 or more and
      fits after the header (RFC 3550 5.1); unchecked when the last octet was not captured.
    Wireshark's RTP heuristic checks the same, except that it takes any payload type but
    72-76; payload types 35-71 and 77-95 are unassigned, and random bytes land there.
    """
    plen = np.asarray(payload_len, dtype=np.int64)
    wlen = np.asarray(payload_wirelen, dtype=np.int64)
    off = np.asarray(payload_off, dtype=np.int64)
    b0 = prefix[:, 0].astype(np.int64)
    b1 = prefix[:, 1].astype(np.int64)
    v2 = (b0 >> 6) == RTP_VERSION
    rtcp = v2 & (b1 >= RTCP_TYPE_MIN) & (b1 <= RTCP_TYPE_MAX) & ((_be16(prefix[:, 2:4]) + 1) * 4 <= wlen)
    pt = b1 & 0x7F
    header = RTP_HEADER_LEN + 4 * (b0 & 0x0F)
    ok = v2 & ~rtcp & ((pt <= 34) | (pt >= DYNAMIC_PT_FIRST)) & (plen >= RTP_HEADER_LEN)

    has_ext = ok & ((b0 & 0x10) != 0)
    ok &= ~has_ext | (header + 4 <= plen)          # the extension's length word is captured
    rows = np.flatnonzero(has_ext & ok)
    if len(rows):
        at = off[rows] + header[rows] + 2
        header[rows] += 4 + 4 * ((buffer[at].astype(np.int64) << 8) | buffer[at + 1])
    ok &= header <= wlen

    rows = np.flatnonzero(ok & ((b0 & 0x20) != 0) & (plen == wlen))
    if len(rows):
        padding = buffer[off[rows] + plen[rows] - 1].astype(np.int64)
        ok[rows] = (padding >= 1) & (padding <= wlen[rows] - header[rows])
    return ok
