"""TLS ClientHello/ServerHello built from RFC 8446 4.1.2-4.1.3 layouts, cross-checked with dpkt,
split across records and cut short, and fuzzed."""
import struct

from hypothesis import given, strategies as st

from throttledetect.wire import tls


def ext(ext_type: int, body: bytes) -> bytes:
    return struct.pack("!HH", ext_type, len(body)) + body


def sni_ext(name: bytes) -> bytes:
    entry = struct.pack("!BH", 0, len(name)) + name
    return ext(tls.EXT_SERVER_NAME, struct.pack("!H", len(entry)) + entry)


def alpn_ext(names) -> bytes:
    body = b"".join(bytes([len(n)]) + n for n in names)
    return ext(tls.EXT_ALPN, struct.pack("!H", len(body)) + body)


def versions_ext(versions) -> bytes:
    return ext(tls.EXT_SUPPORTED_VERSIONS, bytes([2 * len(versions)]) + b"".join(struct.pack("!H", v) for v in versions))


def handshake(msg_type: int, body: bytes) -> bytes:
    return bytes([msg_type]) + len(body).to_bytes(3, "big") + body


def client_hello_message(sni=b"example.com", alpn=(b"h2", b"http/1.1"), versions=(0x0304, 0x0303),
                         ciphers=(0x1301, 0x1302, 0xC02B), session_id=b"\x55" * 32) -> bytes:
    extensions = ext(0x000A, b"\x00\x02\x00\x1d") + sni_ext(sni) + alpn_ext(alpn) + versions_ext(versions)
    body = (struct.pack("!H", 0x0303) + b"\xaa" * 32 + bytes([len(session_id)]) + session_id
            + struct.pack("!H", 2 * len(ciphers)) + b"".join(struct.pack("!H", c) for c in ciphers)
            + b"\x01\x00" + struct.pack("!H", len(extensions)) + extensions)
    return handshake(tls.CLIENT_HELLO, body)


def hello_body(extensions: bytes) -> bytes:
    """A minimal hello body: version, random, empty session id, one cipher, null compression."""
    return (struct.pack("!H", 0x0303) + bytes(32) + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00"
            + struct.pack("!H", len(extensions)) + extensions)


def records(message: bytes, sizes=None, version=0x0301) -> bytes:
    """Wrap a handshake message in records, split at the given fragment sizes."""
    sizes = sizes or [len(message)]
    out, pos = b"", 0
    for size in sizes:
        chunk = message[pos:pos + size]
        out += struct.pack("!BHH", tls.HANDSHAKE, version, len(chunk)) + chunk
        pos += size
    return out


def test_client_hello_fields():
    hello = tls.parse_client_hello(records(client_hello_message()))
    assert hello.sni == "example.com" and hello.alpn == ("h2", "http/1.1")
    assert hello.supported_versions == (0x0304, 0x0303)
    assert (hello.record_version, hello.legacy_version, hello.cipher_count) == (0x0301, 0x0303, 3)
    assert hello.extension_types == (0x000A, 0, 16, 43) and not hello.truncated


def test_split_across_records():
    message = client_hello_message()
    hello = tls.parse_client_hello(records(message, [50, 30, len(message) - 80]))
    assert hello.sni == "example.com" and hello.alpn == ("h2", "http/1.1") and not hello.truncated


def test_cut_short_keeps_what_it_read():
    message = client_hello_message()
    whole = records(message)
    sni_end = whole.index(b"example.com") + len(b"example.com")
    hello = tls.parse_client_hello(whole[:sni_end + 3])
    assert hello.truncated and hello.sni == "example.com" and hello.alpn == ()
    hello = tls.parse_client_hello(whole[:60])
    assert hello.truncated and hello.sni is None and hello.legacy_version == 0x0303
    # The first record declares more than the segment holds: the rest is in the next segment.
    hello = tls.parse_client_hello(records(message, [len(message) - 10, 10])[:len(message)])
    assert hello.truncated and hello.sni == "example.com"


