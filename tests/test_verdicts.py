"""verdicts.py: how tests become decisions (decide, one false-discovery family), a flow's verdict,
a protocol's, and re-deciding a stored document under other thresholds (rescore).

The expected q-values are Benjamini-Hochberg worked by hand in the comments."""
from __future__ import annotations

import copy
import math

import pytest

from throttledetect import verdicts as V

ALPHA = V.DEFAULTS["alpha"]


def det(kind="dropping", p=None, decision="not_detected", **kw):
    d = {"kind": kind, "direction": "ba", "decision": decision}
    if p is not None:
        d["pvalue"] = p
    d.update(kw)
    return d


# ------------------------------------------------------------------------------- decide

def test_decide_needs_significance_every_check_and_the_floor():
    vals = V.config_values()
    a, floor = vals["alpha"], vals["floor.dropping"]
    ok = det("dropping", 1e-6, effect=5 * floor, checks={"twice_the_controls": True})
    assert V.decide(ok, vals) == "detected"
    assert V.decide({**ok, "pvalue": 2 * a}, vals) == "not_detected"                  # not significant
    assert V.decide({**ok, "checks": {"twice_the_controls": False}}, vals) == "not_detected"
    assert V.decide({**ok, "effect": 0.9 * floor}, vals) == "not_detected"           # under floor.dropping
    assert V.decide({**ok, "effect": None}, vals) == "detected"                       # no effect: no floor
    # the q-value decides once the family filled it
    assert V.decide({**ok, "qvalue": 5 * a}, vals) == "not_detected"
    assert V.decide({**ok, "pvalue": 5 * a, "qvalue": a / 2}, vals) == "detected"


def test_decide_uses_the_kinds_floor_or_the_named_one():
    vals = V.config_values()
    f = vals["floor.shaping"]
    shaping = det("shaping", 1e-9, effect=1.25 * f)                                   # ms
    assert V.decide(shaping, vals) == "detected"
    assert V.decide({**shaping, "effect": 0.75 * f}, vals) == "not_detected"
    f = vals["floor.shaping_spacing"]                                                 # a share
    spacing = det("shaping", 1e-9, effect=1.2 * f, floor_key="floor.shaping_spacing")
    assert V.decide(spacing, vals) == "detected"
    assert V.decide({**spacing, "effect": 0.8 * f}, vals) == "not_detected"


def test_decide_leaves_tests_that_could_not_run_and_honours_otherwise():
    vals = V.config_values()
    assert V.decide(det("policing", decision="inconclusive", reason="no loss signal"), vals) == "inconclusive"
    assert V.decide(det("blocking", decision="detected"), vals) == "detected"          # no p-value (ICMP)
    assert V.decide(det("policing", decision="not_detected"), vals) == "not_detected"
    # "otherwise inconclusive": a test that may detect, but whose negative would not clear the flow
    maybe = det("dropping", 0.3, decision="inconclusive", otherwise="inconclusive", effect=0.05, reason="lossy")
    assert V.decide(maybe, vals) == "inconclusive"
    assert V.decide({**maybe, "pvalue": 1e-9}, vals) == "detected"


# ------------------------------------------------------------------------------- FDR

def test_benjamini_hochberg_by_hand():
    # sorted 0.001, 0.01, 0.02, 0.5 (m=4): 0.001*4/1=0.004, 0.01*4/2=0.02, 0.02*4/3=0.02667, 0.5
    q = V.benjamini_hochberg([0.02, None, 0.5, 0.001, 0.01, float("nan")])
    assert q[1] is None and q[5] is None
    assert q[3] == pytest.approx(0.004) and q[4] == pytest.approx(0.02)
    assert q[0] == pytest.approx(0.08 / 3) and q[2] == pytest.approx(0.5)


def test_fdr_turns_a_lone_weak_p_value_down():
    dets = [det("dropping", 0.009, effect=0.05)] + [det("dropping", 0.5, effect=0.0) for _ in range(9)]
    V.redecide(dets, V.config_values())
    assert dets[0]["qvalue"] == pytest.approx(0.09)          # 0.009 * 10 / 1
    assert dets[0]["decision"] == "not_detected"
    strong = [det("shaping", 1e-6, effect=100.0), det("shaping", 0.3, effect=1.0)]
    V.redecide(strong, V.config_values())
    assert strong[0]["qvalue"] == pytest.approx(2e-6) and strong[0]["decision"] == "detected"


