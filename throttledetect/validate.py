"""The validation matrix: known throttling applied to real call traces, the detectors scored.

What it measures (issue 5): on calls of at least a minute, how often the detectors find a known
impairment (drop, policer, shaper, onset, blocking), how often they call something throttling
that is not (the confounders: nothing at all, a congested shared link, Wi-Fi jitter, DTX
silence), whether the kind is right, and how close the policer and shaper rates come.
It runs the detectors exactly as ``analyze_capture`` does and never changes a threshold: the
table it prints is the truth about the detectors, goals met or not.

Method
------
Base traces (TRACES): call captures of the shared corpus, read in place, and the project's own
testbed call. Each is looped to ``seconds`` (60 by default) with simulate.loop_capture (RTP
sequence numbers and timestamps continuous across the joins). sip_rtp.pcap is a loopback
capture in which sender and receiver are both 127.0.0.1: the local side is then the first sender
and its one-way G.711 stream would leave the capture point, where no loss or delay can show. The
sender's address is rewritten to 198.51.100.7 (TEST-NET-2; IPv4 and UDP checksums updated
incrementally, RFC 1624), so the capture reads as recorded on the receiving host.
whatsappCall.pcapng holds 1.7 s of call media (33 packets) in 468 s: it cannot make a call of a
minute, so it takes part in the confounder scenarios only, reported apart from the goals.

Targets: the call flows (classification) with at least MIN_TARGET_PACKETS RTP packets arriving
at the capture point. An impairment scenario impairs ONE target flow per trial (to-local
direction, the direction a capture on the calling host can judge), cycling through the trace's
targets with the seed; the trace's other call flows are bystanders. Policer and shaper rates are
a factor times the target flow's own to-local rate (link-layer bytes over that direction's
span in the looped base trace). Confounders act on every flow (congestion, jitter) or on every
audio stream (DTX silence, dtx_silence below).

Scoring, per flow (a "unit"; a base flow is matched to the flows of the impaired capture by its
unordered endpoints and transport, several flows when the idle timeout split it):
- target units: detected = the verdict is a throttling kind (shaping, policing, dropping,
  blocking); kind right = that kind is the scenario's; inconclusive and none are misses;
- bystander units (call flows not impaired, in impairment scenarios) and every unit of a
  confounder scenario: a false positive = the verdict is a throttling kind;
- rate error = |estimate - configured rate| / configured rate, for detections of the right kind
  (policing, shaping) that carry rate_bps.
Intervals are 95 % Wilson score intervals (scipy.stats.binomtest(...).proportion_ci).
"""
from __future__ import annotations

import datetime as _dt
import os
import tempfile
import time
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SCHEMA = "throttledetect-validate/1"
KINDS = ("shaping", "policing", "dropping", "blocking")
PRECEDENCE = ("blocking", "policing", "shaping", "dropping")   # as detect.PRECEDENCE: one verdict per base flow
DEFAULT_SECONDS = 60.0
MIN_TARGET_PACKETS = 500          # RTP packets arriving at the capture point, in the looped trace
REMAP_ADDRESS = "198.51.100.7"    # TEST-NET-2: the rewritten sender of sip_rtp.pcap


class CorpusMissing(RuntimeError):
    pass


def default_corpus() -> Path:
    env = os.environ.get("THROTTLEDETECT_CORPUS")
    return Path(env) if env else REPO.parent / "shared" / "corpus"


# --------------------------------------------------------------------------- base traces

@dataclass(frozen=True)
class TraceSpec:
    name: str
    path: str                    # relative to the corpus ("corpus") or to the repository ("project")
    source: str = "corpus"
    role: str = "call"           # "call": the whole matrix; "short": confounders only, not in the goals
    remap_ports: tuple = ()      # UDP ports of the side whose address is rewritten (see module doc)
    note: str = ""
    target_flows: int = 1        # how many target flows preparation finds (plans trials before it runs)

    def resolve(self, corpus: Path) -> Path:
        return (Path(corpus) if self.source == "corpus" else REPO) / self.path


TRACES = (
    TraceSpec("teams", "external/MicrosoftTeam_05152024_rebuilt.pcap",
              note="Wehe Teams call, 20.5 s, one UDP flow: audio PT 111 + video PT 102 towards the client"),
    TraceSpec("skype", "external/Skype_06172024_rebuilt.pcap",
              note="Wehe Skype call, 14.7 s, one UDP flow: audio PT 111 + video PT 102 towards the client"),
    TraceSpec("sip-g711", "external/sip_rtp.pcap", remap_ports=(5061, 6001),
              note="SIP call, 10 s of one-way G.711 (PT 0, 50 pps); sender rewritten to 198.51.100.7"),
    TraceSpec("testbed", "captures/call_clean.pcap", source="project", target_flows=2,
              note="project testbed call, 12.4 s: audio and video UDP flows, TCP and UDP controls"),
    TraceSpec("whatsapp", "external/whatsappCall.pcapng", role="short",
              note="WhatsApp, 468 s of which 1.7 s call media: confounders only, not in the goals"),
)


@dataclass
class BaseTrace:
    spec: TraceSpec
    cap: object
    ft: object
    cl: object
    targets: list            # base flow ids that impairment scenarios act on
    calls: list              # call flows of the base trace
    rate_bps: dict           # flow id -> to-local rate (link-layer bytes over the direction's span)
    keys: dict               # flow id -> matching key
    info: dict


def _flow_key(ft, i: int) -> tuple:
    a = (int(ft.a_hi[i]), int(ft.a_lo[i]), int(ft.a_port[i]))
    b = (int(ft.b_hi[i]), int(ft.b_lo[i]), int(ft.b_port[i]))
    return (int(ft.proto[i]),) + (a + b if a <= b else b + a)


def _be(buf, pos, nbytes):
    out = np.zeros(len(pos), dtype=np.int64)
    for j in range(nbytes):
        out = (out << 8) | buf[pos + j]
    return out


def _put_be(buf, pos, values, nbytes):
    v = np.asarray(values, dtype=np.int64)
    for j in range(nbytes - 1, -1, -1):
        buf[pos + j] = (v & 0xFF).astype(np.uint8)
        v = v >> 8


