"""run_detectors and the analysis document: which flows are tested, the JSON contract
(docs/DESIGN.md: flows with verdict and detections; protocols with verdict and summary), the
configuration written into it, ``--test all``, and what happens when a detector raises."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.corpus import need_corpus, policing_traces
from tests.detect.calls import (AUDIO, CALL_PORT, LOCAL, REMOTE_CALL, REMOTE_TCP, TCP_CTRL_PORT, UDP_CTRL_PORT, analyze,
                                detect, flow_of, icmp_port_unreachable, rtp_payload, tcp_frame, udp_frame)
from throttledetect import verdicts
from throttledetect.detect import run as run_mod
from throttledetect.detect.config import DEFAULT_CONFIG, DetectConfig
from throttledetect.pipeline import analyze_capture, to_document
from throttledetect.simulate import Drop

REPO = Path(__file__).resolve().parents[2]
CONTRACT_FLOW = {"id", "capture", "transport", "a", "b", "protocol", "confidence", "packets_ab", "packets_ba",
                 "bytes_ab", "bytes_ba", "first_ts", "last_ts", "verdict", "detections"}
CONTRACT_DETECTION = {"kind", "direction", "pvalue", "effect", "onset_s", "rate_bps", "burst_bytes", "evidence"}


def test_frames_parse_with_scapy():
    import scapy.layers.inet  # noqa: F401  (registers the dissectors)
    from scapy.layers.inet import ICMP, IP, TCP, UDP
    from scapy.layers.l2 import Ether
    rng = np.random.default_rng(0)
    u = Ether(udp_frame(REMOTE_CALL, 50000, LOCAL, CALL_PORT, rtp_payload(7, 960, 0x2222, 111, 100, rng), 5))
    assert u[IP].src == REMOTE_CALL and u[UDP].dport == CALL_PORT and len(u[UDP].payload) == 112
    ip = u[IP].copy()
    ip.chksum = None                     # let scapy compute it: ours must be the same
    assert IP(bytes(ip)).chksum == u[IP].chksum
    t = Ether(tcp_frame(REMOTE_TCP, 443, LOCAL, TCP_CTRL_PORT, 5001, 1001, 0x18, b"x" * 10))
    assert t[TCP].seq == 5001 and t[TCP].flags == "PA"
    i = Ether(icmp_port_unreachable("100.64.0.1", bytes(u)))
    assert i[ICMP].type == 3 and i[ICMP].code == 3


@pytest.fixture(scope="module")
def dropped_document(synthetic_call, tmp_path_factory):
    """The JSON document of the synthetic call with 5 % dropped towards the local host."""
    from tests.detect.calls import impaired
    out = tmp_path_factory.mktemp("doc") / "d.pcap"
    impaired(synthetic_call(**AUDIO), out, Drop(0.05), seed=61)
    a = analyze_capture(out)
    doc = to_document([a])
    return a, json.loads(json.dumps(doc))            # what a reader of the JSON output gets


def test_document_contract(dropped_document):
    a, doc = dropped_document
    assert doc["schema"] == "throttledetect/1"
    assert len(doc["captures"]) == 1 and len(doc["flows"]) == len(a.flows)
    for f in doc["flows"]:
        assert CONTRACT_FLOW <= set(f), CONTRACT_FLOW - set(f)
        assert f["verdict"] in verdicts.VERDICTS
        for d in f["detections"]:
            assert d["kind"] in verdicts.KINDS and d["direction"] in ("ab", "ba")
            assert d["decision"] in ("detected", "not_detected", "inconclusive")
            assert isinstance(d.get("evidence", ""), str)
            assert d.get("evidence") or d.get("reason"), d          # says what it saw, or why it could not
            if d["decision"] == "detected":
                assert d["evidence"]
    call = next(f for f in doc["flows"] if f["b"].endswith(f":{CALL_PORT}") or f["a"].endswith(f":{CALL_PORT}"))
    assert call["verdict"] == "dropping" and call["tested"] is True and call["role"] == "media"
    assert {d["kind"] for d in call["detections"]} == set(verdicts.KINDS)
    drop = next(d for d in call["detections"] if d["kind"] == "dropping")
    assert drop["pvalue"] is not None and drop["effect"] > 0 and "lost" in drop["evidence"]
    for p in doc["protocols"]:
        assert {"protocol", "flows", "verdict", "kinds", "summary"} <= set(p)
        assert p["verdict"] in verdicts.VERDICTS and isinstance(p["summary"], str) and p["summary"]
    proto = next(p for p in doc["protocols"] if p["protocol"] == call["protocol"])
    assert proto["verdict"] == "dropping" and proto["kinds"] == ["dropping"]


def test_every_detection_carries_the_contract_keys(dropped_document):
    _, doc = dropped_document
    for f in doc["flows"]:
        for d in f["detections"]:
            assert CONTRACT_DETECTION <= set(d), (CONTRACT_DETECTION - set(d), d["kind"], d.get("test"))


def test_untested_flows_say_so(dropped_document):
    a, doc = dropped_document
    tcp = doc["flows"][flow_of(a.flows, TCP_CTRL_PORT)]
    assert tcp["tested"] is False and tcp["detections"] == [] and "not tested" in tcp["verdict_reason"]
    # "none" says the tests ran and found nothing: an untested flow, and a protocol line with no
    # tested flow, say "untested" instead
    assert tcp["verdict"] == "untested"
    line = next(p for p in doc["protocols"] if p["protocol"] == tcp["protocol"])
    assert line["verdict"] == "untested" and "not tested" in line["summary"] and "--test all" in line["summary"], line


def test_the_configuration_is_written_into_the_document(synthetic_call):
    cap, ft, cl = analyze(synthetic_call(**AUDIO))
    strict = DEFAULT_CONFIG.with_thresholds(alpha=0.001, **{"floor.dropping": 0.02})
    a = analyze_capture(cap, with_metrics=False, config=strict)
    doc = json.loads(json.dumps(to_document([a])))
    assert doc["config"]["thresholds"]["alpha"] == 0.001
    assert doc["config"]["thresholds"]["floor.dropping"] == 0.02
    assert doc["config"]["thresholds"]["floor.policing"] == verdicts.DEFAULTS["floor.policing"]
    assert doc["config"]["dropping"]["lossy_path"] == DEFAULT_CONFIG.dropping.lossy_path
    assert doc["test"] == "calls"
    default_doc = to_document([analyze_capture(cap, with_metrics=False)])
    assert default_doc["config"] == DEFAULT_CONFIG.to_json()
    with pytest.raises(ValueError):
        DEFAULT_CONFIG.with_thresholds(beta=1.0)


def test_thresholds_decide_and_rescore_agrees(dropped_document):
    """The stored document re-decided under the defaults gives the same verdicts; under an alpha no
    p-value reaches, the dropping verdict goes."""
    a, doc = dropped_document
    same = verdicts.rescore(doc)
    assert [f["verdict"] for f in same["flows"]] == [f["verdict"] for f in doc["flows"]]
    assert [p["verdict"] for p in same["protocols"]] == [p["verdict"] for p in doc["protocols"]]
    none = verdicts.rescore(doc, {"alpha": 1e-300})
    assert "dropping" not in {f["verdict"] for f in none["flows"]}


def test_one_false_discovery_family_per_capture(synthetic_call):
    cap, ft, cl = analyze(synthetic_call(**AUDIO))
    rep = detect(cap, ft, cl)
    dets = [d for fl in rep.detections for d in fl]
    with_p = [d for d in dets if d.get("pvalue") is not None and d["decision"] != "inconclusive"]
    copy = [dict(d) for d in with_p]
    verdicts.apply_fdr(copy)
    assert [d.get("qvalue") for d in with_p] == pytest.approx([d["qvalue"] for d in copy])


def test_unknown_test_scope_is_refused(synthetic_call):
    cap, ft, cl = analyze(synthetic_call(**AUDIO))
    with pytest.raises(ValueError, match="test must be one of"):
        detect(cap, ft, cl, test="everything")


def test_all_scope_tests_non_call_flows(synthetic_call):
    cap, ft, cl = analyze(synthetic_call(**AUDIO))
    calls = detect(cap, ft, cl)
    every = detect(cap, ft, cl, test="all")
    tcp, udp = flow_of(ft, TCP_CTRL_PORT), flow_of(ft, UDP_CTRL_PORT)
    assert not calls.tested[tcp] and not calls.tested[udp]
    assert every.tested[tcp] and every.tested[udp]
    assert every.test_scope == "all"
    assert every.verdict(tcp) not in verdicts.KINDS and every.verdict(udp) not in verdicts.KINDS
    assert {d["test"] for d in every.detections[tcp] if d["kind"] == "policing"} == {"sigcomm16"}
    assert every.verdicts[flow_of(ft, CALL_PORT)] == calls.verdicts[flow_of(ft, CALL_PORT)]


# ------------------------------------------------------------------------------- detector errors

def _broken_registry(monkeypatch):
    from throttledetect.detect.detector import Detector

    def boom(ctx, i):
        raise RuntimeError("boom in a detector")
    monkeypatch.setattr(run_mod, "DETECTORS", tuple(run_mod.DETECTORS) +
                        (Detector(name="broken", kind="dropping", params="dropping", detect=boom),))


def test_strict_mode_is_on_for_the_test_session():
    import os
    assert os.environ.get("THROTTLEDETECT_STRICT") == "1"


def test_a_detector_error_propagates_under_strict(synthetic_call, monkeypatch):
    cap, ft, cl = analyze(synthetic_call(**AUDIO))
    _broken_registry(monkeypatch)
    monkeypatch.setenv("THROTTLEDETECT_STRICT", "1")
    with pytest.raises(RuntimeError, match="boom in a detector"):
        detect(cap, ft, cl)


def test_a_detector_error_is_an_inconclusive_detection_otherwise(synthetic_call, monkeypatch):
    cap, ft, cl = analyze(synthetic_call(**AUDIO))
    _broken_registry(monkeypatch)
    monkeypatch.delenv("THROTTLEDETECT_STRICT", raising=False)
    rep = detect(cap, ft, cl)
    i = flow_of(ft, CALL_PORT)
    err = [d for d in rep.detections[i] if d.get("test") == "broken"]
    assert len(err) == 1
    assert err[0]["decision"] == "inconclusive" and err[0]["kind"] == "dropping"
    assert "RuntimeError" in err[0]["reason"] and "boom in a detector" in err[0]["reason"]
    assert rep.verdicts[i][0] == "inconclusive" and "boom in a detector" in rep.verdicts[i][1]
    # the other detectors still ran
    assert {d["kind"] for d in rep.detections[i]} == set(verdicts.KINDS)


# ------------------------------------------------------------------------------- the command line

def _cli(args):
    from click.testing import CliRunner

    from throttledetect.cli import cli
    return CliRunner().invoke(cli, args)


@need_corpus
def test_cli_test_all_finds_tcp_policing():
    path = next(p for p in policing_traces() if "PCIR=500000-" in p.name)
    out = _cli(["analyze", str(path), "--test", "all", "--format", "json"])
    assert out.exit_code == 0, out.output
    doc = json.loads(out.output[out.output.index("{"):])
    assert doc["test"] == "all"
    policed = [f for f in doc["flows"] if f["verdict"] == "policing"]
    assert policed and all(f["transport"] == "tcp" for f in policed)
    rate = next(d["rate_bps"] for d in policed[0]["detections"] if d["kind"] == "policing" and
                d["decision"] == "detected")
    assert rate == pytest.approx(500_000, rel=0.05)
    calls = _cli(["analyze", str(path), "--format", "json"])
    doc = json.loads(calls.output[calls.output.index("{"):])
    assert doc["test"] == "calls" and not [f for f in doc["flows"] if f.get("tested")]


def test_cli_thresholds_are_recorded():
    sample = REPO / "captures" / "call_policed.pcap"
    out = _cli(["analyze", str(sample), "--format", "json", "--threshold", "floor.policing=0.6", "--alpha", "0.005"])
    assert out.exit_code == 0, out.output
    doc = json.loads(out.output[out.output.index("{"):])
    assert doc["config"]["thresholds"]["floor.policing"] == 0.6 and doc["config"]["thresholds"]["alpha"] == 0.005
    bad = _cli(["analyze", str(sample), "--threshold", "floor.nonsense=1"])
    assert bad.exit_code != 0


def test_detect_config_fields():
    c = DetectConfig()
    j = c.to_json()
    assert set(j) >= {"thresholds", "dropping", "policing", "shaping", "blocking", "seed"}
    assert j["thresholds"] == verdicts.DEFAULTS
