"""Replay a real capture through real kernel throttling, captured as the calling host would see it.

    throttledetect replay IN OUT --police 0.7x:20ms [--direction to-local] [--loop 60] [--onset 30]

    replay_trial(capture_path, spec, seconds, seed) -> (output pcap path, truth dict)

IN (pcap/pcapng, compressed or not) is read, its flows built and classified as everywhere else in
the project, optionally looped to a duration (simulate.loop_capture: RTP sequence numbers and
timestamps stay continuous). Every packet is then sent again, at its recorded time relative to the
first, from its own side: the capture's local addresses stand behind the client namespace, every
remote address behind the server namespace, a router namespace between them carries the original
addresses and ports (replay_net.py). The router's egress towards the client (to-local) or the
server (from-local) throttles the selected flows with a kernel qdisc:

    police  RATE[:BURST]         tbf rate R burst B, queue limit one packet (the largest frame of the
                                 throttled flows): drops above the rate with almost no queueing
                                 (default burst 20 ms at the rate, at least one frame)
    shape   RATE[:QUEUE[:BURST]] tbf with a queue (default 50 ms at the rate, at least 3 frames;
                                 burst default max(1500 B, the largest frame))
    htb     RATE[:PACKETS]       htb class rate = ceil = R, leaf pfifo of PACKETS (default 50)
    block   (--block-after T)    pfifo limit 0 from T seconds: every packet dropped
    drop    P                    netfilter `-m statistic --mode random --probability P -j DROP`
    none                         nothing throttled (the replay's own fidelity)

RATE is bit/s (300k, 1.5M) or a factor of the selected flows' mean rate in the throttled
direction (0.7x: link-layer frame bytes, as the qdisc counts them, over that direction's span).
With --direction both, each direction has its own bucket at its own rate.

The client's eth0 is captured with tcpdump (OUT, nanosecond pcap), and the server's eth0 too when
the from-local direction is throttled (only there can its effect be seen). OUT.truth.json holds
the configuration, the tc / netfilter commands, qdisc counters, and what was MEASURED by matching
every sent packet with its captured copy (replay_measure.py).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from throttledetect import __version__
from throttledetect.flows import DEFAULT_IDLE_TIMEOUT_S
from throttledetect.testbed import replay_measure as rm
from throttledetect.testbed.netns import TestbedError, Throttle
from throttledetect.testbed.replay_net import (ReplayTopology, netfilter_availability, sweep_stale,
                                               tool_availability)
from throttledetect.testbed.replay_plan import ETH_HDR, ReplayPlan, flow_tuple, plan_replay
from throttledetect.testbed.run import _end, _stop, _tcpdump_counts, _wait_line

SCHEMA = "throttledetect-replay-truth/1"
TRUTH_SUFFIX = ".truth.json"
KINDS = ("police", "shape", "htb", "block", "drop", "none")
EXPECTED_VERDICT = {"police": "policing", "shape": "shaping", "htb": "shaping", "block": "blocking",
                    "drop": "dropping", "none": "none"}
DIRECTIONS = ("to-local", "from-local", "both")
POLICE_BURST_S = 0.020
SHAPE_QUEUE_S = 0.050
HTB_PACKETS = 50
MTU_FRAME = 1500
MAX_REPLAY_S = 3600.0        # a longer replay needs --loop/seconds to say how much of it to play
START_DELAY_S = 0.3          # between telling the senders the start time and the first packet
SENDER = str(Path(__file__).with_name("replay_send.py"))
PR_SET_PDEATHSIG = 1


def truth_path(out_path) -> str:
    """OUT -> OUT.truth.json (beside the output capture, as the simulator writes it)."""
    return os.fspath(out_path) + TRUTH_SUFFIX


# ----------------------------------------------------------------------------------------- the spec
@dataclass(frozen=True)
class ReplaySpec:
    """What to throttle, how, where and when. Rates: rate_factor x the mean rate, or rate_bps."""

    kind: str = "none"
    rate_factor: float | None = None
    rate_bps: float | None = None
    burst_bytes: float | None = None
    burst_s: float | None = None
    queue_bytes: float | None = None
    queue_s: float | None = None
    queue_packets: int | None = None
    drop_probability: float | None = None
    block_after_s: float | None = None
    direction: str = "to-local"
    onset_s: float = 0.0
    flows: str = "calls"
    loop_s: float | None = None
    # (keep_from, loop_from, loop_to) absolute ns: loop this window of the capture (a call's
    # two-way media after its setup, as validate/bases.py finds it) instead of the whole capture
    window_ns: tuple | None = None
    local: tuple = ()
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT_S

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"throttle kind must be one of {KINDS}, not {self.kind!r}")
        if self.direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, not {self.direction!r}")
        if self.kind in ("police", "shape", "htb") and not (self.rate_factor or self.rate_bps):
            raise ValueError(f"{self.kind} needs a rate (bit/s or a factor such as 0.7x)")
        for name in ("rate_factor", "rate_bps", "burst_bytes", "burst_s", "queue_bytes", "queue_s"):
            v = getattr(self, name)
            if v is not None and not v > 0:
                raise ValueError(f"{name} must be positive")
        if self.kind == "drop" and not (self.drop_probability is not None and 0 < self.drop_probability <= 1):
            raise ValueError("drop needs a probability in (0, 1]")
        if self.kind == "block" and (self.block_after_s is None or self.block_after_s < 0):
            raise ValueError("block needs --block-after SECONDS >= 0")
        if self.onset_s < 0:
            raise ValueError("onset must not be negative")
        if self.loop_s is not None and not self.loop_s > 0:
            raise ValueError("loop duration must be positive")
        if self.queue_packets is not None and self.queue_packets < 1:
            raise ValueError("htb queue must hold at least one packet")

    @property
    def directions(self) -> list[str]:
        return ["to-local", "from-local"] if self.direction == "both" else [self.direction]

    @property
    def effective_onset_s(self) -> float:
        return float(self.block_after_s) if self.kind == "block" else float(self.onset_s)

    @classmethod
    def from_dict(cls, d: dict) -> "ReplaySpec":
        names = {f.name for f in fields(cls)}
        bad = sorted(set(d) - names)
        if bad:
            raise ValueError(f"unknown spec field(s) {bad}")
        d = dict(d)
        if "local" in d:
            d["local"] = tuple(d["local"] or ())
        return cls(**d)


_SI = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9}


def parse_rate(text: str) -> tuple[float | None, float | None]:
    """'0.7x' -> (0.7, None); '300k', '1.5M', '64000', '2Mbit' -> (None, bit/s)."""
    s = text.strip()
    m = re.fullmatch(r"([0-9]*\.?[0-9]+)\s*x", s, re.I)
    if m:
        return float(m.group(1)), None
    m = re.fullmatch(r"([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([kmg]?)(?:bit/s|bits|bit|bps|b/s)?", s, re.I)
    if not m:
        raise ValueError(f"{text!r} is not a rate: bit/s (300k, 1.5M) or a factor of the mean rate (0.7x)")
    return None, float(m.group(1)) * _SI[m.group(2).lower()]


def parse_size(text: str) -> tuple[float | None, float | None]:
    """'20ms', '0.3s' -> (None, seconds at the rate); '3000', '10k', '1500B' -> (bytes, None)."""
    s = text.strip()
    m = re.fullmatch(r"([0-9]*\.?[0-9]+)\s*(ms|s)", s, re.I)
    if m:
        return None, float(m.group(1)) / (1000.0 if m.group(2).lower() == "ms" else 1.0)
    m = re.fullmatch(r"([0-9]*\.?[0-9]+)\s*([kmg]?)\s*(?:b|bytes?)?", s, re.I)
    if not m:
        raise ValueError(f"{text!r} is not a size: bytes (3000, 10k) or a time at the rate (20ms)")
    return float(m.group(1)) * _SI[m.group(2).lower()], None


def spec_from_option(kind: str, value=None, **common) -> ReplaySpec:
    """A spec from the CLI's spelling: ('police', '0.7x:20ms'), ('shape', '0.7x:300ms'),
    ('htb', '0.7x[:50]'), ('block', 2), ('drop', 0.05), ('none', None)."""
    kw: dict = {}
    if kind in ("police", "shape", "htb"):
        parts = str(value).split(":")
        limit = {"police": 2, "shape": 3, "htb": 2}[kind]
        if len(parts) > limit:
            raise ValueError({"police": "--police takes RATE[:BURST]", "shape": "--shape takes RATE[:QUEUE[:BURST]]",
                              "htb": "--htb takes RATE[:PACKETS]"}[kind])
        kw["rate_factor"], kw["rate_bps"] = parse_rate(parts[0])
        if kind == "police" and len(parts) > 1:
            kw["burst_bytes"], kw["burst_s"] = parse_size(parts[1])
        if kind == "shape" and len(parts) > 1 and parts[1]:
            kw["queue_bytes"], kw["queue_s"] = parse_size(parts[1])
        if kind == "shape" and len(parts) > 2 and parts[2]:
            kw["burst_bytes"], kw["burst_s"] = parse_size(parts[2])
        if kind == "htb" and len(parts) > 1:
            if not parts[1].strip().isdigit():
                raise ValueError(f"--htb queue {parts[1]!r} is not a number of packets")
            kw["queue_packets"] = int(parts[1])
    elif kind == "block":
        kw["block_after_s"] = float(value)
    elif kind == "drop":
        kw["drop_probability"] = float(value)
    elif kind != "none":
        raise ValueError(f"throttle kind must be one of {KINDS}, not {kind!r}")
    return ReplaySpec(kind=kind, **kw, **common)


def _coerce_spec(spec) -> ReplaySpec:
    """ReplaySpec, a dict of its fields, or the CLI's words ('police 0.7x:20ms', 'none')."""
    if isinstance(spec, ReplaySpec):
        return spec
    if isinstance(spec, dict):
        return ReplaySpec.from_dict(spec)
    if isinstance(spec, str):
        words = spec.replace("--", "").replace("block-after", "block").split()
        if not words:
            raise ValueError("empty spec")
        return spec_from_option(words[0], words[1] if len(words) > 1 else None)
    raise TypeError(f"spec must be a ReplaySpec, a dict or a string, not {type(spec).__name__}")