def _words(buf, start, count):
    s = np.zeros(len(start), dtype=np.int64)
    for j in range(count):
        s += (buf[start + 2 * j].astype(np.int64) << 8) | buf[start + 2 * j + 1]
    return s


def _fold(s):
    for _ in range(4):
        s = (s & 0xFFFF) + (s >> 16)
    return s


def _csum_update(old_csum, m_old, m_new):
    """RFC 1624 eq. 3: HC' = ~(~HC + ~m + m'); m, m' ones'-complement sums of the changed words."""
    c = ~_fold((~old_csum & 0xFFFF) + (~_fold(m_old) & 0xFFFF) + _fold(m_new)) & 0xFFFF
    return c


def _capture_from(buffer, cap, rows, ts_ns, what: str):
    """A Capture of the given rows of `cap` with frame bytes taken from `buffer` (a possibly
    modified copy of cap.buffer): written to a temporary pcap, read back, the file unlinked."""
    from throttledetect.read import read_capture
    from throttledetect.write import pcap_header, pcap_records
    t = cap.packets
    rows = np.asarray(rows, dtype=np.int64)
    out, _ = pcap_records(buffer, t.frame_off[rows], t.caplen[rows], t.wirelen[rows], np.asarray(ts_ns, np.int64))
    fd, tmp = tempfile.mkstemp(prefix="throttledetect-validate-", suffix=".pcap")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(pcap_header(int(np.unique(t.linktype[rows])[0]), nano=True))
            f.write(memoryview(out))
        new = read_capture(tmp)
    finally:
        os.unlink(tmp)
    new.path = f"{cap.path} ({what})"
    return new


def _ipv4_offsets(cap, rows):
    """Frame-relative offset of the IPv4 header of each row (-1 when not found)."""
    t = cap.packets
    buf = cap.buffer
    l4 = t.l4_off[rows].astype(np.int64)
    fo = t.frame_off[rows].astype(np.int64)
    out = np.full(len(rows), -1, dtype=np.int64)
    for ihl in range(5, 16):
        at = l4 - 4 * ihl
        ok = (out < 0) & (at >= fo)
        ok[ok] = buf[at[ok]] == (0x40 | ihl)
        out[ok] = at[ok] - fo[ok]
    return out


def remap_sender(cap, ports, address: str = REMAP_ADDRESS):
    """Rewrite the IPv4 address of the endpoints using `ports` (source address where the UDP
    source port is one of them, destination address where the destination port is), with the
    IPv4 header and UDP checksums updated incrementally. Returns a new Capture."""
    import ipaddress
    t = cap.packets
    ports = np.asarray(sorted(ports), dtype=np.int64)
    new_words = np.array([int(ipaddress.IPv4Address(address)) >> 16, int(ipaddress.IPv4Address(address)) & 0xFFFF])
    buf = cap.buffer.copy()
    for field_off, port_col in ((12, t.sport), (16, t.dport)):
        rows = np.flatnonzero((t.l3 == 4) & (t.proto == 17) & np.isin(port_col, ports) & (t.l4_off >= 0))
        if not len(rows):
            continue
        ip = _ipv4_offsets(cap, rows)
        rows, ip = rows[ip >= 0], ip[ip >= 0]
        base = t.frame_off[rows].astype(np.int64)
        at = base + ip + field_off
        m_old = _words(buf, at, 2)
        _put_be(buf, at, np.full(len(rows), new_words[0]), 2)
        _put_be(buf, at + 2, np.full(len(rows), new_words[1]), 2)
        m_new = _words(buf, at, 2)
        hc = base + ip + 10
        _put_be(buf, hc, _csum_update(_be(buf, hc, 2), m_old, m_new), 2)
        udp = t.l4_off[rows].astype(np.int64)
        uc = udp + 6
        old = _be(buf, uc, 2)
        has = (old != 0) & (udp + 8 <= base + t.caplen[rows].astype(np.int64))
        c = _csum_update(old, m_old, m_new)
        c = np.where(c == 0, 0xFFFF, c)
        _put_be(buf, uc[has], c[has], 2)
    return _capture_from(buf, cap, np.arange(len(t)), t.ts_ns, f"sender rewritten to {address}")


def _rtp_rows(cap, ft, cl):
    """RTP packet rows over UDP of flows (any framing the classification found) and the
    frame-relative offsets of their RTP and UDP headers."""
    from throttledetect.classify.evidence import ENCAP_TCP
    t = cap.packets
    ev = cl.evidence
    encap = np.asarray(ev.rtp_encap_of)
    fo = t.frame_off.astype(np.int64)
    rows = np.flatnonzero((encap >= 0) & (encap != ENCAP_TCP) & (t.proto == 17) & (ft.flow_of >= 0)
                          & (t.payload_off >= 0) & (t.l4_off >= 0))
    hdr = (t.payload_off[rows] - fo[rows]) + np.asarray(ev.rtp_offset_of)[rows].astype(np.int64)
    fits = hdr + 12 <= t.caplen[rows]
    return rows[fits], hdr[fits], (t.l4_off[rows] - fo[rows])[fits]