def test_a_p_value_shared_by_a_family_counts_once():
    """Three flows of one call attempt carry one setup test (family_key): one entry in the family.
    Counted once (m=2): q = 0.006 * 2 / 1 = 0.012 > alpha 0.01. Counted three times (m=4, ranks 1-3):
    q = 0.006 * 4 / 3 = 0.008, which would pass: sharing must not buy significance."""
    shared = [det("blocking", 0.006, effect=1.0, family_key="call-setup:0") for _ in range(3)]
    other = det("dropping", 0.9, effect=0.0)
    dets = shared + [other]
    V.redecide(dets, V.config_values({"alpha": 0.01}))
    assert [d["qvalue"] for d in shared] == pytest.approx([0.012] * 3)
    assert all(d["decision"] == "not_detected" for d in shared)
    assert other["qvalue"] == pytest.approx(0.9)
    separate = [det("blocking", 0.006, effect=1.0) for _ in range(3)] + [det("dropping", 0.9, effect=0.0)]
    V.apply_fdr(separate)
    assert separate[0]["qvalue"] == pytest.approx(0.008)


def test_inconclusive_tests_and_missing_p_values_stay_out_of_the_family():
    dets = [det("dropping", 0.004, effect=0.05), det("policing", 0.001, decision="inconclusive"),
            det("shaping"), det("blocking", decision="detected")]
    V.redecide(dets, V.config_values())
    assert dets[0]["qvalue"] == pytest.approx(0.004)                     # m = 1
    assert "qvalue" not in dets[1] and "qvalue" not in dets[2]
    assert [d["decision"] for d in dets] == ["detected", "inconclusive", "not_detected", "detected"]


# ------------------------------------------------------------------------------- flow verdicts

def test_flow_verdict_precedence():
    def D(kind):
        return det(kind, decision="detected")
    assert V.flow_verdict([D("dropping"), D("shaping")]) == ("shaping", "")
    assert V.flow_verdict([D("shaping"), D("policing"), D("dropping")]) == ("policing", "")
    assert V.flow_verdict([D("policing"), D("blocking")]) == ("blocking", "")
    assert V.flow_verdict([D("dropping"), det("shaping", decision="inconclusive", reason="x")]) == ("dropping", "")
    assert V.PRECEDENCE == ("blocking", "policing", "shaping", "dropping")


def test_none_only_when_nothing_required_is_inconclusive():
    clean = [det("shaping", 0.5), det("policing"), det("dropping"), det("blocking")]
    assert V.flow_verdict(clean) == ("none", "")
    v, why = V.flow_verdict(clean + [det("dropping", decision="inconclusive", reason="lossy path: 3.0% loss")])
    assert v == "inconclusive" and why == "lossy path: 3.0% loss"
    # a test that says its inconclusive result does not matter (required False) does not block "none"
    assert V.flow_verdict(clean + [det("blocking", decision="inconclusive", reason="setup", required=False)]) == \
        ("none", "")
    v, why = V.flow_verdict([])
    assert v == "inconclusive" and why
    many = [det(k, decision="inconclusive", reason=f"r{k}") for k in ("shaping", "policing", "dropping", "blocking")]
    v, why = V.flow_verdict(many + [det("dropping", decision="inconclusive", reason="rshaping")])
    assert v == "inconclusive" and why == "rshaping; rpolicing; rdropping"      # unique, at most three
    v, why = V.flow_verdict([det("dropping", decision="inconclusive")])
    assert why == "dropping: could not be tested"


# ------------------------------------------------------------------------------- protocol verdicts

def flow(verdict, role="media", packets=100, reason="", dets=()):
    return {"verdict": verdict, "role": role, "packets": packets, "verdict_reason": reason, "detections": list(dets)}


def test_protocol_verdict_most_specific_kind():
    pv = V.protocol_verdict([flow("dropping"), flow("shaping"), flow("none"), flow("inconclusive")])
    assert pv == {"verdict": "shaping", "kinds": ["shaping", "dropping"]}
    assert V.protocol_verdict([flow("dropping"), flow("blocking", role="setup")])["verdict"] == "blocking"


def test_protocol_none_needs_its_media_tested():
    assert V.protocol_verdict([flow("none"), flow("none")])["verdict"] == "none"
    assert V.protocol_verdict([flow("none", packets=500), flow("inconclusive", packets=500)])["verdict"] == \
        "inconclusive"
    assert V.protocol_verdict([flow("inconclusive"), flow("inconclusive")])["verdict"] == "inconclusive"


