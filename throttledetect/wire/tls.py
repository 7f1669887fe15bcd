"""TLS records, ClientHello and ServerHello.

RFC 8446 (TLS 1.3) sections 4.1.2-4.1.3 and 5.1 for the layouts (TLS 1.2, RFC 5246, shares
them); RFC 6066 section 3 (server_name), RFC 7301 (ALPN), RFC 8446 4.2.1 (supported_versions).
The SNI of a ClientHello names the service a TCP or QUIC flow talks to: chat and signalling
of call apps are recognised by it.

A ClientHello often spans several records or TCP segments (post-quantum key shares make it
bigger than one segment). ``parse_client_hello`` joins the handshake fragments present in the
bytes it is given and returns what they hold, with ``truncated=True`` when the message goes on
beyond them.
"""
from __future__ import annotations

from dataclasses import dataclass

from throttledetect.wire import Layout

RECORD = Layout("TlsRecordHeader", ("content_type", "B"), ("version", "H"), ("length", "H"))
RECORD_HEADER_LEN = RECORD.size     # 5
MAX_RECORD_LEN = (1 << 14) + 2048   # RFC 8446 5.2: TLSCiphertext fragment limit
MAX_RECORDS = 64
MAX_EXTENSIONS = 64
MAX_LIST_ITEMS = 64                 # names, protocols, versions inside one extension

CHANGE_CIPHER_SPEC = 20
ALERT = 21
HANDSHAKE = 22
APPLICATION_DATA = 23
CONTENT_TYPES = frozenset({CHANGE_CIPHER_SPEC, ALERT, HANDSHAKE, APPLICATION_DATA})

# Record versions seen in the wild: SSL 3.0 .. TLS 1.2 (TLS 1.3 keeps writing 0x0303).
SSL_3_0, TLS_1_0, TLS_1_1, TLS_1_2, TLS_1_3 = 0x0300, 0x0301, 0x0302, 0x0303, 0x0304
RECORD_VERSIONS = frozenset({SSL_3_0, TLS_1_0, TLS_1_1, TLS_1_2})

CLIENT_HELLO = 1
SERVER_HELLO = 2
HANDSHAKE_HEADER_LEN = 4            # msg_type(1) length(3)
RANDOM_LEN = 32

# Extensions (IANA "TLS ExtensionType Values").
EXT_SERVER_NAME = 0
EXT_ALPN = 16
EXT_SUPPORTED_VERSIONS = 43
SNI_HOST_NAME = 0

# A ServerHello whose random is this value is a HelloRetryRequest (RFC 8446 4.1.3).
HELLO_RETRY_RANDOM = bytes.fromhex("cf21ad74e59a6111be1d8c021e65b891c2a211167abb8c5e079e09e2c8a8339c")


@dataclass(frozen=True, slots=True)
class TlsRecord:
    content_type: int
    version: int
    length: int


@dataclass(frozen=True, slots=True)
class ClientHello:
    """What a ClientHello says, as far as the given bytes go. ``supported_versions`` lists the
    versions a TLS 1.3 client offers (GREASE values included, as sent)."""

    record_version: int | None  # None when parsed from a bare handshake message (QUIC CRYPTO)
    legacy_version: int | None = None
    cipher_count: int | None = None
    sni: str | None = None
    alpn: tuple[str, ...] = ()
    supported_versions: tuple[int, ...] = ()
    extension_types: tuple[int, ...] = ()
    truncated: bool = False


@dataclass(frozen=True, slots=True)
class ServerHello:
    record_version: int | None
    legacy_version: int | None = None
    cipher_suite: int | None = None
    selected_version: int | None = None
    alpn: str | None = None
    is_hello_retry: bool = False
    truncated: bool = False


def parse_tls_record(data: bytes) -> TlsRecord | None:
    """The first record header, or None if ``data`` does not start with a TLS record."""
    hdr = RECORD.unpack(data)
    if (
        hdr is None
        or hdr.content_type not in CONTENT_TYPES
        or hdr.version not in RECORD_VERSIONS
        or hdr.length == 0
        or hdr.length > MAX_RECORD_LEN
    ):
        return None
    return TlsRecord(hdr.content_type, hdr.version, hdr.length)


def parse_client_hello(data: bytes) -> ClientHello | None:
    """Parse the ClientHello at the start of a TCP payload, or None if there is none."""
    record = parse_tls_record(data)
    if record is None or record.content_type != HANDSHAKE:
        return None
    message, complete = _handshake_bytes(data)
    return parse_client_hello_message(message, record.version, records_complete=complete)


def parse_server_hello(data: bytes) -> ServerHello | None:
    """Parse the ServerHello at the start of a TCP payload, or None if there is none."""
    record = parse_tls_record(data)
    if record is None or record.content_type != HANDSHAKE:
        return None
    message, complete = _handshake_bytes(data)
    if len(message) < 1 or message[0] != SERVER_HELLO:
        return None
    fields = {}
    reader = _Reader(message, HANDSHAKE_HEADER_LEN)
    try:
        fields["legacy_version"] = reader.u16()
        random = reader.take(RANDOM_LEN)
        fields["is_hello_retry"] = random == HELLO_RETRY_RANDOM
        reader.take(reader.u8())                    # legacy_session_id_echo
        fields["cipher_suite"] = reader.u16()
        reader.u8()                                 # legacy_compression_method
        for ext_type, ext in _extensions(reader):
            if ext_type == EXT_SUPPORTED_VERSIONS and len(ext) >= 2:
                fields["selected_version"] = int.from_bytes(ext[:2], "big")
            elif ext_type == EXT_ALPN:
                names = _alpn(ext)
                fields["alpn"] = names[0] if names else None
    except _Truncated:
        fields["truncated"] = True
    if not complete:
        fields["truncated"] = True
    return ServerHello(record.version, **fields)


