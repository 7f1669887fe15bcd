"""Per-protocol verdicts merged across captures: the most severe verdict, and a common rate only
when the captures' rates agree."""
from __future__ import annotations

import pytest

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
        {"id": "0:2", "verdict": "policing", "local": "a", "a": "10.0.0.2:5000", "b": "198.51.100.7:3478",
         "detections": [
            {"kind": "policing", "decision": "detected", "direction": "ba", "qvalue": 1e-9, "effect": 0.5,
             "evidence": "lost when a bucket ran dry"},
            {"kind": "dropping", "decision": "detected", "direction": "ba", "qvalue": 1e-3, "effect": 0.1,
             "evidence": "more loss than the controls"}]},
        {"id": "0:3", "verdict": "inconclusive", "detections": [
            {"kind": "dropping", "decision": "inconclusive", "direction": "ba", "reason": "too few packets"},
            {"kind": "blocking", "decision": "inconclusive", "direction": "ba", "reason": "media stops",
             "estimates": {"suspect": True}}]},
    ]
    text = evidence(flows)
    lines = text.splitlines()
    assert lines[0] == "0:2 policing (to you, q=1e-09, effect 0.50): lost when a bucket ran dry"
    assert "more loss than the controls" not in text            # only the verdict's kind
    assert lines[1] == "0:3 inconclusive: media stops; too few packets"   # the sign worth a look first
    assert "0:1" not in text
    assert evidence([flows[0]]) == ""


def test_analyze_prints_the_evidence(tmp_path):
    from pathlib import Path

    from click.testing import CliRunner

    from throttledetect.cli import cli
    sample = Path(__file__).resolve().parents[1] / "captures" / "call_policed.pcap"
    out = CliRunner().invoke(cli, ["analyze", str(sample)])
    assert out.exit_code == 0
    tail = out.output.split("Evidence")[1]
    assert "policing (to you, q=" in tail and "token bucket of 358 kbit/s" in tail


@pytest.mark.parametrize("local,direction,expected", [
    ("a", "ba", "to you"), ("a", "ab", "from you"), ("b", "ab", "to you"), ("b", "ba", "from you"),
    (None, "ba", "from 198.51.100.7 to 10.0.0.2"), (None, "ab", "from 10.0.0.2 to 198.51.100.7"),
])
def test_direction_does_not_depend_on_who_sent_first(local, direction, expected):
    from throttledetect.report.text import direction_phrase
    flow = {"a": "10.0.0.2:5000", "b": "198.51.100.7:3478", "local": local}
    assert direction_phrase(flow, direction) == expected
    # the same flow seen with the other side first: the same words
    if local:
        swapped = {"a": flow["b"], "b": flow["a"], "local": "b" if local == "a" else "a"}
        assert direction_phrase(swapped, "ab" if direction == "ba" else "ba") == expected
