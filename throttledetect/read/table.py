"""PacketTable: one capture's packets as columns (numpy arrays), no per-packet objects.

Every column has one row per record that the reader framed (readable link layer or not),
so row i of every column describes the same packet. Rows whose network layer could not be
decoded have ``l3 == 0``; later stages select rows with masks, never with Python loops.

Addresses are 128-bit, split into two uint64 halves (``*_hi``, ``*_lo``); IPv4 addresses are
stored IPv4-mapped (::ffff:a.b.c.d), so one code path serves both families.
"""
from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field, fields
from functools import lru_cache

import numpy as np

# Values of the `l3` column.
L3_NONE = 0
L3_IPV4 = 4
L3_IPV6 = 6

# Bits of the `frag` column.
FRAG_FIRST = 1      # offset 0, more fragments follow: carries the transport header
FRAG_LATER = 2      # offset > 0: no transport header of its own
FRAG_REASSIGNED = 4  # a later fragment whose ports were taken from its first fragment

# Bits of the `tcp_flags` column are TCP's own: FIN=1 SYN=2 RST=4 PSH=8 ACK=16 URG=32 ECE=64 CWR=128.
TCP_FIN, TCP_SYN, TCP_RST, TCP_PSH, TCP_ACK = 1, 2, 4, 8, 16

IPV4_MAPPED_HI = np.uint64(0)
IPV4_MAPPED_LO_PREFIX = np.uint64(0x0000FFFF00000000)

# Column name -> dtype. The order is the order of the dataclass fields below.
COLUMNS = {
    "ts_ns": np.int64,        # capture timestamp, integer nanoseconds since the epoch
    "frame_off": np.int64,    # absolute offset of the frame's first byte in `Capture.buffer`
    "caplen": np.uint32,      # bytes captured of the frame
    "wirelen": np.uint32,     # frame length on the wire (link layer included)
    "iface": np.uint16,       # pcapng interface id (0 for classic pcap)
    "linktype": np.uint16,    # link type of the interface the packet came from
    "l3": np.uint8,           # L3_NONE / L3_IPV4 / L3_IPV6
    "proto": np.uint8,        # IP protocol of the transport (6 TCP, 17 UDP, 1 ICMP, 58 ICMPv6 ...)
    "src_hi": np.uint64,
    "src_lo": np.uint64,
    "dst_hi": np.uint64,
    "dst_lo": np.uint64,
    "sport": np.uint16,       # 0 where the transport has no ports
    "dport": np.uint16,
    "ttl": np.uint8,          # IPv4 TTL or IPv6 hop limit
    "ip_id": np.uint32,       # IPv4 identification, or IPv6 fragment identification
    "frag": np.uint8,         # FRAG_* bits; 0 for unfragmented packets
    "tunnel": np.uint8,       # 0; 1: the packet inside a GTP-U tunnel; 2: the innermost IP packet tshark found
                              # (read/fallback.py: a link type or tunnel the compiled decoder does not open)
    "tcp_seq": np.uint32,
    "tcp_ack": np.uint32,
    "tcp_flags": np.uint8,
    "tcp_win": np.uint16,
    "l4_off": np.int64,       # absolute offset of the transport header in `Capture.buffer` (-1 if none)
    "payload_off": np.int64,  # absolute offset of the transport payload in `Capture.buffer` (-1 if none)
    "payload_len": np.uint32,  # transport payload bytes present in the capture (snaplen-limited)
    "payload_wirelen": np.uint32,  # transport payload length declared by the IP/UDP headers
}


