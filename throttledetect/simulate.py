"""Known-truth simulator: apply a known impairment to chosen flows of a real capture.

Real captures of throttled calls are rare and their truth unknown; this module makes them with
a truth that is known by construction. It takes a capture, its flows and classification,
drops and re-times packets as one of these models would, and reports what it did (the
*configured* impairment and the *measured* effect on each flow and direction):

========================  =========================================================  ====================
impairment                model                                                      expected verdict
========================  =========================================================  ====================
Drop(p)                   independent Bernoulli drops with probability p             dropping
Police(rate, burst)       token bucket (bytes; starts full): a packet arriving when  policing
                          the bucket holds fewer tokens than its size is dropped;
                          nothing is delayed
Shape(rate, queue)        token bucket + FIFO of `queue` bytes: packets wait for      shaping
                          tokens; a packet that would overflow the queue is
                          tail-dropped; output times are departure times
BlockAfter(s)             every packet of the flow from s seconds after the flow's   blocking
                          first packet on is dropped
Congest(...)              confounder, ALL flows: a Gilbert-Elliott good/bad process   none
                          in time shared by every flow (a congested shared link):
                          queueing delay builds up in bad periods and losses follow
Jitter(mean_ms)           confounder, ALL flows: independent gamma-distributed        none
                          extra delay per packet (Wi-Fi-like); packets re-sorted
========================  =========================================================  ====================

Direction and vantage point. Each packet of a flow is *to-local* (arriving at the capturing
host) or *from-local* (leaving it). The local side of a flow is the one inside the local
address ranges (``build_flows(local_nets=...)``); when both or neither side is local, it is the
endpoint address seen in more flows of the capture (the capturing host is in all of them), and
side "a" (the first sender) on a tie. A capture on the client sees losses and delays only on
to-local packets: what it sends is captured before the network. Impairing from-local packets
produces what a capture at the far end (past the throttling hop) would record for that
direction; the truth file says so under ``vantage``.

Sizes are link-layer frame bytes (``wirelen``), the unit of ``FlowTable.bytes_*``.
Token buckets are per flow and direction unless ``shared=True`` (one bucket per link
direction for all selected flows together, as a policer on a traffic class).

Everything is numpy except the two recurrences (token bucket, shaper FIFO: the compiled loops of
throttledetect.validate.network, shared with the validation harness) and the Gilbert-Elliott
chain, which are compiled loops (throttledetect.jit.njit). Randomness comes
from ``numpy.random.default_rng(seed)`` only, so a seed fixes the output bytes.

Looping (``loop_capture``, from throttledetect.rewrite) repeats a capture to a given duration
keeping every RTP stream's sequence numbers and timestamps and every TCP connection's sequence
space continuous (headers rewritten, checksums updated incrementally, RFC 1624); the returned
Capture is an ordinary one, usable by build_flows, classify and metrics.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Union

import numpy as np

from throttledetect import __version__
from throttledetect.jit import njit
from throttledetect.flows import local_side_is_a  # noqa: F401 - part of this module's API
from throttledetect.read import Capture
from throttledetect.report.jsonout import json_default
from throttledetect.rewrite import input_identity, loop_capture, sha256_file  # noqa: F401 - loop_capture is API
from throttledetect.validate.network import _shaper, _token_bucket
from throttledetect.write import write_rows

SCHEMA = "throttledetect-simulate-truth/1"
TRUTH_SUFFIX = ".truth.json"
MTU_BYTES = 1500
POLICE_BURST_S = 0.02      # default policer burst: 20 ms worth at the rate (at least one MTU)
SHAPE_QUEUE_S = 0.05       # default shaper queue: 50 ms worth at the rate

DIRECTIONS = ("to-local", "from-local", "both")

VANTAGE = {
    "to-local": "Impaired packets are those arriving at the capturing host (to-local): the output is what a "
                "capture on this host would record if the path towards it throttled them (missing packets, "
                "later arrival times).",
    "from-local": "Impaired packets are those the capturing host sends (from-local). A capture on the sending "
                  "host records them before the network and would never show this: the output is what a "
                  "capture at the far end (or anywhere past the throttling hop) would record for this "
                  "direction, merged with the host's view of the other direction.",
    "both": "Both directions impaired. To-local packets look as a capture on this host would record them; "
            "from-local packets as a capture past the throttling hop would (a capture on the sending host "
            "records its own packets before the network).",
}


# --------------------------------------------------------------------------- impairments

@dataclass(frozen=True)
class Drop:
    """Independent (Bernoulli) drops of each impaired packet with probability p."""
    p: float
    kind = "drop"
    verdict = "dropping"

    def __post_init__(self):
        if not 0.0 <= self.p <= 1.0:
            raise ValueError(f"drop probability {self.p} is not within 0..1")


@dataclass(frozen=True)
class Police:
    """Token-bucket policer: rate in bit/s, burst (bucket depth) in bytes; over-rate packets dropped.

    A packet larger than the burst never passes (as with a real policer). A small bucket also
    passes bursty traffic (video frames of several back-to-back packets) at well under the rate:
    tokens overflow between bursts. That is the model, not a flaw: choose the burst to match."""
    rate_bps: float
    burst_bytes: float | None = None   # default max(1500, 20 ms worth at the rate)
    shared: bool = False               # one bucket for all selected flows (per link direction)
    kind = "police"
    verdict = "policing"

    def __post_init__(self):
        if not self.rate_bps > 0:
            raise ValueError("policer rate must be positive")
        if self.burst_bytes is not None and not self.burst_bytes > 0:
            raise ValueError("policer burst must be positive")

    @property
    def burst(self) -> float:
        return float(self.burst_bytes) if self.burst_bytes is not None else \
            max(float(MTU_BYTES), self.rate_bps / 8 * POLICE_BURST_S)


@dataclass(frozen=True)
class Shape:
    """Token-bucket shaper with a FIFO: rate in bit/s, queue in bytes, bucket depth in bytes.

    The bucket holds at least the largest impaired packet (else it could never leave)."""
    rate_bps: float
    queue_bytes: float | None = None   # default 50 ms worth at the rate
    burst_bytes: float | None = None   # default one MTU (1500)
    shared: bool = False
    kind = "shape"
    verdict = "shaping"

    def __post_init__(self):
        if not self.rate_bps > 0:
            raise ValueError("shaper rate must be positive")
        if self.queue_bytes is not None and self.queue_bytes < 0:
            raise ValueError("shaper queue must not be negative")

    @property
    def queue(self) -> float:
        return float(self.queue_bytes) if self.queue_bytes is not None else self.rate_bps / 8 * SHAPE_QUEUE_S

    @property
    def burst(self) -> float:
        return float(self.burst_bytes) if self.burst_bytes is not None else float(MTU_BYTES)


@dataclass(frozen=True)
class BlockAfter:
    """Everything of the selected flows from `seconds` after each flow's first packet is dropped."""
    seconds: float
    kind = "block"
    verdict = "blocking"


