"""Helpers for the tests that run throttledetect as its users do: as a user without a home, on a
live call through a kernel policer in network namespaces, from a tcpdump pipe.

`portable_python()` finds a Python an unprivileged user can run with this checkout importable (the
test venv's interpreter may live under /root, where nobody can reach it: then the system's Python
of the same version with the venv's packages on PYTHONPATH). `policed_call()` runs the testbed's
synthetic call (audio + video RTP, controls) through a tbf policer on the router's LAN side.
"""
from __future__ import annotations

import contextlib
import json
import os
import pwd
import select
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def drop_to(user: str = "nobody"):
    pw = pwd.getpwnam(user)

    def _drop():
        os.setgroups([])
        os.setgid(pw.pw_gid)
        os.setuid(pw.pw_uid)
    return _drop


def _runs_as(python: str, env: dict, user: str) -> bool:
    try:
        p = subprocess.run([python, "-c", "import numpy, click, throttledetect"], env=env, cwd="/",
                           preexec_fn=drop_to(user), capture_output=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return False
    return p.returncode == 0


def portable_python(user: str = "nobody") -> tuple[str, dict] | None:
    """(interpreter, environment) with which `user` can run this checkout's throttledetect, or None."""
    if not IS_ROOT:
        return None
    base = {k: v for k, v in os.environ.items() if not k.startswith(("NUMBA_", "THROTTLEDETECT_"))}
    paths = [str(ROOT)] + [p for p in sys.path if p.endswith("site-packages") and os.path.isdir(p)]
    env = dict(base, PYTHONPATH=os.pathsep.join(paths))
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    for python in (sys.executable, f"/usr/bin/python{version}", f"/usr/local/bin/python{version}"):
        if os.path.exists(python) and _runs_as(python, env, user):
            return python, env
    return None


def wait_for_line(proc: subprocess.Popen, stream, needle: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    seen = b""
    fd = stream.fileno()
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            seen += chunk
            if needle.encode() in seen:
                return seen.decode(errors="replace")
        elif proc.poll() is not None:
            break
    raise AssertionError(f"{needle!r} not seen in time; got {seen[-500:]!r}")


@contextlib.contextmanager
def policed_call_path():
    """Namespaces client - router - server with a policer (tbf, ~0.6x the media rate, 10 kB
    bucket, queue of one packet) on the server->client media. Yields the Topology."""
    from throttledetect.testbed.netns import Match, Throttle, Topology
    from throttledetect.testbed.traffic import AUDIO_SERVER_PORT, VIDEO_SERVER_PORT, CallConfig, nominal_rates
    rate = int(round(0.6 * nominal_rates(CallConfig())["media_down_bps"], -3))
    throttle = Throttle("policing", rate, 10000, 1300, 0,
                        [Match(17, AUDIO_SERVER_PORT, "sport"), Match(17, VIDEO_SERVER_PORT, "sport")])
    with Topology(router=True) as topo:
        topo.install(throttle, "to-local")
        topo.activate(throttle, "to-local")
        topo.policer_rate_bps = rate
        yield topo


def run_call(topo, seconds: float) -> None:
    """The testbed's synthetic call between the two namespaces, start to end (blocking)."""
    from throttledetect.testbed.traffic import CallConfig
    cfg = CallConfig(seconds=seconds, linger=1.0)
    cfg.start_epoch = time.time() + 1.0
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = []
    try:
        for role, ns in (("server", topo.server_ns), ("client", topo.client_ns)):
            c = replace(cfg, role=role)
            p = subprocess.Popen(topo.ns_cmd(ns, [sys.executable, "-m", "throttledetect.testbed.traffic", role,
                                                  "--config", json.dumps(asdict(c))]),
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=str(ROOT))
            procs.append(p)
            wait_for_line(p, p.stdout, "READY", 20)
        for p in procs:
            wait_for_line(p, p.stdout, "STOPPED", seconds + 30)
        for p in procs:
            p.wait(timeout=30)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
