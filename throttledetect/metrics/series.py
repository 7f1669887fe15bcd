"""Shared helpers for per-direction metrics over many flows at once.

Everything here works on the whole capture in one go, never with a Python loop per packet
or per flow:

- ``DirGroups`` orders the packet rows of every flow by (flow, direction), time order kept,
  so that group ``g = 2 * flow + direction`` is one contiguous slice (built in O(n) from the
  flow table's grouping, without a sort).
- ``BinLayout`` lays out the time bins of every flow in one flat array: flow ``f`` has
  ``n_bins[f]`` bins of ``bin_s`` seconds aligned to its first packet, direction a->b first,
  then b->a. One ``np.bincount`` over the flat index fills the series of every flow.
- ``grouped_sort`` / ``grouped_quantiles`` give order statistics per group (numpy's default
  linear interpolation, as ``np.quantile``) from a single sort of all values.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

AB, BA = 0, 1
DIRECTIONS = ("ab", "ba")
# A bin layout larger than this is refused: with a tiny bin and long flows it would not fit in memory.
MAX_TOTAL_BINS = 100_000_000


@dataclass(frozen=True, eq=False)
class DirGroups:
    """Packet rows of all flows grouped by (flow, direction), in time order within a group."""

    rows: np.ndarray     # int64 packet rows; group g occupies rows[start[g]:start[g + 1]]
    start: np.ndarray    # int64[2 * n_flows + 1]
    gid: np.ndarray      # int64 group of each position (2 * flow + direction)

    @property
    def n_groups(self) -> int:
        return len(self.start) - 1

    @property
    def counts(self) -> np.ndarray:
        return np.diff(self.start)

    def first_in_group(self) -> np.ndarray:
        """bool per position: the first position of its group."""
        first = np.zeros(len(self.rows), dtype=bool)
        nonempty = self.start[:-1][self.counts > 0]
        first[nonempty] = True
        return first

    def select_flows(self, flow_mask: np.ndarray) -> "DirGroups":
        """The groups of the flows where flow_mask is True; group ids keep their numbering."""
        keep_group = np.repeat(np.asarray(flow_mask, dtype=bool), 2)
        keep = keep_group[self.gid]
        counts = np.where(keep_group, self.counts, 0)
        start = np.zeros(len(counts) + 1, dtype=np.int64)
        np.cumsum(counts, out=start[1:])
        return DirGroups(rows=self.rows[keep], start=start, gid=self.gid[keep])


def group_by_direction(ft) -> DirGroups:
    """DirGroups of a FlowTable: a stable partition of each flow's rows by direction, in O(n)."""
    order = np.asarray(ft.order, dtype=np.int64)
    fstart = np.asarray(ft.start, dtype=np.int64)
    nf = len(fstart) - 1
    n = len(order)
    if n == 0:
        return DirGroups(rows=order, start=np.zeros(2 * nf + 1, dtype=np.int64), gid=np.zeros(0, dtype=np.int64))
    flow = np.repeat(np.arange(nf, dtype=np.int64), np.diff(fstart))
    is_ba = ft.dir_of[order].astype(bool)
    c_ab = np.cumsum(~is_ba)                               # a->b rows up to and including each position
    ab_before = np.concatenate(([0], c_ab))[fstart[:-1]]   # a->b rows before each flow
    n_ab = np.concatenate(([0], c_ab))[fstart[1:]] - ab_before
    pos = np.arange(n, dtype=np.int64)
    rank_ab = c_ab - 1 - ab_before[flow]
    rank_ba = (pos - c_ab) - (fstart[:-1] - ab_before)[flow]   # b->a rows before it in its flow
    dest = np.where(is_ba, fstart[flow] + n_ab[flow] + rank_ba, fstart[flow] + rank_ab)
    rows = np.empty(n, dtype=np.int64)
    rows[dest] = order
    start = np.empty(2 * nf + 1, dtype=np.int64)
    start[0:-1:2] = fstart[:-1]
    start[1::2] = fstart[:-1] + n_ab
    start[-1] = n
    gid = np.repeat(np.arange(2 * nf, dtype=np.int64), np.diff(start))
    return DirGroups(rows=rows, start=start, gid=gid)


