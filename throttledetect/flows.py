"""Bidirectional flow reassembly: packets -> flows keyed by the unordered 5-tuple.

A flow is every packet between two (address, port) endpoints over one transport, split where
the flow stays idle longer than `idle_timeout`. Side "a" is whichever endpoint sent the flow's
first packet. Everything is computed with whole-array numpy operations: one stable sort of a
64-bit key hash groups the packets, and an exact comparison afterwards guards against hash
collisions (which would merge two flows silently otherwise).
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import numpy as np

from throttledetect.read.capture import Capture
from throttledetect.read.decode import STATUS_OK, STATUS_TRUNCATED_L4
from throttledetect.read.table import FRAG_REASSIGNED, PacketTable, format_endpoint, halves_to_address

DEFAULT_IDLE_TIMEOUT_S = 60.0  # as Zeek's UDP inactivity timeout: a call's media is never silent that long

TRANSPORT_NAMES = {6: "tcp", 17: "udp", 1: "icmp", 58: "icmpv6", 132: "sctp", 136: "udplite", 47: "gre", 50: "esp"}

# Address ranges that mark the capturing host's side when no --local is given:
# RFC 1918, RFC 6598 (carrier-grade NAT), RFC 3927 link-local, loopback, RFC 4193 ULA, RFC 4291 link-local.
DEFAULT_LOCAL_NETS = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "169.254.0.0/16",
                      "127.0.0.0/8", "fc00::/7", "fe80::/10", "::1/128")

_M1 = np.uint64(0x9E3779B97F4A7C15)
_M2 = np.uint64(0xBF58476D1CE4E5B9)
_M3 = np.uint64(0x94D049BB133111EB)


def transport_name(proto: int) -> str:
    return TRANSPORT_NAMES.get(int(proto), f"ip{int(proto)}")


def _mix(h: np.ndarray, v: np.ndarray) -> np.ndarray:
    h = (h ^ v.astype(np.uint64)) * _M1
    return h ^ (h >> np.uint64(29))


@dataclass
class Flow:
    """One flow as later stages see it: identity, counts, and its packets' rows and directions."""

    id: int
    proto: int
    transport: str
    a: str
    b: str
    a_ip: str
    a_port: int
    b_ip: str
    b_port: int
    packets_ab: int
    packets_ba: int
    bytes_ab: int
    bytes_ba: int
    first_ts: float
    last_ts: float
    a_local: bool
    b_local: bool
    indices: np.ndarray   # packet rows in time order
    dirs: np.ndarray      # 0 = a->b, 1 = b->a, aligned with `indices`

    @property
    def packets(self) -> int:
        return self.packets_ab + self.packets_ba

    @property
    def duration(self) -> float:
        return self.last_ts - self.first_ts


@dataclass
class FlowTable:
    """All flows of a capture as per-flow arrays, plus the packet -> flow mapping."""

    packets: PacketTable
    flow_of: np.ndarray      # int32 per packet row, -1 if the packet is in no flow
    dir_of: np.ndarray       # uint8 per packet row: 0 = a->b, 1 = b->a
    order: np.ndarray        # packet rows grouped by flow (flow 0 first), time-ordered within a flow
    start: np.ndarray        # int64[n+1]: flow i's rows are order[start[i]:start[i+1]]
    proto: np.ndarray
    a_hi: np.ndarray
    a_lo: np.ndarray
    a_port: np.ndarray
    b_hi: np.ndarray
    b_lo: np.ndarray
    b_port: np.ndarray
    first_ns: np.ndarray
    last_ns: np.ndarray
    packets_ab: np.ndarray
    packets_ba: np.ndarray
    bytes_ab: np.ndarray
    bytes_ba: np.ndarray
    a_local: np.ndarray
    b_local: np.ndarray
    idle_timeout: float

    def __len__(self) -> int:
        return len(self.proto)

    def packet_indices(self, i: int) -> np.ndarray:
        return self.order[self.start[i]:self.start[i + 1]]

    def endpoint(self, i: int, side: str) -> str:
        if side == "a":
            return format_endpoint(self.a_hi[i], self.a_lo[i], self.a_port[i])
        return format_endpoint(self.b_hi[i], self.b_lo[i], self.b_port[i])

    def flow(self, i: int) -> Flow:
        idx = self.packet_indices(i)
        return Flow(
            id=int(i), proto=int(self.proto[i]), transport=transport_name(self.proto[i]),
            a=self.endpoint(i, "a"), b=self.endpoint(i, "b"),
            a_ip=str(halves_to_address(self.a_hi[i], self.a_lo[i])), a_port=int(self.a_port[i]),
            b_ip=str(halves_to_address(self.b_hi[i], self.b_lo[i])), b_port=int(self.b_port[i]),
            packets_ab=int(self.packets_ab[i]), packets_ba=int(self.packets_ba[i]),
            bytes_ab=int(self.bytes_ab[i]), bytes_ba=int(self.bytes_ba[i]),
            first_ts=self.first_ns[i] / 1e9, last_ts=self.last_ns[i] / 1e9,
            a_local=bool(self.a_local[i]), b_local=bool(self.b_local[i]),
            indices=idx, dirs=self.dir_of[idx],
        )

    def __iter__(self):
        for i in range(len(self)):
            yield self.flow(i)


