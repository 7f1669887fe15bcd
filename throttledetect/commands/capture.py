"""`throttledetect capture`: record a capture on this machine (Linux), optionally analyse it.

    sudo throttledetect capture -i wlan0 -o call.pcap --duration 60 --filter "udp" --analyze

The packets are captured by tcpdump (dumpcap when tcpdump is missing and we are not root), run as a
child process that writes the capture to a pipe; this process copies the pipe into the output file.
Opening a network interface needs root or the CAP_NET_RAW/CAP_NET_ADMIN capabilities, and nothing
else does, so:

* as root, tcpdump is told to drop to an unprivileged user (``-Z USER``: the invoking user from
  SUDO_USER, else "nobody") right after it has opened the interface: the code that parses hostile
  packets never runs as root. (dumpcap cannot drop privileges itself, so as root it is not used.)
* the output file is created by this process and handed to the invoking user (SUDO_USER), so the
  file belongs to whoever asked for it, whatever directory it is in.
* ``--analyze`` runs ``throttledetect analyze FILE`` in a fresh child process that has dropped to
  that user before it imports or computes anything (setgroups, setgid, setuid); the root process never
  decodes a packet. When that user cannot run this Python, the analysis is refused with a message
  saying how to run it, rather than done as root.
* without root, the command says which capability is missing and how to grant it (``setcap`` on
  tcpdump, or sudo) before starting, instead of failing obscurely.

The capture stops after ``--duration`` seconds or on Ctrl-C (SIGINT): tcpdump is sent SIGINT, which
makes it flush its output and report its counters, and the number of packets captured is reported.
"""
from __future__ import annotations

import os
import pwd
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

import click

from throttledetect.commands.options import (FAIL_ON, MAX_SECONDS, Networks, Number, OutputFile, check_outputs,
                                             flatten_networks)

CAP_NET_ADMIN = 12
CAP_NET_RAW = 13
SETCAP_HINT = "sudo setcap cap_net_raw,cap_net_admin+eip $(which tcpdump)"
STOP_GRACE_S = 10.0          # after SIGINT, how long tcpdump may take to flush and exit
FALLBACK_USER = "nobody"
EXIT_CANNOT_CAPTURE = 2


class CaptureCommandError(click.ClickException):
    """One line on stderr, exit status 2: the capture could not be made (or analysed)."""

    exit_code = EXIT_CANNOT_CAPTURE

    def show(self, file=None) -> None:
        click.echo(f"throttledetect: error: {' '.join(self.format_message().split())}", err=True)


@dataclass
class CaptureResult:
    path: str
    tool: str
    packets: int | None         # as the capture tool counted them
    dropped: int | None         # dropped by the kernel (buffer overruns)
    bytes_written: int
    seconds: float
    user: str | None            # who the capture tool ran as after opening the interface


# ---------------------------------------------------------------------------------------------
# Privileges


