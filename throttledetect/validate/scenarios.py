"""Scenarios: what a trial does to its base, the verdicts expected, and what counts.

Each scenario draws its parameters from the trial's generator (``numpy.random.default_rng``
seeded by scenario, base and seed index), so every seed is a different trial: drop positions,
onset within its range, rate factor within its range, burst, queue, bucket full or empty,
jitter, skew, hang-up time ... The drawn values are the trial's truth.

Throttlers act on the base's *targets* (its media flows) towards the capture point, as a DPI box
on the path to the client would; the expected verdict is their kind. A drop without any control
flow that could show it is selective (no other flow with a loss signal, no onset) may be
``inconclusive`` (issue 10, item 1: loss with nothing to compare is a lossy path, not evidence of
throttling): such trials do not count towards the "found" goal and are reported apart.

Confounders must not be called throttling: the expected verdict is ``none`` or ``inconclusive``,
and any throttling verdict on a call flow or a call protocol line is a false alarm.

Onsets are relative to the start of the looped media (Base.media_start_s).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from throttledetect.validate import network as nw

KINDS = ("shaping", "policing", "dropping", "blocking")
NOT_THROTTLING = ("none", "inconclusive")
MTU = nw.MTU_BYTES


@dataclass(frozen=True)
class Scenario:
    name: str
    group: str                   # drop | police | shape | block | uplink | path | endpoint | capture | clean
    kind: str                    # the throttling kind expected on the targets, or "none"
    build: Callable = field(repr=False, compare=False)   # (base, rng) -> (stages, params)
    description: str = ""
    expected: tuple = ()         # verdicts that are right (default (kind,), or NOT_THROTTLING)
    counts: bool = True          # towards the found goal (throttlers) / the false-alarm goal (confounders)
    needs: tuple = ()            # "rtp_in", "rr", "ipv4", "controls"
    deterministic: bool = False  # one trial per base whatever the seeds
    quick: bool = False          # part of --quick

    @property
    def confounder(self) -> bool:
        return self.kind == "none"

    @property
    def right(self) -> tuple:
        return self.expected or ((self.kind,) if not self.confounder else NOT_THROTTLING)

    def applies(self, base) -> str | None:
        """None when the scenario applies to the base, else why not."""
        for need in self.needs:
            if need == "rtp_in" and not any(t["rtp_to_local"] >= 20 for t in base.info["targets"]):
                return "no RTP arriving in the media flows"
            if need == "rr" and base.rr_blocks < 5:
                return "no plain RTCP report blocks about the local host's streams (SRTCP encrypts them)"
            if need == "ipv4" and not base.ipv4:
                return "not IPv4"
            if need == "two-way" and base.spec.kind != "two-way":
                return "one-way base: the local host sends no request that could go unanswered"
        if not base.targets:
            return "no media flow after looping"
        return None

    def describe(self) -> dict:
        return {"name": self.name, "group": self.group, "kind": self.kind, "expected": list(self.right),
                "counts": self.counts, "needs": list(self.needs), "deterministic": self.deterministic,
                "quick": self.quick, "description": self.description}


# --------------------------------------------------------------------------- helpers

def _w(flows, direction="to-local", start=0.0, end=None) -> nw.Where:
    return nw.Where(tuple(int(f) for f in flows) if flows is not None else None, direction, float(start),
                    None if end is None else float(end))


def _onset(base, rng, lo=25.0, hi=35.0) -> float:
    return round(base.media_start_s + float(rng.uniform(lo, hi)), 3)


def _rates(base, factor: float, direction="to-local") -> dict:
    src = base.rate_bps if direction == "to-local" else base.rate_out_bps
    return {int(f): factor * src[f] for f in base.targets if src[f] > 0}


def _host_rates(base, factor: float) -> dict:
    """One aggregate per remote host: every target to that host gets the host's summed rate."""
    host = base.scene.remote_host
    tot: dict = {}
    for f in base.targets:
        tot[int(host[f])] = tot.get(int(host[f]), 0.0) + base.rate_bps[f]
    return {int(f): factor * tot[int(host[f])] for f in base.targets}