def parse_client_hello_message(message: bytes, record_version: int | None = None,
                               records_complete: bool = True) -> ClientHello | None:
    """Parse a ClientHello handshake message (type, 3-byte length, body), as carried in TLS
    records or in QUIC CRYPTO frames; None if it is not a ClientHello."""
    if len(message) < 1 or message[0] != CLIENT_HELLO:
        return None
    fields: dict = {}
    reader = _Reader(message, HANDSHAKE_HEADER_LEN)
    extension_types: list[int] = []
    try:
        fields["legacy_version"] = reader.u16()
        reader.take(RANDOM_LEN)
        reader.take(reader.u8())                    # legacy_session_id
        fields["cipher_count"] = reader.u16() // 2
        reader.take(2 * fields["cipher_count"])
        reader.take(reader.u8())                    # legacy_compression_methods
        for ext_type, ext in _extensions(reader, extension_types):
            if ext_type == EXT_SERVER_NAME:
                fields["sni"] = _server_name(ext)
            elif ext_type == EXT_ALPN:
                fields["alpn"] = _alpn(ext)
            elif ext_type == EXT_SUPPORTED_VERSIONS:
                fields["supported_versions"] = _supported_versions(ext)
    except _Truncated:
        fields["truncated"] = True
    if not records_complete:
        fields["truncated"] = True
    return ClientHello(record_version, extension_types=tuple(extension_types), **fields)


class _Truncated(Exception):
    """The bytes ended inside a field: parsing stops and keeps what it has."""


class _Reader:
    """Big-endian cursor over a bytes object that raises _Truncated instead of reading past
    the end, so each parser is written as straight-line code over the RFC layout."""

    __slots__ = ("data", "pos", "end")

    def __init__(self, data: bytes, pos: int = 0, end: int | None = None):
        self.data, self.pos = data, pos
        self.end = len(data) if end is None else min(end, len(data))

    def take(self, n: int) -> bytes:
        if self.pos + n > self.end:
            raise _Truncated
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int.from_bytes(self.take(2), "big")

    def remaining(self) -> int:
        return self.end - self.pos


def _handshake_bytes(data: bytes) -> tuple[bytes, bool]:
    """Concatenate the handshake fragments of the leading records. The flag says whether the
    first handshake message is wholly present."""
    chunks = []
    pos = 0
    for _ in range(MAX_RECORDS):
        hdr = RECORD.unpack(data, pos)
        if hdr is None or hdr.content_type != HANDSHAKE or hdr.version not in RECORD_VERSIONS:
            break
        start = pos + RECORD_HEADER_LEN
        chunks.append(data[start:start + hdr.length])
        pos = start + hdr.length
        if pos >= len(data):
            break
    message = b"".join(chunks)
    if len(message) < HANDSHAKE_HEADER_LEN:
        return message, False
    needed = HANDSHAKE_HEADER_LEN + int.from_bytes(message[1:4], "big")
    return message[:needed], len(message) >= needed


def _extensions(reader: _Reader, types_seen: list[int] | None = None):
    """Yield (type, body) of each extension; a body cut short by the end of the bytes raises
    _Truncated after the whole ones have been yielded."""
    if reader.remaining() == 0:
        return  # a pre-TLS-1.0 hello may end here without an extensions block
    total = reader.u16()
    block = _Reader(reader.data, reader.pos, reader.pos + total)
    cut_short = reader.pos + total > reader.end
    for _ in range(MAX_EXTENSIONS):
        if block.remaining() == 0:
            break
        ext_type = block.u16()
        if types_seen is not None:
            types_seen.append(ext_type)
        yield ext_type, block.take(block.u16())
    if cut_short:
        raise _Truncated


def _server_name(ext: bytes) -> str | None:
    # ServerNameList: list length(2), then entries of name_type(1) length(2) name.
    reader = _Reader(ext)
    try:
        reader.u16()
        for _ in range(MAX_LIST_ITEMS):
            if reader.remaining() == 0:
                break
            name_type = reader.u8()
            name = reader.take(reader.u16())
            if name_type == SNI_HOST_NAME:
                return name.decode("ascii", errors="replace")
    except _Truncated:
        pass
    return None


def _alpn(ext: bytes) -> tuple[str, ...]:
    # ProtocolNameList: list length(2), then entries of length(1) name.
    reader = _Reader(ext)
    names = []
    try:
        reader.u16()
        for _ in range(MAX_LIST_ITEMS):
            if reader.remaining() == 0:
                break
            names.append(reader.take(reader.u8()).decode("ascii", errors="replace"))
    except _Truncated:
        pass
    return tuple(names)


def _supported_versions(ext: bytes) -> tuple[int, ...]:
    # ClientHello form: list length(1), then 2-byte versions.
    reader = _Reader(ext)
    versions = []
    try:
        count = reader.u8() // 2
        for _ in range(min(count, MAX_LIST_ITEMS)):
            versions.append(reader.u16())
    except _Truncated:
        pass
    return tuple(versions)
