"""Parser of nDPI's per-capture test results (`ndpiReader -v 2` `.out` files).

The nDPI test suite stores, for every capture, the flows ndpiReader saw and how it classified
them. We use those files as labels: the flow list and its per-direction packet/byte counts are the
reference our reader and flow builder are checked against, and the application names are the
reference for call classification.

Format (see ../shared/reference/ndpi-out-format.md): a header of counters, per-protocol and
per-breed summaries, then one line per flow::

    \\t<idx>\\t<L4> <A>:<pA> <-> <B>:<pB> [k: v][k: v]...

followed, when nDPI left some flows unclassified, by an ``Undetected flows:`` section in the same
format (indices restart at 1). A is the flow's initiator; ``->`` instead of ``<->`` means nothing
was seen from B.
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

__all__ = [
    "NdpiFlow",
    "NdpiReport",
    "NdpiParseError",
    "parse_ndpi_out",
    "parse_ndpi_report",
    "parse_flow_line",
    "flow_key",
    "ndpi_ip_text",
    "L4_NAMES",
]

# ndpiReader prints these IP protocols by name (ndpiReader.c ipProto2Name); any other as a number.
L4_NAMES: dict[str, int] = {"TCP": 6, "UDP": 17, "ICMP": 1, "ICMPV6": 58, "IGMP": 2, "VRRP": 112}

_ADDR = r"(\[[0-9a-fA-F:.]+\]|[0-9.]+)"
_FLOW_LINE = re.compile(
    r"^\t(\d+)\t(\S+) " + _ADDR + r":(\d+) (<->|->) " + _ADDR + r":(\d+) ?(.*)$"
)
# "[proto: 78.45/STUN.WhatsAppCall]", with an optional tunnel prefix: "GTP:189/Zoom".
_PROTO = re.compile(r"^(?:([^/]*?):)?([0-9]+(?:\.[0-9]+)*)/(.*)$")
_COUNTS = re.compile(r"^(\d+) pkts/(\d+) bytes (<->|->) (\d+) pkts/(\d+) bytes$")
# "key: value". A key never holds ':' or '[' ; IPv6 values such as "[2001:db8::1]" have no ": ".
_KEY_VALUE = re.compile(r"^([^:\[\]]+?): (.*)$", re.S)
_GUESSED = re.compile(r"^Guessed flow protos:\t(\d+)")
_PROTO_SUMMARY = re.compile(r"^([^\t]+)\t(\d+)\t(\d+)\t(\d+)\s*$")


class NdpiParseError(ValueError):
    """A flow line that looks like one (tab, index, tab) but cannot be read."""


def _ip(text: str) -> str:
    """An address as printed by nDPI, without the brackets of IPv6 (kept verbatim otherwise)."""
    return text[1:-1] if text.startswith("[") else text


def _patch_ipv6_text(text: str) -> str:
    """ndpiReader's ndpi_patchIPv6Address(): every ':0:' becomes '::', scanning left to right.

    ndpiReader applies it to inet_ntop() output "for consistency across platforms"; the result can
    be an invalid address (e.g. '302e::3d00::8001'), so nDPI's spelling is compared as text.
    """
    out = []
    i = 0
    while i < len(text):
        if text[i] == ":" and text[i + 1:i + 3] == "0:":
            out.append("::")
            i += 3
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def ndpi_ip_text(addr: str | ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """How ndpiReader prints an address: inet_ntop() text, then its ':0:' -> '::' patch for IPv6.

    Python's compressed form follows the same RFC 5952 rules as glibc's inet_ntop (longest run
    of two or more zero groups, the first on ties, lower case).
    """
    if not isinstance(addr, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        addr = ipaddress.ip_address(addr)
    return str(addr) if addr.version == 4 else _patch_ipv6_text(addr.compressed)


def flow_key(proto: int, ip_a: str, port_a: int, ip_b: str, port_b: int) -> tuple:
    """Direction-free identity of a flow: (IP protocol, lower endpoint, higher endpoint).

    Endpoints are (address text in nDPI's spelling, port), ordered as tuples. Labels already use
    that spelling; convert other addresses with ndpi_ip_text() before building keys.
    """
    ea = (ip_a, int(port_a))
    eb = (ip_b, int(port_b))
    if ea > eb:
        ea, eb = eb, ea
    return (int(proto), ea, eb)


@dataclass(frozen=True)
class NdpiFlow:
    """One flow line of an nDPI `.out` file.

    ``c2s_*`` count what A (the initiator) sent, ``s2c_*`` what B sent; bytes are link-layer
    frame bytes as ndpiReader counts them (the captured length of each frame).
    """

    index: int
    l4: str | int                   # 'TCP', 'UDP', 'ICMP', 'ICMPV6', 'IGMP', 'VRRP' or a number
    a_ip: str                       # as printed (IPv6 without brackets); see ndpi_ip_text()
    a_port: int
    b_ip: str
    b_port: int
    bidirectional: bool             # '<->' (B answered) versus '->'
    tunnel: str | None              # 'GTP', 'GRE', 'CAPWAP'... when nDPI looked inside a tunnel
    master: str | None              # e.g. 'STUN' in 78.45/STUN.WhatsAppCall; None if one id only
    app: str                        # e.g. 'WhatsAppCall', 'Zoom', 'Unknown'
    proto_ids: tuple[int, ...]      # (78, 45) or (189,)
    confidence: str | None          # 'DPI', 'DPI (cache)', 'Match by port', 'Unknown'...
    category: str | None            # 'VoIP', 'Video', ... (None when nDPI printed none)
    c2s_packets: int
    c2s_bytes: int
    s2c_packets: int
    s2c_bytes: int
    undetected: bool = False        # listed under 'Undetected flows:'
    hostname: str | None = None     # [Hostname/SNI: ...] (SNI, HTTP host, DNS query, STUN realm)
    ip_match: str | None = None     # [IP: 119/Facebook]: what the address lists alone say
    # Every other "[key: value]" field, e.g. 'Mapped IP/Port', 'Relayed IP/Port', 'Peer IP/Port',
    # 'Stream Content', 'VLAN', 'FPC', 'DPI packets', 'Risk'; and 'tags' for the bare ones
    # ('ClearText', '0.38 sec', a DNS answer address...) joined by '|'.
    extras: Mapping[str, str] = field(default_factory=dict, compare=False, hash=False, repr=False)

    @property
    def l4_proto(self) -> int:
        """The IP protocol number."""
        return self.l4 if isinstance(self.l4, int) else L4_NAMES[self.l4]

    @property
    def key(self) -> tuple:
        """Unordered endpoint pair + transport, for matching with other flow tables."""
        return flow_key(self.l4_proto, self.a_ip, self.a_port, self.b_ip, self.b_port)

    @property
    def label(self) -> str:
        """nDPI's name for the flow as printed: 'STUN.WhatsAppCall', 'Zoom', 'Unknown'."""
        return f"{self.master}.{self.app}" if self.master else self.app

    @property
    def packets(self) -> int:
        return self.c2s_packets + self.s2c_packets

    @property
    def bytes(self) -> int:
        return self.c2s_bytes + self.s2c_bytes

    def counts_from(self, ip: str, port: int) -> tuple[int, int]:
        """(packets, bytes) sent by the endpoint ip:port (ip in nDPI's spelling) of this flow."""
        if (ip, int(port)) == (self.a_ip, self.a_port):
            return self.c2s_packets, self.c2s_bytes
        if (ip, int(port)) == (self.b_ip, self.b_port):
            return self.s2c_packets, self.s2c_bytes
        raise KeyError(f"{ip}:{port} is not an endpoint of {self.a_ip}:{self.a_port} - {self.b_ip}:{self.b_port}")


@dataclass(frozen=True)
class NdpiReport:
    """A whole `.out` file: its flows and the few header figures worth keeping."""

    flows: tuple[NdpiFlow, ...]
    guessed_flow_protos: int | None          # "Guessed flow protos:" (absent when 0)
    protocol_totals: Mapping[str, tuple[int, int, int]] = field(compare=False, hash=False)
    # ^ per application name: (packets, bytes, flows), from the per-protocol summary


def _split_fields(rest: str) -> list[str]:
    """'[a][b: [x]][c]' -> ['a', 'b: [x]', 'c'], honouring nested brackets."""
    out: list[str] = []
    depth = 0
    start = -1
    for i, ch in enumerate(rest):
        if ch == "[":
            if depth == 0:
                start = i + 1
            depth += 1
        elif ch == "]" and depth > 0:
            depth -= 1
            if depth == 0:
                out.append(rest[start:i])
    if depth != 0 and start >= 0:      # unbalanced tail (a '[' inside a value): keep it whole
        out.append(rest[start:])
    return out


def parse_flow_line(line: str, *, undetected: bool = False) -> NdpiFlow | None:
    """One flow line -> NdpiFlow; None if the line is not a flow line.

    Raises NdpiParseError when the line has a flow's address part but lacks its counters.
    """
    m = _FLOW_LINE.match(line.rstrip("\r\n"))
    if m is None:
        return None
    idx, l4, a, pa, arrow, b, pb, rest = m.groups()
    l4_value: str | int = int(l4) if l4.isdigit() else l4

    tunnel = master = confidence = category = hostname = ip_match = None
    app = "Unknown"
    proto_ids: tuple[int, ...] = (0,)
    counts = None
    extras: dict[str, str] = {}
    tags: list[str] = []
    for f in _split_fields(rest):
        if f.startswith("PLAIN TEXT ("):
            extras["PLAIN TEXT"] = f[len("PLAIN TEXT "):]
            continue
        cm = _COUNTS.match(f)
        if cm:
            counts = cm
            continue
        kv = _KEY_VALUE.match(f)
        if not kv:
            tags.append(f)
            continue
        k, v = kv.groups()
        if k == "proto":
            pm = _PROTO.match(v)
            if not pm:
                raise NdpiParseError(f"unreadable proto field {f!r} in {line!r}")
            tunnel = pm.group(1) or None
            proto_ids = tuple(int(x) for x in pm.group(2).split("."))
            name = pm.group(3)
            if len(proto_ids) >= 2 and "." in name:
                master, app = name.split(".", 1)
            else:
                app = name
        elif k == "Confidence":
            confidence = v
        elif k == "cat":
            category = v.rsplit("/", 1)[0]
            extras["cat"] = v
        elif k == "Hostname/SNI":
            hostname = v
        elif k == "IP":
            ip_match = v
        else:
            # Keep the first value of a repeated key; nDPI does not repeat the ones we read.
            extras.setdefault(k, v)
    if counts is None:
        raise NdpiParseError(f"flow line without packet/byte counts: {line!r}")
    if tags:
        extras["tags"] = "|".join(tags)
    c2s_p, c2s_b, _, s2c_p, s2c_b = counts.groups()
    return NdpiFlow(
        index=int(idx), l4=l4_value,
        a_ip=_ip(a), a_port=int(pa), b_ip=_ip(b), b_port=int(pb),
        bidirectional=(arrow == "<->"),
        tunnel=tunnel, master=master, app=app, proto_ids=proto_ids,
        confidence=confidence, category=category,
        c2s_packets=int(c2s_p), c2s_bytes=int(c2s_b),
        s2c_packets=int(s2c_p), s2c_bytes=int(s2c_b),
        undetected=undetected, hostname=hostname, ip_match=ip_match, extras=extras,
    )


def _read_lines(path: Path) -> list[str]:
    # Labels of fuzzed captures hold raw non-UTF-8 bytes (in printed payload strings);
    # latin-1 maps every byte, so nothing is lost and the ASCII structure is intact.
    return Path(path).read_bytes().decode("latin-1").split("\n")


def parse_ndpi_report(path: str | Path) -> NdpiReport:
    """Read a whole `.out` file."""
    flows: list[NdpiFlow] = []
    guessed = None
    totals: dict[str, tuple[int, int, int]] = {}
    undetected = False
    in_header = True
    for line in _read_lines(Path(path)):
        if line.startswith("Undetected flows:"):
            undetected = True
            continue
        if line.startswith("\t"):
            in_header = False
            flow = parse_flow_line(line, undetected=undetected)
            if flow is not None:
                flows.append(flow)
            continue            # JA3 host-stat lines also start with a TAB: not flows
        if in_header:
            gm = _GUESSED.match(line)
            if gm:
                guessed = int(gm.group(1))
                continue
            sm = _PROTO_SUMMARY.match(line)
            if sm:
                totals[sm.group(1)] = (int(sm.group(2)), int(sm.group(3)), int(sm.group(4)))
    return NdpiReport(flows=tuple(flows), guessed_flow_protos=guessed, protocol_totals=totals)


def parse_ndpi_out(path: str | Path) -> list[NdpiFlow]:
    """The flows of a `.out` file, classified ones first, then the undetected ones."""
    return list(parse_ndpi_report(path).flows)
