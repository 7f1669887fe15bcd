"""STUN/TURN parsing: messages built by hand from RFC 8489 / RFC 8656 layouts, cross-checked
with scapy's STUN layer, and fuzzed."""
import ipaddress
import struct

from hypothesis import given, strategies as st

from throttledetect.wire import stun

COOKIE = 0x2112A442
TXID = bytes.fromhex("b7e7a701bc34d686fa87dfae")  # the transaction id of RFC 5769's vectors


def attr(attr_type: int, value: bytes) -> bytes:
    """One TLV, padded to 4 bytes (RFC 8489 section 14)."""
    pad = b"\x00" * (-len(value) % 4)
    return struct.pack("!HH", attr_type, len(value)) + value + pad


def message(msg_type: int, attrs: bytes = b"", cookie: int = COOKIE, txid: bytes = TXID) -> bytes:
    return struct.pack("!HHI", msg_type, len(attrs), cookie) + txid + attrs


def xor_address_v4(ip: str, port: int) -> bytes:
    raw = struct.unpack("!I", ipaddress.IPv4Address(ip).packed)[0] ^ COOKIE
    return struct.pack("!BBHI", 0, 1, port ^ (COOKIE >> 16), raw)


def test_binding_request_fields():
    data = message(0x0001, attr(stun.USERNAME, b"abcd:efgh") + attr(stun.PRIORITY, b"\x6e\x7f\x1e\xff")
                   + attr(stun.SOFTWARE, b"libjingle"))
    msg = stun.parse_stun(data)
    assert msg is not None
    assert (msg.msg_type, msg.method, msg.cls) == (0x0001, stun.BINDING, stun.CLASS_REQUEST)
    assert msg.cookie_ok and msg.txid == TXID
    assert [t for t, _ in msg.attributes] == [stun.USERNAME, stun.PRIORITY, stun.SOFTWARE]
    assert msg.username == "abcd:efgh" and msg.software == "libjingle"
    assert msg.attribute(stun.PRIORITY) == b"\x6e\x7f\x1e\xff"
    assert msg.size == len(data) and msg.offset == 0


def test_method_and_class_split():
    # RFC 8489 figure 3 interleaves the class bits C1 (0x0100) and C0 (0x0010).
    assert stun.split_message_type(0x0101) == (stun.BINDING, stun.CLASS_SUCCESS)
    assert stun.split_message_type(0x0113) == (stun.ALLOCATE, stun.CLASS_ERROR)
    assert stun.split_message_type(0x0017) == (stun.DATA, stun.CLASS_INDICATION)
    assert stun.split_message_type(0x0009) == (stun.CHANNEL_BIND, stun.CLASS_REQUEST)


def test_rfc5769_ipv4_xor_mapped_address():
    # RFC 5769 2.2: XOR-MAPPED-ADDRESS 192.0.2.1:32853 encodes as port a147, address e112a643.
    value = bytes.fromhex("0001a147e112a643")
    msg = stun.parse_stun(message(0x0101, attr(stun.SOFTWARE, b"test vector ") + attr(stun.XOR_MAPPED_ADDRESS, value)))
    assert msg.xor_mapped_address == ("192.0.2.1", 32853)
    assert msg.software == "test vector "


def test_xor_addresses_match_scapy_ipv4_and_ipv6():
    from scapy.contrib.stun import STUN, STUNXorMappedAddress

    txid = int.from_bytes(TXID, "big")
    for family, ip in ((1, "203.0.113.7"), (2, "2001:db8:1234:5678:11:2233:4455:6677")):
        built = bytes(STUN(stun_message_type=0x0101, transaction_id=txid,
                           attributes=[STUNXorMappedAddress(address_family=family, xport=32853, xip=ip)]))
        msg = stun.parse_stun(built)
        assert msg.xor_mapped_address == (ip, 32853)