def prepare_trace(spec: TraceSpec, corpus: Path, seconds: float = DEFAULT_SECONDS) -> BaseTrace:
    """Read, (remap,) loop to `seconds`, classify; find the target flows and their rates."""
    from throttledetect.classify import classify
    from throttledetect.flows import build_flows
    from throttledetect.read import read_capture
    from throttledetect.simulate import local_side_is_a, loop_capture
    path = spec.resolve(corpus)
    if not path.is_file():
        where = "the shared corpus" if spec.source == "corpus" else "the repository"
        raise CorpusMissing(f"{path}: not found ({where}); the validation matrix needs the corpus call traces "
                            f"(../shared/corpus beside the repository, or --corpus DIR / $THROTTLEDETECT_CORPUS)")
    cap = read_capture(str(path))
    if spec.remap_ports:
        cap = remap_sender(cap, spec.remap_ports)
    ft = build_flows(cap)
    cl = classify(cap, ft)
    src_dur = (int(cap.packets.ts_ns.max()) - int(cap.packets.ts_ns.min())) / 1e9
    info = {"name": spec.name, "path": spec.path, "source": spec.source, "role": spec.role, "note": spec.note,
            "source_duration_s": round(src_dur, 3)}
    if spec.role == "call" and src_dur < seconds:
        cap, loop = loop_capture(cap, ft, cl, seconds)
        info["copies"] = loop["copies"]
        ft = build_flows(cap)
        cl = classify(cap, ft)
    else:
        info["copies"] = 1
    t = cap.packets
    info["duration_s"] = round((int(t.ts_ns.max()) - int(t.ts_ns.min())) / 1e9, 3)
    info["packets"] = int(len(t))
    local_is_a, _ = local_side_is_a(ft)
    calls = [i for i in range(len(ft)) if cl.is_call(i)]
    rows, _, _ = _rtp_rows(cap, ft, cl)
    fo = ft.flow_of[rows].astype(np.int64)
    to_local = (ft.dir_of[rows] == 1) == local_is_a[fo]
    rtp_in = np.bincount(fo[to_local], minlength=len(ft))
    rate, targets = {}, []
    for i in calls:
        r = ft.packet_indices(i)
        r = r[(ft.dir_of[r] == 1) == bool(local_is_a[i])]
        if len(r) >= 2:
            span = (int(t.ts_ns[r].max()) - int(t.ts_ns[r].min())) / 1e9
            rate[i] = float(t.wirelen[r].astype(np.float64).sum() * 8 / span) if span > 0 else 0.0
        if spec.role == "call" and rtp_in[i] >= MIN_TARGET_PACKETS and rate.get(i):
            targets.append(i)
    info["calls"] = [{"flow": i, "label": cl.labels[i], "endpoints": f"{ft.endpoint(i, 'a')} <-> {ft.endpoint(i, 'b')}",
                      "rtp_to_local": int(rtp_in[i]), "rate_to_local_bps": round(rate.get(i, 0.0), 1),
                      "target": i in targets} for i in calls]
    return BaseTrace(spec, cap, ft, cl, targets, calls, rate, {i: _flow_key(ft, i) for i in range(len(ft))}, info)


# --------------------------------------------------------------------------- DTX confounder

@dataclass(frozen=True)
class Dtx:
    """Talk spurts and pauses on every audio stream (both directions), as a sender with
    discontinuous transmission and no comfort noise: packets in a pause are never sent, so they
    are removed and the sequence numbers of every later packet of the stream are lowered by the
    count removed (no sequence gap), the RTP timestamps left as they are (they jump over the
    pause), and the marker bit set on the first packet of each talk spurt (RFC 3551 4.1).
    Exponential talk spurts and pauses of ITU-T P.59's means (1.004 s, 1.587 s), pauses of at
    least min_pause_s. Audio = an RTP stream of a call flow at 20-60 packets/s with a median
    payload of at most 300 bytes."""
    talk_mean_s: float = 1.004
    pause_mean_s: float = 1.587
    min_pause_s: float = 0.2
    kind = "dtx"
    verdict = "none"


def _audio_streams(cap, ft, cl):
    rows, hdr, udp = _rtp_rows(cap, ft, cl)
    if not len(rows):
        return []
    t = cap.packets
    base = t.frame_off[rows].astype(np.int64)
    ssrc = _be(cap.buffer, base + hdr + 8, 4)
    fl = ft.flow_of[rows].astype(np.int64)
    dr = ft.dir_of[rows].astype(np.int64)
    order = np.lexsort((rows, t.ts_ns[rows], ssrc, dr, fl))
    rows, hdr, udp, ssrc, fl, dr = (x[order] for x in (rows, hdr, udp, ssrc, fl, dr))
    first = np.ones(len(rows), dtype=bool)
    first[1:] = (fl[1:] != fl[:-1]) | (dr[1:] != dr[:-1]) | (ssrc[1:] != ssrc[:-1])
    starts = np.flatnonzero(first)
    ends = np.append(starts[1:], len(rows))
    out = []
    for a, b in zip(starts, ends):
        if b - a < 50 or not cl.is_call(int(fl[a])):
            continue
        r = rows[a:b]
        span = (int(t.ts_ns[r[-1]]) - int(t.ts_ns[r[0]])) / 1e9
        pps = (b - a - 1) / span if span > 0 else 0.0
        if 20 <= pps <= 60 and np.median(t.payload_wirelen[r]) <= 300:
            out.append((r, hdr[a:b], udp[a:b]))
    return out


def dtx_silence(cap, ft, cl, dtx: Dtx, seed: int):
    """Apply Dtx (see the class) to a capture; returns (new Capture, info)."""
    rng = np.random.default_rng(seed)
    t = cap.packets
    keep = np.ones(len(t), dtype=bool)
    buf = cap.buffer.copy()
    streams = _audio_streams(cap, ft, cl)
    info = {"streams": len(streams), "removed": 0, "pauses": 0}
    for r, hdr, udp in streams:
        ts = t.ts_ns[r].astype(np.int64)
        t0, t1 = int(ts[0]), int(ts[-1])
        # alternating renewal process over [t0, t1]: talk, pause, talk, ...
        talking = rng.random() < dtx.talk_mean_s / (dtx.talk_mean_s + dtx.pause_mean_s)
        now, cuts = t0, []
        while now < t1:
            if talking:
                now += int(rng.exponential(dtx.talk_mean_s) * 1e9)
            else:
                d = max(dtx.min_pause_s, rng.exponential(dtx.pause_mean_s))
                cuts.append((now, now + int(d * 1e9)))
                now += int(d * 1e9)
            talking = not talking
        silent = np.zeros(len(r), dtype=bool)
        for s, e in cuts:
            silent |= (ts >= s) & (ts < e)
        silent[0] = False
        if not silent.any():
            continue
        info["pauses"] += len(cuts)
        removed_before = np.cumsum(silent) - silent        # removed packets before each one
        kept = ~silent
        kr, kh, ku = r[kept], hdr[kept], udp[kept]
        shift = removed_before[kept]
        spurt = np.zeros(len(r), dtype=bool)
        spurt[1:] = silent[:-1] & kept[1:]
        spurt = spurt[kept]
        mod = (shift > 0) | spurt
        kr, kh, ku, shift, spurt = kr[mod], kh[mod], ku[mod], shift[mod], spurt[mod]
        base = t.frame_off[kr].astype(np.int64)
        ws = ku + ((kh - ku) & ~np.int64(1))              # word-aligned (to UDP) start covering RTP bytes 0..3
        m_old = _words(buf, base + ws, 3)
        seq = _be(buf, base + kh + 2, 2)
        _put_be(buf, base + kh + 2, (seq - shift) % (1 << 16), 2)
        buf[base[spurt] + kh[spurt] + 1] |= 0x80
        m_new = _words(buf, base + ws, 3)
        old = _be(buf, base + ku + 6, 2)
        v4 = t.l3[kr] == 4
        upd = ~(v4 & (old == 0)) & (ws + 6 <= t.caplen[kr])
        c = _csum_update(old, m_old, m_new)
        c = np.where(c == 0, 0xFFFF, c)
        _put_be(buf, (base + ku + 6)[upd], c[upd], 2)
        keep[r[silent]] = False
        info["removed"] += int(silent.sum())
    rows = np.flatnonzero(keep)
    return _capture_from(buf, cap, rows, t.ts_ns[rows], "DTX silence"), info


