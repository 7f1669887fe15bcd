"""The invariants every fuzzed input must keep, shared by the atheris harnesses and the replay tests.

Nothing here imports atheris: tests/regressions replays saved inputs through these very
functions, with or without the fuzzer installed. Each ``check_*`` raises on a broken promise
(an exception the code under test let escape, a wrong result type, an out-of-bounds offset, or
work that took longer than ``slow_s``) and returns quietly otherwise.

Input layouts (the first byte(s) choose a variant, the rest is the data):

``check_reader_input``   byte 0 & 7 picks how the rest is stored (raw, gzip, xz, bzip2, a gzip
                         or xz stream cut in half, gzip with trailing garbage); the file is read,
                         and when bit 0x08 of byte 0 is set flows are built and classified too
                         (that costs 3x the reading, and fuzz_flows covers it better).
``check_parsers_input``  the whole input is given to every payload parser (and a few variants:
                         RFC 4571 framing for TCP, the tail after an SFU header ...).
``check_flows_input``    a list of synthesised packets (see ``synth_capture``): valid framing,
                         fuzzed addresses/ports/payloads, so classification sees real-looking flows.
"""
from __future__ import annotations

import atexit
import bz2
import gzip
import json
import lzma
import os
import struct
import tempfile
import time

DEFAULT_SLOW_S = float(os.environ.get("FUZZ_SLOW_S", "1.0"))


class SlowInput(AssertionError):
    """One input took longer than the bound: work is not bounded by the input size."""


class BrokenInvariant(AssertionError):
    """A result that breaks the contract (bad offsets, wrong types, multi-line errors ...)."""


def _require(cond, what: str) -> None:
    if not cond:
        raise BrokenInvariant(what)


# ----------------------------------------------------------------------------------------------
# Capture reader, flows, classification

def _gzip(b: bytes) -> bytes:
    return gzip.compress(b, compresslevel=1, mtime=0)


def _xz(b: bytes) -> bytes:
    return lzma.compress(b, preset=0)