def test_minor_untested_media_flows_do_not_keep_a_protocol_inconclusive():
    """Untested media flows with at most MINOR_SHARE of the packets (a side leg used for seconds)."""
    minor = [flow("none", packets=900), flow("inconclusive", packets=100)]
    assert V.protocol_verdict(minor)["verdict"] == "none"
    share = V.MINOR_SHARE
    edge = [flow("none", packets=int(1000 * (1 - share))), flow("inconclusive", packets=int(1000 * share))]
    assert V.protocol_verdict(edge)["verdict"] == "none"
    over = [flow("none", packets=700), flow("inconclusive", packets=300)]
    assert V.protocol_verdict(over)["verdict"] == "inconclusive"
    # packets_in (the JSON document's name) counts as well
    doc_like = [{"verdict": "none", "role": "media", "packets_in": 950},
                {"verdict": "inconclusive", "role": "media", "packets_in": 50}]
    assert V.protocol_verdict(doc_like)["verdict"] == "none"


def test_setup_only_protocols():
    """A protocol whose tested flows only carried call setup is judged by them; beside media
    flows, setup flows do not decide "none"."""
    assert V.protocol_verdict([flow("none", role="setup"), flow("none", role="setup")])["verdict"] == "none"
    assert V.protocol_verdict([flow("none", role="setup"), flow("inconclusive", role="setup")])["verdict"] == \
        "inconclusive"
    assert V.protocol_verdict([flow("none"), flow("inconclusive", role="setup")])["verdict"] == "none"
    summary = V.protocol_summary("whatsapp_call", [flow("none", role="setup"), flow("inconclusive", role="setup")],
                                 "inconclusive", [], None)
    assert "2 setup flows (1 set up or answered; 1 not judged: could not be judged)" in summary
    unsure = flow("inconclusive", role="setup", reason="18 of 46 requests unanswered")
    summary = V.protocol_summary("signal_call", [unsure, unsure], "inconclusive", [], None)
    assert "2 setup flows (2 not judged: 18 of 46 requests unanswered)" in summary


def test_a_setup_test_short_of_its_floor_is_inconclusive():
    """Significantly fewer requests answered than a reachable far end gives, but a share
    unanswered below the setup floor: neither a clean setup nor a block."""
    d = det("blocking", p=0.002, effect=0.39)
    d.update(floor_key="floor.setup", short_of_floor="inconclusive", reason="some unanswered")
    values = V.config_values(None)
    assert V.decide(d, values) == "inconclusive"
    assert V.decide(dict(d, pvalue=0.4), values) == "not_detected"       # not significant: answered
    assert V.decide(dict(d, effect=0.95), values) == "detected"          # nearly all unanswered
    assert V.decide(dict(d, short_of_floor=None), values) == "not_detected"


def test_protocol_summary_words():
    fl = [flow("policing", dets=[det("policing", decision="detected", onset_s=3.0)]),
          flow("none"), flow("inconclusive", reason="no loss signal")]
    s = V.protocol_summary("teams", fl, "policing", ["policing"], 500_000.0)
    assert s.startswith("teams: policing on 1 of 3 flows from 3.0 s") and "rate 500.0 kbit/s" in s
    s = V.protocol_summary("teams", [flow("none"), flow("inconclusive", reason="no loss signal")], "inconclusive",
                           [], None)
    assert s == "teams: 1 media flow tested: none; 1 could not be tested (no loss signal)."


# ------------------------------------------------------------------------------- rescore

def stored_document():
    """A document as analyze writes it: two tested flows of one protocol and an untested one."""
    return {
        "schema": "throttledetect/1",
        "flows": [
            {"id": "0:0", "capture": 0, "protocol": "teams", "tested": True, "role": "media", "packets_in": 3000,
             "verdict": "policing", "detections": [
                 det("policing", 0.003, decision="detected", effect=0.7, checks={"no_standing_queue": True}),
                 det("dropping", 1e-8, decision="detected", effect=0.03, checks={"twice_the_controls": True}),
                 det("shaping", 0.5, effect=1.0)]},
            {"id": "0:1", "capture": 0, "protocol": "teams", "tested": True, "role": "media", "packets_in": 3000,
             "verdict": "none", "detections": [det("dropping", 0.2, effect=0.001), det("shaping", 0.6, effect=0.0)]},
            {"id": "0:2", "capture": 0, "protocol": "other", "tested": False, "verdict": "none", "detections": []},
        ],
        "protocols": [{"protocol": "teams", "verdict": "policing", "kinds": ["policing", "dropping"]},
                      {"protocol": "other", "verdict": "none", "kinds": []}],
    }


