"""Flows built chunk by chunk: the flow table of build_flows without holding the packets.

    acc = FlowAccumulator(idle_timeout=60.0)
    for chunk in CaptureStream(path):
        done = acc.add(chunk.packets, chunk.status)   # Assigned: packets now in a flow, time order
    done = acc.flush()
    ft = acc.table()        # a FlowTable with every flow's identity and counters, no packet rows

The same compiled pass as build_flows (flows._assign_part) keeps its open-addressing table from
one chunk to the next, so flow numbers, sides, idle splits and counters are build_flows' own as
long as no packet is more than REORDER_WINDOW_S older than a packet before it in the file (rows
are put in time order as build_flows does, across that window). A capture merged further out of
time order cannot be put right without holding it whole: `out_of_order` counts the packets
taken late, and the commands warn.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from throttledetect.flows import (DEFAULT_IDLE_TIMEOUT_S, DEFAULT_LOCAL_NETS, FlowTable, _assign_part, _flow_members,
                                  _in_nets)
from throttledetect.jit import njit
from throttledetect.read.table import PacketTable

_ENDPOINT_COLUMNS = ("proto", "src_hi", "src_lo", "sport", "dst_hi", "dst_lo", "dport")


@njit
def _accumulate(rows, flow_of, dir_of, wirelen, ts_ns, packets, nbytes, first_ns, last_ns, first_flow):
    """Counters per flow and direction (packets/nbytes: [flow, dir]); first_ns of flows from first_flow on."""
    for k in range(rows.shape[0]):
        r = rows[k]
        f = flow_of[r]
        d = dir_of[r]
        packets[f, d] += 1
        nbytes[f, d] += wirelen[r]
        if f >= first_flow and packets[f, 0] + packets[f, 1] == 1:
            first_ns[f] = ts_ns[r]
        last_ns[f] = ts_ns[r]


FLOW_COLUMNS = ("ts_ns", "wirelen", "proto", "src_hi", "src_lo", "dst_hi", "dst_lo", "sport", "dport")
REORDER_WINDOW_S = 1.0     # packets up to this much older than one before them still count in time order


@dataclass
class Assigned:
    """Packets whose flows are now known, in time order: their columns, flow and direction."""

    columns: dict
    flow_of: np.ndarray
    dir_of: np.ndarray

    def __len__(self) -> int:
        return len(self.flow_of)


class FlowAccumulator:
    """Flows from chunks of packets in file order (see the module docstring).

    Packets are taken in time order: each chunk's rows join those held back from earlier chunks,
    and the rows younger than REORDER_WINDOW_S before the newest one wait for the next chunk, so
    a capture whose packets are out of order by less than that (multi-queue NICs, merged
    interfaces) gets build_flows' flows exactly. `columns` names what add() hands back per packet.
    """

    def __init__(self, *, idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT_S, local_nets=None,
                 columns: tuple = FLOW_COLUMNS, reorder_window_s: float = REORDER_WINDOW_S):
        self.idle_timeout = idle_timeout
        self.timeout_ns = np.iinfo(np.int64).max if idle_timeout is None or not np.isfinite(idle_timeout) \
            else int(min(idle_timeout, 9e9) * 1e9)
        self.local_nets = local_nets
        self.columns = tuple(dict.fromkeys(FLOW_COLUMNS + tuple(columns)))
        self.window_ns = int(reorder_window_s * 1e9)
        self._table = np.zeros((1 << 12, 8), np.uint64)
        self._first_row = np.empty(1 << 12, np.int64)
        self._state = np.zeros(2, np.int64)
        self._cap = 1 << 12
        self._packets = np.zeros((self._cap, 2), np.int64)
        self._bytes = np.zeros((self._cap, 2), np.int64)
        self._first_ns = np.zeros(self._cap, np.int64)
        self._last_ns = np.zeros(self._cap, np.int64)
        self._endpoints: list[list[np.ndarray]] = [[] for _ in _ENDPOINT_COLUMNS]
        self._pending: dict | None = None
        self._last_emitted: int | None = None
        self.out_of_order: int | None = None     # how many packets came older than one already counted

    @property
    def nflows(self) -> int:
        return int(self._state[0])

    def add(self, t: PacketTable, status: np.ndarray | None = None) -> Assigned:
        """Take one chunk; return the packets (of this chunk and held back ones) now assigned."""
        rows = _flow_members(t, status)
        cols = {c: getattr(t, c)[rows] for c in self.columns}
        if self._pending is not None:
            cols = {c: np.concatenate([self._pending[c], cols[c]]) for c in self.columns}
        ts = cols["ts_ns"]
        if len(ts) > 1 and not np.all(ts[1:] >= ts[:-1]):
            order = np.argsort(ts, kind="stable")
            cols = {c: v[order] for c, v in cols.items()}
            ts = cols["ts_ns"]
        cut = int(np.searchsorted(ts, ts[-1] - self.window_ns, side="left")) if len(ts) else 0
        self._pending = {c: v[cut:].copy() for c, v in cols.items()}
        return self._assign({c: v[:cut] for c, v in cols.items()})

    def flush(self) -> Assigned:
        """The packets still held back (call once, after the last chunk)."""
        cols, self._pending = self._pending, None
        if cols is None:
            cols = {c: np.zeros(0, getattr(np, "int64")) for c in self.columns}
        return self._assign(cols)

    def _assign(self, cols: dict) -> Assigned:
        n = len(cols["ts_ns"])
        ts = cols["ts_ns"]
        if n and self._last_emitted is not None and ts[0] < self._last_emitted:
            self.out_of_order = (self.out_of_order or 0) + int(np.count_nonzero(ts < self._last_emitted))
        if n:
            self._last_emitted = int(ts[-1]) if self._last_emitted is None else max(self._last_emitted, int(ts[-1]))
        rows = np.arange(n, dtype=np.int64)
        flow_of = np.full(n, -1, dtype=np.int32)
        dir_of = np.zeros(n, dtype=np.uint8)
        before = self.nflows
        if n:
            with np.errstate(over="ignore"):
                self._table, self._first_row = _assign_part(
                    rows, cols["src_hi"], cols["src_lo"], cols["dst_hi"], cols["dst_lo"], cols["sport"],
                    cols["dport"], cols["proto"], ts, self.timeout_ns, flow_of, dir_of, self._table,
                    self._first_row, self._state)
        after = self.nflows
        firsts = self._first_row[before:after]
        for store, col in zip(self._endpoints, _ENDPOINT_COLUMNS):
            store.append(cols[col][firsts])
        self._grow(after)
        if n:
            _accumulate(rows, flow_of, dir_of, cols["wirelen"], ts, self._packets, self._bytes, self._first_ns,
                        self._last_ns, before)
        return Assigned(cols, flow_of, dir_of)

    def _grow(self, n: int) -> None:
        if n <= self._cap:
            return
        cap = max(n, 2 * self._cap)
        for name in ("_packets", "_bytes", "_first_ns", "_last_ns"):
            old = getattr(self, name)
            new = np.zeros((cap,) + old.shape[1:], old.dtype)
            new[:len(old)] = old
            setattr(self, name, new)
        self._cap = cap

    def table(self) -> FlowTable:
        """Every flow so far, as build_flows would number and count them; no packet rows."""
        n = self.nflows
        proto, a_hi, a_lo, a_port, b_hi, b_lo, b_port = (np.concatenate(s) for s in self._endpoints)
        nets = DEFAULT_LOCAL_NETS if self.local_nets is None else self.local_nets
        empty = PacketTable.empty(0, 0)
        return FlowTable(
            packets=empty, flow_of=np.zeros(0, np.int32), dir_of=np.zeros(0, np.uint8), order=np.zeros(0, np.int64),
            start=np.zeros(n + 1, np.int64), proto=proto, a_hi=a_hi, a_lo=a_lo, a_port=a_port, b_hi=b_hi,
            b_lo=b_lo, b_port=b_port, first_ns=self._first_ns[:n].copy(), last_ns=self._last_ns[:n].copy(),
            packets_ab=self._packets[:n, 0].copy(), packets_ba=self._packets[:n, 1].copy(),
            bytes_ab=self._bytes[:n, 0].copy(), bytes_ba=self._bytes[:n, 1].copy(),
            a_local=_in_nets(a_hi, a_lo, nets), b_local=_in_nets(b_hi, b_lo, nets),
            idle_timeout=float("inf") if self.idle_timeout is None else float(self.idle_timeout),
        )


def stream_flows(stream, *, idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT_S, local_nets=None, say=None,
                 progress=None) -> FlowTable:
    """Every flow of a read.chunks.CaptureStream, read chunk by chunk (the `flows` command)."""
    acc = FlowAccumulator(idle_timeout=idle_timeout, local_nets=local_nets)
    for chunk in stream:
        acc.add(chunk.packets, chunk.status)
        if progress is not None:
            progress.show(f"reading {stream.path}: {stream.records:,} packets, {acc.nflows:,} flows",
                          restart_clock=False)
    acc.flush()
    if acc.out_of_order and say is not None:
        say(f"throttledetect: warning: {stream.path}: {acc.out_of_order} packets arrived more than "
            f"{REORDER_WINDOW_S:g} s out of time order; they are counted where they are in the file")
    return acc.table()
