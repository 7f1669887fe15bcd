"""Wireshark's own RTP stream table, as a reference to check metrics.rtp against.

Runs ``tshark -n -q -z rtp,streams`` with the UDP heuristic RTP dissector enabled (without
a SIP/SDP exchange in the capture, tshark only sees RTP when told to guess it) and parses
the table it prints (ui/cli/tap-rtp.c) into records.

The heuristic is enabled with ``--enable-heuristic rtp_udp``: the heuristic's own name, which
Wireshark has accepted since 2.0. The old preference ``-o rtp.heuristic_rtp:TRUE`` is still
honoured by tshark 4.0 as an alias of the same switch, but is gone from the preference list.
"""
from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from throttledetect.verify import _ROW, _TABLE_START, HEURISTIC_ARGS  # noqa: F401 - one parser of tshark's table

TIMEOUT_S = 300


class TsharkNotFound(RuntimeError):
    """tshark is not installed or not on PATH."""


class TsharkFailed(RuntimeError):
    """tshark ran but printed no RTP stream table."""


@dataclass(frozen=True)
class TsharkRtpStream:
    """One row of ``tshark -z rtp,streams``. Jitter of -1 (min) / 0 means "not computed"."""

    start_s: float           # relative to the capture's first packet
    end_s: float
    src: str
    sport: int
    dst: str
    dport: int
    ssrc: int
    payload: str             # payload type names, e.g. "g711U" or "RTPType-111"
    packets: int
    lost: int                # may be negative (duplicates)
    lost_percent: float
    min_delta_ms: float      # -1 when no regular packet
    mean_delta_ms: float
    max_delta_ms: float
    min_jitter_ms: float     # -1 when jitter was not computed (unknown clock rate)
    mean_jitter_ms: float
    max_jitter_ms: float
    problem: bool            # wrong sequence or timestamp seen

    @property
    def key(self) -> tuple[str, int, str, int, int]:
        """Stream identity as Wireshark keys it: (src, sport, dst, dport, ssrc)."""
        return (self.src, self.sport, self.dst, self.dport, self.ssrc)

    @property
    def jitter_computed(self) -> bool:
        return self.min_jitter_ms != -1.0


def find_tshark() -> str:
    """Path of the tshark binary, or TsharkNotFound saying how to get it."""
    path = shutil.which("tshark")
    if path is None:
        raise TsharkNotFound("tshark not found on PATH: install Wireshark's command-line tools "
                             "(Debian/Ubuntu: apt-get install tshark)")
    return path


def tshark_version(tshark: str | None = None) -> str:
    """First line of ``tshark --version``, e.g. "TShark (Wireshark) 4.0.17 (...)"."""
    out = subprocess.run([tshark or find_tshark(), "--version"], capture_output=True, text=True,
                         timeout=60, check=False)
    return out.stdout.splitlines()[0] if out.stdout else ""


def parse_rtp_streams(text: str) -> list[TsharkRtpStream]:
    """Records from the text tshark prints for ``-z rtp,streams``; TsharkFailed if there is none."""
    lines = text.splitlines()
    try:
        start = lines.index(_TABLE_START)
    except ValueError:
        raise TsharkFailed("no RTP stream table in tshark's output") from None
    streams = []
    for line in lines[start + 2:]:          # skip the column header line
        if line.startswith("====="):
            break
        m = _ROW.match(line)
        if m is None:
            raise TsharkFailed(f"unparsable RTP stream row: {line!r}")
        g = m.groups()
        streams.append(TsharkRtpStream(
            start_s=float(g[0]), end_s=float(g[1]), src=g[2], sport=int(g[3]), dst=g[4],
            dport=int(g[5]), ssrc=int(g[6], 16), payload=g[7], packets=int(g[8]), lost=int(g[9]),
            lost_percent=float(g[10]), min_delta_ms=float(g[11]), mean_delta_ms=float(g[12]),
            max_delta_ms=float(g[13]), min_jitter_ms=float(g[14]), mean_jitter_ms=float(g[15]),
            max_jitter_ms=float(g[16]), problem=g[17] == "X",
        ))
    return streams


def tshark_rtp_streams(path: str | Path, *, heuristic: bool = True,
                       tshark: str | None = None) -> list[TsharkRtpStream]:
    """Wireshark's RTP stream table of a capture.

    heuristic: let tshark take any UDP payload that looks like RTP for RTP (otherwise only
    streams announced by SIP/SDP, RTSP, H.245 ... are seen). Names are not resolved (-n).
    """
    args = [tshark or find_tshark(), "-n", "-r", str(path), "-q", "-z", "rtp,streams"]
    if heuristic:
        args[1:1] = HEURISTIC_ARGS
    out = subprocess.run(args, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    # tshark exits non-zero on a capture cut short, yet still prints the statistics.
    try:
        return parse_rtp_streams(out.stdout)
    except TsharkFailed as exc:
        raise TsharkFailed(f"{exc} (tshark exit {out.returncode}: {out.stderr.strip()[-300:]})") from None
