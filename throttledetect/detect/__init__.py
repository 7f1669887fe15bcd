"""Detectors: the registry, the run over a capture, false-discovery control, and the verdicts.

Each detector is one module with one entry function ``detect(ctx, i) -> list[Detection]``
(ctx: common.DetectContext, i: a flow index) and one line in DETECTORS below: adding a
detector touches a new file and that list. The tests and what they measure are in each
module's docstring (shaping.py, policing.py, dropping.py, blocking.py; onset.py finds the
"before/after" split they share).

``run_detectors`` tests every call flow (classify.labels.is_call) in the direction that arrives
at the capture point (losses and delays are visible only there); other flows get the verdict
"none" without tests, though the detectors read them as controls. Then, per kind, the p-values
of all flows and directions tested go through Benjamini-Hochberg (Detection.qvalue); a test
that said "detected" with q >= alpha becomes "not_detected". A flow's verdict is its most
specific detected kind (PRECEDENCE); "inconclusive" when no test could decide, or when a test
that could not decide saw a sign worth a look (estimates["suspect"]) and nothing was detected.
Per protocol (label): the most specific kind among its flows' verdicts, with a rate when the
flows' rates agree within RATE_AGREEMENT (or add up to a shared cap, see shaping.py).

``metrics`` (metrics.flow.compute_flow_metrics) is accepted for the pipeline's sake; the detectors
compute what they need from the packet table (common.DetectContext), so they run without it.

Calibration (tests/detect/test_registry.py run_sweep, throttledetect.simulate on synthetic
60 s calls, 5 seeds x audio / audio+DTX / video; alpha 0.01): 0 of 90 confounder runs (clean,
jitter 5 and 15 ms, two congestion levels, 2 % random loss on every flow) detected anything;
selective drops of 2-20 % found in 73 of 75, shapers (0.6 and 0.85 of the rate, 50 ms to 0.5 s
queues, from the start or after 20 s) in 59 of 60, blocking after 3 or 10 s in 30 of 30; 1 %
selective loss is below the effect floor by design. Policers (0.6 and 0.85 of the rate, from the
start or after 20 s) on audio and DTX audio 30 of 30; on the synthetic video, whose frames of
one or two packets carry no marker bit, 0 of 15 (called dropping): without frame ends a lost
packet between frames is placed at the later of its possible times, which keeps random loss
from looking like an empty bucket and costs this case (real video sets the marker bit; the
validation matrix of validate.py has policers on real Teams and Skype video). Encrypted media without RTP: 0 of 30
confounder runs detected; blocking 10 of 10; shaping only when the rate visibly falls to a cap
with size-spaced packets (5 of 20); loss and policing "inconclusive" or "none" (no loss signal).
"""
from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field

import numpy as np

from throttledetect.detect import blocking, dropping, policing, shaping
from throttledetect.detect.common import DetectContext, fmt_rate
from throttledetect.detect.result import KINDS, Detection
from throttledetect.detect.stats import benjamini_hochberg

VERDICTS = ("shaping", "policing", "dropping", "blocking", "none", "inconclusive")
# Which kind names a flow when several are detected. Blocking first (the flow is dead: nothing
# else matters); policing before shaping (the policing detectors only say "detected" when the delay
# did not grow before losses: a token bucket whose queue holds a packet or two, as a tbf with a
# minimal limit, spaces bursts like a shaper yet drops like a policer, and is called a policer);
# shaping before dropping (a shaper's queue overflows and drops); policing before dropping (a
# rate-dependent drop is a specific kind of selective drop).
PRECEDENCE = ("blocking", "policing", "shaping", "dropping")
RATE_AGREEMENT = 0.10      # rates of several flows are "common" when max/min - 1 <= 10 %


# The registry: one line per detector.
DETECTORS = [
    shaping.detect,
    policing.detect,
    dropping.detect,
    blocking.detect,
]


def _safe(fn, ctx, i) -> list[Detection]:
    """A detector that fails on odd data reports it as inconclusive instead of stopping the run."""
    try:
        out = fn(ctx, i)
    except Exception as exc:  # noqa: BLE001 - one bad flow must not sink the report
        kind = getattr(sys.modules.get(getattr(fn, "__module__", "")), "KIND", None)
        return [Detection.inconclusive(kind if kind in KINDS else "dropping", "both",
                                       f"detector error: {type(exc).__name__}: {exc}")]
    if isinstance(out, Detection):
        return [out]
    return list(out)


