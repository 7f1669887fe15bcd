"""Bases: real call captures that trials impair, discovered by the classifier (no list of names).

Every capture under the shared corpus (``ndpi/pcap/*``, ``external/*``) and the project's own
``captures/*.pcap`` is read, its flows built and classified (``throttledetect.classify``); a
capture is a base when it holds call media:

- a **media flow** is a call flow (``labels.is_call``) with at least MIN_PACKETS packets in each
  direction inside the span where both directions are active, that span at least MIN_TWO_WAY_S
  long, and at least MIN_PPS packets/s each way in it. Why: speech codecs send 16-50 packets/s
  (60 ms Telegram frames to 20 ms Opus/G.711), so 1.5 s of a call in both directions is 25-75
  packets each way; signalling and keepalives (SIP, MEGACO, STUN consent every 0.5-5 s) stay under
  3 packets/s however long they last; and below ~40 packets a flow is too little to loop into a
  call of a minute (the 33 media packets of a WhatsApp snippet would repeat a 1.7 s sample 35 times).
- a capture with a media flow is a **two-way base**. Without one, a call flow with MIN_PACKETS
  packets over MIN_TWO_WAY_S (at MIN_PPS) arriving at the capture point, whatever little leaves it,
  makes a **one-way base** (a stream recorded at the receiver only, or answered by a sparse
  trickle: a T.38 fax, a one-way SIP stream). A loopback capture (both
  endpoints one address, e.g. 127.0.0.1) has its sender rewritten to LOOPBACK_SENDER first, so that
  the stream arrives at the capture point instead of leaving it.
- the base's **app** is the label of its media flows (the one with the most media packets).
- captures whose manifest (``captures/MANIFEST.json``) records throttling (truth kind other than
  ``none``) are impaired already: they are not bases.

Each base is cut to its call and looped (rewrite.loop_capture): the span of two-way media of its
main media flow (the most packets) is repeated until it lasts at least LOOP_SECONDS; what
preceded it since the first packet of the app's call flows still alive when media starts (the
call's setup: STUN, relay probes, signalling), at most PRE_ROLL_S, is kept once before it. RTP streams keep continuous sequence
numbers and timestamps, TCP connections continuous sequence space; flows without readable RTP are
repeated by time only, their payload untouched.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from throttledetect import rewrite

REPO = Path(__file__).resolve().parents[2]
MIN_PACKETS = 40
MIN_TWO_WAY_S = 1.5
MIN_PPS = 3.0
LOOP_SECONDS = 60.0
PRE_ROLL_S = 30.0
LOOPBACK_SENDER = "198.51.100.7"       # TEST-NET-2
HIDDEN_SUFFIX = "#hidden-rtp"
CONTROL_MIN_PACKETS = 50               # a control flow's packets with a loss signal (RTP or TCP data)
CORPUS_GLOBS = ("ndpi/pcap/*", "external/*")
PROJECT_GLOBS = ("captures/*.pcap",)


class CorpusMissing(RuntimeError):
    pass


def default_corpus() -> Path:
    env = os.environ.get("THROTTLEDETECT_CORPUS")
    return Path(env) if env else REPO.parent / "shared" / "corpus"


def candidate_files(corpus: Path | None) -> list[tuple[str, Path]]:
    """(id, path) of every capture that discovery looks at: the corpus's call-capable folders and
    the project's captures without recorded throttling. id = path relative to its root."""
    out = []
    if corpus is not None and Path(corpus).is_dir():
        for g in CORPUS_GLOBS:
            out += [(str(p.relative_to(corpus)), p) for p in sorted(Path(corpus).glob(g)) if p.is_file()]
    manifest = REPO / "captures" / "MANIFEST.json"
    throttled = set()
    if manifest.is_file():
        for c in json.loads(manifest.read_text()).get("captures", []):
            if (c.get("truth") or {}).get("kind", "none") not in ("none", None):
                throttled.add(c["file"])
    for g in PROJECT_GLOBS:
        out += [(str(p.relative_to(REPO)), p) for p in sorted(REPO.glob(g)) if p.is_file() and p.name not in throttled]
    return out


# --------------------------------------------------------------------------- discovery

@dataclass
class BaseSpec:
    """What discovery found in one capture (JSON-serialisable; workers prepare from it)."""
    id: str                      # path relative to the corpus or the repository
    path: str
    app: str
    kind: str                    # "two-way" | "one-way"
    media_flows: list            # dicts: label, endpoints, key, rtp, packets in/out, two_way_s
    labels: list                 # call labels of the media flows
    rtp: bool                    # any media flow carries readable RTP towards the capture point
    two_way_s: float             # longest span of two-way media of one flow
    window_ns: list              # [keep_from, loop_from, loop_to] absolute, for rewrite.loop_capture
    loopback_remap: list = field(default_factory=list)   # flow keys whose sender was rewritten
    hidden: bool = False         # the twin with its RTP and RTCP made unreadable (hidden_twins)

    @property
    def name(self) -> str:
        return Path(self.id).name


