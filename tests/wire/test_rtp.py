"""RTP/RTCP parsing: headers built from RFC 3550 layouts, cross-checked with scapy and dpkt,
the vectorised reader checked against the scalar one, and everything fuzzed."""
import struct

import numpy as np
from hypothesis import given, settings, strategies as st

from throttledetect.wire import rtp


def rtp_packet(pt=111, seq=1000, ts=160000, ssrc=0x11223344, marker=False, csrcs=(), ext=None,
               payload=b"\x01" * 20, padding=0) -> bytes:
    """RFC 3550 5.1: V=2 P X CC | M PT | seq | ts | ssrc | csrc... | [ext] | payload | [padding]."""
    b0 = 0x80 | (0x20 if padding else 0) | (0x10 if ext is not None else 0) | len(csrcs)
    b1 = (0x80 if marker else 0) | pt
    head = struct.pack("!BBHII", b0, b1, seq, ts, ssrc) + b"".join(struct.pack("!I", c) for c in csrcs)
    if ext is not None:
        profile, words = ext
        head += struct.pack("!HH", profile, len(words) // 4) + words
    pad = (b"\x00" * (padding - 1) + bytes([padding])) if padding else b""
    return head + payload + pad


def report_block(ssrc, fraction, lost, highest, jitter, lsr=0, dlsr=0) -> bytes:
    return struct.pack("!IIIIII", ssrc, (fraction << 24) | (lost & 0xFFFFFF), highest, jitter, lsr, dlsr)


def rtcp_packet(ptype: int, count: int, body: bytes) -> bytes:
    assert len(body) % 4 == 0
    return struct.pack("!BBH", 0x80 | count, ptype, len(body) // 4) + body


def test_plain_header():
    data = rtp_packet(pt=0, seq=65535, ts=0xFFFFFFFF, ssrc=1, marker=True, payload=b"\xd5" * 160)
    hdr = rtp.parse_rtp(data)
    assert (hdr.pt, hdr.seq, hdr.ts, hdr.ssrc, hdr.marker) == (0, 65535, 0xFFFFFFFF, 1, True)
    assert (hdr.header_len, hdr.payload_len, hdr.padding, hdr.csrc_count, hdr.has_ext) == (12, 160, 0, 0, False)


def test_csrcs_extension_and_padding():
    data = rtp_packet(csrcs=(7, 8), ext=(rtp.ONE_BYTE_EXTENSION_PROFILE, b"\x10\xaa\x00\x00"), padding=4)
    hdr = rtp.parse_rtp(data)
    assert hdr.csrc_count == 2 and hdr.has_ext and hdr.ext_profile == 0xBEDE
    assert hdr.header_len == 12 + 8 + 4 + 4
    assert hdr.padding == 4 and hdr.payload_len == 20


def test_padding_count_that_does_not_fit_is_not_padding():
    # Under SRTP the last byte is the auth tag: a count larger than the payload is ignored.
    data = rtp_packet(payload=b"\x00" * 10)[:-1] + b"\xff"
    data = bytes([data[0] | 0x20]) + data[1:]
    hdr = rtp.parse_rtp(data)
    assert hdr.padding == 0 and hdr.payload_len == 10


def test_rejects():
    assert rtp.parse_rtp(rtp_packet()[:11]) is None
    assert rtp.parse_rtp(b"\x40" + rtp_packet()[1:]) is None                 # version 1
    assert rtp.parse_rtp(rtp_packet(pt=72)) is None                          # 35-95 not RTP
    assert rtp.parse_rtp(rtp_packet(csrcs=(1, 2, 3), payload=b"")[:20]) is None
    over = rtp_packet(ext=(0xBEDE, b"\x00" * 4), payload=b"")
    assert rtp.parse_rtp(over[:-1]) is None                                   # extension overruns


def test_matches_scapy_and_dpkt():
    import dpkt
    from scapy.layers.rtp import RTP

    data = rtp_packet(pt=120, seq=4242, ts=99999, ssrc=0xCAFEBABE, marker=True, csrcs=(5,))
    ours = rtp.parse_rtp(data)
    ref = RTP(data)
    assert (ours.pt, ours.seq, ours.ts, ours.ssrc, ours.marker, ours.csrc_count) == (
        ref.payload_type, ref.sequence, ref.timestamp, ref.sourcesync, ref.marker, ref.numsync)
    ref2 = dpkt.rtp.RTP(data)
    assert (ours.pt, ours.seq, ours.ts, ours.ssrc) == (ref2.pt, ref2.seq, ref2.ts, ref2.ssrc)


def test_tcp_framing():
    data = rtp_packet()
    hdr = rtp.parse_rtp(struct.pack("!H", len(data)) + data + b"\x00\x10", tcp=True)
    assert hdr is not None and hdr.payload_len == 20
    assert rtp.parse_rtp(struct.pack("!H", len(data) + 1) + data, tcp=True) is None


def test_sender_report_with_block_then_sdes_and_bye():
    sr_body = struct.pack("!I", 0xAAAA0001) + struct.pack("!QIII", 0xE000000080000000, 123456, 50, 8000)
    sr_body += report_block(0xBBBB0002, fraction=64, lost=-3, highest=(2 << 16) | 100, jitter=37)
    sdes_body = struct.pack("!I", 0xAAAA0001) + b"\x01\x04abcd" + b"\x00\x00"  # CNAME item, end, pad
    bye_body = struct.pack("!I", 0xAAAA0001)
    data = (rtcp_packet(rtp.RTCP_SR, 1, sr_body) + rtcp_packet(rtp.RTCP_SDES, 1, sdes_body)
            + rtcp_packet(rtp.RTCP_BYE, 1, bye_body))
    packets = rtp.parse_rtcp(data)
    assert [p.packet_type for p in packets] == [rtp.RTCP_SR, rtp.RTCP_SDES, rtp.RTCP_BYE]
    sr = packets[0]
    assert sr.ssrc == 0xAAAA0001 and sr.length == 52
    assert sr.sender_info == rtp.SenderInfo(0xE000000080000000, 123456, 50, 8000)
    (block,) = sr.reports
    assert (block.ssrc, block.fraction_lost, block.cumulative_lost, block.highest_seq, block.jitter) == (
        0xBBBB0002, 64, -3, (2 << 16) | 100, 37)
    assert packets[1].ssrc == 0xAAAA0001 and packets[2].ssrc == 0xAAAA0001


def test_receiver_report_and_feedback_and_app():
    rr = rtcp_packet(rtp.RTCP_RR, 2, struct.pack("!I", 9) + report_block(1, 0, 5, 10, 2) + report_block(2, 255, 0, 20, 3))
    pli = rtcp_packet(rtp.RTCP_PSFB, 1, struct.pack("!II", 9, 1))
    nack = rtcp_packet(rtp.RTCP_RTPFB, 1, struct.pack("!IIHH", 9, 2, 77, 0))
    app = rtcp_packet(rtp.RTCP_APP, 0, struct.pack("!I", 9) + b"TEST")
    packets = rtp.parse_rtcp(rr + pli + nack + app)
    assert [b.ssrc for b in packets[0].reports] == [1, 2]
    assert packets[0].reports[1].fraction_lost == 255
    assert (packets[1].count, packets[1].media_ssrc) == (1, 1)
    assert packets[2].media_ssrc == 2
    assert packets[3].app_name == b"TEST"


def test_srtcp_trailer_ends_the_walk():
    rr = rtcp_packet(rtp.RTCP_RR, 0, struct.pack("!I", 9))
    packets = rtp.parse_rtcp(rr + b"\x80\x00\x00\x01" + b"\x5a" * 10)   # E flag + index, auth tag
    assert len(packets) == 1


def test_rtcp_matches_scapy():
    from scapy.contrib.rtcp import RTCP

    sr_body = struct.pack("!I", 77) + struct.pack("!QIII", 1 << 40, 5, 6, 7) + report_block(88, 10, 20, 30, 40)
    data = rtcp_packet(rtp.RTCP_SR, 1, sr_body)
    ref = RTCP(data)
    (ours,) = rtp.parse_rtcp(data)
    assert ours.ssrc == ref.sourcesync and ours.sender_info.rtp_ts == ref.sender_info.rtp_timestamp
    assert ours.sender_info.packet_count == ref.sender_info.sender_packet_count
    assert ours.reports[0].ssrc == ref.report_blocks[0].sourcesync
    assert ours.reports[0].jitter == ref.report_blocks[0].interarrival_jitter


def test_rtcp_rejects_and_packet_cap():
    assert rtp.parse_rtcp(b"\x80\xc9\x00\x05" + bytes(8)) is None             # length overruns
    assert rtp.parse_rtcp(b"\x80\xbf\x00\x01" + bytes(4)) is None             # type 191
    tiny = rtcp_packet(rtp.RTCP_RR, 0, struct.pack("!I", 1))
    assert len(rtp.parse_rtcp(tiny * (rtp.MAX_RTCP_PACKETS + 5))) == rtp.MAX_RTCP_PACKETS


def test_classify_checks_rtcp_first():
    # Second byte 0xC8: RTCP SR, or RTP PT 72 with the marker bit. RFC 5761 says RTCP.
    sr = rtcp_packet(rtp.RTCP_SR, 0, struct.pack("!I", 1) + bytes(20))
    assert rtp.classify_rtp_or_rtcp(sr) == "rtcp"
    assert rtp.classify_rtp_or_rtcp(rtp_packet(pt=96)) == "rtp"
    assert rtp.classify_rtp_or_rtcp(b"\x16\xfe\xfd" + bytes(20)) is None


def _prefix(packets, width=48):
    prefix = np.zeros((len(packets), width), dtype=np.uint8)
    for i, p in enumerate(packets):
        chunk = p[:width]
        prefix[i, :len(chunk)] = np.frombuffer(chunk, dtype=np.uint8)
    return prefix, np.array([len(p) for p in packets])


def _check_vectorised_matches_scalar(packets, offsets):
    prefix, lengths = _prefix(packets)
    fields = rtp.rtp_fields(prefix, offsets, lengths)
    for i, p in enumerate(packets):
        off = int(np.broadcast_to(offsets, (len(packets),))[i])
        hdr = rtp.parse_rtp(p[off:]) if off + 12 <= prefix.shape[1] else None
        b0 = p[off] if off < len(p) else 0
        ext_word_end = off + 12 + 4 * (b0 & 0x0F) + 4
        if b0 & 0x10 and ext_word_end > prefix.shape[1]:
            # The extension length lies beyond the prefix: the vector reader cannot check it,
            # so it may accept what the scalar parser rejects, never the reverse.
            assert fields["valid"][i] or hdr is None
        else:
            assert bool(fields["valid"][i]) == (hdr is not None), (i, p.hex())
        if hdr is not None and fields["valid"][i]:
            vector = (fields["pt"][i], fields["seq"][i], fields["ts"][i], fields["ssrc"][i])
            assert vector == (hdr.pt, hdr.seq, hdr.ts, hdr.ssrc)
            assert bool(fields["marker"][i]) == hdr.marker and fields["csrc_count"][i] == hdr.csrc_count


def test_rtp_fields_vectorised():
    packets = [
        rtp_packet(pt=0, seq=1, marker=True),
        rtp_packet(pt=120, seq=2, ext=(0xBEDE, b"\x00" * 8)),
        rtp_packet(pt=72),                                   # invalid PT
        b"\x16\xfe\xfd" + bytes(30),                        # DTLS
        rtp_packet(csrcs=(1, 2, 3), payload=b"")[:16],       # CSRCs overrun the packet
        b"\x80",                                            # too short
    ]
    _check_vectorised_matches_scalar(packets, 0)
    prefix, lengths = _prefix(packets)
    fields = rtp.rtp_fields(prefix, 0, lengths)
    assert fields["valid"].tolist() == [True, True, False, False, False, False]
    assert fields["seq"][:2].tolist() == [1, 2] and fields["seq"].dtype == np.uint16


def test_rtp_fields_per_row_offsets_and_bounds():
    inner = rtp_packet(pt=112, seq=77)
    packets = [b"\x00" * 27 + inner, inner, b"\x00" * 40 + inner]
    prefix, lengths = _prefix(packets)
    fields = rtp.rtp_fields(prefix, np.array([27, 0, 40]), lengths)
    # Row 2's header does not fit in the 48-byte prefix: invalid, not an error.
    assert fields["valid"].tolist() == [True, True, False]
    assert fields["seq"].tolist() == [77, 77, 0]
    empty = rtp.rtp_fields(np.zeros((0, 48), dtype=np.uint8))
    assert empty["valid"].shape == (0,)


@settings(max_examples=200)
@given(st.lists(st.binary(max_size=80), min_size=1, max_size=20), st.integers(0, 4))
def test_rtp_fields_agrees_with_parse_rtp_on_any_bytes(packets, offset):
    # Bias towards RTP-looking bytes: force version 2 on half of them.
    packets = [bytes([0x80 | (p[0] & 0x3F)]) + p[1:] if p and i % 2 else p for i, p in enumerate(packets)]
    packets = [b"\x00" * offset + p for p in packets]
    _check_vectorised_matches_scalar(packets, offset)


@given(st.binary(max_size=300), st.booleans())
def test_never_raises(data, tcp):
    rtp.parse_rtp(data, tcp=tcp)
    rtp.parse_rtcp(data, tcp=tcp)
    rtp.classify_rtp_or_rtcp(data)


@given(st.lists(st.binary(min_size=4, max_size=64).map(lambda b: b[: len(b) // 4 * 4]), min_size=1, max_size=6),
       st.integers(0, 31))
def test_rtcp_compound_round_trip(bodies, count):
    data = b"".join(rtcp_packet(rtp.RTCP_APP if i % 2 else rtp.RTCP_XR, count, b) for i, b in enumerate(bodies))
    packets = rtp.parse_rtcp(data)
    assert [p.body for p in packets] == bodies
    assert sum(p.length for p in packets) == len(data)


@given(st.integers(0, 127).filter(rtp.is_rtp_payload_type), st.integers(0, 0xFFFF), st.integers(0, 2**32 - 1),
       st.integers(0, 2**32 - 1), st.booleans(), st.lists(st.integers(0, 2**32 - 1), max_size=15),
       st.binary(max_size=100))
def test_rtp_round_trip(pt, seq, ts, ssrc, marker, csrcs, payload):
    hdr = rtp.parse_rtp(rtp_packet(pt, seq, ts, ssrc, marker, tuple(csrcs), payload=payload))
    assert (hdr.pt, hdr.seq, hdr.ts, hdr.ssrc, hdr.marker, hdr.csrc_count) == (pt, seq, ts, ssrc, marker, len(csrcs))
    assert hdr.payload_len == len(payload)
