"""The streaming reader and streamed flows give what the whole-file reader and build_flows give.

Small chunk sizes on small captures stand in for huge files: every chunk boundary a 10 GB
capture would have is a boundary here too, at most a few records apart.
"""
from __future__ import annotations

import bz2
import gzip
import json
import lzma
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest

from tests.corpus import external_pcaps, malformed_pcaps, ndpi_pcaps, need_corpus
from throttledetect.flows import build_flows
from throttledetect.flows_stream import REORDER_WINDOW_S, FlowAccumulator
from throttledetect.read import CaptureError, read_capture
from throttledetect.read.chunks import CaptureStream
from throttledetect.read.table import PacketTable

REPO = Path(__file__).resolve().parents[1]
SAMPLES = sorted((REPO / "captures").glob("*.pcap"))
FLOW_FIELDS = ("proto", "a_hi", "a_lo", "a_port", "b_hi", "b_lo", "b_port", "first_ns", "last_ns", "packets_ab",
               "packets_ba", "bytes_ab", "bytes_ba", "a_local", "b_local")


def _streamed(source, chunk_records, **kw):
    stream = CaptureStream(source, chunk_records=chunk_records, **kw)
    chunks = list(stream)
    return stream, chunks


def _timeless(stats: dict) -> dict:
    """The reader's stats without the Wireshark fallback's wall-clock seconds."""
    fb = {k: v for k, v in stats.get("fallback", {}).items() if k != "seconds"}
    return dict(stats, fallback=fb)


def _timeless_text(w) -> str:
    """A warning without the Wireshark fallback's wall-clock time ("... in 0.3 s")."""
    import re
    return re.sub(r" in \d+(\.\d+)? s$", "", str(w))


def assert_same_as_whole(path, chunk_records, source=None, name=None, **kw):
    cap = read_capture(source if source is not None else path, name=name)
    if source is not None and hasattr(source, "seek"):
        source.seek(0)
    stream, chunks = _streamed(source if source is not None else path, chunk_records, name=name, **kw)
    t = PacketTable.concat([c.packets for c in chunks])
    for f in fields(PacketTable):
        assert np.array_equal(getattr(t, f.name), getattr(cap.packets, f.name)), f.name
    assert np.array_equal(np.concatenate([c.status for c in chunks]), cap.status)
    s = stream.summary
    assert (s.path, s.format, s.linktypes, _timeless(s.stats)) == (cap.path, cap.format, cap.linktypes,
                                                                   _timeless(cap.stats))
    assert [_timeless_text(w) for w in s.warnings] == [_timeless_text(w) for w in cap.warnings]
    assert kw or all(len(c.packets) <= chunk_records for c in chunks)
    # payload offsets are absolute in the stream's buffer: the same bytes as the whole reader's
    rows = np.flatnonzero(cap.packets.payload_off >= 0)[:50]
    for r in rows.tolist():
        o, n = int(t.payload_off[r]), int(t.payload_len[r])
        assert stream.buffer[o:o + n].tobytes() == cap.payload(r)
    return stream, chunks


def assert_flows_same(path, chunk_records, idle_timeout=60.0):
    ft = build_flows(read_capture(path), idle_timeout=idle_timeout)
    acc = FlowAccumulator(idle_timeout=idle_timeout)
    n = 0
    for c in CaptureStream(path, chunk_records=chunk_records):
        n += len(acc.add(c.packets, c.status))
    n += len(acc.flush())
    got = acc.table()
    assert acc.out_of_order is None
    assert n == len(ft.order)
    for name in FLOW_FIELDS:
        assert np.array_equal(getattr(got, name), getattr(ft, name)), name


@pytest.mark.parametrize("chunk_records", [1, 7, 300])
@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.name)
def test_samples_chunked_equal_whole(path, chunk_records):
    assert_same_as_whole(path, chunk_records)
    assert_flows_same(path, chunk_records)


@pytest.mark.parametrize("segment", [600, 5000, 64 << 10])
@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.name)
def test_samples_read_in_parallel_parts_equal_whole(path, segment):
    """Parts read by two threads, each starting where a record probably starts (confirmed by the
    part before it): the same rows, in order, as one sequential read."""
    stream, chunks = assert_same_as_whole(path, 10**6, segment_bytes=segment)
    assert len(chunks) > 2


@need_corpus
@pytest.mark.parametrize("path", [p for p in external_pcaps() + malformed_pcaps() if ".pcapng" not in p.name],
                         ids=lambda p: p.name)
def test_corpus_parallel_parts_equal_whole(path):
    """Damaged and fuzzed files too: a wrong guess or damage in a later part falls back to reading
    one chunk after another from the last confirmed part, with the reader's state carried."""
    try:
        read_capture(path)
    except CaptureError:
        return
    assert_same_as_whole(path, 10**6, segment_bytes=2000)


def test_a_wrong_guess_of_where_a_part_starts_is_caught(tmp_path, monkeypatch):
    from throttledetect.read import framing
    real = framing.find_pcap_record
    monkeypatch.setattr(framing, "find_pcap_record", lambda buf, o, *a: real(buf, o, *a) + 1)
    assert_same_as_whole(REPO / "captures" / "call_policed.pcap", 10**6, segment_bytes=50_000)


@need_corpus
@pytest.mark.parametrize("path", external_pcaps() + malformed_pcaps(), ids=lambda p: p.name)
def test_corpus_chunked_equal_whole(path):
    """pcapng with several interfaces, damaged and fuzzed files: records, warnings and offsets."""
    try:
        read_capture(path)
    except CaptureError as e:
        with pytest.raises(CaptureError) as got:
            _streamed(path, 5)
        assert str(got.value) == str(e)
        return
    assert_same_as_whole(path, 5)


