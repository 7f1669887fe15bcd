"""The compiled loops are ready before a capture needs them (throttledetect/warm.py).

Each test gives numba a cache directory of its own (NUMBA_CACHE_DIR), empty, so it sees a machine
where nothing was ever compiled; numba writes one index file (.nbi) per compiled function there."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from throttledetect import warm

REPO = Path(__file__).resolve().parents[1]
SAMPLES = sorted((REPO / "captures").glob("*.pcap"))


def _env(cache: Path) -> dict:
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache))
    env.pop("THROTTLEDETECT_NO_JIT", None)
    env.pop("NUMBA_DISABLE_JIT", None)
    return env


def _compiled(cache: Path) -> set:
    return {p.name for p in cache.rglob("*.nbi")}


def _run(args, env, **kw):
    r = subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=env, capture_output=True, timeout=600, **kw)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    return r


def _as_pcapng(src: Path, dest: Path) -> Path:
    from scapy.utils import RawPcapReader

    from throttledetect.write import write_pcapng
    packets = [(0, meta.sec * 1_000_000 + meta.usec, data) for data, meta in RawPcapReader(str(src))]
    write_pcapng(dest, packets, [(1, None)])
    return dest


def test_tiny_call_reads_back_as_a_call_with_losses(tmp_path):
    """The warm-up's capture is one every stage takes: a call flow, tested, with RTP losses (so the
    loss and policing tests run, and their loops compile), in pcap and in pcapng alike."""
    from throttledetect.pipeline import analyze_capture, to_document
    docs = []
    for path in warm.write_tiny_call(str(tmp_path)):
        docs.append(to_document([analyze_capture(path)], include_metrics=True))
    for doc in docs:
        tested = [f for f in doc["flows"] if f.get("tested")]
        assert tested, [f["protocol"] for f in doc["flows"]]
        assert any(d.get("test") for f in tested for d in f.get("detections", ())), tested
        assert {f["transport"] for f in doc["flows"]} >= {"udp", "tcp"}
    assert [f["a"] for f in docs[0]["flows"]] == [f["a"] for f in docs[1]["flows"]]


@pytest.mark.slow
def test_warm_up_compiles_every_loop_that_analyze_and_live_run(tmp_path):
    """After `python -m throttledetect.warm` on a machine that never compiled anything, analysing the
    samples (pcap and pcapng, from a file and live from a pipe) compiles nothing more."""
    cache = tmp_path / "numba"
    env = _env(cache)
    r = _run(["throttledetect.warm"], env)
    assert "compiled loops ready" in r.stderr.decode()
    ready = _compiled(cache)
    assert ready
    pcapng = _as_pcapng(REPO / "captures" / "call_policed.pcap", tmp_path / "call_policed.pcapng")
    for sample in [*SAMPLES, pcapng]:
        _run(["throttledetect", "analyze", str(sample), "--format", "json", "-o", os.devnull], env)
    with open(REPO / "captures" / "call_shaped.pcap", "rb") as stdin:
        _run(["throttledetect", "analyze", "-", "--live", "--format", "json", "-o", os.devnull], env, stdin=stdin)
    assert _compiled(cache) - ready == set()


@pytest.mark.slow
def test_live_on_a_machine_that_never_compiled_says_so_while_it_compiles(tmp_path):
    """A field tester's first live run: the ~20-30 s of compiling is said as it starts (not a silent
    wait), and the verdicts still come, from every packet that arrived meanwhile."""
    env = _env(tmp_path / "numba")
    with open(REPO / "captures" / "call_policed.pcap", "rb") as stdin:
        r = _run(["throttledetect", "analyze", "-", "--live", "--format", "json", "-o", str(tmp_path / "r.json")],
                 env, stdin=stdin)
    err = r.stderr.decode()
    assert "compiling the packet decoder" in err
    assert err.index("compiling the packet decoder") < err.index("decoder ready after")
    assert "policing" in (tmp_path / "r.json").read_text()
