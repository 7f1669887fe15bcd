"""metrics.tcp on TCP conversations written here (known handshake, losses, reordering, wrap-around,
stalls, zero windows) with exact expected values, and on the SIGCOMM'16 policing traces."""
from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from tests.corpus import need_corpus, policing_traces
from throttledetect.flows import build_flows
from throttledetect.metrics.tcp import Stall, ZeroWindow, compute_tcp_metrics
from throttledetect.read import read_capture
from throttledetect.write import write_pcap

A, B, A_PORT, B_PORT = "10.0.0.1", "10.0.0.2", 40000, 80
T0_NS = 1_700_000_000 * 1_000_000_000
MSS = 1000
MS = 1_000_000          # ns


class Conversation:
    """TCP packets between A (the client) and B, with times in ns from T0_NS."""

    def __init__(self):
        self.packets = []

    def send(self, t_ns: int, from_a: bool, flags: str, seq: int, ack: int = 0, payload: int = 0,
             win: int = 65535) -> None:
        ip = IP(src=A, dst=B) if from_a else IP(src=B, dst=A)
        sport, dport = (A_PORT, B_PORT) if from_a else (B_PORT, A_PORT)
        frame = Ether() / ip / TCP(sport=sport, dport=dport, flags=flags, seq=seq % (1 << 32),
                                   ack=ack % (1 << 32), window=win) / (b"x" * payload)
        self.packets.append((t_ns, len(self.packets), bytes(frame)))

    def handshake(self, isn_a: int, isn_b: int, t_synack: int, t_ack: int) -> None:
        self.send(0, True, "S", isn_a)
        self.send(t_synack, False, "SA", isn_b, isn_a + 1)
        self.send(t_ack, True, "A", isn_a + 1, isn_b + 1)

    def metrics(self, tmp_path, bin_s: float = 1.0):
        self.packets.sort()
        path = tmp_path / "conv.pcap"
        write_pcap(path, [p[2] for p in self.packets], [T0_NS + p[0] for p in self.packets])
        cap = read_capture(path)
        ft = build_flows(cap)
        assert len(ft) == 1
        return compute_tcp_metrics(cap, ft, bin_s=bin_s)[0]


def bulk_with_downstream_loss() -> Conversation:
    """Captured at the server B, which sends 10 segments to A; segment 3 is lost after the capture
    point, A sends duplicate ACKs, B retransmits it, then both close."""
    c = Conversation()
    isn_a, isn_b = 1000, 5000
    c.handshake(isn_a, isn_b, t_synack=100_000, t_ack=30 * MS + 100_000)        # 0.1 ms and 30 ms halves
    data0 = isn_b + 1
    for i in range(10):
        t = 100 * MS + 10 * MS * i
        c.send(t, False, "A", data0 + MSS * i, isn_a + 1, payload=MSS)
        acked = data0 + MSS * (i + 1) if i < 3 else data0 + 3 * MSS           # duplicate ACKs after the loss
        if i != 3:
            c.send(t + 30 * MS, True, "A", isn_a + 1, acked)
    c.send(250 * MS, False, "A", data0 + 3 * MSS, isn_a + 1, payload=MSS)       # the retransmission
    c.send(280 * MS, True, "A", isn_a + 1, data0 + 10 * MSS)                     # cumulative ACK
    c.send(300 * MS, False, "FA", data0 + 10 * MSS, isn_a + 1)
    c.send(330 * MS, True, "FA", isn_a + 1, data0 + 10 * MSS + 1)
    c.send(330 * MS + 100_000, False, "A", data0 + 10 * MSS + 1, isn_a + 2)
    return c


def test_handshake_halves_and_path_rtt(tmp_path):
    m = bulk_with_downstream_loss().metrics(tmp_path)
    h = m.handshake
    assert h.initiator == "a" and h.syns == 1
    assert h.syn_to_synack_s == 0.0001
    assert h.synack_to_ack_s == 0.03
    assert h.rtt_s == 0.0301
    assert m.path_rtt_s == 0.0301
    assert m.ab.handshake_rtt_s == 0.0001      # A's SYN, answered by B: capture point <-> B
    assert m.ba.handshake_rtt_s == 0.03        # B's SYN-ACK, answered by A: capture point <-> A