# -------------------------------------------------------------------------- configured throttle
def resolve(spec: ReplaySpec, plan: ReplayPlan) -> dict:
    """Per throttled direction: the kernel Throttle and the numbers behind it."""
    out = {}
    if spec.kind in ("none", "drop"):
        return out
    sel = plan.throttled_flow
    for d in spec.directions:
        to_local = d == "to-local"
        frame = plan.max_frame(sel, to_local)
        mean = plan.mean_rate_bps(sel, to_local)
        info = {"mean_rate_bps": round(mean), "max_frame_bytes": frame}
        if spec.kind == "block":
            out[d] = (Throttle("blocking"), info)
            continue
        if frame == 0:
            raise ValueError(f"the selected flows send nothing {d}: nothing to throttle in that direction")
        if spec.rate_factor is not None:
            if mean <= 0:
                raise ValueError(f"the selected flows have no measurable rate {d} to scale by {spec.rate_factor}x")
            rate = spec.rate_factor * mean
        else:
            rate = float(spec.rate_bps)
        rate = int(round(rate))
        by_time = (lambda s: rate / 8 * s)
        if spec.kind == "police":
            burst = spec.burst_bytes if spec.burst_bytes else by_time(spec.burst_s or POLICE_BURST_S)
            t = Throttle("policing", rate, int(max(frame, burst)), limit_bytes=frame)
        elif spec.kind == "shape":
            queue = spec.queue_bytes if spec.queue_bytes else by_time(spec.queue_s or SHAPE_QUEUE_S)
            burst = spec.burst_bytes if spec.burst_bytes else (by_time(spec.burst_s) if spec.burst_s else MTU_FRAME)
            t = Throttle("shaping", rate, int(max(frame, burst)), limit_bytes=int(max(3 * frame, queue)))
        else:
            burst = spec.burst_bytes if spec.burst_bytes else (by_time(spec.burst_s) if spec.burst_s else 1600)
            t = Throttle("htb", rate, int(max(frame, burst)), limit_packets=int(spec.queue_packets or HTB_PACKETS))
        out[d] = (t, info)
    return out


