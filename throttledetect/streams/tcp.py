"""The data segments of one TCP direction: sequence space, resends, and holes (lost segments).

Seen where the data arrives, a segment lost upstream leaves a hole in the sequence space (the
next segment starts beyond everything received so far); the hole's size in segments (bytes over
the largest segment) counts the losses, at the time the hole showed. A hole filled sooner than a
resend could come back (under 0.8 x the handshake RTT) is reordering, not loss. Seen where the
data is sent, losses show as resends instead (``retransmission``): policing_tcp reads those.
This is the project's one definition of TCP loss (metrics and detectors both use it).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from throttledetect.streams.rtp import unwrap

REORDER_DEFAULT_S = 0.01    # a hole filled this soon is reordering (no handshake RTT to go by)


@dataclass(eq=False)
class TcpSegments:
    flow: int
    direction: int
    rows: np.ndarray
    t: np.ndarray
    seq: np.ndarray              # relative, unwrapped start sequence number
    length: np.ndarray           # payload bytes
    size: np.ndarray             # frame bytes
    retransmission: np.ndarray   # bool: covers no new sequence space (a resend, or a late copy)
    hole_segments: np.ndarray    # int: segments missing in the hole this segment revealed (0: none)

    @property
    def n(self) -> int:
        return len(self.t)

    def loss_units(self):
        """One unit per data segment received plus one lost unit per segment missing in a hole;
        resends are not counted again."""
        from throttledetect.streams.loss import LossUnits
        fresh = ~self.retransmission
        k = self.hole_segments
        lost_t = np.repeat(self.t, k)
        t = np.concatenate((self.t[fresh], lost_t))
        lost = np.concatenate((np.zeros(int(fresh.sum()), bool), np.ones(len(lost_t), bool)))
        size = np.concatenate((self.size[fresh], np.repeat(self.size, k)))
        o = np.argsort(t, kind="stable")
        return LossUnits(t=t[o], lost=lost[o], size=size[o], source="tcp")


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
    if len(rows) == 0:
        z = np.zeros(0)
        return TcpSegments(i, d, rows, z, z.astype(np.int64), z.astype(np.int64), z, z.astype(bool),
                           z.astype(np.int64))
    seq = unwrap(cap.packets.tcp_seq[rows].astype(np.int64), 1 << 32)
    seq = seq - seq.min()
    end = seq + length
    prev_max = np.concatenate(([-1], np.maximum.accumulate(end)[:-1]))
    retrans = end <= prev_max
    mss = max(int(length.max()), 1)
    hole = np.where(prev_max >= 0, seq - prev_max, 0)
    hole_segments = np.where(hole > 0, np.ceil(hole / mss), 0).astype(np.int64)
    holes = np.flatnonzero(hole_segments)
    if len(holes):
        rtt = handshake_rtt(cap, ft, i)
        window = 0.8 * rtt if rtt else REORDER_DEFAULT_S
        by_seq = np.lexsort((np.arange(len(seq)), seq))
        s_sorted = seq[by_seq]
        for k in holes:                      # one lookup per hole (a loss event), not per packet
            start = prev_max[k]
            j = np.searchsorted(s_sorted, start)
            cand = by_seq[j:np.searchsorted(s_sorted, start, side="right")]
            cand = cand[cand > k]
            if len(cand) and t[cand.min()] - t[k] < window:
                hole_segments[k] = 0
    return TcpSegments(i, d, rows, t, seq, length, size, retrans, hole_segments)
