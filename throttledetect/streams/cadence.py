"""The sending clock of a flow without readable RTP, and the packets it lost (an estimate).

Voice codecs send one packet per frame on a clock (Opus and G.711 every 20 ms by default,
libtgvoip every 60 ms, others 10-120 ms), encrypted or not. Where a direction carries such a
train, its period P and phase show in the arrival times, and a frame that never arrived leaves
its slot empty. This module finds the train and counts the slots:

1. **Which packets**: voice packets are the small, frequent ones; video and control share the
   flow (one 5-tuple carries everything in most apps). Candidate subsets are the packets up to a
   natural break in the sizes (voice and video rarely overlap) or up to a size quantile; for each, the phase coherence |mean exp(2 pi i t / P)| is computed in
   windows of WINDOW_S (so a sender clock's drift never accumulates) and averaged, over a grid
   of periods P. A pure train at P is equally coherent at P/2, P/3 ...: the fundamental is the
   longest period whose coherence is within 90 % of the best. The subset and P with the highest
   coherence x share of the subset's packets on the grid win; MIN_COHERENCE rejects flows with
   no clock (bulk transfers, screen sharing, jitter wider than P).
2. **Slots**: in each window the grid's phase is the circular mean of the packets' phases;
   every packet of the subset fills its nearest slot (a packet pushed off the grid by jitter
   or a queue is late, not lost). Runs of filled slots
   separated by at most MAX_LOSS_RUN empty ones are talk spurts; longer empty runs are pauses
   (DTX, mute: the sender stops, nothing is lost).
3. **Windows that hold one train**: a sender that switches to longer frames (2P, 3P) leaves half
   or two thirds of the slots empty, regularly, with larger packets (random losses leave the
   phases at 2P and 3P incoherent; a policer keeps the sizes); such windows, and windows with
   more packets than slots, are not counted (_window_valid).
4. **Counts**: per spurt, expected = slots from its first to its last filled one, received =
   its filled slots plus the extra packets of slots within NEAR_EMPTY of an empty one (a packet
   pushed by jitter into its neighbour's slot, or released with others after a stall, still
   counts, so jitter and stalls lose nothing on balance; a second packet far from any empty slot
   is another packet of the voice's size, such as RTCP muxed into the flow, and counted it would
   cancel a loss elsewhere: 2 % dropped from the looped WebRTC call's encrypted twin read as 0 %,
   its 2.4 % of RTCP filling the count); lost = expected - received, never below zero. The empty
   slots are where the losses are placed.

What it rests on is reported (period, coherence, share on grid, spurts, expected and received
counts): an estimate, trusted less than RTP sequence numbers. Jitter beyond about P/2 destroys
the grid (coherence falls below MIN_COHERENCE) and then there is no cadence, not a false loss.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PERIODS_MS = np.round(np.arange(10.0, 120.0 + 1e-9, 0.1), 1)
WINDOW_S = 2.0
MIN_WINDOW_PACKETS = 8
MIN_COHERENCE = 0.8           # the clock must show clearly (1 = every packet exactly on the grid)
MIN_ON_GRID = 0.6             # ... and hold most of the chosen packets
ON_GRID = 0.3                 # a packet within 0.3 P of a slot is on the grid
MAX_LOSS_RUN = 3              # a run of more empty slots is a pause of the sender (DTX, mute)
MIN_PACKETS = 60
SIZE_QUANTILES = (1.0, 0.9, 0.75, 0.6, 0.45, 0.3, 0.2)
SIZE_BREAK = 1.5             # a size this much larger than the next smaller one starts another kind of packet
LONGER_FRAME_COHERENCE = 0.5  # a window this coherent at 2P or 3P holds a train of longer frames ...
LONGER_FRAME_SIZE = 1.3       # ... when its packets are this much larger than the train's
MIN_VALID_WINDOWS = 0.5       # a train must hold in at least half the windows
MIN_SPURT_SLOTS = 10          # talk spurts average at least this many slots (200 ms at 20 ms)
COMPLETE_LOSS = 0.03          # a window whose slots are this nearly all filled shows the sender's whole clock
NEAR_EMPTY = 3                # a slot's extra packet within this many slots of an empty one is a re-timed frame
MAX_OVERFILL = 0.03           # packets beyond one per slot, as a share of the slots: more, and the grid is not the clock


@dataclass(eq=False)
class Cadence:
    """The periodic (voice) train of one direction and its slot accounting."""

    period_s: float
    coherence: float
    on_grid_share: float
    max_size: float          # the subset: packets up to this frame size
    slot_t: np.ndarray       # time of every expected slot inside talk spurts
    slot_filled: np.ndarray  # bool per slot
    slot_lost: np.ndarray    # bool per slot: the spurt's missing packets, on its empty slots
    slot_size: np.ndarray    # frame bytes of the packet that filled it (or the spurt's median)
    expected: int
    received: int
    spurts: int
    valid_windows: float = 1.0    # share of windows holding one train at the period
    best_window_loss: float = 0.0  # the least loss of a WINDOW_S window (MIN_WINDOW_PACKETS+ slots)
    overfill: float = 0.0          # packets beyond one per slot (summed over windows) / slots

    @property
    def one_per_slot(self) -> bool:
        """Does the grid hold one packet per slot? A grid coarser than the sender's clock, or a
        sender that adds packets of the voice's size between its frames, puts more packets than
        slots in every window: a lost packet then leaves no slot empty (5 % of a WhatsApp call's
        packets dropped at random left all of its 23.2 ms grid's slots filled, 18 % more packets
        than slots, and the call was called clean: the validation's encrypted-media twins)."""
        return self.overfill <= MAX_OVERFILL

    @property
    def complete(self) -> bool:
        """Does some window have (nearly) every slot filled, one packet each? Then the grid is the
        sender's clock. A grid finer than the sender's (a sender that sends 20 ms frames in pairs
        10 ms apart, a fax's redundant bursts) leaves about half its slots empty everywhere,
        regularly, with nothing lost: read as losses, that was a policer on untouched calls (the
        validation's encrypted-media twins, docs/validation.md). A coarser one fills every slot
        whatever is lost (one_per_slot)."""
        return self.best_window_loss <= COMPLETE_LOSS and self.one_per_slot

    def same_clock(self, other: "Cadence | None") -> bool:
        """Is other a complete train at this one's period (within 5 %): the same app's clock,
        shown whole in the direction the network did not touch?"""
        return other is not None and other.complete and abs(other.period_s - self.period_s) <= 0.05 * self.period_s

    def sound(self, other: "Cadence | None") -> bool:
        """Are this direction's empty slots losses: one packet per slot (one_per_slot), and the
        grid the sender's whole clock, shown by a window of its own that is complete or by the
        other direction's complete train at the same period (same_clock)? One per slot is asked
        on both paths: where packets outnumber the slots a lost packet's slot is filled by its
        neighbour, whatever the other direction shows."""
        return self.one_per_slot and (self.complete or self.same_clock(other))

    @property
    def lost(self) -> int:
        return max(self.expected - self.received, 0)

    @property
    def fraction(self) -> float:
        return self.lost / self.expected if self.expected else 0.0

    def describe(self) -> str:
        return (f"cadence {self.period_s * 1e3:.1f} ms (coherence {self.coherence:.2f}, "
                f"{self.on_grid_share:.0%} of packets up to {self.max_size:.0f} B on it), "
                f"{self.expected} slots in {self.spurts} talk spurts, {self.received} filled")

    def loss_units(self):
        """Units for the loss tests: one per slot, ``slot_lost`` marking the losses (per talk
        spurt as many as its count says, placed on its empty slots)."""
        from throttledetect.streams.loss import LossUnits
        return LossUnits(t=self.slot_t.copy(), lost=self.slot_lost.copy(), size=self.slot_size.copy(),
                         source="cadence")


def _coherence(t: np.ndarray, periods_s: np.ndarray) -> np.ndarray:
    """Mean over windows of the phase coherence at each period (weights: packets per window)."""
    k = np.floor((t - t[0]) / WINDOW_S).astype(np.int64)
    nb = int(k[-1]) + 1
    counts = np.bincount(k, minlength=nb)
    use = counts >= MIN_WINDOW_PACKETS
    if not use.any():
        return np.zeros(len(periods_s))
    sel = use[k]
    t, k = t[sel], k[sel]
    out = np.zeros(len(periods_s))
    w = counts[use].astype(np.float64)
    idx = np.searchsorted(np.flatnonzero(use), k)
    chunk = max(1, 2_000_000 // max(len(t), 1))
    for a in range(0, len(periods_s), chunk):       # chunks of periods: memory stays bounded
        p = periods_s[a:a + chunk]
        ph = np.exp(2j * np.pi * (t[None, :] - t[0]) / p[:, None])
        sums = np.zeros((len(p), len(w)), dtype=np.complex128)
        for j in range(len(p)):                     # one bincount per period, not per packet
            sums[j] = np.bincount(idx, weights=ph[j].real, minlength=len(w)) + \
                1j * np.bincount(idx, weights=ph[j].imag, minlength=len(w))
        out[a:a + chunk] = (np.abs(sums) / w).dot(w) / w.sum()
    return out


def _fundamental(coh: np.ndarray) -> int:
    best = float(coh.max())
    near = np.flatnonzero(coh >= 0.9 * best)
    return int(near.max())


def _size_caps(size: np.ndarray) -> tuple[list, np.ndarray]:
    """Candidate size caps: each size just below a natural break (the next size at least
    SIZE_BREAK times larger: voice and video rarely overlap), the largest size, and quantiles
    (for flows whose sizes form one continuum). Returns (caps largest first, break sizes)."""
    u = np.unique(size)
    gaps = np.flatnonzero(u[1:] >= SIZE_BREAK * u[:-1])
    breaks = u[gaps]
    caps = set(float(c) for c in breaks) | {float(u[-1])}
    caps |= {float(np.quantile(size, q)) for q in SIZE_QUANTILES}
    return sorted(caps, reverse=True), breaks


def find_cadence(t: np.ndarray, size: np.ndarray) -> Cadence | None:
    """The voice train of a direction (arrival times, frame sizes), or None when there is none."""
    t = np.asarray(t, dtype=np.float64)
    size = np.asarray(size, dtype=np.float64)
    if len(t) < MIN_PACKETS or t[-1] - t[0] < 2 * WINDOW_S:
        return None
    periods = PERIODS_MS / 1e3
    caps, breaks = _size_caps(size)
    best = None
    for cap in caps:
        m = size <= cap
        if np.count_nonzero(m) < MIN_PACKETS:
            continue
        ts = t[m]
        # coarse pass on a 0.5 ms grid, then refined around the fundamental
        coarse = periods[::5]
        coh = _coherence(ts, coarse)
        k = _fundamental(coh)
        lo, hi = max(0, 5 * k - 5), min(len(periods), 5 * k + 6)
        fine = periods[lo:hi]
        coh_f = _coherence(ts, fine)
        p = float(fine[int(np.argmax(coh_f))])
        c = float(coh_f.max())
        share = _on_grid_share(ts, p)
        score = c * share
        if best is None or score > best[0] + 1e-9:
            best = (score, cap, p, c, share)
    if best is None:
        return None
    _, cap, p, c, share = best
    if c < MIN_COHERENCE or share < MIN_ON_GRID:
        return None
    # The subset that shows the clock best may leave out the larger voice frames (VBR codecs):
    # count slots over the largest subset that keeps the clock nearly as clear, so that no voice
    # packet is missed, but never across a natural break in the sizes (beyond it lies other media,
    # whose packets would fill the slots of lost voice packets).
    ceiling = float(breaks[breaks >= cap].min()) if np.any(breaks >= cap) else float(size.max())
    for wider in caps:
        if wider <= cap or wider > ceiling:
            continue
        m = size <= wider
        cw = float(_coherence(t[m], np.array([p]))[0])
        if cw >= 0.85 * c and cw >= MIN_COHERENCE:
            cap, c, share = wider, cw, _on_grid_share(t[m], p)
            break
    return _slots(t, size, cap, p, c, share)


def _phases(ts: np.ndarray, p: float) -> tuple[np.ndarray, np.ndarray]:
    """Per packet: (window index, offset from the window's grid in units of P, in [-0.5, 0.5))."""
    k = np.floor((ts - ts[0]) / WINDOW_S).astype(np.int64)
    z = np.exp(2j * np.pi * (ts - ts[0]) / p)
    nb = int(k[-1]) + 1
    zr = np.bincount(k, weights=z.real, minlength=nb)
    zi = np.bincount(k, weights=z.imag, minlength=nb)
    phase0 = np.angle(zr + 1j * zi) / (2 * np.pi)            # window phase, cycles
    cyc = (ts - ts[0]) / p - phase0[k]
    off = cyc - np.round(cyc)
    return k, off


def _on_grid_share(ts: np.ndarray, p: float) -> float:
    _, off = _phases(ts, p)
    return float(np.mean(np.abs(off) < ON_GRID))


def _window_valid(ts: np.ndarray, ss: np.ndarray, p: float) -> np.ndarray:
    """Per WINDOW_S window of the subset's packets: does it hold one train at P? A sender that
    switched to longer frames (2P, 3P) leaves half or two thirds of the slots empty, regularly,
    and puts more audio in each packet; a policer at half the rate empties the same slots but
    leaves the packets as they were. So a window coherent at 2P or 3P whose packets are
    LONGER_FRAME_SIZE times larger than the train's is the sender's doing and not counted, and
    so is a window with more packets than slots. Random losses leave 2P and 3P incoherent."""
    k = np.floor((ts - ts[0]) / WINDOW_S).astype(np.int64)
    nb = int(k[-1]) + 1
    counts = np.bincount(k, minlength=nb).astype(np.float64)
    valid = counts >= MIN_WINDOW_PACKETS
    longer = np.zeros(nb, dtype=bool)
    for mult in (2, 3):
        z = np.exp(2j * np.pi * (ts - ts[0]) / (mult * p))
        zr = np.bincount(k, weights=z.real, minlength=nb)
        zi = np.bincount(k, weights=z.imag, minlength=nb)
        longer |= np.abs(zr + 1j * zi) / np.maximum(counts, 1) >= LONGER_FRAME_COHERENCE
    med = np.array([np.median(ss[k == w]) if counts[w] else 0.0 for w in range(nb)])   # one per window
    base = np.median(med[valid & ~longer]) if (valid & ~longer).any() else np.median(ss)
    valid &= ~(longer & (med >= LONGER_FRAME_SIZE * base))
    valid &= counts <= 1.5 * WINDOW_S / p
    return valid


def _slots(t, size, cap, p, coherence, share) -> Cadence | None:
    m = size <= cap
    ts, ss = t[m], size[m]
    ok_w = _window_valid(ts, ss, p)
    if ok_w.mean() < MIN_VALID_WINDOWS:
        return None
    # Every packet of the subset takes its nearest slot, on the grid or pushed off it by jitter
    # (a queue that re-times packets moves them off the grid without losing them).
    pw, off = _phases(ts, p)          # pw: each packet's WINDOW_S window
    if len(ts) < MIN_PACKETS:
        return None
    # each on-grid packet's slot number: nearest grid point, counted from the first packet
    slot = np.round((ts - ts[0]) / p - (off - off[0])).astype(np.int64)
    slot -= slot.min()
    # slots held per packet; a window's phase re-estimate can shift numbering by one: keep order
    slot = np.maximum.accumulate(slot)
    filled_idx, first = np.unique(slot, return_index=True)
    counts = np.bincount(slot)[filled_idx]
    # spurts: filled slots separated by at most MAX_LOSS_RUN empty ones
    gaps = np.diff(filled_idx) - 1
    brk = np.flatnonzero(gaps > MAX_LOSS_RUN)
    starts = np.r_[0, brk + 1]
    ends = np.r_[brk, len(filled_idx) - 1]
    slot_t, slot_filled, slot_size, slot_lost = [], [], [], []
    rng = np.random.default_rng(len(ts))        # deterministic for a given capture
    expected = received = 0
    for a, b in zip(starts, ends):                  # one iteration per talk spurt
        lo, hi = int(filled_idx[a]), int(filled_idx[b])
        n_exp = hi - lo + 1
        grid = np.arange(lo, hi + 1)
        have = np.isin(grid, filled_idx[a:b + 1])
        # a slot's second packet counts only near an empty slot (within NEAR_EMPTY): it is then a
        # frame re-timed by jitter or released with others after a stall; far from any empty slot
        # it is another packet of the voice's size (RTCP muxed in the flow, a keepalive), and
        # counted it would fill the count of a loss elsewhere in the spurt
        c_g = np.zeros(n_exp, dtype=np.int64)
        c_g[filled_idx[a:b + 1] - lo] = counts[a:b + 1]
        empty_cs = np.r_[0, np.cumsum(~have)]
        at = np.arange(n_exp)
        near = empty_cs[np.minimum(at + NEAR_EMPTY + 1, n_exp)] > empty_cs[np.maximum(at - NEAR_EMPTY, 0)]
        n_rec = int(np.count_nonzero(have)) + int(np.maximum(c_g - 1, 0)[near].sum())
        expected += n_exp
        received += min(n_rec, n_exp)
        t_at = np.interp(grid, filled_idx[a:b + 1], ts[first[a:b + 1]])
        s_at = np.interp(grid, filled_idx[a:b + 1], ss[first[a:b + 1]])
        # as many losses as the count says, on the spurt's empty slots; when jitter doubled a slot
        # up (more empties than losses) which empties are the losses is unknown: drawn at random
        # (a fixed rule would make the losses look regular or clustered by construction)
        lost = np.zeros(len(grid), dtype=bool)
        empties = np.flatnonzero(~have)
        k = min(max(n_exp - n_rec, 0), len(empties))
        if k == len(empties):
            lost[empties] = True
        elif k:
            lost[rng.choice(empties, size=k, replace=False)] = True
        slot_t.append(t_at)
        slot_filled.append(have)
        slot_lost.append(lost)
        slot_size.append(s_at)
    slot_t = np.concatenate(slot_t)
    slot_filled = np.concatenate(slot_filled)
    slot_lost = np.concatenate(slot_lost)
    slot_size = np.concatenate(slot_size)
    wk = np.clip(np.floor((slot_t - ts[0]) / WINDOW_S).astype(np.int64), 0, len(ok_w) - 1)
    keep = ok_w[wk]
    # the counts follow the slots kept (a spurt's balance is kept only where its windows are valid)
    expected = int(np.count_nonzero(keep))
    received = expected - int(np.count_nonzero(slot_lost & keep))
    if expected < MIN_PACKETS or expected / len(starts) < MIN_SPURT_SLOTS:
        # fragments of a grid, not a voice train (talk spurts last hundreds of ms)
        return None
    win = wk[keep]
    slots_w = np.bincount(win, minlength=len(ok_w))
    lost_w = np.bincount(win, weights=slot_lost[keep], minlength=len(ok_w))
    full = slots_w >= MIN_WINDOW_PACKETS
    best = float((lost_w[full] / slots_w[full]).min()) if full.any() else 1.0
    # packets beyond the slots, window by window (a surplus in one window is not cancelled by
    # losses in another): the subset's packets of each kept window against its slots
    pk_w = np.bincount(pw[ok_w[pw]], minlength=len(ok_w))
    overfill = float(np.maximum(pk_w - slots_w, 0).sum() / max(expected, 1))
    return Cadence(period_s=p, coherence=coherence, on_grid_share=share, max_size=cap,
                   slot_t=slot_t[keep], slot_filled=slot_filled[keep], slot_lost=slot_lost[keep],
                   slot_size=slot_size[keep],
                   expected=expected, received=received, spurts=len(starts), valid_windows=float(ok_w.mean()),
                   best_window_loss=best, overfill=overfill)
