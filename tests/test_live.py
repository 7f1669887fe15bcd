"""Live verdicts: a capture fed through a pipe at (accelerated) pace gets its call's verdict while
the input is still arriving, within 5 s of capture time of the impairment's onset (captures/MANIFEST.json),
from the same detectors as the final report."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SPEED = 1.0      # real pace: the first look pays the imports, as a field tester's would
LINE = re.compile(r"throttledetect: (live|final) \S+ \(\+([\d.]+) s\): (\S+) (\S+) <-> (\S+): (\w+)(.*)")


def _truth(name: str) -> dict:
    m = json.loads((REPO / "captures" / "MANIFEST.json").read_text())
    return next(c["truth"] for c in m["captures"] if c["file"] == name)


def _live_run(name: str, tmp_path, every="1"):
    feeder = subprocess.Popen([sys.executable, "-m", "tests.pace", str(REPO / "captures" / name), str(SPEED)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
    out = tmp_path / "report.json"
    proc = subprocess.Popen([sys.executable, "-m", "throttledetect", "analyze", "-", "--live", "--live-every", every,
                             "--format", "json", "-o", str(out)], stdin=feeder.stdout, stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, cwd=REPO, text=True)
    feeder.stdout.close()
    lines = []

    def read():
        for line in proc.stderr:
            lines.append((time.monotonic(), line.rstrip("\n")))
    t = threading.Thread(target=read)
    t.start()
    feeder_err = feeder.stderr.read().decode()
    feeder.wait(timeout=120)
    fed_at = time.monotonic()
    assert proc.wait(timeout=300) == 0, lines
    t.join()
    assert "done" in feeder_err
    return lines, fed_at, json.loads(out.read_text())


@pytest.mark.slow
@pytest.mark.parametrize("name,kinds", [("call_policed.pcap", ("policing",)),
                                        ("call_shaped.pcap", ("shaping", "policing"))])
def test_verdict_during_the_call_within_5_s_of_onset(tmp_path, name, kinds):
    truth = _truth(name)
    lines, fed_at, report = _live_run(name, tmp_path)
    parsed = [(t, LINE.match(text)) for t, text in lines]
    live = [(t, m) for t, m in parsed if m and m.group(1) == "live"]
    throttled = [(t, m) for t, m in live if m.group(6) in kinds]
    assert throttled, lines
    first_t, first = throttled[0]
    assert first_t < fed_at, "the verdict came only after the input ended"
    assert float(first.group(2)) <= truth["onset_s"] + 5.0, first.group(0)
    assert "kbit/s to you since" in first.group(7)
    # the live verdicts are the detectors' own: the report made at the end names the same flows
    final = {(f["a"], f["b"]): f["verdict"] for f in report["flows"] if f.get("tested")}
    assert {(m.group(4), m.group(5)) for _, m in throttled} <= set(final)
    assert truth["kind"] in final.values()
    # and the live view ends on the report's verdicts
    last = {}
    for _, m in parsed:
        if m:
            last[(m.group(4), m.group(5))] = m.group(6)
    assert all(last.get(k) == v for k, v in final.items()), (last, final)


def test_live_needs_standard_input():
    r = subprocess.run([sys.executable, "-m", "throttledetect", "analyze", str(REPO / "captures" / "call_clean.pcap"),
                        "--live"], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert r.returncode == 2 and "--live" in r.stderr and "Traceback" not in r.stderr


def test_live_clean_call_says_none_and_nothing_throttled(tmp_path):
    lines, _, report = _live_run("call_clean.pcap", tmp_path, every="3")
    verdicts = [m.group(6) for _, text in lines if (m := LINE.match(text))]
    assert verdicts and not set(verdicts) & {"shaping", "policing", "dropping", "blocking"}
    assert "none" in verdicts