def effective_capabilities(pid: str = "self") -> int:
    """CapEff of a process as a bit mask (0 if it cannot be read)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16)
    except OSError:
        pass
    return 0


def file_capabilities(path: str) -> int:
    """Permitted file capabilities of an executable that are raised at exec (setcap ...+eip), as a mask."""
    try:
        raw = os.getxattr(path, "security.capability")
    except (OSError, AttributeError):
        return 0
    if len(raw) < 12:
        return 0
    magic = int.from_bytes(raw[0:4], "little")
    effective = magic & 0x1
    permitted = int.from_bytes(raw[4:8], "little")
    if len(raw) >= 20:          # VFS_CAP_REVISION_2/3: a second 32-bit word
        permitted |= int.from_bytes(raw[12:16], "little") << 32
    return permitted if effective else 0


def permission_problem(tool_path: str, euid: int | None = None, caps: int | None = None) -> str | None:
    """Why a capture would fail for lack of privileges (None when it should work)."""
    euid = os.geteuid() if euid is None else euid
    if euid == 0:
        return None
    caps = effective_capabilities() if caps is None else caps
    needed = (1 << CAP_NET_RAW)
    if caps & needed or file_capabilities(tool_path) & needed:
        return None
    name = os.path.basename(tool_path)
    return (f"capturing packets needs root or the CAP_NET_RAW and CAP_NET_ADMIN capabilities, and neither "
            f"this process nor {tool_path} has them: run this command with sudo, or allow {name} once with: "
            + SETCAP_HINT.replace("tcpdump", name))


def unprivileged_user(explicit: str | None = None) -> pwd.struct_passwd:
    """The account to drop to: --user, else the one who ran sudo (SUDO_USER), else 'nobody'."""
    candidates = [explicit] if explicit else [os.environ.get("SUDO_USER"), FALLBACK_USER]
    for name in candidates:
        if not name:
            continue
        try:
            pw = pwd.getpwnam(name)
        except KeyError:
            if explicit:
                raise CaptureCommandError(f"--user {name}: no such user") from None
            continue
        if pw.pw_uid == 0:
            if explicit:
                raise CaptureCommandError(f"--user {name}: the capture must not run as root; name another user")
            continue
        return pw
    raise CaptureCommandError(f"no unprivileged user to drop to (not even {FALLBACK_USER!r}); use --user NAME")


def drop_privileges(pw: pwd.struct_passwd):
    """A preexec_fn for subprocess: give up root for good in the child, before it runs anything."""
    def _drop() -> None:
        os.setgroups([])
        os.setgid(pw.pw_gid)
        os.setuid(pw.pw_uid)
        if os.getuid() == 0 or os.geteuid() == 0:  # pragma: no cover - setuid failing silently
            os._exit(126)
    return _drop


# ---------------------------------------------------------------------------------------------
# The capture tool


def find_tool(as_root: bool) -> tuple[str, str]:
    """(name, path) of the capture program to use."""
    tcpdump = shutil.which("tcpdump") or next((p for p in ("/usr/sbin/tcpdump", "/usr/bin/tcpdump", "/sbin/tcpdump")
                                                if os.access(p, os.X_OK)), None)
    if tcpdump:
        return "tcpdump", tcpdump
    dumpcap = shutil.which("dumpcap") or ("/usr/bin/dumpcap" if os.access("/usr/bin/dumpcap", os.X_OK) else None)
    if dumpcap and not as_root:
        return "dumpcap", dumpcap
    if dumpcap:
        raise CaptureCommandError("tcpdump is needed to capture as root (dumpcap cannot drop root privileges "
                                  "after opening the interface): install tcpdump (apt-get install tcpdump), or run "
                                  "without sudo with dumpcap allowed to capture (dpkg-reconfigure wireshark-common)")
    raise CaptureCommandError("neither tcpdump nor dumpcap is installed: apt-get install tcpdump")


def _supports(tool_path: str, option: str) -> bool:
    try:
        out = subprocess.run([tool_path, "-h"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return False
    return option in out.stdout + out.stderr


def tool_command(tool: str, path: str, interface: str, bpf: str | None, drop_to: str | None) -> list[str]:
    """Argument list that captures on `interface` and writes a pcap stream to stdout."""
    if tool == "tcpdump":
        cmd = [path, "-i", interface, "-w", "-", "-U", "-s", "0", "-n"]
        if _supports(path, "immediate-mode"):
            cmd.append("--immediate-mode")   # no kernel batching: what was seen before Ctrl-C is written
        if drop_to:
            cmd += ["-Z", drop_to]
        if bpf:
            cmd.append(bpf)
        return cmd
    cmd = [path, "-i", interface, "-w", "-", "-P", "-q"]
    if bpf:
        cmd += ["-f", bpf]
    return cmd


_TCPDUMP_CAPTURED = re.compile(r"(\d+) packets? captured")
_TCPDUMP_DROPPED = re.compile(r"(\d+) packets? dropped by kernel")
_DUMPCAP_CAPTURED = re.compile(r"Packets(?: captured)?: (\d+)")


def _counters(tool: str, stderr: str) -> tuple[int | None, int | None]:
    if tool == "tcpdump":
        c, d = _TCPDUMP_CAPTURED.search(stderr), _TCPDUMP_DROPPED.search(stderr)
    else:
        c, d = _DUMPCAP_CAPTURED.search(stderr), None
    return (int(c.group(1)) if c else None), (int(d.group(1)) if d else None)


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "(no message)"


def _proc_user(pid: int) -> str | None:
    """Name of the real user a process runs as now (None if it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Uid:"):
                    uid = int(line.split()[1])
                    try:
                        return pwd.getpwuid(uid).pw_name
                    except KeyError:
                        return str(uid)
    except OSError:
        return None
    return None


def _open_output(path: str, owner: pwd.struct_passwd | None):
    if os.path.isdir(path):
        raise CaptureCommandError(f"{path}: is a directory; give a file name with -o")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o644)
    except OSError as e:
        raise CaptureCommandError(f"{path}: cannot write: {e.strerror or e}") from None
    if owner is not None:
        try:
            os.fchown(fd, owner.pw_uid, owner.pw_gid)
        except OSError:
            pass
    return os.fdopen(fd, "wb")