@dataclass
class DetectionReport:
    per_flow: list                      # list[list[Detection]], one list per flow (empty: not tested)
    tested: np.ndarray                  # bool per flow: a call flow that went through the detectors
    labels: list
    alpha: float = 0.01
    controls: dict = field(default_factory=dict)   # tested flow -> control flows it was compared with

    def verdict(self, i: int) -> str:
        dets = self.per_flow[i]
        if not self.tested[i] or not dets:
            return "none"
        found = {d.kind for d in dets if d.decision == "detected"}
        for k in PRECEDENCE:
            if k in found:
                return k
        if all(d.decision == "inconclusive" for d in dets):
            return "inconclusive"
        if any(d.decision == "inconclusive" and d.estimates.get("suspect") for d in dets):
            return "inconclusive"
        return "none"

    def detected(self, i: int, kind: str | None = None) -> list[Detection]:
        return [d for d in self.per_flow[i] if d.decision == "detected" and (kind is None or d.kind == kind)]

    @property
    def protocols(self) -> list[dict]:
        out = []
        by_label: dict = {}
        for i, lab in enumerate(self.labels):
            by_label.setdefault(lab, []).append(i)
        for lab, flows in by_label.items():
            tested = [i for i in flows if self.tested[i]]
            if not tested:
                used = sum(1 for i in flows if any(i in c for c in self.controls.values()))
                out.append({"protocol": lab, "flows": len(flows), "verdict": "none", "kinds": [],
                            "summary": f"{lab}: {len(flows)} flow(s), not calls, not tested"
                            + (f"; {used} served as controls." if used else ".")})
                continue
            verdicts = [self.verdict(i) for i in tested]
            kinds = [k for k in PRECEDENCE if k in verdicts]     # each flow counted under its own verdict
            if kinds:
                verdict = kinds[0]
            elif all(v == "inconclusive" for v in verdicts):
                verdict = "inconclusive"
            elif any(v == "inconclusive" for v in verdicts):
                verdict = "inconclusive" if not any(v == "none" for v in verdicts) else "none"
            else:
                verdict = "none"
            entry = {"protocol": lab, "flows": len(flows), "verdict": verdict, "kinds": kinds}
            rate = self._common_rate(tested, verdict) if verdict in ("policing", "shaping") else None
            if rate is not None:
                entry["rate_bps"] = rate
            entry["summary"] = self._summary(lab, tested, verdicts, verdict, kinds, rate)
            out.append(entry)
        order = {v: k for k, v in enumerate(("blocking", "policing", "shaping", "dropping", "inconclusive", "none"))}
        out.sort(key=lambda e: (order.get(e["verdict"], 9), e["protocol"]))
        return out

    def _common_rate(self, flows, kind) -> float | None:
        """The rate the flows' detections agree on (within RATE_AGREEMENT): a cap common to them.
        When some flows only carry their share of a cap they queue behind together (shaping
        detected through a shared queue, all onsets within a second), the sum of their rates."""
        dets = [d for i in flows if self.verdict(i) == kind
                for d in self.detected(i, kind) if d.estimates.get("rate_bps")]
        # a policer fitted to the call flows from one host together: their shared cap
        rates = [float(d.estimates.get("host_pair_rate_bps") or d.estimates["rate_bps"]) for d in dets]
        if not rates:
            return None
        if max(rates) / min(rates) - 1.0 <= RATE_AGREEMENT:
            return float(np.median(rates))
        onsets = [d.estimates.get("onset_s") for d in dets]
        if any(d.estimates.get("rate_is_share_of_cap") for d in dets) and all(o is not None for o in onsets) \
                and max(onsets) - min(onsets) <= 1.0:
            return float(sum(rates))
        return None

    def _summary(self, lab, tested, verdicts, verdict, kinds, rate) -> str:
        n = len(tested)
        if verdict == "none":
            return f"{lab}: {n} call flow(s) tested, no throttling detected."
        if verdict == "inconclusive":
            reasons = {d.reason for i in tested for d in self.per_flow[i] if d.decision == "inconclusive" and d.reason}
            why = sorted(reasons)[0] if reasons else "the data cannot decide"
            return f"{lab}: {n} call flow(s), inconclusive ({why})."
        parts = []
        for k in kinds:
            hit = [i for i in tested if self.verdict(i) == k]
            if not hit:
                continue
            onsets = [d.estimates.get("onset_s") for i in hit for d in self.detected(i, k)
                      if d.estimates.get("onset_s") is not None]
            extra = f" from {min(onsets):.1f} s" if onsets else ""
            parts.append(f"{k} on {len(hit)} of {n} flow(s){extra}")
        tail = f", common rate {fmt_rate(rate)}" if rate else ""
        return f"{lab}: " + "; ".join(parts) + tail + "."

    def to_json_for_flow(self, i: int) -> dict:
        return {"verdict": self.verdict(i), "detections": [detection_json(d) for d in self.per_flow[i]]}

    def to_json(self) -> dict:
        return {"flows": [self.to_json_for_flow(i) for i in range(len(self.per_flow))], "protocols": self.protocols}


