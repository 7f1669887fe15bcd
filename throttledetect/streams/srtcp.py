"""The SRTCP index: a packet counter in clear on encrypted calls' RTCP.

SRTP encrypts RTCP's reports, but every SRTCP packet ends with a 31-bit index that its sender
increments by one per packet (RFC 3711 section 3.4: an E flag and the index, then the
authentication tag; RFC 7714's AEAD suites put no tag after it). The first 8 bytes (version,
packet type 200-207, length, the sender's SSRC) stay in clear too. So a direction whose packets
are RTCP has a loss signal like RTP's sequence numbers even though nothing else can be read: a
receive-only side (a listener with camera and microphone off, a one-way video) sends only RTCP,
and a call whose inbound media cannot be read (a throttled one that hardly gets any) still gets
its far end's RTCP feedback. Where the index sits depends on the suite: the last 4 bytes (AEAD:
WebRTC's GCM suites; Snapchat, Signal, Meet, Teams in the corpus), or before a 10- or 4-byte tag
(AES-CM with HMAC-SHA1-80 or -32: WhatsApp). Each place is tried; the index is the place where
the values of each SSRC go up by small steps (random bytes would do so once in ~10^7 pairs).

The counter counts RTCP packets only. A direction that also carries media loses media the index
never sees: a policer takes the large packets first, and the index then shows nothing lost while
the direction lost 4 % (Snapchat's looped call policed: its QUIC packets, a third of the bytes
beside the RTCP, were all the policer took, and the index would have cleared the flow). So the
index is the direction's loss signal only where the direction is its RTCP: its packets carry
MIN_BYTE_SHARE of the direction's bytes over their span; elsewhere it is only described. Even
there it shows losses but clears nothing (detect/dropping.uncovered_reason): a far end that
sends no media and a far end whose media a policer or a block took whole both leave a direction
of RTCP alone (3 of Snapchat's policed loops, their QUIC packets all taken, read `none`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TRAILER = 16                   # bytes read at the end of each RTCP packet
PLACES = (4, 8, 14)            # the index's distance from the end: AEAD, HMAC-SHA1-32, HMAC-SHA1-80
MAX_STEP = 128                 # a larger jump (or a step back) starts a new run: a rekeyed context, a restart
MIN_RUN_SHARE = 0.9            # steps of 1..MAX_STEP among consecutive packets of an SSRC at the right place
MIN_PACKETS = 20
MIN_BYTE_SHARE = 0.95          # of the direction's bytes over the index's span


def _be32(b: np.ndarray) -> np.ndarray:
    """Each row's 4 bytes as a big-endian unsigned integer (int64)."""
    return np.ascontiguousarray(b, dtype=np.uint8).view(">u4")[:, 0].astype(np.int64)


def rtcp_mask(first: np.ndarray, payload_len: np.ndarray) -> np.ndarray:
    """Packets that start like RTCP (version 2, packet type 200-207) and are long enough to hold an
    SRTCP trailer; first = each packet's first bytes (uint8[n, 2 or more])."""
    return (((first[:, 0] & 0xC0) == 0x80) & (first[:, 1] >= 200) & (first[:, 1] <= 207)
            & (payload_len >= 8 + TRAILER))


@dataclass(eq=False)
class SrtcpIndex:
    """The SRTCP packets of one direction, their senders and indices, in arrival order."""

    place: int               # bytes from the end to the index
    t: np.ndarray            # float64 arrival, seconds since the capture's first packet
    size: np.ndarray         # float64 frame bytes
    ssrc: np.ndarray         # int64 sender SSRC
    index: np.ndarray        # int64 SRTCP index (31 bits)
    byte_share: float        # of the direction's bytes over [t[0], t[-1]]

    @property
    def n(self) -> int:
        return len(self.t)

    @property
    def covers_direction(self) -> bool:
        return self.byte_share >= MIN_BYTE_SHARE

    def describe(self) -> str:
        where = "the last 4 bytes" if self.place == 4 else f"the 4 bytes before a {self.place - 4}-byte tag"
        senders = len(np.unique(self.ssrc))
        return (f"SRTCP index in {where}: {self.n} RTCP packets of {senders} sender{'s' if senders > 1 else ''}, "
                f"{self.byte_share:.0%} of the bytes")

    def loss_units(self):
        """One unit per index expected between the lowest and highest received of each run of each
        sender (runs split at steps back or over MAX_STEP); a lost unit's time and size are
        interpolated between its received neighbours."""
        from throttledetect.streams.loss import LossUnits, merge_loss
        parts = []
        for s in np.unique(self.ssrc):
            m = np.flatnonzero(self.ssrc == s)
            idx, t, size = self.index[m], self.t[m], self.size[m]
            brk = np.flatnonzero((np.diff(idx) <= 0) | (np.diff(idx) > MAX_STEP)) + 1
            for a, b in zip(np.r_[0, brk], np.r_[brk, len(idx)]):
                if b - a < 2:
                    continue
                ii, tt, ss = idx[a:b], t[a:b], size[a:b]
                u, first = np.unique(ii, return_index=True)          # duplicates count once
                expected = np.arange(u[0], u[-1] + 1)
                parts.append(LossUnits(t=np.interp(expected, u, tt[first]), lost=~np.isin(expected, u),
                                       size=np.interp(expected, u, ss[first]), source="srtcp"))
        return merge_loss(parts)


def find_srtcp_index(t, size, first8: np.ndarray, trailer: np.ndarray, dir_t=None,
                     dir_size=None) -> SrtcpIndex | None:
    """The SRTCP index of a direction's RTCP packets (their times, frame sizes, first 8 and last
    TRAILER bytes), or None when no place holds one. dir_t, dir_size: every packet of the
    direction (times, frame sizes), for the share of its bytes the RTCP carries."""
    if len(t) < MIN_PACKETS:
        return None
    ssrc = _be32(first8[:, 4:8])
    o = np.lexsort((np.arange(len(t)), ssrc))         # by sender, arrival order within
    same = ssrc[o][1:] == ssrc[o][:-1]
    if not same.any():
        return None
    best = None
    for place in PLACES:
        at = TRAILER - place
        index = _be32(trailer[:, at:at + 4]) & 0x7FFFFFFF
        step = np.diff(index[o])[same]
        share = float(np.mean((step >= 1) & (step <= MAX_STEP)))
        if share >= MIN_RUN_SHARE and (best is None or share > best[0]):
            best = (share, place, index)
    if best is None:
        return None
    _, place, index = best
    t = np.asarray(t, dtype=np.float64)
    size = np.asarray(size, dtype=np.float64)
    share = 1.0
    if dir_t is not None:
        span = (dir_t >= t[0]) & (dir_t <= t[-1])
        total = float(np.asarray(dir_size)[span].sum())
        share = float(size.sum()) / total if total > 0 else 0.0
    return SrtcpIndex(place=place, t=t, size=size, ssrc=ssrc, index=index, byte_share=min(share, 1.0))
