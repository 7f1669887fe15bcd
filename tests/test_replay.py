"""Kernel replay end to end: real captures through tbf / htb / pfifo / netfilter in namespaces.

Needs root, iproute2 and tcpdump (skips with the reason otherwise; CI runs as root). The trials run
at once in a process pool through `replay_trial`, as a validation harness would call it, so the
whole module takes about half a minute. Every check reads the output capture itself with the
project's reader, not only the truth file.
"""
from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from tests.corpus import EXTERNAL_DIR, HAVE_CORPUS
from tests.test_replay_plan import write_mixed_call
from throttledetect.classify import classify
from throttledetect.flows import build_flows, local_side_is_a
from throttledetect.read import read_capture
from throttledetect.testbed import replay_measure as rm
from throttledetect.testbed.replay import replay_trial
from throttledetect.testbed.replay_net import netfilter_availability, tool_availability

REPO = Path(__file__).resolve().parents[1]
CALL = str(REPO / "captures" / "call_clean.pcap")
SKYPE = EXTERNAL_DIR / "Skype_06172024_rebuilt.pcap"

_OK, _WHY = tool_availability()
pytestmark = pytest.mark.skipif(not _OK, reason=f"kernel replay unavailable: {_WHY}")

TRIALS = {
    # name: (capture, spec, seconds)
    "police": (CALL, {"kind": "police", "rate_factor": 0.6, "burst_s": 0.02}, 10.0),
    "shape": (CALL, {"kind": "shape", "rate_factor": 0.6, "queue_s": 0.3, "onset_s": 3.0}, 10.0),
    "block": (CALL, {"kind": "block", "block_after_s": 4.0}, 8.0),
    "drop": (CALL, {"kind": "drop", "drop_probability": 0.1}, 8.0),
    "mixed_both": (None, {"kind": "police", "rate_factor": 0.5, "direction": "both"}, None),
    "skype_none": (str(SKYPE), {"kind": "none"}, 12.0),
}


def _trial(args):
    name, capture, spec, seconds, out_dir = args
    return name, replay_trial(capture, spec, seconds, seed=1, out_dir=out_dir, server_pcap=name == "mixed_both")


@pytest.fixture(scope="module")
def trials(tmp_path_factory):
    d = tmp_path_factory.mktemp("replay")
    mixed = str(d / "mixed.pcap")
    write_mixed_call(mixed, seconds=5.0)
    todo = []
    for name, (capture, spec, seconds) in TRIALS.items():
        if name == "drop" and not netfilter_availability()[0]:
            continue
        if name == "skype_none" and not HAVE_CORPUS:
            continue
        todo.append((name, capture or mixed, spec, seconds, str(d)))
    # several trials at once, as a harness runs them: each has its own namespaces
    with ProcessPoolExecutor(max_workers=3, mp_context=multiprocessing.get_context("spawn")) as pool:
        done = dict(pool.map(_trial, todo))
    done["mixed_input"] = mixed
    return done


def _view(path: str):
    cap = read_capture(path)
    ft = build_flows(cap)
    return cap, ft


def _throttled_rows(cap, ft, truth, to_local: bool) -> np.ndarray:
    """Rows of the output capture in the throttled flows' given direction (time order)."""
    want = {(f["local"], f["remote"]) for f in truth["throttled_flows"]}
    is_a, _ = local_side_is_a(ft)
    rows = []
    for f in range(len(ft)):
        a, b = ft.endpoint(f, "a"), ft.endpoint(f, "b")
        if (a, b) in want or (b, a) in want:
            r = ft.packet_indices(f)
            # direction 1 (b -> a) arrives at a
            rows.append(r[(ft.dir_of[r] == 1) == (is_a[f] == to_local)])
    rows = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
    return rows[np.argsort(cap.packets.ts_ns[rows], kind="stable")]


def _bystanders_untouched(truth) -> None:
    for f in truth["measured"]["flows"]:
        if not f["throttled"]:
            m = f["measured"].get("to-local")
            assert m is None or m["lost"] == 0, f


def test_unthrottled_replay_matches_the_original(trials):
    if "skype_none" not in trials:
        pytest.skip("../shared/corpus not found: the Skype corpus capture is the base of this test")
    out, truth = trials["skype_none"]
    assert truth["measured"]["extra_packets"] == 0 and truth["replay"]["send_failed"] == 0
    ocap, oft = _view(out)
    icap = read_capture(str(SKYPE))
    ift = build_flows(icap)
    ilabels = classify(icap, ift).labels
    olabels = classify(ocap, oft).labels
    # 12 s of a 14.7 s capture: the same flows, their packets up to 12 s, the same labels
    t0 = int(icap.packets.ts_ns.min())
    keep = icap.packets.ts_ns <= t0 + 12 * 10**9
    cut_ft = build_flows(icap.packets.take(np.flatnonzero(keep)))
    want = {(cut_ft.endpoint(i, "a"), cut_ft.endpoint(i, "b")): (int(cut_ft.packets_ab[i]), int(cut_ft.packets_ba[i]))
            for i in range(len(cut_ft))}
    got = {(oft.endpoint(i, "a"), oft.endpoint(i, "b")): (int(oft.packets_ab[i]), int(oft.packets_ba[i]))
           for i in range(len(oft))}
    assert got == want
    assert olabels == ilabels[:len(olabels)] == ["teams"]
    tp = truth["replay"]["timing_precision"]["from_local_at_client"]
    assert tp["abs_error_us_p50"] < 500, tp