def test_retransmission_after_the_capture_point(tmp_path):
    m = bulk_with_downstream_loss().metrics(tmp_path, bin_s=0.1)
    ba = m.ba
    assert ba.segments == 13                   # SYN-ACK, 10 data, 1 retransmission, FIN
    assert ba.retransmissions == 1
    assert ba.retransmitted_bytes == MSS
    assert ba.retransmission_rate == 1 / 13
    assert ba.gaps_filled == 0 and ba.reordered == 0
    assert ba.inferred_losses == 1
    assert ba.payload_bytes == 11 * MSS
    assert ba.new_bytes == 10 * MSS
    assert ba.retransmission_series.tolist() == [0, 0, 1, 0]
    assert m.ab.retransmissions == 0 and m.ab.segments == 2   # SYN and FIN


def test_rtt_samples_follow_karn(tmp_path):
    m = bulk_with_downstream_loss().metrics(tmp_path)
    # SYN-ACK, segments 0-2 and the FIN: 30 ms each. The cumulative ACK after the retransmission
    # covers the resent segment: no sample from it (Karn).
    assert m.ba.rtt_samples_s.tolist() == [0.03] * 5
    assert (m.ba.rtt_min_s, m.ba.rtt_median_s, m.ba.rtt_p95_s) == (0.03, 0.03, 0.03)
    assert m.ab.rtt_samples_s.tolist() == [0.0001, 0.0001]    # SYN and FIN, answered by B
    assert m.ba.rtt_times_s.tolist() == [0.0301, 0.13, 0.14, 0.15, 0.33]


def test_rtt_series(tmp_path):
    m = bulk_with_downstream_loss().metrics(tmp_path, bin_s=0.1)
    assert m.ba.rtt_mean_series_s.tolist()[:2] == [0.03, 0.03]
    assert np.isnan(m.ba.rtt_mean_series_s[2]) and m.ba.rtt_min_series_s[3] == 0.03
    js = m.ba.to_json()["rtt"]
    assert js["series_min_s"] == [0.03, 0.03, None, 0.03] and js["samples"] == 5


def test_goodput_counts_new_bytes_acknowledged(tmp_path):
    m = bulk_with_downstream_loss().metrics(tmp_path, bin_s=0.1)
    assert m.ba.acked_bytes == 10 * MSS
    # ACKs at 130, 140, 150 ms (bin 1), the cumulative one at 280 ms (bin 2); SYN and FIN not counted.
    assert m.ba.goodput_series.tolist() == [0, 3 * MSS, 7 * MSS, 0]
    assert m.ab.acked_bytes == 0
    assert m.ba.stalls == ()


def receiver_side_capture() -> Conversation:
    """Captured at the client A receiving 10 segments from B: segment 5 arrives 190 ms late (lost
    before the capture point and resent), segment 8 arrives 5 ms after segment 9 (reordered)."""
    c = Conversation()
    isn_a, isn_b = 7000, 90000
    c.handshake(isn_a, isn_b, t_synack=40 * MS, t_ack=40 * MS + 100_000)     # reordering window: 40.1 ms
    data0 = isn_b + 1
    arrival = {i: 100 * MS + 10 * MS * i for i in range(10)}
    arrival[5] = 350 * MS
    arrival[8] = 195 * MS
    for i in range(10):
        c.send(arrival[i], False, "A", data0 + MSS * i, isn_a + 1, payload=MSS)
    return c


def test_gap_filled_and_reordering(tmp_path):
    m = receiver_side_capture().metrics(tmp_path)
    ba = m.ba
    assert ba.retransmissions == 0
    assert ba.gaps_filled == 1 and ba.gap_bytes_filled == MSS
    assert ba.reordered == 1
    assert ba.inferred_losses == 1
    assert ba.new_bytes == 10 * MSS