@dataclass
class PacketTable:
    """Columns of packets; see COLUMNS for meaning and dtype of each."""

    ts_ns: np.ndarray
    frame_off: np.ndarray
    caplen: np.ndarray
    wirelen: np.ndarray
    iface: np.ndarray
    linktype: np.ndarray
    l3: np.ndarray
    proto: np.ndarray
    src_hi: np.ndarray
    src_lo: np.ndarray
    dst_hi: np.ndarray
    dst_lo: np.ndarray
    sport: np.ndarray
    dport: np.ndarray
    ttl: np.ndarray
    ip_id: np.ndarray
    frag: np.ndarray
    tunnel: np.ndarray
    tcp_seq: np.ndarray
    tcp_ack: np.ndarray
    tcp_flags: np.ndarray
    tcp_win: np.ndarray
    l4_off: np.ndarray
    payload_off: np.ndarray
    payload_len: np.ndarray
    payload_wirelen: np.ndarray
    prefix: np.ndarray = field(repr=False)  # uint8[n, PREFIX]: first payload bytes, zero padded

    @classmethod
    def empty(cls, n: int, prefix_len: int) -> "PacketTable":
        cols = {name: np.zeros(n, dtype=dt) for name, dt in COLUMNS.items()}
        return cls(**cols, prefix=np.zeros((n, prefix_len), dtype=np.uint8))

    def __len__(self) -> int:
        return len(self.ts_ns)

    @property
    def ts(self) -> np.ndarray:
        """Timestamps as float seconds since the epoch (sub-microsecond rounding)."""
        return self.ts_ns.astype(np.float64) / 1e9

    def take(self, index) -> "PacketTable":
        """Rows selected by an index array or boolean mask, as a new table."""
        return PacketTable(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    @classmethod
    def concat(cls, tables: list["PacketTable"]) -> "PacketTable":
        return cls(**{f.name: np.concatenate([getattr(t, f.name) for t in tables]) for f in fields(cls)})


def address_to_halves(addr: str) -> tuple[int, int]:
    """'1.2.3.4' or '2001:db8::1' -> (hi, lo) as stored in the table."""
    ip = ipaddress.ip_address(addr)
    if ip.version == 4:
        value = 0xFFFF00000000 | int(ip)
    else:
        value = int(ip)
    return value >> 64, value & 0xFFFFFFFFFFFFFFFF


def halves_to_address(hi: int, lo: int) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """Inverse of address_to_halves: IPv4-mapped values come back as IPv4 addresses."""
    hi, lo = int(hi), int(lo)
    if hi == 0 and (lo >> 32) == 0xFFFF:
        return ipaddress.IPv4Address(lo & 0xFFFFFFFF)
    return ipaddress.IPv6Address((hi << 64) | lo)


@lru_cache(maxsize=1 << 16)
def _address_text(hi: int, lo: int) -> str:
    if hi == 0 and (lo >> 32) == 0xFFFF:
        return socket.inet_ntoa((lo & 0xFFFFFFFF).to_bytes(4, "big"))
    return str(ipaddress.IPv6Address((hi << 64) | lo))


def address_text(hi: int, lo: int) -> str:
    """str(halves_to_address(hi, lo)) without an ipaddress object per call: the flows of a big
    capture name the same few thousand hosts again and again, and building an address object for
    each spelling took a tenth of `analyze` on two million packets (issue 15). IPv4 is spelt by
    the C library (dotted quad, as ipaddress spells it); IPv6 by ipaddress, whose text differs
    from inet_ntop's for IPv4-mapped and -compatible values."""
    return _address_text(int(hi), int(lo))


def addresses_text(hi: np.ndarray, lo: np.ndarray) -> list[str]:
    """address_text of every (hi, lo) pair, each distinct address spelt once."""
    if len(hi) == 0:
        return []
    pairs = np.stack([np.asarray(hi, dtype=np.uint64), np.asarray(lo, dtype=np.uint64)], axis=1)
    uniq, inv = np.unique(pairs, axis=0, return_inverse=True)
    text = [_address_text(h, low) for h, low in uniq.tolist()]
    return [text[j] for j in inv.ravel().tolist()]


def format_endpoint(hi: int, lo: int, port: int) -> str:
    """'1.2.3.4:5678' or '[2001:db8::1]:5678', the contract's spelling."""
    ip = address_text(hi, lo)
    return f"{ip}:{int(port)}" if "." in ip and ":" not in ip else f"[{ip}]:{int(port)}"