def _flow_members(t: PacketTable, status: np.ndarray | None) -> np.ndarray:
    """Rows that belong to a flow: decoded IP packets, those whose transport header was cut
    short (ports 0), and later fragments that found their first fragment."""
    ok = t.l3 != 0
    if status is not None:
        ok &= (status == STATUS_OK) | (status == STATUS_TRUNCATED_L4) | ((t.frag & FRAG_REASSIGNED) != 0)
    return np.flatnonzero(ok)


def _in_nets(hi: np.ndarray, lo: np.ndarray, nets) -> np.ndarray:
    out = np.zeros(len(hi), dtype=bool)
    for net in nets:
        net = ipaddress.ip_network(net, strict=False) if isinstance(net, str) else net
        if net.version == 4:
            base = (0xFFFF << 32) | int(net.network_address)
            plen = 96 + net.prefixlen
        else:
            base = int(net.network_address)
            plen = net.prefixlen
        mask = ((1 << 128) - 1) ^ ((1 << (128 - plen)) - 1)
        m_hi, m_lo = np.uint64(mask >> 64), np.uint64(mask & 0xFFFFFFFFFFFFFFFF)
        b_hi, b_lo = np.uint64(base >> 64), np.uint64(base & 0xFFFFFFFFFFFFFFFF)
        out |= ((hi & m_hi) == b_hi) & ((lo & m_lo) == b_lo)
    return out