def _scene_rate(base) -> float:
    sc = base.scene
    r = np.flatnonzero(sc.to_local)
    span = (sc.ts[r[-1]] - sc.ts[r[0]]) / 1e9 if len(r) >= 2 else 1.0
    return float(sc.size[r].sum() * 8 / span) if span > 0 else 0.0


def _media_start(base) -> float:
    """Seconds from the scene's start to the first media packet of the targets."""
    sc = base.scene
    ms = [int(sc.media_start[f]) for f in base.targets if sc.media_start[f] >= 0]
    return (min(ms) - sc.t0) / 1e9 if ms else base.media_start_s


def _police(base, rng, lo, hi, burst, onset=None, per="flow", full=None):
    f = round(float(rng.uniform(lo, hi)), 4)
    full = bool(rng.random() < 0.5) if full is None else full
    rates = _host_rates(base, f) if per == "host" else _rates(base, f)
    ref = min(rates.values())
    depth = max(MTU, ref / 8 * float(rng.uniform(*burst)))
    start = onset if onset is not None else 0.0
    stage = nw.Police(_w(base.targets, start=start), rates, depth, per=per, full=full)
    return stage, {"factor": f, "rate_bps": rates, "burst_bytes": round(depth, 1),
                   "bucket_at_onset": "full" if full else "empty", "per": per, "onset_s": onset}


def _shape(base, rng, lo, hi, queue_s, onset=None):
    f = round(float(rng.uniform(lo, hi)), 4)
    rates = _rates(base, f)
    q_s = float(rng.uniform(*queue_s))
    # A queue that cannot hold a few of the flow's largest packets queues no video frame: such a
    # "shaper" drops like a policer and is one; the floor keeps the scenario a shaper.
    queue = max(3.0 * max(base.max_packet.values()), min(rates.values()) / 8 * q_s)
    stage = nw.Shape(_w(base.targets, start=onset or 0.0), rates, queue, full=bool(rng.random() < 0.5))
    return stage, {"factor": f, "rate_bps": rates, "queue_bytes": round(queue, 1), "queue_s_at_rate": round(q_s, 4),
                   "onset_s": onset}


# --------------------------------------------------------------------------- throttlers

def _drop(p, onset=False):
    def build(base, rng):
        t = _onset(base, rng) if onset else 0.0
        return [nw.Drop(_w(base.targets, start=t), p)], {"p": p, "onset_s": t if onset else None}
    return build


def _drop_plus_path_loss(base, rng):
    q = round(float(rng.uniform(0.005, 0.015)), 4)
    return ([nw.Drop(_w(base.targets), 0.05), nw.PathLoss(_w(None), q)],
            {"p": 0.05, "path_loss_p": q, "onset_s": None})


def _police_b(lo, hi, burst, onset=False, per="flow"):
    def build(base, rng):
        st, p = _police(base, rng, lo, hi, burst, _onset(base, rng) if onset else None, per=per)
        return [st], p
    return build


def _police_wifi_after(base, rng):
    st, p = _police(base, rng, 0.5, 0.85, (0.02, 0.25))
    link = _scene_rate(base) * float(rng.uniform(1.5, 3.0))
    q = float(rng.integers(10, 40)) * MTU
    wifi = nw.WiFi(_w(None), access_ms=float(rng.uniform(0.5, 3.0)), stall_p=float(rng.uniform(0.005, 0.03)),
                   stall_ms=float(rng.uniform(20, 80)), loss_p=0.0)
    p.update(link_bps=round(link, 1), link_queue_bytes=q)
    return [st, nw.FifoLink(_w(None), link, q), wifi], p


def _police_adapt(base, rng):
    st, p = _police(base, rng, 0.5, 0.85, (0.02, 0.25), full=True)
    # the app notices loss a second or three after the bucket first runs dry and lowers its rate
    rates = p["rate_bps"]
    f = next(iter(rates))
    excess = max(base.rate_bps[f] - rates[f], 1.0)
    first = base.media_start_s + p["burst_bytes"] * 8 / excess
    at = round(first + float(rng.uniform(1.0, 3.0)), 3)
    factor = round(float(rng.uniform(0.6, 0.9)), 3)
    p.update(adapt_at_s=at, adapt_factor=factor)
    return [nw.AdaptRate(_w(base.targets), at, factor), st], p