def test_turn_addresses_realm_and_is_turn():
    data = message(0x0103, attr(stun.XOR_RELAYED_ADDRESS, xor_address_v4("198.51.100.9", 50000))
                   + attr(stun.XOR_MAPPED_ADDRESS, xor_address_v4("192.0.2.44", 61000))
                   + attr(stun.REALM, b"turn.example.org"))
    msg = stun.parse_stun(data)
    assert msg.is_turn and msg.cls == stun.CLASS_SUCCESS
    assert msg.xor_relayed_address == ("198.51.100.9", 50000)
    assert msg.xor_mapped_address == ("192.0.2.44", 61000)
    assert msg.realm == "turn.example.org"


def test_create_permission_with_several_peers():
    peers = [("192.0.2.1", 1000), ("192.0.2.2", 2000)]
    data = message(0x0008, b"".join(attr(stun.XOR_PEER_ADDRESS, xor_address_v4(*p)) for p in peers))
    msg = stun.parse_stun(data)
    assert msg.xor_peer_addresses == tuple(peers)
    assert msg.xor_peer_address == peers[0]


def test_plain_mapped_address():
    value = struct.pack("!BBH", 0, 1, 3478) + ipaddress.IPv4Address("10.1.2.3").packed
    msg = stun.parse_stun(message(0x0101, attr(stun.MAPPED_ADDRESS, value)))
    assert msg.mapped_address == ("10.1.2.3", 3478)


def test_length_must_match_udp_payload():
    data = message(0x0001, attr(stun.PRIORITY, b"\x00\x00\x00\x01"))
    assert stun.parse_stun(data + b"\x00") is None
    assert stun.parse_stun(data[:-1]) is None


def test_type_rules():
    assert stun.parse_stun(message(0x0000)) is None
    assert stun.parse_stun(message(0x8001)) is None       # top bits set: RTP/RTCP range
    assert stun.parse_stun(message(0x0020)) is None       # method 0x10 is not a STUN/TURN method
    for wa_type in (0x0800, 0x0801, 0x0802, 0x0804, 0x0805):
        msg = stun.parse_stun(message(wa_type))
        assert msg is not None and msg.is_whatsapp_type
    assert stun.parse_stun(message(0x0803)) is None


def test_classic_stun_needs_known_type_and_exact_tlv_list():
    txid16 = bytes(range(16))
    body = attr(stun.CHANGE_REQUEST, b"\x00\x00\x00\x00")
    data = struct.pack("!HH", 0x0001, len(body)) + txid16 + body
    msg = stun.parse_stun(data)
    assert msg is not None and not msg.cookie_ok and msg.txid == txid16
    # Same bytes, type not in the classic list: no cookie, no belief.
    assert stun.parse_stun(struct.pack("!HH", 0x0009, len(body)) + txid16 + body) is None
    # A TLV list that overruns the message end.
    bad = struct.pack("!HH", 0x0001, 8) + txid16 + struct.pack("!HH", 3, 8) + b"\x00" * 4
    assert stun.parse_stun(bad) is None


def test_classic_xor_key_is_the_16_byte_id():
    txid16 = bytes(range(16))
    ip = ipaddress.IPv4Address("192.0.2.1").packed
    value = struct.pack("!BBH", 0, 1, 1234 ^ 0x0001) + bytes(a ^ b for a, b in zip(ip, txid16))
    body = attr(stun.XOR_MAPPED_ADDRESS, value)
    msg = stun.parse_stun(struct.pack("!HH", 0x0101, len(body)) + txid16 + body)
    assert msg.xor_mapped_address == ("192.0.2.1", 1234)


def test_tcp_rfc4571_framing_and_bare_stream():
    data = message(0x0001, attr(stun.USERNAME, b"user"))
    framed = struct.pack("!H", len(data)) + data
    msg = stun.parse_stun(framed, tcp=True)
    assert msg is not None and msg.offset == 2 and msg.username == "user"
    # Bare TURN-over-TCP message followed by the start of the next one.
    msg = stun.parse_stun(data + b"\x00\x01", tcp=True)
    assert msg is not None and msg.offset == 0 and msg.size == len(data)
    # The cookie is mandatory over TCP.
    classic = struct.pack("!HH", 0x0001, 0) + bytes(16)
    assert stun.parse_stun(classic, tcp=True) is None
    assert stun.parse_stun(data[:-1], tcp=True) is None


