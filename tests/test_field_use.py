"""throttledetect as its users meet it (issue 14): a user without a home, a live call through a
kernel policer captured with a relative -o, a pipe from tcpdump, the progress line on a terminal.

Everything here needs root (to switch users, to build network namespaces and to capture); each
test skips with its reason otherwise. Traffic goes only between namespaces the test creates.
"""
from __future__ import annotations

import json
import os
import pty
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from tests.live import IS_ROOT, ROOT, drop_to, policed_call_path, portable_python, run_call
from throttledetect.testbed import netns

SAMPLE = ROOT / "captures" / "call_policed.pcap"
_PORTABLE = portable_python() if IS_ROOT else None
need_user = pytest.mark.skipif(_PORTABLE is None, reason="needs root and a Python that user nobody can run "
                                                         "(sys.executable or the system's of the same version)")
_NETNS_OK, _NETNS_WHY = netns.availability()
need_netns = pytest.mark.skipif(not (_NETNS_OK and _PORTABLE), reason=f"live tests need network namespaces, tcpdump "
                                f"and a Python nobody can run: {_NETNS_WHY or 'no such Python'}")
CALL_S = 10.0


@pytest.fixture
def shared_tmp():
    """A folder every user may write in (pytest's own tmp folders are private to root)."""
    d = tempfile.mkdtemp(prefix="td-field-", dir="/tmp")
    os.chmod(d, 0o1777)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _as_nobody(args, tmp, *, timeout=180, extra_env=None):
    python, env = _PORTABLE
    env = dict(env, HOME="/nonexistent", TMPDIR=tmp, USER="nobody", LOGNAME="nobody", **(extra_env or {}))
    t0 = time.monotonic()
    proc = subprocess.run([python, "-m", "throttledetect", *map(str, args)], env=env, cwd="/",
                          preexec_fn=drop_to("nobody"), capture_output=True, text=True, timeout=timeout)
    proc.elapsed = time.monotonic() - t0
    return proc


# ---------------------------------------------------------------------------------------------
# A user without a home (service account, read-only container)


@need_user
def test_help_without_a_home_is_instant_and_clean(shared_tmp):
    proc = _as_nobody(["--help"], shared_tmp)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr and proc.stderr == "", proc.stderr
    assert "analyze" in proc.stdout
    assert proc.elapsed < 5, proc.elapsed


@need_user
def test_analysis_without_a_home_caches_in_a_private_folder(shared_tmp):
    first = _as_nobody(["analyze", SAMPLE, "--format", "json"], shared_tmp)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["protocols"][0]["verdict"] == "policing"
    cache = os.path.join(shared_tmp, f"throttledetect-numba-{pwd.getpwnam('nobody').pw_uid}")
    st = os.stat(cache)
    assert st.st_uid == pwd.getpwnam("nobody").pw_uid and st.st_mode & 0o777 == 0o700
    assert any(f.endswith(".nbi") for _, _, files in os.walk(cache) for f in files)
    second = _as_nobody(["analyze", SAMPLE, "--format", "json"], shared_tmp)
    assert second.returncode == 0 and second.stdout == first.stdout
    assert second.elapsed < first.elapsed, (first.elapsed, second.elapsed)   # the second run compiles nothing


