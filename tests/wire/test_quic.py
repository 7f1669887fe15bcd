"""QUIC long headers (RFC 9000 17.2, RFC 9369), built by hand and by scapy; gQUIC versions."""
import struct

from hypothesis import given, strategies as st

from throttledetect.wire import quic


def varint(value: int) -> bytes:
    """RFC 9000 16: 2-bit length prefix."""
    for size, prefix in ((1, 0x00), (2, 0x40), (4, 0x80), (8, 0xC0)):
        if value < 1 << (8 * size - 2):
            return (value | (prefix << (8 * size - 8))).to_bytes(size, "big")
    raise ValueError(value)


def long_header(type_bits: int, version=quic.QUIC_V1, dcid=b"\x11" * 8, scid=b"\x22" * 4, token=b"", length=1162,
                initial=True) -> bytes:
    first = 0x80 | 0x40 | (type_bits << 4) | 0x03
    out = struct.pack("!BI", first, version) + bytes([len(dcid)]) + dcid + bytes([len(scid)]) + scid
    if initial:
        out += varint(len(token)) + token
    return out + varint(length) + b"\x00\x00\x00\x01" + b"\xee" * 40


def test_v1_initial():
    header = quic.parse_quic_long_header(long_header(0, token=b"tok"))
    assert (header.version, header.packet_type, header.dcid, header.scid) == (1, quic.INITIAL, b"\x11" * 8, b"\x22" * 4)
    assert header.token == b"tok" and header.length == 1162 and header.version_name == "v1"
    assert quic.is_quic_initial(long_header(0))


def test_v1_handshake_and_v2_type_rotation():
    handshake = quic.parse_quic_long_header(long_header(2, initial=False, length=70))
    assert handshake.packet_type == quic.HANDSHAKE and handshake.token is None and handshake.length == 70
    # QUIC v2 numbers Initial as 1 (RFC 9369 3.2).
    v2_initial = long_header(1, version=quic.QUIC_V2)
    assert quic.parse_quic_long_header(v2_initial).packet_type == quic.INITIAL
    assert not quic.is_quic_initial(long_header(0, version=quic.QUIC_V2, initial=False))


def test_matches_scapy():
    from scapy.layers.quic import QUIC_Initial

    built = bytes(QUIC_Initial(Version=1, DstConnID=b"\xab" * 8, SrcConnID=b"\xcd" * 5, Token=b"xyz",
                               Length=300, PacketNumber=1))
    header = quic.parse_quic_long_header(built)
    ref = QUIC_Initial(built)
    assert (header.dcid, header.scid, header.token, header.length) == (ref.DstConnID, ref.SrcConnID, ref.Token, ref.Length)


def test_version_negotiation_and_unknown_versions():
    vn = struct.pack("!BI", 0x80, 0) + b"\x04abcd\x00" + struct.pack("!II", 1, 0x6B3343CF)
    header = quic.parse_quic_long_header(vn)
    assert header.version == 0 and header.packet_type is None and header.dcid == b"abcd"
    # Unknown versions are not believed: RTP headers would pass for them.
    assert quic.parse_quic_long_header(long_header(0, version=0x1A2A3A4A)) is None
    assert quic.parse_quic_long_header(bytes.fromhex("90780001") + bytes(40)) is None
    assert quic.version_name(0x1A2A3A4A) == "0x1a2a3a4a"
    assert quic.version_name(0xFF00001D) == "draft-29"
    assert quic.parse_quic_long_header(long_header(0, version=0xFACEB002)).version_name == "mvfst-2"


def test_rejects():
    assert quic.parse_quic_long_header(b"\x40" + bytes(30)) is None          # short header
    assert quic.parse_quic_long_header(long_header(0)[:7]) is None           # CIDs cut
    assert quic.parse_quic_long_header(long_header(0, dcid=b"\x00" * 21)) is None   # v1 caps CIDs at 20
    no_fixed_bit = bytes([long_header(0)[0] & ~0x40]) + long_header(0)[1:]
    assert quic.parse_quic_long_header(no_fixed_bit) is None
    assert not quic.is_quic_initial(b"")


def test_gquic_public_header_and_long_header():
    # Pre-Q046 public header, as in nDPI's quic.pcap: flags 0x0d, 8-byte CID, "Q024".
    old = bytes.fromhex("0db2de5df14f5545eb51303234013b6e")
    assert quic.gquic_version(old) == "Q024"
    # Q046: IETF-style long header with both CID lengths in one byte (8 -> nibble 5).
    q046 = struct.pack("!B4s", 0xC3, b"Q046") + b"\x50" + b"\x77" * 8 + b"\x00" * 30
    header = quic.parse_quic_long_header(q046)
    assert header.is_gquic and header.version_name == "Q046" and header.dcid == b"\x77" * 8 and header.scid == b""
    assert header.packet_type == quic.INITIAL and quic.gquic_version(q046) == "Q046"
    t051 = long_header(0, version=int.from_bytes(b"T051", "big"))
    assert quic.parse_quic_long_header(t051).version_name == "T051"
    assert quic.gquic_version(long_header(0)) is None
    assert quic.gquic_version_string(int.from_bytes(b"Qabc", "big")) is None


def test_varint():
    for value in (0, 63, 64, 16383, 16384, 2**30 - 1, 2**30, 2**62 - 1):
        assert quic.read_varint(varint(value), 0) == (value, len(varint(value)))
    assert quic.read_varint(b"\x80\x00", 0) == (None, 0)


@given(st.binary(max_size=200))
def test_never_raises(data):
    quic.parse_quic_long_header(data)
    quic.is_quic_initial(data)
    quic.gquic_version(data)


@given(st.integers(0, 3), st.binary(max_size=20), st.binary(max_size=20), st.binary(max_size=50), st.integers(0, 2**62 - 1))
def test_round_trip(type_bits, dcid, scid, token, length):
    data = long_header(type_bits, dcid=dcid, scid=scid, token=token, length=length, initial=type_bits == 0)
    header = quic.parse_quic_long_header(data)
    assert (header.dcid, header.scid) == (dcid, scid)
    assert header.packet_type == (quic.INITIAL, quic.ZERO_RTT, quic.HANDSHAKE, quic.RETRY)[type_bits]
    if type_bits == 0:
        assert header.token == token
    if type_bits != 3:
        assert header.length == length