@dataclass(frozen=True, eq=False)
class BinLayout:
    """Time bins of every flow in one flat array (see the module docstring)."""

    bin_s: float
    bin_ns: int
    origin_ns: np.ndarray   # int64 per flow: its first packet
    n_bins: np.ndarray      # int64 per flow: bins spanning first to last packet (at least 1)
    offset: np.ndarray      # int64[n_flows + 1]: flow f's 2 * n_bins[f] values start at offset[f]

    @property
    def total(self) -> int:
        return int(self.offset[-1])

    def index(self, flow: np.ndarray, direction: np.ndarray, ts_ns: np.ndarray) -> np.ndarray:
        """Flat index of each event (flow, direction 0/1, time); times are clipped into the flow's bins."""
        flow = np.asarray(flow, dtype=np.int64)
        b = (np.asarray(ts_ns, dtype=np.int64) - self.origin_ns[flow]) // self.bin_ns
        b = np.clip(b, 0, self.n_bins[flow] - 1)
        return self.offset[flow] + np.asarray(direction, dtype=np.int64) * self.n_bins[flow] + b

    def accumulate(self, flow, direction, ts_ns, weights=None) -> np.ndarray:
        """Sum of weights (or count of events) per bin, as one flat float64/int64 array."""
        idx = self.index(flow, direction, ts_ns)
        if weights is None:
            return np.bincount(idx, minlength=self.total).astype(np.int64)
        return np.bincount(idx, weights=np.asarray(weights, dtype=np.float64), minlength=self.total)

    def series(self, flat: np.ndarray, flow: int, direction: int) -> np.ndarray:
        """View of one flow's series for one direction in a flat array from accumulate()."""
        nb = int(self.n_bins[flow])
        a = int(self.offset[flow]) + direction * nb
        return flat[a:a + nb]


