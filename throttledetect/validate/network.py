"""A network model independent of the detectors: composable stages applied to chosen packets.

A trial starts from a real capture (a *scene*: the looped base call) and runs stages in phases,
each on the packets a ``Where`` chooses (flows x direction x time window):

1. ``sender``: what the endpoints send — the far end mutes, holds, hangs up, lowers its bitrate;
   the local app gives up after a block and retries its probes. Packets a sender never sent leave
   no sequence gap: after this phase every RTP stream is renumbered (rewrite.renumber_after_removal).
2. ``header``: header rewrites — a sender clock running fast or slow (RTP timestamps), an SSRC
   change, a relay -> peer migration (new remote address and port).
3. ``network``: what the path does — drops, token-bucket policers, shapers, a shared congested
   link with cross traffic, Wi-Fi, blocking, path loss. A capture on the client records what it
   sends *before* the network: on from-local packets a network stage only marks them
   ``lost_beyond`` (still in the capture; seen only through the far end's RTCP reports) and its
   delays are invisible.
4. ``report``: the far end's RTCP receiver reports rewritten to count the from-local losses.
5. ``capture``: what the capture holds — it ends mid-call, holds the call alone, one direction.

State is per *emission* (a packet row of the scene, or a repeated probe), as numpy arrays:
times, sent, lost, lost_beyond, cut. Per-packet recurrences (token bucket, shaper FIFO, shared
queue, Wi-Fi access, Gilbert chain) are compiled loops (throttledetect.jit.njit). Randomness
comes only from the ``numpy.random.Generator`` passed in, so (scene, stages, seed) fixes the
output bytes.

Sizes are link-layer frame bytes (wirelen); rates bit/s; times ns inside, seconds in parameters.
Each stage's docstring states the model and its assumptions; each ``apply`` returns a dict of
what it realised (the trial's truth).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from throttledetect import rewrite
from throttledetect.flows import local_side_is_a
from throttledetect.jit import njit
from throttledetect.streams.reports import rtcp_report_blocks

MTU_BYTES = 1500
STUN_COOKIE = bytes.fromhex("2112a442")
NS = 1_000_000_000


# --------------------------------------------------------------------------- the scene

class Scene:
    """The packets a trial starts from, with what stages need precomputed (built once per base).

    Per packet row: ts (ns), size (wirelen), flow (-1 when in none), to_local. Per flow: local
    side, remote host group, media start (first packet that is not setup: STUN, DTLS handshake,
    or a payload of 60 bytes or less). RTP streams (rewrite.RtpIndex) with an audio flag: 20-60
    packets/s at a median payload of at most 300 bytes (speech codecs at 10-50 ms frames)."""

    def __init__(self, cap, ft, cl):
        self.cap, self.ft, self.cl = cap, ft, cl
        t = cap.packets
        self.n = len(t)
        self.ts = t.ts_ns.astype(np.int64)
        self.t0 = int(self.ts.min()) if self.n else 0
        self.t_end = int(self.ts.max()) if self.n else 0
        self.size = t.wirelen.astype(np.int64)
        self.flow = ft.flow_of.astype(np.int64)
        self.local_is_a, _ = local_side_is_a(ft)
        ok = self.flow >= 0
        self.to_local = np.zeros(self.n, dtype=bool)
        self.to_local[ok] = (ft.dir_of[ok] == 1) == self.local_is_a[self.flow[ok]]
        nf = len(ft)
        r_hi = np.where(self.local_is_a, ft.b_hi, ft.a_hi)
        r_lo = np.where(self.local_is_a, ft.b_lo, ft.a_lo)
        if nf:
            _, self.remote_host = np.unique(np.stack([r_hi, r_lo], axis=1), axis=0, return_inverse=True)
            self.remote_host = self.remote_host.ravel().astype(np.int64)
        else:
            self.remote_host = np.zeros(0, dtype=np.int64)
        self.rtp = rewrite.RtpIndex(cap, ft, cl)
        self.rtp_pos = np.full(self.n, -1, dtype=np.int64)
        self.rtp_pos[self.rtp.row] = np.arange(len(self.rtp))
        self.audio_stream = self._audio_streams()
        self.setup = self._setup_packets()
        self.media_start = np.full(nf, -1, dtype=np.int64)
        media = ok & ~self.setup
        if media.any():
            first = np.full(nf, np.iinfo(np.int64).max)
            np.minimum.at(first, self.flow[media], self.ts[media])
            has = first < np.iinfo(np.int64).max
            self.media_start[has] = first[has]
        self._rr = None

    def _audio_streams(self) -> np.ndarray:
        ix = self.rtp
        out = np.zeros(len(ix.starts), dtype=bool)
        plen = self.cap.packets.payload_wirelen.astype(np.int64)
        for s, (a, b) in enumerate(zip(ix.starts, ix.ends)):    # per stream, a handful
            if b - a < 20:
                continue
            r = ix.row[a:b]
            span = (self.ts[r[-1]] - self.ts[r[0]]) / NS
            pps = (b - a - 1) / span if span > 0 else 0.0
            out[s] = 20 <= pps <= 60 and np.median(plen[r]) <= 300
        return out

    def _setup_packets(self) -> np.ndarray:
        t = self.cap.packets
        pre = t.prefix
        stun = (pre[:, 4] == 0x21) & (pre[:, 5] == 0x12) & (pre[:, 6] == 0xA4) & (pre[:, 7] == 0x42) & (pre[:, 0] < 4)
        dtls_hs = (pre[:, 0] == 22) & (pre[:, 1] == 0xFE)
        small = t.payload_wirelen.astype(np.int64) <= 60
        return (stun | dtls_hs | small) & (self.rtp_pos < 0)

    def rel_ns(self, seconds: float) -> int:
        return self.t0 + int(round(seconds * NS))

    def flow_rate_bps(self, f: int, to_local: bool = True, since_ns: int | None = None) -> float:
        """Mean link-layer rate of flow f in one direction (bytes over that direction's span)."""
        sel = (self.flow == f) & (self.to_local == to_local)
        if since_ns is not None:
            sel &= self.ts >= since_ns
        r = np.flatnonzero(sel)
        if len(r) < 2:
            return 0.0
        span = (self.ts[r[-1]] - self.ts[r[0]]) / NS
        return float(self.size[r].sum() * 8 / span) if span > 0 else 0.0

    def rr_blocks(self) -> dict:
        """Plain RTCP report blocks arriving at the capture point that report on a stream the
        local host sends in the same flow (encrypted SRTCP blocks carry no such SSRC)."""
        if self._rr is None:
            rows = np.flatnonzero(self.to_local & (self.cap.packets.proto == 17) & (self.rtp_pos < 0))
            b = rtcp_report_blocks(self.cap, rows)
            ix = self.rtp
            local = ~self.to_local[ix.row[ix.starts]]
            keys = {(int(ix.flow[a]), int(ix.ssrc[a])): s for s, a in enumerate(ix.starts) if local[s]}
            stream = np.array([keys.get((int(self.flow[r]), int(s)), -1) for r, s in zip(b["row"], b["ssrc"])],
                              dtype=np.int64)
            keep = stream >= 0
            self._rr = {k: v[keep] for k, v in b.items()}
            self._rr["stream"] = stream[keep]
        return self._rr


# --------------------------------------------------------------------------- selection

@dataclass(frozen=True)
class Where:
    """Which packets a stage acts on: flows (scene flow ids; None = every flow, packets in no
    flow included), direction ("to-local", "from-local", "both"), and a time window [start_s,
    end_s) in seconds after the scene's first packet (end None = to the end)."""
    flows: tuple | None = None
    direction: str = "to-local"
    start_s: float = 0.0
    end_s: float | None = None


class Trial:
    """The mutable state of one trial: emissions (packet rows of the scene, repeats allowed)."""

    def __init__(self, scene: Scene):
        self.scene = scene
        n = scene.n
        self.rows = np.arange(n, dtype=np.int64)
        self.t = scene.ts.copy()
        self.t_sent = scene.ts.copy()          # the time without any network stage (for delays)
        self.sent = np.ones(n, dtype=bool)
        self.lost = np.zeros(n, dtype=bool)
        self.lost_beyond = np.zeros(n, dtype=bool)
        self.cut = np.zeros(n, dtype=bool)
        self.caplen = None                     # per row overrides (shrunk payloads)
        self.wirelen = None
        self.buf = None
        self.truth: list = []

    # -- emission attributes
    @property
    def flow(self) -> np.ndarray:
        return self.scene.flow[self.rows]

    @property
    def to_local(self) -> np.ndarray:
        return self.scene.to_local[self.rows]

    @property
    def size(self) -> np.ndarray:
        return self.scene.size[self.rows] if self.wirelen is None else self.wirelen[self.rows]

    @property
    def alive(self) -> np.ndarray:
        return self.sent & ~self.lost & ~self.cut

    def edit(self) -> np.ndarray:
        """The buffer stages rewrite (a copy of the scene's, made on first use)."""
        if self.buf is None:
            self.buf = self.scene.cap.buffer.copy()
        return self.buf

    def select(self, where: Where, *, alive: bool = True) -> np.ndarray:
        """Emission indices chosen by `where`, ascending."""
        sel = self.alive.copy() if alive else np.ones(len(self.rows), dtype=bool)
        if where.flows is not None:
            fl = np.zeros(len(self.scene.ft) + 1, dtype=bool)
            fl[np.asarray(where.flows, dtype=np.int64)] = True
            f = self.flow
            sel &= (f >= 0) & fl[np.where(f >= 0, f, len(fl) - 1)]
        if where.direction == "to-local":
            sel &= self.to_local
        elif where.direction == "from-local":
            sel &= ~self.to_local
        start = self.scene.rel_ns(where.start_s)
        sel &= self.t >= start
        if where.end_s is not None:
            sel &= self.t < self.scene.rel_ns(where.end_s)
        return np.flatnonzero(sel)

    def add(self, rows: np.ndarray, t: np.ndarray) -> None:
        """Emit extra copies of packet rows at times t (a probe the app retransmits)."""
        rows = np.asarray(rows, dtype=np.int64)
        t = np.asarray(t, dtype=np.int64)
        self.rows = np.concatenate([self.rows, rows])
        self.t = np.concatenate([self.t, t])
        self.t_sent = np.concatenate([self.t_sent, t])
        for name in ("sent", "lost", "lost_beyond", "cut"):
            old = getattr(self, name)
            setattr(self, name, np.concatenate([old, np.full(len(rows), name == "sent")]))

    def drop(self, idx: np.ndarray) -> None:
        """Lost in the network: gone from the capture when arriving, counted beyond it when leaving."""
        idx = np.asarray(idx, dtype=np.int64)
        tl = self.to_local[idx]
        self.lost[idx[tl]] = True
        self.lost_beyond[idx[~tl]] = True

    def delay_to(self, idx: np.ndarray, new_t: np.ndarray) -> None:
        """Arrival later: seen on arriving packets only (a client capture times what it sends
        before the network)."""
        idx = np.asarray(idx, dtype=np.int64)
        tl = self.to_local[idx]
        self.t[idx[tl]] = np.asarray(new_t, dtype=np.int64)[tl]

    def unsend(self, idx: np.ndarray) -> None:
        self.sent[np.asarray(idx, dtype=np.int64)] = False

    # -- output
    def capture(self, what: str = "trial"):
        """The capture this trial produces (time-ordered; ties keep emission order), None when
        nothing is left in it."""
        keep = np.flatnonzero(self.alive)
        if not len(keep):
            return None
        order = np.argsort(self.t[keep], kind="stable")
        keep = keep[order]
        rows = self.rows[keep]
        buf = self.buf if self.buf is not None else self.scene.cap.buffer
        caplen = None if self.caplen is None else self.caplen[rows]
        wirelen = None if self.wirelen is None else self.wirelen[rows]
        return rewrite.build_capture(buf, self.scene.cap, rows, self.t[keep], what, caplen=caplen, wirelen=wirelen)

    def measure(self, flows, since_s: float = 0.0, direction: str = "to-local") -> dict:
        """Realised effect on each flow in one direction from since_s on: packets the sender sent,
        lost on the way (before the capture point for to-local, beyond it for from-local), drop
        fraction, bytes in/out, output rate (bytes kept over their span), added delay."""
        out = {}
        start = self.scene.rel_ns(since_s)
        tl = self.to_local
        fl = self.flow
        for f in flows:
            sel = (fl == f) & self.sent & ~self.cut & (self.t_sent >= start) & (tl if direction == "to-local" else ~tl)
            idx = np.flatnonzero(sel)
            lost = self.lost[idx] if direction == "to-local" else self.lost_beyond[idx]
            kept = idx[~lost]
            size = self.size
            span = (self.t[kept].max() - self.t[kept].min()) / NS if len(kept) >= 2 else 0.0
            delay = (self.t[kept] - self.t_sent[kept]) / 1e6 if len(kept) else np.zeros(0)
            out[int(f)] = {
                "direction": direction, "packets": int(len(idx)), "lost": int(lost.sum()),
                "drop_fraction": round(float(lost.mean()), 6) if len(idx) else 0.0,
                "bytes_in": int(size[idx].sum()), "bytes_out": int(size[kept].sum()),
                "rate_out_bps": round(float(size[kept].sum() * 8 / span), 1) if span > 0 else None,
                "delay_ms_max": round(float(delay.max()), 3) if len(delay) else None,
                "delay_ms_median": round(float(np.median(delay)), 3) if len(delay) else None,
            }
        return out


class Stage:
    phase = "network"

    def apply(self, trial: Trial, rng: np.random.Generator) -> dict:   # pragma: no cover - interface
        raise NotImplementedError


def run(scene: Scene, stages: list, rng: np.random.Generator, what: str = "trial"):
    """Apply stages phase by phase (sender, RTP renumbering, header, network, report, capture);
    returns (the Trial, the list of realised stage truths). The capture is trial.capture()."""
    trial = Trial(scene)
    phases = ("sender", "header", "network", "report", "capture")
    for ph in phases:
        for st in stages:
            if st.phase == ph:
                d = st.apply(trial, rng)
                trial.truth.append({"stage": type(st).__name__, "phase": ph, **d})
        if ph == "sender":
            _renumber(trial)
    return trial


def _renumber(trial: Trial) -> None:
    """Packets a sender never sent leave no sequence gap (a sender numbers what it sends)."""
    sc = trial.scene
    ix = sc.rtp
    if not len(ix):
        return
    base = trial.sent[: sc.n]
    removed = ~base[ix.row]
    if removed.any():
        n = rewrite.renumber_after_removal(trial.edit(), ix, removed, mark_resume=True)
        trial.truth.append({"stage": "renumber", "phase": "sender", "rtp_packets_renumbered": n,
                            "rtp_packets_not_sent": int(removed.sum())})


# --------------------------------------------------------------------------- compiled recurrences

@njit
def _token_bucket(t, size, group, rate, burst, init, keep):
    """Token bucket over emissions sorted by (group, time); per emission the group's rate (bytes
    per ns), depth and initial fill (constant within a group). A packet passes when the bucket
    holds its size, else it is dropped (nothing is delayed)."""
    prev = -1
    tokens = 0.0
    last = 0
    for i in range(len(t)):
        if group[i] != prev:
            prev = group[i]
            tokens = init[i]
            last = t[i]
        tokens = min(burst[i], tokens + (t[i] - last) * rate[i])
        last = t[i]
        if tokens >= size[i]:
            tokens -= size[i]
            keep[i] = True
        else:
            keep[i] = False


@njit
def _shaper(t, size, group, rate, burst, qlimit, init, keep, depart):
    """Token bucket + FIFO over emissions sorted by (group, time).

    A packet departs at max(arrival, previous departure, when the bucket holds its size). Packets
    waiting are in the queue until they depart; one that would take the queue past qlimit bytes
    is tail-dropped and changes nothing. Departures within a group never reorder."""
    n = len(t)
    waiting = np.empty(n, dtype=np.int64)
    head = 0
    tail = 0
    qbytes = 0.0
    prev = -1
    tokens = 0.0
    t_tok = 0
    d_last = 0
    for i in range(n):
        a = t[i]
        if group[i] != prev:
            prev = group[i]
            tokens = init[i]
            t_tok = a
            d_last = a
            head = 0
            tail = 0
            qbytes = 0.0
        while head < tail and depart[waiting[head]] <= a:
            qbytes -= size[waiting[head]]
            head += 1
        start = a if a > d_last else d_last
        tok = min(burst[i], tokens + (start - t_tok) * rate[i])
        if tok >= size[i]:
            d = start
        else:
            d = start + np.int64(np.ceil((size[i] - tok) / rate[i]))
        if d > a:
            if qbytes + size[i] > qlimit[i]:
                keep[i] = False
                depart[i] = a
                continue
            waiting[tail] = i
            tail += 1
            qbytes += size[i]
        keep[i] = True
        depart[i] = d
        tokens = min(burst[i], tok + (d - start) * rate[i]) - size[i]
        t_tok = d
        d_last = d


@njit
def _shared_queue(t, size, seg_t, seg_rate, capacity, qmax, own_rate, u, keep, delay):
    """A FIFO link of `capacity` bytes/ns and `qmax` bytes shared with fluid cross traffic whose
    arrival rate is seg_rate[k] bytes/ns from seg_t[k] on. Between own packets the backlog changes
    by (cross rate - capacity) * dt within [0, qmax]. An own packet that fits waits backlog /
    capacity. When the buffer is full, tail drop hits every arrival alike: the space the link
    frees goes to arrivals in proportion to their rates, so an own packet gets in with
    probability capacity / (cross rate + own rate) (u[i] uniform) and then waits a full buffer."""
    q = 0.0
    k = 0
    now = t[0] if len(t) else 0
    while k + 1 < len(seg_t) and seg_t[k + 1] <= now:
        k += 1
    for i in range(len(t)):
        while now < t[i]:
            nxt = t[i]
            if k + 1 < len(seg_t) and seg_t[k + 1] < nxt:
                nxt = seg_t[k + 1]
            q += (seg_rate[k] - capacity) * (nxt - now)
            if q < 0.0:
                q = 0.0
            elif q > qmax:
                q = qmax
            now = nxt
            if k + 1 < len(seg_t) and seg_t[k + 1] <= now:
                k += 1
        if q + size[i] <= qmax:
            q += size[i]
            keep[i] = True
            delay[i] = np.int64(q / capacity)
        elif u[i] < capacity / (seg_rate[k] + own_rate):
            q = qmax
            keep[i] = True
            delay[i] = np.int64(qmax / capacity)
        else:
            keep[i] = False
            delay[i] = 0


@njit
def _wifi(t, size, access, air_per_byte, keep_u, p_loss, depart, keep):
    """One station's downlink FIFO on a Wi-Fi hop: a packet that finds the queue empty waits its
    channel access delay access[i] then its airtime; packets queued behind it leave in the same
    aggregate (airtime only). Lost with probability p_loss (retry limit). Never reorders."""
    d_last = 0
    for i in range(len(t)):
        air = np.int64(size[i] * air_per_byte)
        if t[i] >= d_last:
            d = t[i] + access[i] + air
        else:
            d = d_last + air
        depart[i] = d
        d_last = d
        keep[i] = keep_u[i] >= p_loss


@njit
def _gilbert(u, p_gb, p_bg, bad):
    """Two-state Markov chain over slots: bad[k] for each slot (starts good)."""
    state = False
    for k in range(len(u)):
        bad[k] = state
        if state:
            state = not (u[k] < p_bg)
        else:
            state = u[k] < p_gb


def _groups(trial: Trial, idx: np.ndarray, per: str) -> np.ndarray:
    """Bucket group of each emission: "flow" = one per flow and direction, "host" = one per remote
    host and direction (all the call's flows to a host share it), "all" = one per direction."""
    f = trial.flow[idx]
    tl = trial.to_local[idx].astype(np.int64)
    if per == "flow":
        return f * 2 + tl
    if per == "host":
        return trial.scene.remote_host[f] * 2 + tl
    return tl


def _sorted(trial: Trial, idx: np.ndarray, group: np.ndarray):
    order = np.lexsort((idx, trial.t[idx], group))
    return idx[order], group[order]


# --------------------------------------------------------------------------- throttlers

@dataclass(frozen=True)
class Drop(Stage):
    """Selective random drop: each chosen packet lost independently with probability p (a DPI box
    dropping a share of a class's packets; no queue, no delay)."""
    where: Where
    p: float

    def apply(self, trial, rng):
        idx = trial.select(self.where)
        hit = idx[rng.random(len(idx)) < self.p]
        trial.drop(hit)
        return {"p": self.p, "packets": int(len(idx)), "dropped": int(len(hit))}


@dataclass(frozen=True)
class Police(Stage):
    """Token-bucket policer (rate bit/s, bucket depth burst bytes): a packet finding fewer tokens
    than its size is dropped, none is delayed (RFC 2697's single-rate meter, drop on red).

    rate_bps: one value, or a dict flow -> rate (a per-flow policer configured per flow). per:
    "flow" (one bucket per flow and direction), "host" (ONE bucket for all chosen flows to a
    remote host: a policer on the host's address), "all". full: the bucket is full at onset (idle
    traffic class) or empty (it was already in use). A packet larger than the depth never passes,
    as on a real policer."""
    where: Where
    rate_bps: float | dict
    burst_bytes: float
    per: str = "flow"
    full: bool = True

    def apply(self, trial, rng):
        b = _bucket(trial, self, float(self.burst_bytes))
        if b is None:
            return {"packets": 0, "dropped": 0}
        idx, g, size, rate, burst, init = b
        keep = np.ones(len(idx), dtype=np.bool_)
        _token_bucket(trial.t[idx] - trial.scene.t0, size, g, rate, burst, init, keep)
        trial.drop(idx[~keep])
        first_drop = (trial.t[idx[~keep]].min() - trial.scene.t0) / NS if (~keep).any() else None
        return {"rate_bps": _rate_json(self.rate_bps), "burst_bytes": float(self.burst_bytes), "per": self.per,
                "bucket_at_onset": "full" if self.full else "empty", "packets": int(len(idx)),
                "dropped": int((~keep).sum()), "first_drop_s": first_drop}


@dataclass(frozen=True)
class Shape(Stage):
    """Token-bucket shaper with a FIFO of queue_bytes and tail drop: packets wait for tokens
    (departure = max(arrival, previous departure, tokens available)); one that would overflow the
    queue is dropped. Bucket depth burst_bytes (at least the largest packet, else it could never
    leave). Never reorders within a group; per as in Police. Used with a high rate and a small
    queue it is a plain FIFO link (FifoLink)."""
    where: Where
    rate_bps: float | dict
    queue_bytes: float
    burst_bytes: float = MTU_BYTES
    per: str = "flow"
    full: bool = True

    def apply(self, trial, rng):
        # the bucket holds at least the largest packet, else that packet could never leave
        b = _bucket(trial, self, float(self.burst_bytes), at_least_largest=True)
        if b is None:
            return {"packets": 0, "dropped": 0}
        idx, g, size, rate, burst, init = b
        q = np.full(len(idx), float(self.queue_bytes))
        keep = np.ones(len(idx), dtype=np.bool_)
        dep = np.zeros(len(idx), dtype=np.int64)
        t0 = trial.scene.t0
        _shaper(trial.t[idx] - t0, size, g, rate, burst, q, init, keep, dep)
        trial.drop(idx[~keep])
        kept = idx[keep]
        trial.delay_to(kept, dep[keep] + t0)
        dl = (dep[keep] + t0 - trial.t_sent[kept]) / 1e6
        return {"rate_bps": _rate_json(self.rate_bps), "queue_bytes": float(self.queue_bytes),
                "burst_bytes": float(burst[0]), "per": self.per, "packets": int(len(idx)),
                "dropped": int((~keep).sum()), "delay_ms_max": round(float(dl.max()), 3) if len(dl) else None}


def FifoLink(where: Where, rate_bps: float, queue_bytes: float) -> Shape:
    """A plain FIFO hop of rate_bps (serialisation) and queue_bytes, tail drop: a shaper whose
    bucket holds one packet."""
    return Shape(where, rate_bps, queue_bytes, burst_bytes=MTU_BYTES, per="all")


def _bucket(trial: Trial, st, depth: float, at_least_largest: bool = False):
    """The inputs of a token-bucket recurrence for stage st (Police or Shape): chosen emissions
    sorted by (group, time), their sizes, rates in bytes/ns, depths and initial fills."""
    idx = trial.select(st.where)
    if not len(idx):
        return None
    idx, g = _sorted(trial, idx, _groups(trial, idx, st.per))
    size = trial.size[idx].astype(np.float64)
    rate = _per_emission_rate(trial, idx, st.rate_bps) / 8 / NS
    burst = np.full(len(idx), max(depth, float(size.max())) if at_least_largest else depth)
    init = burst if st.full else np.zeros(len(idx))
    return idx, g, size, rate, burst, init


def _per_emission_rate(trial: Trial, idx: np.ndarray, rate) -> np.ndarray:
    if isinstance(rate, dict):
        lut = np.zeros(len(trial.scene.ft) + 1)
        for f, r in rate.items():
            lut[int(f)] = float(r)
        return lut[trial.flow[idx]]
    return np.full(len(idx), float(rate))


def _rate_json(rate):
    return {str(k): round(float(v), 1) for k, v in rate.items()} if isinstance(rate, dict) else round(float(rate), 1)


@dataclass(frozen=True)
class BlockInbound(Stage):
    """Blocking from at_s on: every chosen to-local packet lost (a DPI box discarding the call).

    The local app does not know at once: it goes on sending its media for give_up_s (ICE consent
    freshness gives up after about 30 s without answers; apps often hang up sooner), then stops
    media and retries a probe every retry_s until the end (a copy of the flow's last setup packet
    from-local before the block: a STUN binding/consent request or the app's keepalive; the last
    from-local packet when there is none)."""
    where: Where
    at_s: float
    give_up_s: float
    retry_s: float = 1.0
    phase = "network"

    def apply(self, trial, rng):
        w = Where(self.where.flows, "to-local", self.at_s, None)
        idx = trial.select(w)
        trial.drop(idx)
        stop = self.at_s + self.give_up_s
        retries = _give_up(trial, self.where.flows, self.at_s, stop, self.retry_s)
        return {"at_s": self.at_s, "inbound_dropped": int(len(idx)), "local_gives_up_s": round(stop, 3),
                "probe_retries": retries}


def _give_up(trial: Trial, flows, before_s: float, stop_s: float, retry_s: float) -> int:
    """From stop_s on the local side sends no media in `flows`: its packets are removed and one
    probe (its last setup packet sent before before_s, else its last packet) is repeated every
    retry_s to the end of the scene."""
    sc = trial.scene
    out = trial.select(Where(flows, "from-local", stop_s, None))
    trial.unsend(out)
    end = sc.t_end
    start = sc.rel_ns(stop_s)
    if start >= end:
        return 0
    n = 0
    for f in (flows if flows is not None else []):
        mine = np.flatnonzero((sc.flow == f) & ~sc.to_local & (sc.ts < sc.rel_ns(before_s)))
        if not len(mine):
            continue
        setup = mine[sc.setup[mine]]
        probe = int(setup[-1] if len(setup) else mine[-1])
        times = np.arange(start, end, int(retry_s * NS), dtype=np.int64)
        trial.add(np.full(len(times), probe), times)
        n += len(times)
    return n


@dataclass(frozen=True)
class SetupBlock(Stage):
    """Call-setup blocking: every to-local packet of the call's flows lost from the first one (the
    client's STUN and relay probes go unanswered, as in the August 2025 reports).

    The client never gets an answer, so it never reaches media: it goes on sending its own setup
    packets (STUN checks, relay probes: what it sent before media in the base) until it gives up
    give_up_s after the flow's first packet, and its last setup packet is retransmitted every
    retry_s after the last one it sent (RFC 5389 retransmits a request unchanged) up to then;
    its media is never sent. A flow with no setup before its media (plain RTP: the caller just
    sends) keeps sending its media until give_up_s."""
    flows: tuple
    give_up_s: float
    retry_s: float = 0.5

    def apply(self, trial, rng):
        sc = trial.scene
        idx = trial.select(Where(self.flows, "to-local", 0.0, None))
        trial.drop(idx)
        n_retry = 0
        plain = 0
        never = np.iinfo(np.int64).max
        for f in self.flows:
            mine = np.flatnonzero((sc.flow == f) & ~sc.to_local)
            if not len(mine):
                continue
            stop = int(sc.ts[np.flatnonzero(sc.flow == f)].min()) + int(self.give_up_s * NS)
            ms = int(sc.media_start[f]) if sc.media_start[f] >= 0 else never
            setup = mine[sc.setup[mine]]
            if not len(setup) or sc.ts[setup[0]] > ms:
                trial.unsend(mine[sc.ts[mine] >= stop])          # the caller just sends its media
                plain += 1
                continue
            trial.unsend(mine[~sc.setup[mine] | (sc.ts[mine] >= stop)])
            kept = setup[sc.ts[setup] < stop]
            before = setup[sc.ts[setup] < ms]
            probe = int(before[-1] if len(before) else setup[0])
            start = int(sc.ts[kept[-1]]) if len(kept) else int(sc.ts[probe])
            times = np.arange(start + int(self.retry_s * NS), min(stop, sc.t_end), int(self.retry_s * NS),
                              dtype=np.int64)
            trial.add(np.full(len(times), probe), times)
            n_retry += len(times)
        return {"inbound_dropped": int(len(idx)), "give_up_s": self.give_up_s, "probe_retries": n_retry,
                "flows_sending_media_until_give_up": plain}


# --------------------------------------------------------------------------- confounders: the path

@dataclass(frozen=True)
class PathLoss(Stage):
    """Random path loss on every chosen packet, not selective. model "bernoulli": independent,
    probability p. model "gilbert": a Gilbert-Elliott chain in time slots of slot_ms shared by
    every flow on the path (radio fades hit all flows at once), lossless in the good state and
    loss_bad in the bad one, tuned so that the mean loss is p with bad periods of mean burst_ms."""
    where: Where
    p: float
    model: str = "bernoulli"
    burst_ms: float = 40.0
    loss_bad: float = 0.5
    slot_ms: float = 5.0

    def apply(self, trial, rng):
        idx = trial.select(self.where)
        if self.model == "bernoulli":
            hit = idx[rng.random(len(idx)) < self.p]
            trial.drop(hit)
            return {"model": "bernoulli", "p": self.p, "packets": int(len(idx)), "dropped": int(len(hit))}
        slot = int(self.slot_ms * 1e6)
        rel = trial.t[idx] - trial.scene.t0
        n_slots = int(rel.max() // slot) + 2 if len(idx) else 1
        pi = min(0.99, self.p / self.loss_bad)           # stationary share of bad slots
        p_bg = min(1.0, self.slot_ms / self.burst_ms)
        p_gb = min(1.0, pi * p_bg / (1 - pi))
        bad = np.zeros(n_slots, dtype=np.bool_)
        _gilbert(rng.random(n_slots), p_gb, p_bg, bad)
        p_loss = np.where(bad[rel // slot], self.loss_bad, 0.0)
        hit = idx[rng.random(len(idx)) < p_loss]
        trial.drop(hit)
        return {"model": "gilbert", "p": self.p, "burst_ms": self.burst_ms, "loss_bad": self.loss_bad,
                "bad_time_fraction": round(float(bad.mean()), 4), "packets": int(len(idx)), "dropped": int(len(hit))}


@dataclass(frozen=True)
class Congestion(Stage):
    """A congested shared link: one FIFO of capacity_bps and queue_ms (at that capacity) carrying
    every chosen packet and fluid cross traffic that alternates on/off periods (exponential, means
    on_s / off_s) at on_load / off_load times the capacity left after the capture's own mean rate.
    In on periods with on_load > 1 the queue fills: delay rises for every flow, then tail drops hit
    them together (correlated losses after a delay rise: the congestion signature), each arrival
    alike, so the capture's packets lose about the overload's share, not all of them."""
    where: Where
    capacity_bps: float
    queue_ms: float
    on_load: float
    off_load: float
    on_s: float
    off_s: float

    def apply(self, trial, rng):
        idx = trial.select(self.where)
        if not len(idx):
            return {"packets": 0}
        idx = idx[np.argsort(trial.t[idx], kind="stable")]
        t = trial.t[idx] - trial.scene.t0
        size = trial.size[idx].astype(np.float64)
        span = max(1, int(t[-1] - t[0]))
        own = size.sum() / span                          # bytes per ns
        cap = self.capacity_bps / 8 / NS
        room = max(cap - own, 0.05 * cap)
        seg_t, seg_r = [0], []
        on = rng.random() < self.on_s / (self.on_s + self.off_s)
        now = 0
        while now <= t[-1]:
            seg_r.append(room * (self.on_load if on else self.off_load))
            now += int(rng.exponential(self.on_s if on else self.off_s) * NS) + 1
            seg_t.append(now)
            on = not on
        seg_t = np.asarray(seg_t[:-1], dtype=np.int64)
        seg_r = np.asarray(seg_r, dtype=np.float64)
        qmax = cap * self.queue_ms * 1e6
        keep = np.ones(len(idx), dtype=np.bool_)
        delay = np.zeros(len(idx), dtype=np.int64)
        _shared_queue(t, size, seg_t, seg_r, cap, qmax, own, rng.random(len(idx)), keep, delay)
        trial.drop(idx[~keep])
        trial.delay_to(idx[keep], trial.t[idx[keep]] + delay[keep])
        d = delay[keep] / 1e6
        return {"capacity_bps": round(self.capacity_bps, 1), "queue_ms": self.queue_ms, "on_load": self.on_load,
                "off_load": self.off_load, "packets": int(len(idx)), "dropped": int((~keep).sum()),
                "delay_ms_median": round(float(np.median(d)), 3) if len(d) else None,
                "delay_ms_max": round(float(d.max()), 3) if len(d) else None}


@dataclass(frozen=True)
class WiFi(Stage):
    """A Wi-Fi hop before the client: one FIFO per station (the chosen packets), each packet that
    finds it empty waits a channel-access delay — exponential of mean access_ms, and with
    probability stall_p a long stall (contention, retries, power save) of mean stall_ms — then its
    airtime at phy_mbps; packets queued meanwhile leave in the same aggregate right behind it
    (A-MPDU bursts). A packet is lost with probability loss_p (retry limit). Delays only grow
    within the FIFO, so nothing is reordered."""
    where: Where
    access_ms: float
    stall_p: float
    stall_ms: float
    loss_p: float
    phy_mbps: float = 100.0

    def apply(self, trial, rng):
        idx = trial.select(self.where)
        if not len(idx):
            return {"packets": 0}
        idx = idx[np.argsort(trial.t[idx], kind="stable")]
        m = len(idx)
        access = rng.exponential(self.access_ms * 1e6, m)
        stall = rng.random(m) < self.stall_p
        access[stall] += rng.exponential(self.stall_ms * 1e6, int(stall.sum()))
        dep = np.zeros(m, dtype=np.int64)
        keep = np.ones(m, dtype=np.bool_)
        _wifi(trial.t[idx], trial.size[idx].astype(np.float64), access.astype(np.int64),
              8.0 / (self.phy_mbps * 1e6) * NS, rng.random(m), self.loss_p, dep, keep)
        trial.drop(idx[~keep])
        trial.delay_to(idx[keep], dep[keep])
        d = (dep[keep] - trial.t_sent[idx[keep]]) / 1e6
        return {"access_ms": self.access_ms, "stall_p": self.stall_p, "stall_ms": self.stall_ms, "loss_p": self.loss_p,
                "packets": m, "dropped": int((~keep).sum()), "stalls": int(stall.sum()),
                "delay_ms_median": round(float(np.median(d)), 3) if len(d) else None,
                "delay_ms_p99": round(float(np.quantile(d, 0.99)), 3) if len(d) else None}


# --------------------------------------------------------------------------- confounders: the endpoints

def _rtp_positions(trial: Trial, where: Where, audio: bool | None = None) -> np.ndarray:
    """Index positions (scene.rtp) of the RTP packets `where` chooses among the original rows."""
    sc = trial.scene
    idx = trial.select(where)
    idx = idx[idx < sc.n]
    pos = sc.rtp_pos[trial.rows[idx]]
    pos = pos[pos >= 0]
    if audio is not None:
        pos = pos[sc.audio_stream[sc.rtp.stream[pos]] == audio]
    return pos


def _thin(times: np.ndarray, interval_ns: int) -> np.ndarray:
    """Keep the first of the given (sorted) times in each interval: a sparse keepalive cadence."""
    if not len(times):
        return np.zeros(0, dtype=bool)
    b = (times - times[0]) // max(1, interval_ns)
    keep = np.ones(len(times), dtype=bool)
    keep[1:] = b[1:] != b[:-1]
    return keep


@dataclass(frozen=True)
class ClockSkew(Stage):
    """The far end's RTP clock runs ppm parts per million fast (+) or slow (-) against the capture
    clock: every to-local RTP timestamp of the chosen flows is rewritten to ts0 + (ts - ts0) * (1 +
    ppm / 1e6) from the stream's first packet (the sender stamps media by its own clock, the
    capture times arrivals by the receiver's). Arrival times stay: the one-way delay read against
    RTP timestamps drifts by ppm * elapsed with no queue at all. Flows without readable RTP carry
    no sender clock to skew."""
    where: Where
    ppm: float
    phase = "header"

    def apply(self, trial, rng):
        ix = trial.scene.rtp
        pos = _rtp_positions(trial, self.where)
        if not len(pos):
            return {"ppm": self.ppm, "rtp_packets": 0}
        first = ix.xts[ix.starts][ix.stream[pos]]
        new = first + np.round((ix.xts[pos] - first) * (1.0 + self.ppm * 1e-6)).astype(np.int64)
        rewrite.set_rtp(trial.edit(), ix, pos, ts=new)
        return {"ppm": self.ppm, "rtp_packets": int(len(pos)), "streams": int(len(np.unique(ix.stream[pos])))}


@dataclass(frozen=True)
class SsrcChange(Stage):
    """Mid-call the far end restarts its RTP streams (renegotiation, a new device): from at_s on
    every to-local stream of the chosen flows takes a new random SSRC, sequence number and
    timestamp base (RFC 3550 8.2), continuing at the same cadence."""
    where: Where
    at_s: float
    phase = "header"

    def apply(self, trial, rng):
        ix = trial.scene.rtp
        pos = _rtp_positions(trial, Where(self.where.flows, "to-local", self.at_s, None))
        if not len(pos):
            return {"at_s": self.at_s, "rtp_packets": 0}
        us, inv = np.unique(ix.stream[pos], return_inverse=True)
        fpos = np.full(len(us), np.iinfo(np.int64).max)
        np.minimum.at(fpos, inv, pos)
        ssrc = rng.integers(1, 1 << 32, len(us))
        seq0 = rng.integers(0, 1 << 16, len(us))
        ts0 = rng.integers(0, 1 << 32, len(us))
        seq = seq0[inv] + ix.xseq[pos] - ix.xseq[fpos][inv]
        ts = ts0[inv] + ix.xts[pos] - ix.xts[fpos][inv]
        rewrite.set_rtp(trial.edit(), ix, pos, seq=seq, ts=ts, ssrc=ssrc[inv])
        return {"at_s": self.at_s, "rtp_packets": int(len(pos)), "streams": int(len(us))}


@dataclass(frozen=True)
class Migrate(Stage):
    """Relay -> peer migration: from at_s on the chosen flows' packets (both directions) go to a
    new remote endpoint (address in TEST-NET-1 192.0.2.0/24 and port drawn from the seed), as when
    ICE moves a call from a TURN relay to a direct path. IPv4 only (IPv6 rows stay: reported)."""
    where: Where
    at_s: float
    phase = "header"

    def apply(self, trial, rng):
        sc = trial.scene
        addr = f"192.0.2.{int(rng.integers(1, 255))}"
        port = int(rng.integers(1024, 65536))
        buf = trial.edit()
        idx = trial.select(Where(self.where.flows, "both", self.at_s, None))
        idx = idx[idx < sc.n]
        rows = trial.rows[idx]
        tl = sc.to_local[rows]
        n = rewrite.rewrite_endpoint(buf, sc.cap, rows[tl], "src", addr, port)
        n += rewrite.rewrite_endpoint(buf, sc.cap, rows[~tl], "dst", addr, port)
        return {"at_s": self.at_s, "new_remote": f"{addr}:{port}", "packets_moved": n, "packets_chosen": int(len(rows))}


@dataclass(frozen=True)
class Mute(Stage):
    """The far end mutes from at_s on: its audio thins to discontinuous transmission (one comfort
    noise / DTX frame every dtx_s: Opus DTX 400 ms, AMR SID 160 ms) or stops (mode "stop"), while
    its RTCP and video go on. Flows without readable RTP thin as a whole to one packet per dtx_s
    (their audio cannot be told apart). Unsent RTP packets leave no sequence gap."""
    where: Where
    at_s: float
    dtx_s: float
    mode: str = "dtx"
    phase = "sender"

    def apply(self, trial, rng):
        sc = trial.scene
        w = Where(self.where.flows, "to-local", self.at_s, None)
        pos = _rtp_positions(trial, w, audio=True)
        removed = 0
        if len(pos):
            ix = sc.rtp
            keep = np.zeros(len(pos), dtype=bool)
            if self.mode == "dtx":
                for s in np.unique(ix.stream[pos]):
                    m = ix.stream[pos] == s
                    keep[m] = _thin(sc.ts[ix.row[pos[m]]], int(self.dtx_s * NS))
            rows = ix.row[pos[~keep]]
            trial.unsend(rows)
            removed += len(rows)
        rtp_flows = set(np.unique(sc.rtp.flow).tolist()) if len(sc.rtp) else set()
        for f in (self.where.flows or ()):
            if f in rtp_flows:
                continue
            idx = trial.select(Where((f,), "to-local", self.at_s, None))
            # one packet per dtx_s in either mode: its audio cannot be told from its video and
            # signalling, which go on when the far end mutes (only a hang-up stops everything)
            keep = _thin(trial.t[idx], int(self.dtx_s * NS))
            trial.unsend(idx[~keep])
            removed += int((~keep).sum())
        return {"at_s": self.at_s, "mode": self.mode, "dtx_s": self.dtx_s, "packets_not_sent": int(removed)}


@dataclass(frozen=True)
class Hold(Stage):
    """Call on hold from at_s for duration_s (or to the end): both directions of the chosen flows
    thin to one keepalive every keepalive_s per flow and direction (RFC 3264 sendonly/inactive
    media; NAT keepalives go on); RTP resumes afterwards without a sequence gap."""
    where: Where
    at_s: float
    duration_s: float
    keepalive_s: float
    phase = "sender"

    def apply(self, trial, rng):
        removed = 0
        for f in (self.where.flows or ()):
            for d in ("to-local", "from-local"):
                idx = trial.select(Where((f,), d, self.at_s, self.at_s + self.duration_s))
                keep = _thin(trial.t[idx], int(self.keepalive_s * NS))
                trial.unsend(idx[~keep])
                removed += int((~keep).sum())
        return {"at_s": self.at_s, "duration_s": self.duration_s, "keepalive_s": self.keepalive_s,
                "packets_not_sent": removed}


@dataclass(frozen=True)
class HangUp(Stage):
    """The far end hangs up at at_s: nothing more arrives in the chosen flows; the local app stops
    its media within stop_s and then either sends nothing or (keepalive_s not None) goes on
    sending a sparse trickle — one of its own non-media packets (RTCP, STUN, keepalive) every
    keepalive_s — for trickle_s more seconds (some apps send RTCP for tens of seconds)."""
    where: Where
    at_s: float
    stop_s: float
    keepalive_s: float | None
    trickle_s: float = 0.0
    phase = "sender"

    def apply(self, trial, rng):
        sc = trial.scene
        inn = trial.select(Where(self.where.flows, "to-local", self.at_s, None))
        trial.unsend(inn)
        stop = self.at_s + self.stop_s
        out = trial.select(Where(self.where.flows, "from-local", stop, None))
        keep = np.zeros(len(out), dtype=bool)
        if self.keepalive_s is not None and len(out):
            cand = out[sc.rtp_pos[trial.rows[out]] < 0]          # RTCP, STUN, keepalives
            cand = cand[trial.t[cand] < sc.rel_ns(stop + self.trickle_s)]
            fl = trial.flow[cand]
            k = np.zeros(len(cand), dtype=bool)
            for f in np.unique(fl):
                m = fl == f
                k[m] = _thin(trial.t[cand[m]], int(self.keepalive_s * NS))
            keep[np.isin(out, cand[k])] = True
        trial.unsend(out[~keep])
        return {"at_s": self.at_s, "local_stops_s": round(stop, 3), "inbound_not_sent": int(len(inn)),
                "outbound_not_sent": int((~keep).sum()), "outbound_trickle": int(keep.sum())}


@dataclass(frozen=True)
class AdaptRate(Stage):
    """The far end lowers its bitrate from at_s on to `factor` of it (its congestion control or a
    lower resolution): video-like RTP streams skip whole frames (packets sharing an RTP timestamp)
    with probability 1 - factor, audio RTP and flows without readable RTP send smaller packets
    (payload x factor, at least 20 bytes) at the same cadence. Nothing is lost: RTP numbering stays
    continuous."""
    where: Where
    at_s: float
    factor: float
    phase = "sender"

    def apply(self, trial, rng):
        sc = trial.scene
        ix = sc.rtp
        w = Where(self.where.flows, "to-local", self.at_s, None)
        video = _rtp_positions(trial, w, audio=False)
        skipped = 0
        if len(video):
            frame_key = ix.stream[video] * U32_KEY + ix.xts[video]
            uk, inv = np.unique(frame_key, return_inverse=True)
            skip = rng.random(len(uk)) >= self.factor
            rows = ix.row[video[skip[inv]]]
            trial.unsend(rows)
            skipped = int(len(rows))
        # audio RTP, and the media (not setup, not RTCP) of flows without readable RTP
        rows = ix.row[_rtp_positions(trial, w, audio=True)]
        rtp_flows = np.unique(ix.flow) if len(ix) else np.zeros(0, dtype=np.int64)
        idx = trial.select(w)
        idx = idx[idx < sc.n]
        other = trial.rows[idx]
        other = other[~np.isin(sc.flow[other], rtp_flows) & ~sc.setup[other]]
        rows = np.concatenate([rows, other])
        plen = sc.cap.packets.payload_wirelen[rows].astype(np.int64)
        new = np.maximum(np.minimum(plen, 20), np.round(plen * self.factor).astype(np.int64))
        shrunk = 0
        if len(rows):
            r, caplen, wirelen = rewrite.shrink_udp(trial.edit(), sc.cap, rows, new)
            if trial.wirelen is None:
                trial.wirelen = sc.size.copy()
                trial.caplen = sc.cap.packets.caplen.astype(np.int64).copy()
            trial.caplen[r] = caplen
            trial.wirelen[r] = wirelen
            shrunk = int(len(r))
        return {"at_s": self.at_s, "factor": self.factor, "video_packets_not_sent": skipped,
                "packets_shrunk": shrunk}


U32_KEY = 1 << 33


# --------------------------------------------------------------------------- the far end's reports

@dataclass(frozen=True)
class FarEndReports(Stage):
    """The far end's RTCP receiver reports count what the uplink lost: for every plain report block
    (to-local) about a stream the local host sends, the cumulative lost grows by the packets of
    that stream lost beyond the capture point up to the block's extended highest sequence number,
    and the fraction lost is recomputed over the interval since the stream's previous block
    (RFC 3550 A.3: lost in the interval / expected in the interval, 8-bit fixed point). Blocks
    of encrypted SRTCP cannot be rewritten: the scenario applies only where plain blocks exist."""
    phase = "report"

    def apply(self, trial, rng):
        sc = trial.scene
        b = sc.rr_blocks()
        ix = sc.rtp
        if not len(b["row"]):
            return {"blocks": 0, "rewritten": 0}
        lost_rows = np.flatnonzero(trial.lost_beyond[: sc.n])
        lost_pos = sc.rtp_pos[lost_rows]
        lost_pos = lost_pos[lost_pos >= 0]
        fraction = b["fraction"].copy()
        cumulative = b["cumulative"].copy()
        for s in np.unique(b["stream"]):          # per reported stream: a few
            m = np.flatnonzero(b["stream"] == s)
            m = m[np.argsort(sc.ts[b["row"][m]], kind="stable")]
            a, e = ix.starts[s], ix.ends[s]
            xseq = ix.xseq[a:e]
            # the block's highest sequence number (16 low bits) placed on this stream's unwrapped
            # numbering, at or before the last packet sent before the report arrived
            k = np.searchsorted(sc.ts[ix.row[a:e]], sc.ts[b["row"][m]], side="right") - 1
            near = xseq[np.maximum(k, 0)]
            high = near - ((near - (b["highest"][m] & 0xFFFF)) % rewrite.U16)
            lost = np.sort(ix.xseq[lost_pos[ix.stream[lost_pos] == s]])
            added = np.searchsorted(lost, high, side="right")          # cumulative, up to each block
            prev_high = np.concatenate([[xseq[0] - 1], high[:-1]])
            expected = np.maximum(high - prev_high, 1)
            new_in_interval = added - np.concatenate([[0], added[:-1]])
            cumulative[m] = b["cumulative"][m] + added
            fraction[m] = np.clip(b["fraction"][m] + (256 * new_in_interval) // expected, 0, 255)
        changed = (fraction != b["fraction"]) | (cumulative != b["cumulative"])
        sel = np.flatnonzero(changed)
        rewrite.set_report_loss(trial.edit(), sc.cap, b, sel, fraction[sel], cumulative[sel])
        return {"blocks": int(len(b["row"])), "rewritten": int(len(sel)), "uplink_lost": int(len(lost_pos)),
                "reported_cumulative_max": int(cumulative.max()),
                "reported_fraction_max": round(float(fraction.max()) / 256, 4)}


# --------------------------------------------------------------------------- the capture

@dataclass(frozen=True)
class TruncateEnd(Stage):
    """The capture stops at at_s (mid-call): everything later is missing, both directions."""
    at_s: float
    phase = "capture"

    def apply(self, trial, rng):
        cut = trial.t >= trial.scene.rel_ns(self.at_s)
        trial.cut |= cut
        return {"at_s": self.at_s, "packets_cut": int((cut & trial.sent).sum())}


@dataclass(frozen=True)
class KeepOnly(Stage):
    """The capture holds only the chosen flows (a capture filtered to the call), and optionally
    only one direction of them (a mirror port seeing one way)."""
    flows: tuple
    direction: str = "both"
    phase = "capture"

    def apply(self, trial, rng):
        keep = np.zeros(len(trial.rows), dtype=bool)
        keep[trial.select(Where(self.flows, self.direction, 0.0, None), alive=False)] = True
        trial.cut |= ~keep
        return {"flows_kept": [int(f) for f in self.flows], "direction": self.direction,
                "packets_cut": int((~keep & trial.sent).sum())}
