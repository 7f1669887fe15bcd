"""The analysis pipeline, one way: read -> flows -> classify -> streams -> metrics -> detect -> document.

The CLI, the validation and the tests all call analyze_capture(); nothing here renders.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from throttledetect.classify import Classification, classify
from throttledetect.flows import DEFAULT_IDLE_TIMEOUT_S, FlowTable, build_flows
from throttledetect.read import Capture, read_capture
from throttledetect import verdicts
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
    metrics_json: object | None = None   # report.spill.JsonSpill: every flow's metrics as JSON text (spill_metrics)


def analyze_capture(source, *, idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT_S, local_nets=None,
                    with_metrics: bool = True, with_detection: bool = True, bin_s: float = 1.0,
                    config=None, test: str = "calls", alpha: float | None = None,
                    thresholds: dict | None = None, workers: int = 1, map_flows=None,
                    spill_metrics: bool = False, only_document: bool = False) -> CaptureAnalysis:
    """Run every stage on one capture (a path or an already read Capture).

    config: a detect.config.DetectConfig (default DEFAULT_CONFIG); alpha and thresholds (names of
    verdicts.DEFAULTS) override its decision thresholds; test: "calls" (test the call flows) or
    "all" (every flow with enough packets); workers: processes that test the flows (results are
    the same for any number, see throttledetect.parallel); map_flows: how the flows are tested
    instead (detect.run.run_detectors; throttledetect.cluster sends them to a Dask cluster);
    spill_metrics: every flow's metrics go to `metrics_json` as JSON text as they are measured, and
    `metrics` keeps the objects of the flows the detectors may read only (TCP flows that may be
    tested: their round-trip times), None for the others; for consume_into_part (issue 15);
    only_document: the analysis will only be made into its document part (consume_into_part):
    what nothing after the classifier reads is let go as soon as it has classified
    (_keep_what_is_read_after_classify)."""
    from throttledetect.read.pages import trim_heap
    cap = source if isinstance(source, Capture) else read_capture(source)
    ft = build_flows(cap, idle_timeout=idle_timeout, local_nets=local_nets)
    if only_document:
        _let_go_of_columns_read_by_no_later_stage(cap)
        _read_endpoints_from_the_flows(cap, ft)
    trim_heap()        # each stage's freed temporaries given back before the next (read/pages.py)
    cl = classify(cap, ft)
    if only_document:
        _keep_what_is_read_after_classify(cl)
    trim_heap()
    result = CaptureAnalysis(cap, ft, cl, streams=Streams(cap, ft, cl))
    if with_metrics:
        from throttledetect.metrics.flow import compute_flow_metrics
        if spill_metrics:
            from throttledetect.report.spill import JsonSpill
            result.metrics_json = JsonSpill()
            result.metrics = compute_flow_metrics(cap, ft, cl, bin_s=bin_s, spill=result.metrics_json,
                                                  keep=_metrics_read_by_detectors(ft, cl, test))
        else:
            result.metrics = compute_flow_metrics(cap, ft, cl, bin_s=bin_s)
        trim_heap()
    if with_detection:
        from throttledetect.detect.run import run_detectors
        config = detection_config(config, alpha, thresholds)
        if map_flows is None and workers > 1:
            from throttledetect.parallel import flow_pool
            map_flows = flow_pool(workers)
        result.detections = run_detectors(cap, ft, cl, result.metrics, streams=result.streams, config=config,
                                          test=test, map_flows=map_flows)
    return result


# PacketTable columns that no stage after build_flows reads in the analysis (the reader fills
# them; flows reads l3; write.py, the testbed and the validation read some of them, never here)
UNREAD_AFTER_FLOWS = ("iface", "linktype", "l3", "ttl", "ip_id", "tunnel")


class LetGoColumn:
    """In place of a column let go (_let_go_of_columns_read_by_no_later_stage): its length and
    dtype, and an error naming it when it is read, not a wrong value."""

    __slots__ = ("name", "dtype", "shape")

    def __init__(self, name: str, column: np.ndarray):
        self.name, self.dtype, self.shape = name, column.dtype, column.shape

    def __len__(self) -> int:
        return self.shape[0]

    def _read(self, *args, **kwargs):
        raise RuntimeError(f"the packets' {self.name!r} column was let go after the flows were built "
                           "(pipeline.UNREAD_AFTER_FLOWS): a stage that reads it must be taken out of that list")

    __getitem__ = __array__ = __iter__ = __eq__ = __ne__ = __lt__ = __le__ = __gt__ = __ge__ = _read


def _let_go_of_columns_read_by_no_later_stage(cap: Capture) -> None:
    """11 bytes a packet (110 MB on 10 M packets) that only the reader and build_flows read, let
    go for the rest of an analysis that is only made into its document (issue 15)."""
    pk = cap.packets
    for name in UNREAD_AFTER_FLOWS:
        column = getattr(pk, name)
        if isinstance(column, np.ndarray):
            setattr(pk, name, LetGoColumn(name, column))


# PacketTable columns that every packet of a flow shares with its flow's endpoints
ENDPOINT_COLUMNS = ("src_hi", "src_lo", "dst_hi", "dst_lo", "sport", "dport")


class EndpointColumn:
    """In place of a packet column of addresses or ports (ENDPOINT_COLUMNS) after the flows were
    built: each row's value read from its flow's endpoints (a packet of direction 0 goes from side
    a to side b), the reader's own value for every row in a flow and 0 for a row in none (not IP,
    where the reader leaves 0). Indexing by a row, rows, a mask or a slice gives what the column
    gave; the whole column is made only when asked for as an array."""

    __slots__ = ("name", "dtype", "shape", "_flow_of", "_dir_of", "_from_a", "_from_b")

    def __init__(self, name: str, column: np.ndarray, ft: FlowTable):
        self.name, self.dtype, self.shape = name, column.dtype, column.shape
        field = {"src_hi": "hi", "dst_hi": "hi", "src_lo": "lo", "dst_lo": "lo", "sport": "port", "dport": "port"}[name]
        a, b = getattr(ft, "a_" + field), getattr(ft, "b_" + field)
        self._flow_of, self._dir_of = ft.flow_of, ft.dir_of
        # the value of a packet going a -> b (direction 0), and of one going b -> a
        self._from_a, self._from_b = (a, b) if name.startswith(("src", "sport")) else (b, a)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, idx):
        f = self._flow_of[idx]
        d = self._dir_of[idx]
        if np.ndim(f) == 0:
            return self.dtype.type(0) if f < 0 else (self._from_a if d == 0 else self._from_b)[f]
        g = np.maximum(f, 0)
        out = np.where(d == 0, self._from_a[g], self._from_b[g]).astype(self.dtype, copy=False)
        out[f < 0] = 0
        return out

    def __array__(self, dtype=None, copy=None):
        whole = self[slice(None)]
        return whole if dtype is None else whole.astype(dtype)


def _read_endpoints_from_the_flows(cap: Capture, ft: FlowTable) -> None:
    """36 bytes a packet (360 MB on 10 M packets) that repeat the flow's endpoints in every
    packet: let go once the flows are built, read from the flow table instead (EndpointColumn)
    for an analysis that is only made into its document (issue 15)."""
    pk = cap.packets
    if pk is not ft.packets or len(ft.flow_of) != len(pk.ts_ns):
        return
    for name in ENDPOINT_COLUMNS:
        column = getattr(pk, name)
        if isinstance(column, np.ndarray):
            setattr(pk, name, EndpointColumn(name, column, ft))


def _keep_what_is_read_after_classify(cl: Classification) -> None:
    """The classifier's evidence beyond its per-row RTP columns (read by the metrics and streams)
    is read after classify() only for the call flows (classify.calls.summarize_calls: the call
    attempts of the detectors); the names learnt from DNS and TLS, and the evidence of every other
    flow, serve the classification only: let go (about 1 kB a flow, a DNS flow's names included;
    240 MB on 10 M packets of the bench mix, issue 15)."""
    from throttledetect.classify.labels import is_call
    ev = cl.evidence
    ev.names = []
    ev.dns_names = {}
    ev.flows = [e if is_call(lab) else None for e, lab in zip(ev.flows, cl.labels)]


def _metrics_read_by_detectors(ft: FlowTable, cl: Classification, test: str) -> np.ndarray:
    """Flows whose FlowMetrics the detectors may read: the TCP flows that detect.run.select_flows
    may pick (detect.shaping.detect_tcp reads their round-trip samples; no detector reads another
    flow's metrics). With test="calls" the call flows, else every one."""
    from throttledetect.classify.labels import is_call
    tcp = np.asarray(ft.proto) == 6
    if test != "calls":
        return tcp
    return tcp & np.fromiter((is_call(lab) for lab in cl.labels), dtype=bool, count=len(ft))


def detection_config(config=None, alpha: float | None = None, thresholds: dict | None = None):
    """The DetectConfig: `config` (default DEFAULT_CONFIG) with alpha and thresholds overridden."""
    from throttledetect.detect.config import DEFAULT_CONFIG
    config = config or DEFAULT_CONFIG
    overrides = dict(thresholds or {})
    if alpha is not None:
        overrides["alpha"] = alpha
    return config.with_thresholds(**overrides) if overrides else config


def to_document(analyses: list[CaptureAnalysis], *, include_metrics: bool = True) -> dict:
    """The JSON output contract (docs/DESIGN.md)."""
    return document_from_parts([capture_part(a, include_metrics=include_metrics) for a in analyses])


def capture_part(a: CaptureAnalysis, *, include_metrics: bool = True) -> dict:
    """What one capture adds to the document, as plain data (so a worker process or a cluster node
    can send it back): its capture entry, its flows numbered as capture 0, and its detections'
    per-protocol rows, config and test scope."""
    return _part(a, include_metrics, consume=False)


def consume_into_part(a: CaptureAnalysis) -> dict:
    """capture_part(a) of an analysis nobody reads afterwards (the `analyze` command writing JSON,
    CSV or text), taken apart as its part is made: what the part does not hold goes first (the
    packets' columns, the streams, the classifier's evidence, the per-packet flow arrays), and
    each flow's metrics objects go as their JSON is made. The part is the same; the analysis is
    left empty. Without this the whole document was held beside the whole analysis (issue 15)."""
    return _part(a, True, consume=True)


def _part(a: CaptureAnalysis, include_metrics: bool, consume: bool) -> dict:
    from throttledetect.metrics.flow import gc_paused
    from throttledetect.report.spill import SpilledJson
    entry = document.capture_entry(a.capture)      # its time range reads the packets: before they go
    ft, cl, metrics, det = a.flows, a.classification, a.metrics, a.detections
    spilled = a.metrics_json if include_metrics else None
    if not include_metrics or spilled is not None:
        metrics = None
    if consume:
        a.capture = a.streams = a.metrics = a.metrics_json = None
        cl.evidence = cl.flow_table = None
        empty = np.zeros(0, np.int64)
        ft.packets, ft.flow_of, ft.dir_of, ft.order = None, empty.astype(np.int32), empty.astype(np.uint8), empty
    flows = []
    with gc_paused():      # many small acyclic objects (metrics.flow.flow_metrics_json does the same)
        for i in range(len(ft)):
            e = document.flow_entry(ft, i, 0)
            e.update(protocol=cl.labels[i], confidence=round(float(cl.confidence[i]), 3), reason=cl.reasons[i])
            if spilled is not None:
                e["metrics"] = SpilledJson(spilled, i) if consume else spilled.value(i)
            elif metrics is not None:
                e["metrics"] = metrics[i].to_json()
                if consume:
                    metrics[i] = None
            if det is not None:
                e.update(det.flow_json(i))
            flows.append(e)
    part = {"capture": entry, "flows": flows}
    if det is not None:
        part["capture"]["call_attempts"] = [
            dict(e, flows=[f"0:{i}" for i in e["flows"]], media_flows=[f"0:{i}" for i in e["media_flows"]],
                 control_flows=[f"0:{i}" for i in e["control_flows"]])
            for e in det.attempts]
        part.update(protocols=det.protocols, config=det.config.to_json(), test=det.test_scope)
    return part


def _renumbered(e: dict, ci: int) -> dict:
    if ci == 0:
        return e
    return dict(e, id=f"{ci}:{e['id'].split(':', 1)[1]}", capture=ci)


def _capture_renumbered(c: dict, ci: int) -> dict:
    if ci == 0 or "call_attempts" not in c:
        return c
    def ids(xs):
        return [f"{ci}:{x.split(':', 1)[1]}" for x in xs]
    return dict(c, call_attempts=[dict(e, flows=ids(e["flows"]), media_flows=ids(e["media_flows"]),
                                       control_flows=ids(e.get("control_flows", [])))
                                  for e in c["call_attempts"]])


def document_from_parts(parts: list[dict]) -> dict:
    """The document of several captures from their capture_part()s, in order."""
    flows = [_renumbered(e, ci) for ci, part in enumerate(parts) for e in part["flows"]]
    protocols = document.protocol_summary(flows)
    per_capture = {}
    for ci, part in enumerate(parts):
        for p in part.get("protocols", ()):
            per_capture.setdefault(p["protocol"], []).append(dict(p, capture=ci))
    tested = [part for part in parts if "config" in part]
    # what the user can do about it: under --test calls, ask for every flow; else there was too little
    why = "too few packets" if tested and tested[0]["test"] == "all" else "no call flows; --test all tests them"
    for p in protocols:
        found = per_capture.get(p["protocol"])
        if found:
            p.update(document.merge_protocol_verdicts(found))
        else:
            p.update(verdict=verdicts.UNTESTED, kinds=[], summary=f"{p['protocol']}: not tested ({why})")
    doc = {"schema": document.SCHEMA, "captures": [_capture_renumbered(part["capture"], ci)
                                                   for ci, part in enumerate(parts)],
           "flows": flows, "protocols": protocols}
    if tested:
        doc["config"] = tested[0]["config"]
        doc["test"] = tested[0]["test"]
    return doc
