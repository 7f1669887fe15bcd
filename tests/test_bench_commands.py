"""bench/commands.py's own parts: the repeated capture it times, and how it measures a process."""
from __future__ import annotations

import sys

from bench import commands, synth
from throttledetect.flows_stream import stream_flows
from throttledetect.read.chunks import CaptureStream


def test_repeated_capture_holds_k_copies_as_new_flows(tmp_path):
    manifest = synth.make_mixed_capture(tmp_path / "base.pcap", packets=3000, seed=2)
    out = tmp_path / "x3.pcap"
    m = commands.repeated_capture(tmp_path / "base.pcap", manifest, 3, out)
    assert out.stat().st_size == m["file_bytes"]
    ft = stream_flows(CaptureStream(out))
    assert len(ft) == 3 * manifest["flow_count"] == m["flow_count"]
    assert int(ft.packets_ab.sum() + ft.packets_ba.sum()) == 3 * manifest["packets"]
    assert int(ft.bytes_ab.sum() + ft.bytes_ba.sum()) == m["total_frame_bytes"]


def test_run_measured_sees_the_child_s_memory_not_the_parent_s():
    r = commands.run_measured([sys.executable, "-c", "import numpy as np; a = np.ones(50_000_000); print(a.sum())"])
    assert r["rc"] == 0 and r["stdout"].strip() == "50000000.0"
    assert 380 * 1024 < r["peak_rss_kib"] < 1200 * 1024      # the 400 MB array, not more than the process holds