def bin_layout(first_ns, last_ns, bin_s: float) -> BinLayout:
    """Bins of `bin_s` seconds from each flow's first packet to its last (both directions share them)."""
    if not bin_s > 0:
        raise ValueError(f"bin_s must be positive, not {bin_s!r}")
    bin_ns = max(int(round(bin_s * 1e9)), 1)
    first = np.asarray(first_ns, dtype=np.int64)
    last = np.asarray(last_ns, dtype=np.int64)
    n_bins = (np.maximum(last - first, 0) // bin_ns + 1).astype(np.int64)
    offset = np.zeros(len(first) + 1, dtype=np.int64)
    np.cumsum(2 * n_bins, out=offset[1:])
    if offset[-1] > MAX_TOTAL_BINS:
        raise ValueError(f"{int(offset[-1])} time bins of {bin_s} s over all flows: choose a larger bin")
    return BinLayout(bin_s=float(bin_s), bin_ns=bin_ns, origin_ns=first, n_bins=n_bins, offset=offset)


def grouped_sort(values: np.ndarray, gid: np.ndarray, n_groups: int):
    """Sort values within groups: (sorted values, start[n_groups + 1]); group g is sorted[start[g]:start[g+1]].

    gid need not be sorted. Non-negative integers that fit beside the group id in 63 bits are
    sorted as one combined int64 key (one sort); anything else goes through np.lexsort.
    """
    values = np.asarray(values)
    gid = np.asarray(gid, dtype=np.int64)
    counts = np.bincount(gid, minlength=n_groups)
    start = np.zeros(n_groups + 1, dtype=np.int64)
    np.cumsum(counts, out=start[1:])
    if len(values) == 0:
        return values.copy(), start
    if values.dtype.kind in "iu" and values.min() >= 0:
        vbits = int(values.max()).bit_length()
        gbits = max(int(n_groups).bit_length(), 1)
        if vbits + gbits <= 62:
            key = np.sort((gid << vbits) | values.astype(np.int64))
            return (key & ((1 << vbits) - 1)).astype(values.dtype), start
    order = np.lexsort((values, gid))
    return values[order], start


def grouped_quantiles(sorted_values: np.ndarray, start: np.ndarray, qs) -> np.ndarray:
    """Quantiles per group of grouped_sort() output: float64[n_groups, len(qs)], NaN for empty groups.

    Linear interpolation between order statistics, as np.quantile's default.
    """
    counts = np.diff(start)
    n_groups = len(counts)
    qs = np.atleast_1d(np.asarray(qs, dtype=np.float64))
    out = np.full((n_groups, len(qs)), np.nan)
    has = counts > 0
    if not has.any():
        return out
    v = np.asarray(sorted_values, dtype=np.float64)
    base = start[:-1][has].astype(np.float64)
    m = counts[has].astype(np.float64)
    for j, q in enumerate(qs):   # one vectorised pass per quantile
        pos = q * (m - 1)
        lo = np.floor(pos)
        frac = pos - lo
        lo_i = (base + lo).astype(np.int64)
        hi_i = np.minimum(lo_i + 1, (base + m - 1).astype(np.int64))
        out[has, j] = v[lo_i] + frac * (v[hi_i] - v[lo_i])
    return out


def segmented_cummax(values: np.ndarray, gid: np.ndarray) -> np.ndarray:
    """Running maximum within each group, for int64 values and sorted group ids.

    Groups are made disjoint by lifting each one above every value of the groups before it,
    so that one np.maximum.accumulate does all groups at once.
    """
    v = np.asarray(values, dtype=np.int64)
    if len(v) == 0:
        return v.copy()
    g = np.asarray(gid, dtype=np.int64)
    lo, hi = int(v.min()), int(v.max())
    span = hi - lo + 1
    dense = np.concatenate(([0], np.cumsum(g[1:] != g[:-1])))   # 0, 1, 2 ... per group
    if span.bit_length() + int(dense[-1]).bit_length() <= 62:
        lifted = (v - lo) + dense * span
        return np.maximum.accumulate(lifted) - dense * span + lo
    out = np.empty_like(v)   # pragma: no cover - values spanning > 2**40 with many groups
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    for a, b in zip(starts, np.r_[starts[1:], len(v)]):
        out[a:b] = np.maximum.accumulate(v[a:b])
    return out


def serial_unwrap(values: np.ndarray, gid: np.ndarray, bits: int = 32, base: np.ndarray | None = None) -> np.ndarray:
    """Unwrap counters modulo 2**bits within each group (sorted group ids), in order.

    Each step between consecutive values of a group is read as the shortest signed distance
    (RFC 1982 serial arithmetic), so wrap-arounds are counted. The first value of each group
    becomes 0, plus base[g] when a base per group id is given.
    """
    v = np.asarray(values, dtype=np.int64)
    g = np.asarray(gid, dtype=np.int64)
    n = len(v)
    if n == 0:
        return v.copy()
    mod = 1 << bits
    half = mod >> 1
    steps = np.zeros(n, dtype=np.int64)
    steps[1:] = (v[1:] - v[:-1] + half) % mod - half
    first = np.r_[True, g[1:] != g[:-1]]
    steps[first] = 0
    c = np.cumsum(steps)
    starts = np.flatnonzero(first)
    out = c - c[starts][np.cumsum(first) - 1]
    if base is not None:
        out += np.asarray(base, dtype=np.int64)[g]
    return out


def grouped_searchsorted(g_sorted, v_sorted, g_query, v_query, side: str = "left") -> np.ndarray:
    """np.searchsorted over (group, value) pairs: the number of sorted pairs below each query pair
    ('left': strictly below; 'right': below or equal). Pairs are compared group first.

    One lexsort over both arrays, so groups and values may have any range.
    """
    na, nq = len(g_sorted), len(g_query)
    if nq == 0:
        return np.zeros(0, dtype=np.int64)
    if na == 0:
        return np.zeros(nq, dtype=np.int64)
    g = np.concatenate((np.asarray(g_sorted, dtype=np.int64), np.asarray(g_query, dtype=np.int64)))
    v = np.concatenate((np.asarray(v_sorted), np.asarray(v_query)))
    tie = np.concatenate((np.ones(na, dtype=np.int8), np.full(nq, 0 if side == "left" else 2, dtype=np.int8)))
    order = np.lexsort((tie, v, g))
    is_a = order < na
    below = np.cumsum(is_a)
    out = np.empty(nq, dtype=np.int64)
    qpos = ~is_a
    out[order[qpos] - na] = below[qpos]
    return out


def nan_to_none(values) -> list:
    """A float array as a JSON list, NaN (empty bin, unknown) as None."""
    arr = np.asarray(values, dtype=np.float64)
    out = arr.tolist()
    if np.isnan(arr).any():
        out = [None if x != x else x for x in out]
    return out


def opt(x) -> float | None:
    """A float for JSON, or None for NaN/None."""
    if x is None:
        return None
    x = float(x)
    return None if x != x else x
