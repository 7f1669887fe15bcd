"""Properties of metrics.rtp on streams generated here, with known loss, duplicates,
reordering, wrap-around, pacing and silence (RFC 3550 A.1, A.3, A.8)."""
from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from throttledetect.flows import build_flows
from throttledetect.metrics.rtp import (
    COMMON_CLOCK_RATES,
    clock_rate_for,
    estimate_clock_rate,
    find_rtp_streams,
    rtp_header_mask,
    rtp_stream_stats,
    unwrap,
)
from throttledetect.read import read_capture
from throttledetect.write import write_pcap

SETTINGS = settings(max_examples=60, deadline=None)
PTIME_S = 0.020
RATE = 8000
STEP = int(RATE * PTIME_S)          # timestamp ticks per packet


class Stream:
    """A sender's packets (index i = i-th packet sent), then what the network did to them."""

    def __init__(self, n: int, seq0: int = 1000, ts0: int = 12345, pt: int = 0,
                 rate: int = RATE, ptime_s: float = PTIME_S, t0: float = 1000.0):
        i = np.arange(n)
        self.sent = i                                   # which sent packet arrives, in order
        self.seq = (seq0 + i) % 65536
        self.ts = (ts0 + i * int(rate * ptime_s)) % (1 << 32)
        self.arrival = t0 + i * ptime_s + 0.005         # constant transit: no jitter
        self.pt = pt
        self.marker = np.zeros(n, dtype=bool)

    def deliver(self, order: np.ndarray, arrival: np.ndarray | None = None):
        """Keep the sent packets `order` (may repeat or permute), arriving at `arrival`."""
        self.sent = np.asarray(order)
        self.seq, self.ts, self.marker = self.seq[order], self.ts[order], self.marker[order]
        if arrival is None:
            arrival = self.arrival[0] + np.arange(len(order)) * PTIME_S
        self.arrival = arrival

    def stats(self, **kw):
        n = len(self.seq)
        return rtp_stream_stats(self.arrival, self.seq, self.ts, self.marker, np.full(n, self.pt),
                                np.full(n, 172), **kw)


def runs_of(missing: np.ndarray) -> list[int]:
    if len(missing) == 0:
        return []
    breaks = np.flatnonzero(np.diff(missing) != 1)
    return np.diff(np.concatenate(([0], breaks + 1, [len(missing)]))).tolist()


# --- sequence numbers --------------------------------------------------------------------

@SETTINGS
@given(n=st.integers(2, 600), before_wrap=st.integers(0, 600), ts0=st.integers(0, 2**32 - 1))
def test_sequence_wraps_without_loss(n, before_wrap, ts0):
    s = Stream(n, seq0=(65536 - before_wrap) % 65536, ts0=ts0)
    for compatible in (False, True):
        r = s.stats(wireshark_compatible=compatible)
        assert r.last_seq - r.first_seq == n - 1
        assert (r.expected, r.lost, r.duplicates, r.reordered, r.sequence_errors) == (n, 0, 0, 0, 0)
        assert len(r.loss_runs) == 0 and not r.problem


@SETTINGS
@given(data=st.data(), n=st.integers(10, 400), seq0=st.integers(0, 65535))
def test_loss_is_counted_per_run(data, n, seq0):
    # First and last packet kept, so the range of sequence numbers is the sent one.
    dropped = data.draw(st.sets(st.integers(1, n - 2), max_size=n - 2))
    kept = np.array([i for i in range(n) if i not in dropped])
    s = Stream(n, seq0=seq0)
    s.deliver(kept, s.arrival[kept])
    runs = runs_of(np.array(sorted(dropped)))
    for compatible in (False, True):
        r = s.stats(wireshark_compatible=compatible)
        assert r.expected == n and r.lost == len(dropped)
        assert r.loss_runs.tolist() == runs
        assert r.duplicates == 0 and r.reordered == 0
        assert r.sequence_errors == len(runs)       # one jump forward per run
        assert r.dtx_periods == ()                  # a sequence gap is loss, never silence
    assert s.stats().loss_fraction == pytest.approx(len(dropped) / n)


@SETTINGS
@given(data=st.data(), n=st.integers(3, 300), seq0=st.integers(0, 65535))
def test_duplicates_make_lost_negative(data, n, seq0):
    twice = sorted(data.draw(st.sets(st.integers(0, n - 1), max_size=n)))
    order = np.sort(np.concatenate((np.arange(n), twice))).astype(int)   # copy right after original
    s = Stream(n, seq0=seq0)
    s.deliver(order)
    for compatible in (False, True):
        r = s.stats(wireshark_compatible=compatible)
        assert r.packets == n + len(twice)
        assert r.duplicates == len(twice)
        assert r.lost == -len(twice)                # as Wireshark reports it
        assert r.sequence_errors == len(twice) and r.reordered == 0