@dataclass(frozen=True)
class Congest:
    """Congested shared link (confounder, applied to every flow): a Gilbert-Elliott process in time.

    Time is cut in slots of slot_ms; the link is good or bad for a whole slot and switches with
    probabilities p_gb (good->bad) and p_bg (bad->good) per slot, one process for all flows, so
    their losses are correlated. In a bad slot the queueing delay rises by delay_ms/3 per slot
    up to delay_ms; in a good slot it drains at half the wall-clock rate (so no flow is
    reordered). A packet is lost with probability loss_good in good slots and
    loss_bad * (queue delay / delay_ms) in bad slots: the delay rises before losses set in.
    Defaults: bad 9 % of the time in periods of 100 ms mean, about 3 % loss overall (at most
    loss_upper_bound = 4.1 %, reached if the queue were full throughout every bad period).
    """
    p_gb: float = 0.01
    p_bg: float = 0.10
    loss_bad: float = 0.45
    loss_good: float = 0.0
    delay_ms: float = 60.0
    slot_ms: float = 10.0
    kind = "congest"
    verdict = "none"

    def __post_init__(self):
        for name in ("p_gb", "p_bg", "loss_bad", "loss_good"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"congest {name} must be within 0..1")
        if not self.slot_ms > 0 or self.delay_ms < 0:
            raise ValueError("congest slot_ms must be positive and delay_ms not negative")

    @property
    def loss_upper_bound(self) -> float:
        bad = self.p_gb / (self.p_gb + self.p_bg) if self.p_gb + self.p_bg > 0 else 0.0
        return bad * self.loss_bad + (1 - bad) * self.loss_good


