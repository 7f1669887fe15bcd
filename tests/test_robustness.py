"""Hostile and broken input: the reader and the CLI never crash, never hang, never lose results.

Every damaged capture here is built in the test (nothing stored). For each one:

* ``read_capture`` either returns a Capture whose warnings name byte offsets inside the file, or
  raises CaptureError with ONE line naming the file and "byte N";
* ``python -m throttledetect flows FILE`` (a subprocess) exits 0 with warnings on stderr, or 2
  with exactly one line on stderr; never a traceback, and within a time bound;
* the packets before AND after a damaged spot are all there.

The 12 damaged captures of nDPI's suite (../shared/corpus/ndpi/malformed) get the same checks.
"""
from __future__ import annotations

import bz2
import gzip
import lzma
import os
import re
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.corpus import malformed_pcaps, need_corpus
from throttledetect.read import CaptureError, read_capture
from throttledetect.read.framing import MAX_SNAPLEN

ROOT = Path(__file__).resolve().parents[1]
CLI_TIMEOUT_S = 60   # generous: a cold numba cache compiles for a few seconds on first use
T0 = 1_700_000_000

# ---------------------------------------------------------------------------------------------
# Building captures by hand (struct only: every byte is visible in the test)


def _csum(b: bytes) -> int:
    s = sum(struct.unpack(f"!{len(b) // 2}H", b + b"\0" * (len(b) % 2)))
    s = (s >> 16) + (s & 0xFFFF)
    return ~(s + (s >> 16)) & 0xFFFF


def ipv4_udp(sport: int, dport: int = 3478, payload: bytes = b"hello world!") -> bytes:
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0,
                      bytes([10, 0, 0, 1]), bytes([93, 184, 216, 34]))
    return hdr[:10] + struct.pack("!H", _csum(hdr)) + hdr[12:] + udp


def eth_udp(sport: int, dport: int = 3478, payload: bytes = b"hello world!") -> bytes:
    return b"\x02\0\0\0\0\x01\x02\0\0\0\0\x02\x08\x00" + ipv4_udp(sport, dport, payload)


def pcap_header(*, magic=0xA1B2C3D4, snaplen=262144, linktype=1, endian="<") -> bytes:
    return struct.pack(endian + "IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype)


def pcap_record(frame: bytes, *, sec=T0, frac=0, incl=None, orig=None, endian="<") -> bytes:
    incl = len(frame) if incl is None else incl
    orig = len(frame) if orig is None else orig
    return struct.pack(endian + "IIII", sec, frac, incl, orig) + frame


def good_records(ports, t=T0) -> bytes:
    return b"".join(pcap_record(eth_udp(p), sec=t + k) for k, p in enumerate(ports))


def pcap_file(ports=(40001, 40002, 40003)) -> bytes:
    return pcap_header() + good_records(ports)


def block(btype: int, body: bytes, *, length=None, trailer=None) -> bytes:
    body += b"\0" * (-len(body) % 4)
    n = len(body) + 12 if length is None else length
    return struct.pack("<II", btype, n) + body + struct.pack("<I", n if trailer is None else trailer)


def shb() -> bytes:
    return block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))


def idb(linktype=1, options: bytes = b"") -> bytes:
    return block(1, struct.pack("<HHI", linktype, 0, 262144) + options)


def opt(code: int, value: bytes) -> bytes:
    return struct.pack("<HH", code, len(value)) + value + b"\0" * (-len(value) % 4)


END_OPT = struct.pack("<HH", 0, 0)


def epb(frame: bytes, *, iface=0, ts=T0 * 1_000_000, incl=None) -> bytes:
    incl = len(frame) if incl is None else incl
    return block(6, struct.pack("<IIIII", iface, ts >> 32, ts & 0xFFFFFFFF, incl, len(frame)) + frame)


def pcapng_file(ports=(40001, 40002, 40003), *, head=None) -> bytes:
    head = shb() + idb() if head is None else head
    return head + b"".join(epb(eth_udp(p), ts=(T0 + k) * 1_000_000) for k, p in enumerate(ports))


# ---------------------------------------------------------------------------------------------
# The cases: name -> (file bytes, expectation)
#   expectation "error": nothing readable, CaptureError;  a tuple of ports: exactly those UDP
#   source ports must be read (before and after any damage), warnings allowed;  "either".

