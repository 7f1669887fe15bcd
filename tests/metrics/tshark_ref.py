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

from throttledetect.verify import HEURISTIC_ARGS, rtp_stream_rows  # one reader of tshark's table

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
    try:
        rows = rtp_stream_rows(text)
    except ValueError as exc:
        raise TsharkFailed(str(exc)) from None
    return [TsharkRtpStream(
        start_s=float(g[0]), end_s=float(g[1]), src=g[2], sport=int(g[3]), dst=g[4],
        dport=int(g[5]), ssrc=int(g[6], 16), payload=g[7], packets=int(g[8]), lost=int(g[9]),
        lost_percent=float(g[10]), min_delta_ms=float(g[11]), mean_delta_ms=float(g[12]),
        max_delta_ms=float(g[13]), min_jitter_ms=float(g[14]), mean_jitter_ms=float(g[15]),
        max_jitter_ms=float(g[16]), problem=g[17] == "X") for g in rows]


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


# A table as tshark 4.0 prints it (a plain stream, one with negative loss, one without a clock rate)
SAMPLE_TABLE = """\
========================= RTP Streams ========================
   Start time      End time     Src IP addr  Port    Dest IP addr  Port       SSRC          Payload  Pkts         Lost   Min Delta(ms)  Mean Delta(ms)   Max Delta(ms)  Min Jitter(ms) Mean Jitter(ms)  Max Jitter(ms) Problems?
     0.000694      9.998958       127.0.0.1  6001       127.0.0.1  6000 0xFEBD6340            g711U   501     0 (0.0%)           0.014          19.997          97.080           0.005           0.562           8.162 
     3.847241      4.167215  192.168.195.50 17718  192.168.195.58 32144 0x7C1071E2        g711U, CN    33   -16 (-94.1%)           0.004           9.999          20.055           0.004           0.011           0.020 X
     7.676554     14.652923 2001:db8::1 14225 2001:db8::2 63308 0x0000E7E0      RTPType-103    94    11 (10.5%)           0.009         185.763        4419.422          -1.000           0.000           0.000 X
==============================================================
"""