def detection_json(d: Detection) -> dict:
    """One detection as the output contract lists it: kind, direction, decision, pvalue, qvalue,
    effect, onset_s, rate_bps, burst_bytes, evidence (+ reason and the remaining estimates)."""
    est = dict(d.estimates)
    out = {"kind": d.kind, "direction": d.direction, "decision": d.decision, "pvalue": d.pvalue,
           "qvalue": d.qvalue, "effect": d.effect, "onset_s": est.pop("onset_s", None),
           "rate_bps": est.pop("rate_bps", None), "burst_bytes": est.pop("burst_bytes", None),
           "evidence": d.evidence}
    if d.reason:
        out["reason"] = d.reason
    if d.statistic is not None:
        out["statistic"] = d.statistic
    if est:
        out["estimates"] = est
    return _jsonable({k: v for k, v in out.items() if v is not None})


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, set)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.bool_, bool)):
        return bool(x)
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating, float)):
        v = float(x)
        return v if math.isfinite(v) else None
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, (str, int)) or x is None:
        return x
    try:
        json.dumps(x)
        return x
    except TypeError:
        return str(x)


def run_detectors(cap, ft, cl, metrics=None, *, alpha: float = 0.01, seed: int = 0,
                  detectors=None) -> DetectionReport:
    """Run every registered detector on every call flow; control false discoveries per kind."""
    ctx = DetectContext(cap, ft, cl, metrics=metrics, alpha=alpha, seed=seed)
    n = len(ft)
    per_flow: list = [[] for _ in range(n)]
    tested = np.zeros(n, dtype=bool)
    controls = {}
    for i in range(n):
        if not ctx.is_call(i) or int(ft.proto[i]) not in (6, 17):
            continue
        tested[i] = True
        for fn in detectors or DETECTORS:
            per_flow[i].extend(_safe(fn, ctx, i))
        controls[i] = ctx.controls(i)
    apply_fdr(per_flow, alpha)
    return DetectionReport(per_flow=per_flow, tested=tested, labels=list(ctx.labels), alpha=alpha, controls=controls)


def apply_fdr(per_flow: list, alpha: float) -> None:
    """Benjamini-Hochberg per kind over every test that produced a p-value; fills qvalue and turns
    "detected" with q >= alpha into "not_detected" (deterministic evidence without a p-value, as
    an ICMP unreachable, keeps its decision)."""
    for kind in KINDS:
        dets = [d for flow in per_flow for d in flow if d.kind == kind and d.pvalue is not None
                and np.isfinite(d.pvalue)]
        if not dets:
            continue
        q = benjamini_hochberg([d.pvalue for d in dets])
        for d, qv in zip(dets, q):
            d.qvalue = float(qv)
            if d.decision == "detected" and qv >= alpha:
                d.decision = "not_detected"
                d.reason = (d.reason + "; " if d.reason else "") + \
                    f"not significant after false-discovery control across flows (q={qv:.2g})"


__all__ = ["DETECTORS", "DetectionReport", "run_detectors", "apply_fdr", "Detection", "DetectContext"]