def _block(at_kind):
    def build(base, rng):
        at = round(_media_start(base) + 2.0, 3) if at_kind == "early" else _onset(base, rng)
        give_up = round(float(rng.uniform(5.0, 30.0)), 3)
        retry = round(float(rng.uniform(0.5, 2.0)), 3)
        return ([nw.BlockInbound(_w(base.targets), at, give_up, retry)],
                {"onset_s": at, "give_up_s": give_up, "retry_s": retry})
    return build


def _setup_block(base, rng):
    give_up = round(float(rng.uniform(10.0, 40.0)), 3)
    flows = tuple(sorted(set(base.calls) | set(base.targets)))
    return [nw.SetupBlock(flows, give_up, 0.5)], {"onset_s": 0.0, "give_up_s": give_up, "flows": list(flows)}


def _uplink(base, rng):
    f = round(float(rng.uniform(0.5, 0.85)), 4)
    rates = _rates(base, f, "from-local")
    depth = max(MTU, min(rates.values()) / 8 * float(rng.uniform(0.02, 0.25)))
    return ([nw.Police(_w(base.targets, "from-local"), rates, depth), nw.FarEndReports()],
            {"factor": f, "rate_bps": rates, "burst_bytes": round(depth, 1), "direction": "from-local"})


# --------------------------------------------------------------------------- confounders

def _clean(base, rng):
    return [], {}


def _path_loss(model):
    def build(base, rng):
        p = round(float(rng.uniform(0.005, 0.03)), 4)
        if model == "bernoulli":
            return [nw.PathLoss(_w(None), p)], {"p": p}
        burst = round(float(rng.uniform(20, 100)), 1)
        bad = round(float(rng.uniform(0.3, 0.7)), 3)
        return [nw.PathLoss(_w(None), p, "gilbert", burst, bad)], {"p": p, "burst_ms": burst, "loss_bad": bad}
    return build


def _congestion(base, rng):
    share = float(rng.uniform(0.15, 0.4))
    st = nw.Congestion(_w(None), capacity_bps=_scene_rate(base) / share, queue_ms=float(rng.uniform(50, 250)),
                       on_load=float(rng.uniform(1.1, 1.5)), off_load=float(rng.uniform(0.2, 0.7)),
                       on_s=float(rng.uniform(0.5, 3.0)), off_s=float(rng.uniform(3.0, 10.0)))
    return [st], {"own_share": round(share, 3), "capacity_bps": round(st.capacity_bps, 1), "queue_ms": round(st.queue_ms, 1),
                  "on_load": round(st.on_load, 3), "off_load": round(st.off_load, 3)}


def _wifi(base, rng):
    st = nw.WiFi(_w(None), access_ms=float(rng.uniform(0.5, 3.0)), stall_p=float(rng.uniform(0.005, 0.03)),
                 stall_ms=float(rng.uniform(20, 100)), loss_p=float(rng.uniform(0.001, 0.005)))
    return [st], {"access_ms": round(st.access_ms, 3), "stall_p": round(st.stall_p, 4),
                  "stall_ms": round(st.stall_ms, 1), "loss_p": round(st.loss_p, 4)}


def _skew(base, rng):
    ppm = float(rng.uniform(1000, 3000)) * (1 if rng.random() < 0.5 else -1)
    return [nw.ClockSkew(_w(base.targets), round(ppm, 1))], {"ppm": round(ppm, 1)}


def _adapt(base, rng):
    at = _onset(base, rng, 15, 45)
    f = round(float(rng.uniform(0.4, 0.8)), 3)
    return [nw.AdaptRate(_w(base.targets), at, f)], {"onset_s": at, "factor": f}


def _hangup(base, rng):
    at = _onset(base, rng, 20, 50)
    stop = round(float(rng.uniform(0.2, 1.0)), 3)
    keep = None if rng.random() < 0.5 else round(float(rng.uniform(1.0, 5.0)), 3)
    trickle = round(float(rng.uniform(5.0, 30.0)), 3)
    flows = tuple(sorted(set(base.calls) | set(base.targets)))
    return ([nw.HangUp(_w(flows), at, stop, keep, trickle)],
            {"onset_s": at, "local_stops_after_s": stop, "keepalive_s": keep, "trickle_s": trickle})


