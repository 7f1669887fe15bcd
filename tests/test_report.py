"""Per-protocol verdicts merged across captures: the most severe verdict, and a common rate only
when the captures' rates agree."""
from __future__ import annotations

import pytest

from tests.corpus import NDPI_PCAP_DIR, need_corpus

from throttledetect.report.document import merge_protocol_verdicts


def _part(verdict, rate=None):
    p = {"verdict": verdict, "kinds": [verdict] if verdict in ("policing", "shaping") else [], "summary": verdict}
    if rate:
        p["rate_bps"] = rate
    return p


def test_common_rate_across_captures():
    m = merge_protocol_verdicts([_part("policing", 358_000), _part("policing", 362_000), _part("none")])
    assert m["verdict"] == "policing"
    assert m["rate_bps"] == pytest.approx(360_000)
    assert m["rates_bps"] == [358_000, 362_000]
    assert "Common policing rate across 2 captures" in m["summary"]


def test_rates_that_disagree_are_listed_not_merged():
    m = merge_protocol_verdicts([_part("policing", 300_000), _part("policing", 500_000)])
    assert "rate_bps" not in m and m["rates_bps"] == [300_000, 500_000]


def test_a_less_severe_verdicts_rate_does_not_count():
    m = merge_protocol_verdicts([_part("policing", 300_000), _part("shaping", 500_000)])
    assert m["verdict"] == "policing" and m["rate_bps"] == 300_000 and "rates_bps" not in m


def test_evidence_lists_what_made_each_verdict():
    from throttledetect.report.text import evidence
    flows = [
        {"id": "0:1", "verdict": "none", "detections": []},
        {"id": "0:2", "verdict": "policing", "detections": [
            {"kind": "policing", "decision": "detected", "direction": "ba", "qvalue": 1e-9, "effect": 0.5,
             "evidence": "lost when a bucket ran dry"},
            {"kind": "dropping", "decision": "detected", "direction": "ba", "qvalue": 1e-3, "effect": 0.1,
             "evidence": "more loss than the controls"}]},
        {"id": "0:3", "verdict": "inconclusive", "verdict_reason": "lossy path: 3.0% loss", "detections": [
            {"kind": "dropping", "decision": "inconclusive", "direction": "ba", "reason": "lossy path: 3.0% loss"},
            {"kind": "blocking", "decision": "not_detected", "direction": "ba", "reason": "media arrives"}]},
        {"id": "0:4", "verdict": "inconclusive", "detections": [
            {"kind": "dropping", "decision": "inconclusive", "direction": "ba", "reason": "too few packets"},
            {"kind": "shaping", "decision": "inconclusive", "direction": "ba", "reason": "no sender clock"},
            {"kind": "policing", "decision": "inconclusive", "direction": "ba", "reason": "too few packets"}]},
    ]
    text = evidence(flows)
    lines = text.splitlines()
    assert lines[0] == "0:2 policing (ba, q=1e-09, effect 0.50): lost when a bucket ran dry"
    assert "more loss than the controls" not in text            # only the verdict's kind
    assert lines[1] == "0:3 inconclusive: lossy path: 3.0% loss"  # the flow's own reason when it has one
    assert "media arrives" not in text
    assert lines[2] == "0:4 inconclusive: too few packets; no sender clock"   # else the tests' reasons, once each
    assert "0:1" not in text
    assert evidence([flows[0]]) == ""


def _analyze_cli(*args):
    from click.testing import CliRunner

    from throttledetect.cli import cli
    return CliRunner().invoke(cli, ["analyze", *map(str, args)])


def test_analyze_prints_the_evidence():
    import json
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    sample = root / "captures" / "call_policed.pcap"
    truth = next(c["truth"] for c in json.loads((root / "captures" / "MANIFEST.json").read_text())["captures"]
                 if c["file"] == "call_policed.pcap")
    out = _analyze_cli(sample)
    assert out.exit_code == 0, out.output
    assert "Per protocol:" in out.output and "policing" in out.output.split("Evidence")[0]
    tail = out.output.split("Evidence")[1]
    assert "policing (to you, q=" in tail and "token bucket of" in tail
    # the rate the evidence states is the configured one (within 5 %)
    import re
    rates = [float(x) * 1e3 for x in re.findall(r"token bucket of (?:at least )?([\d.]+) kbit/s", tail)]
    assert rates and all(abs(r / truth["rate_bps"] - 1) < 0.05 for r in rates), rates