WRAPPINGS = (
    ("raw", lambda b: b),
    ("raw2", lambda b: b),                     # raw twice: most inputs should exercise framing
    ("gzip", _gzip),
    ("xz", _xz),
    ("bzip2", lambda b: bz2.compress(b, 1)),
    ("gzip-cut", lambda b: _gzip(b)[: max(1, len(_gzip(b)) // 2)]),
    ("xz-cut", lambda b: _xz(b)[: max(1, len(_xz(b)) // 2)]),
    ("gzip-trailing-garbage", lambda b: _gzip(b) + b"\x01garbage" + b[:64]),
)


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


class _Scratch:
    """One reusable scratch file (in /dev/shm when there is one: the harness writes per input)."""

    path = None

    @classmethod
    def file(cls) -> str:
        if cls.path is None:
            base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
            fd, cls.path = tempfile.mkstemp(prefix="throttledetect-fuzz-", suffix=".cap", dir=base)
            os.close(fd)
            atexit.register(_remove, cls.path)
        return cls.path


def check_capture_file(path: str, *, slow_s: float = DEFAULT_SLOW_S, classify_too: bool = True):
    """read -> build_flows -> classify on one file; returns the Capture or None (CaptureError)."""
    from throttledetect.read import CaptureError, read_capture

    t0 = time.perf_counter()
    try:
        cap = read_capture(path)
    except CaptureError as e:
        msg = str(e)
        _require("\n" not in msg and "\r" not in msg, f"CaptureError message is not one line: {msg!r}")
        _require(msg.startswith(f"{path}:"), f"CaptureError does not name the file first: {msg!r}")
        _require(" byte " in msg, f"CaptureError does not name a byte offset: {msg!r}")
        _bounded(t0, slow_s, "read_capture (error)")
        return None
    _check_capture(cap, path)
    _bounded(t0, slow_s, "read_capture")
    if classify_too:
        _check_flows_and_classes(cap)
        _bounded(t0, slow_s, "read + flows + classify")
    return cap


def check_reader_input(data: bytes, *, slow_s: float = DEFAULT_SLOW_S, classify_too: bool | None = None):
    if not data:
        return None
    _name, wrap = WRAPPINGS[data[0] & 7]
    if classify_too is None:
        classify_too = bool(data[0] & 0x08)
    path = _Scratch.file()
    with open(path, "wb") as f:
        f.write(wrap(data[1:]))
    return check_capture_file(path, slow_s=slow_s, classify_too=classify_too)


def _check_capture(cap, path: str) -> None:
    import numpy as np

    t = cap.packets
    n = len(t)
    size = len(cap.buffer)
    _require(n > 0, "read_capture returned a Capture without packets instead of raising CaptureError")
    file_size = os.path.getsize(path)
    for w in cap.warnings:
        text = str(w)
        _require("\n" not in text, f"warning is not one line: {text!r}")
        _require(0 <= w.offset <= max(size, file_size), f"warning offset {w.offset} outside the file ({size} bytes)")
    _require(np.all(t.frame_off >= 0) and np.all(t.frame_off + t.caplen.astype(np.int64) <= size),
             "a record's bytes lie outside the buffer")
    has = t.payload_off >= 0
    _require(np.all(t.payload_off[has] >= t.frame_off[has]), "payload starts before its frame")
    _require(np.all(t.payload_off[has] + t.payload_len[has].astype(np.int64) <= size), "payload runs past the buffer")
    _require(np.all(t.payload_len[has].astype(np.int64) <= t.caplen[has].astype(np.int64)),
             "payload longer than its record")
    _require(np.all(t.ts_ns >= 0), "negative timestamp")
    _require(np.all(t.wirelen.astype(np.int64) >= t.caplen.astype(np.int64)), "wire length below captured length")
    cap.skipped_summary()
    for i in (0, n - 1):
        cap.payload(i)
    from throttledetect.report import document
    json.dumps(document.capture_entry(cap), allow_nan=False)


def _check_flows_and_classes(cap) -> None:
    import numpy as np

    from throttledetect.classify import classify
    from throttledetect.flows import build_flows
    from throttledetect.report import document

    ft = build_flows(cap)
    nf = len(ft)
    _require(np.all((ft.flow_of >= -1) & (ft.flow_of < nf)), "flow_of out of range")
    in_flow = int(np.count_nonzero(ft.flow_of >= 0))
    _require(int(ft.packets_ab.sum() + ft.packets_ba.sum()) == in_flow, "flow packet counts do not add up")
    _require(np.all(ft.first_ns <= ft.last_ns), "flow ends before it starts")
    for i in range(min(nf, 4)):
        ft.flow(i)
        json.dumps(document.flow_entry(ft, i, 0), allow_nan=False)
    cl = classify(cap, ft)
    _require(len(cl.labels) == nf and len(cl.reasons) == nf and len(cl.confidence) == nf,
             "classification has not one label per flow")
    _require(all(isinstance(x, str) for x in cl.labels), "a label is not a string")
    _require(np.all((cl.confidence >= 0) & (cl.confidence <= 1)), "confidence outside 0..1")
    from throttledetect.wire.tcpopts import MAX_SACK, tcp_options
    tcp_rows = np.flatnonzero(cap.packets.proto == 6)
    o = tcp_options(cap, tcp_rows)
    _require(np.all((o.tsval >= -1) & (o.tsval < 1 << 32)), "TSval outside -1..2^32-1")
    _require(np.all((o.nsack >= 0) & (o.nsack <= MAX_SACK)), "SACK block count out of range")
    _require(np.all(o.mss >= -1) and np.all(o.mss < 1 << 16), "MSS outside -1..65535")
    try:
        from throttledetect.metrics.rtp import find_rtp_streams
    except ImportError:  # pragma: no cover - metrics not in this checkout
        return
    for s in find_rtp_streams(cap, ft)[:4]:
        s.stats()


def _bounded(t0: float, slow_s: float, what: str) -> None:
    dt = time.perf_counter() - t0
    if slow_s and dt > slow_s:
        raise SlowInput(f"{what} took {dt:.2f} s (bound {slow_s} s)")


# ----------------------------------------------------------------------------------------------
# Synthesised captures: valid framing, fuzzed contents

# Ports the classifier looks at (STUN/TURN, SIP, DNS, Zoom, WhatsApp, Teams, QUIC/TLS, RTP ...).
PORTS = (3478, 3479, 19302, 5060, 5061, 53, 5353, 8801, 8802, 443, 80, 5222, 3480, 3481, 50000, 10000,
         1400, 596, 9000, 5004, 5005, 16384, 16385, 2152, 4500, 1194, 51820, 7985, 5242, 30000)


class _Bytes:
    """A little consumer of the fuzz input (FuzzedDataProvider without the atheris dependency)."""

    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def left(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int) -> bytes:
        chunk = self.data[self.pos:self.pos + n]
        self.pos += len(chunk)
        return chunk

    def u8(self) -> int:
        b = self.take(1)
        return b[0] if b else 0

    def u16(self) -> int:
        return int.from_bytes(self.take(2).ljust(2, b"\0"), "big")


def _csum(b: bytes) -> int:
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def synth_capture(data: bytes) -> tuple[bytes, int]:
    """Turn fuzz bytes into (pcap file bytes, packet count).

    Per packet: flags (bit0 IPv6, bit1 TCP, bit2 reply direction, bit3 second host pair,
    bit4 IP fragment flag, bit5 raw-IP link type instead of Ethernet), sport index, dport index,
    time step (ms), payload length, payload bytes.
    """
    src = _Bytes(data)
    lt_flags = src.u8()
    linktype = 101 if lt_flags & 0x20 else 1
    frames, ts = [], []
    t = 1_700_000_000_000_000_000
    hosts4 = ((b"\x0a\x00\x00\x02", b"\x9d\xf0\x01\x01"), (b"\xc0\xa8\x01\x05", b"\x34\x71\x00\x09"))
    hosts6 = ((bytes.fromhex("fd000000000000000000000000000002"), bytes.fromhex("2a030000000000000000000000000001")),
              (bytes.fromhex("fe800000000000000000000000000005"), bytes.fromhex("2001db80000000000000000000000009")))
    while src.left() > 0 and len(frames) < 256:
        flags = src.u8()
        sport = PORTS[src.u8() % len(PORTS)] if not flags & 0x40 else src.u16()
        dport = PORTS[src.u8() % len(PORTS)]
        t += src.u16() * 1_000_000 // 8
        length = src.u16() % 1500
        payload = src.take(length)
        v6, is_tcp, reply = flags & 1, flags & 2, flags & 4
        a, b = (hosts6 if v6 else hosts4)[1 if flags & 8 else 0]
        if reply:
            a, b, sport, dport = b, a, dport, sport
        if is_tcp:
            l4 = struct.pack("!HHIIBBHHH", sport, dport, len(frames) * 1000, 1, 5 << 4, 0x18, 65535, 0, 0) + payload
            proto = 6
        else:
            l4 = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
            proto = 17
        if v6:
            ip = struct.pack("!IHBB", 6 << 28, len(l4), proto, 64) + a + b + l4
            et = 0x86DD
        else:
            frag = 0x2000 if flags & 0x10 else 0
            hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), len(frames) & 0xFFFF, frag, 64, proto, 0, a, b)
            hdr = hdr[:10] + struct.pack("!H", _csum(hdr)) + hdr[12:]
            ip = hdr + l4
            et = 0x0800
        frame = ip if linktype == 101 else b"\x02\0\0\0\0\x01\x02\0\0\0\0\x02" + struct.pack("!H", et) + ip
        frames.append(frame)
        ts.append(t)
    out = [struct.pack("<IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 262144, linktype)]
    for frame, tn in zip(frames, ts):
        out.append(struct.pack("<IIII", tn // 1_000_000_000, tn % 1_000_000_000, len(frame), len(frame)))
        out.append(frame)
    return b"".join(out), len(frames)


def check_flows_input(data: bytes, *, slow_s: float = DEFAULT_SLOW_S):
    blob, count = synth_capture(data)
    path = _Scratch.file()
    with open(path, "wb") as f:
        f.write(blob)
    cap = check_capture_file(path, slow_s=slow_s)
    if count:
        _require(cap is not None and len(cap.packets) == count, "a well-framed synthetic capture lost packets")
        _require(not cap.warnings, f"warnings on a well-framed capture: {cap.warnings[:3]}")
    return cap


# ----------------------------------------------------------------------------------------------
# Payload parsers

def _type_or_none(value, cls, name: str):
    _require(value is None or isinstance(value, cls), f"{name} returned {type(value).__name__}")
    return value


def check_parsers_input(data: bytes, *, slow_s: float = DEFAULT_SLOW_S) -> None:
    import numpy as np

    from throttledetect.wire import apps, dns, dtls, quic, rtp, sip, stun, tls

    t0 = time.perf_counter()
    framed = len(data).to_bytes(2, "big") + data if len(data) < 0x10000 else data
    variants = (data, data[1:], data[8:], framed)

    for d in variants:
        for tcp in (False, True):
            m = _type_or_none(stun.parse_stun(d, tcp=tcp), stun.StunMessage, "parse_stun")
            if m is not None:
                (m.is_turn, m.is_whatsapp_type, m.mapped_address, m.xor_mapped_address, m.xor_relayed_address,
                 m.xor_peer_addresses, m.xor_peer_address, m.realm, m.software, m.username,
                 m.has_attribute(stun.USERNAME), stun.split_message_type(m.msg_type))
                _type_or_none(apps.stun_app_hint(m), str, "stun_app_hint")
            _type_or_none(stun.parse_channel_data(d, tcp=tcp), stun.ChannelData, "parse_channel_data")
            h = _type_or_none(rtp.parse_rtp(d, tcp=tcp), rtp.RtpHeader, "parse_rtp")
            if h is not None:
                _require(0 <= h.header_len and h.payload_len >= 0, f"parse_rtp: negative lengths {h}")
            pk = rtp.parse_rtcp(d, tcp=tcp)
            _require(pk is None or (isinstance(pk, list) and pk and all(isinstance(p, rtp.RtcpPacket) for p in pk)),
                     "parse_rtcp returned something else than None or a non-empty list of RtcpPacket")
            _type_or_none(dns.parse_dns(d, tcp=tcp), dns.DnsMessage, "parse_dns")
            _require(isinstance(apps.is_viber_packet(d, tcp=tcp), bool), "is_viber_packet is not bool")
        ms = _type_or_none(stun.parse_ms_turn(d), stun.MsTurnFrame, "parse_ms_turn")
        if ms is not None:
            stun.parse_stun(ms.payload)
            rtp.parse_rtp(ms.payload)
        _require(rtp.classify_rtp_or_rtcp(d) in (None, "rtp", "rtcp"), "classify_rtp_or_rtcp")
        _type_or_none(dtls.parse_dtls(d), dtls.DtlsRecord, "parse_dtls")
        s = _type_or_none(sip.parse_sip(d), sip.SipMessage, "parse_sip")
        if s is not None:
            (s.is_request, s.call_id, s.from_, s.to, s.via, s.content_type, s.content_length, s.cseq,
             s.header("Via"), s.header("i"))
            if s.sdp is not None:
                _check_sdp(s.sdp)
        sd = _type_or_none(sip.parse_sdp(d), sip.Sdp, "parse_sdp")
        if sd is not None:
            _check_sdp(sd)
        _type_or_none(tls.parse_tls_record(d), tls.TlsRecord, "parse_tls_record")
        _type_or_none(tls.parse_client_hello(d), tls.ClientHello, "parse_client_hello")
        _type_or_none(tls.parse_server_hello(d), tls.ServerHello, "parse_server_hello")
        _type_or_none(tls.parse_client_hello_message(d), tls.ClientHello, "parse_client_hello_message")
        q = _type_or_none(quic.parse_quic_long_header(d), quic.QuicLongHeader, "parse_quic_long_header")
        if q is not None:
            q.version_name, q.is_gquic
        _require(isinstance(quic.is_quic_initial(d), bool), "is_quic_initial is not bool")
        _type_or_none(quic.gquic_version(d), str, "gquic_version")
        value, pos = quic.read_varint(d, 0)
        _require(value is None or (value >= 0 and 0 < pos <= len(d)), "read_varint")
        if len(d) >= 4:
            v = int.from_bytes(d[:4], "big")
            _require(isinstance(quic.version_name(v), str), "version_name")
        z = _type_or_none(apps.parse_zoom_media(d), apps.ZoomMedia, "parse_zoom_media")
        if z is not None and z.inner_offset is not None:
            _require(0 <= z.inner_offset <= len(d), "zoom inner offset outside the payload")
        off = apps.zoom_rtp_offset(d)
        _require(off is None or 0 <= off <= len(d), "zoom_rtp_offset")
        _type_or_none(apps.parse_zoom_p2p_hello(d), str, "parse_zoom_p2p_hello")
        _type_or_none(apps.parse_telegram_reflector(d), apps.TelegramReflector, "parse_telegram_reflector")
        _type_or_none(apps.parse_discord(d), apps.DiscordPacket, "parse_discord")
        _type_or_none(apps.parse_whatsapp_preamble(d), apps.WhatsAppPreamble, "parse_whatsapp_preamble")
        _require(isinstance(apps.is_line_call_packet(d), bool), "is_line_call_packet is not bool")
        n = apps.line_packet_number(d)
        _require(n is None or 0 <= n <= 255, "line_packet_number")
        name, pos = dns.read_name(d, 0)
        _require(name is None or isinstance(name, str), "read_name")

    # The vectorised RTP reader on the same bytes cut into prefix rows, with fuzzed offsets/lengths.
    width = 48
    rows = max(1, len(data) // width)
    pre = np.frombuffer(data[: rows * width].ljust(rows * width, b"\0"), dtype=np.uint8).reshape(rows, width)
    offsets = np.array([(b % 40) - 2 for b in data[:rows].ljust(rows, b"\0")], dtype=np.int64)
    lengths = np.array([b * 7 for b in data[-rows:].rjust(rows, b"\0")], dtype=np.int64)
    for off, ln in ((0, None), (offsets, lengths), (2, lengths)):
        f = rtp.rtp_fields(pre, off, ln)
        _require(all(len(v) == rows for v in f.values()), "rtp_fields: not one value per row")
    # Numbers longer than CPython's int() limit (4300 digits) in the text formats.
    if any(0x30 <= b <= 0x39 for b in data[:512]):
        import re
        long_numbers = re.sub(rb"[0-9]+", lambda m: m.group(0) * (4400 // len(m.group(0)) + 1), data[:512], count=3)
        s = sip.parse_sip(long_numbers)
        if s is not None:
            s.cseq, s.content_length
            if s.sdp is not None:
                _check_sdp(s.sdp)
        sd = sip.parse_sdp(long_numbers)
        if sd is not None:
            _check_sdp(sd)
    _bounded(t0, slow_s, "payload parsers")


def _check_sdp(sd) -> None:
    sd.endpoints()
    for m in sd.media:
        for pt in m.payload_types:
            m.rtpmap(pt)