def flow_key(ft, i: int) -> tuple:
    """Transport and unordered endpoints: the same flow in a capture and in its impaired copy."""
    a = (int(ft.a_hi[i]), int(ft.a_lo[i]), int(ft.a_port[i]))
    b = (int(ft.b_hi[i]), int(ft.b_lo[i]), int(ft.b_port[i]))
    return (int(ft.proto[i]),) + (a + b if a <= b else b + a)


def _read(path):
    from throttledetect.classify import classify
    from throttledetect.flows import build_flows
    from throttledetect.read import read_capture
    cap = read_capture(str(path))
    ft = build_flows(cap)
    return cap, ft, classify(cap, ft)


def _remap_loopback(cap, ft, cl):
    """Rewrite the sender of loopback call flows (both endpoints one address) to LOOPBACK_SENDER:
    the side that sent more packets becomes a remote host. Returns (capture, keys remapped)."""
    buf = None
    keys = []
    for i in range(len(ft)):
        if not cl.is_call(i) or ft.a_hi[i] != ft.b_hi[i] or ft.a_lo[i] != ft.b_lo[i] or ft.proto[i] != 17:
            continue
        if max(ft.packets_ab[i], ft.packets_ba[i]) < MIN_PACKETS:
            continue
        rows = ft.packet_indices(i)
        sender = 0 if ft.packets_ab[i] >= ft.packets_ba[i] else 1
        d = ft.dir_of[rows]
        buf = cap.buffer.copy() if buf is None else buf
        rewrite.rewrite_endpoint(buf, cap, rows[d == sender], "src", LOOPBACK_SENDER)
        rewrite.rewrite_endpoint(buf, cap, rows[d != sender], "dst", LOOPBACK_SENDER)
        keys.append(flow_key(ft, i))
    if buf is None:
        return cap, []
    t = cap.packets
    return rewrite.build_capture(buf, cap, np.arange(len(t)), t.ts_ns, f"loopback sender -> {LOOPBACK_SENDER}"), keys


def media_flows(cap, ft, cl) -> tuple[list, list]:
    """(two-way media flows, one-way to-local media flows) as dicts; criteria in the module doc."""
    from throttledetect.flows import local_side_is_a
    local_is_a, _ = local_side_is_a(ft)
    ts = cap.packets.ts_ns.astype(np.int64)
    two, one = [], []
    enc = np.asarray(cl.evidence.rtp_encap_of)
    for i in range(len(ft)):
        if not cl.is_call(i) or ft.packets_ab[i] + ft.packets_ba[i] < MIN_PACKETS:
            continue
        r = ft.packet_indices(i)
        tl = (ft.dir_of[r] == 1) == bool(local_is_a[i])
        t_in, t_out = ts[r[tl]], ts[r[~tl]]
        entry = {"flow": i, "label": cl.labels[i], "a": ft.endpoint(i, "a"), "b": ft.endpoint(i, "b"),
                 "key": list(flow_key(ft, i)), "packets_in": int(len(t_in)), "packets_out": int(len(t_out)),
                 "rtp_in": int((enc[r[tl]] >= 0).sum()), "rtp_out": int((enc[r[~tl]] >= 0).sum())}
        entry["rtp"] = entry["rtp_in"] + entry["rtp_out"] >= MIN_PACKETS // 2
        if len(t_in) and len(t_out):
            lo, hi = max(t_in.min(), t_out.min()), min(t_in.max(), t_out.max())
            span = (hi - lo) / 1e9
            n_in = int(((t_in >= lo) & (t_in <= hi)).sum())
            n_out = int(((t_out >= lo) & (t_out <= hi)).sum())
            if span >= MIN_TWO_WAY_S and min(n_in, n_out) >= MIN_PACKETS and min(n_in, n_out) / span >= MIN_PPS:
                two.append(dict(entry, two_way_s=round(span, 3), start_ns=int(lo), end_ns=int(hi)))
                continue
        if len(t_in) >= MIN_PACKETS:           # media arriving; what leaves is sparse or absent
            span = (t_in.max() - t_in.min()) / 1e9
            if span >= MIN_TWO_WAY_S and len(t_in) / span >= MIN_PPS:
                one.append(dict(entry, two_way_s=0.0, start_ns=int(t_in.min()), end_ns=int(t_in.max())))
    return two, one


