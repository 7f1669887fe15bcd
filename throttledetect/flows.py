"""Bidirectional flow reassembly: packets -> flows keyed by the unordered 5-tuple.

A flow is every packet between two (address, port) endpoints over one transport, split where
the flow stays idle longer than `idle_timeout`. Side "a" is whichever endpoint sent the flow's
first packet. One compiled pass over the packets in time order assigns flows through an
open-addressing table keyed by the exact unordered 5-tuple (no hash collision can merge two
flows), and a counting sort groups each flow's packets without a comparison sort.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import numpy as np

from throttledetect.jit import njit
from throttledetect.read.capture import Capture
from throttledetect.read.decode import STATUS_OK, STATUS_TRUNCATED_L4
from throttledetect.read.table import FRAG_REASSIGNED, PacketTable, address_text, format_endpoint

DEFAULT_IDLE_TIMEOUT_S = 60.0  # as Zeek's UDP inactivity timeout: a call's media is never silent that long

TRANSPORT_NAMES = {6: "tcp", 17: "udp", 1: "icmp", 58: "icmpv6", 132: "sctp", 136: "udplite", 47: "gre", 50: "esp"}

# Address ranges that mark the capturing host's side when no --local is given:
# RFC 1918, RFC 6598 (carrier-grade NAT), RFC 3927 link-local, loopback, RFC 4193 ULA, RFC 4291 link-local.
DEFAULT_LOCAL_NETS = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "169.254.0.0/16",
                      "127.0.0.0/8", "fc00::/7", "fe80::/10", "::1/128")



def transport_name(proto: int) -> str:
    return TRANSPORT_NAMES.get(int(proto), f"ip{int(proto)}")


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
            a_ip=address_text(self.a_hi[i], self.a_lo[i]), a_port=int(self.a_port[i]),
            b_ip=address_text(self.b_hi[i], self.b_lo[i]), b_port=int(self.b_port[i]),
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


# Slot layout of the flow table: one 64-byte row per 5-tuple, so a probe touches one cache line.
_LH, _LL, _HH, _HL, _PK, _FLOW, _LAST, _AISLO = range(8)
_M1 = 0x9E3779B97F4A7C15
_M2 = 0xBF58476D1CE4E5B9
_M3 = 0x94D049BB133111EB


@njit
def _slot_hash(lh, ll, hh, hl, pk):
    h = (ll * np.uint64(_M1)) ^ (hl * np.uint64(_M2)) ^ ((lh ^ (hh << np.uint64(1)) ^ pk) * np.uint64(_M3))
    return h ^ (h >> np.uint64(31))


@njit
def _assign(rows, src_hi, src_lo, dst_hi, dst_lo, sport, dport, proto, ts_ns, timeout_ns, flow_of, dir_of):
    """One pass over packets in time order: an open-addressing table maps each unordered
    5-tuple to its current flow; a gap longer than timeout_ns starts a new flow for the key.

    Returns (number of flows, first row of each flow) and fills flow_of/dir_of per row.
    """
    state = np.zeros(2, np.int64)
    table, first_row = _assign_part(rows, src_hi, src_lo, dst_hi, dst_lo, sport, dport, proto, ts_ns, timeout_ns,
                                    flow_of, dir_of, np.zeros((1 << 12, 8), np.uint64), np.empty(1 << 12, np.int64),
                                    state)
    return state[0], first_row[:state[0]]


@njit
def _assign_part(rows, src_hi, src_lo, dst_hi, dst_lo, sport, dport, proto, ts_ns, timeout_ns, flow_of, dir_of,
                 table, first_row, state):
    """_assign resumable across parts of a capture (the streaming reader's chunks): the table,
    the first row of each flow (row numbers of the part that started it) and state = [flows,
    slots used] carry over; flow ids go on from the previous part. Returns (table, first_row),
    grown when needed."""
    cap = table.shape[0]
    fcap = first_row.shape[0]
    nflows = state[0]
    used = state[1]
    for k in range(rows.shape[0]):
        r = rows[k]
        sh, sl, sp = src_hi[r], src_lo[r], np.uint64(sport[r])
        dh, dl, dp = dst_hi[r], dst_lo[r], np.uint64(dport[r])
        swap = sh > dh or (sh == dh and (sl > dl or (sl == dl and sp > dp)))
        if swap:
            lh, ll, lp, hh, hl, hp = dh, dl, dp, sh, sl, sp
        else:
            lh, ll, lp, hh, hl, hp = sh, sl, sp, dh, dl, dp
        pk = lp | (hp << np.uint64(16)) | (np.uint64(proto[r]) << np.uint64(32))
        mask = cap - 1
        j = np.int64(_slot_hash(lh, ll, hh, hl, pk) & np.uint64(mask))
        while table[j, _FLOW] != 0 and not (table[j, _PK] == pk and table[j, _LL] == ll and table[j, _HL] == hl
                                             and table[j, _LH] == lh and table[j, _HH] == hh):
            j = (j + 1) & mask
        t = ts_ns[r]
        fresh = table[j, _FLOW] == 0
        if fresh or t - np.int64(table[j, _LAST]) > timeout_ns:
            if fresh:
                table[j, _LH] = lh
                table[j, _LL] = ll
                table[j, _HH] = hh
                table[j, _HL] = hl
                table[j, _PK] = pk
                used += 1
            if nflows == fcap:
                fcap *= 2
                first_row = _grow(first_row, fcap)
            first_row[nflows] = r
            nflows += 1
            table[j, _FLOW] = np.uint64(nflows)
            table[j, _AISLO] = np.uint64(0 if swap else 1)
            table[j, _LAST] = np.uint64(t)
        elif t > np.int64(table[j, _LAST]):
            table[j, _LAST] = np.uint64(t)
        flow_of[r] = np.int64(table[j, _FLOW]) - 1
        dir_of[r] = 0 if (table[j, _AISLO] == 1) == (not swap) else 1
        if used * 2 > cap:
            cap *= 2
            table = _rehash(table, cap)
    state[0] = nflows
    state[1] = used
    return table, first_row


@njit
def _grow(a, n):
    b = np.empty(n, a.dtype)
    b[:a.shape[0]] = a
    return b


@njit
def _rehash(table, cap):
    new = np.zeros((cap, 8), np.uint64)
    mask = cap - 1
    for i in range(table.shape[0]):
        if table[i, _FLOW] == 0:
            continue
        j = np.int64(_slot_hash(table[i, _LH], table[i, _LL], table[i, _HH], table[i, _HL], table[i, _PK])
                     & np.uint64(mask))
        while new[j, _FLOW] != 0:
            j = (j + 1) & mask
        new[j, :] = table[i, :]
    return new


@njit
def _group(rows, flow_of, dir_of, wirelen, ts_ns, nflows, order, start, packets_ab, packets_ba, bytes_ab,
           bytes_ba, first_ns, last_ns):
    """Counting sort of rows by flow (time order kept within a flow) and per-flow totals."""
    for k in range(rows.shape[0]):
        r = rows[k]
        f = flow_of[r]
        start[f + 1] += 1
        if dir_of[r] == 0:
            packets_ab[f] += 1
            bytes_ab[f] += wirelen[r]
        else:
            packets_ba[f] += 1
            bytes_ba[f] += wirelen[r]
    for f in range(nflows):
        start[f + 1] += start[f]
    fill = start[:nflows].copy()
    for k in range(rows.shape[0]):
        r = rows[k]
        f = flow_of[r]
        order[fill[f]] = r
        fill[f] += 1
    for f in range(nflows):
        first_ns[f] = ts_ns[order[start[f]]]
        last_ns[f] = ts_ns[order[start[f + 1] - 1]]


def build_flows(source: Capture | PacketTable, *, idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT_S,
                local_nets=None) -> FlowTable:
    """Group packets into bidirectional flows, numbered by their first packet.

    `idle_timeout`: seconds of silence that end a flow; None or math.inf never splits (what
    nDPI's reader does with files). `local_nets`: CIDRs (strings or ip_network) of the capturing
    host's side; by default the private, CGNAT, link-local and loopback ranges.
    """
    if isinstance(source, Capture):
        t, status = source.packets, source.status
    else:
        t, status = source, None
    n = len(t)
    rows = _flow_members(t, status)
    ts = t.ts_ns[rows]
    if len(ts) > 1 and not np.all(ts[1:] >= ts[:-1]):
        rows = rows[np.argsort(ts, kind="stable")]   # merged or reordered captures: time order
    timeout_ns = np.iinfo(np.int64).max if idle_timeout is None or not np.isfinite(idle_timeout) \
        else int(min(idle_timeout, 9e9) * 1e9)   # 9e9 s: beyond any capture, still inside int64 ns
    flow_of = np.full(n, -1, dtype=np.int32)
    dir_of = np.zeros(n, dtype=np.uint8)
    with np.errstate(over="ignore"):   # the hash multiplies wrap by design (interpreted runs warn)
        nflows, firsts = _assign(rows, t.src_hi, t.src_lo, t.dst_hi, t.dst_lo, t.sport, t.dport, t.proto,
                                 t.ts_ns, timeout_ns, flow_of, dir_of)
    order = np.empty(len(rows), dtype=np.int64)
    start = np.zeros(nflows + 1, dtype=np.int64)
    counts = [np.zeros(nflows, dtype=np.int64) for _ in range(4)]
    first_ns = np.empty(nflows, dtype=np.int64)
    last_ns = np.empty(nflows, dtype=np.int64)
    _group(rows, flow_of, dir_of, t.wirelen, t.ts_ns, nflows, order, start, *counts, first_ns, last_ns)
    packets_ab, packets_ba, bytes_ab, bytes_ba = counts

    a_hi, a_lo, a_port = t.src_hi[firsts], t.src_lo[firsts], t.sport[firsts]
    b_hi, b_lo, b_port = t.dst_hi[firsts], t.dst_lo[firsts], t.dport[firsts]
    nets = DEFAULT_LOCAL_NETS if local_nets is None else local_nets
    return FlowTable(
        packets=t, flow_of=flow_of, dir_of=dir_of, order=order, start=start,
        proto=t.proto[firsts], a_hi=a_hi, a_lo=a_lo, a_port=a_port, b_hi=b_hi, b_lo=b_lo, b_port=b_port,
        first_ns=first_ns, last_ns=last_ns,
        packets_ab=packets_ab, packets_ba=packets_ba, bytes_ab=bytes_ab, bytes_ba=bytes_ba,
        a_local=_in_nets(a_hi, a_lo, nets), b_local=_in_nets(b_hi, b_lo, nets),
        idle_timeout=float("inf") if idle_timeout is None else float(idle_timeout),
    )


def local_side_is_a(ft: FlowTable) -> tuple[np.ndarray, np.ndarray]:
    """Per flow: is side "a" the capturing host's side, and was that decided by address ranges?

    Address ranges (private, CGNAT, link-local, or --local) decide when exactly one side is local;
    otherwise the endpoint address seen in more flows of the capture is taken as the host (side
    "a" on a tie). The simulator and the detectors share this rule, so that a simulated
    "to-local" impairment lands in the direction the detectors examine.
    """
    n = len(ft)
    a_loc = np.asarray(ft.a_local, dtype=bool)
    b_loc = np.asarray(ft.b_local, dtype=bool)
    by_ranges = a_loc != b_loc
    is_a = a_loc.copy()
    if n and not by_ranges.all():
        ca, cb = _endpoint_counts(ft)
        is_a = np.where(by_ranges, a_loc, ca >= cb)
    return is_a, by_ranges


def _endpoint_counts(ft: FlowTable) -> tuple[np.ndarray, np.ndarray]:
    """Per flow: in how many flows of the capture its side a's and side b's addresses appear."""
    n = len(ft)
    addrs = np.stack([np.concatenate([ft.a_hi, ft.b_hi]), np.concatenate([ft.a_lo, ft.b_lo])], axis=1)
    _, inv, counts = np.unique(addrs, axis=0, return_inverse=True, return_counts=True)
    inv = inv.ravel()
    return counts[inv[:n]], counts[inv[n:]]


def local_side_known(ft: FlowTable) -> np.ndarray:
    """Per flow: is local_side_is_a's answer grounded (address ranges, or one side's address seen
    in more flows), rather than the tie-break (side a, the first sender)? A flow with one direction
    only cannot say whether this host sent it or received it when the answer is the tie-break."""
    n = len(ft)
    if not n:
        return np.zeros(0, dtype=bool)
    a_loc = np.asarray(ft.a_local, dtype=bool)
    b_loc = np.asarray(ft.b_local, dtype=bool)
    ca, cb = _endpoint_counts(ft)
    return (a_loc != b_loc) | (ca != cb)
