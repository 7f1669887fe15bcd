"""The SRTCP index (streams/srtcp.py): a counter in clear on encrypted RTCP, found wherever the
suite puts it, counted as RTP sequence numbers are, and the direction's loss signal only where
the direction is its RTCP. Packets are built here with the truth known, then read back from a
capture; the corpus calls show the suites real apps use."""
from __future__ import annotations

import struct

import numpy as np
import pytest
from scapy.all import IP, UDP, PcapReader

from tests.corpus import NDPI_PCAP_DIR, need_corpus
from throttledetect import warm
from throttledetect.flows import build_flows
from throttledetect.read import read_capture
from throttledetect.streams import build_streams
from throttledetect.streams.srtcp import TRAILER, find_srtcp_index, rtcp_mask

LOCAL, REMOTE = warm.LOCAL_ADDR, warm.REMOTE_ADDR


def srtcp(index: int, ssrc: int = 0x5EED, place: int = 4, rng=None, size: int = 48) -> bytes:
    """An SRTCP packet: clear header (PT 205, the sender's SSRC), random 'encrypted' bytes, the E
    flag and index `place` bytes from the end, random tag bytes after it."""
    rng = rng or np.random.default_rng(index)
    head = struct.pack("!BBHI", 0x8F, 205, size // 4 - 1, ssrc)
    body = rng.integers(0, 256, size - 8 - place, dtype=np.uint8).tobytes()
    tag = rng.integers(0, 256, place - 4, dtype=np.uint8).tobytes()
    return head + body + struct.pack("!I", 0x80000000 | index) + tag


def arrays(packets):
    first = np.array([list(p[:8]) for p in packets], dtype=np.uint8)
    trailer = np.array([list(p[-TRAILER:]) for p in packets], dtype=np.uint8)
    return first, trailer


@pytest.mark.parametrize("place", [4, 8, 14])
def test_index_found_at_the_suites_place_and_gaps_counted(place):
    rng = np.random.default_rng(1)
    sent = np.arange(1, 301)
    lost = np.sort(rng.choice(sent, 15, replace=False))
    got = np.setdiff1d(sent, lost)
    pkts = [srtcp(int(k), place=place) for k in got]
    first, trailer = arrays(pkts)
    t = got * 0.1
    idx = find_srtcp_index(t, np.full(len(t), 90.0), first, trailer)
    assert idx is not None and idx.place == place
    lu = idx.loss_units()
    # the first and last index received bound what is expected
    inner = lost[(lost > got[0]) & (lost < got[-1])]
    assert lu.n == got[-1] - got[0] + 1 and lu.n_lost == len(inner) and lu.source == "srtcp"
    assert np.allclose(np.sort(lu.t[lu.lost]), inner * 0.1)


def test_random_trailers_and_plain_rtcp_have_no_index():
    rng = np.random.default_rng(2)
    pkts = [struct.pack("!BBHI", 0x81, 201, 7, 0x5EED) + rng.integers(0, 256, 24, dtype=np.uint8).tobytes()
            for _ in range(200)]
    first, trailer = arrays(pkts)
    assert find_srtcp_index(np.arange(200) * 0.1, np.full(200, 74.0), first, trailer) is None


def test_a_restart_or_a_looped_trace_is_a_new_run_not_a_loss():
    got = np.r_[np.arange(1, 151), np.arange(1, 151), np.arange(9_000, 9_100)]
    pkts = [srtcp(int(k)) for k in got]
    first, trailer = arrays(pkts)
    idx = find_srtcp_index(np.arange(len(got)) * 0.1, np.full(len(got), 90.0), first, trailer)
    lu = idx.loss_units()
    assert lu.n == len(got) and lu.n_lost == 0


def test_two_senders_counted_apart():
    got_a, got_b = np.arange(1, 101), np.r_[np.arange(500, 550), np.arange(552, 600)]
    pkts = [srtcp(int(k), ssrc=0xA) for k in got_a] + [srtcp(int(k), ssrc=0xB) for k in got_b]
    t = np.r_[np.arange(100) * 0.1, np.arange(98) * 0.1 + 0.05]
    o = np.argsort(t, kind="stable")
    first, trailer = arrays([pkts[k] for k in o])
    lu = find_srtcp_index(t[o], np.full(len(t), 90.0), first, trailer).loss_units()
    assert lu.n_lost == 2 and lu.n == 100 + 100


def _call(tmp_path, inbound_extra: int = 0, lost=(40, 41, 90, 150, 151, 152)):
    """A capture of a call whose inbound is its far end's SRTCP only (every 100 ms, indices 1..300
    but `lost`), its outbound RTP; `inbound_extra` bytes of other packets inbound now and then
    (every 0.5 s on average, at random: signalling, not a clock)."""
    rng = np.random.default_rng(3)
    frames = []
    # RTCP intervals are randomised (RFC 3550: 0.5-1.5 times the mean), so they form no clock
    rtcp_t = np.cumsum(rng.uniform(0.05, 0.15, 301))
    rtcp_size = rng.choice([44, 48, 52, 76], 301)          # feedback and reports, as Snapchat's far end sends
    for k in range(1, 301):
        t = 0.1 * k
        for j in range(5):
            rtp = struct.pack("!BBHII", 0x80, 111, 5 * k + j, 960 * (5 * k + j), 0x1111) + bytes(80)
            frames.append((t + 0.02 * j, warm.udp_frame(LOCAL, REMOTE, 50000, 3478, rtp)))
        if k not in lost:
            frames.append((rtcp_t[k], warm.udp_frame(REMOTE, LOCAL, 3478, 50000,
                                                 srtcp(k, ssrc=0x2222, size=int(rtcp_size[k])))))
        if inbound_extra and rng.random() < 0.2:
            frames.append((t + rng.uniform(0, 0.1), warm.udp_frame(REMOTE, LOCAL, 3478, 50000,
                                                             b"\x40" + bytes(inbound_extra - 1))))
    pcap, _ = warm.write_tiny_call(str(tmp_path), sorted(frames, key=lambda f: f[0]))
    cap = read_capture(pcap)
    ft = build_flows(cap)
    i = int(np.argmax(ft.packets_ab + ft.packets_ba))
    st = build_streams(cap, ft)
    return st, i, st.toward_local(i)


def test_a_direction_that_is_its_rtcp_has_the_index_as_its_loss_signal(tmp_path):
    st, i, d = _call(tmp_path)
    lu = st.loss(i, d)
    assert lu is not None and lu.source == "srtcp"
    assert lu.n == 300 and lu.n_lost == 6


def test_a_direction_with_other_bytes_beside_its_rtcp_gets_no_loss_signal_from_it(tmp_path):
    """Other packets carry half of the inbound bytes: a policer could take them alone, and the
    index would then clear the direction. It is described, not used."""
    from throttledetect.detect.dropping import no_signal_reason

    class Ctx:
        def __init__(self, st, ft):
            self.streams, self.ft = st, ft

        def packets(self, i, d):
            return self.streams.packets(i, d)
    st, i, d = _call(tmp_path, inbound_extra=600)
    idx = st.srtcp(i, d)
    assert idx is not None and not idx.covers_direction
    assert st.loss(i, d) is None
    reason = no_signal_reason(Ctx(st, st.ft), i, d)
    assert "SRTCP index" in reason and "what a policer takes first" in reason


def _inbound_rtcp(path, local_prefix):
    packets, times = [], []
    for p in PcapReader(str(path)):
        if IP in p and UDP in p and not p[IP].src.startswith(local_prefix):
            pl = bytes(p[UDP].payload)
            if len(pl) >= 8 + TRAILER:
                packets.append(pl)
                times.append(float(p.time))
    first, trailer = arrays(packets)
    m = rtcp_mask(first, np.array([len(x) for x in packets]))
    return np.array(times)[m], first[m], trailer[m]


@need_corpus
@pytest.mark.parametrize("name,local,place", [("snapchat_call_v1.pcapng", "192.168.", 4),
                                              ("stun_signal.pcapng", "192.168.", 4)])
def test_real_calls_carry_the_index_where_their_suite_puts_it(name, local, place):
    t, first, trailer = _inbound_rtcp(NDPI_PCAP_DIR / name, local)
    idx = find_srtcp_index(t - t[0], np.full(len(t), 60.0), first, trailer)
    assert idx is not None and idx.place == place
    assert idx.loss_units().n_lost <= 1         # untouched calls: (nearly) nothing lost


def test_drops_from_an_onset_on_a_direction_that_is_its_rtcp_are_found_by_the_index(tmp_path):
    """The far end's RTCP is all that arrives, and a fifth of it is dropped from 15 s: the analysis
    finds the step on the SRTCP index, and says what it rests on. The same call untouched is not
    cleared: a far end whose media were all taken would leave the same RTCP alone."""
    from throttledetect.pipeline import analyze_capture, to_document
    rng = np.random.default_rng(5)
    verdicts = {}
    for name, lost in (("dropped", tuple(k for k in range(150, 301) if rng.random() < 0.2)), ("clean", ())):
        _call(tmp_path, lost=lost)
        doc = to_document([analyze_capture(str(tmp_path / "tiny.pcap"), test="all")])
        (flow,) = [f for f in doc["flows"] if f.get("tested")]
        verdicts[name] = flow
    dropping = next(d for d in verdicts["dropped"]["detections"] if d["kind"] == "dropping")
    assert verdicts["dropped"]["verdict"] == "dropping" and dropping["decision"] == "detected"
    assert "SRTCP index" in dropping["evidence"] and dropping["estimates"]["loss_source"] == "srtcp"
    assert verdicts["clean"]["verdict"] == "inconclusive"
    assert "counts the RTCP only" in verdicts["clean"]["verdict_reason"]