# --------------------------------------------------------------------------- scenarios

@dataclass(frozen=True)
class Scenario:
    name: str
    group: str                   # drop | police | shape | onset | block | confounder
    expected: str                # the verdict an impaired flow should get; "none" for confounders
    kind: str                    # drop | police | shape | block | clean | congest | jitter | dtx
    p: float | None = None
    factor: float | None = None  # police/shape rate = factor x the target flow's to-local rate
    burst_s: float | None = None
    queue_s: float | None = None
    onset_s: float | None = None
    block_s: float | None = None
    jitter_ms: float | None = None
    shared: bool = False         # every target flow of the trace behind one bucket (traces with 2+ targets)

    @property
    def confounder(self) -> bool:
        return self.group == "confounder"

    @property
    def random(self) -> bool:
        return self.kind != "clean"

    def impairment(self, rate_bps: float | None = None, max_packet: float | None = None):
        from throttledetect import simulate as sim
        if self.kind == "drop":
            return sim.Drop(self.p)
        if self.kind == "police":
            rate = self.factor * rate_bps
            return sim.Police(rate, max(float(sim.MTU_BYTES), rate / 8 * self.burst_s), shared=self.shared)
        if self.kind == "shape":
            rate = self.factor * rate_bps
            # A queue that cannot hold a few of the flow's largest packets queues no video frame:
            # such a "shaper" drops like a policer and is called one (detect.PRECEDENCE).
            return sim.Shape(rate, max(3.0 * (max_packet or 0.0), rate / 8 * self.queue_s))
        if self.kind == "block":
            return sim.BlockAfter(self.block_s)
        if self.kind == "congest":
            return sim.Congest()
        if self.kind == "jitter":
            return sim.Jitter(self.jitter_ms)
        if self.kind == "dtx":
            return Dtx()
        return None


def _scenarios() -> tuple:
    out = [Scenario(f"drop {p:g}", "drop", "dropping", "drop", p=p) for p in (0.01, 0.02, 0.05, 0.10, 0.30)]
    for f in (0.5, 0.7, 0.85, 0.9):
        for b, bs in (("small", 0.020), ("large", 0.250)):
            out.append(Scenario(f"police {f:g}x burst {b}", "police", "policing", "police", factor=f, burst_s=bs))
    for f in (0.5, 0.7):
        for q, qs in (("short", 0.050), ("long", 0.500)):
            out.append(Scenario(f"shape {f:g}x queue {q}", "shape", "shaping", "shape", factor=f, queue_s=qs))
    out.append(Scenario("police 0.7x all call flows", "police", "policing", "police", factor=0.7, burst_s=0.250,
                        shared=True))
    out.append(Scenario("police 0.7x from 20 s", "onset", "policing", "police", factor=0.7, burst_s=0.020,
                        onset_s=20.0))
    out.append(Scenario("drop 0.05 from 20 s", "onset", "dropping", "drop", p=0.05, onset_s=20.0))
    out.append(Scenario("block after 15 s", "block", "blocking", "block", block_s=15.0))
    out += [Scenario("clean", "confounder", "none", "clean"),
            Scenario("congest (all flows)", "confounder", "none", "congest"),
            Scenario("jitter 20 ms (all flows)", "confounder", "none", "jitter", jitter_ms=20.0),
            Scenario("jitter 50 ms (all flows)", "confounder", "none", "jitter", jitter_ms=50.0),
            Scenario("DTX silence (audio)", "confounder", "none", "dtx")]
    return tuple(out)


SCENARIOS = _scenarios()
SCENARIO_BY_NAME = {s.name: s for s in SCENARIOS}


def describe_scenario(s: Scenario) -> str:
    if s.kind == "drop":
        d = f"Bernoulli drop p = {s.p:g}"
    elif s.kind == "police" and s.shared:
        d = (f"one token bucket for all the trace's target flows together, at {s.factor:g} x their summed rate, "
             f"burst {s.burst_s * 1000:g} ms at the rate (traces with two or more target flows)")
    elif s.kind == "police":
        d = f"token-bucket policer at {s.factor:g} x flow rate, burst max(1500 B, {s.burst_s * 1000:g} ms at the rate)"
    elif s.kind == "shape":
        d = (f"shaper at {s.factor:g} x flow rate, queue max({s.queue_s * 1000:g} ms at the rate, 3 of the flow's "
             f"largest packets), bucket 1 MTU")
    elif s.kind == "block":
        d = f"everything dropped from {s.block_s:g} s after the flow's first packet"
    elif s.kind == "clean":
        d = "the looped trace as is (deterministic: one trial per trace)"
    elif s.kind == "congest":
        d = "Gilbert-Elliott congested shared link on every flow (simulate.Congest defaults: ~3 % loss, 60 ms queue)"
    elif s.kind == "jitter":
        d = f"exponential extra delay of mean {s.jitter_ms:g} ms on every packet of every flow (re-sorted)"
    else:
        d = "talk spurts / pauses on every audio stream, no sequence gap (Dtx)"
    if s.onset_s:
        d += f", from {s.onset_s:g} s"
    return d