def test_analyze_prints_one_line_per_call_attempt():
    from pathlib import Path
    sample = Path(__file__).resolve().parents[1] / "captures" / "call_blocked.pcap"
    out = _analyze_cli(sample)
    assert out.exit_code == 0, out.output
    part = out.output.split("Call attempts")[1].split("Evidence")[0]
    # the bundled call: one attempt from 192.168.88.2, set up, then its media blocked
    assert part.count("192.168.88.2") == 1 and "set up" in part and "blocking" in part


def test_analyze_json_of_several_captures_merges_protocols():
    import json
    from pathlib import Path
    root = Path(__file__).resolve().parents[1] / "captures"
    out = _analyze_cli(root / "call_clean.pcap", root / "call_policed.pcap", "--format", "json")
    assert out.exit_code == 0, out.output
    doc = json.loads(out.output[out.output.index("{"):])
    assert len(doc["captures"]) == 2
    p = next(p for p in doc["protocols"] if p["protocol"] == "webrtc")
    assert p["verdict"] == "policing"                         # the most severe of none and policing
    assert [x["verdict"] for x in p["per_capture"]] == ["none", "policing"]
    assert {f["capture"] for f in doc["flows"]} == {0, 1}


def _calls_are_consistent(doc: dict) -> dict:
    """Every flow's `call` names an attempt of its capture that lists it (call flow or control
    flow), and every flow an attempt lists names that attempt back. Returns {(capture, id): attempt}."""
    attempts = {(ci, a["id"]): a for ci, c in enumerate(doc["captures"]) for a in c.get("call_attempts", [])}
    listed = {}
    for (ci, aid), a in attempts.items():
        assert not set(a["flows"]) & set(a["control_flows"]), a
        for fid in a["flows"] + a["control_flows"]:
            assert fid not in listed, f"{fid} in two attempts"
            listed[fid] = (ci, aid)
    for f in doc["flows"]:
        assert "call" in f
        if f["call"] is None:
            assert f["id"] not in listed, f
        else:
            assert listed.get(f["id"]) == (f["capture"], f["call"]), f
    assert set(listed) == {f["id"] for f in doc["flows"] if f["call"] is not None}
    return attempts


def test_json_flows_name_their_call_attempt():
    """Issue 12: the flows of one call carry its id; the flows of no call carry null."""
    import json
    from pathlib import Path
    root = Path(__file__).resolve().parents[1] / "captures"
    out = _analyze_cli(root / "call_clean.pcap", root / "call_policed.pcap", "--format", "json")
    assert out.exit_code == 0, out.output
    doc = json.loads(out.output[out.output.index("{"):])
    attempts = _calls_are_consistent(doc)
    assert sorted(attempts) == [(0, 0), (1, 0)]
    for f in doc["flows"]:
        # each sample holds one call (its audio and video) beside flows of no call
        assert (f["call"] is not None) == (f["protocol"] == "webrtc"), f


@need_corpus
def test_the_apps_control_connections_join_their_call():
    """A Zoom attempt: its TLS and STUN flows to Zoom's servers are the call's control flows,
    named by the attempt (JSON, CSV, terminal) and naming it back."""
    import csv
    import io
    import json
    out = _analyze_cli(NDPI_PCAP_DIR / "zoom.pcap", "--format", "json")
    assert out.exit_code == 0, out.output
    doc = json.loads(out.output[out.output.index("{"):])
    attempts = _calls_are_consistent(doc)
    zoom = [a for a in attempts.values() if a["app"] == "zoom"]
    assert zoom and zoom[0]["control_flows"]
    flows = {f["id"]: f for f in doc["flows"]}
    for fid in zoom[0]["control_flows"]:
        assert flows[fid]["protocol"] != "zoom" and not flows[fid]["tested"], flows[fid]
    out = _analyze_cli(NDPI_PCAP_DIR / "zoom.pcap", "--format", "csv")
    rows = [r for r in csv.DictReader(io.StringIO(out.output[out.output.index("level"):])) if r["level"] == "flow"]
    members = set(zoom[0]["flows"] + zoom[0]["control_flows"])
    assert {r["id"] for r in rows if r["call"] == f"0:{zoom[0]['id']}"} == members
    text = _analyze_cli(NDPI_PCAP_DIR / "zoom.pcap").output
    assert "(control: " in text.split("Call attempts")[1]
