"""Workers change nothing: documents from one process equal those from a pool, flow tables equal
today's (tests/golden/flow_tables.json, recorded before issue 15 on the samples and 30 corpus files).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.corpus import CORPUS, HAVE_CORPUS
from tests.parallel_golden import golden, golden_key, table_digest
from throttledetect import pipeline
from throttledetect.parallel import flow_pool
from throttledetect.read import read_capture

REPO = Path(__file__).resolve().parents[1]
VOLATILE = {"path"}


def _strip(x):
    if isinstance(x, dict):
        return {k: _strip(v) for k, v in x.items() if k not in VOLATILE}
    if isinstance(x, list):
        return [_strip(v) for v in x]
    return x


def _golden_paths() -> list[Path]:
    out = []
    for key in sorted(golden()):
        kind, rest = key.split("/", 1)
        p = (REPO / "captures" / rest) if kind == "captures" else CORPUS / rest
        if kind == "captures" or HAVE_CORPUS:
            out.append(p)
    return out


def _with_pids(pids: set):
    """A map_flows that runs flow_pool(2) and notes which processes did the work."""
    def run(ctx, flows, fn):
        def tagged(c, i):
            return os.getpid(), fn(c, i)
        out = flow_pool(2)(ctx, flows, tagged)
        pids.update(p for p, _ in out)
        return [r for _, r in out]
    return run


@pytest.mark.slow
@pytest.mark.parametrize("path", _golden_paths(), ids=lambda p: golden_key(p))
def test_flow_tables_equal_todays_and_workers_equal_one(path):
    cap = read_capture(path)
    one = pipeline.to_document([pipeline.analyze_capture(cap)])
    assert table_digest(one) == golden()[golden_key(path)]
    pids: set = set()
    a = pipeline.analyze_capture(cap, workers=1)
    from throttledetect.detect.run import run_detectors
    a.detections = run_detectors(cap, a.flows, a.classification, a.metrics, streams=a.streams,
                                 map_flows=_with_pids(pids))
    pooled = pipeline.to_document([a])
    assert _strip(pooled) == _strip(one)
    if int(a.detections.tested.sum()) >= 4:
        assert pids and os.getpid() not in pids      # the flows really were tested in the pool


def test_pool_used_and_equal_on_many_calls():
    """A synthetic capture with dozens of RTP calls: every tested flow goes through the pool."""
    from bench import synth
    path, _ = synth.cached_capture(20_000, 3)
    cap = read_capture(path)
    serial = pipeline.analyze_capture(cap)
    pids: set = set()
    from throttledetect.detect.run import run_detectors
    pooled = run_detectors(cap, serial.flows, serial.classification, serial.metrics, streams=serial.streams,
                           map_flows=_with_pids(pids))
    assert int(pooled.tested.sum()) >= 10
    assert len(pids) == 2 and os.getpid() not in pids
    assert [pooled.flow_json(i) for i in range(len(serial.flows))] == \
        [serial.detections.flow_json(i) for i in range(len(serial.flows))]
    assert pooled.protocols == serial.detections.protocols


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "throttledetect", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=600)


def test_many_files_side_by_side_equal_one_after_another(tmp_path):
    """analyze DIR --workers 2: the captures in two processes, one unreadable; document, messages and
    exit status as with one worker."""
    for p in (REPO / "captures").glob("*.pcap"):
        (tmp_path / p.name).symlink_to(p)
    (tmp_path / "zz_broken.pcap").write_bytes(b"not a capture")
    runs = {w: _cli("analyze", str(tmp_path), "--format", "json", "--workers", str(w)) for w in (1, 2)}
    assert runs[1].returncode == runs[2].returncode == 2
    assert runs[1].stderr == runs[2].stderr
    assert "zz_broken.pcap: byte 0: not a pcap or pcapng capture" in runs[2].stderr
    one, two = (json.loads(runs[w].stdout) for w in (1, 2))
    assert one == two
    assert [c["path"] for c in two["captures"]] == sorted(str(p) for p in tmp_path.glob("call_*.pcap"))
    assert all("protocols" in c for c in two["captures"])


def test_workers_option_is_checked():
    r = _cli("analyze", str(REPO / "captures" / "call_clean.pcap"), "--workers", "0")
    assert r.returncode == 2 and "--workers" in r.stderr and "Traceback" not in r.stderr