# --------------------------------------------------------------------------- trials

_BASES: dict = {}
_CONFIG: dict = {"corpus": None, "seconds": DEFAULT_SECONDS}


def _init_worker(corpus, seconds, trace_names) -> None:
    config = {"corpus": Path(corpus), "seconds": float(seconds)}
    if config != _CONFIG:
        _BASES.clear()              # prepared for another corpus or length
        _CONFIG.update(config)
    for name in trace_names:           # prepare (and compile) once per worker
        _base(name)


def _base(name: str) -> BaseTrace:
    if name not in _BASES:
        spec = next(s for s in TRACES if s.name == name)
        _BASES[name] = prepare_trace(spec, _CONFIG["corpus"], _CONFIG["seconds"])
    return _BASES[name]


def trial_seed(trace: str, scenario: str, i: int) -> int:
    return (zlib.crc32(f"{scenario}|{trace}".encode()) + i) & 0xFFFFFFFF


def _combine(verdicts: list) -> str:
    for k in PRECEDENCE:
        if k in verdicts:
            return k
    if "inconclusive" in verdicts:
        return "inconclusive"
    return "none"


def run_trial(trace: str, scenario: str, i: int) -> dict:
    """One trial: impair (or not) the looped base trace, analyze it, one record per unit."""
    from throttledetect.pipeline import analyze_capture
    from throttledetect.simulate import simulate
    from throttledetect.write import write_rows
    from throttledetect.read import read_capture
    b = _base(trace)
    sc = SCENARIO_BY_NAME[scenario]
    seed = trial_seed(trace, scenario, i)
    t_start, cpu_start = time.perf_counter(), time.process_time()
    rec = {"trace": trace, "scenario": scenario, "seed_index": i, "seed": seed, "target": None}
    if sc.confounder:
        target = None
    else:
        if not b.targets:
            raise ValueError(f"trace {trace} has no target flow")
        target = b.targets[i % len(b.targets)]
        rec["target"] = target
    targets = list(b.targets) if sc.shared else ([target] if target is not None else [])
    if sc.shared:
        rec["target"] = targets
    imp = sc.impairment(sum(b.rate_bps[f] for f in targets) if targets else None,
                        max(_largest_to_local(b, f) for f in targets) if targets else None)
    truth_rate = getattr(imp, "rate_bps", None)
    untouched: set = set()
    if sc.kind == "clean":
        cap = b.cap
    elif sc.kind == "dtx":
        cap, rec["dtx"] = dtx_silence(b.cap, b.ft, b.cl, imp, seed)
    else:
        sel = "all" if sc.confounder else targets
        res = simulate(b.cap, b.ft, b.cl, imp, select=sel, direction="to-local", onset_s=sc.onset_s, seed=seed)
        # A selected flow the impairment never touched (nothing dropped, nothing delayed: a large
        # bucket that always had room for its packets) is not throttled in effect: scored as neither
        # a target nor a bystander.
        for f in res.truth["flows"]:
            if f["id"] in targets:
                m = [v for v in f["measured"].values() if v["impaired"]]
                if m and all(v["dropped"] == 0 and not v.get("delay_ms_max") for v in m):
                    untouched.add(f["id"])
        if target is not None:
            fl = next(f for f in res.truth["flows"] if f["id"] == target)
            m = [v for v in fl["measured"].values() if v["impaired"]]
            if m:
                rec["measured_drop_fraction"] = m[0]["drop_fraction"]
                rec["measured_rate_out_bps"] = m[0]["rate_out_bps_after_onset"]
        fd, tmp = tempfile.mkstemp(prefix="throttledetect-validate-", suffix=".pcap")
        os.close(fd)
        try:
            write_rows(b.cap, res.rows, res.ts_ns, tmp)
            cap = read_capture(tmp)
        finally:
            os.unlink(tmp)
    a = analyze_capture(cap)
    rep = a.detections
    by_key: dict = {}
    for j in range(len(a.flows)):
        by_key.setdefault(_flow_key(a.flows, j), []).append(j)
    units = []
    for f in range(len(b.ft)):
        new = by_key.get(b.keys[f], [])
        tested = [j for j in new if rep.tested[j]]
        if f not in b.calls and not tested:
            continue
        verdict = _combine([rep.verdict(j) for j in new])
        role = ("untouched" if f in untouched else "target") if f in targets else \
            ("confounder" if sc.confounder else "bystander")
        u = {"flow": f, "label": b.cl.labels[f], "role": role, "tested": bool(tested), "flows": len(new),
             "verdict": verdict}
        if verdict in KINDS:
            # a cap shared with the other flows from the host (policing.detect_policing_flow)
            rates = [float(d.estimates.get("host_pair_rate_bps") or d.estimates["rate_bps"])
                     for j in new for d in rep.detected(j, verdict) if d.estimates.get("rate_bps")]
            if rates:
                u["rate_bps"] = float(np.median(rates))
            ranges = [d.estimates for j in new for d in rep.detected(j, verdict) if d.estimates.get("rate_range_bps")]
            if ranges:
                e = ranges[0]
                pre = "host_pair_" if e.get("host_pair_rate_range_bps") else ""
                lo, hi = e[pre + "rate_range_bps"]
                u["rate_range_bps"] = [float(lo), None if e.get(pre + "rate_range_open_above") else float(hi)]
                u["rate_identifiable"] = bool(e.get(pre + "rate_identifiable"))
        elif verdict == "inconclusive":
            # the reason that made the flow inconclusive first (a detector that saw a sign worth a look)
            inc = [d for j in new for d in rep.per_flow[j] if d.decision == "inconclusive" and d.reason]
            why = [d.reason for d in sorted(inc, key=lambda d: not d.estimates.get("suspect"))]
            if why:
                u["reason"] = why[0][:160]
        if role == "target" and truth_rate is not None:
            u["truth_rate_bps"] = float(truth_rate)
        units.append(u)
    rec["units"] = units
    rec["seconds"] = round(time.perf_counter() - t_start, 3)
    rec["cpu_s"] = round(time.process_time() - cpu_start, 3)
    return rec


