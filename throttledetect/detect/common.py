"""What every detector works on: per-direction packet arrays of a flow, and the capture context.

``DetectContext`` is built once per capture by ``run_detectors``; detectors receive it and a flow
index and ask it for arrays, which it computes once (lazily) and caches:

- ``packets(i, d)``: arrival times, frame sizes, payload sizes of one direction (``DirPackets``);
- ``rtp(i, d)``: the RTP streams (one per SSRC) of one direction, read from the headers the
  classifier located (any encapsulation: plain, TURN channel, MS-TURN, Zoom, RTP over TCP), with
  extended sequence numbers and timestamps and the stream's clock rate (``RtpArrays``);
- ``tcp(i, d)``: the data segments of one TCP direction, with retransmissions marked;
- ``loss(i, d)``: the loss signal of one direction as "units" (an expected RTP packet, or a
  TCP data segment) with a time and a lost flag (``LossUnits``), or None when there is none
  (encrypted UDP without RTP);
- ``inbound(i)``: the directions that arrive at the capture point (only there are losses and
  delays visible: what the local host sends is captured before the network);
- ``controls(i)``: the other flows of the capture that can serve as controls for flow i.

Times are float seconds since the capture's first packet; sizes are link-layer frame bytes
(``wirelen``), the unit of FlowTable.bytes_* and of the simulator's token buckets.
Everything is numpy over whole arrays; the only Python loops run over flows or RTP streams.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from throttledetect.flows import local_side_is_a as flows_local_side_is_a

from throttledetect.metrics.rtp import (DYNAMIC_PT_FIRST, SEQ_MOD, TS_MOD, clock_rate_for, estimate_clock_rate,
                                        unwrap)

DIR_NAMES = ("ab", "ba")
TCP_PROTO, UDP_PROTO = 6, 17
TCP_SYN, TCP_FIN, TCP_RST = 2, 1, 4

MIN_DIR_PACKETS = 20        # a direction with fewer packets is not worth a test
MIN_CONTROL_PACKETS = 50    # a control flow needs this many packets arriving at the capture point
REORDER_DEFAULT_S = 0.01    # a TCP hole filled this soon is reordering (no handshake RTT to go by)


def dir_name(d: int) -> str:
    return DIR_NAMES[int(d)]


def local_side_is_a(ft) -> np.ndarray:
    """Per flow: is side "a" the capturing host's side? (throttledetect.flows.local_side_is_a)"""
    return flows_local_side_is_a(ft)[0]


# ---------------------------------------------------------------------------------------- arrays

@dataclass(eq=False)
class DirPackets:
    """The packets of one direction of one flow, in arrival order."""

    flow: int
    direction: int
    rows: np.ndarray        # int64 packet rows
    t: np.ndarray           # float64 seconds since the capture's first packet
    size: np.ndarray        # float64 link-layer frame bytes
    payload: np.ndarray     # int64 transport payload bytes (declared)

    @property
    def n(self) -> int:
        return len(self.t)

    def rate_series(self, bin_s: float, t0: float | None = None, t1: float | None = None):
        """(bin start times, bits per second) over [t0, t1) in bins of bin_s; last partial bin dropped."""
        t0 = self.t[0] if t0 is None else t0
        t1 = self.t[-1] if t1 is None else t1
        nb = max(int(np.floor((t1 - t0) / bin_s)), 0)
        if nb == 0:
            return np.zeros(0), np.zeros(0)
        k = np.floor((self.t - t0) / bin_s).astype(np.int64)
        ok = (k >= 0) & (k < nb)
        bits = np.bincount(k[ok], weights=self.size[ok] * 8.0, minlength=nb)
        return t0 + bin_s * np.arange(nb), bits / bin_s


