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