def discover_file(item: tuple[str, str]) -> dict:
    """Discovery of one capture: {"id", "path", "base": BaseSpec dict or None, "why": ...}."""
    bid, path = item
    try:
        cap, ft, cl = _read(path)
    except Exception as exc:     # noqa: BLE001 - an unreadable capture is reported, not a base
        return {"id": bid, "path": str(path), "base": None, "why": f"unreadable: {exc}"}
    remapped = []
    if any(cl.is_call(i) and ft.a_hi[i] == ft.b_hi[i] and ft.a_lo[i] == ft.b_lo[i] for i in range(len(ft))):
        cap2, remapped = _remap_loopback(cap, ft, cl)
        if remapped:
            from throttledetect.classify import classify
            from throttledetect.flows import build_flows
            cap, ft = cap2, build_flows(cap2)
            cl = classify(cap, ft)
    two, one = media_flows(cap, ft, cl)
    calls = sum(1 for i in range(len(ft)) if cl.is_call(i))
    media = two or one
    if not media:
        return {"id": bid, "path": str(path), "base": None,
                "why": f"{calls} call flow(s), none with {MIN_PACKETS}+ packets each way over {MIN_TWO_WAY_S} s"
                if calls else "no call flow"}
    by_label: dict = {}
    for m in media:
        by_label[m["label"]] = by_label.get(m["label"], 0) + m["packets_in"] + m["packets_out"]
    app = max(by_label, key=by_label.get)
    # the loop repeats the span of the main media flow (the most packets); the other media flows
    # go along with whatever of them falls in it
    main = max(media, key=lambda m: m["packets_in"] + m["packets_out"])
    loop_from, loop_to = main["start_ns"], main["end_ns"]
    # kept once before it: the call's setup, i.e. the first packet of every call flow of the app
    # still alive when the media starts (its STUN, relay probes, signalling), at most PRE_ROLL_S
    alive = [int(ft.first_ns[i]) for i in range(len(ft))
             if cl.labels[i] in by_label and ft.last_ns[i] >= loop_from - 1e9 and ft.first_ns[i] <= loop_from]
    t0 = int(cap.packets.ts_ns.min())
    keep_from = max(t0, loop_from - int(PRE_ROLL_S * 1e9), min(alive + [loop_from]))
    spec = BaseSpec(id=bid, path=str(path), app=app, kind="two-way" if two else "one-way",
                    media_flows=[{k: v for k, v in m.items() if k not in ("start_ns", "end_ns", "flow")} for m in media],
                    labels=sorted(by_label), rtp=any(m["rtp_in"] >= MIN_PACKETS // 2 for m in media),
                    two_way_s=max(m["two_way_s"] for m in media), window_ns=[keep_from, loop_from, loop_to],
                    loopback_remap=[list(k) for k in remapped])
    return {"id": bid, "path": str(path), "base": asdict(spec), "why": f"{len(media)} media flow(s)"}


def discover(corpus: Path | None, *, jobs: int = 1, pool=None) -> tuple[list[BaseSpec], list[dict]]:
    """Every base (sorted by app, then id) and the discovery record of every file looked at."""
    items = [(i, str(p)) for i, p in candidate_files(corpus)]
    found = list(pool.map(discover_file, items, chunksize=2)) if pool is not None else [discover_file(x) for x in items]
    specs = [BaseSpec(**d["base"]) for d in found if d["base"]]
    specs.sort(key=lambda s: (s.app, s.id))
    return specs, found


def hidden_twins(specs: list) -> list:
    """The twin of every base with readable RTP whose call flows' RTP and RTCP are made unreadable
    (rewrite.hide_media, after looping): the real call's packet times and sizes, no sequence
    numbers, as Telegram or Tencent Meeting send media. What the detectors then find is what they
    find on encrypted media with a real call's timing; the corpus's own such calls are too short
    to say (Telegram's 1.9 s, Signal's 13 packets each way). Twin ids end in HIDDEN_SUFFIX."""
    from dataclasses import replace
    return [replace(s, id=s.id + HIDDEN_SUFFIX, hidden=True, rtp=False) for s in specs if s.rtp and not s.hidden]


# --------------------------------------------------------------------------- preparation

@dataclass
class Base:
    """A prepared base: the looped call as a network.Scene, with what scenarios need."""
    spec: BaseSpec
    scene: object                # network.Scene
    targets: tuple               # scene flow ids of the media flows (what throttlers act on)
    calls: tuple                 # scene flow ids of every call flow
    rate_bps: dict               # target -> mean to-local rate over its media (link-layer bytes)
    rate_out_bps: dict           # target -> mean from-local rate
    max_packet: dict             # target -> largest to-local frame
    media_start_s: float         # the looped media's start, seconds after the scene's first packet
    duration_s: float
    controls: tuple              # flows (not targets) with a loss signal towards the capture point
    rr_blocks: int               # plain RTCP report blocks about the local host's streams
    ipv4: bool
    keys: dict                   # scene flow id -> flow_key
    info: dict

    @property
    def id(self) -> str:
        return self.spec.id

    @property
    def app(self) -> str:
        return self.spec.app


def prepare(spec: BaseSpec, seconds: float = LOOP_SECONDS) -> Base:
    """Read the capture, remap a loopback sender, loop the call, build the scene."""
    from throttledetect.classify import classify
    from throttledetect.flows import build_flows
    from throttledetect.validate.network import Scene
    cap, ft, cl = _read(spec.path)
    if spec.loopback_remap:
        cap, _ = _remap_loopback(cap, ft, cl)
        ft = build_flows(cap)
        cl = classify(cap, ft)
    looped, info = rewrite.loop_capture(cap, ft, cl, seconds, window=tuple(spec.window_ns))
    ft2 = build_flows(looped)
    cl2 = classify(looped, ft2)
    hidden = 0
    if spec.hidden:
        looped, hidden = rewrite.hide_media(looped, ft2, cl2, [i for i in range(len(ft2)) if cl2.is_call(i)], seed=1)
        ft2 = build_flows(looped)
        cl2 = classify(looped, ft2)
    scene = Scene(looped, ft2, cl2)
    keys = {i: flow_key(ft2, i) for i in range(len(ft2))}
    by_key: dict = {}
    for i, k in keys.items():
        by_key.setdefault(k, []).append(i)
    targets = []
    for m in spec.media_flows:
        targets += by_key.get(tuple(m["key"]), [])
    targets = tuple(sorted(set(targets)))
    calls = tuple(i for i in range(len(ft2)) if cl2.is_call(i))
    loop_from = spec.window_ns[1]
    media_start_s = (loop_from - scene.t0) / 1e9
    rate = {f: scene.flow_rate_bps(f, True, scene.rel_ns(media_start_s)) for f in targets}
    rate_out = {f: scene.flow_rate_bps(f, False, scene.rel_ns(media_start_s)) for f in targets}
    t = looped.packets
    maxp = {}
    for f in targets:
        r = np.flatnonzero((scene.flow == f) & scene.to_local)
        maxp[f] = int(scene.size[r].max()) if len(r) else 0
    # controls: other flows whose arrivals carry a loss signal (RTP sequence numbers, TCP data)
    ix = scene.rtp
    rtp_in = np.bincount(ix.flow[scene.to_local[ix.row]], minlength=len(ft2)) if len(ix) else np.zeros(len(ft2))
    tcp_data = (t.proto == 6) & (t.payload_wirelen > 0) & scene.to_local & (scene.flow >= 0)
    tcp_in = np.bincount(scene.flow[tcp_data], minlength=len(ft2))
    controls = tuple(int(i) for i in range(len(ft2)) if i not in targets
                     and max(rtp_in[i], tcp_in[i]) >= CONTROL_MIN_PACKETS)
    rr = scene.rr_blocks()
    ipv4 = bool(len(targets)) and all(bool((t.l3[scene.flow == f] == 4).all()) for f in targets)
    info = {"id": spec.id, "app": spec.app, "kind": spec.kind, "rtp": spec.rtp, "two_way_s": spec.two_way_s,
            "copies": info["copies"], "looped_s": round(info["looped_duration_s"], 3),
            "duration_s": round((scene.t_end - scene.t0) / 1e9, 3), "packets": int(len(t)),
            "targets": [{"flow": int(f), "label": cl2.labels[f], "a": ft2.endpoint(f, "a"), "b": ft2.endpoint(f, "b"),
                         "rate_to_local_bps": round(rate[f], 1), "rate_from_local_bps": round(rate_out[f], 1),
                         "rtp_to_local": int(rtp_in[f])} for f in targets],
            "labels_after_loop": sorted({cl2.labels[f] for f in targets}),
            "call_flows": len(calls), "controls": len(controls), "rr_blocks": int(len(rr["row"])),
            "rtp_streams_looped": len(info["rtp_streams"]), "tcp_directions_looped": info["tcp_directions"],
            "datagrams_hidden": hidden}
    return Base(spec, scene, targets, calls, rate, rate_out, maxp, media_start_s,
                (scene.t_end - scene.t0) / 1e9, controls, int(len(rr["row"])), ipv4, keys, info)
