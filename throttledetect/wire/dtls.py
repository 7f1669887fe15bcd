"""DTLS record header.

RFC 6347 (DTLS 1.2) section 4.1 record layer, RFC 9147 (DTLS 1.3) for its version number,
RFC 9146 for the tls12_cid content type. WebRTC runs DTLS on the media 5-tuple to key SRTP
(RFC 5764), so a DTLS handshake is how a call's media flow starts. DTLS 1.3's unified
header (first byte 0x20-0x3F, encrypted records) is not parsed here.
"""
from __future__ import annotations

from dataclasses import dataclass

from throttledetect.wire import Layout

RECORD = Layout("DtlsRecordHeader", ("content_type", "B"), ("version", "H"), ("epoch", "H"),
                ("sequence", "6s"), ("length", "H"))
RECORD_HEADER_LEN = RECORD.size     # 13
MAX_RECORDS = 64                    # per datagram; a handshake flight has a few

# Content types (IANA "TLS ContentType").
CHANGE_CIPHER_SPEC = 20
ALERT = 21
HANDSHAKE = 22
APPLICATION_DATA = 23
HEARTBEAT = 24
TLS12_CID = 25
CONTENT_TYPES = frozenset(range(CHANGE_CIPHER_SPEC, TLS12_CID + 1))

# Versions on the wire are 255 - minor (DTLS 1.0 = FEFF); 0x0100 is OpenSSL's pre-RFC DTLS.
DTLS_1_0 = 0xFEFF
DTLS_1_2 = 0xFEFD
DTLS_1_3 = 0xFEFC
DTLS_BAD_VER = 0x0100
VERSIONS = frozenset({DTLS_1_0, DTLS_1_2, DTLS_1_3, DTLS_BAD_VER})

# Handshake message types (RFC 6347 section 4.3.2).
CLIENT_HELLO = 1
SERVER_HELLO = 2
HELLO_VERIFY_REQUEST = 3


@dataclass(frozen=True, slots=True)
class DtlsRecord:
    """The first record of a datagram. ``handshake_type`` is set for clear handshake records
    (content type 22, epoch 0); ``record_count`` is how many whole records the datagram holds."""

    content_type: int
    version: int
    epoch: int
    sequence: int
    length: int
    handshake_type: int | None
    record_count: int

    @property
    def is_client_hello(self) -> bool:
        return self.handshake_type == CLIENT_HELLO

    @property
    def is_server_hello(self) -> bool:
        return self.handshake_type == SERVER_HELLO


def parse_dtls(data: bytes) -> DtlsRecord | None:
    """Parse the first DTLS record header of a datagram, or None if it is not one."""
    first = _record_header(data, 0)
    if first is None:
        return None
    handshake_type = None
    body = RECORD_HEADER_LEN
    if first.content_type == HANDSHAKE and first.epoch == 0 and first.length > 0:
        handshake_type = data[body]
    record_count = 1
    pos = body + first.length
    while record_count < MAX_RECORDS:
        following = _record_header(data, pos)
        if following is None:
            break
        pos += RECORD_HEADER_LEN + following.length
        record_count += 1
    return DtlsRecord(first.content_type, first.version, first.epoch,
                      int.from_bytes(first.sequence, "big"), first.length, handshake_type, record_count)


def _record_header(data: bytes, pos: int):
    hdr = RECORD.unpack(data, pos)
    if (
        hdr is None
        or hdr.content_type not in CONTENT_TYPES
        or hdr.version not in VERSIONS
        or pos + RECORD_HEADER_LEN + hdr.length > len(data)
    ):
        return None
    return hdr
