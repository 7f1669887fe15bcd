"""`throttledetect capture`: live capture on the loopback interface, privileges dropped.

The end-to-end tests need root (to open an interface) and tcpdump; they skip with the reason
otherwise. They capture on `lo` while the test sends UDP packets to 127.0.0.1, and check that the
file is written and readable, holds those packets, and that tcpdump ran as a non-root user while
it captured (its /proc/<pid>/status Uid).
"""
from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from throttledetect.commands import capture as capmod
from throttledetect.read import read_capture

ROOT = Path(__file__).resolve().parents[1]
IS_ROOT = os.geteuid() == 0
HAVE_TCPDUMP = shutil.which("tcpdump") is not None
HAVE_LO = os.path.exists("/sys/class/net/lo")

need_live = pytest.mark.skipif(
    not (IS_ROOT and HAVE_TCPDUMP and HAVE_LO and sys.platform.startswith("linux")),
    reason="live capture needs Linux, root (to open an interface), tcpdump and the loopback interface lo",
)


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "SUDO_USER"}
    env.update(extra)
    return env


def _start(tmp_path, *args, env=None):
    out = tmp_path / "live.pcap"
    proc = subprocess.Popen([sys.executable, "-m", "throttledetect", "capture", "-i", "lo", "-o", str(out), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env or _env())
    return proc, out


def _children(pid: int) -> list[int]:
    kids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/status") as f:
                status = f.read()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if int(fields.get("PPid", "0").strip() or 0) == pid:
            kids.append(int(d))
    return kids


def _status(pid: int) -> dict:
    with open(f"/proc/{pid}/status") as f:
        return {k: v.strip() for k, v in (line.split(":", 1) for line in f if ":" in line)}


def _wait_for_dropped_tcpdump(proc, timeout=30.0) -> tuple[int, list[int]]:
    """Wait until the capture's tcpdump child has opened lo and dropped root; (pid, its uids)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"capture ended early: {proc.returncode} {proc.stderr.read()}")
        for kid in _children(proc.pid):
            try:
                st = _status(kid)
            except OSError:
                continue
            if st.get("Name") == "tcpdump":
                uids = [int(x) for x in st["Uid"].split()]
                if uids[0] != 0:                  # -Z has taken effect: the interface is open
                    return kid, uids
        time.sleep(0.05)
    raise AssertionError("tcpdump did not start and drop root in time")


def _send_udp(port: int, n: int = 5) -> list[bytes]:
    payloads = [b"throttledetect-capture-test-%d" % i for i in range(n)]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for p in payloads:
            s.sendto(p, ("127.0.0.1", port))
            time.sleep(0.02)
    return payloads


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _udp_payloads(path: Path, port: int) -> list[bytes]:
    cap = read_capture(path)
    t = cap.packets
    return [cap.payload(i) for i in range(len(t)) if t.proto[i] == 17 and t.dport[i] == port]


@need_live
def test_capture_on_loopback_with_duration(tmp_path):
    port = _free_udp_port()
    proc, out = _start(tmp_path, "--duration", "2", "--filter", f"udp port {port}")
    pid, uids = _wait_for_dropped_tcpdump(proc)
    sent = _send_udp(port)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr
    nobody = pwd.getpwnam("nobody").pw_uid
    assert all(u == nobody for u in uids), f"tcpdump ran with uids {uids}"     # real, effective, saved, fs
    assert "tcpdump ran as nobody" in stderr
    assert out.is_file()
    got = _udp_payloads(out, port)
    assert sorted(set(got)) == sorted(sent), (got, stderr)
    assert f"captured {len(got)} packets" in stderr


@need_live
def test_ctrl_c_stops_cleanly_and_reports(tmp_path):
    port = _free_udp_port()
    proc, out = _start(tmp_path, "--filter", f"udp port {port}")
    _wait_for_dropped_tcpdump(proc)
    sent = _send_udp(port, 3)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr and "aborted" not in stderr
    assert sorted(set(_udp_payloads(out, port))) == sorted(sent)
    assert "captured 3 packets" in stderr
    assert not _children(proc.pid)      # tcpdump is gone too


@need_live
def test_capture_file_belongs_to_the_sudo_user(tmp_path):
    """Under sudo the capture (and the file) go to $SUDO_USER; nobody stands in for a real user here."""
    port = _free_udp_port()
    proc, out = _start(tmp_path, "--duration", "1.5", "--filter", f"udp port {port}", env=_env(SUDO_USER="nobody"))
    _, uids = _wait_for_dropped_tcpdump(proc)
    _send_udp(port, 2)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    nobody = pwd.getpwnam("nobody")
    assert out.stat().st_uid == nobody.pw_uid and out.stat().st_gid == nobody.pw_gid
    assert uids[0] == nobody.pw_uid


@need_live
def test_analyze_never_runs_as_root(tmp_path):
    """--analyze as root: the analysis runs in a child dropped to nobody, or is refused in one line when
    that user cannot run this Python (here the interpreter lives under /root); never as root."""
    port = _free_udp_port()
    proc, out = _start(tmp_path, "--duration", "1.5", "--filter", f"udp port {port}", "--analyze")
    _wait_for_dropped_tcpdump(proc)
    _send_udp(port, 3)
    stdout, stderr = proc.communicate(timeout=120)
    assert "Traceback" not in stderr
    if proc.returncode == 0:
        assert "packets" in stdout
    else:
        assert proc.returncode == 2, stderr
        last = stderr.strip().splitlines()[-1]
        assert last.startswith("throttledetect: error: not analysing as root"), stderr
        assert f"throttledetect analyze {out}" in last
    assert out.is_file() and _udp_payloads(out, port)


@need_live
def test_unknown_interface_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "throttledetect", "capture", "-i", "nosuchif0", "-o",
                           str(tmp_path / "x.pcap"), "--duration", "1"], capture_output=True, text=True, cwd=ROOT,
                          timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("throttledetect: error: no network interface named 'nosuchif0'"), proc.stderr
    assert "Traceback" not in proc.stderr


@need_live
def test_bad_filter_is_one_line(tmp_path):
    out = tmp_path / "x.pcap"
    proc = subprocess.run([sys.executable, "-m", "throttledetect", "capture", "-i", "lo", "-o", str(out),
                           "--duration", "1", "--filter", "this is (not a filter"], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("throttledetect: error: tcpdump failed"), proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()


# ---------------------------------------------------------------------------------------------
# The pieces, without a live capture


def test_not_root_without_capabilities_gets_the_setcap_hint():
    msg = capmod.permission_problem("/bin/true", euid=1000, caps=0)
    assert msg is not None
    assert "sudo" in msg and "setcap cap_net_raw,cap_net_admin+eip" in msg


def test_not_root_with_cap_net_raw_may_capture():
    assert capmod.permission_problem("/bin/true", euid=1000, caps=1 << capmod.CAP_NET_RAW) is None
    assert capmod.permission_problem("/bin/true", euid=0, caps=0) is None


@pytest.mark.skipif(not (IS_ROOT and shutil.which("setcap")), reason="setcap (libcap2-bin) and root needed")
def test_file_capabilities_are_read(tmp_path):
    tool = tmp_path / "tool"
    shutil.copy("/bin/true", tool)
    assert capmod.file_capabilities(str(tool)) == 0
    subprocess.run(["setcap", "cap_net_raw,cap_net_admin+eip", str(tool)], check=True)
    caps = capmod.file_capabilities(str(tool))
    assert caps & (1 << capmod.CAP_NET_RAW) and caps & (1 << capmod.CAP_NET_ADMIN)
    assert capmod.permission_problem(str(tool), euid=1000, caps=0) is None


@pytest.mark.skipif(not IS_ROOT, reason="dropping privileges needs root")
def test_drop_privileges_in_child():
    nobody = pwd.getpwnam("nobody")
    out = subprocess.run(["/bin/sh", "-c", "id -u; id -G"], capture_output=True, text=True,
                         preexec_fn=capmod.drop_privileges(nobody), check=True).stdout.split()
    assert int(out[0]) == nobody.pw_uid
    assert [int(g) for g in out[1:]] == [nobody.pw_gid]     # no supplementary groups left


def test_unprivileged_user_choice(monkeypatch):
    monkeypatch.delenv("SUDO_USER", raising=False)
    assert capmod.unprivileged_user().pw_name == "nobody"
    monkeypatch.setenv("SUDO_USER", "root")                  # sudo from a root shell: still not root
    assert capmod.unprivileged_user().pw_name == "nobody"
    monkeypatch.setenv("SUDO_USER", "no-such-user-xyz")
    assert capmod.unprivileged_user().pw_name == "nobody"
    with pytest.raises(capmod.CaptureCommandError):
        capmod.unprivileged_user("root")
    with pytest.raises(capmod.CaptureCommandError):
        capmod.unprivileged_user("no-such-user-xyz")


def test_tcpdump_counters_are_parsed():
    err = ("tcpdump: listening on lo, link-type EN10MB (Ethernet), snapshot length 262144 bytes\n"
           "5 packets captured\n10 packets received by filter\n2 packets dropped by kernel\n")
    assert capmod._counters("tcpdump", err) == (5, 2)
    assert capmod._counters("dumpcap", "Capturing on 'lo'\nPackets captured: 7\n") == (7, None)
