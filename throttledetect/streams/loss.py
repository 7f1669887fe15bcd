"""A loss signal: one entry per packet that should have arrived, lost or not, in time order."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Where a loss signal comes from, most trusted first: RTP sequence numbers count every packet
# sent; TCP holes count segments missing from the byte stream; the SRTCP index counts the RTCP
# packets of a direction that carries little else (streams/srtcp.py); a cadence counts the slots
# of a periodic sender left empty (an estimate: see streams/cadence.py).
SOURCES = ("rtp", "tcp", "srtcp", "cadence")


@dataclass(eq=False)
class LossUnits:
    t: np.ndarray           # float64 expected arrival (interpolated for lost units)
    lost: np.ndarray        # bool
    size: np.ndarray        # float64 frame bytes (interpolated for lost units)
    source: str             # one of SOURCES, or "mixed"
    stream: np.ndarray | None = None   # int: which stream of the direction each unit belongs to
    # the same units on the sender's clock carried to the capture point by the path's least delay
    # (audio RTP: where a policer upstream of later jitter met them); None without a sender clock
    t_sender: np.ndarray | None = None

    @property
    def n(self) -> int:
        return len(self.t)

    @property
    def n_lost(self) -> int:
        return int(np.count_nonzero(self.lost))

    @property
    def fraction(self) -> float:
        return self.n_lost / self.n if self.n else 0.0

    def window(self, t0: float, t1: float) -> "LossUnits":
        m = (self.t >= t0) & (self.t < t1)
        return LossUnits(self.t[m], self.lost[m], self.size[m], self.source,
                         None if self.stream is None else self.stream[m],
                         None if self.t_sender is None else self.t_sender[m])

    def binned(self, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(units, lost) per bin of the given edges (units outside are ignored)."""
        nb = len(edges) - 1
        k = np.searchsorted(edges, self.t, side="right") - 1
        ok = (k >= 0) & (k < nb)
        units = np.bincount(k[ok], minlength=nb)
        lost = np.bincount(k[ok], weights=self.lost[ok], minlength=nb)
        return units, lost


def merge_loss(parts: list) -> LossUnits | None:
    """Several streams' loss units as one signal in time order (``stream`` says whose each is)."""
    parts = [p for p in parts if p is not None and p.n]
    if not parts:
        return None
    t = np.concatenate([p.t for p in parts])
    o = np.argsort(t, kind="stable")
    stream = np.concatenate([np.full(p.n, k) for k, p in enumerate(parts)])
    sources = {p.source for p in parts}
    # units without a sender clock keep their arrival times on the sender basis
    t_sender = (np.concatenate([p.t if p.t_sender is None else p.t_sender for p in parts])[o]
                if any(p.t_sender is not None for p in parts) else None)
    return LossUnits(t[o], np.concatenate([p.lost for p in parts])[o], np.concatenate([p.size for p in parts])[o],
                     sources.pop() if len(sources) == 1 else "mixed", stream[o], t_sender)
