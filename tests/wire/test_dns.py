"""DNS messages built by hand (RFC 1035 4.1) and by dpkt (which compresses names), pointer loops,
and fuzzing."""
import struct

from hypothesis import example, given, strategies as st

from throttledetect.wire import dns


def name(text: str) -> bytes:
    return b"".join(bytes([len(label)]) + label.encode() for label in text.split(".") if label) + b"\x00"


def header(ident=0x1234, flags=0x8180, qd=1, an=0, ns=0, ar=0) -> bytes:
    return struct.pack("!HHHHHH", ident, flags, qd, an, ns, ar)


def test_response_with_compressed_cname_chain():
    # Question at offset 12; answers point back at it (0xC00C) and at the CNAME target.
    question = name("www.example.com") + struct.pack("!HH", dns.A, 1)
    cname_target_at = 12 + len(question) + 12   # after the answer's name ptr(2)+type..rdlength(10)
    cname_rdata = b"\x03cdn" + b"\xc0\x10"       # "cdn" + pointer to "example.com" (offset 16)
    answers = (b"\xc0\x0c" + struct.pack("!HHIH", dns.CNAME, 1, 300, len(cname_rdata)) + cname_rdata
               + struct.pack("!H", 0xC000 | cname_target_at) + struct.pack("!HHIH", dns.A, 1, 60, 4) + bytes([192, 0, 2, 7]))
    msg = dns.parse_dns(header(an=2) + question + answers)
    assert msg.is_response and msg.id == 0x1234 and msg.rcode == 0 and msg.opcode == 0
    assert msg.qname == "www.example.com" and msg.questions[0].qtype == dns.A
    cname, a = msg.answers
    assert (cname.name, cname.rtype, cname.ttl, cname.value) == ("www.example.com", dns.CNAME, 300, "cdn.example.com")
    assert (a.name, a.value) == ("cdn.example.com", "192.0.2.7")
    assert msg.addresses() == ("192.0.2.7",) and not msg.truncated


def test_matches_dpkt_built_message():
    import dpkt

    ref = dpkt.dns.DNS(id=7, qr=dpkt.dns.DNS_R, op=dpkt.dns.DNS_RA)
    ref.qd = [dpkt.dns.DNS.Q(name="signal.org", type=dns.AAAA)]
    ref.an = [
        dpkt.dns.DNS.RR(name="signal.org", type=dns.AAAA, ttl=30, ip6=bytes.fromhex("20010db8000000000000000000000001")),
        dpkt.dns.DNS.RR(name="signal.org", type=dns.A, ttl=30, ip=bytes([198, 51, 100, 2])),
    ]
    data = bytes(ref)
    assert b"\xc0\x0c" in data                   # dpkt compressed the repeated name
    msg = dns.parse_dns(data)
    assert msg.qname == "signal.org"
    assert [(r.name, r.rtype, r.value) for r in msg.answers] == [
        ("signal.org", dns.AAAA, "2001:db8::1"), ("signal.org", dns.A, "198.51.100.2")]
    back = dpkt.dns.DNS(data)
    assert msg.id == back.id and msg.flags == struct.unpack("!H", data[2:4])[0]


def test_tcp_length_prefix():
    data = header(flags=0x0100) + name("example.org") + struct.pack("!HH", dns.A, 1)
    msg = dns.parse_dns(struct.pack("!H", len(data)) + data, tcp=True)
    assert msg.qname == "example.org" and not msg.is_response


def test_pointer_loops_end():
    # A name that points at itself, and two names that point at each other.
    assert dns.read_name(header() + b"\xc0\x0c", 12) == (None, 12)
    data = header() + b"\xc0\x0e" + b"\xc0\x0c"
    assert dns.read_name(data, 12)[0] is None
    looped = header() + b"\x01a\xc0\x0c" + struct.pack("!HH", 1, 1)
    assert dns.parse_dns(looped) is None


