"""SIP start lines, headers and SDP bodies (RFC 3261, RFC 8866), cross-checked with dpkt."""
from hypothesis import given, strategies as st

from throttledetect.wire import sip

SDP = (
    "v=0\r\n"
    "o=alice 2890844526 2890844526 IN IP4 host.atlanta.example.com\r\n"
    "s=-\r\n"
    "c=IN IP4 192.0.2.101\r\n"
    "t=0 0\r\n"
    "m=audio 49170 RTP/AVP 0 8 101\r\n"
    "a=rtpmap:0 PCMU/8000\r\n"
    "a=rtpmap:101 telephone-event/8000\r\n"
    "a=fmtp:101 0-15\r\n"
    "a=sendrecv\r\n"
    "m=video 51372 RTP/AVP 99\r\n"
    "c=IN IP4 192.0.2.102/127\r\n"
    "a=rtpmap:99 H264/90000\r\n"
    "a=rtcp:51373\r\n"
    "a=recvonly\r\n"
    "m=audio 0 RTP/AVP 0\r\n"
)


def invite(body: str = SDP, compact: bool = False) -> bytes:
    """RFC 3665-style INVITE; ``compact`` uses the short header names of RFC 3261 7.3.3."""
    names = ("v", "f", "t", "i", "c", "l") if compact else ("Via", "From", "To", "Call-ID", "Content-Type", "Content-Length")
    lines = [
        "INVITE sip:bob@biloxi.example.com SIP/2.0",
        f"{names[0]}: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bKnashds8",
        "Max-Forwards: 70",
        f"{names[1]}: Alice <sip:alice@atlanta.example.com>;tag=1928301774",
        f"{names[2]}: Bob <sip:bob@biloxi.example.com>",
        f"{names[3]}: a84b4c76e66710@pc33.atlanta.example.com",
        "CSeq: 314159 INVITE",
        f"{names[4]}: application/sdp",
        f"{names[5]}: {len(body.encode())}",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n" + body).encode()


def test_invite_headers():
    msg = sip.parse_sip(invite())
    assert msg.is_request and msg.method == "INVITE" and msg.request_uri == "sip:bob@biloxi.example.com"
    assert msg.call_id == "a84b4c76e66710@pc33.atlanta.example.com"
    assert msg.from_.startswith("Alice") and msg.to.startswith("Bob")
    assert msg.cseq == (314159, "INVITE")
    assert msg.via == ("SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bKnashds8",)
    assert msg.content_type == "application/sdp" and msg.content_length == len(SDP)
    assert msg.header("max-forwards") == "70" and msg.header("I") == msg.call_id


def test_compact_forms_give_the_same_message():
    long, short = sip.parse_sip(invite()), sip.parse_sip(invite(compact=True))
    assert long.headers == short.headers and short.sdp == long.sdp


def test_sdp_media_and_rtpmap():
    sdp = sip.parse_sip(invite()).sdp
    assert sdp.connection == "192.0.2.101" and sdp.origin_address == "host.atlanta.example.com"
    audio, video, declined = sdp.media
    assert (audio.kind, audio.port, audio.proto, audio.payload_types) == ("audio", 49170, "RTP/AVP", (0, 8, 101))
    assert audio.rtpmap(101) == sip.RtpMap(101, "telephone-event", 8000)
    assert audio.rtpmap(8) == sip.RtpMap(8, "PCMA", 8000)          # RFC 3551 static, no rtpmap line
    assert audio.rtpmap(97) is None and audio.direction == "sendrecv"
    assert (video.connection, video.rtcp_port, video.direction) == ("192.0.2.102", 51373, "recvonly")
    assert video.rtpmap(99).clock_rate == 90000
    assert declined.port == 0
    assert sdp.endpoints() == (("audio", "192.0.2.101", 49170), ("video", "192.0.2.102", 51372))


def test_response_and_status_line():
    data = (b"SIP/2.0 200 OK\r\nCall-ID: x@y\r\nCSeq: 1 INVITE\r\nContent-Type: application/sdp\r\n"
            b"Content-Length: 60\r\n\r\nv=0\r\nc=IN IP6 2001:db8::1\r\nm=audio 4000 RTP/SAVP 111\r\n"
            b"a=rtpmap:111 opus/48000/2\r\n")
    msg = sip.parse_sip(data)
    assert not msg.is_request and msg.status_code == 200 and msg.reason == "OK"
    assert msg.cseq == (1, "INVITE")
    # Content-Length is 60: the body stops there, in the middle of the rtpmap line.
    assert len(msg.body) == 60 and msg.sdp.media[0].rtpmaps == ()
    assert msg.sdp.endpoints() == (("audio", "2001:db8::1", 4000),)


def test_opus_channels_and_rtcp_mux():
    sdp = sip.parse_sdp("v=0\nm=audio 9 UDP/TLS/RTP/SAVPF 111\nc=IN IP4 0.0.0.0\na=rtpmap:111 opus/48000/2\na=rtcp-mux\n")
    media = sdp.media[0]
    assert media.rtpmap(111) == sip.RtpMap(111, "opus", 48000, 2) and media.rtcp_mux


def test_folded_header_and_bare_lf():
    data = b"OPTIONS sip:x@y SIP/2.0\nSubject: I know\n  you are there\nContent-Length: 0\n\n"
    msg = sip.parse_sip(data)
    assert msg.method == "OPTIONS" and msg.header("subject") == "I know you are there"


def test_rejects():
    assert sip.parse_sip(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n") is None
    assert sip.parse_sip(b"invite sip:x SIP/2.0\r\n\r\n") is None         # methods are case-sensitive
    assert sip.parse_sip(b"SIP/2.0 99 Bad\r\n\r\n") is None
    assert sip.parse_sip(b"INVITE sip:x SIP/2.0") is None                 # no line end at all
    assert sip.parse_sdp("m=audio 1 RTP/AVP 0") is None                   # must start with v=
    assert sip.parse_sdp("v=0\nm=audio x RTP/AVP 0") is None


def test_header_and_media_caps():
    many = b"MESSAGE sip:x@y SIP/2.0\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(200)) + b"\r\n"
    assert len(sip.parse_sip(many).headers) == sip.MAX_HEADERS
    sdp = sip.parse_sdp("v=0\n" + "m=audio 1000 RTP/AVP 0\n" * 100)
    assert len(sdp.media) == sip.MAX_MEDIA


def test_matches_dpkt():
    import dpkt

    data = invite()
    ref = dpkt.sip.Request(data)
    msg = sip.parse_sip(data)
    assert (msg.method, msg.request_uri) == (ref.method, ref.uri)
    assert msg.call_id == ref.headers["call-id"] and msg.body == ref.body


@given(st.binary(max_size=500))
def test_never_raises(data):
    msg = sip.parse_sip(data)
    if msg is not None:
        msg.cseq, msg.content_length, msg.via
    sdp = sip.parse_sdp(data)
    if sdp is not None:
        sdp.endpoints()


@given(st.text(max_size=300))
def test_sdp_never_raises_on_text(text):
    sdp = sip.parse_sdp("v=0\n" + text)
    # None is a valid answer (a malformed m= line voids the description, see test_rejects)
    if sdp is not None:
        for media in sdp.media:
            media.payload_types, media.rtpmap(0)


@given(st.sampled_from(sorted(sip.METHODS)), st.integers(1, 2**31 - 1),
       st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-.@", min_size=1, max_size=40),
       st.integers(1024, 65535))
def test_round_trip(method, cseq, call_id, port):
    body = f"v=0\r\nc=IN IP4 198.51.100.1\r\nm=audio {port} RTP/AVP 0\r\n"
    data = (f"{method} sip:a@b SIP/2.0\r\nCall-ID: {call_id}\r\nCSeq: {cseq} {method}\r\n"
            f"Content-Type: application/sdp\r\nContent-Length: {len(body)}\r\n\r\n{body}").encode()
    msg = sip.parse_sip(data)
    assert (msg.method, msg.call_id, msg.cseq) == (method, call_id, (cseq, method))
    assert msg.sdp.endpoints() == (("audio", "198.51.100.1", port),)