def _mute(base, rng):
    at = _onset(base, rng, 15, 40)
    mode = "dtx" if rng.random() < 0.7 else "stop"
    dtx = round(float(rng.uniform(0.16, 0.4)), 3)
    return [nw.Mute(_w(base.targets), at, dtx, mode)], {"onset_s": at, "mode": mode, "dtx_s": dtx}


def _hold(base, rng):
    at = _onset(base, rng, 15, 35)
    dur = 1e6 if rng.random() < 0.3 else round(float(rng.uniform(5.0, 20.0)), 3)
    ka = round(float(rng.uniform(0.5, 2.0)), 3)
    return [nw.Hold(_w(base.targets), at, dur, ka)], {"onset_s": at, "duration_s": None if dur >= 1e6 else dur,
                                                      "keepalive_s": ka}


def _truncate(base, rng):
    at = _onset(base, rng, 20, 50)
    return [nw.TruncateEnd(at)], {"at_s": at}


def _alone(direction):
    def build(base, rng):
        flows = tuple(sorted(set(base.calls) | set(base.targets)))
        return [nw.KeepOnly(flows, direction)], {"flows": list(flows), "direction": direction}
    return build


def _ssrc(base, rng):
    at = _onset(base, rng, 15, 45)
    return [nw.SsrcChange(_w(base.targets), at)], {"onset_s": at}


def _migrate(base, rng):
    at = _onset(base, rng, 15, 45)
    return [nw.Migrate(_w(base.targets), at)], {"onset_s": at}


# --------------------------------------------------------------------------- the list

SMALL = (0.02, 0.06)       # bucket depth in seconds at the rate (at least one MTU)
LARGE = (0.25, 1.0)