class PcapStreamCounter:
    """Counts the records of a classic pcap stream as its bytes go by (tcpdump -w - writes one),
    for the live packet counter; chunks may split headers anywhere."""

    def __init__(self):
        self.packets = 0
        self.bytes = 0
        self._order: str | None = None
        self._pending = b""          # an incomplete header
        self._skip = 0               # bytes of the current record's data still to pass

    def feed(self, chunk: bytes) -> None:
        self.bytes += len(chunk)
        data = self._pending + chunk
        self._pending = b""
        pos = 0
        if self._order is None:
            if len(data) < 24:
                self._pending = data
                return
            magic = data[:4]
            self._order = "big" if magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d") else "little"
            pos = 24
        while True:
            if self._skip:
                step = min(self._skip, len(data) - pos)
                self._skip -= step
                pos += step
                if self._skip:
                    return
            if len(data) - pos < 16:
                self._pending = data[pos:]
                return
            self._skip = int.from_bytes(data[pos + 8:pos + 12], self._order)
            self.packets += 1
            pos += 16


def run_capture(interface: str, output: str, *, duration: float | None = None, bpf: str | None = None,
                user: str | None = None, on_started=None, progress=None, tee=None) -> CaptureResult:
    """Capture until `duration` seconds have passed or SIGINT arrives; return what was captured.
    tee(chunk): also given every chunk of the capture as it arrives (--live)."""
    as_root = os.geteuid() == 0
    tool, tool_path = find_tool(as_root)
    problem = permission_problem(tool_path)
    if problem:
        raise CaptureCommandError(problem)
    if interface != "any" and os.path.isdir("/sys/class/net") and not os.path.exists(f"/sys/class/net/{interface}"):
        have = ", ".join(sorted(os.listdir("/sys/class/net")))
        raise CaptureCommandError(f"no network interface named {interface!r} (this machine has: {have}, and 'any')")
    drop = unprivileged_user(user) if as_root else None
    owner = _file_owner()
    cmd = tool_command(tool, tool_path, interface, bpf, drop.pw_name if drop else None)

    stop = {"requested": False}

    def _on_sigint(signum, frame):
        stop["requested"] = True

    out = _open_output(output, owner)
    previous = signal.signal(signal.SIGINT, _on_sigint)
    t0 = time.monotonic()
    written = 0
    counter = PcapStreamCounter()
    stop_hint = "" if duration else ", Ctrl-C to stop"
    try:
        try:
            # Its own process group: Ctrl-C reaches this process only, which forwards one SIGINT.
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                    preexec_fn=os.setpgrp)
        except OSError as e:
            raise CaptureCommandError(f"cannot run {tool_path}: {e.strerror or e}") from None
        if on_started:
            on_started(proc)
        signalled = False
        fd = proc.stdout.fileno()
        while True:
            if not signalled and (stop["requested"] or (duration is not None and time.monotonic() - t0 >= duration)):
                _signal(proc, signal.SIGINT)
                signalled = True
                grace_until = time.monotonic() + STOP_GRACE_S
            if signalled and time.monotonic() > grace_until:
                _signal(proc, signal.SIGKILL)
                break
            ready, _, _ = select.select([fd], [], [], 0.1)
            if not ready:
                if proc.poll() is not None and not select.select([fd], [], [], 0)[0]:
                    break
                continue
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                break
            out.write(chunk)
            written += len(chunk)
            counter.feed(chunk)
            if tee is not None:
                tee(chunk)
            if progress is not None:
                progress.show(f"capturing on {interface}: {counter.packets} packets, {_kb(written)}{stop_hint}",
                              restart_clock=False)
        try:
            proc.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            _signal(proc, signal.SIGKILL)
            proc.wait()
        stderr = proc.stderr.read().decode("utf-8", "replace")
    finally:
        signal.signal(signal.SIGINT, previous)
        out.close()
    seconds = time.monotonic() - t0
    packets, dropped = _counters(tool, stderr)
    if proc.returncode not in (0, -signal.SIGINT) and packets is None:
        msg = _last_line(stderr)
        if re.search(r"permission|not permitted|privilege", msg, re.I):
            msg += f" (capturing needs root or the capture capabilities: use sudo, or {SETCAP_HINT})"
        if written == 0:
            try:
                os.unlink(output)
            except OSError:
                pass
        raise CaptureCommandError(f"{tool} failed (exit status {proc.returncode}): {msg}")
    return CaptureResult(output, tool, packets, dropped, written, seconds, drop.pw_name if drop else None)


