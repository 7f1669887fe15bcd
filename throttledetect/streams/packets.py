"""The packets of one direction of one flow, as numpy columns in arrival order."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(eq=False)
class DirectionPackets:
    flow: int
    direction: int          # 0 = a->b, 1 = b->a
    rows: np.ndarray        # int64 packet rows of the capture's PacketTable
    t: np.ndarray           # float64 seconds since the capture's first packet
    size: np.ndarray        # float64 link-layer frame bytes
    payload: np.ndarray     # int64 transport payload bytes (declared)

    @property
    def n(self) -> int:
        return len(self.t)

    @property
    def span(self) -> float:
        return float(self.t[-1] - self.t[0]) if self.n > 1 else 0.0

    def rate_series(self, bin_s: float, t0: float | None = None, t1: float | None = None):
        """(bin start times, bits per second) over [t0, t1) in bins of bin_s; a last partial bin is dropped."""
        if self.n == 0:
            return np.zeros(0), np.zeros(0)
        t0 = self.t[0] if t0 is None else t0
        t1 = self.t[-1] if t1 is None else t1
        nb = max(int(np.floor((t1 - t0) / bin_s)), 0)
        if nb == 0:
            return np.zeros(0), np.zeros(0)
        k = np.floor((self.t - t0) / bin_s).astype(np.int64)
        ok = (k >= 0) & (k < nb)
        bits = np.bincount(k[ok], weights=self.size[ok] * 8.0, minlength=nb)
        return t0 + bin_s * np.arange(nb), bits / bin_s

    def window(self, t0: float, t1: float) -> "DirectionPackets":
        m = (self.t >= t0) & (self.t < t1)
        return DirectionPackets(self.flow, self.direction, self.rows[m], self.t[m], self.size[m], self.payload[m])

    def mean_rate_bps(self) -> float:
        return float(self.size.sum() * 8.0 / self.span) if self.span > 0 else 0.0