GOOD = (40001, 40002, 40003)
BEFORE, AFTER = (40001, 40002), (40004, 40005)
huge = 0x7FFFFFF0

CASES = {
    "wrong_magic": (b"\x0b\xad\xca\xfe" + pcap_file()[4:], "error"),
    "text_file": (b"Hello, this is not a capture at all.\n" * 10, "error"),
    "empty_file": (b"", "error"),
    "one_byte_file": (b"\xd4", "error"),
    "truncated_file_header": (pcap_header()[:13], "error"),
    "header_only": (pcap_header(), "error"),
    "truncated_record_header": (pcap_file() + pcap_record(eth_udp(40009))[:9], GOOD),
    "truncated_record_data": (pcap_file() + pcap_record(eth_udp(40009))[:40], GOOD),
    "caplen_over_snaplen": (pcap_header(snaplen=64) + good_records(GOOD)
                            + pcap_record(eth_udp(40004, payload=b"p" * 200), sec=T0 + 9), GOOD + (40004,)),
    "caplen_over_262144_wirelen_valid": (
        pcap_header() + good_records(BEFORE)
        + pcap_record(eth_udp(40003), sec=T0 + 3, incl=MAX_SNAPLEN + 1000)
        + good_records(AFTER, T0 + 4), BEFORE + (40003,) + AFTER),
    "caplen_absurd_mid_file": (
        pcap_header() + good_records(BEFORE)
        + pcap_record(b"\xee" * 37, incl=huge, orig=huge) + good_records(AFTER, T0 + 4), BEFORE + AFTER),
    "zero_length_records": (
        pcap_header() + good_records(BEFORE) + pcap_record(b"", sec=T0 + 2) + pcap_record(b"", sec=T0 + 3, orig=60)
        + good_records(AFTER, T0 + 4), BEFORE + AFTER),
    "timestamp_year_2106_and_top_bit": (
        pcap_header() + pcap_record(eth_udp(40001), sec=0xFFFFFFFF) + pcap_record(eth_udp(40002), sec=0x80000000)
        + pcap_record(eth_udp(40003), sec=0), GOOD),
    "nanosecond_fraction_overflow": (
        pcap_header(magic=0xA1B23C4D) + pcap_record(eth_udp(40001), frac=0xFFFFFFFF)
        + pcap_record(eth_udp(40002), frac=1_000_000_000) + pcap_record(eth_udp(40003), frac=999_999_999), "either"),
    "microsecond_fraction_overflow": (
        pcap_header() + pcap_record(eth_udp(40001), frac=1_000_000) + pcap_record(eth_udp(40002), frac=0xFFFFFFFF)
        + pcap_record(eth_udp(40003)), "either"),
    "big_endian_garbage_tail": (pcap_header(endian=">") + b"".join(
        pcap_record(eth_udp(p), sec=T0 + k, endian=">") for k, p in enumerate(GOOD)) + b"\xff" * 33, GOOD),
    "linktype_with_fcs_bits": (pcap_header(linktype=0x14000001) + good_records(GOOD), GOOD),
    "linktype_reserved_bits": (pcap_header(linktype=0x00010004) + good_records(GOOD), "either"),
    "snaplen_zero_and_huge": (pcap_header(snaplen=0xFFFFFFFF) + good_records(GOOD), GOOD),
    # pcapng
    "pcapng_unknown_and_custom_blocks": (
        shb() + block(0x12345678, b"unknown block type") + idb() + block(0x00000BAD, b"\0\0\x7f\xffcustom")
        + pcapng_file(GOOD, head=b"") + block(0x40000BAD, b"\0\0\x7f\xffcopy-not") + block(0x80000001, b"local use"),
        GOOD),
    "pcapng_block_length_not_multiple_of_4": (
        pcapng_file(BEFORE) + struct.pack("<II", 6, 33) + b"\0" * 25 + pcapng_file(AFTER, head=b""),
        BEFORE + AFTER),
    "pcapng_block_length_past_eof": (pcapng_file(GOOD) + struct.pack("<II", 6, 4096) + b"\0" * 40, GOOD),
    "pcapng_block_length_zero": (pcapng_file(BEFORE) + struct.pack("<II", 6, 0) + pcapng_file(AFTER, head=b""),
                                 BEFORE + AFTER),
    "pcapng_trailer_mismatch": (pcapng_file(BEFORE) + block(6, b"\0" * 40, trailer=48)
                                + pcapng_file(AFTER, head=b""), BEFORE + AFTER),
    "pcapng_epb_undeclared_interface": (
        shb() + idb() + epb(eth_udp(40001)) + epb(eth_udp(40099), iface=5) + epb(eth_udp(40002), iface=1)
        + epb(eth_udp(40003)), (40001, 40003)),
    "pcapng_epb_before_any_idb": (shb() + epb(eth_udp(40099)) + idb() + epb(eth_udp(40001)), (40001,)),
    "pcapng_if_tsresol_ff": (pcapng_file(GOOD, head=shb() + idb(1, opt(9, b"\xff") + END_OPT)), GOOD),
    "pcapng_if_tsresol_odd": (pcapng_file(GOOD, head=shb() + idb(1, opt(9, b"\x7f") + END_OPT)), GOOD),
    "pcapng_if_tsresol_power2_0": (pcapng_file(GOOD, head=shb() + idb(1, opt(9, b"\x80") + END_OPT)), GOOD),
    "pcapng_if_tsoffset_huge": (
        pcapng_file(GOOD, head=shb() + idb(1, opt(14, struct.pack("<q", 2**62)) + END_OPT)), GOOD),
    "pcapng_if_tsoffset_negative": (
        pcapng_file(GOOD, head=shb() + idb(1, opt(14, struct.pack("<q", -2**62)) + END_OPT)), GOOD),
    "pcapng_option_length_past_block": (pcapng_file(GOOD, head=shb() + idb(1, struct.pack("<HH", 9, 60000))), GOOD),
    "pcapng_year_9999_and_negative_timestamps": (
        shb() + idb() + epb(eth_udp(40001), ts=253402300799 * 1_000_000) + epb(eth_udp(40002), ts=(2**63) + 5)
        + epb(eth_udp(40003), ts=2**64 - 1), GOOD),
    "pcapng_caplen_over_block": (shb() + idb() + epb(eth_udp(40001), incl=5000) + epb(eth_udp(40002)), "either"),
    "pcapng_bad_byte_order_magic": (block(0x0A0D0D0A, struct.pack("<IHHq", 0xDEADBEEF, 1, 0, -1))
                                    + pcapng_file(GOOD, head=idb()), "either"),
    "pcapng_shb_only": (shb(), "error"),
    "pcapng_truncated_shb": (shb()[:10], "either"),
    "pcapng_many_idbs": (shb() + idb() * 1500 + epb(eth_udp(40001)) + epb(eth_udp(40002), iface=1499), (40001,)),
    "pcapng_simple_packet_block": (shb() + idb() + block(3, struct.pack("<I", 54) + eth_udp(40001)), (40001,)),
}


