"""The analysis pipeline, one way: read -> flows -> classify -> streams -> metrics -> detect -> document.

The CLI, the validation and the tests all call analyze_capture(); nothing here renders.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from throttledetect.classify import Classification, classify
from throttledetect.flows import DEFAULT_IDLE_TIMEOUT_S, FlowTable, build_flows
from throttledetect.read import Capture, read_capture
from throttledetect.report import document
from throttledetect.streams import Streams


@dataclass
class CaptureAnalysis:
    capture: Capture
    flows: FlowTable
    classification: Classification
    streams: Streams | None = None
    metrics: list | None = None          # FlowMetrics per flow
    detections: object | None = None     # detect.run.DetectionReport
    notes: list = field(default_factory=list)


def analyze_capture(source, *, idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT_S, local_nets=None,
                    with_metrics: bool = True, with_detection: bool = True, bin_s: float = 1.0,
                    config=None, test: str = "calls", alpha: float | None = None,
                    thresholds: dict | None = None) -> CaptureAnalysis:
    """Run every stage on one capture (a path or an already read Capture).

    config: a detect.config.DetectConfig (default DEFAULT_CONFIG); alpha and thresholds (names of
    verdicts.DEFAULTS) override its decision thresholds; test: "calls" (test the call flows) or
    "all" (every flow with enough packets)."""
    cap = source if isinstance(source, Capture) else read_capture(source)
    ft = build_flows(cap, idle_timeout=idle_timeout, local_nets=local_nets)
    cl = classify(cap, ft)
    result = CaptureAnalysis(cap, ft, cl, streams=Streams(cap, ft, cl))
    if with_metrics:
        from throttledetect.metrics.flow import compute_flow_metrics
        result.metrics = compute_flow_metrics(cap, ft, cl, bin_s=bin_s)
    if with_detection:
        from throttledetect.detect.config import DEFAULT_CONFIG
        from throttledetect.detect.run import run_detectors
        config = config or DEFAULT_CONFIG
        overrides = dict(thresholds or {})
        if alpha is not None:
            overrides["alpha"] = alpha
        if overrides:
            config = config.with_thresholds(**overrides)
        result.detections = run_detectors(cap, ft, cl, result.metrics, streams=result.streams, config=config,
                                          test=test)
    return result


def to_document(analyses: list[CaptureAnalysis], *, include_metrics: bool = True) -> dict:
    """The JSON output contract (docs/DESIGN.md)."""
    flows = []
    for ci, a in enumerate(analyses):
        metrics_json = None
        if include_metrics and a.metrics is not None:
            from throttledetect.metrics.flow import flow_metrics_json
            metrics_json = flow_metrics_json(a.metrics)
        for i in range(len(a.flows)):
            e = document.flow_entry(a.flows, i, ci)
            e.update(protocol=a.classification.labels[i], confidence=round(float(a.classification.confidence[i]), 3),
                     reason=a.classification.reasons[i])
            if metrics_json is not None:
                e["metrics"] = metrics_json[i]
            if a.detections is not None:
                e.update(a.detections.flow_json(i))
            flows.append(e)
    protocols = document.protocol_summary(flows)
    per_capture = {}
    for ci, a in enumerate(analyses):
        if a.detections is not None:
            for p in a.detections.protocols:
                per_capture.setdefault(p["protocol"], []).append(dict(p, capture=ci))
    for p in protocols:
        found = per_capture.get(p["protocol"])
        if found:
            p.update(document.merge_protocol_verdicts(found))
        else:
            p.update(verdict="none", kinds=[], summary=f"{p['protocol']}: not tested (no call flows)")
    doc = {"schema": document.SCHEMA, "captures": [document.capture_entry(a.capture) for a in analyses],
           "flows": flows, "protocols": protocols}
    for ci, a in enumerate(analyses):
        if a.detections is not None:
            doc["captures"][ci]["call_attempts"] = [
                dict(e, flows=[f"{ci}:{i}" for i in e["flows"]], media_flows=[f"{ci}:{i}" for i in e["media_flows"]])
                for e in a.detections.attempts]
    dets = [a.detections for a in analyses if a.detections is not None]
    if dets:
        doc["config"] = dets[0].config.to_json()
        doc["test"] = dets[0].test_scope
    return doc