@SETTINGS
@given(data=st.data(), n=st.integers(6, 300), seq0=st.integers(0, 65535))
def test_reordered_packets_are_counted_once(data, n, seq0):
    # Swap disjoint neighbours (i, i+1), the first and last packets staying in place.
    starts = sorted(data.draw(st.sets(st.integers(1, n - 3), max_size=n // 2)))
    swaps = []
    for i in starts:
        if not swaps or i >= swaps[-1] + 2:
            swaps.append(i)
    order = np.arange(n)
    for i in swaps:
        order[[i, i + 1]] = order[[i + 1, i]]
    s = Stream(n, seq0=seq0)
    s.deliver(order)
    # A swap across the 16-bit wrap trips Wireshark's own heuristics (it counts a second cycle
    # and one more sequence error): test_swap_across_the_wrap_as_tshark_counts_it pins that case.
    straddles = any((seq0 + i) % 65536 == 65535 or (seq0 + i + 1) % 65536 == 65535 for i in swaps)
    for compatible in (False, True):
        r = s.stats(wireshark_compatible=compatible)
        if not compatible or not straddles:
            assert (r.lost, r.duplicates) == (0, 0)
        assert r.reordered == len(swaps)
        if not straddles:
            assert r.sequence_errors == 2 * len(swaps)  # the early one jumps, the late one is late
        assert r.problem == bool(swaps)


def test_swap_across_the_wrap_as_tshark_counts_it():
    # Sequence 65534, 0, 65535, 1, 2, 3: tshark 4.0 reports lost 65536 and 3 sequence errors
    # (checked by building this stream and running `tshark -z rtp,streams` on it).
    s = Stream(6, seq0=65534)
    s.deliver(np.array([0, 2, 1, 3, 4, 5]))
    compat = s.stats(wireshark_compatible=True)
    assert (compat.lost, compat.sequence_errors) == (65536, 3)
    rfc = s.stats()
    assert (rfc.expected, rfc.lost, rfc.reordered) == (6, 0, 1)


def test_wireshark_counts_expected_up_to_the_last_arrival():
    # Last two packets swapped: RFC 3550 A.3 counts to the highest sequence number,
    # Wireshark to the last packet that arrived (whatsappCall.pcapng has such a stream).
    s = Stream(10)
    s.deliver(np.array([0, 1, 2, 3, 4, 5, 6, 7, 9, 8]))
    assert s.stats().lost == 0
    assert s.stats(wireshark_compatible=True).lost == -1


def test_unwrap_extends_both_ways():
    assert unwrap(np.array([65534, 65535, 0, 1, 65535, 2]), 1 << 16).tolist() == \
        [65534, 65535, 65536, 65537, 65535, 65538]
    assert unwrap(np.array([1, 0, 65535]), 1 << 16).tolist() == [65537, 65536, 65535]


# --- jitter and delta --------------------------------------------------------------------

@SETTINGS
@given(n=st.integers(2, 500), rate=st.sampled_from(COMMON_CLOCK_RATES),
       ptime_ms=st.sampled_from([10, 20, 30, 40, 60]), seq0=st.integers(0, 65535),
       ts0=st.integers(0, 2**32 - 1))
def test_perfectly_paced_stream_has_no_jitter(n, rate, ptime_ms, seq0, ts0):
    s = Stream(n, seq0=seq0, ts0=ts0, pt=111, rate=rate, ptime_s=ptime_ms / 1000)
    r = s.stats(clock_rate=rate)
    assert r.max_jitter_ms < 1e-6 and r.mean_jitter_ms < 1e-6
    if n > 1:
        assert r.max_delta_ms == pytest.approx(ptime_ms, abs=1e-6)
    assert np.nanmax(np.abs(r.delay_ms)) < 1e-6
    if n > 2:
        assert r.ptime_ms == pytest.approx(ptime_ms)


@SETTINGS
@given(n=st.integers(2, 300), noise=st.lists(st.floats(0, 0.2), min_size=300, max_size=300))
def test_jitter_is_rfc3550_estimator_for_in_order_streams(n, noise):
    s = Stream(n)
    s.arrival = s.arrival + np.array(noise[:n])
    r = s.stats()
    # RFC 3550 A.8, written out: D from consecutive packets, J += (|D| - J) / 16, in ms.
    j, expected = 0.0, [0.0]
    for i in range(1, n):
        d = (s.arrival[i] - s.arrival[i - 1]) * 1e3 - (int(s.ts[i]) - int(s.ts[i - 1])) * 1e3 / RATE
        j += (abs(d) - j) / 16
        expected.append(j)
    np.testing.assert_allclose(r.jitter_ms, expected, rtol=1e-9, atol=1e-9)
    if n > 1:
        assert r.max_jitter_ms == pytest.approx(max(expected[1:]))
        assert r.mean_jitter_ms == pytest.approx(np.mean(expected[1:]))    # all packets regular
        assert r.min_jitter_ms == pytest.approx(min(expected[1:]))


def test_dynamic_payload_type_has_no_jitter_in_wireshark_mode():
    s = Stream(200, pt=111, rate=48000)
    s.arrival = s.arrival + np.random.default_rng(1).uniform(0, 0.004, 200)
    r = s.stats(wireshark_compatible=True)
    assert r.mean_jitter_ms is None and r.max_jitter_ms is None and np.isnan(r.jitter_ms[1:]).all()
    assert r.max_delta_ms is not None                    # deltas need no clock
    r = s.stats()                                        # the rate is estimated instead
    assert r.clock_rate == 48000 and r.mean_jitter_ms > 0
    assert s.stats(clock_rate=48000, wireshark_compatible=True).mean_jitter_ms == r.mean_jitter_ms


def test_wireshark_mode_counts_44100_hz_as_44_khz():
    s = Stream(100, pt=11, rate=44100)                  # L16 mono, RFC 3551
    assert s.stats().max_jitter_ms < 1e-6
    # 882 ticks per packet read as 20.045 ms: |D| = 0.045 ms every packet, J tends to it.
    assert s.stats(wireshark_compatible=True).max_jitter_ms == pytest.approx(882 / 44 - 20, rel=0.01)


def test_marker_packet_is_left_out_of_delta():
    # A talkspurt starts after 1 s of silence: its marker bit keeps the gap out of max delta.
    s = Stream(50)
    s.arrival[25:] += 1.0
    s.ts[25:] = (s.ts[25:] + RATE) % (1 << 32)
    assert s.stats().max_delta_ms == pytest.approx(1020)
    s.marker[25] = True
    assert s.stats().max_delta_ms == pytest.approx(20)


# --- silence (DTX) versus loss -----------------------------------------------------------

@SETTINGS
@given(data=st.data(), n=st.integers(20, 300))
def test_silence_is_not_loss(data, n):
    pauses = sorted(data.draw(st.sets(st.integers(2, n - 2), max_size=5)))
    silent = [data.draw(st.integers(1, 50)) for _ in pauses]   # packet-times not sent
    lost_at = data.draw(st.sampled_from([i for i in range(1, n - 1) if i not in pauses]))
    s = Stream(n)
    shift = np.zeros(n, dtype=np.int64)
    for at, k in zip(pauses, silent):
        shift[at:] += k                                  # timestamps and arrival jump together
    s.ts = (s.ts + shift * STEP) % (1 << 32)
    s.arrival = s.arrival + shift * PTIME_S
    keep = np.array([i for i in range(n) if i != lost_at])
    s.deliver(keep, s.arrival[keep])
    r = s.stats()
    assert r.lost == 1 and r.loss_runs.tolist() == [1]
    found = {p.seq - r.first_seq: p.silence_ms for p in r.dtx_periods}
    # A pause right after the lost packet has a sequence gap in front of it: it is loss.
    expected = {at: k * PTIME_S * 1e3 for at, k in zip(pauses, silent) if at != lost_at + 1}
    assert found.keys() == expected.keys()
    for at, ms in expected.items():
        assert found[at] == pytest.approx(ms)
    assert r.ptime_ms == pytest.approx(20)
    assert r.max_jitter_ms < 1e-6                       # a pause is not jitter either


# --- clock rates -------------------------------------------------------------------------

def test_static_clock_rates():
    assert clock_rate_for(0) == 8000 and clock_rate_for(8) == 8000 and clock_rate_for(9) == 8000
    assert clock_rate_for(10) == 44100 and clock_rate_for(34) == 90000
    assert clock_rate_for(96) is None and clock_rate_for(20) is None


@SETTINGS
@given(rate=st.sampled_from(COMMON_CLOCK_RATES), seed=st.integers(0, 2**32 - 1),
       ts0=st.integers(0, 2**32 - 1))
def test_clock_rate_is_estimated_from_timestamps(rate, seed, ts0):
    rng = np.random.default_rng(seed)
    s = Stream(150, ts0=ts0, rate=rate)                 # 3 s of 20 ms packets
    arrival = s.arrival + rng.exponential(0.010, 150)   # queueing: late, never early
    assert estimate_clock_rate(arrival, s.ts) == rate


def test_clock_rate_needs_a_slope():
    assert estimate_clock_rate(np.array([1.0]), np.array([5])) is None
    assert estimate_clock_rate(np.array([1.0, 2.0]), np.array([5, 5])) is None
    assert estimate_clock_rate(np.array([0.0, 1.0]), np.array([0, 1000])) is None   # 1 kHz: none known


# --- finding streams in a capture --------------------------------------------------------

def rtp_bytes(seq, ts, ssrc, pt=0, marker=False, payload=b"\xd5" * 160, first=0x80, extra=b""):
    return struct.pack("!BBHII", first, (0x80 if marker else 0) | pt, seq, ts, ssrc) + extra + payload


def mask_of(payloads: list[bytes]) -> list[bool]:
    width = 48
    prefix = np.zeros((len(payloads), width), dtype=np.uint8)
    buf, offs = bytearray(), []
    for k, p in enumerate(payloads):
        prefix[k, :min(width, len(p))] = np.frombuffer(p[:width], dtype=np.uint8)
        offs.append(len(buf))
        buf += p
    lens = np.array([len(p) for p in payloads])
    return rtp_header_mask(prefix, lens, lens, np.frombuffer(bytes(buf) + b"\0", dtype=np.uint8),
                           np.array(offs)).tolist()


def test_header_mask():
    ok = rtp_bytes(1, 2, 3)
    rtcp_rr = struct.pack("!BBHI", 0x81, 201, 7, 3) + bytes(24)          # RTCP RR, length 7 words
    ext_ok = rtp_bytes(1, 2, 3, first=0x90, extra=b"\xbe\xde\x00\x01" + bytes(4))
    ext_long = rtp_bytes(1, 2, 3, first=0x90, extra=b"\xbe\xde\x01\x00", payload=bytes(8))
    pad_ok = rtp_bytes(1, 2, 3, first=0xA0, payload=bytes(19) + b"\x04")
    pad_zero = rtp_bytes(1, 2, 3, first=0xA0, payload=bytes(20))
    pad_long = rtp_bytes(1, 2, 3, first=0xA0, payload=bytes(9) + b"\xff")
    unassigned = rtp_bytes(1, 2, 3, pt=50)
    stun = b"\x00\x01\x00\x00\x21\x12\xa4\x42" + bytes(12)
    assert mask_of([ok, rtcp_rr, ext_ok, ext_long, pad_ok, pad_zero, pad_long, unassigned, stun]) == \
        [True, False, True, False, True, False, False, False, False]


def test_find_rtp_streams_in_a_capture(tmp_path):
    t0 = 1_700_000_000_000_000_000
    frames, times = [], []

    def send(src, sport, dst, dport, payload, t_ns):
        frames.append(bytes(Ether() / IP(src=src, dst=dst) / UDP(sport=sport, dport=dport) / payload))
        times.append(t_ns)

    for i in range(100):
        if i not in (30, 31, 70):                         # three lost on the way
            send("10.0.0.1", 4000, "10.0.0.2", 5000, rtp_bytes((65500 + i) % 65536, 160 * i, 0xABCD),
                 t0 + i * 20_000_000)
        send("10.0.0.2", 5000, "10.0.0.1", 4000, rtp_bytes(i, 960 * i, 0x1234, pt=111), t0 + i * 20_000_000 + 7)
    send("10.0.0.2", 5000, "10.0.0.1", 4000, rtp_bytes(7, 0, 0x5555, pt=111), t0 + 5)   # one-packet stream
    rng = np.random.default_rng(3)
    for i in range(50):                                   # encrypted noise that can look like RTP
        send("10.0.0.3", 6000, "10.0.0.4", 7000, bytes([0x80]) + rng.bytes(60), t0 + i * 1_000_000)
    path = tmp_path / "call.pcap"
    write_pcap(path, frames, times)
    cap = read_capture(str(path))
    streams = {s.ssrc: s for s in find_rtp_streams(cap, build_flows(cap))}
    assert set(streams) == {0xABCD, 0x1234, 0x5555}
    a = streams[0xABCD]
    assert a.key == ("10.0.0.1", 4000, "10.0.0.2", 5000, 0xABCD)
    r = a.stats()
    assert (r.packets, r.lost, r.loss_runs.tolist(), r.clock_rate) == (97, 3, [2, 1], 8000)
    assert r.last_seq - r.first_seq == 99 and r.max_jitter_ms < 1e-6
    b = streams[0x1234].stats()
    assert b.clock_rate == 48000 and b.lost == 0 and b.max_jitter_ms < 1e-6
    assert streams[0x1234].stats(wireshark_compatible=True).max_jitter_ms is None
    assert streams[0x5555].packets == 1                   # kept: its flow carries RTP