@dataclass(frozen=True)
class Jitter:
    """Wi-Fi-like delay (confounder, every flow): gamma(shape) extra delay of mean mean_ms per
    packet, independent; packets re-sorted by time (so some are reordered); nothing is lost."""
    mean_ms: float
    shape: float = 1.0     # 1 = exponential
    kind = "jitter"
    verdict = "none"

    def __post_init__(self):
        if self.mean_ms < 0 or not self.shape > 0:
            raise ValueError("jitter mean must not be negative and shape must be positive")


Impairment = Union[Drop, Police, Shape, BlockAfter, Congest, Jitter]
CONFOUNDERS = (Congest, Jitter)


def impairment_params(imp: Impairment) -> dict:
    """Configured parameters, defaults resolved (what the truth file records)."""
    d = asdict(imp)
    if isinstance(imp, Police):
        d["burst_bytes"] = imp.burst
    elif isinstance(imp, Shape):
        d["queue_bytes"] = imp.queue
        d["burst_bytes"] = imp.burst
        d["max_queue_delay_ms"] = imp.queue * 8 / imp.rate_bps * 1000
    elif isinstance(imp, Congest):
        d["loss_upper_bound"] = imp.loss_upper_bound
        d["mean_bad_period_ms"] = imp.slot_ms / imp.p_bg if imp.p_bg > 0 else None
    return d


# --------------------------------------------------------------------------- compiled recurrences

@njit
def _gilbert_elliott(u, p_gb, p_bg, rise, drain, qmax, bad, queue):
    """Slot states (bad[k]) and queueing delay at slot boundaries (queue[k], k = 0..n)."""
    state = False
    q = 0.0
    queue[0] = 0.0
    for k in range(len(u)):
        bad[k] = state
        if state:
            q = min(qmax, q + rise)
        else:
            q = max(0.0, q - drain)
        queue[k + 1] = q
        if state:
            state = not (u[k] < p_bg)
        else:
            state = u[k] < p_gb


# --------------------------------------------------------------------------- selection

def select_flows(ft, cl, select) -> np.ndarray:
    """Flow ids chosen by a selector: "calls", "all", a label or comma-separated labels, comma-
    separated flow ids ("3,5"), or a sequence of ids. Raises ValueError when nothing matches."""
    n = len(ft)
    if select is None:
        select = "calls"
    if not isinstance(select, str):
        ids = np.unique(np.asarray(list(select), dtype=np.int64))
        bad = ids[(ids < 0) | (ids >= n)]
        if len(bad):
            raise ValueError(f"flow id(s) {bad.tolist()} not in 0..{n - 1}")
        return ids
    s = select.strip()
    if s == "all":
        ids = np.arange(n, dtype=np.int64)
    elif s == "calls":
        if cl is None:
            raise ValueError("selector 'calls' needs the classification")
        ids = np.array([i for i in range(n) if cl.is_call(i)], dtype=np.int64)
    elif all(p.strip().isdigit() for p in s.split(",") if p.strip()) and s.replace(",", "").strip():
        return select_flows(ft, cl, [int(p) for p in s.split(",") if p.strip()])
    else:
        if cl is None:
            raise ValueError("selecting flows by label needs the classification")
        wanted = {p.strip() for p in s.split(",") if p.strip()}
        ids = np.array([i for i in range(n) if cl.labels[i] in wanted], dtype=np.int64)
    if len(ids) == 0:
        raise ValueError(f"no flow matches the selector {select!r}")
    return ids


def to_local_of(ft, local_is_a: np.ndarray) -> np.ndarray:
    """Per packet row: True when it travels towards the capturing host (rows in no flow: False)."""
    fo = ft.flow_of.astype(np.int64)
    ok = fo >= 0
    out = np.zeros(len(fo), dtype=bool)
    # dir 1 (b->a) arrives at a; dir 0 (a->b) arrives at b
    out[ok] = (ft.dir_of[ok] == 1) == local_is_a[fo[ok]]
    return out


# --------------------------------------------------------------------------- simulation