def _max_queue_delay_s(resolved: dict) -> float:
    worst = 0.0
    for t, info in resolved.values():
        if t.rate_bps:
            q = t.limit_bytes if t.kind in ("shaping", "policing") else t.limit_packets * info["max_frame_bytes"]
            worst = max(worst, (q + t.burst_bytes) * 8 / t.rate_bps)
    return worst


# ------------------------------------------------------------------------------------- processes
def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the replaying process dies, however it dies (even
    SIGKILL), so no sender or tcpdump outlives it (`ip netns exec` execs, the setting stays)."""
    import ctypes
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _sender(topo: ReplayTopology, ns: str, sched: str, log: str) -> subprocess.Popen:
    # the sender is run by path: it imports numpy and the standard library only
    return subprocess.Popen(topo.ns_cmd(ns, [sys.executable, SENDER, sched, log]), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=_die_with_parent)


def _await(p: subprocess.Popen, word: str, timeout: float, what: str) -> None:
    """Wait for a sender's status word; on failure the error names its last line of stderr."""
    try:
        _wait_line(p, p.stdout, word, timeout)
    except TestbedError:
        if p.poll() is None:
            p.kill()
        err = p.stderr.read().decode(errors="replace").strip().splitlines() if p.stderr else []
        raise TestbedError(f"{what} failed before {word}: {err[-1] if err else 'no message'}") from None