def test_policer_drops_and_never_exceeds_its_bucket(trials):
    out, truth = trials["police"]
    agg = truth["measured"]["throttled_aggregate"]["to-local"]
    cfg = truth["throttle"]["to-local"]
    assert agg["drop_fraction"] > 0.05
    _bystanders_untouched(truth)
    cap, ft = _view(out)
    rows = _throttled_rows(cap, ft, truth, to_local=True)
    t = cap.packets.ts_ns[rows] / 1e9
    excess = rm.max_window_excess(t, cap.packets.wirelen[rows], cfg["rate_bps"])
    # within any window the policer let through at most rate x T + burst (one frame for timestamp jitter)
    assert excess <= cfg["burst_bytes"] + cfg["max_frame_bytes"], (excess, cfg)
    assert agg["received_bps_after_onset"] <= 1.05 * cfg["rate_bps"]
    assert agg["delay_ms_p90"] <= cfg["max_queue_delay_ms"] + 5    # a queue of one packet, no more
    # the client's own packets are captured as sent
    up = _throttled_rows(cap, ft, truth, to_local=False)
    assert len(up) == sum(f["measured"]["from-local"]["sent"] for f in truth["measured"]["flows"] if f["throttled"])


def test_shaper_queues_and_caps_the_rate(trials):
    out, truth = trials["shape"]
    agg = truth["measured"]["throttled_aggregate"]["to-local"]
    cfg = truth["throttle"]["to-local"]
    assert abs(truth["onset_s"] - 3.0) < 0.05
    assert agg["delay_ms_before_onset_p50"] < 5
    assert agg["delay_ms_after_onset_p50"] > 50          # the queue fills: delay rises
    assert 0.8 * cfg["rate_bps"] <= agg["received_bps_after_onset"] <= 1.05 * cfg["rate_bps"]
    _bystanders_untouched(truth)
    cap, ft = _view(out)
    rows = _throttled_rows(cap, ft, truth, to_local=True)
    t = cap.packets.ts_ns[rows] / 1e9
    after = t >= truth["onset_epoch"] + cfg["max_queue_delay_ms"] / 1000
    excess = rm.max_window_excess(t[after], cap.packets.wirelen[rows][after], cfg["rate_bps"])
    assert excess <= cfg["burst_bytes"] + cfg["max_frame_bytes"], (excess, cfg)


def test_blocking_stops_arrivals_while_the_client_keeps_sending(trials):
    out, truth = trials["block"]
    on = truth["onset_epoch"]
    assert abs(truth["onset_s"] - 4.0) < 0.05
    cap, ft = _view(out)
    down = cap.packets.ts_ns[_throttled_rows(cap, ft, truth, to_local=True)] / 1e9
    up = cap.packets.ts_ns[_throttled_rows(cap, ft, truth, to_local=False)] / 1e9
    assert (down < on).sum() > 100 and (down > on + 0.01).sum() == 0
    assert (up > on + 1).sum() > 100
    # the onset is the midpoint of the instants between which the filters went in (a few ms, more
    # on a busy machine): a packet sent in the second half of that window may still pass (CI saw
    # 1 of 246), so nearly all, not all, are lost; nothing arrives 10 ms past the onset (above)
    assert truth["measured"]["throttled_aggregate"]["to-local"]["drop_fraction_after_onset"] >= 0.98
    _bystanders_untouched(truth)


def test_random_drops_through_netfilter(trials):
    if "drop" not in trials:
        pytest.skip(f"random drop needs netfilter: {netfilter_availability()[1]}")
    _, truth = trials["drop"]
    agg = truth["measured"]["throttled_aggregate"]["to-local"]
    assert 0.04 < agg["drop_fraction"] < 0.2 and agg["sent"] > 500
    assert truth["netfilter_counters"]["ipv4"]["dropped_packets"] == agg["lost"]
    _bystanders_untouched(truth)


def test_ipv6_and_tcp_replay_both_directions(trials):
    out, truth = trials["mixed_both"]
    m = truth["measured"]
    assert m["extra_packets"] == 0          # no RST, no ICMP: the endpoints own no address
    agg = m["throttled_aggregate"]
    assert agg["to-local"]["drop_fraction"] > 0.2 and agg["from-local"]["drop_fraction"] > 0.2
    (v6,) = [f for f in m["flows"] if f["throttled"]]
    assert v6["transport"] == "udp" and v6["local"].startswith("[2001:db8:1::23]")
    # the TCP connection, not throttled, is in the capture packet for packet, as recorded
    icap, ift = _view(trials["mixed_input"])
    ocap, oft = _view(out)

    def tcp_ip_bytes(cap, sport):
        t = cap.packets
        rows = np.flatnonzero((t.proto == 6) & (t.sport == sport))
        return [bytes(cap.buffer[int(t.frame_off[r]) + 14 + 10:int(t.frame_off[r]) + int(t.caplen[r])])
                for r in rows]           # from the IP checksum on (TTL is one lower past the router)

    # each direction in its recorded order (the two directions may interleave a little differently:
    # a segment and the ACK sent 1 ms after it travel different paths)
    for sport, n in ((443, 39), (50001, 40)):
        assert tcp_ip_bytes(ocap, sport) == tcp_ip_bytes(icap, sport) and len(tcp_ip_bytes(ocap, sport)) == n
    assert os.path.exists(out[:-5] + ".server.pcap")