def test_not_a_client_hello():
    assert tls.parse_client_hello(b"\x17\x03\x03\x00\x05hello") is None
    assert tls.parse_client_hello(records(handshake(tls.SERVER_HELLO, b"\x03\x03"))) is None
    assert tls.parse_client_hello(b"GET / HTTP/1.1\r\n") is None
    assert tls.parse_tls_record(b"\x16\x03\x05\x00\x10") is None


def test_server_hello():
    extensions = ext(tls.EXT_SUPPORTED_VERSIONS, b"\x03\x04") + alpn_ext([b"h2"])
    body = (struct.pack("!H", 0x0303) + b"\x01" * 32 + b"\x00" + struct.pack("!H", 0x1301) + b"\x00"
            + struct.pack("!H", len(extensions)) + extensions)
    hello = tls.parse_server_hello(records(handshake(tls.SERVER_HELLO, body), version=0x0303))
    assert (hello.cipher_suite, hello.selected_version, hello.alpn) == (0x1301, 0x0304, "h2")
    assert not hello.is_hello_retry and not hello.truncated
    retry = body[:2] + tls.HELLO_RETRY_RANDOM + body[34:]
    assert tls.parse_server_hello(records(handshake(tls.SERVER_HELLO, retry))).is_hello_retry
    assert tls.parse_server_hello(records(client_hello_message())) is None


def test_bare_handshake_message_as_in_quic_crypto_frames():
    hello = tls.parse_client_hello_message(client_hello_message(sni=b"www.google.com"))
    assert hello.sni == "www.google.com" and hello.record_version is None


def test_matches_dpkt():
    import dpkt

    data = records(client_hello_message(sni=b"signal.org"))
    ref = dpkt.ssl.TLSRecord(data)
    ref_hello = dpkt.ssl.TLSHandshake(ref.data).data
    hello = tls.parse_client_hello(data)
    assert hello.cipher_count == len(ref_hello.ciphersuites)
    assert list(hello.extension_types) == [t for t, _ in ref_hello.extensions]
    sni_body = dict(ref_hello.extensions)[0]
    assert sni_body.endswith(hello.sni.encode())


def test_extension_cap():
    many = b"".join(ext(0xFF00 + i % 200, b"") for i in range(tls.MAX_EXTENSIONS + 20))
    body = hello_body(many)
    hello = tls.parse_client_hello(records(handshake(tls.CLIENT_HELLO, body)))
    assert len(hello.extension_types) == tls.MAX_EXTENSIONS


@given(st.binary(max_size=400))
def test_never_raises(data):
    tls.parse_client_hello(data)
    tls.parse_server_hello(data)
    tls.parse_tls_record(data)
    tls.parse_client_hello_message(b"\x01" + data)


@given(st.binary(max_size=300))
def test_any_extension_bytes_never_raise(extensions):
    body = hello_body(extensions)
    tls.parse_client_hello(records(handshake(tls.CLIENT_HELLO, body)))
    tls.parse_server_hello(records(handshake(tls.SERVER_HELLO, body)))


@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-.", min_size=1, max_size=60),
       st.lists(st.binary(min_size=1, max_size=10).filter(lambda b: b.isascii()), max_size=4),
       st.lists(st.integers(1, 20), min_size=1, max_size=5))
def test_round_trip_and_any_split(sni, alpn, cuts):
    message = client_hello_message(sni=sni.encode(), alpn=alpn)
    sizes, left = [], len(message)
    for cut in cuts:
        size = min(cut * 7, left)
        if size:
            sizes.append(size)
            left -= size
    if left:
        sizes.append(left)
    hello = tls.parse_client_hello(records(message, sizes))
    assert hello.sni == sni and hello.alpn == tuple(a.decode() for a in alpn) and not hello.truncated