def test_rescore_under_the_defaults_reproduces_the_document():
    doc = stored_document()
    out = V.rescore(doc)
    assert [f["verdict"] for f in out["flows"]] == ["policing", "none", "none"]
    assert out["protocols"][0]["verdict"] == "policing"


def test_rescore_under_a_stricter_alpha_and_floors():
    doc = stored_document()
    before = copy.deepcopy(doc)
    # 5 p-values in the family; policing q = 0.003 * 5 / 2 = 0.0075: < 0.01, not < 0.005
    strict = V.rescore(doc, {"alpha": 0.005})
    f0 = strict["flows"][0]
    assert next(d for d in f0["detections"] if d["kind"] == "policing")["decision"] == "not_detected"
    assert f0["verdict"] == "dropping"                             # the dropping test still holds
    assert strict["protocols"][0] == {"protocol": "teams", "verdict": "dropping", "kinds": ["dropping"]}
    # and a floor that the dropping effect (0.03) no longer reaches
    stricter = V.rescore(doc, {"alpha": 0.005, "floor.dropping": 0.05})
    assert stricter["flows"][0]["verdict"] == "none" and stricter["protocols"][0]["verdict"] == "none"
    # looser: the same stored statistics decide the other way
    assert V.rescore(doc, {"floor.policing": 0.8})["flows"][0]["verdict"] == "dropping"
    assert doc == before                                           # the input is not changed
    assert strict["flows"][2] == doc["flows"][2]                   # untested flows untouched


def test_rescore_rejects_unknown_thresholds():
    with pytest.raises(ValueError, match="floor.nonsense"):
        V.rescore(stored_document(), {"floor.nonsense": 1.0})


def test_rescore_families_are_per_capture():
    """Two captures: each is its own false-discovery family (as run_detectors decides them)."""
    doc = stored_document()
    second = copy.deepcopy(doc["flows"][:2])
    for f in second:
        f["capture"] = 1
        f["id"] = f["id"].replace("0:", "1:")
        for d in f["detections"]:
            if d.get("pvalue") is not None:
                d["pvalue"] = 0.9
    doc["flows"] += second
    out = V.rescore(doc, {"alpha": 0.005})
    # capture 0 alone (m=5): policing q = 0.003 * 5 / 2 = 0.0075; pooled with capture 1 (m=10) it
    # would be 0.015
    q0 = next(d for d in out["flows"][0]["detections"] if d["kind"] == "policing")["qvalue"]
    assert q0 == pytest.approx(0.0075)


# ------------------------------------------------------------------------------- configuration and words

def test_calibration_grid():
    floors = [k for k in V.DEFAULTS if k.startswith("floor.")]
    assert len(V.CALIBRATION_GRID) == 16
    assert len({tuple(sorted(p.items())) for p in V.CALIBRATION_GRID}) == 16
    assert dict(V.DEFAULTS) in V.CALIBRATION_GRID
    for p in V.CALIBRATION_GRID:
        assert set(p) == set(V.DEFAULTS)
        # one multiplier on every effect floor but call setup's (nearly every request unanswered:
        # a lower floor would call a lossy path's retransmissions a block)
        assert p["floor.setup"] == V.REFERENCE_FLOORS["floor.setup"]
        m = {p[k] / V.REFERENCE_FLOORS[k] for k in floors if k != "floor.setup"}
        assert len(m) == 1 and round(m.pop(), 9) in (0.5, 0.75, 1.0, 1.5)
        V.config_values(p)                                          # every point is a valid configuration


def test_config_values():
    assert V.config_values() == V.DEFAULTS and V.config_values() is not V.DEFAULTS
    assert V.config_values({"alpha": 0.05})["alpha"] == 0.05
    with pytest.raises(ValueError):
        V.config_values({"beta": 1})


def test_rate_words():
    assert V.fmt_rate(358_000) == "358.0 kbit/s"
    assert V.fmt_rate(1_500_000) == "1.50 Mbit/s"
    assert V.fmt_rate(None) == V.fmt_rate(math.nan) == V.fmt_rate("x") == "?"
    assert V.common_rate([40_000, 42_000]) == pytest.approx(41_000)
    assert V.common_rate([40_000, 42_000, 43_000]) == 42_000
    assert V.common_rate([40_000, 60_000]) is None
    assert V.common_rate([]) is None and V.common_rate([None, 0]) is None
    assert V.common_rate([50_000]) == 50_000