def _kb(n: int) -> str:
    from throttledetect.progress import human_bytes
    return human_bytes(n)


def _signal(proc: subprocess.Popen, sig: int) -> None:
    try:
        proc.send_signal(sig)
    except (ProcessLookupError, PermissionError):
        pass


def analyze_command(path: str, as_user: pwd.struct_passwd | None, *, options: list[str] = (),
                    outputs: dict | None = None, owner: pwd.struct_passwd | None = None) -> int:
    """Run `throttledetect analyze -` on the capture in a child process (dropped to `as_user` when
    given), the capture on its standard input: the child needs no access to the file's folder and a
    relative path means what it meant here. `outputs` maps analyze's output options (-o, --html) to
    destinations: the child writes into a private folder of its own, and the finished files are
    moved into place here (atomically, owned by `owner`), where the dropped user may not write."""
    job = start_analysis(path, as_user, options=options, outputs=outputs, stdin_path=path)
    return finish_analysis(job, owner)


@dataclass
class AnalysisJob:
    proc: subprocess.Popen
    outputs: dict
    scratch: str | None


def start_analysis(path: str, as_user: pwd.struct_passwd | None, *, options: list[str] = (),
                   outputs: dict | None = None, stdin_path: str | None = None) -> AnalysisJob:
    """Start `throttledetect analyze -` (see analyze_command): on the capture file at stdin_path, or,
    without one, on a pipe this process writes the capture into as it arrives (job.proc.stdin)."""
    outputs = {k: v for k, v in (outputs or {}).items() if v}
    scratch = tempfile.mkdtemp(prefix="throttledetect-analysis-") if outputs else None
    try:
        cmd = [sys.executable, "-m", "throttledetect", "analyze", "-", "--stdin-name", path, *options]
        for option, dest in outputs.items():
            cmd += [option, os.path.join(scratch, option.lstrip("-"))]
        env = dict(os.environ)
        preexec = None
        if as_user is not None:
            preexec = drop_privileges(as_user)
            env.update(HOME=as_user.pw_dir, USER=as_user.pw_name, LOGNAME=as_user.pw_name)
            env.pop("SUDO_COMMAND", None)
            if scratch:
                os.chown(scratch, as_user.pw_uid, as_user.pw_gid)
            # the compiled-code cache: throttledetect.jit finds the user a lasting place of its own
            # (its ~/.cache, else a private folder under /tmp), so only the first analysis compiles
        try:
            if stdin_path is not None:
                with open(stdin_path, "rb") as capture_file:
                    proc = subprocess.Popen(cmd, env=env, preexec_fn=preexec, cwd="/", stdin=capture_file)
            else:
                # its own process group: Ctrl-C stops the capture, and the end of the pipe ends the analysis
                proc = subprocess.Popen(cmd, env=env, preexec_fn=_own_group(preexec), cwd="/", stdin=subprocess.PIPE)
        except PermissionError as e:
            who = as_user.pw_name if as_user else "this user"
            raise CaptureCommandError(
                f"not analysing as root, and user {who!r} cannot run {sys.executable} ({e.strerror}): the capture is "
                f"in {path}; analyse it without sudo: throttledetect analyze {path}") from None
        except OSError as e:
            raise CaptureCommandError(f"cannot start the analysis ({e.strerror or e}); the capture is in {path}") from None
    except BaseException:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)
        raise
    return AnalysisJob(proc, outputs, scratch)