def _scenarios() -> tuple:
    S = Scenario
    out = []
    for p in (0.02, 0.05, 0.10, 0.25):
        out.append(S(f"drop {p:.0%}", "drop", "dropping", _drop(p), f"Bernoulli drop p = {p:g} on the media flows",
                     quick=p == 0.10))
    out += [
        S("drop 5% from ~30 s", "drop", "dropping", _drop(0.05, onset=True),
          "Bernoulli drop 5 % from 25-35 s into the media"),
        S("drop 5% + path loss 0.5-1.5%", "drop", "dropping", _drop_plus_path_loss,
          "drop 5 % on the media flows and random path loss 0.5-1.5 % on every flow"),
    ]
    for lo, hi in ((0.5, 0.65), (0.65, 0.85)):
        for bname, b in (("small", SMALL), ("large", LARGE)):
            out.append(S(f"police {lo:g}-{hi:g}x burst {bname}", "police", "policing", _police_b(lo, hi, b),
                         f"token-bucket policer per media flow at {lo:g}-{hi:g} x its mean rate, bucket "
                         f"{b[0] * 1000:g}-{b[1] * 1000:g} ms at the rate (>= 1 MTU), full or empty at onset",
                         quick=(lo == 0.5 and bname == "small")))
    out += [
        S("police 0.5-0.85x shared per host", "police", "policing", _police_b(0.5, 0.85, (0.02, 0.25), per="host"),
          "ONE bucket for all media flows to a remote host at 0.5-0.85 x their summed rate"),
        S("police 0.5-0.85x + FIFO and Wi-Fi after", "police", "policing", _police_wifi_after,
          "policer, then a FIFO link (1.5-3 x the capture's rate, 10-40 packets) and a Wi-Fi hop for every flow"),
        S("police 0.5-0.85x from ~30 s", "police", "policing", _police_b(0.5, 0.85, (0.02, 0.25), onset=True),
          "policer from 25-35 s into the media, bucket full or empty then"),
        S("police 0.5-0.85x, app adapts", "police", "policing", _police_adapt,
          "policer from the start; 1-3 s after its first drops the far end lowers its bitrate to 0.6-0.9 x"),
        S("shape 0.5-0.85x queue 50-200 ms", "shape", "shaping", _shaper(0.05, 0.2),
          "token bucket + FIFO (tail drop) per media flow at 0.5-0.85 x its rate", quick=True),
        S("shape 0.5-0.85x queue 0.2-1 s", "shape", "shaping", _shaper(0.2, 1.0),
          "token bucket + FIFO (tail drop) per media flow at 0.5-0.85 x its rate"),
        S("shape 0.5-0.85x from ~30 s", "shape", "shaping", _shaper(0.05, 1.0, onset=True),
          "shaper from 25-35 s into the media"),
        S("block 2 s into media", "block", "blocking", _block("early"),
          "inbound media dropped from 2 s after it starts; the local app goes on 5-30 s, then retries a probe",
          quick=True),
        S("block after ~30 s", "block", "blocking", _block("late"),
          "inbound media dropped from 25-35 s; the local app goes on 5-30 s, then retries a probe"),
        S("call-setup block", "block", "blocking", _setup_block,
          "every inbound packet of the call's flows dropped from the first: probes unanswered, retried every "
          "0.5 s for 10-40 s, no media", needs=("two-way",), quick=True),
        S("uplink policed (far-end RTCP)", "uplink", "policing", _uplink,
          "policer on what the local host sends (0.5-0.85 x), seen only in the far end's RTCP receiver reports",
          expected=("policing", "dropping"), counts=False, needs=("rr",)),
        # confounders
        S("clean", "clean", "none", _clean, "the looped base as it is", deterministic=True, quick=True),
        S("path loss 0.5-3% random", "path", "none", _path_loss("bernoulli"),
          "independent loss on every flow", quick=True),
        S("path loss 0.5-3% bursty", "path", "none", _path_loss("gilbert"),
          "Gilbert-Elliott loss in time shared by every flow (bursts 20-100 ms)"),
        S("congested shared link", "path", "none", _congestion,
          "one FIFO for every flow with on/off cross traffic: delay rises, then correlated tail drops"),
        S("Wi-Fi", "path", "none", _wifi, "channel access delays, stalls, aggregation bursts, rare losses"),
        S("sender clock skew 0.1-0.3%", "endpoint", "none", _skew, "the far end's RTP clock fast or slow",
          needs=("rtp_in",)),
        S("app lowers its bitrate", "endpoint", "none", _adapt,
          "the far end sends 0.4-0.8 x from 15-45 s (fewer video frames, smaller packets), no loss"),
        S("far end hangs up", "endpoint", "none", _hangup,
          "inbound stops at 20-50 s; local media stops within 1 s, maybe a sparse RTCP/keepalive trickle",
          quick=True),
        S("far end mutes", "endpoint", "none", _mute, "inbound audio thins to DTX (or stops); RTCP and video go on"),
        S("hold", "endpoint", "none", _hold, "both directions thin to keepalives for 5-20 s or to the end"),
        S("SSRC change mid-call", "endpoint", "none", _ssrc, "new SSRC, sequence and timestamp base",
          needs=("rtp_in",)),
        S("relay -> peer migration", "endpoint", "none", _migrate, "the media moves to a new remote endpoint",
          needs=("ipv4",)),
        S("capture ends mid-call", "capture", "none", _truncate, "everything after 20-50 s missing"),
        S("call alone in the capture", "capture", "none", _alone("both"), "every other flow removed"),
        S("call alone, inbound only", "capture", "none", _alone("to-local"),
          "every other flow and the outbound direction removed"),
    ]
    return tuple(out)


def _shaper(q_lo, q_hi, onset=False):
    def build(base, rng):
        st, p = _shape(base, rng, 0.5, 0.85, (q_lo, q_hi), _onset(base, rng) if onset else None)
        return [st], p
    return build


SCENARIOS = _scenarios()
BY_NAME = {s.name: s for s in SCENARIOS}
QUICK = tuple(s for s in SCENARIOS if s.quick)


def select(names: str | None, quick: bool = False) -> tuple:
    """Scenarios by comma-separated names or prefixes (None: all, or the quick set)."""
    pool = QUICK if quick and not names else SCENARIOS
    if not names:
        return pool
    out = []
    for w in (x.strip() for x in names.split(",") if x.strip()):
        hit = [s for s in SCENARIOS if s.name == w] or [s for s in SCENARIOS if s.name.startswith(w)]
        if not hit:
            raise ValueError(f"no scenario {w!r}; known: {', '.join(s.name for s in SCENARIOS)}")
        out += [h for h in hit if h not in out]
    return tuple(out)
