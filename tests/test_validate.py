"""The validation matrix: scoring on hand-made outcomes, the table's structure, the DTX and
address-rewrite helpers, and a smoke run of a tiny matrix on the project's own testbed call
(no corpus needed; no long runs here: the full matrix is `throttledetect validate`)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from throttledetect import validate as v
from throttledetect.classify import classify
from throttledetect.flows import build_flows
from throttledetect.metrics.rtp import find_rtp_streams
from throttledetect.read import read_capture
from throttledetect.write import write_pcap

REPO = Path(__file__).resolve().parents[1]
TESTBED = next(s for s in v.TRACES if s.name == "testbed")
SC = v.SCENARIO_BY_NAME


def _u(role, verdict, **kw):
    return {"flow": 0, "label": "webrtc", "role": role, "tested": True, "flows": 1, "verdict": verdict, **kw}


def _rec(scenario, units, trace="t1"):
    return {"trace": trace, "scenario": scenario, "seed_index": 0, "units": units}


# --------------------------------------------------------------------------- scoring

def test_proportion_wilson():
    p = v.proportion(0, 10)
    assert p["rate"] == 0 and p["ci"][0] == 0 and p["ci"][1] == pytest.approx(0.2775, abs=1e-3)
    p = v.proportion(5, 10)
    assert p["rate"] == 0.5 and p["ci"] == pytest.approx([0.2366, 0.7634], abs=1e-3)
    assert v.proportion(0, 0) == {"k": 0, "n": 0, "rate": None, "ci": None}


def test_score_impairment_by_hand():
    recs = [_rec("drop 0.05", [_u("target", "dropping"), _u("bystander", "none")]),
            _rec("drop 0.05", [_u("target", "policing"), _u("bystander", "shaping")]),
            _rec("drop 0.05", [_u("target", "inconclusive")]),
            _rec("drop 0.05", [_u("target", "dropping")]),
            _rec("drop 0.05", [_u("target", "none")])]
    r = v.score_units(SC["drop 0.05"], recs)
    assert r["trials"] == 5
    assert (r["detection"]["k"], r["detection"]["n"]) == (3, 5)            # dropping, policing, dropping
    assert (r["kind_right"]["k"], r["kind_right"]["n"]) == (2, 3)
    assert r["detected_kinds"] == {"dropping": 2, "policing": 1}
    assert (r["inconclusive"]["k"], r["inconclusive"]["n"]) == (1, 5)
    assert (r["false_positive"]["k"], r["false_positive"]["n"]) == (1, 2)   # bystanders only
    assert r["fp_kinds"] == {"shaping": 1}
    assert r["rate_error"] is None


def test_score_rate_error_only_on_right_kind():
    t = 100_000.0
    recs = [_rec("police 0.7x burst small", [_u("target", "policing", rate_bps=103_000.0, truth_rate_bps=t)]),
            _rec("police 0.7x burst small", [_u("target", "policing", rate_bps=90_000.0, truth_rate_bps=t)]),
            _rec("police 0.7x burst small", [_u("target", "shaping", rate_bps=50_000.0, truth_rate_bps=t)]),
            _rec("police 0.7x burst small", [_u("target", "policing", truth_rate_bps=t)])]   # no estimate
    r = v.score_units(SC["police 0.7x burst small"], recs)
    assert (r["detection"]["k"], r["kind_right"]["k"]) == (4, 3)
    e = r["rate_error"]
    assert e["n"] == 2
    assert e["median"] == pytest.approx(0.065)
    assert e["max"] == pytest.approx(0.10)
    assert (e["within_5pct"]["k"], e["within_5pct"]["n"]) == (1, 2)


def test_score_confounder_counts_every_flow():
    recs = [_rec("jitter 20 ms (all flows)", [_u("confounder", "none"), _u("confounder", "dropping")]),
            _rec("jitter 20 ms (all flows)", [_u("confounder", "inconclusive"), _u("confounder", "none")])]
    r = v.score_units(SC["jitter 20 ms (all flows)"], recs)
    assert r["detection"] is None and r["kind_right"] is None and r["rate_error"] is None
    assert (r["false_positive"]["k"], r["false_positive"]["n"]) == (1, 4)
    assert (r["inconclusive"]["k"], r["inconclusive"]["n"]) == (1, 4)


def _result(trials, roles=None):
    roles = roles or {"t1": "call"}
    return {"traces": [{"name": n, "role": r} for n, r in roles.items()], "trials": trials, "runtime_s": 1.0}


def test_goals_met_and_not_met():
    good = [_rec("drop 0.02", [_u("target", "dropping")]) for _ in range(100)]
    good += [_rec("police 0.5x burst small", [_u("target", "policing", rate_bps=101.0, truth_rate_bps=100.0)])
             for _ in range(100)]
    good += [_rec("clean", [_u("confounder", "none")]) for _ in range(100)]
    s = v.score(_result(good))
    g = {x["goal"].split(" (")[0]: x["met"] for x in s["goals"]}
    assert g["detection >= 0.99 for drop >= 2 %"] is True
    assert g["detection >= 0.99 for policer <= 0.85x"] is True
    assert g["false positives <= 0.01 on every confounder"] is True
    assert g["kind right >= 0.95"] is True
    assert g["policer rate within 5 %"] is True

    bad = good + [_rec("drop 0.02", [_u("target", "none")]) for _ in range(5)] \
        + [_rec("clean", [_u("confounder", "blocking")]) for _ in range(2)]
    s = v.score(_result(bad))
    g = {x["goal"].split(" (")[0]: x["met"] for x in s["goals"]}
    assert g["detection >= 0.99 for drop >= 2 %"] is False      # 100/105
    assert g["false positives <= 0.01 on every confounder"] is False   # 2/102
    assert g["detection >= 0.99 for policer <= 0.85x"] is True


def test_short_traces_stay_out_of_the_goals():
    trials = [_rec("clean", [_u("confounder", "none")], trace="t1"),
              _rec("clean", [_u("confounder", "blocking")], trace="short")]
    s = v.score(_result(trials, {"t1": "call", "short": "short"}))
    assert s["rows"][0]["false_positive"]["k"] == 0
    assert s["per_trace"]["short"][0]["false_positive"]["k"] == 1


def test_table_structure():
    trials = [_rec("drop 0.05", [_u("target", "dropping"), _u("bystander", "none")]),
              _rec("police 0.7x burst small", [_u("target", "policing", rate_bps=70.0, truth_rate_bps=70.0)]),
              _rec("clean", [_u("confounder", "none")])]
    text = v.format_table(v.score(_result(trials)))
    lines = text.splitlines()
    header = lines[0]
    for col in ("scenario", "trials", "detection", "kind right", "inconclusive", "false positive", "rate error"):
        assert col in header
    ncol = header.count("|")
    main = [ln for ln in lines[2:] if ln.startswith("| ")][:3]
    assert [ln.split("|")[1].strip() for ln in main] == ["drop 0.05", "police 0.7x burst small", "clean"]
    assert all(ln.count("|") == ncol for ln in main)
    assert "1.00 (1/1)" in main[0]
    assert "0.0 % / 0.0 % (1)" in main[1]
    assert "| scenario | t1 |" in text                      # per-trace matrix
    assert "Goals" in text and text.count("MET") >= 5


def test_plan():
    short = v.TraceSpec("s", "x", role="short")
    call = v.TraceSpec("c", "y")
    tasks = v.plan([call, short], [SC["drop 0.01"], SC["clean"], SC["congest (all flows)"]], 3, 5)
    assert sum(1 for t in tasks if t[:2] == ("c", "drop 0.01")) == 3
    assert sum(1 for t in tasks if t[1] == "clean") == 2          # deterministic: once per trace
    assert sum(1 for t in tasks if t[:2] == ("c", "congest (all flows)")) == 5
    assert not any(t[0] == "s" and t[1] == "drop 0.01" for t in tasks)


def test_scenario_matrix_covers_the_issue():
    names = {s.name for s in v.SCENARIOS}
    for p in ("0.01", "0.02", "0.05", "0.1", "0.3"):
        assert f"drop {p}" in names
    for f in ("0.5", "0.7", "0.85", "0.9"):
        assert {f"police {f}x burst small", f"police {f}x burst large"} <= names
    assert {"shape 0.5x queue short", "shape 0.7x queue long", "block after 15 s", "clean",
            "DTX silence (audio)", "congest (all flows)", "jitter 50 ms (all flows)"} <= names
    assert any(s.onset_s for s in v.SCENARIOS if s.kind == "police")
    # rates follow the flow: 0.7 x 100 kbit/s, burst 250 ms worth
    imp = SC["police 0.7x burst large"].impairment(100_000.0)
    assert imp.rate_bps == pytest.approx(70_000.0) and imp.burst == pytest.approx(70_000 / 8 * 0.25)
    assert SC["police 0.7x burst small"].impairment(100_000.0).burst == 1500.0   # at least one MTU
    assert SC["shape 0.5x queue long"].impairment(80_000.0).queue == pytest.approx(40_000 / 8 * 0.5)


# --------------------------------------------------------------------------- helpers on real bytes

@pytest.fixture(scope="module")
def testbed():
    return v.prepare_trace(TESTBED, v.default_corpus(), seconds=20.0)


def test_prepare_testbed(testbed):
    assert testbed.info["duration_s"] >= 20.0
    assert testbed.targets and all(testbed.rate_bps[i] > 0 for i in testbed.targets)


def test_dtx_removes_audio_without_sequence_gaps(testbed):
    b = testbed
    cap, info = v.dtx_silence(b.cap, b.ft, b.cl, v.Dtx(), seed=3)
    assert info["streams"] == 2 and info["removed"] > 100
    assert len(cap.packets) == len(b.cap.packets) - info["removed"]
    ft = build_flows(cap)
    audio = [s for s in find_rtp_streams(cap, ft) if s.packets > 100 and np.median(s.size) < 300]
    assert len(audio) == 2
    for s in audio:
        st = s.stats()
        assert st.lost == 0 and st.sequence_errors == 0
        assert len(st.dtx_periods) >= 3
        assert s.marker.sum() >= len(st.dtx_periods) // 2
    # UDP checksums of rewritten packets stay valid
    t = cap.packets
    for r in np.flatnonzero(t.proto == 17)[:400]:
        fo = int(t.frame_off[r])
        p = Ether(bytes(cap.buffer[fo:fo + int(t.caplen[r])]))
        c = p[UDP].chksum
        del p[UDP].chksum
        assert Ether(bytes(p))[UDP].chksum == c


def test_remap_sender_keeps_checksums(tmp_path):
    pkts = [Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(src="127.0.0.1", dst="127.0.0.1") / UDP(sport=6001 if k % 2 == 0 else 6000,
                                                               dport=6000 if k % 2 == 0 else 6001) / (b"x" * (20 + k))
            for k in range(6)]
    path = tmp_path / "lo.pcap"
    write_pcap(path, [bytes(p) for p in pkts], [1_700_000_000 * 10**9 + k * 20_000_000 for k in range(6)])
    cap = v.remap_sender(read_capture(str(path)), (6001,))
    t = cap.packets
    for r in range(len(t)):
        fo = int(t.frame_off[r])
        p = Ether(bytes(cap.buffer[fo:fo + int(t.caplen[r])]))
        assert (p[IP].src if r % 2 == 0 else p[IP].dst) == v.REMAP_ADDRESS
        assert (p[IP].dst if r % 2 == 0 else p[IP].src) == "127.0.0.1"
        uc, ic = p[UDP].chksum, p[IP].chksum
        del p[UDP].chksum, p[IP].chksum
        q = Ether(bytes(p))
        assert (q[UDP].chksum, q[IP].chksum) == (uc, ic)


# --------------------------------------------------------------------------- smoke run

def test_tiny_matrix_runs():
    res = v.run_matrix([TESTBED], [SC["drop 0.3"], SC["clean"]], seeds=1, confounder_seeds=1, jobs=1, seconds=20.0)
    assert res["tasks"] == 2 and len(res["trials"]) == 2
    assert not any(r.get("error") for r in res["trials"])
    drop = next(r for r in res["trials"] if r["scenario"] == "drop 0.3")
    roles = sorted(u["role"] for u in drop["units"])
    assert roles.count("target") == 1 and "bystander" in roles
    assert drop["measured_drop_fraction"] == pytest.approx(0.3, abs=0.05)
    scored = v.score(res, [SC["drop 0.3"], SC["clean"]])
    assert [r["scenario"] for r in scored["rows"]] == ["drop 0.3", "clean"]
    assert scored["rows"][0]["detection"]["n"] == 1
    assert scored["rows"][1]["false_positive"]["n"] == 2      # both call flows of the testbed call
    text = v.format_table(scored)
    assert text.splitlines()[0].startswith("| scenario |")


def test_cli_smoke(tmp_path):
    from throttledetect.cli import cli
    out = tmp_path / "r.json"
    md = tmp_path / "r.md"
    r = CliRunner().invoke(cli, ["validate", "--traces", "testbed", "--scenarios", "clean", "--seconds", "20",
                                 "--jobs", "1", "--out", str(out), "--markdown", str(md)])
    assert r.exit_code == 0, r.output
    assert "| clean | none | 1 |" in r.output
    doc = json.loads(out.read_text())
    assert doc["schema"] == v.SCHEMA
    assert {"table", "goals", "trials", "traces", "scenarios", "date", "command"} <= set(doc)
    assert md.read_text().startswith("| scenario |")


def test_cli_missing_corpus(tmp_path):
    from throttledetect.cli import cli
    r = CliRunner().invoke(cli, ["validate", "--quick", "--corpus", str(tmp_path / "nope"), "--jobs", "1"])
    assert r.exit_code != 0
    assert "corpus" in r.output and "not found" in r.output