@need_corpus
@pytest.mark.parametrize("path", external_pcaps() + ndpi_pcaps()[::3], ids=lambda p: p.name)
def test_corpus_streamed_flows_equal_build_flows(path):
    """Packets out of order by up to a second (several nDPI captures) still land in build_flows' flows;
    a capture further out of order (merged files) is said to be so."""
    ts = read_capture(path).packets.ts_ns
    if len(ts) and int((np.maximum.accumulate(ts) - ts).max()) > REORDER_WINDOW_S * 1e9:
        acc = FlowAccumulator()
        for c in CaptureStream(path, chunk_records=11):
            acc.add(c.packets, c.status)
        acc.flush()
        assert acc.out_of_order
        return
    assert_flows_same(path, 11)


def test_idle_split_across_chunks():
    path = REPO / "captures" / "call_clean.pcap"
    assert_flows_same(path, 3, idle_timeout=0.05)


@pytest.mark.parametrize("comp", ["gzip", "xz", "bzip2"])
def test_compressed_streams_from_a_spill_file(tmp_path, comp):
    raw = (REPO / "captures" / "call_policed.pcap").read_bytes()
    data = {"gzip": gzip.compress, "xz": lzma.compress, "bzip2": bz2.compress}[comp](raw)
    p = tmp_path / "c.pcap.z"
    p.write_bytes(data)
    stream, _ = assert_same_as_whole(p, 100)
    assert stream.summary.format == f"pcap+{comp}"
    cut = tmp_path / "cut.pcap.z"                   # a compressed stream cut short still yields its start
    cut.write_bytes(data[: len(data) * 2 // 3])
    if comp != "bzip2":
        assert_same_as_whole(cut, 100)


def test_truncated_capture_keeps_what_was_readable(tmp_path):
    raw = (REPO / "captures" / "call_shaped.pcap").read_bytes()
    p = tmp_path / "cut.pcap"
    p.write_bytes(raw[: len(raw) // 2 + 7])
    stream, chunks = assert_same_as_whole(p, 64)
    assert any("truncated record" in str(w) for w in stream.summary.warnings)
    assert sum(len(c.packets) for c in chunks) > 100


def test_file_object_source_like_spooled_stdin():
    raw = (REPO / "captures" / "call_blocked.pcap").read_bytes()
    import tempfile
    with tempfile.TemporaryFile() as f:
        f.write(raw)
        f.flush()
        assert_same_as_whole(None, 50, source=f, name="<stdin>")


def test_not_a_capture_is_one_line_with_offset(tmp_path):
    p = tmp_path / "x.pcap"
    p.write_bytes(b"hello world, not a capture at all")
    with pytest.raises(CaptureError, match=r"x.pcap: byte 0: not a pcap or pcapng capture"):
        CaptureStream(p)


def test_out_of_order_within_the_window_is_exact_beyond_it_counted(tmp_path):
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether
    from throttledetect.write import write_pcap
    frames = [bytes(Ether() / IP(src="10.0.0.1", dst="93.184.216.34") / UDP(sport=4000 + k % 3, dport=3478) / b"x")
              for k in range(40)]
    base = 1_700_000_000 * 10**9
    ts = [base + k * 10**8 for k in range(40)]
    ts[20], ts[21] = ts[21], ts[20] - 5 * 10**8          # 0.6 s back: inside the window
    near = tmp_path / "near.pcap"
    write_pcap(near, frames, ts)
    assert_flows_same(near, 4, idle_timeout=0.25)
    ts[30] = base                                          # 3 s back: beyond it
    far = tmp_path / "far.pcap"
    write_pcap(far, frames, ts)
    acc = FlowAccumulator(idle_timeout=0.25)
    for c in CaptureStream(far, chunk_records=4):
        acc.add(c.packets, c.status)
    acc.flush()
    assert acc.out_of_order == 1
    assert int(acc.table().packets_ab.sum()) == 40       # counted all the same, where it stood
    r = _flows_cli(str(far), "--format", "csv")
    assert r.returncode == 0 and b"out of time order" not in r.stderr   # one chunk: sorted whole


def _flows_cli(*args, stdin=None):
    return subprocess.run([sys.executable, "-m", "throttledetect", "flows", *args], capture_output=True,
                          input=stdin, cwd=REPO, timeout=300)


def test_flows_command_streamed_equals_the_whole_file_document(tmp_path):
    """`flows` reads chunk by chunk; its document is the one build_flows' tables give, byte for byte."""
    from throttledetect.report import document
    paths = [str(p) for p in SAMPLES]
    r = _flows_cli(*paths, "--format", "json")
    assert r.returncode == 0, r.stderr
    caps = [read_capture(p) for p in paths]
    fts = [build_flows(c) for c in caps]
    want = {"schema": document.SCHEMA, "captures": [document.capture_entry(c) for c in caps],
            "flows": [document.flow_entry(ft, i, ci) for ci, ft in enumerate(fts) for i in range(len(ft))]}
    assert r.stdout.decode() == json.dumps(want, indent=2) + "\n"
    raw = Path(paths[0]).read_bytes()
    piped = _flows_cli("-", "--format", "csv", stdin=raw)
    from throttledetect.report.csvout import flows_csv
    assert piped.returncode == 0
    assert piped.stdout.decode() == flows_csv([document.flow_entry(fts[0], i, 0) for i in range(len(fts[0]))])