@need_user
def test_a_cache_folder_planted_by_another_user_is_not_used(shared_tmp):
    """numba's cache files are pickles: a folder someone else made for us must be refused."""
    planted = os.path.join(shared_tmp, f"throttledetect-numba-{pwd.getpwnam('nobody').pw_uid}")
    os.mkdir(planted, 0o777)          # root's, world-writable
    code = "from throttledetect import jit; print(jit.CACHE.kind)"
    python, env = _PORTABLE
    out = subprocess.run([python, "-c", code], env=dict(env, HOME="/nonexistent", TMPDIR=shared_tmp), cwd="/",
                         preexec_fn=drop_to("nobody"), capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "none", out.stdout + out.stderr
    assert os.listdir(planted) == []


@need_user
def test_nowhere_writable_still_works(shared_tmp):
    """A read-only container: no home, no writable temporary folder: compiled in memory, no error."""
    readonly = os.path.join(shared_tmp, "ro")
    os.mkdir(readonly, 0o555)
    proc = _as_nobody(["flows", SAMPLE], readonly)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "4 flows" in proc.stdout


# ---------------------------------------------------------------------------------------------
# Live: a call through a policer


@need_netns
def test_live_capture_with_relative_output_finds_the_policer(tmp_path):
    """`capture -i eth0 -o call.pcap --analyze` in the client's namespace, from a folder only root
    can enter: the capture lands beside the user, the analysis (dropped to nobody) finds it and the
    policer, and the report is written where asked."""
    python, env = _PORTABLE
    work = tmp_path / "here"
    work.mkdir(mode=0o700)
    with policed_call_path() as topo:
        cmd = topo.ns_cmd(topo.client_ns, [python, "-m", "throttledetect", "capture", "-i", "eth0", "-o", "call.pcap",
                                           "--duration", str(CALL_S + 8), "--analyze", "--format", "json",
                                           "--report", "report.json", "--fail-on", "throttled"])
        cap = subprocess.Popen(cmd, cwd=work, env={k: v for k, v in env.items() if k != "SUDO_USER"},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(1.5)                                     # tcpdump up before the call starts
        run_call(topo, CALL_S)
        out, err = cap.communicate(timeout=300)
    assert "Traceback" not in err and "cannot open" not in err, err
    assert cap.returncode == 1, err                          # --fail-on throttled: the policer was found
    assert (work / "call.pcap").stat().st_size > 100_000
    doc = json.loads((work / "report.json").read_text())
    assert doc["captures"][0]["path"] == "call.pcap"
    verdicts = {p["protocol"]: p["verdict"] for p in doc["protocols"]}
    assert "policing" in verdicts.values(), verdicts
    policed = next(p for p in doc["protocols"] if p["verdict"] == "policing")
    # the rate's accuracy is the detectors' tests' business (a flow alone shows its share of the bucket)
    assert 0.5 < policed["rate_bps"] / topo.policer_rate_bps < 1.1, (policed, topo.policer_rate_bps)


@need_netns
def test_capture_live_says_policing_during_the_call(tmp_path):
    """`capture -i eth0 -o call.pcap --live`: the analysis (dropped to nobody) reads the capture as it
    is written and says "policing" while the call is still running; the report follows at the end."""
    import threading
    python, env = _PORTABLE
    work = tmp_path / "here"
    work.mkdir(mode=0o700)
    lines = []
    with policed_call_path() as topo:
        cmd = topo.ns_cmd(topo.client_ns, [python, "-m", "throttledetect", "capture", "-i", "eth0", "-o", "call.pcap",
                                           "--duration", str(CALL_S + 8), "--live", "--format", "json",
                                           "--report", "report.json"])
        cap = subprocess.Popen(cmd, cwd=work, env={k: v for k, v in env.items() if k != "SUDO_USER"},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        reader = threading.Thread(target=lambda: lines.extend((time.monotonic(), line) for line in cap.stderr))
        reader.start()
        time.sleep(1.5)
        run_call(topo, CALL_S)
        call_over = time.monotonic()
        cap.wait(timeout=300)
        reader.join()
    err = "".join(line for _, line in lines)
    assert "Traceback" not in err and cap.returncode == 0, err
    during = [line for t, line in lines if t < call_over and "throttledetect: live" in line and "policing" in line]
    assert during, err
    doc = json.loads((work / "report.json").read_text())
    assert "policing" in {p["verdict"] for p in doc["protocols"]}


@need_netns
@pytest.mark.parametrize("stop", ["tcpdump", "ctrl-c"])
def test_tcpdump_pipe(tmp_path, stop):
    """`tcpdump -w - | throttledetect analyze -`: stopped by ending tcpdump, or by Ctrl-C reaching the
    whole pipeline (as a terminal sends it): the analysis runs on what arrived."""
    python, env = _PORTABLE
    with policed_call_path() as topo:
        td = subprocess.Popen(topo.ns_cmd(topo.client_ns, ["tcpdump", "-i", "eth0", "-w", "-", "-U", "--immediate-mode", "-n"]),
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
        an = subprocess.Popen([python, "-m", "throttledetect", "analyze", "-", "--format", "json"], stdin=td.stdout,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                              preexec_fn=os.setpgrp if stop == "tcpdump" else None)
        td.stdout.close()
        time.sleep(1.5)
        run_call(topo, CALL_S)
        time.sleep(0.5)
        if stop == "tcpdump":
            td.send_signal(signal.SIGINT)
        else:
            td.send_signal(signal.SIGINT)
            an.send_signal(signal.SIGINT)
        out, err = an.communicate(timeout=300)
        td.wait(timeout=30)
    assert an.returncode == 0, err
    doc = json.loads(out)
    assert doc["captures"][0]["path"] == "<stdin>" and doc["captures"][0]["packets"] > 1000
    # throttling found on the call (which kind a short call shows is the detectors' tests' business)
    web = next(p for p in doc["protocols"] if p["protocol"] == "webrtc")
    assert web["verdict"] in ("policing", "shaping", "dropping"), doc["protocols"]
    if stop == "ctrl-c":
        assert "interrupted; analysing" in err


# ---------------------------------------------------------------------------------------------
# Progress on a terminal


def test_progress_line_on_a_terminal_and_none_in_a_pipe():
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "throttledetect", "analyze", str(SAMPLE)], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=slave, cwd=ROOT,
                            env={k: v for k, v in os.environ.items() if k != "THROTTLEDETECT_PROGRESS"})
    os.close(slave)
    seen = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
    proc.wait(timeout=120)
    os.close(master)
    text = seen.decode(errors="replace")
    assert proc.returncode == 0
    assert "reading " in text and "analysing " in text and "\r" in text, text
    assert "\x1b[K" in text                                  # the status line is erased, not left behind
    assert "not decoded: 2 not IP" in text                    # messages still arrive, on their own lines
    piped = subprocess.run([sys.executable, "-m", "throttledetect", "analyze", str(SAMPLE)], capture_output=True,
                           text=True, cwd=ROOT, timeout=120)
    assert "\r" not in piped.stderr and "reading" not in piped.stderr


def test_a_cold_compile_cache_is_recognised(tmp_path):
    """What the first-run note relies on: an empty cache folder reads as cold, the warm one as warm."""
    code = ("from throttledetect import jit; from throttledetect.read import blocks; "
            "print(jit.CACHE.kind, jit.cache_is_warm(blocks.read_pcap_records))")
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUMBA_")}
    cold = subprocess.run([sys.executable, "-c", code], env=dict(env, NUMBA_CACHE_DIR=str(tmp_path)), cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert cold.stdout.split() == ["user", "False"], cold.stdout + cold.stderr
    read = f"from throttledetect.read import read_capture; read_capture({str(SAMPLE)!r})"    # compiles the reader
    subprocess.run([sys.executable, "-c", read], env=dict(env, NUMBA_CACHE_DIR=str(tmp_path)), cwd=ROOT,
                   capture_output=True, timeout=300, check=True)
    warm = subprocess.run([sys.executable, "-c", code], env=dict(env, NUMBA_CACHE_DIR=str(tmp_path)), cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert warm.stdout.split() == ["user", "True"], warm.stdout + warm.stderr
