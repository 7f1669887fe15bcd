"""Live verdicts: while a capture arrives on a pipe, each call's verdict as it forms.

    tcpdump -i wlan0 -w - -U | throttledetect analyze - --live
    throttledetect: live 12:03:18 (+7.0 s): webrtc 192.168.88.2:50104 <-> 203.0.113.10:3479: policing at
                    358 kbit/s to you since 12:03:15

A thread copies the pipe into an unlinked spool file as fast as it arrives (the writer, tcpdump,
must never block on us) and follows the pcap record headers, so the main thread knows where the
last complete record ends and how far capture time has got. Every `every_s` seconds of capture
time the main thread runs the whole pipeline (the same detectors, nothing else) on the capture so
far, read up to that last complete record, and prints a line for each tested call flow whose
verdict or rate changed. An analysis that takes longer than the interval delays the next one; it
never loses data. At the end of the input the spool is analysed once more, as `analyze -` does.

pcapng input (dumpcap) is followed by block boundaries and analysed every `every_s` seconds of
wall time, since its timestamps need the interface's resolution to read.
"""
from __future__ import annotations

import os
import select
import threading
import time
from dataclasses import dataclass, field

DEFAULT_EVERY_S = 2.0
THROTTLING = ("shaping", "policing", "dropping", "blocking")


def _warm_up(settings: dict, say) -> None:
    """Compile (or load) every loop the looks will run while the first packets arrive, so the first
    look is not late by it (warm.py). On a machine where they were never compiled that takes
    20-30 s, and is said as it starts (numba's compile event, not a timer: a slow machine loading
    the cache is not compiling): the verdicts of those seconds come late (not lost: the spool
    keeps every packet, and the first look reads them all)."""
    from throttledetect.warm import warm_up
    compiled = []

    def compiling():
        compiled.append(True)
        say("throttledetect: live: compiling the packet decoder for this machine (first run only, 20-30 s on 2 "
            "cores; `python -m throttledetect.warm` does it ahead); every packet is kept for the first look")
    took = warm_up(settings, on_compile=compiling)
    if compiled:
        say(f"throttledetect: live: decoder ready after {took:.0f} s; looks start now")


class _RecordFollower:
    """Complete-record boundary and latest timestamp of a pcap (or pcapng) byte stream, fed in chunks."""

    def __init__(self):
        self.kind: str | None = None     # "pcap" / "pcapng" / "other"
        self.order = "little"
        self.nano = False
        self.pos = 0                     # start of the next header to read
        self.boundary = 0                # end of the last complete record (0: none yet)
        self.first_ns: int | None = None
        self.last_ns: int | None = None
        self.size = 0

    def feed(self, spool_read, size: int) -> None:
        """The stream is now `size` bytes long; spool_read(offset, n) reads it back."""
        self.size = size
        if self.kind is None:
            if size < 24:
                return
            head = spool_read(0, 4)
            if head in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
                self.kind, self.order, self.nano = "pcap", "little", head == b"\x4d\x3c\xb2\xa1"
            elif head in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
                self.kind, self.order, self.nano = "pcap", "big", head == b"\xa1\xb2\x3c\x4d"
            elif head == b"\x0a\x0d\x0d\x0a":
                self.kind = "pcapng"
                self.order = "little" if spool_read(8, 4) == b"\x4d\x3c\x2b\x1a" else "big"
            else:
                self.kind = "other"
            self.pos = 24 if self.kind == "pcap" else 0
        if self.kind == "pcap":
            while self.pos + 16 <= size:
                h = spool_read(self.pos, 16)
                sec = int.from_bytes(h[0:4], self.order)
                frac = int.from_bytes(h[4:8], self.order)
                incl = int.from_bytes(h[8:12], self.order)
                if self.pos + 16 + incl > size:
                    break
                ns = sec * 10**9 + (frac if self.nano else frac * 1000)
                self.first_ns = ns if self.first_ns is None else self.first_ns
                self.last_ns = ns if self.last_ns is None else max(self.last_ns, ns)
                self.pos += 16 + incl
                self.boundary = self.pos
        elif self.kind == "pcapng":
            while self.pos + 12 <= size:
                blen = int.from_bytes(spool_read(self.pos + 4, 4), self.order)
                if blen < 12 or self.pos + blen > size:
                    break
                self.pos += blen
                self.boundary = self.pos


@dataclass
class LiveState:
    shown: dict = field(default_factory=dict)     # flow key -> (verdict, rounded rate) last printed


def _flow_key(f: dict) -> tuple:
    return (f["transport"], f["a"], f["b"])


def _clock(ts: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts))


