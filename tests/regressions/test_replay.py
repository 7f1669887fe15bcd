"""Replay every input that once crashed, hung or broke an invariant (tests/regressions/*).

File names say which check replays them (the checks are the fuzz harnesses' own, fuzz/checks.py):

    reader-*.bin     a fuzz_reader input: byte 0 picks the wrapping (raw, gzip, xz ...), then the file
    parsers-*.bin    a fuzz_parsers input: one payload through every parser of throttledetect.wire
    flows-*.bin      a fuzz_flows input: a synthesised capture, read -> flows -> classify
    capture-*        a capture file, given to read_capture and to the CLI as it is

Each file is replayed twice: here (numba-compiled loops, as users run them) and in a child process
with THROTTLEDETECT_NO_JIT=1 (the interpreted loops the fuzzer ran, which also bounds-check every
index: an IndexError there is an out-of-bounds read in the compiled code).

Every file is < 4 KB and documents its bug in REGRESSIONS below.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
FUZZ = ROOT / "fuzz"
if str(FUZZ) not in sys.path:
    sys.path.insert(0, str(FUZZ))

import checks  # noqa: E402  (fuzz/checks.py)

# What each input broke, and where it was fixed.
REGRESSIONS = {
    "reader-pcap-linktype-above-16-bits.bin":
        "fuzz_reader: pcap header link type 0x00010004 (reserved bits set) -> OverflowError filling the uint16 "
        "linktype column; fixed in read/capture.py: link type = low 16 bits (libpcap LT_LINKTYPE)",
    "parsers-sip-superscript-content-length.bin":
        "SIP 'Content-Length: ²' and 'CSeq: ¹': str.isdigit() is true for superscripts, int() is not -> "
        "ValueError; fixed in wire/sip.py: digits must be ASCII",
    "parsers-sdp-superscript-port.bin":
        "SDP 'm=audio ¹ ...' and a superscript format: same ValueError in _int / payload_types",
    "capture-sip-superscript-digits.pcap":
        "the SIP message above in a UDP packet to 5060: `throttledetect classify` ended in 'internal error' (exit 3)",
}

SLOW_S = float(os.environ.get("THROTTLEDETECT_REPLAY_SLOW_S", "10"))
MAX_BYTES = 4096


def regression_files() -> list[Path]:
    return sorted(p for p in HERE.iterdir() if p.is_file() and p.name.split("-", 1)[0] in
                  ("reader", "parsers", "flows", "capture") and not p.name.endswith(".py"))


def replay(path: Path, slow_s: float = SLOW_S) -> None:
    """Once unbounded (the first call may compile or load numba's cache and import the classifier),
    then again within the time bound."""
    _replay(path, 0)
    _replay(path, slow_s)


def _replay(path: Path, slow_s: float) -> None:
    kind = path.name.split("-", 1)[0]
    data = path.read_bytes()
    if kind == "reader":
        checks.check_reader_input(data, slow_s=slow_s)
    elif kind == "parsers":
        checks.check_parsers_input(data, slow_s=slow_s)
    elif kind == "flows":
        checks.check_flows_input(data, slow_s=slow_s)
    else:
        checks.check_capture_file(str(path), slow_s=slow_s)


def test_every_regression_file_is_small_and_documented():
    files = regression_files()
    assert files
    for p in files:
        assert p.stat().st_size < MAX_BYTES, f"{p.name}: regression inputs stay under 4 KB"
        assert p.name in REGRESSIONS, f"{p.name}: say in REGRESSIONS what it broke"
    assert set(REGRESSIONS) <= {p.name for p in files}


@pytest.mark.parametrize("path", regression_files(), ids=lambda p: p.name)
def test_replay_compiled(path):
    replay(path)


def test_replay_interpreted():
    """All files in one child process with the interpreted loops (what the fuzzer instruments)."""
    code = ("import sys; sys.path[:0] = [sys.argv[1], sys.argv[2]]\n"
            "from pathlib import Path\n"
            "from tests.regressions.test_replay import regression_files, replay\n"
            "for p in regression_files():\n"
            "    replay(p)\n"
            "print('replayed', len(regression_files()))\n")
    env = dict(os.environ, THROTTLEDETECT_NO_JIT="1", NUMBA_DISABLE_JIT="1")
    proc = subprocess.run([sys.executable, "-c", code, str(ROOT), str(FUZZ)], capture_output=True, text=True,
                          env=env, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"replayed {len(regression_files())}" in proc.stdout


@pytest.mark.parametrize("path", [p for p in regression_files() if p.name.startswith("capture-")],
                         ids=lambda p: p.name)
def test_replay_capture_through_cli(path):
    for command in ("flows", "classify"):
        proc = subprocess.run([sys.executable, "-m", "throttledetect", command, str(path)], capture_output=True,
                              text=True, timeout=60, cwd=ROOT)
        assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr, proc.stderr
        assert proc.returncode in (0, 2), proc.stderr


def test_sip_numbers_longer_than_python_int_limit():
    """CSeq or an SDP format of > 4300 digits: int() refuses such strings (CPython's
    int_max_str_digits) -> ValueError. Built here: it cannot fit in a 4 KB file."""
    from throttledetect.wire import sip
    data = ("SIP/2.0 200 OK\r\nCSeq: " + "7" * 4400 + " INVITE\r\nContent-Length: " + "8" * 4400
            + "\r\nContent-Type: application/sdp\r\n\r\nv=0\r\nc=IN IP4 192.0.2.1\r\nm=audio 4000 RTP/AVP "
            + "1" * 4400 + " 0\r\n").encode()
    msg = sip.parse_sip(data)
    assert msg is not None
    assert msg.cseq is None and msg.content_length is None
    assert msg.sdp is not None and msg.sdp.media[0].payload_types == (0,)
    checks.check_parsers_input(data, slow_s=SLOW_S)
