"""Payload parsers: one small module per wire format.

    stun   STUN / TURN messages, TURN ChannelData, MS multiplexed TURN   (RFC 8489, 3489, 8656)
    rtp    RTP headers and RTCP compound packets; a vectorised RTP reader (RFC 3550)
    dtls   DTLS record header                                            (RFC 6347, 9147)
    sip    SIP start line and headers, SDP bodies                        (RFC 3261, 8866)
    tls    TLS record, ClientHello (SNI, ALPN), ServerHello              (RFC 8446)
    dns    DNS messages with name decompression                          (RFC 1035)
    quic   QUIC long header, gQUIC versions                              (RFC 8999, 9000)
    apps   app-specific framings: Zoom, Telegram, Discord, WhatsApp, Viber, LINE

Every public ``parse_*`` function takes the transport payload of one packet (``bytes``) and
returns a small frozen dataclass, or None for "not this format". None of them raises on any
input, and each does bounded work: every loop over attributes, records, labels or lines stops
at a named cap, so a hostile packet costs no more than a well-formed one.
"""
from __future__ import annotations

import struct
from collections import namedtuple


class Layout:
    """A fixed-size big-endian header, declared as a table of (field name, struct code).

    ``unpack`` returns a namedtuple with those names, or None when the bytes are too short,
    so parsers read ``hdr.length`` instead of doing offset arithmetic by hand.
    """

    __slots__ = ("names", "size", "_struct", "_tuple")

    def __init__(self, name: str, *fields: tuple[str, str]):
        self.names = tuple(field for field, _ in fields)
        self._struct = struct.Struct("!" + "".join(code for _, code in fields))
        self._tuple = namedtuple(name, self.names)
        self.size = self._struct.size

    def unpack(self, data: bytes, offset: int = 0):
        """The header at ``offset``, or None if ``data`` ends before it does."""
        if offset < 0 or len(data) - offset < self.size:
            return None
        return self._tuple._make(self._struct.unpack_from(data, offset))

