"""The SIGCOMM'16 policing-study lab traces (corpus/policing, captured at the server, TCP bulk
transfers) through the whole pipeline with ``test="all"``: the truth is in each file name
(PCIR = a policer's rate in bit/s, SCIR = a shaper's). Policed traces are policing with the rate
within 5 %; shaped traces are never called policing."""
from __future__ import annotations

import re
import time

import pytest

from tests.corpus import need_corpus, policing_traces
from throttledetect.pipeline import analyze_capture

TRUTH = re.compile(r"(PCIR|SCIR)=(\d+)")
TRACES = policing_traces()


def truth(path):
    m = TRUTH.search(path.name)
    return m.group(1), float(m.group(2))


def data_flows(a, path):
    """The chunk connections of the experiment: TCP flows from the server ports named in the file
    name (CP=, CP1=, CP2=)."""
    ports = {int(x) for x in re.findall(r"CP\d?=(\d+)", path.name)}
    ft = a.flows
    return [i for i in range(len(ft)) if int(ft.proto[i]) == 6 and
            (int(ft.a_port[i]) in ports or int(ft.b_port[i]) in ports)]


@pytest.fixture(scope="module")
def results():
    out, t0 = {}, time.perf_counter()
    for path in TRACES:
        out[path.name] = (path, analyze_capture(path, with_metrics=False, test="all"))
    return out, time.perf_counter() - t0


def test_the_corpus_holds_both_kinds():
    if not TRACES:
        pytest.skip("corpus/policing not found: these tests need ../shared/corpus (CI provides it)")
    kinds = {truth(p)[0] for p in TRACES}
    assert kinds == {"PCIR", "SCIR"}


@need_corpus
@pytest.mark.parametrize("name", [p.name for p in TRACES if truth(p)[0] == "PCIR"])
def test_policed_trace_is_policing_with_its_rate(results, name):
    path, a = results[0][name]
    _, rate = truth(path)
    rep = a.detections
    flows = data_flows(a, path)
    assert flows, "no chunk connection found"
    for i in flows:
        assert rep.tested[i], f"flow {i} not tested under test='all'"
        assert rep.verdict(i) == "policing", (i, rep.verdicts[i])
        (d,) = [d for d in rep.detections[i] if d["kind"] == "policing" and d["decision"] == "detected"]
        assert d["rate_bps"] == pytest.approx(rate, rel=0.05), (i, d["rate_bps"], rate)
        assert d["qvalue"] < 0.01 and d["evidence"]
    p = next(p for p in rep.protocols if p["verdict"] == "policing")
    assert p["rate_bps"] == pytest.approx(rate, rel=0.05)


@need_corpus
@pytest.mark.parametrize("name", [p.name for p in TRACES if truth(p)[0] == "SCIR"])
def test_shaped_trace_is_not_policing(results, name):
    path, a = results[0][name]
    rep = a.detections
    for i in data_flows(a, path):
        assert rep.tested[i]
        assert rep.verdict(i) != "policing", (i, rep.verdicts[i])
        assert not [d for d in rep.detections[i] if d["kind"] == "policing" and d["decision"] == "detected"]


@need_corpus
def test_a_bulk_transfer_is_not_tested_as_a_call(results):
    """With the default scope ("calls") nothing of a TCP download is tested."""
    path = next(p for p in TRACES if truth(p)[0] == "PCIR")
    a = analyze_capture(path, with_metrics=False)
    for i in data_flows(a, path):
        assert not a.detections.tested[i]


@need_corpus
def test_time_budget(results):
    _, elapsed = results
    assert elapsed < 60.0, elapsed
