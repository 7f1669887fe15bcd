"""TCP header options of captured segments: MSS, timestamps (TSval), SACK blocks.

One compiled pass over the rows asked for; the header length comes from the data offset nibble,
bounded by the captured frame, so a cut or lying header never reads past what was captured.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from throttledetect.jit import njit
from throttledetect.read import pages

_TCP_OPT_END, _TCP_OPT_NOP, _TCP_OPT_MSS, _TCP_OPT_SACK, _TCP_OPT_TS = 0, 1, 2, 5, 8
MAX_SACK = 4


@dataclass
class TcpOptions:
    """Per row: mss (-1: none), has_ts, tsval (-1: none; the sender's timestamp clock, RFC 7323),
    sack_start / sack_end (raw 32-bit, MAX_SACK columns), nsack."""

    mss: np.ndarray
    has_ts: np.ndarray
    tsval: np.ndarray
    sack_start: np.ndarray
    sack_end: np.ndarray
    nsack: np.ndarray


def tcp_options(cap, rows: np.ndarray) -> TcpOptions:
    """The options of the TCP segments at packet ``rows`` of a capture."""
    pk = cap.packets
    buf = cap.buffer
    rows = np.asarray(rows, dtype=np.int64)
    l4 = pk.l4_off[rows].astype(np.int64)
    frame_end = pk.frame_off[rows].astype(np.int64) + pk.caplen[rows].astype(np.int64)
    ok = (l4 >= 0) & (l4 + 13 <= frame_end) & (l4 + 13 <= buf.shape[0])
    doff = np.zeros(len(rows), dtype=np.int64)
    doff[ok] = (pages.gather(cap, l4[ok] + 12).astype(np.int64) >> 4) * 4
    hdr_end = np.minimum(l4 + doff, np.minimum(frame_end, buf.shape[0]))
    n = len(rows)
    out = TcpOptions(np.empty(n, np.int64), np.empty(n, np.bool_), np.empty(n, np.int64),
                     np.zeros((n, MAX_SACK), np.int64), np.zeros((n, MAX_SACK), np.int64), np.zeros(n, np.int64))
    at = np.where(ok, l4, -1)
    # a span of file at a time, the pages given back after each (read/pages.py): a bulk flow's
    # headers are spread over the whole capture. Each row is parsed on its own, so the order of
    # the rows does not matter.
    for idx in pages.windows(cap, at):
        k = len(idx)
        part = TcpOptions(np.empty(k, np.int64), np.empty(k, np.bool_), np.empty(k, np.int64),
                          np.zeros((k, MAX_SACK), np.int64), np.zeros((k, MAX_SACK), np.int64), np.zeros(k, np.int64))
        _parse_tcp_options(buf, at[idx], hdr_end[idx], part.mss, part.has_ts, part.tsval, part.sack_start,
                           part.sack_end, part.nsack)
        for name in ("mss", "has_ts", "tsval", "sack_start", "sack_end", "nsack"):
            getattr(out, name)[idx] = getattr(part, name)
    return out


@njit
def _parse_tcp_options(buf, l4_off, hdr_end, mss_out, ts_out, tsval_out, sack_start, sack_end, nsack):
    """MSS, timestamp presence and value, and SACK blocks (raw 32-bit) of TCP headers in ``buf``.

    ``hdr_end`` bounds each header (data offset and capture length both respected).
    """
    n = l4_off.shape[0]
    for i in range(n):
        mss_out[i] = -1
        ts_out[i] = False
        tsval_out[i] = -1
        nsack[i] = 0
        start = l4_off[i]
        if start < 0:
            continue
        p = start + 20
        end = hdr_end[i]
        while p < end:
            kind = buf[p]
            if kind == _TCP_OPT_END:
                break
            if kind == _TCP_OPT_NOP:
                p += 1
                continue
            if p + 1 >= end:
                break
            length = np.int64(buf[p + 1])
            if length < 2 or p + length > end:
                break
            if kind == _TCP_OPT_MSS and length == 4:
                mss_out[i] = (np.int64(buf[p + 2]) << 8) | np.int64(buf[p + 3])
            elif kind == _TCP_OPT_TS:
                ts_out[i] = True
                if length == 10:
                    v = np.int64(0)
                    for b in range(4):
                        v = (v << 8) | np.int64(buf[p + 2 + b])
                    tsval_out[i] = v
            elif kind == _TCP_OPT_SACK and (length - 2) % 8 == 0:
                k = 0
                q = p + 2
                while q + 8 <= p + length and k < 4:
                    s = np.int64(0)
                    e = np.int64(0)
                    for b in range(4):
                        s = (s << 8) | np.int64(buf[q + b])
                        e = (e << 8) | np.int64(buf[q + 4 + b])
                    sack_start[i, k] = s
                    sack_end[i, k] = e
                    k += 1
                    q += 8
                nsack[i] = k
            p += length
