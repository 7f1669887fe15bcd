"""The real-kernel testbed: short calls through known tbf policing/shaping, read back with our own reader.

The end-to-end tests need root, `ip netns`, `tc` and `tcpdump`; they skip with the reason otherwise.
The wire-format tests (STUN, RTP bookkeeping) run everywhere.
"""
from __future__ import annotations

import json
import struct
import zlib

import numpy as np
import pytest

from throttledetect.testbed import netns, traffic
from throttledetect.testbed.traffic import (AUDIO_CLIENT_PORT, AUDIO_SERVER_PORT, CTL_SERVER_PORT, TCP_CLIENT_PORT,
                                            UDPCTL_CLIENT_PORT, VIDEO_CLIENT_PORT, VIDEO_SERVER_PORT)

from throttledetect.flows import build_flows
from throttledetect.read import read_capture

_OK, _WHY = netns.availability()
need_testbed = pytest.mark.skipif(not _OK, reason=f"kernel testbed unavailable: {_WHY}")

SECONDS = 3.0


# -- wire formats (no privileges needed) -----------------------------------------------------------
def test_stun_request_and_response_are_well_formed():
    tid = bytes(range(12))
    key = b"secretpassword"
    msg = traffic.stun_message(0x0001, tid, [(0x0006, b"abc:def"), (0x0024, struct.pack("!I", 1))], key)
    mtype, length, cookie = struct.unpack_from("!HHI", msg)
    assert (mtype, cookie, length + 20) == (0x0001, 0x2112A442, len(msg))
    parsed = traffic.parse_stun(msg)
    assert parsed is not None and parsed[1] == tid
    attrs = parsed[2]
    assert attrs[0x0006] == b"abc:def" and 0x0008 in attrs and 0x8028 in attrs
    # FINGERPRINT: CRC-32 of everything before it, XOR 0x5354554e (RFC 5389 15.5)
    assert struct.unpack("!I", attrs[0x8028])[0] == (zlib.crc32(msg[:-8]) ^ 0x5354554E) & 0xFFFFFFFF
    resp = traffic.stun_message(0x0101, tid, [(0x0020, traffic.xor_mapped_address("192.168.88.2", 50102))], key)
    _, rtid, rattrs = traffic.parse_stun(resp)
    assert rtid == tid
    assert traffic.decode_xor_mapped(rattrs[0x0020]) == ("192.168.88.2", 50102)
    assert traffic.parse_stun(traffic.rtp_header(False, 111, 1, 2, 3) + b"x" * 20) is None


def test_receiver_stats_handle_wrap_loss_and_duplicates():
    r = traffic.RecvStats(1, 48000)
    seqs = [65533, 65534, 65535, 0, 2, 2, 3, 1]  # wrap, one gap filled late, one duplicate
    for i, s in enumerate(seqs):
        r.update(s, i * 960, i * 0.02)
    s = r.summary()
    assert s["expected"] == 7 and s["received"] == 7 and s["duplicates"] == 1 and s["lost"] == 0


def test_nominal_rates_add_headers():
    cfg = traffic.CallConfig(video_down_kbps=500, video_up_kbps=0)
    n = traffic.nominal_rates(cfg)
    assert n["audio_bps_each_way"] == (54 + 120) * 8 * 50
    assert 500_000 < n["video_down_bps"] < 560_000 and n["video_up_bps"] == 0


# -- end to end --------------------------------------------------------------------------------------
def _run(tmp_path_factory, scenario: str, **kw) -> tuple[str, dict]:
    from throttledetect.testbed.run import run_scenario, truth_path
    out = str(tmp_path_factory.mktemp(scenario) / f"{scenario}.pcap")
    truth = run_scenario(scenario, SECONDS, out, **kw)
    with open(truth_path(out)) as f:
        assert json.load(f)["scenario"] == scenario
    return out, truth


@pytest.fixture(scope="module")
def policed(tmp_path_factory):
    # policer at ~0.6x of the server->client media rate, from the first packet
    return _run(tmp_path_factory, "policed", onset=0.0)


@pytest.fixture(scope="module")
def shaped(tmp_path_factory):
    # the same rate with a long tbf queue, starting 0.5 s into the call
    return _run(tmp_path_factory, "shaped", onset=0.5)


class _View:
    """Packets of one capture through throttledetect's reader and flow table."""

    def __init__(self, path: str):
        self.cap = read_capture(path)
        self.ft = build_flows(self.cap)
        self.t = self.cap.packets

    def flow_between(self, proto: int, port_a: int, port_b: int) -> int:
        ft = self.ft
        for i in range(len(ft)):
            if int(ft.proto[i]) == proto and {int(ft.a_port[i]), int(ft.b_port[i])} == {port_a, port_b}:
                return i
        raise AssertionError(f"no flow between ports {port_a} and {port_b}")

    def rows_from(self, flow: int, sport: int) -> np.ndarray:
        rows = self.ft.packet_indices(flow)
        return rows[self.t.sport[rows] == sport]

    def rtp(self, rows: np.ndarray) -> list[tuple[float, int, int, int]]:
        """(arrival s, pt, seq, timestamp) of RTP packets (not STUN, not RTCP)."""
        out = []
        for i in rows:
            d = self.cap.payload(int(i))
            if len(d) >= 12 and d[0] >> 6 == 2 and not 200 <= d[1] <= 206:
                seq, ts = struct.unpack_from("!HI", d, 2)
                out.append((self.t.ts_ns[i] / 1e9, d[1] & 0x7F, seq, ts))
        return out


