"""The data segments of one TCP direction: sequence space, resends, holes, and the losses they show.

The project's one definition of TCP loss (metrics.tcp and the detectors both use
``sequence_pass``): every segment that occupies sequence space is classed, in time order, as
*new* (above the highest sequence number seen), *retransmission* (bytes already seen: sent
again, because they were lost after the capture point or spuriously) or *gap filled* (bytes
below the highest that were never seen: lost before the capture point, or reordered; a hole
filled within the reordering window, the handshake RTT, else Wireshark's 3 ms, is reordering).

Seen where the data arrives, the losses are the holes (``TcpSegments.loss_units``: one lost
unit per MSS of sequence space skipped, at the time the hole opened, less what reordering filled
within the window: a segment lost before the capture point is lost whether its resend shows up
in the capture or not). Seen where the data is sent, they
are the retransmissions; the SIGCOMM'16 detector (detect/policing_tcp.py) reads those with SACK.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from throttledetect.jit import njit
from throttledetect.wire.rtp import unwrap

REORDER_WINDOW_S = 0.003      # Wireshark's out-of-order threshold when no RTT is known
MAX_HOLES = 1024              # holes tracked per direction; the oldest is forgotten beyond this


@njit
def sequence_pass(gid, s, e, ts, keepalive_cand, retx, fill, new, fill_delay, keepalive):
    """Class every sequence-occupying segment of every direction (grouped, time-ordered).

    Per segment: bytes already seen (retx), bytes filling a hole (fill, with the time since the
    hole opened in fill_delay, -1 if none), bytes above the highest seen (new), keep-alive flag.
    Holes below the highest sequence number are kept sorted and disjoint.
    """
    n = s.shape[0]
    hs = np.empty(MAX_HOLES + 1, dtype=np.int64)
    he = np.empty(MAX_HOLES + 1, dtype=np.int64)
    ht = np.empty(MAX_HOLES + 1, dtype=np.int64)
    nh = 0
    high = 0
    cur = -1
    for i in range(n):
        if gid[i] != cur:
            cur = gid[i]
            nh = 0
            high = s[i]
        si = s[i]
        ei = e[i]
        fill_delay[i] = -1
        if keepalive_cand[i] and si == high - 1:
            keepalive[i] = True
            continue
        top = min(ei, high)
        if si < top:
            unseen = 0
            # first hole ending after si (holes are sorted and disjoint: ends are sorted too)
            lo, hi = 0, nh
            while lo < hi:
                mid = (lo + hi) // 2
                if he[mid] <= si:
                    lo = mid + 1
                else:
                    hi = mid
            j = lo
            while j < nh and hs[j] < top:
                a = max(hs[j], si)
                b = min(he[j], top)
                if a < b:
                    unseen += b - a
                    if fill_delay[i] < 0:
                        fill_delay[i] = ts[i] - ht[j]
                    if a == hs[j] and b == he[j]:
                        for k in range(j, nh - 1):
                            hs[k] = hs[k + 1]
                            he[k] = he[k + 1]
                            ht[k] = ht[k + 1]
                        nh -= 1
                        continue
                    elif a == hs[j]:
                        hs[j] = b
                    elif b == he[j]:
                        he[j] = a
                    else:
                        for k in range(nh, j + 1, -1):
                            hs[k] = hs[k - 1]
                            he[k] = he[k - 1]
                            ht[k] = ht[k - 1]
                        hs[j + 1] = b
                        he[j + 1] = he[j]
                        ht[j + 1] = ht[j]
                        he[j] = a
                        nh += 1
                        j += 1
                        if nh > MAX_HOLES:      # forget the lowest hole
                            for k in range(nh - 1):
                                hs[k] = hs[k + 1]
                                he[k] = he[k + 1]
                                ht[k] = ht[k + 1]
                            nh -= 1
                            j -= 1
                j += 1
            fill[i] = unseen
            retx[i] = (top - si) - unseen
        if ei > high:
            if si > high:
                if nh == MAX_HOLES:
                    for k in range(nh - 1):
                        hs[k] = hs[k + 1]
                        he[k] = he[k + 1]
                        ht[k] = ht[k + 1]
                    nh -= 1
                hs[nh] = high
                he[nh] = si
                ht[nh] = ts[i]
                nh += 1
            new[i] = ei - max(si, high)
            high = ei


def _first_per_group(gid: np.ndarray, n_groups: int, fill=-1) -> np.ndarray:
    """Index of the first element of each group id in a group-sorted array (fill where absent)."""
    out = np.full(n_groups, fill, dtype=np.int64)
    if len(gid):
        g, idx = np.unique(gid, return_index=True)
        out[g] = idx
    return out


@dataclass(eq=False)
class TcpSegments:
    flow: int
    direction: int
    rows: np.ndarray
    t: np.ndarray
    seq: np.ndarray              # relative, unwrapped start sequence number
    length: np.ndarray           # payload bytes
    size: np.ndarray             # frame bytes
    retransmission: np.ndarray   # bool: bytes already seen (a resend, or a late copy)
    hole_opened: np.ndarray      # bytes skipped when this segment went beyond everything seen
    reordered: np.ndarray        # bytes that filled a hole within the reordering window
    reorder_age: np.ndarray      # s since that hole opened (0 where none)

    @property
    def n(self) -> int:
        return len(self.t)

    def loss_units(self):
        """One unit per segment carrying new data, plus one lost unit per MSS of sequence space
        skipped when a hole opened (at that time), less what reordering filled in soon after:
        a segment lost before the capture point is lost whether or not its resend is seen
        (a capture that ends, or a drop with no resend at all, leaves the hole open)."""
        from throttledetect.streams.loss import LossUnits
        mss = max(int(self.length.max()), 1) if self.n else 1
        fresh = ~self.retransmission
        # reordered bytes cancel the hole they filled: credited at the time that hole opened
        k_open = np.ceil(self.hole_opened / mss).astype(np.int64)
        k_back = np.floor(self.reordered / mss).astype(np.int64)
        t_open = np.repeat(self.t, k_open)
        t_back = np.repeat(self.t - self.reorder_age, k_back)
        lost_t = _cancel(t_open, t_back)
        t = np.concatenate((self.t[fresh], lost_t))
        lost = np.concatenate((np.zeros(int(fresh.sum()), bool), np.ones(len(lost_t), bool)))
        size = np.concatenate((self.size[fresh], np.full(len(lost_t), float(np.median(self.size)) if self.n else 0.0)))
        o = np.argsort(t, kind="stable")
        return LossUnits(t=t[o], lost=lost[o], size=size[o], source="tcp")


def _cancel(t_open: np.ndarray, t_back: np.ndarray) -> np.ndarray:
    """Hole-opening times less one for each reordering credit, matched to the nearest opening."""
    if len(t_back) == 0 or len(t_open) == 0:
        return t_open
    t_open = np.sort(t_open)
    keep = np.ones(len(t_open), dtype=bool)
    for tb in np.sort(t_back):                  # reorderings are few: one match each
        j = int(np.searchsorted(t_open, tb - 1e-9))
        cand = [c for c in (j - 1, j, j + 1) if 0 <= c < len(t_open) and keep[c]]
        if cand:
            keep[min(cand, key=lambda c: abs(t_open[c] - tb))] = False
    return t_open[keep]


def handshake_rtt(cap, ft, i: int) -> float | None:
    """The larger of the two handshake gaps seen at the capture point (SYN->SYN-ACK at the client,
    SYN-ACK->ACK at the server): the RTT from wherever the capture was taken."""
    rows = ft.packet_indices(i)[:8]
    flags = cap.packets.tcp_flags[rows].astype(np.int64)
    t = cap.packets.ts_ns[rows].astype(np.int64)
    syn = np.flatnonzero((flags & 0x12) == 0x02)
    synack = np.flatnonzero((flags & 0x12) == 0x12)
    if len(syn) and len(synack) and synack[0] > syn[0]:
        ack = synack[0] + 1 if synack[0] + 1 < len(rows) else synack[0]
        rtt = max(t[synack[0]] - t[syn[0]], t[ack] - t[synack[0]]) / 1e9
        if rtt > 0:
            return float(rtt)
    return None


def build_tcp_segments(cap, ft, i: int, d: int, rows: np.ndarray, t: np.ndarray, size: np.ndarray,
                       payload: np.ndarray) -> TcpSegments:
    data = payload > 0
    rows, t, size, length = rows[data], t[data], size[data], payload[data]
    n = len(rows)
    seq = unwrap(cap.packets.tcp_seq[rows].astype(np.int64), 1 << 32) if n else np.zeros(0, np.int64)
    if n:
        seq = seq - seq.min()
    retx = np.zeros(n, np.int64)
    fill = np.zeros(n, np.int64)
    new = np.zeros(n, np.int64)
    fill_delay = np.zeros(n, np.int64)
    keepalive = np.zeros(n, bool)
    if n:
        t_ns = np.round(t * 1e9).astype(np.int64)
        sequence_pass(np.zeros(n, np.int64), seq, seq + length, t_ns, (length == 1), retx, fill, new, fill_delay,
                      keepalive)
    rtt = handshake_rtt(cap, ft, i)
    window_ns = int((rtt if rtt else REORDER_WINDOW_S) * 1e9)
    is_retx = (retx > 0) & ~keepalive
    end = seq + length
    high_before = np.concatenate(([0], np.maximum.accumulate(end)[:-1])) if n else np.zeros(0, np.int64)
    opened = np.where(np.arange(n) > 0, np.maximum(seq - high_before, 0), 0)
    quick = (fill > 0) & (fill_delay >= 0) & (fill_delay < window_ns)
    return TcpSegments(i, d, rows, t, seq, length, size, is_retx | keepalive, opened,
                       np.where(quick, np.minimum(fill, length), 0), np.where(quick, fill_delay, 0) / 1e9)
