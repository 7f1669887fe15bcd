"""The analysis pipeline, one way: read -> flows -> classify -> metrics -> detect -> document.

The CLI, the validation matrix and the tests all call analyze_capture(); nothing here renders.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from throttledetect.classify import Classification, classify
from throttledetect.detect import run_detectors
from throttledetect.flows import DEFAULT_IDLE_TIMEOUT_S, FlowTable, build_flows
from throttledetect.metrics.flow import compute_flow_metrics, flow_metrics_json
from throttledetect.read import Capture, read_capture
from throttledetect.report import document


@dataclass
class CaptureAnalysis:
    capture: Capture
    flows: FlowTable
    classification: Classification
    metrics: list | None = None          # FlowMetrics per flow
    detections: object | None = None     # DetectionReport
    notes: list = field(default_factory=list)


def analyze_capture(source, *, idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT_S, local_nets=None,
                    with_metrics: bool = True, with_detection: bool = True, bin_s: float = 1.0,
                    alpha: float = 0.01) -> CaptureAnalysis:
    """Run every stage on one capture (a path or an already read Capture)."""
    cap = source if isinstance(source, Capture) else read_capture(source)
    ft = build_flows(cap, idle_timeout=idle_timeout, local_nets=local_nets)
    cl = classify(cap, ft)
    result = CaptureAnalysis(cap, ft, cl)
    if with_metrics:
        result.metrics = compute_flow_metrics(cap, ft, cl, bin_s=bin_s)
    if with_detection:
        result.detections = run_detectors(cap, ft, cl, result.metrics, alpha=alpha)
    return result


def to_document(analyses: list[CaptureAnalysis], *, include_metrics: bool = True) -> dict:
    """The JSON output contract (docs/DESIGN.md)."""
    flows = []
    for ci, a in enumerate(analyses):
        metrics_json = flow_metrics_json(a.metrics) if include_metrics and a.metrics is not None else None
        for i in range(len(a.flows)):
            e = document.flow_entry(a.flows, i, ci)
            e.update(protocol=a.classification.labels[i], confidence=round(float(a.classification.confidence[i]), 3),
                     reason=a.classification.reasons[i])
            if metrics_json is not None:
                e["metrics"] = metrics_json[i]
            if a.detections is not None:
                e.update(a.detections.to_json_for_flow(i))
            flows.append(e)
    protocols = document.protocol_summary(flows)
    verdicts = {}
    for a in analyses:
        if a.detections is not None:
            for p in a.detections.protocols:
                verdicts.setdefault(p["protocol"], []).append(p)
    for p in protocols:
        found = verdicts.get(p["protocol"])
        if found:
            p.update(document.merge_protocol_verdicts(found))
    return {"schema": document.SCHEMA, "captures": [document.capture_entry(a.capture) for a in analyses],
            "flows": flows, "protocols": protocols}
