"""SIP messages and their SDP bodies.

RFC 3261 (SIP): start lines (7.1, 7.2), headers and their compact forms (7.3.3, 20).
RFC 8866 (SDP, obsoletes RFC 4566) and RFC 3264 (offer/answer; port 0 declines a stream);
RFC 3551 for the static payload types an SDP may use without an rtpmap. The SDP of an INVITE
and of its answer is how a SIP call says which address and port each RTP stream will use.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

SIP_VERSION = "SIP/2.0"
METHODS = frozenset({
    "INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER", "PRACK", "SUBSCRIBE",
    "NOTIFY", "PUBLISH", "INFO", "REFER", "MESSAGE", "UPDATE",
})
# Method names are case-sensitive (RFC 3261 7.1); extension methods are also tokens, but we
# only believe upper-case ones, which is what every deployed stack sends.
_REQUEST_LINE = re.compile(r"([A-Z]+) (\S+) SIP/2\.0")
_STATUS_LINE = re.compile(r"SIP/2\.0 ([1-6][0-9][0-9])(?: (.*))?")

# Compact header names (RFC 3261 7.3.3 and the IANA SIP header registry).
COMPACT_FORMS = {
    "i": "call-id", "f": "from", "t": "to", "v": "via", "c": "content-type",
    "l": "content-length", "m": "contact", "e": "content-encoding", "s": "subject",
    "k": "supported", "o": "event", "r": "refer-to", "b": "referred-by",
    "u": "allow-events", "x": "session-expires", "a": "accept-contact",
    "j": "reject-contact", "d": "request-disposition", "y": "identity",
}
MAX_START_LINE = 2048
MAX_HEADERS = 64
MAX_SDP_LINES = 256
MAX_MEDIA = 16
SDP_CONTENT_TYPE = "application/sdp"

# RFC 3551 table 4: static audio/video payload types, used when no rtpmap is given.
STATIC_PAYLOAD_TYPES = {
    0: ("PCMU", 8000), 3: ("GSM", 8000), 4: ("G723", 8000), 5: ("DVI4", 8000),
    6: ("DVI4", 16000), 7: ("LPC", 8000), 8: ("PCMA", 8000), 9: ("G722", 8000),
    10: ("L16", 44100), 11: ("L16", 44100), 12: ("QCELP", 8000), 13: ("CN", 8000),
    14: ("MPA", 90000), 15: ("G728", 8000), 16: ("DVI4", 11025), 17: ("DVI4", 22050),
    18: ("G729", 8000), 25: ("CelB", 90000), 26: ("JPEG", 90000), 28: ("nv", 90000),
    31: ("H261", 90000), 32: ("MPV", 90000), 33: ("MP2T", 90000), 34: ("H263", 90000),
}
DIRECTIONS = frozenset({"sendrecv", "sendonly", "recvonly", "inactive"})


@dataclass(frozen=True, slots=True)
class RtpMap:
    payload_type: int
    encoding: str
    clock_rate: int
    channels: int | None = None


@dataclass(frozen=True, slots=True)
class SdpMedia:
    """One m= section. ``connection`` is its own c= address (None: the session's applies)."""

    kind: str                   # audio, video, application, ...
    port: int                   # 0: stream declined or disabled (RFC 3264 section 6)
    port_count: int
    proto: str                  # RTP/AVP, RTP/SAVPF, UDP/TLS/RTP/SAVPF, udptl, ...
    formats: tuple[str, ...]
    connection: str | None = None
    rtpmaps: tuple[RtpMap, ...] = ()
    direction: str | None = None
    rtcp_port: int | None = None
    rtcp_mux: bool = False

    @property
    def payload_types(self) -> tuple[int, ...]:
        return tuple(int(f) for f in self.formats if f.isascii() and f.isdigit() and len(f) <= 3 and int(f) <= 127)

    def rtpmap(self, payload_type: int) -> RtpMap | None:
        """Encoding of a payload type: its a=rtpmap, else the RFC 3551 static assignment."""
        for rtpmap in self.rtpmaps:
            if rtpmap.payload_type == payload_type:
                return rtpmap
        static = STATIC_PAYLOAD_TYPES.get(payload_type)
        if static is None:
            return None
        return RtpMap(payload_type, static[0], static[1])


@dataclass(frozen=True, slots=True)
class Sdp:
    origin_address: str | None
    session_name: str | None
    connection: str | None
    media: tuple[SdpMedia, ...]
    direction: str | None = None

    def endpoints(self) -> tuple[tuple[str, str, int], ...]:
        """(kind, address, port) of every stream that will flow: port > 0, address known."""
        found = []
        for media in self.media:
            address = media.connection or self.connection
            if media.port > 0 and address:
                found.append((media.kind, address, media.port))
        return tuple(found)


@dataclass(frozen=True, slots=True)
class SipMessage:
    """A request (``method`` set) or a response (``status_code`` set). Header names are
    lower-case long forms; repeated headers keep their order."""

    method: str | None
    request_uri: str | None
    status_code: int | None
    reason: str | None
    headers: tuple[tuple[str, str], ...]
    body: bytes
    sdp: Sdp | None

    @property
    def is_request(self) -> bool:
        return self.method is not None

    def header(self, name: str) -> str | None:
        """First value of a header, by long or compact name, any case."""
        name = _canonical(name)
        for header_name, value in self.headers:
            if header_name == name:
                return value
        return None

    @property
    def call_id(self) -> str | None:
        return self.header("call-id")

    @property
    def from_(self) -> str | None:
        return self.header("from")

    @property
    def to(self) -> str | None:
        return self.header("to")

    @property
    def via(self) -> tuple[str, ...]:
        return tuple(value for name, value in self.headers if name == "via")

    @property
    def content_type(self) -> str | None:
        return self.header("content-type")

    @property
    def content_length(self) -> int | None:
        return _int(self.header("content-length"))

    @property
    def cseq(self) -> tuple[int, str] | None:
        """(sequence number, method) of the CSeq header; a response names its request's method."""
        parts = (self.header("cseq") or "").split()
        if len(parts) != 2 or not (parts[0].isascii() and parts[0].isdigit() and len(parts[0]) <= 10):
            return None
        return int(parts[0]), parts[1]


def parse_sip(data: bytes) -> SipMessage | None:
    """Parse one SIP message (the first, when a TCP segment holds several), or None."""
    # Look at the start line before decoding anything else: most payloads fail right here.
    line_end = data.find(b"\n", 0, MAX_START_LINE)
    if line_end < 0:
        return None
    start_line = data[:line_end].rstrip(b"\r").decode("utf-8", errors="replace")
    method = request_uri = reason = None
    status_code = None
    request = _REQUEST_LINE.fullmatch(start_line)
    if request is not None:
        method, request_uri = request.group(1), request.group(2)
    else:
        status = _STATUS_LINE.fullmatch(start_line)
        if status is None:
            return None
        status_code, reason = int(status.group(1)), status.group(2) or ""
    head_end, body_start = _split_head(data)
    head = data[line_end + 1:max(head_end, line_end + 1)].decode("utf-8", errors="replace")
    headers = _parse_headers(head.split("\n", MAX_HEADERS)[:MAX_HEADERS])

    body = bytes(data[body_start:]) if body_start is not None else b""
    declared = _int(_first(headers, "content-length"))
    if declared is not None:
        body = body[:declared]
    sdp = None
    content_type = (_first(headers, "content-type") or "").strip().lower()
    if body and content_type.startswith(SDP_CONTENT_TYPE):
        sdp = parse_sdp(body)
    return SipMessage(method, request_uri, status_code, reason, headers, body, sdp)


def parse_sdp(text: str | bytes) -> Sdp | None:
    """Parse an SDP session description, or None if it does not start with ``v=``."""
    if isinstance(text, (bytes, bytearray, memoryview)):
        text = bytes(text).decode("utf-8", errors="replace")
    lines = [line.strip() for line in text.split("\n", MAX_SDP_LINES)[:MAX_SDP_LINES]]
    lines = [line for line in lines if line]
    if not lines or not lines[0].startswith("v="):
        return None
    session = {"origin_address": None, "session_name": None, "connection": None, "direction": None}
    media: list[dict] = []
    for line in lines[1:]:
        kind, _, value = line.partition("=")
        if kind == "m":
            if len(media) >= MAX_MEDIA:
                break
            parsed = _media_line(value)
            if parsed is None:
                return None
            media.append(parsed)
        elif kind == "c":
            address = _connection_address(value)
            if media:
                media[-1]["connection"] = address
            else:
                session["connection"] = address
        elif kind == "o" and not media:
            fields = value.split()
            session["origin_address"] = fields[5] if len(fields) == 6 else None
        elif kind == "s" and not media:
            session["session_name"] = value
        elif kind == "a":
            _attribute(value, media[-1] if media else session)
    return Sdp(
        session["origin_address"], session["session_name"], session["connection"],
        tuple(_make_media(m) for m in media), session["direction"],
    )


def _split_head(data: bytes) -> tuple[int, int | None]:
    """End of the header section and start of the body (None if the blank line is missing).
    RFC 3261 7.5 asks for CRLF, but tolerant implementations accept bare LF, and so do we."""
    crlf = data.find(b"\r\n\r\n")
    lf = data.find(b"\n\n")
    if crlf >= 0 and (lf < 0 or crlf < lf):
        return crlf, crlf + 4
    if lf >= 0:
        return lf, lf + 2
    return len(data), None


def _parse_headers(lines: list[str]) -> tuple[tuple[str, str], ...]:
    headers: list[list[str]] = []
    for raw in lines:
        line = raw.rstrip("\r")
        if line[:1] in (" ", "\t") and headers:
            headers[-1][1] += " " + line.strip()  # folded continuation (RFC 3261 7.3.1)
            continue
        name, colon, value = line.partition(":")
        if colon and name.strip():
            headers.append([_canonical(name), value.strip()])
    return tuple((name, value) for name, value in headers)


def _canonical(name: str) -> str:
    name = name.strip().lower()
    return COMPACT_FORMS.get(name, name)


def _first(headers: tuple[tuple[str, str], ...], name: str) -> str | None:
    return next((value for header_name, value in headers if header_name == name), None)


def _int(value: str | None) -> int | None:
    value = (value or "").strip()
    return int(value) if value.isascii() and value.isdigit() and len(value) <= 9 else None  # '²'.isdigit()


def _media_line(value: str) -> dict | None:
    # m=<media> <port>[/<number of ports>] <proto> <fmt> ...
    fields = value.split()
    if len(fields) < 3:
        return None
    port_text, _, count_text = fields[1].partition("/")
    port, count = _int(port_text), _int(count_text) if count_text else 1
    if port is None or port > 0xFFFF or count is None:
        return None
    return {"kind": fields[0], "port": port, "port_count": count, "proto": fields[2],
            "formats": tuple(fields[3:]), "connection": None, "rtpmaps": [],
            "direction": None, "rtcp_port": None, "rtcp_mux": False}


def _connection_address(value: str) -> str | None:
    # c=<nettype> <addrtype> <address>[/<ttl>][/<count>]
    fields = value.split()
    if len(fields) != 3:
        return None
    return fields[2].split("/", 1)[0]


def _attribute(value: str, target: dict) -> None:
    name, _, arg = value.partition(":")
    if name in DIRECTIONS:
        target["direction"] = name
    elif "rtpmaps" not in target:
        return  # the remaining attributes are media-level
    elif name == "rtpmap":
        rtpmap = _rtpmap(arg)
        if rtpmap is not None:
            target["rtpmaps"].append(rtpmap)
    elif name == "rtcp":
        target["rtcp_port"] = _int(arg.split(" ", 1)[0])
    elif name == "rtcp-mux":
        target["rtcp_mux"] = True


def _rtpmap(arg: str) -> RtpMap | None:
    # a=rtpmap:<payload type> <encoding name>/<clock rate>[/<encoding parameters>]
    pt_text, _, encoding = arg.strip().partition(" ")
    parts = encoding.strip().split("/")
    pt = _int(pt_text)
    clock = _int(parts[1]) if len(parts) >= 2 else None
    if pt is None or pt > 127 or clock is None or not parts[0]:
        return None
    channels = _int(parts[2]) if len(parts) >= 3 else None
    return RtpMap(pt, parts[0], clock, channels)


def _make_media(fields: dict) -> SdpMedia:
    return SdpMedia(
        fields["kind"], fields["port"], fields["port_count"], fields["proto"], fields["formats"],
        fields["connection"], tuple(fields["rtpmaps"]), fields["direction"],
        fields["rtcp_port"], fields["rtcp_mux"],
    )