def _own_group(then=None):
    def pre() -> None:
        os.setpgrp()
        if then is not None:
            then()
    return pre


def finish_analysis(job: AnalysisJob, owner: pwd.struct_passwd | None = None) -> int:
    """Wait for the analysis, move its reports into place; its exit status."""
    try:
        if job.proc.stdin is not None:
            try:
                job.proc.stdin.close()
            except OSError:
                pass
        job.proc.wait()
        for option, dest in job.outputs.items():
            _deliver(os.path.join(job.scratch, option.lstrip("-")), dest, owner)
        return job.proc.returncode
    finally:
        if job.scratch:
            shutil.rmtree(job.scratch, ignore_errors=True)


def _deliver(made: str, dest: str, owner: pwd.struct_passwd | None) -> None:
    """Move a report the analysis wrote into place (atomically), owned by whoever asked for it."""
    from throttledetect.report.output import OutputError, write_atomic
    try:
        with open(made, "rb") as f:
            data = f.read()
    except OSError:
        return              # the analysis failed before writing it; it said why
    try:
        write_atomic(dest, data)
        if owner is not None:
            os.chown(dest, owner.pw_uid, owner.pw_gid)
    except (OutputError, OSError) as e:
        raise CaptureCommandError(str(e)) from None


@click.command("capture")
@click.option("-i", "--interface", required=True, metavar="IFACE", help="Network interface (see `ip link`), or 'any'.")
@click.option("-o", "--output", required=True, type=OutputFile(), metavar="FILE.pcap",
              help="Capture file to write (classic pcap).")
@click.option("--duration", type=Number(0, MAX_SECONDS, min_open=True), metavar="S",
              help="Stop after S seconds (default: at Ctrl-C).")
@click.option("--filter", "bpf", metavar="BPF", help="Capture filter, e.g. \"udp or tcp port 443\" (pcap-filter(7)).")
@click.option("--analyze", is_flag=True, help="Analyse the capture when it is done (as an unprivileged user).")
@click.option("--live", is_flag=True,
              help="Analyse while capturing: each call's verdict as it forms, every few seconds, then the report "
                   "(implies --analyze; the analysis runs as the unprivileged user).")
@click.option("--user", metavar="NAME",
              help="When run as root: the user the capture and analysis drop to (default: $SUDO_USER, else nobody).")