@dataclass(eq=False)
class RtpArrays:
    """One RTP stream (one SSRC in one direction of a flow), in arrival order."""

    flow: int
    direction: int
    ssrc: int
    rows: np.ndarray
    t: np.ndarray           # arrival, seconds since the capture's first packet
    seq: np.ndarray         # extended sequence number (RFC 3550 A.1)
    ts: np.ndarray          # extended RTP timestamp
    pt: np.ndarray
    marker: np.ndarray
    size: np.ndarray        # link-layer frame bytes
    clock: int | None       # Hz (static PT from RFC 3551, else estimated from the timestamps)

    @property
    def n(self) -> int:
        return len(self.t)

    @cached_property
    def delay_ms(self) -> np.ndarray | None:
        """Relative one-way delay: arrival minus RTP media time, minus its minimum (ms); None without clock.

        Only meaningful within one stream (sender and receiver clocks are not synchronised; a
        clock-rate skew adds a slow linear drift of a few ms per minute)."""
        if not self.clock:
            return None
        owd = (self.t - self.t[0]) - (self.ts - self.ts[0]) / float(self.clock)
        return (owd - owd.min()) * 1e3

    def loss_units(self) -> "LossUnits":
        """One unit per expected sequence number between the lowest and highest received.

        A missing number is lost; its time is interpolated between the arrivals of the received
        neighbours. Duplicates count once. DTX pauses (timestamp jumps without a sequence gap)
        lose nothing, as RFC 3550 A.3 counts.
        """
        order = np.argsort(self.seq, kind="stable")
        s, first = np.unique(self.seq[order], return_index=True)
        t_recv = self.t[order][first]
        expected = np.arange(s[0], s[-1] + 1)
        received = np.zeros(len(expected), dtype=bool)
        received[s - s[0]] = True
        t_exp = np.interp(expected, s, t_recv)
        sizes = np.interp(expected, s, self.size[order][first])
        return LossUnits(t=t_exp, lost=~received, size=sizes, source="rtp")


@dataclass(eq=False)
class TcpArrays:
    """The data segments (payload > 0) of one TCP direction, in arrival order."""

    flow: int
    direction: int
    rows: np.ndarray
    t: np.ndarray
    seq: np.ndarray         # relative, unwrapped start sequence number
    length: np.ndarray      # payload bytes
    size: np.ndarray        # frame bytes
    retransmission: np.ndarray   # bool: covers no new sequence space (a resend, or a late copy)
    hole_segments: np.ndarray    # int: segments missing in the hole this segment revealed (0: none)

    @property
    def n(self) -> int:
        return len(self.t)

    def loss_units(self) -> "LossUnits":
        """One unit per data segment received, plus one lost unit per segment missing in a hole.

        Seen where the data arrives, a segment lost upstream leaves a hole in the sequence space
        (the next segment starts beyond everything received); the hole's size in segments (bytes
        over the largest segment) counts the losses, at the time the hole showed. The resend that
        fills the hole later is not counted again, nor are resends of data already received
        (spurious, or the acknowledgement was lost)."""
        k = self.hole_segments
        lost_t = np.repeat(self.t, k)
        t = np.concatenate((self.t, lost_t))
        lost = np.concatenate((np.zeros(self.n, bool), np.ones(len(lost_t), bool)))
        size = np.concatenate((self.size, np.repeat(self.size, k)))
        o = np.argsort(t, kind="stable")
        return LossUnits(t=t[o], lost=lost[o], size=size[o], source="tcp")


