"""Running the detectors over a capture: which flows, which tests, one false-discovery family,
and the verdicts (verdicts.py decides them from the detections, so stored results can be
re-decided under other thresholds).

Which flows: the call flows (``test="calls"``, the default), or every TCP/UDP flow that carries
enough packets to judge (``test="all"``: calls that fell back to TCP, YouTube/Twitter-style TCP
policing, captures taken at a server). A flow's **role** decides its tests: a media flow goes
through every detector below; a flow that only carried call setup (STUN checks, probes,
signalling) through the call-setup test.

The detectors, each a module declaring a ``Detector`` (detector.py: name, kind, its Params in
DetectConfig, the roles it runs on, ``detect(ctx, flow) -> list[Detection]``):
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from throttledetect import verdicts
from throttledetect.detect import blocking, dropping, policing, setup, shaping
from throttledetect.detect.config import DEFAULT_CONFIG, DetectConfig
from throttledetect.detect.context import DetectContext
from throttledetect.detect.result import Detection
from throttledetect.streams import Streams

# The registry: adding a detector touches one new module (declaring DETECTOR) and this list.
DETECTORS = (shaping.DETECTOR, policing.DETECTOR, dropping.DETECTOR, blocking.DETECTOR, setup.DETECTOR)
TEST_SCOPES = ("calls", "all")
CONTRACT_FIELDS = ("kind", "direction", "decision", "pvalue", "qvalue", "effect")


def _strict() -> bool:
    # the test suite sets it: a detector that raises fails the tests instead of becoming inconclusive
    return os.environ.get("THROTTLEDETECT_STRICT") == "1"


def _run_one(det, ctx: DetectContext, i: int) -> list:
    try:
        return det.run(ctx, i)
    except Exception as exc:  # noqa: BLE001 - one odd flow must not sink a user's report
        if _strict():
            raise
        d = ("ab", "ba")[ctx.toward_local(i)]
        return [Detection.inconclusive(det.kind, d, f"detector error: {type(exc).__name__}: {exc}", test=det.name)]


def detection_json(d: Detection) -> dict:
    """One detection as the output contract has it (kind, direction, decision, pvalue, qvalue,
    effect, onset_s, rate_bps, burst_bytes, evidence) and everything else it knows."""
    est = dict(d.estimates)
    out = {"kind": d.kind, "direction": d.direction, "toward": d.toward, "test": d.test, "decision": d.decision,
           "pvalue": d.pvalue, "qvalue": d.qvalue, "effect": d.effect, "effect_unit": d.effect_unit or None,
           "statistic": d.statistic, "onset_s": est.pop("onset_s", None), "rate_bps": est.pop("rate_bps", None),
           "burst_bytes": est.pop("burst_bytes", None), "evidence": d.evidence, "reason": d.reason or None,
           "null": d.null or None, "checks": d.checks or None, "required": d.required,
           "family_key": d.family_key, "floor_key": d.floor_key,
           "otherwise": d.otherwise if d.otherwise != "not_detected" else None,
           "short_of_floor": d.short_of_floor,
           "estimates": est or None}
    keep = {"kind", "direction", "decision", "pvalue", "qvalue", "effect", "onset_s", "rate_bps", "burst_bytes",
            "evidence"}         # the contract's keys are always there (null when not measured)
    return _jsonable({k: v for k, v in out.items() if v is not None or k in keep})


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, set)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, (float, np.floating)):
        v = float(x)
        return v if np.isfinite(v) else None
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    return x


@dataclass
class DetectionReport:
    """Per flow: whether it was tested, its role, its detections (JSON dicts, decided) and verdict."""

    tested: np.ndarray
    roles: list
    detections: list            # list[list[dict]] per flow
    verdicts: list              # (verdict, reason) per flow, ("untested", "not tested") for untested flows
    labels: list
    config: DetectConfig
    test_scope: str = "calls"
    protocols: list = field(default_factory=list)
    packets: list = field(default_factory=list)     # per flow: packets arriving at the capturing host
    attempts: list = field(default_factory=list)    # one dict per call attempt (see _attempts)
    calls: list = field(default_factory=list)       # per flow: the id of its call attempt (its call or control
                                                    # flows), None for a flow of no reported attempt

    def verdict(self, i: int) -> str:
        return self.verdicts[i][0]

    def flow_json(self, i: int) -> dict:
        call = self.calls[i] if self.calls else None
        if not self.tested[i]:
            return {"call": call, "tested": False, "verdict": verdicts.UNTESTED,
                    "verdict_reason": "not tested (not a call flow)" if self.test_scope == "calls"
                    else "not tested (too few packets)", "detections": []}
        v, why = self.verdicts[i]
        out = {"call": call, "tested": True, "role": self.roles[i], "verdict": v, "packets_in": self.packets[i],
               "detections": self.detections[i]}
        if why:
            out["verdict_reason"] = why
        return out


def _protocols(report: DetectionReport) -> list:
    by_label: dict = {}
    for i, lab in enumerate(report.labels):
        if report.tested[i]:
            by_label.setdefault(lab, []).append(i)
    out = []
    for lab, idx in by_label.items():
        flows = [{"verdict": report.verdicts[i][0], "verdict_reason": report.verdicts[i][1], "role": report.roles[i],
                  "detections": report.detections[i], "packets": report.packets[i]} for i in idx]
        pv = verdicts.protocol_verdict(flows)
        rate = None
        if pv["verdict"] in ("policing", "shaping"):
            rates = [d.get("rate_bps") for f in flows if f["verdict"] == pv["verdict"] for d in f["detections"]
                     if d["kind"] == pv["verdict"] and d.get("decision") == "detected" and d.get("rate_bps")]
            rate = verdicts.common_rate(rates)
        entry = {"protocol": lab, "tested_flows": len(idx), **pv}
        if rate:
            entry["rate_bps"] = rate
        entry["summary"] = verdicts.protocol_summary(lab, flows, pv["verdict"], pv["kinds"], rate)
        out.append(entry)
    out.sort(key=lambda e: (verdicts.SEVERITY.index(e["verdict"]), e["protocol"]))
    return out


def _group_address(ctx: DetectContext, i: int) -> bool:
    """Is the remote side a multicast or broadcast address (SSDP, mDNS, NetBIOS: not a path to test)?"""
    import ipaddress
    from throttledetect.read.table import halves_to_address
    ft = ctx.ft
    a = ctx.streams.local_is_a[i]
    hi, lo = (ft.b_hi[i], ft.b_lo[i]) if a else (ft.a_hi[i], ft.a_lo[i])
    addr = ipaddress.ip_address(str(halves_to_address(hi, lo)))
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        addr = addr.ipv4_mapped
    return addr.is_multicast or (isinstance(addr, ipaddress.IPv4Address) and
                                 (addr == ipaddress.IPv4Address("255.255.255.255") or str(addr).endswith(".255")))


def select_flows(ctx: DetectContext, test: str) -> np.ndarray:
    ft = ctx.ft
    n = len(ft)
    sel = np.zeros(n, dtype=bool)
    for i in range(n):
        if int(ft.proto[i]) not in (6, 17):
            continue
        if test == "calls":
            sel[i] = ctx.is_call(i) or ctx.is_setup_candidate(i)
        else:
            sel[i] = ctx.is_call(i) or (ctx.role(i) == "media" and not _group_address(ctx, i))
    return sel


def detect_flow(ctx: DetectContext, i: int) -> tuple:
    """One tested flow: (its role, the JSON of every detection its role's detectors made)."""
    role = "setup" if ctx.is_setup_candidate(i) else ctx.role(i)
    dets = []
    for det in DETECTORS:
        if role in det.roles:
            dets.extend(detection_json(d) for d in _run_one(det, ctx, i))
    return role, dets


def _in_turn(ctx: DetectContext, flows: list, fn) -> list:
    return [fn(ctx, i) for i in flows]


def run_detectors(cap, ft, cl, metrics=None, *, streams: Streams | None = None,
                  config: DetectConfig = DEFAULT_CONFIG, test: str = "calls", map_flows=None) -> DetectionReport:
    """Test the selected flows of one capture; one false-discovery family over every p-value.

    map_flows(ctx, flows, detect_flow) -> results in the order of flows: how the tested flows are
    run (default one after another; throttledetect.parallel runs them in a pool of processes)."""
    if test not in TEST_SCOPES:
        raise ValueError(f"test must be one of {TEST_SCOPES}, not {test!r}")
    ctx = DetectContext(cap, ft, cl, streams=streams, metrics=metrics, config=config)
    n = len(ft)
    tested = select_flows(ctx, test)
    ctx.tested = tested
    roles: list = [None] * n
    dets: list = [[] for _ in range(n)]
    todo = np.flatnonzero(tested).tolist()
    ctx.streams.read_rtp_headers(todo)          # before the pool forks: its workers inherit them
    for i, (role, found) in zip(todo, (map_flows or _in_turn)(ctx, todo, detect_flow)):
        roles[i], dets[i] = role, found
    values = dict(config.thresholds)
    verdicts.redecide([d for fl in dets for d in fl], values)
    vs = [verdicts.flow_verdict(dets[i], roles[i]) if tested[i] else (verdicts.UNTESTED, "not tested")
          for i in range(n)]
    report = DetectionReport(tested=tested, roles=roles, detections=dets, verdicts=vs, labels=list(ctx.labels),
                             config=config, test_scope=test,
                             packets=[ctx.packets(i, ctx.toward_local(i)).n if tested[i] else 0 for i in range(n)])
    report.protocols = _protocols(report)
    report.attempts = _attempts(ctx, dets, tested, vs)
    report.calls = [None] * n
    for e in report.attempts:
        for i in e["flows"] + e["control_flows"]:
            report.calls[i] = e["id"]
    return report


def _attempts(ctx: DetectContext, dets: list, tested: np.ndarray, flow_verdicts: list) -> list:
    """One entry per call attempt (the report's line per attempt): the app, this host, when, the
    remote ends it tried (relays, ports, TCP fallback), what it sent and got back, and the
    call-setup test's decision. Flow ids are the flows' indices in this capture. control_flows:
    the flows the classifier put in the same call that carry no media (the app's TLS or QUIC
    control connection, signalling, STUN to its servers: classify/calls.py, rule 4)."""
    from throttledetect.read.table import halves_to_address
    out = []
    members: dict = {}
    call_of = getattr(ctx.cl, "call_of", None) if ctx.cl is not None else None
    if call_of is not None:
        for j in np.flatnonzero(np.asarray(call_of) >= 0).tolist():
            members.setdefault(int(call_of[j]), []).append(j)
    t0 = ctx.streams.t0_ns / 1e9
    for call in ctx.calls:
        flows = [i for i in call.flows if tested[i]]
        if not flows:
            continue
        i0 = flows[0]
        local_side = "a" if ctx.streams.local_is_a[i0] else "b"
        tried = []
        for i in flows:
            remote = ctx.ft.endpoint(i, "b" if ctx.streams.local_is_a[i] else "a")
            tried.append(f"{'tcp' if int(ctx.ft.proto[i]) == 6 else 'udp'} {remote}")
        setup = next((d for i in flows for d in dets[i] if d.get("test") == "setup"), None)
        if call.two_way_media:
            verdict = "set up"
        elif setup is None:
            verdict = "inconclusive"
        else:
            verdict = {"detected": "blocking", "inconclusive": "inconclusive"}.get(setup["decision"], "not blocked")
        est = (setup or {}).get("estimates", {})
        hi, lo = (ctx.ft.a_hi[i0], ctx.ft.a_lo[i0]) if local_side == "a" else (ctx.ft.b_hi[i0], ctx.ft.b_lo[i0])
        own = set(call.flows)
        entry = {"id": int(call.id), "app": call.label, "local": str(halves_to_address(hi, lo)),
                 "first_ts": t0 + call.start, "duration_s": round(call.end - call.start, 3),
                 "flows": flows, "media_flows": [i for i in call.media_flows if tested[i]],
                 "control_flows": [j for j in members.get(int(call.id), []) if j not in own],
                 "tried": sorted(set(tried)), "sent": int(call.outbound), "received": int(call.inbound),
                 "local_known": bool(ctx.streams.local_known[i0]), "verdict": verdict}
        for k in ("requests", "answered"):
            if k in est:
                entry[k] = est[k]
        if call.two_way_media:
            # what happened to the call once set up: its flows' most severe verdict
            entry["media_verdict"] = min((flow_verdicts[i][0] for i in flows), key=verdicts.SEVERITY.index)
        if setup is not None and verdict != "set up":
            entry["reason"] = (setup.get("reason") if setup["decision"] == "inconclusive" else
                               setup.get("evidence") or setup.get("reason") or "")
        out.append(_jsonable(entry))
    return out


def _first_line(detector) -> str:
    import sys
    doc = sys.modules[detector.detect.__module__].__doc__ or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


__doc__ += "\n" + "\n".join(f"- ``{d.name}`` ({d.kind}): {_first_line(d)}" for d in DETECTORS)
