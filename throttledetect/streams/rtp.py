"""RTP streams of one flow direction: headers read once (wire/rtp.py), clocks, loss, delay.

One parser: the header fields come from ``wire.rtp.rtp_fields`` applied to the 12 bytes the
classifier located (plain, TURN ChannelData, MS-TURN, Zoom, RFC 4571 over TCP). Nothing else
in the project knows the RTP header layout.

Delay against the sender's clock (``RtpStream.delay``): the arrival time of each media frame's
first packet minus its RTP timestamp over the clock rate. Two things a sender does bend that
series without any queue on the path, and both are removed before anyone reads it as one:

- **pacing**: a video frame's packets share one timestamp but leave over tens of ms (WebRTC's
  pacer spreads them at 2.5 x the target rate), so the later packets of a frame look delayed.
  Only a frame's first packet is used: it leaves when the frame is ready.
- **clock skew**: the sender's media clock runs fast or slow against the capture's (seen:
  WhatsApp's 0.25 % slow, 2.5 ms more "delay" every second). The skew is read off the lower
  envelope of the delay (remove_skew), accepted up to MAX_SKEW and where the envelope drifts
  significantly at all (_drift_shown), and subtracted.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from throttledetect.wire.rtp import (COMMON_CLOCK_RATES, DYNAMIC_PT_FIRST, SEQ_MOD,  # noqa: F401 - re-exported
                                     STATIC_CLOCK_RATES, TS_MOD, rtp_fields, unwrap)
VIDEO_CLOCK = 90000
AUDIO_CLOCKS = tuple(c for c in COMMON_CLOCK_RATES if c != VIDEO_CLOCK)
FRAME_GRID_MS = 2.5          # audio frames last a whole number of 2.5 ms (Opus 2.5-120 ms, G.7xx 10/20/30)
MAX_SEQ_GAP = 1000           # a longer run of missing numbers is a jump (a new sender state), not loss
MARKED_FRAMES = 0.8          # a video sender marks the end of (nearly) every frame, or its marks are not used
MAX_SKEW = 0.01              # clock skews beyond 1 % are not a crystal's: the "skew" would be a queue
SKEW_WINDOW_S = 2.0
MIN_SKEW_WINDOWS = 6
SKEW_CONFIDENCE = 0.95      # a drift is removed only where its interval excludes zero (_drift_shown)
TIMESTAMP_RESET_S = 0.5      # a frame stamped this much before the one that arrived before it: a new timeline
MAX_TIMELINES = 50           # a sender clock that restarts more often than this keeps no timeline at all


def one_timeline(t: np.ndarray, send: np.ndarray) -> tuple[np.ndarray, int] | None:
    """(one-way delay in s, resets carried over) of packets in arrival order: arrival ``t`` minus
    the sender's stamp ``send`` (s), carried unchanged across the points where the sender's clock
    starts a new timeline. None when it restarts more than MAX_TIMELINES times.

    No path makes a sender's clock jump, so two signatures are resets, not queues:
    - **back**: a packet stamped over TIMESTAMP_RESET_S before the one that arrived before it (a
      sender that restarted its clock, a stream spliced after a hold or a codec switch);
    - **ahead**: the delay falls by more than the queue it had built (the delay above its lowest
      point so far) plus TIMESTAMP_RESET_S: a queue drains only what it held, so the sender's stamps
      leapt forward (a PBX re-anchoring its media, a switch to T.38 or another source behind one
      SSRC). A queue that drains during a pause of the sender falls by at most what it held.
    Read as delay, either is a step of its size (seen: 43 s on a fax call, read as a 1,000-packet
    queue that vetoed the policer actually there)."""
    owd = (t - t[0]) - (send - send[0])
    resets = 0
    start = 1
    back = np.flatnonzero(np.diff(send) < -TIMESTAMP_RESET_S) + 1
    while start < len(owd):
        # recomputed after each reset: the carry moves everything after it (resets are few)
        queued = owd[start - 1:-1] - np.minimum.accumulate(owd[:-1])[start - 1:]
        ahead = np.flatnonzero(owd[start - 1:-1] - owd[start:] > queued + TIMESTAMP_RESET_S) + start
        b = back[back >= start]
        cands = [int(x[0]) for x in (ahead, b) if len(x)]
        if not cands:
            break
        k = min(cands)
        owd[k:] -= owd[k] - owd[k - 1]
        resets += 1
        if resets > MAX_TIMELINES:
            return None
        start = k + 1
    return owd, resets


def clock_rate(pt: int, t: np.ndarray, seq: np.ndarray | None, ts: np.ndarray) -> int | None:
    """The stream's RTP clock: RFC 3551's for a static payload type, else read from its timestamps.

    The slope of timestamp against arrival proposes a rate; a shaper's queue growing by a second
    over a 15 s stream bends that slope by 7 %, enough to snap 48 kHz to 44.1 kHz. So the slope
    only proposes: near 90 kHz it is video's 90 kHz; for audio the candidate whose packet time
    (the median timestamp step between consecutive sequence numbers) is a whole number of
    FRAME_GRID_MS and that lies within 25 % of the slope wins."""
    if pt < DYNAMIC_PT_FIRST and pt in STATIC_CLOCK_RATES:
        return STATIC_CLOCK_RATES[pt]
    if len(t) < 3 or np.ptp(t) <= 0:
        return None
    # slope from the lower envelope of (arrival, timestamp): robust to queueing, not to skew (small)
    slope = float(np.polyfit(t - t[0], (ts - ts[0]).astype(np.float64), 1)[0])
    if not slope > 0:
        return None
    if abs(np.log(slope / VIDEO_CLOCK)) < np.log(1.1):
        return VIDEO_CLOCK
    best, best_d = None, None
    step = np.zeros(0)
    if seq is not None:
        o = np.argsort(seq, kind="stable")
        ds, dts = np.diff(seq[o]), np.diff(ts[o])
        step = dts[(ds == 1) & (dts > 0)]
    if len(step):
        step_v = float(np.median(step))
        for c in AUDIO_CLOCKS:
            ms = step_v / c * 1e3
            on_grid = abs(ms / FRAME_GRID_MS - round(ms / FRAME_GRID_MS)) < 0.02 and FRAME_GRID_MS <= ms <= 120
            dist = abs(np.log(c / slope))
            if on_grid and dist < np.log(1.25) and (best_d is None or dist < best_d):
                best, best_d = c, dist
    if best is None:
        cands = np.array(AUDIO_CLOCKS + (VIDEO_CLOCK,), dtype=np.float64)
        dist = np.abs(np.log(cands / slope))
        k = int(np.argmin(dist))
        best = int(cands[k]) if dist[k] < np.log(1.1) else None
    return best


@dataclass(eq=False)
class DelaySeries:
    """One-way delay against the sender's clock, per media frame (its first packet), in ms above
    the series' minimum, with the sender's clock skew removed."""

    t: np.ndarray            # arrival of the frame's first packet (s since capture start)
    ms: np.ndarray           # delay in ms, min 0
    skew_ppm: float          # the sender's clock skew removed (parts per million; + = sender clock fast)
    source: str              # "rtp" | "cadence"

    @property
    def n(self) -> int:
        return len(self.t)

    def window_minima(self, width_s: float) -> tuple[np.ndarray, np.ndarray]:
        """(window centre, min delay ms) over windows of width_s holding at least one frame."""
        if self.n == 0:
            return np.zeros(0), np.zeros(0)
        k = np.floor((self.t - self.t[0]) / width_s).astype(np.int64)
        nb = int(k[-1]) + 1
        mins = np.full(nb, np.inf)
        np.minimum.at(mins, k, self.ms)
        ok = np.isfinite(mins)
        centres = self.t[0] + (np.arange(nb) + 0.5) * width_s
        return centres[ok], mins[ok]


def _lower_hull(x: np.ndarray, y: np.ndarray) -> list:
    """Indices of the lower convex hull of points sorted by x (Andrew's monotone chain)."""
    hull: list = []
    for k in range(len(x)):                       # window minima: tens to hundreds of points
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            if (x[b] - x[a]) * (y[k] - y[a]) - (y[b] - y[a]) * (x[k] - x[a]) <= 0:
                hull.pop()
            else:
                break
        hull.append(k)
    return hull


def remove_skew(t: np.ndarray, owd_s: np.ndarray) -> tuple[np.ndarray, float]:
    """(owd with the sender's clock skew removed, the slope removed: s of delay per s).

    The skew is read off the windows' lowest points (a queue only ever adds delay) two ways, and
    the flatter of the two is taken, since each is bent by one thing a queue does and not by the
    other: the median slope between consecutive windows (a queue that appears at some point
    bends one or two of them; one that fills and drains over a cycle longer than a window bends
    most of them), and the flattest long edge of their lower convex hull (a queue that drains now
    and then leaves flat edges through its empty moments; a step leaves a steep edge to the end
    beside the flat ones, and jitter can cut the flat ones short). A skew bends both alike."""
    if len(t) < 2:
        return owd_s, 0.0
    span = t[-1] - t[0]
    width = max(SKEW_WINDOW_S, span / 60.0)
    k = np.floor((t - t[0]) / width).astype(np.int64)
    nb = int(k[-1]) + 1
    if nb < MIN_SKEW_WINDOWS:
        return owd_s, 0.0
    order = np.lexsort((owd_s, k))
    first = np.r_[True, k[order][1:] != k[order][:-1]]
    x, y = t[order][first], owd_s[order][first]       # each window's lowest point
    if len(x) < MIN_SKEW_WINDOWS:
        return owd_s, 0.0
    candidates = [float(np.median(np.diff(y) / np.maximum(np.diff(x), 1e-9)))]
    h = _lower_hull(x, y)
    if len(h) >= 2:
        hx, hy = x[h], y[h]
        lengths = np.diff(hx)
        slopes = np.diff(hy) / np.maximum(lengths, 1e-9)
        long_edges = lengths >= 0.25 * (x[-1] - x[0])
        if long_edges.any():
            cand = slopes[long_edges]
            candidates.append(float(cand[int(np.argmin(np.abs(cand)))]))
    skew = min(candidates, key=abs)
    if not np.isfinite(skew) or abs(skew) > MAX_SKEW or not _drift_shown(x, y):
        return owd_s, 0.0
    return owd_s - skew * (t - t[0]), skew


def _drift_shown(x: np.ndarray, y: np.ndarray) -> bool:
    """Do the windows' lowest points drift one way at all? H0: no linear trend; shown where
    Theil-Sen's interval for their slope (scipy.stats.theilslopes, SKEW_CONFIDENCE) excludes
    zero. Both candidates of remove_skew are read from a few windows' minima, which a queue that
    fills and empties moves by tens of ms: on a real-kernel htb replay whose 450 ms queue stood
    from the second window to the end, the median of consecutive slopes was noise (1,908 and
    4,374 ppm on its two flows, Theil-Sen's intervals [-639, 827] and [-750, 979] ppm), and
    removing it tilted 80-175 ms of the queue away (the validation's run of the same replay named
    both flows policing). A real skew drifts every window the same way: 300 ppm under 5 ms of
    jitter is shown at [298, 301]. Called by remove_skew with MIN_SKEW_WINDOWS windows or more."""
    from scipy import stats
    r = stats.theilslopes(y, x, alpha=SKEW_CONFIDENCE)
    return bool(r.low_slope > 0 or r.high_slope < 0)


@dataclass(eq=False)
class RtpStream:
    """One RTP stream (one SSRC in one direction of a flow), in arrival order."""

    flow: int
    direction: int
    ssrc: int
    rows: np.ndarray
    t: np.ndarray           # arrival, s since the capture's first packet
    seq: np.ndarray         # extended sequence number (RFC 3550 A.1)
    ts: np.ndarray          # extended RTP timestamp
    pt: np.ndarray
    marker: np.ndarray
    size: np.ndarray        # link-layer frame bytes
    clock: int | None       # Hz

    @property
    def n(self) -> int:
        return len(self.t)

    @property
    def main_pt(self) -> int:
        vals, counts = np.unique(self.pt, return_counts=True)
        return int(vals[np.argmax(counts)])

    @property
    def is_video(self) -> bool:
        return self.clock == VIDEO_CLOCK

    @cached_property
    def _seq_runs(self) -> tuple[np.ndarray, np.ndarray]:
        """Unique sequence numbers in order and the index of their first arrival; jumps over
        MAX_SEQ_GAP cut the stream into runs (a sender restart is not loss)."""
        order = np.argsort(self.seq, kind="stable")
        s, first = np.unique(self.seq[order], return_index=True)
        return s, order[first]

    def loss_units(self):
        """One unit per expected sequence number between the lowest and highest received (runs
        split at jumps over MAX_SEQ_GAP). A lost unit's size is interpolated between its received
        neighbours; its time is placed as the sender sent it (audio: on its packet clock after the
        previous packet; video: with its frame), else interpolated. A DTX pause (timestamp jump, no
        sequence gap) loses nothing."""
        from throttledetect.streams.loss import LossUnits
        s, idx = self._seq_runs
        if len(s) == 0:
            return None
        gaps = np.diff(s)
        jump = np.flatnonzero(gaps > MAX_SEQ_GAP)
        # expected numbers: every number within runs
        starts = np.r_[0, jump + 1]
        ends = np.r_[jump, len(s) - 1]
        expected = np.concatenate([np.arange(s[a], s[b] + 1) for a, b in zip(starts, ends)])
        received = np.isin(expected, s, assume_unique=False)
        t_recv, size_recv = self.t[idx], self.size[idx]
        t_exp = np.interp(expected, s, t_recv)
        size_exp = np.interp(expected, s, size_recv)
        t_sender = None
        if self.is_video and (~received).any():
            t_exp = self._place_in_frames(expected, received, s, idx, t_exp)
        elif self.clock and (~received).any():
            t_exp = self._place_on_clock(expected, received, s, idx, t_exp)
            t_sender = self._sender_times(expected, received, s, idx)
        return LossUnits(t=t_exp, lost=~received, size=size_exp, source="rtp", t_sender=t_sender)

    def _packet_time(self) -> float | None:
        """The sender's packet-time in clock ticks: the median timestamp step per sequence number
        between received packets (a loss or a DTX pause stretches single steps, never the median
        of the per-number steps of a live stream)."""
        o = np.argsort(self.seq, kind="stable")
        ds, dts = np.diff(self.seq[o]), np.diff(self.ts[o])
        ok = (ds >= 1) & (dts > 0)
        if not ok.any():
            return None
        return float(np.median(dts[ok] / ds[ok]))

    def _sender_times(self, expected, received, s, idx):
        """Every unit at the time the sender's clock says it left, carried to the capture point by
        the path's least delay (sender clock skew removed): an audio sender stamps each packet with
        its sampling time, so these are the times at which a policer upstream of later jitter (the
        access link, Wi-Fi) met the packets, where arrival times carry that jitter. A lost packet's
        stamp is a packet-time per number after its received predecessor's (capped at its
        successor's). None when the stamps restart (no one sender clock to trust)."""
        ptime = self._packet_time()
        if ptime is None:
            return None
        ts_recv = self.ts[idx].astype(np.float64)
        t_recv = self.t[idx]
        o = np.argsort(t_recv, kind="stable")
        timeline = one_timeline(t_recv[o], ts_recv[o] / float(self.clock))
        if timeline is None or timeline[1]:
            return None
        miss = expected[~received]
        pos = np.searchsorted(s, miss)
        before = np.clip(pos - 1, 0, len(s) - 1)
        after = np.clip(pos, 0, len(s) - 1)
        k = (miss - s[before]).astype(np.float64)
        ts_unit = np.empty(len(expected))
        ts_unit[received] = ts_recv[np.searchsorted(s, expected[received])]
        ts_unit[~received] = np.minimum(ts_recv[before] + k * ptime, np.maximum(ts_recv[before], ts_recv[after]))
        send = (ts_unit - ts_recv[0]) / float(self.clock)
        send_recv = (ts_recv - ts_recv[0]) / float(self.clock)
        owd = timeline[0] + (t_recv[o][0] - send_recv[o][0])     # the same delay, on the arrival clock
        _, slope = remove_skew(t_recv[o], owd)
        t_min = float(t_recv[o][0])
        base = float(np.min(owd - slope * (t_recv[o] - t_min)))
        return send + base + slope * (send + base - t_min)

    def _place_on_clock(self, expected, received, s, idx, t_exp):
        """A lost packet left a packet-time per number after its received predecessor by the
        sender's clock (never after its successor); it is placed between its neighbours' arrivals
        in proportion to where its stamp lies between theirs. Interpolating by number over the
        arrival gap instead would spread a burst the network dropped across a pause that followed
        it (DTX, the end of a talk spurt), where a bucket sees room for every packet; adding
        packet-times to the predecessor's arrival would ignore that jitter bunched the neighbours."""
        ptime = self._packet_time()
        if ptime is None:
            return t_exp
        miss = expected[~received]
        pos = np.searchsorted(s, miss)
        before = np.clip(pos - 1, 0, len(s) - 1)
        after = np.clip(pos, 0, len(s) - 1)
        ts_a, ts_b = self.ts[idx[before]].astype(np.float64), self.ts[idx[after]].astype(np.float64)
        t_a, t_b = self.t[idx[before]], self.t[idx[after]]
        k = (miss - s[before]).astype(np.float64)
        ts_l = np.minimum(ts_a + k * ptime, np.maximum(ts_a, ts_b))
        frac = np.where(ts_b > ts_a, (ts_l - ts_a) / np.maximum(ts_b - ts_a, 1.0), 0.0)
        t = t_exp.copy()
        t[~received] = t_a + np.maximum(t_b - t_a, 0.0) * frac
        return t

    def _place_in_frames(self, expected, received, s, idx, t_exp):
        """A video frame's packets leave back to back: a lost packet inside a frame (its received
        neighbours share a timestamp) or after a frame not yet finished (no marker bit on the
        packet before it) left with that frame; one after a finished frame left with the next
        one (where the sender does not mark frame ends, only losses inside a frame are placed). Interpolating in time would
        spread them over the gap between frames, where a bucket sees them as paced."""
        pos = np.searchsorted(s, expected[~received])          # the received neighbour after
        before = np.clip(pos - 1, 0, len(s) - 1)
        after = np.clip(pos, 0, len(s) - 1)
        ia, ib = idx[before], idx[after]
        same_frame = self.ts[ia] == self.ts[ib]
        # the marker bit ends every frame (RFC 3551 4.1 for video) only with senders that set it on
        # each; where most frames end without one, a frame's end is unknown: the later time
        frames = len(np.unique(self.ts))
        conforming = frames > 0 and np.count_nonzero(self.marker) >= MARKED_FRAMES * frames
        t = t_exp.copy()
        lost_t = t[~received]
        if conforming:
            lost_t = np.where(same_frame | ~self.marker[ia], self.t[ia], self.t[ib])
        else:           # only a loss inside a frame is surely placed; the rest stay interpolated
            lost_t = np.where(same_frame, self.t[ia], lost_t)
        t[~received] = lost_t
        return t

    def frames(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Media frames in sender order: (timestamp, arrival of first packet, bytes received)."""
        o = np.lexsort((self.t, self.ts))
        ts, t, size = self.ts[o], self.t[o], self.size[o]
        starts = np.flatnonzero(np.r_[True, ts[1:] != ts[:-1]])
        return ts[starts], np.minimum.reduceat(t, starts), np.add.reduceat(size, starts)

    def delay(self) -> DelaySeries | None:
        if not self.clock or self.n < 3:
            return None
        ts, t_first, _ = self.frames()
        o = np.argsort(t_first, kind="stable")
        ts, t_first = ts[o], t_first[o]
        timeline = one_timeline(t_first, (ts - ts[0]) / float(self.clock))
        if timeline is None:
            return None
        owd, slope = remove_skew(t_first, timeline[0])
        ms = (owd - owd.min()) * 1e3
        # a sender whose clock runs fast stamps media ahead of time: the delay read from it falls
        return DelaySeries(t=t_first, ms=ms, skew_ppm=-slope * 1e6, source="rtp")


def build_rtp_streams(flow: int, direction: int, rows: np.ndarray, t: np.ndarray, size: np.ndarray,
                      header: np.ndarray, min_packets: int = 3) -> list[RtpStream]:
    """Streams from the 12 header bytes (uint8[n, 12]) of the packets ``rows`` that carry RTP."""
    f = rtp_fields(header, 0)
    ok = f["valid"]
    if not ok.any():
        return []
    rows, t, size = rows[ok], t[ok], size[ok]
    ssrc, seq16, ts32 = f["ssrc"][ok], f["seq"][ok], f["ts"][ok]
    pt, marker = f["pt"][ok].astype(np.int64), f["marker"][ok]
    out = []
    for s in np.unique(ssrc).tolist():           # one object per stream
        m = ssrc == s
        if np.count_nonzero(m) < min_packets:
            continue
        seq = unwrap(seq16[m], SEQ_MOD)
        ts = unwrap(ts32[m], TS_MOD)
        ptm = pt[m]
        vals, counts = np.unique(ptm, return_counts=True)
        main = int(vals[np.argmax(counts)])
        clock = clock_rate(main, t[m], seq, ts)
        out.append(RtpStream(flow=flow, direction=direction, ssrc=int(s), rows=rows[m], t=t[m], seq=seq, ts=ts,
                             pt=ptm, marker=marker[m], size=size[m], clock=clock))
    out.sort(key=lambda r: -r.n)
    return out
