"""TCP options of captured segments: MSS, timestamps, SACK, bounded by what was captured."""
from __future__ import annotations

from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from throttledetect.read import read_capture
from throttledetect.wire.tcpopts import tcp_options
from throttledetect.write import write_pcap


def _cap(tmp_path, pkts, snaplen=None):
    path = tmp_path / "o.pcap"
    frames = [bytes(p) for p in pkts]
    if snaplen:
        frames = [f[:snaplen] for f in frames]
    write_pcap(path, frames, [1_700_000_000_000_000_000 + k * 1_000_000 for k in range(len(frames))])
    return read_capture(path)


def test_mss_timestamps_and_sack(tmp_path):
    base = Ether() / IP(src="10.0.0.1", dst="10.0.0.2")
    pkts = [base / TCP(sport=1, dport=2, flags="S", options=[("MSS", 1460), ("Timestamp", (123456, 0))]),
            base / TCP(sport=1, dport=2, flags="A", options=[("NOP", None), ("NOP", None),
                                                             ("Timestamp", (0xFFFFFFF0, 7)),
                                                             ("SAck", (1000, 2000, 3000, 4000))]),
            base / TCP(sport=1, dport=2, flags="A")]
    cap = _cap(tmp_path, pkts)
    o = tcp_options(cap, [0, 1, 2])
    assert o.mss.tolist() == [1460, -1, -1]
    assert o.has_ts.tolist() == [True, True, False]
    assert o.tsval.tolist() == [123456, 0xFFFFFFF0, -1]
    assert o.nsack.tolist() == [0, 2, 0]
    assert o.sack_start[1, :2].tolist() == [1000, 3000] and o.sack_end[1, :2].tolist() == [2000, 4000]


def test_cut_header_reads_nothing_beyond_the_capture(tmp_path):
    base = Ether() / IP(src="10.0.0.1", dst="10.0.0.2")
    p = base / TCP(sport=1, dport=2, flags="A", options=[("Timestamp", (99, 1))])
    cut = len(bytes(p)) - 6            # the timestamp value is cut off
    cap = _cap(tmp_path, [p], snaplen=cut)
    o = tcp_options(cap, [0])
    assert o.tsval.tolist() == [-1]