def _largest_to_local(b: BaseTrace, f: int) -> float:
    """The largest frame (link-layer bytes) of base flow f towards the capture point."""
    from throttledetect.flows import local_side_is_a
    rows = b.ft.packet_indices(f)
    d_in = 1 if local_side_is_a(b.ft)[0][f] else 0
    rows = rows[b.ft.dir_of[rows] == d_in]
    return float(b.cap.packets.wirelen[rows].max()) if len(rows) else 0.0


def _run_task(task):
    trace, scenario, i = task
    try:
        return run_trial(trace, scenario, i)
    except Exception as exc:   # noqa: BLE001 - a failed trial is reported, not fatal to the matrix
        return {"trace": trace, "scenario": scenario, "seed_index": i, "error": f"{type(exc).__name__}: {exc}",
                "units": []}


def plan(traces, scenarios, seeds: int, confounder_seeds: int) -> list:
    """The (trace, scenario, seed index) tasks. Impairments need a target flow; clean is
    deterministic (one trial); short traces take the confounders only."""
    tasks = []
    for spec in traces:
        for sc in scenarios:
            if not sc.confounder and spec.role != "call":
                continue
            n_targets = len(_BASES[spec.name].targets) if spec.name in _BASES else spec.target_flows
            if sc.shared and n_targets < 2:
                continue
            n = 1 if not sc.random else (confounder_seeds if sc.confounder else seeds)
            tasks += [(spec.name, sc.name, i) for i in range(n)]
    return tasks


def run_matrix(traces=TRACES, scenarios=SCENARIOS, *, seeds: int, confounder_seeds: int, jobs: int = 1,
               corpus: Path | None = None, seconds: float = DEFAULT_SECONDS, progress=None) -> dict:
    """Run every trial; returns {"traces": info, "trials": records, "runtime_s": ...}."""
    corpus = Path(corpus) if corpus is not None else default_corpus()
    needs_corpus = [s for s in traces if s.source == "corpus"]
    if needs_corpus and not corpus.is_dir():
        raise CorpusMissing(f"corpus directory {corpus} not found: the validation matrix reads the shared call "
                            f"traces in place (../shared/corpus beside the repository, --corpus DIR, or "
                            f"$THROTTLEDETECT_CORPUS)")
    for s in traces:
        if not s.resolve(corpus).is_file():
            prepare_trace(s, corpus, seconds)       # raises CorpusMissing with the path
    names = [s.name for s in traces]
    t0 = time.perf_counter()
    _init_worker(corpus, seconds, names)            # also gives the trace info (and checks targets)
    info = [_BASES[n].info for n in names]
    for s in traces:
        if s.role == "call" and not _BASES[s.name].targets:
            raise ValueError(f"trace {s.name}: no call flow with {MIN_TARGET_PACKETS}+ RTP packets towards the "
                             f"capture point to impair")
    tasks = plan(traces, scenarios, seeds, confounder_seeds)
    records = []
    if jobs <= 1:
        for k, task in enumerate(tasks):
            records.append(_run_task(task))
            if progress:
                progress(k + 1, len(tasks), time.perf_counter() - t0)
    else:
        import multiprocessing as mp
        ctx = mp.get_context("spawn")
        with ctx.Pool(jobs, initializer=_init_worker, initargs=(str(corpus), seconds, names)) as pool:
            for k, rec in enumerate(pool.imap_unordered(_run_task, tasks, chunksize=4)):
                records.append(rec)
                if progress:
                    progress(k + 1, len(tasks), time.perf_counter() - t0)
    order = {(s.name, sc.name): (a, b) for a, s in enumerate(traces) for b, sc in enumerate(scenarios)}
    records.sort(key=lambda r: (order[(r["trace"], r["scenario"])][1], order[(r["trace"], r["scenario"])][0],
                                r["seed_index"]))
    return {"traces": info, "trials": records, "runtime_s": round(time.perf_counter() - t0, 1),
            "cpu_s": round(sum(r.get("cpu_s", 0.0) for r in records), 1), "tasks": len(tasks)}


# --------------------------------------------------------------------------- scoring

def proportion(k: int, n: int) -> dict:
    """k of n with its 95 % Wilson score interval (None when n = 0)."""
    if n == 0:
        return {"k": 0, "n": 0, "rate": None, "ci": None}
    from scipy.stats import binomtest
    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=0.95, method="wilson")
    return {"k": int(k), "n": int(n), "rate": k / n, "ci": [float(ci.low), float(ci.high)]}


def _quantile(x, q):
    return float(np.quantile(np.asarray(x, dtype=float), q)) if len(x) else None