def test_pointer_jump_cap():
    # 20 pointers in a chain: more jumps than any real name needs.
    data = bytearray(header())
    for i in range(20):
        data += struct.pack("!H", 0xC000 | (len(data) + 2))
    data += b"\x01x\x00"
    assert dns.read_name(bytes(data), 12)[0] is None
    assert dns.read_name(bytes(data), 12 + 2 * 8)[0] == "x"     # 12 jumps: fine


def test_malformed_answers_are_truncated_not_fatal():
    question = name("a.b") + struct.pack("!HH", dns.A, 1)
    answer = b"\xc0\x0c" + struct.pack("!HHIH", dns.A, 1, 1, 4) + b"\x01\x02"   # rdata cut
    msg = dns.parse_dns(header(an=2) + question + answer)
    assert msg.answers == () and msg.truncated


def test_rejects():
    assert dns.parse_dns(b"\x00" * 11) is None
    assert dns.parse_dns(header(qd=1)) is None                          # question missing
    assert dns.parse_dns(header(qd=1) + b"\x05ab") is None              # label overruns
    assert dns.parse_dns(header(qd=1) + b"\x41abc\x00" + bytes(4)) is None   # 0x40 label type
    long_name = b"\x3f" + b"a" * 63
    assert dns.parse_dns(header() + long_name * 5 + b"\x00" + bytes(4)) is None   # > 255 bytes


@given(st.binary(max_size=300), st.booleans())
def test_never_raises(data, tcp):
    dns.parse_dns(data, tcp=tcp)


@given(st.binary(max_size=200))
def test_never_raises_after_valid_header(body):
    msg = dns.parse_dns(header(qd=1, an=5) + body)
    if msg is not None:
        msg.addresses()


label = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=20)


@given(st.lists(label, min_size=1, max_size=6), st.integers(0, 0xFFFF),
       st.lists(st.binary(min_size=4, max_size=4), max_size=5))
def test_round_trip(labels, ident, addresses):
    qname = ".".join(labels)
    answers = b"".join(b"\xc0\x0c" + struct.pack("!HHIH", dns.A, 1, 5, 4) + a for a in addresses)
    msg = dns.parse_dns(header(ident=ident, an=len(addresses)) + name(qname) + struct.pack("!HH", dns.A, 1) + answers)
    assert msg.id == ident and msg.qname == qname
    assert [r.name for r in msg.answers] == [qname] * len(addresses)
    assert msg.addresses() == tuple(".".join(str(b) for b in a) for a in addresses)


def _parse_without_memo(data, monkeypatch):
    plain = dns.read_name
    with monkeypatch.context() as m:
        m.setattr(dns, "read_name", lambda d, p, memo=None: plain(d, p))
        return dns.parse_dns(data)


@given(st.lists(label, min_size=1, max_size=6), st.integers(1, 256), st.binary(max_size=120),
       st.lists(st.integers(0, 255), min_size=0, max_size=6))
@example(["abcdefghij"], 250, b"", [])          # "x." + the question's name is one byte too long
@example(["a"], 253, b"", [])                  # 127 one-letter labels: "x." makes the name 255 bytes, at the cap
def test_name_memo_changes_nothing(labels, length, tail, pokes):
    """The per-message memo of decoded names (an answer's name pointing at the question's) gives
    what decoding every name label by label gives, caps included: long names near 255 bytes,
    many labels, answers pointing into the middle of a name, and bytes overwritten at random."""
    import pytest
    qname = ".".join(labels * 300)[:length].strip(".").replace("..", ".")
    answers = b"".join(b"\xc0\x0c" + struct.pack("!HHIH", t, 1, 5, len(r)) + r
                       for t, r in ((dns.A, bytes(4)), (dns.CNAME, b"\x01x\xc0\x0c"), (dns.CNAME, b"\xc0\x0e")))
    msg = bytearray(header(an=4) + name(qname) + struct.pack("!HH", dns.A, 1) + answers + tail)
    for i, p in enumerate(pokes):
        msg[(p * 7 + i * 13) % len(msg)] = p
    mp = pytest.MonkeyPatch()
    try:
        assert dns.parse_dns(bytes(msg)) == _parse_without_memo(bytes(msg), mp)
    finally:
        mp.undo()