@click.option("--local", "local", multiple=True, type=Networks(),
              help="--analyze: address range(s) of this machine's side (default: private and similar ranges).")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table", show_default=True,
              help="--analyze: the form of the analysis.")
@click.option("--report", type=OutputFile(), metavar="FILE",
              help="--analyze: write the analysis to FILE instead of the terminal.")
@click.option("--html", type=OutputFile(), metavar="FILE", help="--analyze: also write the HTML report.")
@FAIL_ON
def command(interface, output, duration, bpf, analyze, live, user, local, fmt, report, html, fail_on):
    """Capture packets on this machine (Linux) into FILE.pcap, optionally analysing them.

    Needs root (sudo) or tcpdump with capture capabilities; as root, the packet capture and the
    analysis run as an unprivileged user (--user, $SUDO_USER or nobody). Stops after --duration
    seconds or at Ctrl-C, then reports how many packets were captured. A packet counter runs on
    stderr while capturing (when stderr is a terminal).
    """
    from throttledetect.progress import Progress
    analyze = analyze or live
    if user and os.geteuid() != 0:
        raise CaptureCommandError("--user only applies when running as root")
    given = [name for name, v in (("--local", local), ("--report", report), ("--html", html),
                                  ("--format", fmt != "table"), ("--fail-on", fail_on != "never")) if v]
    if given and not analyze:
        raise click.BadParameter(f"{', '.join(given)} apply to the analysis: add --analyze", param_hint="--analyze")
    check_outputs({"--output": output, "--report": report, "--html": html}, [])
    click.echo(f"throttledetect: capturing on {interface}"
               + (f" for {duration:g} s" if duration else " until Ctrl-C")
               + (f" (filter: {bpf})" if bpf else "") + f" -> {output}", err=True)
    options = ["--format", fmt, "--fail-on", fail_on]
    for net in flatten_networks(local) or ():
        options += ["--local", str(net)]
    job = None
    if live:
        # the analysis reads the capture on a pipe as it is written (analyze - --live), as the user
        as_user = unprivileged_user(user) if os.geteuid() == 0 else None
        job = start_analysis(output, as_user, options=options + ["--live"],
                             outputs={"--output": report, "--html": html})
    tee = _pipe_writer(job.proc.stdin) if job else None
    with Progress(enabled=False if live else None) as progress:
        result = run_capture(interface, output, duration=duration, bpf=bpf, user=user, progress=progress, tee=tee)
    count = "an unknown number of" if result.packets is None else str(result.packets)
    drops = f", {result.dropped} dropped by the kernel" if result.dropped else ""
    who = f", {result.tool} ran as {result.user}" if result.user else ""
    click.echo(f"throttledetect: captured {count} packets in {result.seconds:.1f} s ({result.bytes_written} bytes"
               f"{drops}{who}) -> {output}", err=True)
    if job is not None:
        rc = finish_analysis(job, _file_owner())
        if rc:
            sys.exit(rc)
    elif analyze:
        if result.bytes_written <= 24:
            raise CaptureCommandError(f"nothing to analyse: no packet was captured in {output}")
        as_user = unprivileged_user(user) if os.geteuid() == 0 else None
        rc = analyze_command(output, as_user, options=options, outputs={"--output": report, "--html": html},
                             owner=_file_owner())
        if rc:
            sys.exit(rc)


def _pipe_writer(pipe):
    """tee for run_capture: the chunk into the live analysis' pipe; if it has gone, capturing goes on."""
    state = {"open": True}

    def write(chunk: bytes) -> None:
        if state["open"]:
            try:
                pipe.write(chunk)
                pipe.flush()
            except (BrokenPipeError, OSError):
                state["open"] = False
    return write


def _file_owner() -> pwd.struct_passwd | None:
    """Who files made as root belong to: the user who ran sudo (None: leave them as they are)."""
    name = os.environ.get("SUDO_USER") if os.geteuid() == 0 else None
    try:
        return pwd.getpwnam(name) if name else None
    except KeyError:
        return None