def score_units(sc: Scenario, records: list) -> dict:
    """The table row of one scenario from its trial records (hand-made records work too)."""
    tgt = [u for r in records for u in r["units"] if u["role"] == "target"]
    neg = [u for r in records for u in r["units"] if u["role"] in ("bystander", "confounder")]
    det = [u for u in tgt if u["verdict"] in KINDS]
    right = [u for u in det if u["verdict"] == sc.expected]
    rated = [u for u in right if u.get("rate_bps") and u.get("truth_rate_bps")]
    errs = [abs(u["rate_bps"] - u["truth_rate_bps"]) / u["truth_rate_bps"] for u in rated]
    ident = [abs(u["rate_bps"] - u["truth_rate_bps"]) / u["truth_rate_bps"] for u in rated
             if u.get("rate_identifiable", True)]
    ranged = [u for u in rated if u.get("rate_range_bps")]
    covers = [u["rate_range_bps"][0] * 0.99 <= u["truth_rate_bps"]
              and (u["rate_range_bps"][1] is None or u["truth_rate_bps"] <= u["rate_range_bps"][1] * 1.01)
              for u in ranged]
    kinds = {}
    for u in det:
        kinds[u["verdict"]] = kinds.get(u["verdict"], 0) + 1
    fp_kinds = {}
    for u in neg:
        if u["verdict"] in KINDS:
            fp_kinds[u["verdict"]] = fp_kinds.get(u["verdict"], 0) + 1
    units = tgt if not sc.confounder else neg
    reasons: dict = {}
    for u in units:
        if u["verdict"] == "inconclusive":
            k = reason_key(u.get("reason", ""))
            reasons[k] = reasons.get(k, 0) + 1
    by_target = {}
    flows = sorted({u["flow"] for u in tgt})
    if len(flows) > 1:
        for f in flows:
            fu = [u for u in tgt if u["flow"] == f]
            by_target[f"f{f}"] = proportion(sum(u["verdict"] in KINDS for u in fu), len(fu))
    return {
        "scenario": sc.name, "group": sc.group, "expected": sc.expected,
        "trials": len(records), "errors": sum(1 for r in records if r.get("error")),
        "detection": proportion(len(det), len(tgt)) if not sc.confounder else None,
        "kind_right": proportion(len(right), len(det)) if not sc.confounder else None,
        "detected_kinds": kinds,
        "inconclusive": proportion(sum(u["verdict"] == "inconclusive" for u in units), len(units)),
        "false_positive": proportion(sum(u["verdict"] in KINDS for u in neg), len(neg)),
        "fp_kinds": fp_kinds,
        "inconclusive_reasons": dict(sorted(reasons.items(), key=lambda kv: -kv[1])),
        "detection_by_target": by_target,
        "rate_error": {"n": len(errs), "median": _quantile(errs, 0.5), "p90": _quantile(errs, 0.9),
                       "max": max(errs) if errs else None,
                       "within_5pct": proportion(sum(e <= 0.05 for e in errs), len(errs)),
                       "identifiable_within_5pct": proportion(sum(e <= 0.05 for e in ident), len(ident)),
                       "range_covers_truth": proportion(sum(covers), len(covers))}
        if sc.kind in ("police", "shape") else None,
    }


def reason_key(reason: str) -> str:
    """An inconclusive reason with its numbers blanked, to count alike reasons together."""
    import re
    return re.sub(r"\d+(?:\.\d+)?", "#", reason or "(no reason given)")[:100]


def score(result: dict, scenarios=SCENARIOS) -> dict:
    """Rows pooled over the traces in the goals (role "call"), rows per trace, and the goals."""
    roles = {t["name"]: t["role"] for t in result["traces"]}
    by = {}
    for r in result["trials"]:
        by.setdefault(r["scenario"], []).append(r)
    rows, per_trace = [], {}
    for sc in scenarios:
        recs = by.get(sc.name, [])
        if not recs:
            continue
        rows.append(score_units(sc, [r for r in recs if roles.get(r["trace"]) == "call"]))
        for name in dict.fromkeys(r["trace"] for r in recs):
            per_trace.setdefault(name, []).append(score_units(sc, [r for r in recs if r["trace"] == name]))
    return {"rows": rows, "per_trace": per_trace, "goals": goals(rows)}


GOALS = {"detection": 0.99, "false_positive": 0.01, "kind_right": 0.95, "rate_error": 0.05, "rate_share": 0.95}


def _pool(rows, key, pred):
    k = n = 0
    for r in rows:
        if pred(r) and r.get(key):
            k += r[key]["k"]
            n += r[key]["n"]
    return proportion(k, n)


def _fmt_p(p, digits=3) -> str:
    if p is None or p["n"] == 0:
        return "n/a"
    return f"{p['rate']:.{digits}f} ({p['k']}/{p['n']}, CI {p['ci'][0]:.{digits}f}-{p['ci'][1]:.{digits}f})"


def goals(rows: list) -> list:
    """Each goal of issue 5 with MET / NOT MET (point estimates against the goal; the interval
    says how firmly), on the traces with a call of the full length."""
    sc = {s.name: s for s in SCENARIOS}
    out = []

    def add(name, met, text, rows_used):
        out.append({"goal": name, "met": bool(met) if met is not None else None, "detail": text,
                    "scenarios": rows_used})

    drops = [r for r in rows if sc[r["scenario"]].kind == "drop" and (sc[r["scenario"]].p or 0) >= 0.02]
    pol = [r for r in rows if sc[r["scenario"]].kind == "police" and (sc[r["scenario"]].factor or 1) <= 0.85]
    for label, sel in (("detection >= 0.99 for drop >= 2 %", drops),
                       ("detection >= 0.99 for policer <= 0.85x", pol)):
        if not sel:
            add(label, None, "not run", [])
            continue
        worst = min(sel, key=lambda r: r["detection"]["rate"] if r["detection"]["n"] else 2)
        pooled = _pool(sel, "detection", lambda r: True)
        met = all(r["detection"]["n"] and r["detection"]["rate"] >= GOALS["detection"] for r in sel)
        add(label, met, f"pooled {_fmt_p(pooled)}; worst: {worst['scenario']} {_fmt_p(worst['detection'])}",
            [r["scenario"] for r in sel])
    conf = [r for r in rows if sc[r["scenario"]].confounder]
    if conf:
        worst = max(conf, key=lambda r: r["false_positive"]["rate"] if r["false_positive"]["n"] else -1)
        met = all(r["false_positive"]["n"] and r["false_positive"]["rate"] <= GOALS["false_positive"] for r in conf)
        add("false positives <= 0.01 on every confounder", met,
            "; ".join(f"{r['scenario']}: {_fmt_p(r['false_positive'])}" for r in conf) + f". Worst: {worst['scenario']}",
            [r["scenario"] for r in conf])
    imp = [r for r in rows if not sc[r["scenario"]].confounder]
    if imp:
        pooled = _pool(imp, "kind_right", lambda r: True)
        worst = min((r for r in imp if r["kind_right"]["n"]), key=lambda r: r["kind_right"]["rate"], default=None)
        add("kind right >= 0.95 (of detections, all impairments pooled)",
            pooled["n"] > 0 and pooled["rate"] >= GOALS["kind_right"],
            f"pooled {_fmt_p(pooled)}" + (f"; worst: {worst['scenario']} {_fmt_p(worst['kind_right'])}" if worst else ""),
            [r["scenario"] for r in imp])
    polr = [r for r in rows if sc[r["scenario"]].kind == "police" and r.get("rate_error")]
    if polr:
        k = sum(r["rate_error"]["within_5pct"]["k"] for r in polr)
        n = sum(r["rate_error"]["within_5pct"]["n"] for r in polr)
        share = proportion(k, n)
        ki = sum(r["rate_error"].get("identifiable_within_5pct", {}).get("k", 0) for r in polr)
        ni = sum(r["rate_error"].get("identifiable_within_5pct", {}).get("n", 0) for r in polr)
        kc = sum(r["rate_error"].get("range_covers_truth", {}).get("k", 0) for r in polr)
        nc = sum(r["rate_error"].get("range_covers_truth", {}).get("n", 0) for r in polr)
        add("policer rate within 5 % (>= 95 % of correct policing detections)",
            n > 0 and share["rate"] >= GOALS["rate_share"],
            f"within 5 %: {_fmt_p(share)}; where the detector calls the rate identifiable: "
            f"{_fmt_p(proportion(ki, ni))}; reported plausible range covers the configured rate: "
            f"{_fmt_p(proportion(kc, nc))}; per scenario median/p90: "
            + "; ".join(f"{r['scenario']} {_pct(r['rate_error']['median'])}/{_pct(r['rate_error']['p90'])}"
                        for r in polr),
            [r["scenario"] for r in polr])
    return out


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f} %"