def test_attribute_cap():
    many = b"".join(attr(0x8000 + i, b"") for i in range(stun.MAX_ATTRIBUTES + 10))
    msg = stun.parse_stun(message(0x0001, many))
    assert len(msg.attributes) == stun.MAX_ATTRIBUTES


def test_channel_data():
    inner = bytes.fromhex("80780001") + bytes(20)
    data = struct.pack("!HH", 0x4001, len(inner)) + inner
    chan = stun.parse_channel_data(data)
    assert chan == stun.ChannelData(0x4001, len(inner), inner)
    assert stun.parse_channel_data(data + b"\x00\x00\x00") is not None   # UDP padding allowed
    assert stun.parse_channel_data(data + b"\x00" * 4) is None
    assert stun.parse_channel_data(data + b"\x00" * 4, tcp=True) is not None
    assert stun.parse_channel_data(struct.pack("!HH", 0x5000, 0)) is None
    assert stun.parse_channel_data(struct.pack("!HH", 0x4000, 9) + b"\x00" * 8) is None


def test_ms_turn():
    inner = message(0x0001)
    session = bytes.fromhex("0102030405060708")
    data = struct.pack("!HH", 0xFF10, len(inner) + 8) + session + inner
    frame = stun.parse_ms_turn(data)
    assert frame.session_id == session and frame.payload == inner
    assert stun.parse_stun(frame.payload) is not None
    assert stun.parse_ms_turn(data + b"\x00") is None
    assert stun.parse_ms_turn(b"\xff\x11" + data[2:]) is None


def test_matches_dpkt_header_and_attributes():
    import dpkt

    data = message(0x0101, attr(stun.SOFTWARE, b"abc") + attr(stun.XOR_MAPPED_ADDRESS, xor_address_v4("192.0.2.1", 9)))
    ref = dpkt.stun.STUN(data)
    msg = stun.parse_stun(data)
    assert msg.msg_type == ref.type
    assert list(msg.attributes) == [(t, v) for t, v in dpkt.stun.parse_attrs(ref.data)]


@given(st.binary(max_size=600), st.booleans())
def test_never_raises(data, tcp):
    msg = stun.parse_stun(data, tcp=tcp)
    if msg is not None:
        # Touch every derived field: none may raise either.
        (msg.mapped_address, msg.xor_mapped_address, msg.xor_relayed_address, msg.xor_peer_addresses,
         msg.realm, msg.software, msg.username, msg.is_turn)
    stun.parse_channel_data(data, tcp=tcp)
    stun.parse_ms_turn(data)


@given(
    st.sampled_from([0x0001, 0x0101, 0x0111, 0x0003, 0x0103, 0x0113, 0x0016, 0x0017, 0x0800]),
    st.binary(min_size=12, max_size=12),
    st.lists(st.tuples(st.integers(0, 0xFFFF), st.binary(max_size=40)), max_size=10),
)
def test_round_trip(msg_type, txid, attrs):
    data = message(msg_type, b"".join(attr(t, v) for t, v in attrs), txid=txid)
    msg = stun.parse_stun(data)
    assert msg is not None
    assert msg.msg_type == msg_type and msg.txid == txid
    assert list(msg.attributes) == attrs


@given(st.binary(min_size=12, max_size=12), st.lists(st.binary(max_size=64), max_size=8))
def test_arbitrary_attribute_values_in_valid_header(txid, values):
    body = b"".join(attr(stun.XOR_MAPPED_ADDRESS if i % 2 else stun.MAPPED_ADDRESS, v) for i, v in enumerate(values))
    msg = stun.parse_stun(message(0x0101, body, txid=txid))
    assert msg is not None
    msg.mapped_address, msg.xor_mapped_address
