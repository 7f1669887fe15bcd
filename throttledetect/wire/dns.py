"""DNS messages.

RFC 1035 section 4 (message layout, 4.1.4 name compression), RFC 3596 (AAAA), RFC 7766
section 8 (2-byte length prefix over TCP). The answers of a resolver tell which names the
addresses of later flows belong to (a call app's relays, for instance).
"""
from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass

from throttledetect.wire import Layout

HEADER = Layout("DnsHeader", ("id", "H"), ("flags", "H"), ("qdcount", "H"), ("ancount", "H"),
                ("nscount", "H"), ("arcount", "H"))
HEADER_LEN = HEADER.size            # 12
QUESTION_TAIL = Layout("DnsQuestionTail", ("qtype", "H"), ("qclass", "H"))
RECORD_TAIL = Layout("DnsRecordTail", ("rtype", "H"), ("rclass", "H"), ("ttl", "I"), ("rdlength", "H"))

MAX_QUESTIONS = 64
MAX_ANSWERS = 64
MAX_POINTER_JUMPS = 16              # real names need one or two
MAX_LABELS = 128                    # a 255-byte name has at most 127 labels
MAX_NAME_LEN = 255                  # RFC 1035 2.3.4

_POINTER = 0xC0                     # top two bits of a length byte: compression pointer
_QR = 0x8000
_OPCODE_SHIFT, _OPCODE_MASK = 11, 0xF
_RCODE_MASK = 0xF

# Resource record types (IANA "DNS RR TYPEs").
A = 1
NS = 2
CNAME = 5
SOA = 6
PTR = 12
MX = 15
TXT = 16
AAAA = 28
SRV = 33
OPT = 41
HTTPS = 65
_NAME_VALUED = frozenset({NS, CNAME, PTR})


@dataclass(frozen=True, slots=True)
class DnsQuestion:
    name: str
    qtype: int
    qclass: int


@dataclass(frozen=True, slots=True)
class DnsRecord:
    """An answer. ``value`` is an address string (A, AAAA), a decompressed name (CNAME, NS,
    PTR), or the raw RDATA bytes for every other type."""

    name: str
    rtype: int
    rclass: int
    ttl: int
    value: str | bytes


@dataclass(frozen=True, slots=True)
class DnsMessage:
    id: int
    flags: int
    questions: tuple[DnsQuestion, ...]
    answers: tuple[DnsRecord, ...]
    truncated: bool = False         # the answers ended early (cut capture or bad record)

    @property
    def is_response(self) -> bool:
        return bool(self.flags & _QR)

    @property
    def opcode(self) -> int:
        return (self.flags >> _OPCODE_SHIFT) & _OPCODE_MASK

    @property
    def rcode(self) -> int:
        return self.flags & _RCODE_MASK

    @property
    def qname(self) -> str | None:
        return self.questions[0].name if self.questions else None

    def addresses(self) -> tuple[str, ...]:
        return tuple(r.value for r in self.answers if r.rtype in (A, AAAA))


def parse_dns(data: bytes, tcp: bool = False) -> DnsMessage | None:
    """Parse a DNS message, or None if the header or the question section do not parse.
    With ``tcp``, ``data`` starts with the 2-byte message length."""
    if tcp:
        if len(data) < 2:
            return None
        length = int.from_bytes(data[:2], "big")
        data = data[2:2 + length]
    hdr = HEADER.unpack(data)
    if hdr is None or hdr.qdcount > MAX_QUESTIONS:
        return None
    pos = HEADER_LEN
    questions = []
    memo: dict = {}
    for _ in range(hdr.qdcount):
        name, pos = read_name(data, pos, memo)
        tail = QUESTION_TAIL.unpack(data, pos) if name is not None else None
        if tail is None:
            return None
        questions.append(DnsQuestion(name, tail.qtype, tail.qclass))
        pos += QUESTION_TAIL.size
    answers = []
    truncated = False
    for _ in range(min(hdr.ancount, MAX_ANSWERS)):
        record, pos = _read_record(data, pos, memo)
        if record is None:
            truncated = True
            break
        answers.append(record)
    return DnsMessage(hdr.id, hdr.flags, tuple(questions), tuple(answers), truncated)


def read_name(data: bytes, pos: int, memo: dict | None = None) -> tuple[str | None, int]:
    """Decode the (possibly compressed) name at ``pos``: (name, position after it in the
    message), or (None, pos) if it is malformed. Pointer jumps, labels and total length are
    capped, so a pointer loop ends in None rather than going round forever.

    ``memo`` (one dict per message): names decoded before, by the offset they start at. An
    answer's name is nearly always a pointer to the question's, decoded already; the caps are
    applied to the whole name as if it had been decoded label by label, so the result is the
    same with or without the memo."""
    labels: list[str] = []
    name_len = 0
    jumps = 0
    after = None                    # where parsing resumes once the first pointer is taken
    cursor = pos
    while len(labels) <= MAX_LABELS:
        if cursor >= len(data):
            return None, pos
        length = data[cursor]
        if length & _POINTER == _POINTER:
            if cursor + 1 >= len(data) or jumps >= MAX_POINTER_JUMPS:
                return None, pos
            if after is None:
                after = cursor + 2
            cursor = ((length & ~_POINTER) << 8) | data[cursor + 1]
            jumps += 1
            known = memo.get(cursor) if memo is not None else None
            if known is not None:
                s_labels, s_len, s_jumps = known
                if len(labels) + len(s_labels) > MAX_LABELS or name_len + s_len > MAX_NAME_LEN \
                        or jumps + s_jumps > MAX_POINTER_JUMPS:
                    return None, pos
                return ".".join(labels + s_labels), after
            continue
        if length & _POINTER:       # 0x40 / 0x80: extended label types, obsolete (RFC 6891)
            return None, pos
        if length == 0:
            if memo is not None and after is None:
                memo[pos] = (labels, name_len, 0)
            return ".".join(labels), (after if after is not None else cursor + 1)
        label = data[cursor + 1:cursor + 1 + length]
        name_len += length + 1
        if len(label) < length or name_len > MAX_NAME_LEN:
            return None, pos
        labels.append(label.decode("ascii", errors="backslashreplace"))
        cursor += 1 + length
    return None, pos


def _read_record(data: bytes, pos: int, memo: dict | None = None) -> tuple[DnsRecord | None, int]:
    name, pos = read_name(data, pos, memo)
    tail = RECORD_TAIL.unpack(data, pos) if name is not None else None
    if tail is None:
        return None, pos
    rdata_at = pos + RECORD_TAIL.size
    rdata = data[rdata_at:rdata_at + tail.rdlength]
    if len(rdata) < tail.rdlength:
        return None, pos
    value: str | bytes | None = bytes(rdata)
    if tail.rtype == A and len(rdata) == 4:
        value = socket.inet_ntoa(rdata)         # ipaddress's spelling, without an object per answer
    elif tail.rtype == AAAA and len(rdata) == 16:
        value = str(ipaddress.IPv6Address(bytes(rdata)))
    elif tail.rtype in _NAME_VALUED:
        value, _ = read_name(data, rdata_at, memo)
        if value is None:
            return None, pos
    return DnsRecord(name, tail.rtype, tail.rclass, tail.ttl, value), rdata_at + tail.rdlength