def _cell(p, digits=2) -> str:
    if p is None:
        return "—"
    if p["n"] == 0:
        return "0/0"
    return f"{p['rate']:.{digits}f} ({p['k']}/{p['n']}) [{p['ci'][0]:.{digits}f}, {p['ci'][1]:.{digits}f}]"


def format_table(scored: dict) -> str:
    """The main table (markdown), the per-trace matrix, and the goals block."""
    lines = ["| scenario | expected | trials | detection | kind right | inconclusive | false positive | "
             "rate error median / p90 (n) | rate range covers truth |",
             "|---|---|---:|---|---|---|---|---|---|"]
    for r in scored["rows"]:
        re_ = r["rate_error"]
        rate = "—" if re_ is None else (f"{_pct(re_['median'])} / {_pct(re_['p90'])} ({re_['n']})" if re_["n"] else "0 det.")
        cov_p = (re_ or {}).get("range_covers_truth")
        cov = f"{cov_p['k']}/{cov_p['n']}" if cov_p and cov_p["n"] else "—"
        fp = _cell(r["false_positive"])
        if r["fp_kinds"]:
            fp += " " + ",".join(f"{k}:{v}" for k, v in sorted(r["fp_kinds"].items()))
        kr = _cell(r["kind_right"])
        other = {k: v for k, v in r["detected_kinds"].items() if k != r["expected"]}
        if other:
            kr += " else " + ",".join(f"{k}:{v}" for k, v in sorted(other.items()))
        lines.append(f"| {r['scenario']} | {r['expected']} | {r['trials']}"
                     + (f" ({r['errors']} failed)" if r["errors"] else "")
                     + f" | {_cell(r['detection'])} | {kr} | {_cell(r['inconclusive'])} | {fp} | {rate} | {cov} |")
    out = ["\n".join(lines), ""]
    # per trace: detection (impairments) or false-positive (confounders) rate
    names = list(scored["per_trace"])
    if names:
        hdr = "| scenario | " + " | ".join(names) + " |"
        sep = "|---|" + "---|" * len(names)
        rows = [hdr, sep]
        table = {n: {r["scenario"]: r for r in scored["per_trace"][n]} for n in names}
        scen = list(dict.fromkeys(r["scenario"] for n in names for r in scored["per_trace"][n]))
        for s in scen:
            cells = []
            for n in names:
                r = table[n].get(s)
                if r is None:
                    cells.append("")
                    continue
                p = r["false_positive"] if r["detection"] is None else r["detection"]
                tag = "FP " if r["detection"] is None else ""
                c = f"{tag}{p['k']}/{p['n']}" if p["n"] else "0/0"
                if r["detection"] is not None and r["kind_right"]["n"] and r["kind_right"]["k"] < r["kind_right"]["n"]:
                    c += f" (kind {r['kind_right']['k']}/{r['kind_right']['n']})"
                if r["inconclusive"]["k"]:
                    c += f" inc {r['inconclusive']['k']}"
                if r.get("detection_by_target"):
                    c += " [" + ", ".join(f"{f} {p['k']}/{p['n']}" for f, p in r["detection_by_target"].items()) + "]"
                cells.append(c)
            rows.append(f"| {s} | " + " | ".join(cells) + " |")
        out += ["Per trace: impairments detected/impaired flows (kind right/detected when not all; [per target "
                "flow] when a trace has several), confounders FP = throttling verdicts/flows tested; "
                "inc = inconclusive.", "", "\n".join(rows), ""]
    why = [(r["scenario"], k, n) for r in scored["rows"] for k, n in list(r.get("inconclusive_reasons", {}).items())[:2]]
    if why:
        out += ["Most common reasons for inconclusive (numbers blanked as #; target flows, or every flow of a "
                "confounder):", ""]
        out += [f"- {s}: {n}x \"{k}\"" for s, k, n in why]
        out.append("")
    out.append("Goals (on the traces with a call of the full length):")
    for g in scored["goals"]:
        state = "NOT RUN" if g["met"] is None else ("MET" if g["met"] else "NOT MET")
        out.append(f"- {state}: {g['goal']}: {g['detail']}")
    return "\n".join(out)


def to_json(result: dict, scored: dict, meta: dict) -> dict:
    return {"schema": SCHEMA, **meta, "runtime_s": result["runtime_s"], "trial_cpu_s": result.get("cpu_s"),
            "traces": result["traces"],
            "scenarios": [dict(asdict(s), description=describe_scenario(s)) for s in SCENARIOS],
            "table": scored["rows"], "per_trace": scored["per_trace"], "goals": scored["goals"],
            "trials": result["trials"]}


def detector_fingerprint() -> str:
    """sha256 (12 hex digits) of the detector sources (throttledetect/detect/*.py): which
    detectors a table measured, committed or not."""
    import hashlib
    h = hashlib.sha256()
    for p in sorted((REPO / "throttledetect" / "detect").glob("*.py")):
        h.update(p.name.encode() + b"\0" + p.read_bytes())
    return h.hexdigest()[:12]


def git_head() -> str | None:
    import subprocess
    try:
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def now_utc() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