def _seq_lost(pkts) -> tuple[int, int]:
    seqs = np.unwrap(np.array([p[2] for p in pkts], dtype=float), period=65536)
    uniq = np.unique(seqs)
    expected = int(uniq[-1] - uniq[0] + 1)
    return expected - len(uniq), expected


@need_testbed
def test_policed_call_loses_media_but_not_control(policed):
    path, truth = policed
    v = _View(path)
    assert len(v.t) > 300
    # the call's flows carry RTP both ways
    for cport, sport, pt in ((AUDIO_CLIENT_PORT, AUDIO_SERVER_PORT, 111), (VIDEO_CLIENT_PORT, VIDEO_SERVER_PORT, 96)):
        f = v.flow_between(17, cport, sport)
        assert v.ft.packets_ab[f] > 20 and v.ft.packets_ba[f] > 20
        down, up = v.rtp(v.rows_from(f, sport)), v.rtp(v.rows_from(f, cport))
        assert down and up and {p[1] for p in down} == {pt} == {p[1] for p in up}
        # client -> server is not throttled and is seen before the router: no gaps at all
        assert _seq_lost(up)[0] == 0
    # server -> client media, aggregated, lost a clear share (offered ~1.67x the policer rate)
    lost = expected = 0
    for cport, sport in ((AUDIO_CLIENT_PORT, AUDIO_SERVER_PORT), (VIDEO_CLIENT_PORT, VIDEO_SERVER_PORT)):
        lo, ex = _seq_lost(v.rtp(v.rows_from(v.flow_between(17, cport, sport), sport)))
        lost, expected = lost + lo, expected + ex
    assert lost / expected > 0.15, (lost, expected)
    # ... with no queueing worth the name (a policer, not a shaper): audio one-way delay stays flat
    audio = v.rtp(v.rows_from(v.flow_between(17, AUDIO_CLIENT_PORT, AUDIO_SERVER_PORT), AUDIO_SERVER_PORT))
    owd = np.array([p[0] - p[3] / 48000 for p in audio])
    assert np.percentile(owd - owd.min(), 95) < 0.06
    # the control flows went through the same hop untouched
    ctl = v.flow_between(17, UDPCTL_CLIENT_PORT, CTL_SERVER_PORT)
    counters = [struct.unpack_from("!I", v.cap.payload(int(i)), 10)[0] for i in v.rows_from(ctl, CTL_SERVER_PORT)]
    assert len(counters) > 20 and np.all(np.diff(counters) == 1)
    tcp = v.flow_between(6, TCP_CLIENT_PORT, CTL_SERVER_PORT)
    rows = v.rows_from(tcp, CTL_SERVER_PORT)
    rows = rows[v.t.payload_wirelen[rows] > 0]
    seq = v.t.tcp_seq[rows].astype(np.int64)
    assert len(rows) > 5 and np.all(np.diff(seq) > 0), "TCP control flow retransmitted"
    # the truth file agrees with what was measured at both ends
    agg = truth["measured"]["throttled_aggregate"]["to-local"]
    assert agg["loss"] > 0.15
    assert abs(agg["received_bps_after_onset"] - truth["rate_bps"]) < 0.2 * truth["rate_bps"]
    assert truth["measured"]["flows"]["udp_control"]["to-local"]["lost"] == 0
    assert truth["measured"]["flows"]["tcp_control"]["to-local"]["lost"] == 0
    assert sum(q["dropped"] or 0 for q in truth["qdisc_stats"] if q["kind"] == "tbf") > 0


@need_testbed
def test_shaped_call_queues(shaped):
    path, truth = shaped
    v = _View(path)
    audio = v.rtp(v.rows_from(v.flow_between(17, AUDIO_CLIENT_PORT, AUDIO_SERVER_PORT), AUDIO_SERVER_PORT))
    assert len(audio) > 50
    arrival = np.array([p[0] for p in audio])
    owd = arrival - np.array([p[3] / 48000 for p in audio])
    owd -= owd.min()
    t_rel = arrival - arrival[0]
    before = owd[t_rel < 0.4]
    late = owd[t_rel > t_rel[-1] - 0.8]
    assert len(before) > 5 and len(late) > 5
    # relative one-way delay grows by hundreds of ms once the tbf queue fills (limit 48 KB at ~358 kbit/s)
    assert np.median(late) - np.median(before) > 0.3, (np.median(before), np.median(late))
    # and the sender-side comparison (exact one-way delay) says the same
    m = truth["measured"]["flows"]["audio"]["to-local"]
    assert m["delay_ms_before_onset_p50"] < 5 and m["delay_ms_after_onset_p90"] > 300
    assert truth["measured"]["flows"]["udp_control"]["to-local"]["delay_ms_p90"] < 5
