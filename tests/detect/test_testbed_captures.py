"""The sample captures in captures/ (real kernel throttling, made by the project's testbed) get the
verdicts captures/MANIFEST.json documents: per flow, and per protocol with the configured rate and
onset. Everything expected is read from the manifest."""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import pytest

from tests.detect.calls import THROTTLING, trace_base, trace_flow, trace_run, why
from throttledetect.pipeline import analyze_capture

REPO = Path(__file__).resolve().parents[2]
MANIFEST = json.loads((REPO / "captures" / "MANIFEST.json").read_text())
CAPTURES = {c["file"]: c for c in MANIFEST["captures"]}


@lru_cache(maxsize=None)
def analysed(name: str):
    return analyze_capture(REPO / "captures" / name, with_metrics=False)


def flow_index(a, client: str, server: str) -> int:
    for i in range(len(a.flows)):
        ends = {a.flows.endpoint(i, "a"), a.flows.endpoint(i, "b")}
        if ends == {client, server}:
            return i
    raise KeyError((client, server))


CASES = [(c["file"], f["name"]) for c in MANIFEST["captures"] for f in c["flows"]]


def test_the_manifest_covers_every_kind():
    kinds = {c["truth"]["kind"] for c in MANIFEST["captures"]}
    assert kinds == {"none", "policing", "shaping", "blocking"}
    for c in MANIFEST["captures"]:
        assert (REPO / "captures" / c["file"]).is_file()


@pytest.mark.parametrize("file,flow", CASES, ids=[f"{f}:{n}" for f, n in CASES])
def test_each_flow_gets_its_documented_verdict(file, flow):
    c = CAPTURES[file]
    f = next(x for x in c["flows"] if x["name"] == flow)
    a = analysed(file)
    i = flow_index(a, f["client"], f["server"])
    rep = a.detections
    expected = f["expected_verdict"]
    if f["name"].endswith("_control"):
        # controls are not call flows: not tested, and said to be untested (not "none", which only
        # the flows the tests ran on may be)
        assert not rep.tested[i] and rep.verdict(i) == "untested", why(rep, i)
        return
    assert rep.tested[i]
    assert rep.verdict(i) == expected, why(rep, i)


@pytest.mark.parametrize("file", list(CAPTURES))
def test_the_protocol_verdict_and_rate(file):
    c = CAPTURES[file]
    truth = c["truth"]
    a = analysed(file)
    protos = [p for p in a.detections.protocols]
    assert len(protos) == 1, protos                          # the call's flows are one protocol
    p = protos[0]
    assert p["verdict"] == truth["kind"], p
    assert p["summary"]
    if truth["rate_bps"]:
        # one tbf on the call's audio and video together: the flows fitted as one host group
        assert p.get("rate_bps") == pytest.approx(truth["rate_bps"], rel=0.05), p


def _detected_onsets(a, kind):
    rep = a.detections
    return [d["onset_s"] for i in range(len(a.flows)) if rep.tested[i] for d in rep.detections[i]
            if d["kind"] == kind and d["decision"] == "detected" and d.get("onset_s") is not None]


def _truth_onset_s(a, c):
    """The manifest's onset is from the call's start; the detectors' from the capture's first packet."""
    t0 = int(a.capture.packets.ts_ns.min()) / 1e9
    start = min(int(a.flows.first_ns[flow_index(a, f["client"], f["server"])]) / 1e9
                for f in c["flows"] if not f["name"].endswith("_control"))
    return c["truth"]["onset_s"] + (start - t0) - c["truth"]["call_start_s"]


def test_blocking_onset():
    c = CAPTURES["call_blocked.pcap"]
    a = analysed("call_blocked.pcap")
    onsets = _detected_onsets(a, "blocking")
    assert onsets and all(abs(o - _truth_onset_s(a, c)) < 0.5 for o in onsets), (onsets, _truth_onset_s(a, c))


