"""What the commands read: capture files, folders of captures, and standard input ("-").

    tcpdump -i eth0 -w - | throttledetect analyze -      # live, analysed when tcpdump stops (or at Ctrl-C)
    throttledetect analyze captures/                      # every capture in the folder and below it

Standard input that is a pipe is copied to an unlinked temporary file as it arrives (the reader
maps whole files), with a byte counter on the progress line. Ctrl-C while reading a pipe ends the
reading, not the command: in a shell pipeline the capture tool gets the same Ctrl-C, flushes its
last packets and closes the pipe, and what arrived until then is analysed. A second Ctrl-C aborts.
"""
from __future__ import annotations

import os
import signal
import stat
import sys
import tempfile
import time
from dataclasses import dataclass, field

STDIN = "-"
STDIN_NAME = "<stdin>"
CAPTURE_SUFFIXES = (".pcap", ".pcapng", ".cap", ".dmp", ".ntar")
COMPRESSION_SUFFIXES = (".gz", ".xz", ".bz2")
CAPTURE_MAGICS = (b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4", b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d",
                  b"\x0a\x0d\x0d\x0a")
STDIN_GRACE_S = 5.0      # after Ctrl-C, how long the writer may take to flush and close the pipe
_CHUNK = 1 << 20


class InputError(Exception):
    """An argument that names nothing to read: one line naming it."""


def is_capture_name(name: str) -> bool:
    base = name.lower()
    for suffix in COMPRESSION_SUFFIXES:
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    return base.endswith(CAPTURE_SUFFIXES)


def _looks_like_capture(path: str) -> bool:
    if is_capture_name(os.path.basename(path)):
        return True
    try:
        with open(path, "rb") as f:
            return f.read(4) in CAPTURE_MAGICS
    except OSError:
        return False


def expand(args) -> list[str]:
    """The files to read, in order: files as given, folders replaced by the captures in them
    (recursively, sorted, hidden entries skipped; a file counts as a capture by its name or its
    first bytes). A folder without captures is an InputError; missing files are left for the
    reader to report."""
    out: list[str] = []
    stdin_seen = False
    for arg in map(os.fspath, args):
        if arg == STDIN:
            if stdin_seen:
                raise InputError("'-' (standard input) can be given only once")
            stdin_seen = True
            out.append(arg)
        elif os.path.isdir(arg):
            found = []
            for root, dirs, files in os.walk(arg):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                found += [os.path.join(root, f) for f in sorted(files)
                          if not f.startswith(".") and _looks_like_capture(os.path.join(root, f))]
            if not found:
                raise InputError(f"{arg}: no capture files in this folder (.pcap, .pcapng, .cap, "
                                 "optionally .gz/.xz/.bz2)")
            out += found
        else:
            out.append(arg)
    return out


@dataclass
class Loaded:
    captures: list = field(default_factory=list)
    failed: list = field(default_factory=list)      # (name, one-line message)


def read_all(paths: list[str], *, progress=None, say=None, stdin_name: str | None = None,
             stdin_file=None) -> Loaded:
    """Read every path; a file with nothing readable is reported (say) and skipped, not fatal to
    the others. Warnings go to `say` as they come. `stdin_name` names standard input in messages."""
    from throttledetect.read import CaptureError, read_capture
    from throttledetect.progress import human_bytes
    say = say or (lambda line: print(line, file=sys.stderr))
    loaded = Loaded()
    for path in paths:
        try:
            if path == STDIN:
                spooled = stdin_file if stdin_file is not None else spool_stdin(progress, say)
                if progress:
                    progress.show(f"reading {stdin_name or STDIN_NAME}")
                cap = read_capture(spooled, name=stdin_name or STDIN_NAME)
            else:
                if progress:
                    size = _size(path)
                    progress.show(f"reading {path}" + (f" ({human_bytes(size)})" if size else ""))
                cap = read_capture(path)
        except (CaptureError, InputError) as e:
            say(f"throttledetect: error: {e}")
            loaded.failed.append(((stdin_name or STDIN_NAME) if path == STDIN else path, str(e)))
            continue
        for line in read_messages(cap):
            say(line)
        loaded.captures.append(cap)
    if progress:
        progress.clear()
    return loaded


