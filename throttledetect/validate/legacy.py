"""The previous harness's named traces, kept for tests/detect/test_bundled.py only.

The harness itself discovers its bases (bases.py) and names no file. These five specs and
``prepare_trace`` exist because the detectors' own tests load the Teams and SIP traces through
them; they go when those tests load bases with ``bases.discover`` instead.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from throttledetect import rewrite
from throttledetect.validate.bases import LOOPBACK_SENDER, REPO, CorpusMissing, flow_key

MIN_TARGET_PACKETS = 500


@dataclass(frozen=True)
class TraceSpec:
    name: str
    path: str
    source: str = "corpus"
    role: str = "call"
    remap_ports: tuple = ()

    def resolve(self, corpus: Path) -> Path:
        return (Path(corpus) if self.source == "corpus" else REPO) / self.path


TRACES = (
    TraceSpec("teams", "external/MicrosoftTeam_05152024_rebuilt.pcap"),
    TraceSpec("skype", "external/Skype_06172024_rebuilt.pcap"),
    TraceSpec("sip-g711", "external/sip_rtp.pcap", remap_ports=(5061, 6001)),
    TraceSpec("testbed", "captures/call_clean.pcap", source="project"),
    TraceSpec("whatsapp", "external/whatsappCall.pcapng", role="short"),
)


@dataclass
class BaseTrace:
    spec: TraceSpec
    cap: object
    ft: object
    cl: object
    targets: list
    calls: list
    rate_bps: dict
    keys: dict
    info: dict


def prepare_trace(spec: TraceSpec, corpus: Path, seconds: float = 60.0) -> BaseTrace:
    """Read, (remap the sender,) loop to `seconds`, classify; the call flows with 500+ RTP packets
    towards the capture point are the targets, with their to-local rates."""
    from throttledetect.classify import classify
    from throttledetect.flows import build_flows, local_side_is_a
    from throttledetect.read import read_capture
    path = spec.resolve(corpus)
    if not path.is_file():
        raise CorpusMissing(f"{path}: not found")
    cap = read_capture(str(path))
    if spec.remap_ports:
        t = cap.packets
        buf = cap.buffer.copy()
        udp = (t.proto == 17)
        rewrite.rewrite_endpoint(buf, cap, np.flatnonzero(udp & np.isin(t.sport, spec.remap_ports)), "src",
                                 LOOPBACK_SENDER)
        rewrite.rewrite_endpoint(buf, cap, np.flatnonzero(udp & np.isin(t.dport, spec.remap_ports)), "dst",
                                 LOOPBACK_SENDER)
        cap = rewrite.build_capture(buf, cap, np.arange(len(t)), t.ts_ns, "sender rewritten")
    ft = build_flows(cap)
    cl = classify(cap, ft)
    dur = (int(cap.packets.ts_ns.max()) - int(cap.packets.ts_ns.min())) / 1e9
    if spec.role == "call" and dur < seconds:
        cap, _ = rewrite.loop_capture(cap, ft, cl, seconds)
        ft = build_flows(cap)
        cl = classify(cap, ft)
    t = cap.packets
    local_is_a, _ = local_side_is_a(ft)
    ix = rewrite.RtpIndex(cap, ft, cl)
    to_local = (ix.dir == 1) == local_is_a[ix.flow]
    rtp_in = np.bincount(ix.flow[to_local], minlength=len(ft))
    calls = [i for i in range(len(ft)) if cl.is_call(i)]
    rate, targets = {}, []
    for i in calls:
        r = ft.packet_indices(i)
        r = r[(ft.dir_of[r] == 1) == bool(local_is_a[i])]
        if len(r) >= 2:
            span = (int(t.ts_ns[r].max()) - int(t.ts_ns[r].min())) / 1e9
            rate[i] = float(t.wirelen[r].astype(np.float64).sum() * 8 / span) if span > 0 else 0.0
        if spec.role == "call" and rtp_in[i] >= MIN_TARGET_PACKETS and rate.get(i):
            targets.append(i)
    span = (int(t.ts_ns.max()) - int(t.ts_ns.min())) / 1e9 if len(t) else 0.0
    return BaseTrace(spec, cap, ft, cl, targets, calls, rate, {i: flow_key(ft, i) for i in range(len(ft))},
                     {"name": spec.name, "duration_s": span})