def _compressed_cases():
    raw = pcap_file((40001, 40002, 40003, 40004, 40005, 40006))
    gz = gzip.compress(raw, mtime=0)
    xz = lzma.compress(raw)
    bzz = bz2.compress(raw)
    return {
        "gzip_ok": (gz, (40001, 40002, 40003, 40004, 40005, 40006)),
        "gzip_cut_short": (gz[: len(gz) * 2 // 3], "either"),
        "gzip_cut_after_header": (gz[:12], "error"),
        "gzip_trailing_garbage": (gz + b"this is not gzip data", (40001, 40002, 40003, 40004, 40005, 40006)),
        "gzip_trailing_zero_padding": (gz + b"\0" * 512, (40001, 40002, 40003, 40004, 40005, 40006)),
        "gzip_two_members": (gzip.compress(pcap_file(BEFORE), mtime=0) + gzip.compress(good_records(AFTER, T0 + 9),
                                                                                        mtime=0), BEFORE + AFTER),
        "gzip_corrupt_body": (gz[:20] + bytes(b ^ 0x5A for b in gz[20:40]) + gz[40:], "either"),
        "gzip_of_garbage": (gzip.compress(b"not a capture" * 20), "error"),
        "gzip_magic_only": (b"\x1f\x8b", "error"),
        "xz_cut_short": (xz[: len(xz) * 2 // 3], "either"),
        "xz_magic_only": (b"\xfd7zXZ\x00", "error"),
        "bzip2_cut_short": (bzz[: len(bzz) // 2], "either"),
        "bzip2_magic_only": (b"BZh9", "error"),
    }


CASES.update(_compressed_cases())

_BYTE = re.compile(r"\bbyte \d+\b")


def _check_read(path: Path, expect):
    """The reader's half of the promise; returns the Capture or None."""
    try:
        cap = read_capture(path)
    except CaptureError as e:
        msg = str(e)
        assert "\n" not in msg, msg
        assert msg.startswith(f"{path}:"), msg
        assert _BYTE.search(msg), f"no byte offset in {msg!r}"
        assert expect in ("error", "either"), f"nothing read, but packets were expected: {msg}"
        return None
    assert expect != "error", f"expected CaptureError, got {len(cap.packets)} packets, warnings {cap.warnings}"
    size = max(len(cap.buffer), path.stat().st_size)
    for w in cap.warnings:
        text = str(w)
        assert "\n" not in text
        assert re.match(r"byte \d+: ", text), text
        assert 0 <= w.offset <= size, (w.offset, size)
    t = cap.packets
    assert np.all(t.frame_off + t.caplen.astype(np.int64) <= len(cap.buffer))
    assert np.all(t.ts_ns >= 0)
    if isinstance(expect, tuple):
        udp = t.proto == 17
        assert sorted(int(p) for p in t.sport[udp]) == sorted(expect), cap.warnings
        for i in np.flatnonzero(udp):
            assert cap.payload(int(i)) in (b"hello world!", b"p" * 200)
    return cap


def run_cli(*args, env=None, timeout=CLI_TIMEOUT_S):
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "throttledetect", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env={**os.environ, **(env or {})})
    proc.elapsed = time.monotonic() - t0
    return proc


def assert_cli_contract(proc, *, expect_exit=None):
    """Exit 0 (warnings on stderr) or 2 (one line on stderr); never a traceback."""
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, proc.stderr
    assert proc.returncode in (0, 2), (proc.returncode, proc.stderr)
    if expect_exit is not None:
        assert proc.returncode == expect_exit, (proc.returncode, proc.stderr)
    lines = proc.stderr.splitlines()
    if proc.returncode == 2:
        assert len(lines) == 1, proc.stderr
        assert lines[0].startswith("throttledetect: error: ") and _BYTE.search(lines[0]), lines[0]
    for line in lines:
        assert line.startswith("throttledetect: "), line


@pytest.mark.parametrize("name", sorted(CASES))
def test_damaged_capture_reader_and_cli(tmp_path, name):
    data, expect = CASES[name]
    path = tmp_path / f"{name}.cap"
    path.write_bytes(data)
    _check_read(path, expect)
    proc = run_cli("flows", path)
    assert_cli_contract(proc, expect_exit=2 if expect == "error" else 0 if isinstance(expect, tuple) else None)


def test_warnings_name_offsets_of_the_damage(tmp_path):
    head = pcap_header() + good_records(BEFORE)
    bad = len(head)
    junk = pcap_record(b"\xee" * 37, incl=huge, orig=huge)
    path = tmp_path / "mid.pcap"
    path.write_bytes(head + junk + good_records(AFTER, T0 + 4))
    cap = _check_read(path, BEFORE + AFTER)
    offsets = {w.offset for w in cap.warnings}
    assert bad in offsets                      # the corrupt header itself
    assert bad + len(junk) in offsets          # where reading resumed
    proc = run_cli("flows", path)
    assert_cli_contract(proc, expect_exit=0)
    assert f"byte {bad}:" in proc.stderr and f"byte {bad + len(junk)}:" in proc.stderr


@pytest.mark.parametrize("fmt", ["pcap", "pcapng"])
def test_corrupt_record_in_the_middle_keeps_packets_before_and_after(tmp_path, fmt):
    before = tuple(range(41000, 41020))
    after = tuple(range(42000, 42020))
    if fmt == "pcap":
        data = (pcap_header() + good_records(before)
                + struct.pack("<IIII", T0 + 30, 0, 0xFFFF0000, 0xFFFF0000) + bytes(range(256)) * 3
                + good_records(after, T0 + 40))
    else:
        data = (pcapng_file(before) + struct.pack("<II", 6, 0xFFFF0001) + bytes(range(256)) * 3
                + pcapng_file(after, head=b""))
    path = tmp_path / f"mid.{fmt}"
    path.write_bytes(data)
    cap = _check_read(path, before + after)
    assert cap.warnings
    proc = run_cli("flows", "--format", "csv", path)
    assert_cli_contract(proc, expect_exit=0)
    for port in (before[0], before[-1], after[0], after[-1]):
        assert f"10.0.0.1:{port}" in proc.stdout


def test_nonexistent_path(tmp_path):
    path = tmp_path / "no-such-file.pcap"
    with pytest.raises(CaptureError) as e:
        read_capture(path)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{path}:") and _BYTE.search(msg), msg
    proc = run_cli("flows", path)
    assert_cli_contract(proc, expect_exit=2)
    assert str(path) in proc.stderr


def test_directory_as_input(tmp_path):
    # Root reads everything, so "no permission" cannot be staged with chmod here; a directory and a
    # missing path (above) are the unopenable inputs.
    with pytest.raises(CaptureError) as e:
        read_capture(tmp_path)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{tmp_path}:") and _BYTE.search(msg), msg
    # the CLI reads a folder as the captures in it (issue 14): one without any is one line naming it
    proc = run_cli("flows", tmp_path)
    assert "Traceback" not in proc.stderr and proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("throttledetect: error: ") and str(tmp_path) in lines[0]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode: no permission error to stage")
def test_unreadable_file(tmp_path):  # pragma: no cover - CI and this machine run as root
    path = tmp_path / "secret.pcap"
    path.write_bytes(pcap_file())
    path.chmod(0)
    proc = run_cli("flows", path)
    assert_cli_contract(proc, expect_exit=2)


def test_one_bad_file_among_good_ones(tmp_path):
    good = tmp_path / "good.pcap"
    good.write_bytes(pcap_file())
    bad = tmp_path / "bad.pcap"
    bad.write_bytes(b"garbage" * 10)
    proc = run_cli("flows", bad, good)
    assert "Traceback" not in proc.stderr
    assert proc.returncode == 2, proc.stderr           # an unreadable input is exit 2 (issue 14) ...
    assert f"{bad}: byte 0:" in proc.stderr
    assert "10.0.0.1:40001" in proc.stdout             # ... with the results of the readable one


# ---------------------------------------------------------------------------------------------
# The damaged captures of nDPI's suite

@need_corpus
@pytest.mark.parametrize("path", malformed_pcaps(), ids=lambda p: p.name)
def test_ndpi_malformed_captures(path):
    cap = _check_read(path, "either")
    assert cap is not None and len(cap.packets) > 0      # each of them has readable packets
    from throttledetect.classify import classify
    from throttledetect.flows import build_flows
    ft = build_flows(cap)
    cl = classify(cap, ft)
    assert len(cl.labels) == len(ft)
    proc = run_cli("classify", path)
    assert_cli_contract(proc, expect_exit=0)


@need_corpus
def test_ndpi_malformed_corpus_is_complete():
    assert len(malformed_pcaps()) == 12, [p.name for p in malformed_pcaps()]


# ---------------------------------------------------------------------------------------------
# Never a hang: work bounded per byte

PATHOLOGICAL_BYTES = 5 * 1024 * 1024
HANG_BOUND_S = 30.0


def _pcap_dead_chains(n: int) -> bytes:
    """A plausible record header every 32 bytes whose successor never is: resynchronisation must
    test every offset of the file (and fail), never restart from the beginning."""
    unit = struct.pack("<IIII", T0, 0, 1, 1) + b"\xff" * 16
    return pcap_header() + struct.pack("<IIII", T0, 0, huge, huge) + unit * ((n - 40) // len(unit))


def _pcap_good_then_bad(n: int) -> bytes:
    """Two chained good records, then a corrupt header, over and over: one resync every 90 bytes."""
    unit = (pcap_record(b"\x01" * 13, sec=T0) + pcap_record(b"\x02" * 13, sec=T0)
            + struct.pack("<IIII", T0, 0, huge, huge) + b"\x03" * 16)
    return pcap_header() + unit * ((n - 24) // len(unit))


def _pcapng_bad_trailers(n: int) -> bytes:
    """Block headers of a known type everywhere, each with a trailing length that does not match."""
    unit = struct.pack("<II", 6, 32) + b"\0" * 20 + struct.pack("<I", 36)
    return shb() + idb() + struct.pack("<II", 6, 13) + unit * ((n - 64) // len(unit))


def _pcapng_lengths_everywhere(n: int) -> bytes:
    """After one bad block, 12-byte empty packet blocks (type 6, length 12) back to back: every
    aligned offset is a valid block, none holds a packet."""
    return shb() + idb() + struct.pack("<II", 6, 7) + struct.pack("<III", 6, 12, 12) * ((n - 60) // 12)


def _pcap_all_ff(n: int) -> bytes:
    return pcap_header() + b"\xff" * (n - 24)


PATHOLOGICAL = {
    "pcap_dead_chains": _pcap_dead_chains,
    "pcap_good_then_bad": _pcap_good_then_bad,
    "pcapng_bad_trailers": _pcapng_bad_trailers,
    "pcapng_lengths_everywhere": _pcapng_lengths_everywhere,
    "pcap_all_ff": _pcap_all_ff,
}


@pytest.mark.parametrize("name", sorted(PATHOLOGICAL))
def test_pathological_5mb_file_is_read_in_bounded_time(tmp_path, name, record_property):
    path = tmp_path / f"{name}.cap"
    path.write_bytes(PATHOLOGICAL[name](PATHOLOGICAL_BYTES))
    t_full = _timed_read(path)
    # Linear, not quadratic: a quarter of the file takes about a quarter of the time.
    quarter = tmp_path / f"{name}.quarter.cap"
    quarter.write_bytes(PATHOLOGICAL[name](PATHOLOGICAL_BYTES // 4))
    t_quarter = _timed_read(quarter)
    record_property("seconds_5MB", round(t_full, 3))
    print(f"{name}: 5 MB in {t_full:.3f} s, 1.25 MB in {t_quarter:.3f} s")
    assert t_full < HANG_BOUND_S
    assert t_full < 10 * t_quarter + 0.5, (t_full, t_quarter)


def _timed_read(path: Path) -> float:
    read_capture_or_none(path)            # warm: numba compilation, page cache
    t0 = time.perf_counter()
    cap = read_capture_or_none(path)
    dt = time.perf_counter() - t0
    if cap is not None:
        assert len(cap.warnings) <= 257      # capped, with a "... and N more" line
    return dt


def read_capture_or_none(path):
    try:
        return read_capture(path)
    except CaptureError as e:
        assert "\n" not in str(e)
        return None


def test_pathological_file_through_cli_in_bounded_time(tmp_path):
    path = tmp_path / "dead_chains.pcap"
    path.write_bytes(_pcap_dead_chains(PATHOLOGICAL_BYTES))
    proc = run_cli("classify", path, timeout=60)
    assert_cli_contract(proc)
    assert proc.elapsed < HANG_BOUND_S


@pytest.mark.parametrize("kind", ["gzip", "xz", "bzip2"])
def test_compressed_capture_cut_short_keeps_what_it_held(tmp_path, kind):
    ports = tuple(range(30000, 32000))
    raw = pcap_header() + good_records(ports)
    packed = {"gzip": lambda b: gzip.compress(b, mtime=0), "xz": lzma.compress,
              "bzip2": lambda b: bz2.compress(b, 1)}[kind](raw)
    if kind == "bzip2":
        # bzip2 recovers whole 100 kB blocks only (level 1): keep the first block and a bit of the next.
        raw = pcap_header() + good_records(tuple(range(30000, 34000)))
        packed = bz2.compress(raw, 1)
        cut = packed[: len(packed) * 3 // 4]
    else:
        cut = packed[: len(packed) // 2]
    path = tmp_path / f"cut.pcap.{kind}"
    path.write_bytes(cut)
    cap = _check_read(path, "either")
    assert cap is not None, "the first half of the stream holds packets"
    got = [int(p) for p in cap.packets.sport]
    assert got == list(range(30000, 30000 + len(got))) and len(got) > 100   # a prefix, in order, none lost
    assert any("cut short" in w.message or "ends early" in w.message or "truncated" in w.message
               for w in cap.warnings), cap.warnings
    proc = run_cli("flows", path)
    assert_cli_contract(proc, expect_exit=0)