def verdict_lines(doc: dict, state: LiveState, now_ts: float, first_ts: float) -> list[str]:
    """One line per tested flow whose verdict (or its rate, to 5 %) changed since last shown."""
    lines = []
    for f in doc["flows"]:
        if not f.get("tested"):
            continue
        verdict = f.get("verdict", "none")
        det = next((d for d in f.get("detections", ()) if d.get("decision") == "detected"
                    and d.get("kind") == verdict), None)
        rate = det.get("rate_bps") if det else None
        shown_rate = float(rate) if rate else None
        key = _flow_key(f)
        before = state.shown.get(key)
        if before is not None and before[0] == verdict and _close(before[1], shown_rate):
            continue
        state.shown[key] = (verdict, shown_rate)
        what = verdict
        if verdict in THROTTLING and det is not None:
            if rate:
                what += f" at {float(rate) / 1000:.0f} kbit/s"
            toward = det.get("toward")
            if toward == "local":
                what += " to you"
            elif toward == "remote":
                what += " from you"
            if det.get("onset_s") is not None:
                what += f" since {_clock(first_ts + float(det['onset_s']))}"
            elif f.get("first_ts") is not None:
                # the test found it over the whole flow so far: say so rather than invent an onset
                what += f" since {_clock(float(f['first_ts']))} (the flow's start; no onset located)"
        elif verdict == "inconclusive" and f.get("verdict_reason"):
            what += f" ({f['verdict_reason']})"
        lines.append(f"throttledetect: live {_clock(now_ts)} (+{now_ts - first_ts:.1f} s): {f['protocol']} "
                     f"{f['a']} <-> {f['b']}: {what}")
    return lines


def _close(a, b) -> bool:
    if a is None or b is None:
        return a == b
    return abs(a - b) <= 0.05 * max(abs(a), abs(b), 1)


class LiveAnalysis:
    """Copy `fd` into a spool while analysing the capture so far (see the module docstring)."""

    def __init__(self, settings: dict, *, name: str, say, every_s: float = DEFAULT_EVERY_S, progress=None):
        self.settings = settings
        self.name = name
        self.say = say
        self.every_s = every_s
        self.progress = progress
        self.follower = _RecordFollower()
        self.state = LiveState()
        self.lock = threading.Condition()
        self.eof = False
        self.error: BaseException | None = None
        self.analyses = 0

    def run(self, fd: int, spool) -> object:
        """Read `fd` to its end into `spool` (a binary file), reporting verdicts on the way; returns spool."""
        reader = threading.Thread(target=self._copy, args=(fd, spool), daemon=True)
        reader.start()
        try:
            _warm_up(self.settings, self.say)
            self._loop(spool)
        except KeyboardInterrupt:
            # as `analyze -` does: the capture tool got the same Ctrl-C and closes the pipe
            self.say(f"throttledetect: note: {self.name}: interrupted; analysing what arrived")
            reader.join(5.0)
        reader.join(0 if reader.is_alive() and not self.eof else None)
        if self.error is not None:
            raise self.error
        return spool

    def _loop(self, spool) -> None:
        next_at = None
        last_wall = time.monotonic()
        while True:
            with self.lock:
                while not self.eof and not self._due(next_at, last_wall):
                    self.lock.wait(0.2)
                eof = self.eof
                boundary = self.follower.boundary
                last_ns = self.follower.last_ns
            if eof:
                break
            if boundary == 0:
                last_wall = time.monotonic()
                continue
            self._analyse(spool, boundary)
            last_wall = time.monotonic()
            next_at = (last_ns or 0) + int(self.every_s * 1e9)

    def _due(self, next_at, last_wall) -> bool:
        f = self.follower
        if f.boundary == 0:
            return False
        if f.kind == "pcap":
            return next_at is None or (f.last_ns is not None and f.last_ns >= next_at)
        return time.monotonic() - last_wall >= self.every_s

    def _copy(self, fd: int, spool) -> None:
        rfd = os.dup(spool.fileno())
        try:
            def read_back(offset, n):
                return os.pread(rfd, n, offset)
            total = 0
            while True:
                select.select([fd], [], [], 1.0)
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    break
                spool.write(chunk)
                spool.flush()
                total += len(chunk)
                with self.lock:
                    self.follower.feed(read_back, total)
                    self.lock.notify_all()
        except BaseException as e:  # noqa: BLE001 - handed to the main thread
            self.error = e
        finally:
            os.close(rfd)
            with self.lock:
                self.eof = True
                self.lock.notify_all()

    def _analyse(self, spool, boundary: int) -> None:
        from throttledetect.pipeline import analyze_capture, to_document
        from throttledetect.read import CaptureError, read_capture
        # A file description of our own: the reader thread goes on appending through the spool's
        # (a dup() would share its offset, and reading would move where the next chunk is written).
        with open(f"/proc/self/fd/{spool.fileno()}", "rb") as view:
            try:
                cap = read_capture(view, name=self.name, limit=boundary)
            except CaptureError:
                return
            doc = to_document([analyze_capture(cap, **self.settings)], include_metrics=False)
        self.analyses += 1
        ts = cap.packets.ts_ns
        first = float(ts.min()) / 1e9
        now = float(ts.max()) / 1e9
        for line in verdict_lines(doc, self.state, now, first):
            self.say(line)

    def final(self, doc: dict) -> None:
        """The verdicts of the report made at the end, where they differ from the last ones shown."""
        caps = doc.get("captures") or [{}]
        first, last = caps[0].get("first_ts"), caps[0].get("last_ts")
        if first is None:
            return
        for line in verdict_lines(doc, self.state, last, first):
            self.say(line.replace("throttledetect: live ", "throttledetect: final ", 1))