def build_flows(source: Capture | PacketTable, *, idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT_S,
                local_nets=None) -> FlowTable:
    """Group packets into bidirectional flows.

    `idle_timeout`: seconds of silence that end a flow; None or math.inf never splits (what
    nDPI's reader does with files).
    `local_nets`: CIDRs (strings or ip_network) of the capturing host's side; by default the
    private, CGNAT, link-local and loopback ranges.
    """
    if isinstance(source, Capture):
        t, status = source.packets, source.status
    else:
        t, status = source, None
    n = len(t)
    idx = _flow_members(t, status)

    s_hi, s_lo, sp = t.src_hi[idx], t.src_lo[idx], t.sport[idx]
    d_hi, d_lo, dp = t.dst_hi[idx], t.dst_lo[idx], t.dport[idx]
    proto = t.proto[idx]
    swap = (s_hi > d_hi) | ((s_hi == d_hi) & ((s_lo > d_lo) | ((s_lo == d_lo) & (sp > dp))))
    lo_hi, lo_lo, lo_p = np.where(swap, d_hi, s_hi), np.where(swap, d_lo, s_lo), np.where(swap, dp, sp)
    hi_hi, hi_lo, hi_p = np.where(swap, s_hi, d_hi), np.where(swap, s_lo, d_lo), np.where(swap, sp, dp)

    h = np.full(len(idx), 0x2545F4914F6CDD1D, dtype=np.uint64)
    for col in (lo_hi, lo_lo, lo_p, hi_hi, hi_lo, hi_p, proto):
        h = _mix(h, col)
    h = (h ^ (h >> np.uint64(31))) * _M2

    ts = t.ts_ns[idx]
    if len(ts) < 2 or np.all(ts[1:] >= ts[:-1]):
        perm = np.argsort(h, kind="stable")
    else:
        perm = np.lexsort((ts, h))   # out-of-order captures (merged interfaces): time order within a key
    hs = h[perm]
    new_key = np.ones(len(perm), dtype=bool)
    new_key[1:] = hs[1:] != hs[:-1]
    # Exact check: a hash collision would put two different 5-tuples in one group.
    key_start = np.flatnonzero(new_key)
    group_first = perm[key_start[np.cumsum(new_key) - 1]]
    same = np.ones(len(perm), dtype=bool)
    for col in (lo_hi, lo_lo, lo_p, hi_hi, hi_lo, hi_p, proto):
        same &= col[perm] == col[group_first]
    if not same.all():
        key = np.stack([lo_hi, lo_lo, hi_hi, hi_lo, lo_p.astype(np.uint64), hi_p.astype(np.uint64),
                        proto.astype(np.uint64)])
        perm = np.lexsort((ts,) + tuple(key))
        ks = key[:, perm]
        new_key = np.ones(len(perm), dtype=bool)
        new_key[1:] = np.any(ks[:, 1:] != ks[:, :-1], axis=0)

    tss = ts[perm]
    new_flow = new_key.copy()
    if len(tss) > 1 and idle_timeout is not None and np.isfinite(idle_timeout):
        timeout_ns = int(idle_timeout * 1e9)
        new_flow[1:] |= (tss[1:] - tss[:-1]) > timeout_ns
    seg_start = np.flatnonzero(new_flow)
    nflows = len(seg_start)
    seg_len = np.diff(np.append(seg_start, len(perm)))

    # Number flows by their first packet, as a user reading the capture would.
    first_row = idx[perm[seg_start]]
    rank = np.argsort(first_row, kind="stable")
    new_len = seg_len[rank]
    new_start = np.zeros(nflows + 1, dtype=np.int64)
    np.cumsum(new_len, out=new_start[1:])
    pos = np.repeat(seg_start[rank], new_len) + (np.arange(len(perm)) - np.repeat(new_start[:-1], new_len))
    sorted_members = perm[pos]                 # positions into idx, grouped by new flow id
    order = idx[sorted_members]
    fid = np.repeat(np.arange(nflows, dtype=np.int32), new_len)

    firsts = order[new_start[:-1]]
    lasts = order[new_start[1:] - 1] if nflows else order[:0]
    a_hi, a_lo, a_port = t.src_hi[firsts], t.src_lo[firsts], t.sport[firsts]
    b_hi, b_lo, b_port = t.dst_hi[firsts], t.dst_lo[firsts], t.dport[firsts]
    is_a = (t.src_hi[order] == a_hi[fid]) & (t.src_lo[order] == a_lo[fid]) & (t.sport[order] == a_port[fid])
    dirs = (~is_a).astype(np.uint8)

    flow_of = np.full(n, -1, dtype=np.int32)
    flow_of[order] = fid
    dir_of = np.zeros(n, dtype=np.uint8)
    dir_of[order] = dirs

    wl = t.wirelen[order].astype(np.int64)
    ab = dirs == 0
    packets_ab = np.bincount(fid[ab], minlength=nflows).astype(np.int64)
    packets_ba = np.bincount(fid[~ab], minlength=nflows).astype(np.int64)
    bytes_ab = np.bincount(fid[ab], weights=wl[ab], minlength=nflows).astype(np.int64)
    bytes_ba = np.bincount(fid[~ab], weights=wl[~ab], minlength=nflows).astype(np.int64)

    nets = DEFAULT_LOCAL_NETS if local_nets is None else local_nets
    return FlowTable(
        packets=t, flow_of=flow_of, dir_of=dir_of, order=order, start=new_start,
        proto=t.proto[firsts], a_hi=a_hi, a_lo=a_lo, a_port=a_port, b_hi=b_hi, b_lo=b_lo, b_port=b_port,
        first_ns=t.ts_ns[firsts], last_ns=t.ts_ns[lasts] if nflows else t.ts_ns[:0],
        packets_ab=packets_ab, packets_ba=packets_ba, bytes_ab=bytes_ab, bytes_ba=bytes_ba,
        a_local=_in_nets(a_hi, a_lo, nets), b_local=_in_nets(b_hi, b_lo, nets),
        idle_timeout=float('inf') if idle_timeout is None else float(idle_timeout),
    )
