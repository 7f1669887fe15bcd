"""DTLS record headers built from the RFC 6347 4.1 layout, and fuzzed."""
import struct

from hypothesis import given, strategies as st

from throttledetect.wire import dtls


def record(content_type=22, version=0xFEFD, epoch=0, seq=0, body=b"") -> bytes:
    """type(1) version(2) epoch(2) sequence_number(6) length(2) fragment."""
    return struct.pack("!BHH", content_type, version, epoch) + seq.to_bytes(6, "big") + struct.pack("!H", len(body)) + body


def handshake(msg_type: int, body: bytes = b"\x00" * 10) -> bytes:
    """RFC 6347 4.2.2: type(1) length(3) message_seq(2) fragment_offset(3) fragment_length(3)."""
    n = len(body).to_bytes(3, "big")
    return bytes([msg_type]) + n + b"\x00\x00" + b"\x00\x00\x00" + n + body


def test_client_hello():
    rec = dtls.parse_dtls(record(body=handshake(dtls.CLIENT_HELLO)))
    assert rec.is_client_hello and not rec.is_server_hello
    assert (rec.content_type, rec.version, rec.epoch, rec.record_count) == (22, 0xFEFD, 0, 1)


def test_server_flight_counts_records():
    flight = (record(body=handshake(dtls.SERVER_HELLO), seq=1) + record(body=handshake(11), seq=2)
              + record(content_type=20, body=b"\x01", seq=3))
    rec = dtls.parse_dtls(flight)
    assert rec.is_server_hello and rec.record_count == 3 and rec.sequence == 1


def test_encrypted_records_have_no_handshake_type():
    rec = dtls.parse_dtls(record(content_type=23, epoch=1, seq=5, body=b"\x99" * 40))
    assert rec.handshake_type is None and rec.epoch == 1 and rec.length == 40
    rec = dtls.parse_dtls(record(content_type=22, epoch=1, body=b"\x01" * 40))  # encrypted Finished
    assert rec.handshake_type is None


def test_versions_and_rejects():
    for version in (0xFEFF, 0xFEFD, 0xFEFC, 0x0100):
        assert dtls.parse_dtls(record(version=version, body=b"\x01")) is not None
    assert dtls.parse_dtls(record(version=0x0303, body=b"\x01")) is None       # TLS, not DTLS
    assert dtls.parse_dtls(record(content_type=19, body=b"\x01")) is None
    assert dtls.parse_dtls(record(body=b"\x01\x02")[:-1]) is None               # length overruns
    assert dtls.parse_dtls(b"\x16\xfe\xfd") is None


def test_record_cap():
    many = record(content_type=23, body=b"") * (dtls.MAX_RECORDS + 10)
    assert dtls.parse_dtls(many).record_count == dtls.MAX_RECORDS


@given(st.binary(max_size=200))
def test_never_raises(data):
    dtls.parse_dtls(data)


@given(st.sampled_from(sorted(dtls.CONTENT_TYPES)), st.sampled_from(sorted(dtls.VERSIONS)),
       st.integers(0, 0xFFFF), st.integers(0, 2**48 - 1), st.binary(max_size=64))
def test_round_trip(content_type, version, epoch, seq, body):
    rec = dtls.parse_dtls(record(content_type, version, epoch, seq, body))
    assert (rec.content_type, rec.version, rec.epoch, rec.sequence, rec.length) == (
        content_type, version, epoch, seq, len(body))