def _tcpdump(topo: ReplayTopology, ns: str, path: str) -> subprocess.Popen:
    # --immediate-mode: without it the last buffered block (a shaper's queue draining) can be lost at
    # SIGINT; `not ether multicast`: the router's own MLD/IGMP reports, never part of a replay
    argv = ["tcpdump", "-U", "--immediate-mode", "-n", "-Z", "root", "-B", "8192", "--time-stamp-precision",
            "nano", "-i", "eth0", "-w", path, "not ether multicast"]
    p = subprocess.Popen(topo.ns_cmd(ns, argv), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         preexec_fn=_die_with_parent)
    _wait_line(p, p.stderr, "listening on", 10)
    return p


def _save_schedule(path: str, plan: ReplayPlan, idx: np.ndarray, speed: float) -> None:
    lens = plan.frame_len[idx]
    start = np.zeros(len(idx) + 1, dtype=np.int64)
    np.cumsum(lens, out=start[1:])
    total = int(start[-1])
    src = np.repeat(plan.frame_start[idx] - start[:-1], lens) + np.arange(total)
    rel = (plan.rel_ns[idx] / speed).astype(np.int64)
    np.savez(path, frames=plan.frames[src], start=start, rel_ns=rel)


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ------------------------------------------------------------------------------------ the replay
def prepare(capture_path: str, spec: ReplaySpec, seconds: float | None = None):
    """Read, flow, classify, loop, plan. Returns (plan, ft, cl, loop info or None)."""
    from throttledetect.classify import classify
    from throttledetect.flows import build_flows
    from throttledetect.read import read_capture
    from throttledetect.simulate import loop_capture

    nets = list(spec.local) or None
    cap = read_capture(capture_path)
    ft = build_flows(cap, idle_timeout=spec.idle_timeout, local_nets=nets)
    cl = classify(cap, ft)
    want = seconds if seconds is not None else spec.loop_s
    loop = None
    if want is not None:
        t = cap.packets.ts_ns
        if spec.window_ns is not None:
            # the call's window, looped to the length wanted even when the capture is longer (a
            # long capture whose call is a few seconds somewhere in the middle)
            cap, loop = loop_capture(cap, ft, cl, want, window=tuple(int(x) for x in spec.window_ns))
            ft = build_flows(cap, idle_timeout=spec.idle_timeout, local_nets=nets)
            cl = classify(cap, ft)
        elif len(t) and (int(t.max()) - int(t.min())) / 1e9 < want:
            cap, loop = loop_capture(cap, ft, cl, want)
            ft = build_flows(cap, idle_timeout=spec.idle_timeout, local_nets=nets)
            cl = classify(cap, ft)
    plan = plan_replay(cap, ft, cl, spec.flows, want)
    if want is None and plan.duration_s > MAX_REPLAY_S:
        raise ValueError(f"the capture spans {plan.duration_s:.0f} s; replaying more than {MAX_REPLAY_S:.0f} s "
                         "needs an explicit duration (--loop SECONDS)")
    if spec.kind != "none" and not plan.throttled_flow.any():
        raise ValueError(f"no replayable flow matches --flows {spec.flows!r}" +
                         (" (the classification found no call flow; try --flows all or flow ids)"
                          if spec.flows == "calls" else ""))
    return plan, ft, cl, loop