@dataclass(eq=False)
class LossUnits:
    """A loss signal: one entry per packet that should have arrived, in time order of expectation."""

    t: np.ndarray
    lost: np.ndarray        # bool
    size: np.ndarray
    source: str             # "rtp" | "tcp"

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
        return LossUnits(self.t[m], self.lost[m], self.size[m], self.source)

    def binned(self, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(units, lost) per bin of the given edges (units outside are ignored)."""
        nb = len(edges) - 1
        k = np.searchsorted(edges, self.t, side="right") - 1
        ok = (k >= 0) & (k < nb)
        units = np.bincount(k[ok], minlength=nb)
        lost = np.bincount(k[ok], weights=self.lost[ok], minlength=nb)
        return units, lost


def merge_loss(parts: list[LossUnits]) -> LossUnits | None:
    parts = [p for p in parts if p is not None and p.n]
    if not parts:
        return None
    if len(parts) == 1:
        return parts[0]
    t = np.concatenate([p.t for p in parts])
    o = np.argsort(t, kind="stable")
    return LossUnits(t[o], np.concatenate([p.lost for p in parts])[o], np.concatenate([p.size for p in parts])[o],
                     parts[0].source if len({p.source for p in parts}) == 1 else "mixed")


AUDIO_CLOCKS = (8000, 16000, 24000, 32000, 44100, 48000)
FRAME_GRID_MS = 2.5          # audio frame durations are multiples of 2.5 ms (Opus 2.5-120 ms, G.7xx 10/20/30)


def robust_clock_rate(t: np.ndarray, seq_ext: np.ndarray, ts_ext: np.ndarray) -> int | None:
    """Clock rate of a dynamic payload type, robust to queueing delay on the path.

    metrics.rtp.estimate_clock_rate fits timestamps against arrival times; a shaper's queue that
    grows by a second over a 15 s stream bends that slope by 7 % and can snap it to a wrong rate
    (44100 for 48000), which then shows as a delay drift. Here the fit only proposes: video
    streams (fit near 90 kHz) keep 90000; for audio, the candidate rates within 25 % of the fit
    are kept whose packet time (the median timestamp step between consecutive sequence numbers)
    is a whole number of FRAME_GRID_MS, and the one nearest the fit wins. Falls back to the fit.
    """
    fit = estimate_clock_rate(t, ts_ext % TS_MOD)
    if len(t) < 3:
        return fit
    o = np.argsort(seq_ext, kind="stable")
    ds, dts = np.diff(seq_ext[o]), np.diff(ts_ext[o])
    step = dts[(ds == 1) & (dts > 0)]
    if len(step) == 0:
        return fit
    step = float(np.median(step))
    t_sorted = np.sort(t)
    slope_ref = fit
    if slope_ref is None:
        span = t_sorted[-1] - t_sorted[0]
        slope_ref = float((ts_ext.max() - ts_ext.min()) / span) if span > 0 else None
    if slope_ref is None or slope_ref <= 0:
        return fit
    if abs(np.log(slope_ref / 90000.0)) < np.log(1.1):
        return 90000
    best, best_d = None, None
    for c in AUDIO_CLOCKS:
        ms = step / c * 1e3
        on_grid = abs(ms / FRAME_GRID_MS - round(ms / FRAME_GRID_MS)) < 0.02 and FRAME_GRID_MS <= ms <= 120
        dist = abs(np.log(c / slope_ref))
        if on_grid and dist < np.log(1.25) and (best_d is None or dist < best_d):
            best, best_d = c, dist
    return best if best is not None else fit


# ---------------------------------------------------------------------------------------- context

@dataclass
class DetectContext:
    """One capture's data for the detectors, with per-(flow, direction) caches."""

    cap: object
    ft: object
    cl: object | None = None
    metrics: list | None = None
    alpha: float = 0.01
    seed: int = 0
    _cache: dict = field(default_factory=dict, repr=False)

    # --- capture-level
    @cached_property
    def t0_ns(self) -> int:
        ts = self.cap.packets.ts_ns
        return int(ts.min()) if len(ts) else 0

    @cached_property
    def t_end(self) -> float:
        ts = self.cap.packets.ts_ns
        return float((int(ts.max()) - self.t0_ns) / 1e9) if len(ts) else 0.0

    @cached_property
    def local_is_a(self) -> np.ndarray:
        return local_side_is_a(self.ft)

    @cached_property
    def labels(self) -> list:
        if self.cl is not None:
            return list(self.cl.labels)
        return ["other"] * len(self.ft)

    def label(self, i: int) -> str:
        return self.labels[i]

    def is_call(self, i: int) -> bool:
        from throttledetect.classify.labels import is_call
        return is_call(self.labels[i])

    def rng(self, *key) -> np.random.Generator:
        """A generator seeded by the context seed and a key: results do not depend on run order."""
        return np.random.default_rng([self.seed & 0xFFFFFFFF, zlib.crc32(repr(key).encode())])

    def inbound(self, i: int) -> tuple[int, ...]:
        """The direction of flow i that travels toward the capturing host (0 = a->b arrives at b).

        When the address ranges do not say which side is local (both or neither are) and the
        guessed inbound direction is empty while the other is not (one-way media between two
        local or two remote hosts, e.g. on loopback), the direction that carries packets is it."""
        d = 1 if self.local_is_a[i] else 0
        ambiguous = bool(self.ft.a_local[i]) == bool(self.ft.b_local[i])
        n = (int(self.ft.packets_ab[i]), int(self.ft.packets_ba[i]))
        if ambiguous and n[d] == 0 and n[1 - d] > 0:
            d = 1 - d
        return (d,)

    def flow_span(self, i: int) -> tuple[float, float]:
        return ((int(self.ft.first_ns[i]) - self.t0_ns) / 1e9, (int(self.ft.last_ns[i]) - self.t0_ns) / 1e9)

    # --- per flow and direction
    def packets(self, i: int, d: int) -> DirPackets:
        key = ("pk", i, d)
        if key not in self._cache:
            rows = self.ft.packet_indices(i)
            rows = rows[self.ft.dir_of[rows] == d]
            pk = self.cap.packets
            self._cache[key] = DirPackets(
                flow=i, direction=d, rows=rows,
                t=(pk.ts_ns[rows].astype(np.int64) - self.t0_ns) / 1e9,
                size=pk.wirelen[rows].astype(np.float64),
                payload=pk.payload_wirelen[rows].astype(np.int64))
        return self._cache[key]

    def rtp(self, i: int, d: int) -> list[RtpArrays]:
        key = ("rtp", i, d)
        if key not in self._cache:
            self._cache[key] = self._rtp_streams(i, d)
        return self._cache[key]

    def tcp(self, i: int, d: int) -> TcpArrays | None:
        key = ("tcp", i, d)
        if key not in self._cache:
            self._cache[key] = self._tcp_segments(i, d) if int(self.ft.proto[i]) == TCP_PROTO else None
        return self._cache[key]

    def loss(self, i: int, d: int) -> LossUnits | None:
        """The loss signal of a direction: RTP sequence gaps (all streams), else TCP retransmissions."""
        key = ("loss", i, d)
        if key not in self._cache:
            out = None
            streams = [s for s in self.rtp(i, d) if s.n >= 3]
            if streams:
                out = merge_loss([s.loss_units() for s in streams])
            else:
                tcp = self.tcp(i, d)
                if tcp is not None and tcp.n >= 3:
                    out = tcp.loss_units()
            self._cache[key] = out
        return self._cache[key]

    def remote_of(self, i: int) -> tuple[int, int]:
        """(hi, lo) address halves of flow i's remote side."""
        if self.local_is_a[i]:
            return int(self.ft.b_hi[i]), int(self.ft.b_lo[i])
        return int(self.ft.a_hi[i]), int(self.ft.a_lo[i])

    @cached_property
    def _flow_arrays(self) -> dict:
        """Per-flow arrays for vectorised selections: span (s), remote address, label codes,
        packets arriving at the local side."""
        ft = self.ft
        is_a = self.local_is_a
        labels = np.asarray(self.labels, dtype=object)
        _, code = np.unique(labels.astype(str), return_inverse=True) if len(labels) else (None, np.zeros(0, int))
        d_in = np.array([self.inbound(j)[0] for j in range(len(ft))], dtype=np.int64)   # per flow
        return {
            "start": (ft.first_ns.astype(np.int64) - self.t0_ns) / 1e9,
            "end": (ft.last_ns.astype(np.int64) - self.t0_ns) / 1e9,
            "r_hi": np.where(is_a, ft.b_hi, ft.a_hi), "r_lo": np.where(is_a, ft.b_lo, ft.a_lo),
            "label": code, "proto": ft.proto.astype(np.int64),
            "n_in": np.where(d_in == 1, ft.packets_ba, ft.packets_ab).astype(np.int64),
            "call": np.array([self.is_call(j) for j in range(len(ft))], dtype=bool),
        }

    def same_label(self, i: int) -> np.ndarray:
        """Flow indices with flow i's label (i included)."""
        a = self._flow_arrays
        return np.flatnonzero(a["label"] == a["label"][i])

    def controls(self, i: int) -> list[int]:
        """Flows that can serve as controls for flow i: overlapping it in time, with at least
        MIN_CONTROL_PACKETS arriving at the capture point, and not possibly part of the same call:
        not of i's label, and no call flow unless both are labelled with different apps and go to
        different remote addresses (a generic "rtp"/"webrtc" flow may be the same call's other
        stream). Other traffic to the call's server (its signalling, a relay's TLS) is a control.
        The same app's chat flows come first (2025: chat worked while calls did not).
        """
        key = ("controls", i)
        if key not in self._cache:
            from throttledetect.classify.labels import APP_CALLS, CHAT_OF_CALL
            lab = self.labels[i]
            a = self._flow_arrays
            same_remote = (a["r_hi"] == a["r_hi"][i]) & (a["r_lo"] == a["r_lo"][i])
            ok = (a["label"] != a["label"][i]) & ~(a["call"] & same_remote)
            ok &= (a["proto"] == TCP_PROTO) | (a["proto"] == UDP_PROTO)
            ok &= (a["end"] > a["start"][i]) & (a["start"] < a["end"][i]) & (a["n_in"] >= MIN_CONTROL_PACKETS)
            out = []
            for j in np.flatnonzero(ok).tolist():     # the few candidates left
                if a["call"][j] and not (lab in APP_CALLS and self.labels[j] in APP_CALLS):
                    continue
                out.append(j)
            # the same app's chat first: the natural control (2025: chat worked while calls did not)
            chat = CHAT_OF_CALL.get(lab)
            out.sort(key=lambda j: (self.labels[j] != chat, j))
            self._cache[key] = out
        return self._cache[key]

    # --- builders
    def _rtp_streams(self, i: int, d: int) -> list[RtpArrays]:
        rows = self.packets(i, d).rows
        pk = self.cap.packets
        if self.cl is not None:
            ev = self.cl.evidence
            rows = rows[ev.rtp_encap_of[rows] >= 0]
            if len(rows) == 0:
                return []
            off = pk.payload_off[rows].astype(np.int64) + ev.rtp_offset_of[rows].astype(np.int64)
            ok = (pk.payload_off[rows] >= 0) & (ev.rtp_offset_of[rows].astype(np.int64) + 12
                                                <= pk.payload_len[rows].astype(np.int64))
            rows, off = rows[ok], off[ok]
            if len(rows) == 0:
                return []
            head = self.cap.buffer[off[:, None] + np.arange(12)[None, :]].astype(np.int64)
        else:
            head, rows = self._rtp_from_metrics(i, d)
            if head is None:
                return []
        seq16 = (head[:, 2] << 8) | head[:, 3]
        ts32 = (head[:, 4] << 24) | (head[:, 5] << 16) | (head[:, 6] << 8) | head[:, 7]
        ssrc = (head[:, 8] << 24) | (head[:, 9] << 16) | (head[:, 10] << 8) | head[:, 11]
        pt = head[:, 1] & 0x7F
        marker = (head[:, 1] & 0x80) != 0
        t = (pk.ts_ns[rows].astype(np.int64) - self.t0_ns) / 1e9
        size = pk.wirelen[rows].astype(np.float64)
        out = []
        for s in np.unique(ssrc).tolist():          # one object per stream
            m = ssrc == s
            if np.count_nonzero(m) < 3:
                continue
            ptm = pt[m]
            vals, counts = np.unique(ptm, return_counts=True)
            main_pt = int(vals[np.argmax(counts)])
            ts_ext = unwrap(ts32[m], TS_MOD)
            clock = clock_rate_for(main_pt) if main_pt < DYNAMIC_PT_FIRST else None
            if clock is None:
                clock = robust_clock_rate(t[m], unwrap(seq16[m], SEQ_MOD), ts_ext)
            out.append(RtpArrays(flow=i, direction=d, ssrc=int(s), rows=rows[m], t=t[m],
                                 seq=unwrap(seq16[m], SEQ_MOD), ts=ts_ext, pt=ptm, marker=marker[m],
                                 size=size[m], clock=clock))
        out.sort(key=lambda r: -r.n)
        return out

    def _rtp_from_metrics(self, i: int, d: int):
        """Without a classification: plain RTP found by metrics.rtp.find_rtp_streams."""
        key = "rtp_streams_all"
        if key not in self._cache:
            from throttledetect.metrics.rtp import find_rtp_streams
            self._cache[key] = find_rtp_streams(self.cap, self.ft)
        rows = [st.packet_index for st in self._cache[key]
                if len(st.packet_index) and self.ft.flow_of[st.packet_index[0]] == i
                and self.ft.dir_of[st.packet_index[0]] == d]
        if not rows:
            return None, None
        rows = np.sort(np.concatenate(rows))
        pk = self.cap.packets
        off = pk.payload_off[rows].astype(np.int64)
        return self.cap.buffer[off[:, None] + np.arange(12)[None, :]].astype(np.int64), rows

    def _tcp_segments(self, i: int, d: int) -> TcpArrays | None:
        p = self.packets(i, d)
        pk = self.cap.packets
        data = p.payload > 0
        rows = p.rows[data]
        if len(rows) == 0:
            return TcpArrays(i, d, rows, np.zeros(0), np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0),
                             np.zeros(0, bool), np.zeros(0, np.int64))
        seq = unwrap(pk.tcp_seq[rows].astype(np.int64), 1 << 32)
        seq = seq - seq.min()
        length = p.payload[data]
        end = seq + length
        # New sequence space: the segment ends beyond everything seen before it.
        prev_max = np.concatenate(([-1], np.maximum.accumulate(end)[:-1]))
        retrans = end <= prev_max
        mss = max(int(length.max()), 1)
        t = p.t[data]
        hole = np.where(prev_max >= 0, seq - prev_max, 0)
        hole_segments = np.where(hole > 0, np.ceil(hole / mss), 0).astype(np.int64)
        # A hole filled sooner than a retransmission could arrive is reordering, not loss.
        holes = np.flatnonzero(hole_segments)
        if len(holes):
            window = self._reorder_window(i)
            by_seq = np.lexsort((np.arange(len(seq)), seq))
            s_sorted = seq[by_seq]
            for k in holes:                      # one lookup per hole (loss events), not per packet
                start = prev_max[k]
                j = np.searchsorted(s_sorted, start)
                cand = by_seq[j:np.searchsorted(s_sorted, start, side="right")]
                cand = cand[cand > k]
                if len(cand) and t[cand.min()] - t[k] < window:
                    hole_segments[k] = 0
        return TcpArrays(i, d, rows, t, seq, length, p.size[data], retrans, hole_segments)

    def _reorder_window(self, i: int) -> float:
        """How soon a filled hole still counts as reordering: 0.8 x the handshake RTT seen at the
        capture point (a retransmission needs at least one RTT), else REORDER_DEFAULT_S."""
        rows = self.ft.packet_indices(i)[:8]
        flags = self.cap.packets.tcp_flags[rows].astype(np.int64)
        t = self.cap.packets.ts_ns[rows].astype(np.int64)
        syn = np.flatnonzero((flags & 0x12) == 0x02)
        synack = np.flatnonzero((flags & 0x12) == 0x12)
        if len(syn) and len(synack) and synack[0] > syn[0]:
            # at the client: SYN out -> SYN-ACK in is the whole RTT; at the server the SYN-ACK ->
            # ACK time is. Either way, the larger of the two handshake gaps is the one to use.
            ack = synack[0] + 1 if synack[0] + 1 < len(rows) else synack[0]
            rtt = max(t[synack[0]] - t[syn[0]], t[ack] - t[synack[0]]) / 1e9
            if rtt > 0:
                return 0.8 * rtt
        return REORDER_DEFAULT_S


# ---------------------------------------------------------------------------------------- helpers

def fmt_rate(bps: float | None) -> str:
    if bps is None or not np.isfinite(bps):
        return "?"
    if bps >= 1e6:
        return f"{bps / 1e6:.2f} Mbit/s"
    return f"{bps / 1e3:.1f} kbit/s"


def fmt_p(p: float | None) -> str:
    if p is None or not np.isfinite(p):
        return "p=n/a"
    return f"p={p:.2g}"


def clean(d: dict) -> dict:
    """Estimates as plain JSON values (numpy scalars -> Python; NaN -> dropped)."""
    out = {}
    for k, v in d.items():
        if v is None:
            continue
        if isinstance(v, (np.floating, float)):
            if not np.isfinite(v):
                continue
            v = float(v)
        elif isinstance(v, np.integer):
            v = int(v)
        elif isinstance(v, np.bool_):
            v = bool(v)
        out[k] = v
    return out
