"""The Python API: `import throttledetect` is light; analyze() returns a Report of plain data."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

import throttledetect
from tests.test_robustness import ROOT

POLICED = ROOT / "captures" / "call_policed.pcap"
CLEAN = ROOT / "captures" / "call_clean.pcap"


def test_import_is_light_and_exports_the_api():
    code = ("import sys, throttledetect; "
            "print(sorted(m for m in ('numba', 'scipy', 'matplotlib', 'numpy') if m in sys.modules)); "
            "print(sorted(throttledetect.__all__))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    loaded, exported = out.stdout.splitlines()
    assert loaded == "[]"
    assert exported == str(sorted(["analyze", "compare", "Report", "CaptureError", "__version__"]))


def test_analyze_returns_verdicts_calls_and_the_document():
    report = throttledetect.analyze(POLICED)
    assert report.verdicts()["webrtc"] == "policing" and report.throttled
    assert report.found("throttled") and not report.found("never")
    calls = report.calls()
    assert {c["verdict"] for c in calls} == {"policing"} and len(calls) == 2
    assert report.document["schema"] == "throttledetect/1"
    assert json.loads(report.to_json())["captures"][0]["packets"] == 3178
    assert report.to_csv().startswith("level,capture,")
    assert "Per protocol" in report.to_text()
    assert len(report.analyses) == 1 and len(report.analyses[0].flows) == 4


def test_several_captures_and_per_capture_verdicts():
    report = throttledetect.analyze([CLEAN, POLICED])
    assert report.verdicts(capture=0)["webrtc"] == "none"
    assert report.verdicts(capture=1)["webrtc"] == "policing"
    assert report.verdicts()["webrtc"] == "policing"


def test_unreadable_inputs_are_listed_or_raised(tmp_path):
    report = throttledetect.analyze(CLEAN, tmp_path / "missing.pcap")
    assert [name for name, _ in report.unreadable] == [str(tmp_path / "missing.pcap")]
    with pytest.raises(throttledetect.CaptureError, match="missing.pcap: byte 0"):
        throttledetect.analyze(tmp_path / "missing.pcap")


def test_compare_and_options():
    cmp = throttledetect.compare(CLEAN, POLICED)
    row = next(r for r in cmp.rows if r.protocol == "webrtc" and r.direction == "to you")
    assert row.rate.decision == "differs" and cmp.differs
    assert "webrtc" in cmp.table()
    narrow = throttledetect.analyze(POLICED, local=["192.168.88.0/24"], bin_s=0.5, alpha=0.001)
    assert narrow.document["flows"][2]["metrics"]["bin_s"] == 0.5