def replay(capture_path: str, out_path: str, spec, *, seconds: float | None = None, seed: int = 0,
           speed: float = 1.0, server_pcap: str | None = None, progress=None) -> dict:
    """Replay `capture_path` through the throttle `spec`; write `out_path` and its truth; return the
    truth. `seconds`: play exactly this long (loop or cut; default: spec.loop_s, else the whole
    capture). `speed` > 1 plays faster (for measuring throughput). `server_pcap` keeps the server's
    capture. Raises TestbedError when this machine cannot run it, ValueError for a bad spec/input."""
    spec = _coerce_spec(spec)
    ok, why = tool_availability()
    if not ok:
        raise TestbedError(why)
    if spec.kind == "drop":
        ok, why = netfilter_availability()
        if not ok:
            raise TestbedError(f"--drop needs netfilter: {why}")
    sweep_stale()
    say = progress or (lambda msg: None)
    out_path = os.path.abspath(os.fspath(out_path))
    if not os.path.isdir(os.path.dirname(out_path)):
        raise ValueError(f"{os.path.dirname(out_path)}: no such directory for the output capture")
    t_prep = time.perf_counter()
    plan, ft, cl, loop = prepare(capture_path, spec, seconds)
    resolved = resolve(spec, plan)
    prep_s = time.perf_counter() - t_prep
    say(f"replaying {len(plan.rows)} packets over {plan.duration_s:.1f} s "
        f"({int((~plan.to_local).sum())} from the client, {int(plan.to_local.sum())} from the server)")
    tmp = tempfile.mkdtemp(prefix=f"tdreplay-{os.getpid()}-")
    try:
        run_info = _run(plan, ft, spec, resolved, out_path, tmp, speed, server_pcap)
        truth = _truth(capture_path, out_path, spec, plan, ft, cl, loop, resolved, run_info, seed, speed, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    truth["replay"]["prepare_s"] = round(prep_s, 3)
    with open(truth_path(out_path), "w", encoding="utf-8") as f:
        json.dump(truth, f, indent=1, default=_json_default)
        f.write("\n")
    return truth


def _json_default(x):
    from throttledetect.report.jsonout import json_default
    return json_default(x)


def _run(plan, ft, spec, resolved, out_path, tmp, speed, server_pcap) -> dict:
    """Namespaces up, throttle installed, capture, send, onset, drain, counters, namespaces down."""
    tuples = None if spec.flows == "all" else [flow_tuple(ft, plan, int(f)) for f in np.flatnonzero(plan.throttled_flow)]
    sides = {"client": plan.side(False), "server": plan.side(True)}
    for role, idx in sides.items():
        _save_schedule(os.path.join(tmp, f"{role}.npz"), plan, idx, speed)
    from_local_throttled = spec.kind != "none" and "from-local" in spec.directions
    spcap = server_pcap or (os.path.join(tmp, "server.pcap") if from_local_throttled else None)
    mtu = int(plan.frame_len.max()) - ETH_HDR
    topo = ReplayTopology(plan.local_addrs, mtu=mtu, ipv6=plan.has_ipv6)
    procs: list[subprocess.Popen] = []
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    info: dict = {"namespaces": {}, "onset_epoch": None}
    restore = _unwind_on_sigterm()
    try:
        topo.create()
        info["namespaces"] = {"client": topo.client_ns, "router": topo.router_ns, "server": topo.server_ns}
        for d, (t, _) in resolved.items():
            topo.install(t, d)
        td_c = _tcpdump(topo, topo.client_ns, out_path)
        procs.append(td_c)
        td_s = None
        if spcap:
            td_s = _tcpdump(topo, topo.server_ns, spcap)
            procs.append(td_s)
        senders = {}
        for role, ns in (("client", topo.client_ns), ("server", topo.server_ns)):
            p = _sender(topo, ns, os.path.join(tmp, f"{role}.npz"), os.path.join(tmp, f"{role}-log.npy"))
            procs.append(p)
            senders[role] = p
        for role, p in senders.items():
            _await(p, "READY", 60, f"{role} sender")

        def activate() -> None:
            if spec.kind == "drop":
                for d in spec.directions:
                    topo.drop_randomly(tuples, d, spec.drop_probability)
            elif resolved:
                for d in resolved:
                    topo.steer(tuples, d)

        onset = spec.effective_onset_s / speed
        clocks0 = (time.time(), time.monotonic())
        start = time.time() + START_DELAY_S
        if spec.kind != "none" and onset <= 0:
            activate()
            info["onset_epoch"] = start
        for p in senders.values():
            p.stdin.write(f"{start!r}\n".encode())
            p.stdin.flush()
        if spec.kind != "none" and onset > 0:
            t_on = start + onset
            while time.time() < t_on - 0.002:
                time.sleep(min(0.05, max(0.0, t_on - 0.002 - time.time())))
            t0 = time.time()
            activate()
            info["onset_epoch"] = (t0 + time.time()) / 2   # the filters went in between these instants
            info["onset_activation_ms"] = round((time.time() - t0) * 1000, 2)
        end = start + plan.duration_s / speed
        for role, p in senders.items():
            _await(p, "DONE", max(10.0, end - time.time() + 30), f"{role} sender")
            p.wait(timeout=10)
        drain = 0.3 + _max_queue_delay_s(resolved)
        time.sleep(drain)
        clocks1 = (time.time(), time.monotonic())
        # the capture's clock (CLOCK_REALTIME) against the kernel's own (CLOCK_MONOTONIC, which tbf and
        # htb count in): a VM's realtime clock may be slewed, and a rate seen in the capture with it
        info["realtime_vs_monotonic_ppm"] = round(((clocks1[0] - clocks0[0]) / (clocks1[1] - clocks0[1]) - 1) * 1e6, 1)
        info["tcpdump"] = {"client": _tcpdump_counts(_stop(td_c))}
        if td_s is not None:
            info["tcpdump"]["server"] = _tcpdump_counts(_stop(td_s))
        info["qdisc_stats"] = topo.qdisc_stats() if resolved else []
        info["netfilter"] = topo.netfilter_counters() if spec.kind == "drop" else {}
        info["commands"] = list(topo.commands)
        info["netfilter_rules"] = list(topo.netfilter_rules)
        info["start_epoch"], info["end_epoch"], info["drain_s"] = start, end, drain
    finally:
        _end(procs)
        topo.destroy()
        restore()
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    info["children_cpu_s"] = round((ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime), 3)
    info["senders"] = {}
    for role in sides:
        with open(os.path.join(tmp, f"{role}-log.json")) as f:
            info["senders"][role] = json.load(f)
    info["server_pcap"] = spcap
    return info


def _unwind_on_sigterm():
    """SIGTERM unwinds like Ctrl-C while a replay runs (so its namespaces are removed); returns
    the function that puts the previous handler back. Only possible in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = signal.getsignal(signal.SIGTERM)
    if previous not in (signal.SIG_DFL, None):
        return lambda: None

    def _raise(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _raise)
    return lambda: signal.signal(signal.SIGTERM, previous)


# ------------------------------------------------------------------------------- measured truth
def _captured(path: str):
    """(keys, times in epoch seconds, frame lengths, l3 mask) of a capture of ours (Ethernet)."""
    from throttledetect.read import read_capture
    cap = read_capture(path)
    t = cap.packets
    fo = t.frame_off.astype(np.int64)
    ip = t.l3 != 0
    keys = rm.packet_keys(cap.buffer, fo + ETH_HDR, np.maximum(t.caplen.astype(np.int64) - ETH_HDR, 0))
    return keys, t.ts_ns.astype(np.float64) / 1e9, t.wirelen.astype(np.int64), ip, t.proto


def _truth(capture_path, out_path, spec, plan, ft, cl, loop, resolved, info, seed, speed, tmp) -> dict:
    n = len(plan.rows)
    sides = {"client": plan.side(False), "server": plan.side(True)}
    sent_t = np.full(n, np.nan)
    for role, idx in sides.items():
        log = np.load(os.path.join(tmp, f"{role}-log.npy"))
        sent_t[idx] = log
    start = info["start_epoch"]
    intended = start + plan.rel_ns / 1e9 / speed
    t_end = start + plan.duration_s / speed
    # without a throttle the whole replay counts as "before the onset"
    onset = info["onset_epoch"] if info["onset_epoch"] is not None else t_end
    keys = rm.packet_keys(plan.frames, plan.frame_start[:-1] + ETH_HDR, plan.frame_len - ETH_HDR)
    max_delay = 1.0 + _max_queue_delay_s(resolved)
    size = plan.frame_len.astype(np.int64)

    ck, ct, clen, cip, cproto = _captured(out_path)
    m_c = rm.match(keys, sent_t, ck, ct, max_delay)
    at_client = rm.received_time(n, m_c, ct)
    at_server = None
    if info.get("server_pcap") and os.path.exists(info["server_pcap"]):
        sk, st, _, _, _ = _captured(info["server_pcap"])
        at_server = rm.received_time(n, rm.match(keys, sent_t, sk, st, max_delay), st)
    extra = m_c < 0
    extra_protos = {int(p): int(c) for p, c in zip(*np.unique(cproto[extra & cip], return_counts=True))}

    # received = the copy past the throttling hop: the client's capture for to-local packets, the
    # server's capture (when taken) for from-local ones
    recv = np.where(plan.to_local, at_client, at_server if at_server is not None else np.nan)
    flows = []
    order = np.lexsort((plan.rel_ns, plan.to_local, plan.flow))
    bounds = np.flatnonzero(np.diff(plan.flow[order]) != 0) + 1
    for grp in np.split(order, bounds):
        f = int(plan.flow[grp[0]])
        tup = flow_tuple(ft, plan, f)
        entry = {"id": f, "label": cl.labels[f], "transport": _transport(tup["proto"]),
                 "local": _ep(tup["local_ip"], tup["local_port"]), "remote": _ep(tup["remote_ip"], tup["remote_port"]),
                 "throttled": bool(plan.throttled_flow[f]),
                 "throttled_directions": spec.directions if plan.throttled_flow[f] and spec.kind != "none" else [],
                 "measured": {}}
        for d, tl in (("to-local", True), ("from-local", False)):
            g = grp[plan.to_local[grp] == tl]
            if not len(g):
                continue
            if tl or at_server is not None:
                e = rm.direction_effect(sent_t[g], recv[g], size[g], start, onset, t_end)
            else:
                e = {"sent": int((~np.isnan(sent_t[g])).sum()),
                     "note": "leaves the client before the throttling hop; its effect is measured only in the "
                             "server's capture (taken when this direction is throttled)"}
            e["in_capture"] = int((~np.isnan(at_client[g])).sum())
            entry["measured"][d] = e
        entry["expected_verdict"] = (EXPECTED_VERDICT[spec.kind] if entry["throttled_directions"]
                                     and "to-local" in entry["throttled_directions"] else "none")
        flows.append(entry)

    aggregate = {}
    for d in (spec.directions if spec.kind != "none" else []):
        tl = d == "to-local"
        g = np.flatnonzero(plan.throttled_flow[plan.flow] & (plan.to_local == tl))
        if not len(g) or (not tl and at_server is None):
            continue
        a = rm.direction_effect(sent_t[g], recv[g], size[g], start, onset, t_end)
        if d in resolved and resolved[d][0].rate_bps:
            t = resolved[d][0]
            got = g[~np.isnan(recv[g]) & (sent_t[g] >= onset)]
            o = np.argsort(recv[got], kind="stable")
            a["max_window_excess_bytes"] = round(rm.max_window_excess(recv[got][o], size[got][o], t.rate_bps), 1)
            a["configured_burst_bytes"] = t.burst_bytes
        aggregate[d] = a

    precision = {}
    ok = ~np.isnan(at_client) & ~np.isnan(sent_t)
    fl = ok & ~plan.to_local
    precision["from_local_at_client"] = rm.timing_precision(intended[fl], at_client[fl])
    tl_free = ok & plan.to_local & ~(plan.throttled_flow[plan.flow] & (spec.kind != "none"))
    precision["to_local_unthrottled_at_client"] = rm.timing_precision(intended[tl_free], at_client[tl_free])
    sender_cpu = sum(s["cpu_s"] for s in info["senders"].values())
    span = float(np.nanmax(sent_t) - np.nanmin(sent_t)) if n > 1 and not np.isnan(sent_t).all() else 0.0

    cfg = {d: {"qdisc": _qdisc_name(t), "rate_bps": t.rate_bps or None, "burst_bytes": t.burst_bytes or None,
               "queue_limit_bytes": t.limit_bytes or None, "queue_limit_packets": t.limit_packets or None,
               "max_queue_delay_ms": (round(t.limit_bytes * 8 / t.rate_bps * 1000, 1)
                                      if t.rate_bps and t.limit_bytes else None), **extra_info}
           for d, (t, extra_info) in resolved.items()}
    tc_commands = [c for c in info["commands"] if c.startswith("tc ")]
    return {
        "schema": SCHEMA, "version": __version__,
        "input": {"path": os.path.abspath(capture_path), "sha256": _sha256(capture_path),
                  "loop": loop},
        "output": {"path": out_path, "truth": truth_path(out_path), "packets": int(len(ck)),
                   "link_type": "Ethernet (nanosecond pcap)"},
        "spec": asdict(spec),
        "seed": seed,
        "seed_note": "the replay is deterministic apart from the kernel: timing, and netfilter's random drops "
                     "(not seedable) make each run its own",
        "kind": spec.kind,
        # what a capture on the calling host can show: a from-local throttle only past the router
        "expected_verdict": EXPECTED_VERDICT[spec.kind] if "to-local" in spec.directions else "none",
        "direction": spec.direction if spec.kind != "none" else None,
        "onset_s": round(info["onset_epoch"] - start, 4) if info["onset_epoch"] is not None else None,
        "onset_epoch": info["onset_epoch"], "start_epoch": start,
        "throttle": cfg,
        "drop_probability": spec.drop_probability, "block_after_s": spec.block_after_s,
        "rate_counts": "link-layer frame bytes (14-byte Ethernet header included), as tc and the output capture count",
        "aggregate": "one bucket per throttled direction, shared by all throttled flows" if resolved else None,
        "throttled_flows": [{"id": e["id"], "label": e["label"], "transport": e["transport"], "local": e["local"],
                             "remote": e["remote"]} for e in flows if e["throttled"]],
        "vantage": "the client's eth0: what a capture on the calling host records. To-local packets are captured "
                   "after the throttling hop, from-local ones before it.",
        "topology": {**info["namespaces"], "throttling_hop": {d: ("router", "lan0" if d == "to-local" else "wan0")
                                                             for d in spec.directions} if spec.kind != "none" else {},
                     "local_addresses": [str(a) for a in plan.local_addrs],
                     "remote_addresses": len(plan.remote_addrs)},
        "tc_commands": tc_commands,
        "netfilter_rules": info["netfilter_rules"],
        "setup_commands": [c for c in info["commands"] if not c.startswith("tc ")],
        "qdisc_stats": info["qdisc_stats"], "netfilter_counters": info["netfilter"],
        "tcpdump": info["tcpdump"],
        "replay": {"packets": n, "from_client": int(len(sides["client"])), "from_server": int(len(sides["server"])),
                   "duration_s": round(plan.duration_s / speed, 3), "speed": speed,
                   "left_out": plan.skipped, "padded_to_ip_length": plan.padded,
                   "send_failed": int(np.isnan(sent_t).sum()),
                   "senders": info["senders"], "timing_precision": precision,
                   "sender_cpu_s": round(sender_cpu, 3), "children_cpu_s": info["children_cpu_s"],
                   "scheduled_pps": round(n / (plan.duration_s / speed), 1) if plan.duration_s else None,
                   "sent_pps": round(n / span, 1) if span > 0 else None,
                   "onset_activation_ms": info.get("onset_activation_ms"),
                   "realtime_vs_monotonic_ppm": info.get("realtime_vs_monotonic_ppm"),
                   "clock_note": "timestamps (capture, senders) are CLOCK_REALTIME; qdiscs count time in "
                                 "CLOCK_MONOTONIC: a rate read from the capture is off by realtime_vs_monotonic_ppm"},
        "measured": {"capture_packets": int(len(ck)), "extra_packets": int(extra.sum()),
                     "extra_packets_by_protocol": extra_protos,
                     "throttled_aggregate": aggregate, "flows": flows},
    }


def _qdisc_name(t: Throttle) -> str:
    return {"policing": "tbf (queue of one packet)", "shaping": "tbf", "htb": "htb class + pfifo",
            "blocking": "pfifo limit 0"}[t.kind]


def _transport(proto: int) -> str:
    from throttledetect.flows import transport_name
    return transport_name(proto)


def _ep(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


# -------------------------------------------------------------------------- the harness's entry
def replay_trial(capture_path, spec, seconds: float | None, seed: int = 0, *, out_dir: str | None = None,
                 server_pcap: bool = False) -> tuple[str, dict]:
    """One trial for a validation harness: replay `capture_path` for `seconds` (looped or cut; None:
    as recorded) through `spec` (ReplaySpec, dict of its fields, or 'police 0.7x:20ms'). Safe in a
    process pool: every trial has its own namespaces and temporary files. Returns (output pcap,
    truth); the pcap is in `out_dir` (default: a new temporary directory the caller removes)."""
    spec = _coerce_spec(spec)
    d = out_dir or tempfile.mkdtemp(prefix="throttledetect-replay-trial-")
    os.makedirs(d, exist_ok=True)
    out = os.path.join(d, f"replay-{spec.kind}-{seed}-{os.getpid()}-{time.monotonic_ns()}.pcap")
    truth = replay(capture_path, out, spec, seconds=seconds, seed=seed,
                   server_pcap=(out[:-5] + ".server.pcap") if server_pcap else None)
    return out, truth


__all__ = ["ReplaySpec", "replay", "replay_trial", "spec_from_option", "parse_rate", "parse_size", "resolve",
           "prepare", "truth_path", "KINDS", "DIRECTIONS", "EXPECTED_VERDICT", "SCHEMA"]