@pytest.mark.xfail(strict=True, reason=(
    "detect.shaping reports the onset of the look with the smallest p-value: on call_shaped.pcap (shaper "
    "from 3.0 s) the audio flow says 6.1 s (the change point of the window minima) and the video flow 0.08 s "
    "(the spacing look starts at the first packet); the protocol summary says 'from 0.1 s'"))
def test_shaping_onset():
    c = CAPTURES["call_shaped.pcap"]
    a = analysed("call_shaped.pcap")
    onsets = _detected_onsets(a, "shaping")
    assert onsets and all(abs(o - _truth_onset_s(a, c)) < 1.5 for o in onsets), (onsets, _truth_onset_s(a, c))


def test_one_tbf_on_both_flows_is_fitted_as_one_bucket():
    """call_policed.pcap: one tbf holds the audio and the video together; both flows' policing
    detections are one test of the host's flows (one p-value in the family, one rate)."""
    a = analysed("call_policed.pcap")
    rep = a.detections
    dets = [d for i in range(len(a.flows)) if rep.tested[i] for d in rep.detections[i]
            if d["kind"] == "policing" and d["decision"] == "detected"]
    assert len(dets) == 2
    assert dets[0]["family_key"] and dets[0]["family_key"] == dets[1]["family_key"]
    assert dets[0]["rate_bps"] == dets[1]["rate_bps"]
    assert all(d["checks"].get("no_standing_queue", True) for d in dets)


# ------------------------------------------------------------------------------- the clean call, impaired

def test_looped_testbed_call_clean_and_blocked():
    """captures/call_clean.pcap looped to 40 s (validate's "testbed" trace): clean is none on both
    call flows; blocked towards the client after 15 s is blocking on both, at 15 s."""
    from throttledetect.simulate import BlockAfter
    b = trace_base("testbed")
    assert len(b.targets) == 2
    a, _ = trace_run("testbed")
    for f in b.targets:
        j = trace_flow(a, b, f)
        assert a.detections.verdicts[j] == ("none", ""), why(a.detections, j)
    a, _ = trace_run("testbed", BlockAfter(15.0))
    t0 = int(a.capture.packets.ts_ns.min())
    for f in b.targets:
        j = trace_flow(a, b, f)
        assert a.detections.verdict(j) == "blocking", why(a.detections, j)
        start = (int(a.flows.first_ns[j]) - t0) / 1e9
        d = next(d for d in a.detections.detections[j] if d["kind"] == "blocking" and d["decision"] == "detected")
        assert d["onset_s"] == pytest.approx(start + 15.0, abs=0.5)


@pytest.mark.xfail(strict=True, reason=(
    "detect.policing: one simulated token bucket (simulate.Police shared=True, 425 kbit/s, "
    "250 ms) over the looped testbed call's audio and video: the video flow is called policing at 358.7 kbit/s "
    "(-16 %, its own packets' fit: the audio, 1 packet lost, gives no shared signal) and the audio flow is 'none'"))
def test_looped_testbed_call_behind_one_shared_policer():
    from throttledetect.simulate import Police
    b = trace_base("testbed")
    rate = 0.7 * sum(b.rate_bps[f] for f in b.targets)
    a, _ = trace_run("testbed", Police(rate, rate / 8 * 0.25, shared=True))
    verdicts = [a.detections.verdict(trace_flow(a, b, f)) for f in b.targets]
    assert "policing" in verdicts and not set(verdicts) - {"policing", "none"}, verdicts
    rates = [d["rate_bps"] for f in b.targets for d in a.detections.detections[trace_flow(a, b, f)]
             if d["kind"] == "policing" and d["decision"] == "detected"]
    assert all(r == pytest.approx(rate, rel=0.10) for r in rates), (rates, rate)
    assert not any(a.detections.verdict(j) in THROTTLING for j in range(len(a.flows))
                   if a.detections.tested[j] and j not in [trace_flow(a, b, f) for f in b.targets])