def read_messages(cap) -> list[str]:
    """What the reader has to tell about a capture (a Capture or a StreamSummary): its warnings
    and what it could not decode."""
    lines = [f"throttledetect: warning: {cap.path}: {w}" for w in cap.warnings]
    skipped = cap.skipped_summary()
    if skipped:
        lines.append(f"throttledetect: note: {cap.path}: not decoded: {skipped}")
    return lines


def stream_all(paths: list[str], consume, *, progress=None, say=None, stdin_name: str | None = None,
               chunk_records: int | None = None) -> Loaded:
    """read_all for the streaming reader: each path's read.chunks.CaptureStream goes to
    consume(stream), whose result is kept beside the stream's summary: Loaded.captures holds
    (StreamSummary, result) pairs. Messages are read_all's (warnings once the file is read)."""
    from throttledetect.progress import human_bytes
    from throttledetect.read import CaptureError
    from throttledetect.read.chunks import DEFAULT_CHUNK_RECORDS, CaptureStream
    say = say or (lambda line: print(line, file=sys.stderr))
    loaded = Loaded()
    for path in paths:
        name = (stdin_name or STDIN_NAME) if path == STDIN else path
        try:
            if path == STDIN:
                source = spool_stdin(progress, say)
            else:
                source = path
                if progress:
                    size = _size(path)
                    progress.show(f"reading {path}" + (f" ({human_bytes(size)})" if size else ""))
            stream = CaptureStream(source, name=name if path == STDIN else None,
                                   chunk_records=chunk_records or DEFAULT_CHUNK_RECORDS)
            result = consume(stream)
        except (CaptureError, InputError) as e:
            say(f"throttledetect: error: {e}")
            loaded.failed.append((name, str(e)))
            continue
        summary = stream.summary
        for line in read_messages(summary):
            say(line)
        loaded.captures.append((summary, result))
    if progress:
        progress.clear()
    return loaded


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def spool_stdin(progress=None, say=None, stream=None):
    """Standard input as a seekable binary file: itself when it is a regular file, else a copy in
    an unlinked temporary file (or in memory when no temporary file can be made)."""
    stream = stream if stream is not None else sys.stdin.buffer
    try:
        fd = stream.fileno()
        mode = os.fstat(fd).st_mode
    except (OSError, ValueError, AttributeError):
        raise InputError(f"{STDIN_NAME}: byte 0: standard input is closed") from None
    if stat.S_ISREG(mode):
        return stream
    if os.isatty(fd):
        raise InputError(f"{STDIN_NAME}: byte 0: standard input is a terminal; pipe a capture in, e.g. "
                         "tcpdump -i eth0 -w - | throttledetect analyze -")
    spool = _scratch_file()
    total = _copy_until_eof_or_interrupt(fd, spool, progress, say)
    if total == 0:
        raise InputError(f"{STDIN_NAME}: byte 0: nothing arrived on standard input")
    spool.flush()
    return spool


def _scratch_file():
    """An unlinked temporary file; in memory (memfd) when the temporary directory is read-only."""
    try:
        return tempfile.TemporaryFile(prefix="throttledetect-stdin-")
    except OSError:
        if not hasattr(os, "memfd_create"):
            raise InputError(f"{STDIN_NAME}: byte 0: no temporary file can be made to hold standard input") from None
        return os.fdopen(os.memfd_create("throttledetect-stdin"), "w+b")


def _copy_until_eof_or_interrupt(fd: int, out, progress, say) -> int:
    from throttledetect.progress import human_bytes
    interrupted = {"at": None}

    def on_sigint(signum, frame):
        if interrupted["at"] is not None:
            raise KeyboardInterrupt
        interrupted["at"] = time.monotonic()

    previous = signal.signal(signal.SIGINT, on_sigint) if _main_thread() else None
    total = 0
    try:
        import select
        while True:
            if interrupted["at"] is not None and time.monotonic() - interrupted["at"] > STDIN_GRACE_S:
                break
            ready, _, _ = select.select([fd], [], [], 0.2)
            if not ready:
                continue
            chunk = os.read(fd, _CHUNK)
            if not chunk:
                break
            out.write(chunk)
            total += len(chunk)
            if progress:
                progress.show(f"reading {STDIN_NAME}: {human_bytes(total)} so far (Ctrl-C to stop and analyse)",
                              restart_clock=False)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    if interrupted["at"] is not None and say:
        say(f"throttledetect: note: {STDIN_NAME}: interrupted; analysing the {total} bytes read")
    return total


def _main_thread() -> bool:
    import threading
    return threading.current_thread() is threading.main_thread()
