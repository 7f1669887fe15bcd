"""--scheduler: the same work on a Dask distributed cluster (a LocalCluster here) gives the local results."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("distributed")

REPO = Path(__file__).resolve().parents[1]
SAMPLES = sorted((REPO / "captures").glob("*.pcap"))


@pytest.fixture(scope="module")
def scheduler():
    from distributed import LocalCluster
    # in this process, on TCP: the command below connects as it would to a real cluster
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, protocol="tcp",
                      dashboard_address=None) as cluster:
        yield cluster


def _ran(cluster, name: str) -> bool:
    """Did the cluster run tasks of the function `name`?"""
    return any(name.strip("_") in p for p in cluster.scheduler.task_prefixes)


def _analyze(*args):
    r = subprocess.run([sys.executable, "-m", "throttledetect", "analyze", *args, "--format", "json"],
                       capture_output=True, text=True, cwd=REPO, timeout=600)
    return r


def test_a_capture_s_flows_tested_on_the_cluster_equal_local(scheduler):
    path = str(REPO / "captures" / "call_policed.pcap")
    local = _analyze(path, "--workers", "1")
    remote = _analyze(path, "--scheduler", scheduler.scheduler_address)
    assert local.returncode == remote.returncode == 0, remote.stderr
    assert _ran(scheduler, "flow_batch")
    assert json.loads(remote.stdout) == json.loads(local.stdout)
    assert "policing" in {p["verdict"] for p in json.loads(remote.stdout)["protocols"]}


def test_many_captures_on_the_cluster_equal_local(scheduler, tmp_path):
    for p in SAMPLES:
        (tmp_path / p.name).symlink_to(p)
    (tmp_path / "zz.pcap").write_bytes(b"broken")
    local = _analyze(str(tmp_path), "--workers", "1")
    remote = _analyze(str(tmp_path), "--scheduler", scheduler.scheduler_address)
    assert local.returncode == remote.returncode == 2
    assert _ran(scheduler, "_one_file")
    assert json.loads(remote.stdout) == json.loads(local.stdout)
    assert [line for line in remote.stderr.splitlines() if line.startswith("throttledetect:")] == \
        [line for line in local.stderr.splitlines() if line.startswith("throttledetect:")]


def test_unreachable_scheduler_is_one_line():
    r = _analyze(str(SAMPLES[0]), "--scheduler", "tcp://127.0.0.1:9")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("throttledetect: error: cannot reach the Dask scheduler")