def test_sequence_wrap_around(tmp_path):
    c = Conversation()
    isn_a, isn_b = 123, (1 << 32) - 2500          # B's data wraps after 2.5 segments
    c.handshake(isn_a, isn_b, t_synack=10 * MS, t_ack=20 * MS)
    data0 = isn_b + 1
    for i in range(5):
        c.send(100 * MS + 10 * MS * i, False, "A", data0 + MSS * i, isn_a + 1, payload=MSS)
        if i != 1:
            c.send(100 * MS + 10 * MS * i + 25 * MS, True, "A", isn_a + 1, data0 + MSS * (1 if i == 0 else 1))
    c.send(300 * MS, False, "A", data0 + MSS, isn_a + 1, payload=MSS)          # resend segment 1 (before the wrap)
    c.send(325 * MS, True, "A", isn_a + 1, data0 + 5 * MSS)                     # after the wrap
    m = c.metrics(tmp_path)
    assert m.ba.retransmissions == 1 and m.ba.retransmitted_bytes == MSS
    assert m.ba.new_bytes == 5 * MSS
    assert m.ba.acked_bytes == 5 * MSS
    assert m.ba.gaps_filled == 0
    assert m.ba.rtt_samples_s.tolist() == [0.01, 0.025]        # SYN-ACK, segment 0; not the ambiguous last ACK


def stall_conversation() -> Conversation:
    """Captured at B: segment 5 is lost and resent after 1.5 s (a transport stall), then the
    application pauses 2.26 s with everything acknowledged. A advertises a zero window twice."""
    c = Conversation()
    isn_a, isn_b = 1, 1000
    c.handshake(isn_a, isn_b, t_synack=100_000, t_ack=30 * MS + 100_000)
    d0 = isn_b + 1
    for i in range(5):
        t = 100 * MS + 10 * MS * i
        c.send(t, False, "A", d0 + MSS * i, isn_a + 1, payload=MSS)
        c.send(t + 30 * MS, True, "A", isn_a + 1, d0 + MSS * (i + 1), win=0 if i in (1, 2) else 65535)
    c.send(200 * MS, False, "A", d0 + 5 * MSS, isn_a + 1, payload=MSS)           # lost
    c.send(1700 * MS, False, "A", d0 + 5 * MSS, isn_a + 1, payload=MSS)          # RTO resend
    c.send(1730 * MS, True, "A", isn_a + 1, d0 + 6 * MSS)
    c.send(1740 * MS, False, "A", d0 + 6 * MSS, isn_a + 1, payload=MSS)
    c.send(1770 * MS, True, "A", isn_a + 1, d0 + 7 * MSS)
    c.send(4000 * MS, False, "A", d0 + 7 * MSS, isn_a + 1, payload=MSS)          # after an application pause
    c.send(4030 * MS, True, "A", isn_a + 1, d0 + 8 * MSS)
    c.send(4100 * MS, False, "FA", d0 + 8 * MSS, isn_a + 1)
    c.send(4130 * MS, True, "FA", isn_a + 1, d0 + 8 * MSS + 1)
    return c


def test_stalls_tell_transport_from_application(tmp_path):
    m = stall_conversation().metrics(tmp_path)
    assert m.ba.stall_threshold_s == 1.0                    # max(4 x 30 ms, 1 s)
    assert m.ba.stalls == (Stall(start_s=0.2, length_s=1.54, outstanding=True),
                           Stall(start_s=1.74, length_s=2.26, outstanding=False))
    assert m.ba.stalled_s == 1.54 + 2.26
    assert m.ba.retransmissions == 1
    assert m.ab.stalls == ()


def test_zero_window_events(tmp_path):
    m = stall_conversation().metrics(tmp_path)
    # A's ACKs at 140 and 150 ms advertise a zero window, the one at 160 ms opens it again.
    assert m.ab.zero_windows == (ZeroWindow(start_s=0.14, length_s=0.02, packets=2, reopened=True),)
    assert m.ab.zero_window_packets == 2
    assert m.ba.zero_windows == ()


def test_keepalive_is_not_a_retransmission(tmp_path):
    c = Conversation()
    c.handshake(10, 20, t_synack=MS, t_ack=2 * MS)
    c.send(10 * MS, True, "PA", 11, 21, payload=100)
    c.send(11 * MS, False, "A", 21, 111)
    c.send(5000 * MS, True, "A", 110, 21, payload=1)        # keep-alive: one byte below the next sequence number
    c.send(5001 * MS, False, "A", 21, 111)
    m = c.metrics(tmp_path)
    assert m.ab.keepalives == 1
    assert m.ab.retransmissions == 0
    assert m.ab.segments == 2                                # SYN and the data segment