@dataclass
class SimulationResult:
    rows: np.ndarray        # kept packet rows of the input capture, in output (time) order
    ts_ns: np.ndarray       # their new timestamps
    delay_ns: np.ndarray    # added delay of each kept row (0 for untouched ones)
    dropped: np.ndarray     # dropped packet rows, ascending
    impaired: np.ndarray    # rows the impairment acted on (after onset, selected, direction), ascending
    truth: dict = field(default_factory=dict)


def _r(x, nd=6):
    return None if x is None else round(float(x), nd)


def _measure(n_flows, keys, size, keep, delay_ns, ts_ns, after_onset) -> dict:
    """Per (flow, direction) counts for the packets of the given flows. keys = flow*2 + dir."""
    m = 2 * n_flows
    pin = np.bincount(keys, minlength=m)
    pout = np.bincount(keys[keep], minlength=m)
    bin_ = np.bincount(keys, weights=size, minlength=m)
    bout = np.bincount(keys[keep], weights=size[keep], minlength=m)
    dsum = np.bincount(keys[keep], weights=delay_ns[keep], minlength=m)
    dmax = np.zeros(m)
    np.maximum.at(dmax, keys[keep], delay_ns[keep].astype(np.float64))
    # rates after onset: bytes / (last - first arrival) in, bytes / (last - first departure) out
    ao = after_onset
    na = np.bincount(keys[ao], minlength=m)
    ba_in = np.bincount(keys[ao], weights=size[ao], minlength=m)
    ko = ao & keep
    ba_out = np.bincount(keys[ko], weights=size[ko], minlength=m)
    t_in, t_out = ts_ns[ao], (ts_ns + delay_ns)[ko]
    first_in = np.full(m, np.iinfo(np.int64).max)
    last_in = np.full(m, np.iinfo(np.int64).min)
    np.minimum.at(first_in, keys[ao], t_in)
    np.maximum.at(last_in, keys[ao], t_in)
    first_out = np.full(m, np.iinfo(np.int64).max)
    last_out = np.full(m, np.iinfo(np.int64).min)
    np.minimum.at(first_out, keys[ko], t_out)
    np.maximum.at(last_out, keys[ko], t_out)
    return dict(pin=pin, pout=pout, bin=bin_, bout=bout, dsum=dsum, dmax=dmax, na=na, ba_in=ba_in, ba_out=ba_out,
                first_in=first_in, last_in=last_in, first_out=first_out, last_out=last_out)


def _dir_entry(M, k, impaired: bool, to_local: bool) -> dict:
    pin, pout = int(M["pin"][k]), int(M["pout"][k])
    dropped = pin - pout
    span_in = (M["last_in"][k] - M["first_in"][k]) / 1e9 if M["na"][k] >= 2 else 0.0
    span_out = (M["last_out"][k] - M["first_out"][k]) / 1e9 if M["last_out"][k] > M["first_out"][k] else 0.0
    return {
        "direction": "to-local" if to_local else "from-local",
        "impaired": impaired,
        "packets_in": pin, "packets_out": pout, "dropped": dropped,
        "drop_fraction": _r(dropped / pin) if pin else 0.0,
        "bytes_in": int(M["bin"][k]), "bytes_out": int(M["bout"][k]),
        "delay_ms_mean": _r(M["dsum"][k] / pout / 1e6) if pout else None,
        "delay_ms_max": _r(M["dmax"][k] / 1e6) if pout else None,
        "packets_after_onset": int(M["na"][k]),
        "rate_in_bps_after_onset": _r(M["ba_in"][k] * 8 / span_in, 1) if span_in > 0 else None,
        "rate_out_bps_after_onset": _r(M["ba_out"][k] * 8 / span_out, 1) if span_out > 0 else None,
    }


