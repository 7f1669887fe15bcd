"""A status line on stderr for long reads, analyses and captures.

Shown only when stderr is a terminal (a log file or a pipe gets nothing, so scripts and tests see
the same stderr as before); THROTTLEDETECT_PROGRESS=1 forces it on, =0 off. The line is redrawn in
place by a background thread so that it keeps counting while the compiled loops run (they release
the GIL), and erased before anything else is printed.
"""
from __future__ import annotations

import os
import shutil
import sys
import threading
import time

TICK_S = 0.25


def enabled_for(stream) -> bool:
    forced = os.environ.get("THROTTLEDETECT_PROGRESS", "")
    if forced in ("0", "1"):
        return forced == "1"
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class Progress:
    """`with Progress() as p: p.show("reading x.pcap")`: the text plus seconds elapsed, redrawn."""

    def __init__(self, stream=None, enabled: bool | None = None):
        self.stream = stream or sys.stderr
        self.enabled = enabled_for(self.stream) if enabled is None else enabled
        self._text = ""
        self._t0 = time.monotonic()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._drawn = False

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def show(self, text: str, *, restart_clock: bool = True) -> None:
        if not self.enabled:
            return
        from throttledetect.report.terminal import sanitize
        with self._lock:
            self._text = sanitize(text)
            if restart_clock:
                self._t0 = time.monotonic()
        self._draw()
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="throttledetect-progress", daemon=True)
            self._thread.start()

    def note(self, line: str) -> None:
        """A permanent line on stderr (the status line is erased first and redrawn after)."""
        from throttledetect.report.terminal import sanitize
        with self._lock:
            self._erase()
            self.stream.write(sanitize(line.rstrip("\n"), keep_newlines=True) + "\n")
            self.stream.flush()
        self._draw()

    def clear(self) -> None:
        with self._lock:
            self._text = ""
            self._erase()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
            self._thread = None
        self.clear()

    def _run(self) -> None:
        while not self._stop.wait(TICK_S):
            self._draw()

    def _draw(self) -> None:
        if not self.enabled:
            return
        with self._lock:
            if not self._text:
                return
            width = max(20, shutil.get_terminal_size((80, 24)).columns - 1)
            line = f"{self._text}  {time.monotonic() - self._t0:.0f} s"
            if len(line) > width:
                line = line[: width - 1] + "…"
            try:
                self.stream.write("\r" + line + "\x1b[K")
                self.stream.flush()
                self._drawn = True
            except (OSError, ValueError):
                self.enabled = False

    def _erase(self) -> None:
        if self._drawn:
            try:
                self.stream.write("\r\x1b[K")
                self.stream.flush()
            except (OSError, ValueError):
                pass
            self._drawn = False


def human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000.0
    return f"{n:.1f} TB"