def test_syn_retransmission_and_unanswered_handshake(tmp_path):
    c = Conversation()
    c.send(0, True, "S", 500)
    c.send(1000 * MS, True, "S", 500)
    c.send(3000 * MS, True, "S", 500)
    m = c.metrics(tmp_path)
    assert m.handshake.syns == 3
    assert m.handshake.synack_ns is None and m.handshake.rtt_s is None
    assert m.ab.retransmissions == 2
    assert m.ab.rtt_samples_s.size == 0


def test_non_tcp_flows_get_none(tmp_path):
    from scapy.layers.inet import UDP
    path = tmp_path / "u.pcap"
    write_pcap(path, [bytes(Ether() / IP(src=A, dst=B) / UDP(sport=1, dport=2) / b"hi")], [T0_NS])
    cap = read_capture(path)
    assert compute_tcp_metrics(cap, build_flows(cap)) == [None]


# --- properties ----------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 12).flatmap(lambda n: st.tuples(
    st.permutations(list(range(n))),
    st.lists(st.integers(0, n - 1), min_size=0, max_size=8),      # segments sent again
    st.integers(0, (1 << 32) - 1),
)))
def test_segment_classes_match_a_reference(tmp_path_factory, case):
    """Equal-sized segments in any order, some sent twice, from any initial sequence number
    (wrap-around included): each is new, fills a hole, or is a retransmission, as a plain
    reference model says; nothing is counted twice."""
    order, extra, isn = case
    sequence = list(order) + extra
    c = Conversation()
    for k, i in enumerate(sequence):       # 100 ms apart: no hole is filled within the reordering window
        c.send(k * 100 * MS, True, "A", isn + MSS * i, 1, payload=MSS)
    m = c.metrics(tmp_path_factory.mktemp("prop"))
    origin = high = sequence[0]
    seen, new, fills, resent = set(), 0, 0, 0
    for i in sequence:
        if i >= high:
            new += 1
            high = i + 1
        elif i in seen or i < origin:       # below the first segment of the capture counts as seen before
            resent += 1
        else:
            fills += 1
        seen.add(i)
    ab = m.ab
    assert ab.segments == len(sequence)
    assert ab.new_bytes == MSS * (max(sequence) + 1 - origin)
    assert ab.retransmissions == resent
    assert ab.gaps_filled == fills
    assert ab.reordered == 0
    assert ab.inferred_losses == resent + fills
    assert ab.retransmitted_bytes == MSS * resent
    assert ab.retransmission_series.sum() == resent


# --- corpus: the SIGCOMM'16 policing traces --------------------------------------------------------


def _main_flow(path):
    cap = read_capture(path)
    ft = build_flows(cap)
    tcp = compute_tcp_metrics(cap, ft)
    flows = [m for m in tcp if m is not None and m.handshake is not None and m.handshake.rtt_s is not None]
    # the bulk transfer: the direction that sent the most new bytes
    best = max(flows, key=lambda m: max(m.ab.new_bytes, m.ba.new_bytes))
    sender = best.ab if best.ab.new_bytes > best.ba.new_bytes else best.ba
    return best, sender


@need_corpus
@pytest.mark.parametrize("path", policing_traces(), ids=lambda p: p.name.split("-TCP=")[0])
def test_policing_traces(path):
    m, sender = _main_flow(path)
    rtt_ms = float(re.search(r"RTT=(\d+)", path.name).group(1))
    # Captured at the server: the SYN-ACK -> ACK half is the whole path, the other half ~0.
    assert m.handshake.rtt_s * 1e3 == pytest.approx(rtt_ms, rel=0.2)
    assert sender.handshake_rtt_s * 1e3 == pytest.approx(rtt_ms, rel=0.2)
    assert sender.rtt_min_s * 1e3 == pytest.approx(rtt_ms, rel=0.2)
    assert sender.segments > 1000
    assert sender.retransmission_series.sum() == sender.retransmissions
    assert sender.acked_bytes <= sender.new_bytes
    if "PCIR=" in path.name:
        assert sender.retransmissions > 0, "a policer drops: the sender must have retransmitted"
        assert sender.inferred_losses >= sender.retransmissions