def simulate(cap: Capture, ft, cl, impairment: Impairment, *, select="calls", direction: str = "to-local",
             onset_s: float | None = None, seed: int = 0) -> SimulationResult:
    """Apply `impairment` to the selected flows (every flow for Congest and Jitter) in `direction`
    from `onset_s` seconds after the capture's first packet. See the module docstring."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, not {direction!r}")
    t = cap.packets
    n = len(t)
    rng = np.random.default_rng(seed)
    ts = t.ts_ns.astype(np.int64)
    t0 = int(ts.min()) if n else 0
    onset = float(onset_s or 0.0)
    if onset < 0:
        raise ValueError("onset must not be negative")
    onset_ns = t0 + int(round(onset * 1e9))
    confounder = isinstance(impairment, CONFOUNDERS)
    nf = len(ft)

    selected = np.arange(nf, dtype=np.int64) if confounder else select_flows(ft, cl, select)
    sel_mask = np.zeros(nf, dtype=bool)
    sel_mask[selected] = True
    local_is_a, by_ranges = local_side_is_a(ft)
    to_local = to_local_of(ft, local_is_a)
    fo = ft.flow_of.astype(np.int64)
    in_sel = np.zeros(n, dtype=bool)
    ok = fo >= 0
    in_sel[ok] = sel_mask[fo[ok]]
    dir_ok = {"to-local": to_local, "from-local": ~to_local, "both": np.ones(n, dtype=bool)}[direction]
    after_onset = ts >= onset_ns
    impaired = np.flatnonzero(in_sel & dir_ok & after_onset)   # ascending rows
    size = t.wirelen.astype(np.float64)

    keep = np.ones(n, dtype=bool)
    delay = np.zeros(n, dtype=np.int64)
    extra: dict = {}
    m = len(impaired)
    if isinstance(impairment, Drop):
        keep[impaired] = rng.random(m) >= impairment.p
    elif isinstance(impairment, BlockAfter):
        cut = ft.first_ns.astype(np.int64)[fo[impaired]] + int(round(impairment.seconds * 1e9))
        keep[impaired] = ts[impaired] < cut
    elif isinstance(impairment, (Police, Shape)):
        if impairment.shared:
            group = to_local[impaired].astype(np.int64)
        else:
            group = fo[impaired] * 2 + ft.dir_of[impaired].astype(np.int64)
        order = np.lexsort((impaired, ts[impaired], group))
        r = impaired[order]
        g = group[order]
        tr = ts[r] - t0
        sz = size[r]
        rate = impairment.rate_bps / 8 / 1e9     # bytes per ns
        k = np.ones(len(r), dtype=np.bool_)
        rates = np.full(len(r), rate)
        if isinstance(impairment, Police):
            depth = np.full(len(r), impairment.burst)
            _token_bucket(tr, sz, g, rates, depth, depth, k)          # bucket full at each group's start
        else:
            burst = max(impairment.burst, float(sz.max()) if len(sz) else 0.0)
            extra["effective_burst_bytes"] = burst
            dep = np.zeros(len(r), dtype=np.int64)
            depth = np.full(len(r), burst)
            _shaper(tr, sz, g, rates, depth, np.full(len(r), impairment.queue), depth, k, dep)
            delay[r] = np.where(k, dep - tr, 0)
        keep[r] = k
    elif isinstance(impairment, Congest):
        slot = int(round(impairment.slot_ms * 1e6))
        rel = ts[impaired] - t0
        n_slots = int(rel.max() // slot) + 2 if m else 1
        u = rng.random(n_slots)
        bad = np.zeros(n_slots, dtype=np.bool_)
        queue = np.zeros(n_slots + 1)
        qmax = impairment.delay_ms * 1e6
        _gilbert_elliott(u, impairment.p_gb, impairment.p_bg, qmax / 3.0, slot / 2.0, qmax, bad, queue)
        s = rel // slot
        frac = (rel - s * slot) / slot
        q = queue[s] + (queue[s + 1] - queue[s]) * frac
        pb = bad[s]
        level = np.minimum(1.0, q / qmax) if qmax > 0 else np.ones(m)
        p_loss = np.where(pb, impairment.loss_bad * level, impairment.loss_good)
        keep[impaired] = rng.random(m) >= p_loss
        delay[impaired] = np.round(q).astype(np.int64)
        extra["bad_time_fraction"] = _r(bad.mean() if n_slots else 0.0)
        extra["bad_periods"] = int(np.count_nonzero(bad[1:] & ~bad[:-1]) + (1 if n_slots and bad[0] else 0))
    elif isinstance(impairment, Jitter):
        if impairment.mean_ms > 0:
            d = rng.gamma(impairment.shape, impairment.mean_ms * 1e6 / impairment.shape, m)
            delay[impaired] = np.round(d).astype(np.int64)
    else:
        raise TypeError(f"unknown impairment {impairment!r}")
    delay[~keep] = 0

    kept = np.flatnonzero(keep)
    new_ts = ts[kept] + delay[kept]
    if np.any(delay[kept]):
        order = np.argsort(new_ts, kind="stable")     # ties keep file order
        kept, new_ts = kept[order], new_ts[order]
    dropped = np.flatnonzero(~keep)

    # ---- truth
    reported = np.arange(nf, dtype=np.int64) if confounder else selected
    rep_mask = np.zeros(nf, dtype=bool)
    rep_mask[reported] = True
    prow = np.flatnonzero(ok)
    prow = prow[rep_mask[fo[prow]]]
    keys = fo[prow] * 2 + ft.dir_of[prow].astype(np.int64)
    M = _measure(nf, keys, size[prow], keep[prow], delay[prow], ts[prow], after_onset[prow])
    imp_dir_local = {"to-local": (True,), "from-local": (False,), "both": (True, False)}[direction]
    flows = []
    for f in reported.tolist():
        entry = {
            "id": f, "transport": _transport(ft, f), "a": ft.endpoint(f, "a"), "b": ft.endpoint(f, "b"),
            "label": cl.labels[f] if cl is not None else None,
            "local_side": "a" if local_is_a[f] else "b",
            "local_side_from": "address ranges" if by_ranges[f] else "most frequent address (assumed)",
            "selected": bool(sel_mask[f]),
        }
        meas = {}
        for d, name in ((0, "ab"), (1, "ba")):
            tl = (d == 1) == bool(local_is_a[f])
            meas[name] = _dir_entry(M, 2 * f + d, tl in imp_dir_local, tl)
        entry["impaired_directions"] = [k for k, v in meas.items() if v["impaired"]]
        entry["measured"] = meas
        flows.append(entry)
    tot_in = int(len(impaired))
    tot_drop = int(np.count_nonzero(~keep[impaired]))
    dk = delay[impaired][keep[impaired]]
    truth = {
        "schema": SCHEMA,
        "generator": f"throttledetect {__version__} simulate",
        "input": input_identity(cap),
        "loop": getattr(cap, "loop", None),
        "output": None,
        "seed": int(seed),
        "impairment": {"kind": impairment.kind, "params": impairment_params(impairment),
                       "scope": "all flows (confounder)" if confounder else "selected flows",
                       **({"effective": extra} if extra else {})},
        "expected_verdict": impairment.verdict,
        "onset_s": onset, "onset_epoch": onset_ns / 1e9,
        "direction": direction,
        "vantage": VANTAGE[direction],
        "selector": None if confounder else (select if isinstance(select, str) else [int(x) for x in selected]),
        "size_unit": "link-layer frame bytes (wirelen)",
        "capture": {"packets": n, "first_ts": t0 / 1e9,
                    "duration_s": _r((int(ts.max()) - t0) / 1e9) if n else 0.0},
        "measured": {
            "impaired_packets": tot_in, "dropped": tot_drop,
            "drop_fraction": _r(tot_drop / tot_in) if tot_in else 0.0,
            "delay_ms_mean": _r(dk.mean() / 1e6) if len(dk) else None,
            "delay_ms_max": _r(dk.max() / 1e6) if len(dk) else None,
            "packets_in": n, "packets_out": int(len(kept)),
        },
        "flows": flows,
    }
    return SimulationResult(rows=kept, ts_ns=new_ts, delay_ns=delay[kept], dropped=dropped, impaired=impaired,
                            truth=truth)


def _transport(ft, f: int) -> str:
    from throttledetect.flows import transport_name
    return transport_name(ft.proto[f])


def truth_path(out_path) -> str:
    """OUT -> OUT.truth.json (the sidecar beside the simulated capture)."""
    return os.fspath(out_path) + TRUTH_SUFFIX


def write(result: SimulationResult, cap: Capture, out_path) -> dict:
    """Write the simulated capture (nanosecond pcap) and OUT.truth.json; return the truth."""
    out_path = os.fspath(out_path)
    write_rows(cap, result.rows, result.ts_ns, out_path)
    truth = dict(result.truth)
    truth["output"] = {"path": out_path, "sha256": sha256_file(out_path), "packets": int(len(result.rows)),
                       "truth": truth_path(out_path)}
    with open(truth_path(out_path), "w", encoding="utf-8") as f:
        json.dump(truth, f, indent=1, default=json_default)
        f.write("\n")
    result.truth = truth
    return truth
