"""The policing detectors: the SIGCOMM'16 lab traces (ground truth in the file names) and
token buckets, random loss and shapers applied here to synthetic paced RTP-like streams."""
from __future__ import annotations

import re
import struct
import time

import numpy as np
import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from tests.corpus import EXTERNAL_DIR, HAVE_CORPUS, need_corpus, policing_traces
from throttledetect.detect.policing import (
    PolicerFit,
    detect_policing_rtp,
    detect_policing_tcp,
    fit_policer,
    policing_from_rtp,
    rank_test,
    rtp_loss_arrays,
)
from throttledetect.flows import build_flows
from throttledetect.read import read_capture
from throttledetect.write import write_pcap

# ---------------------------------------------------------------------------------------------
# Synthetic streams (arrays): a paced VBR stream, and what a policer / shaper / random loss does
# ---------------------------------------------------------------------------------------------

DURATION_S, PPS = 60.0, 50
SIZE_MIN, SIZE_MAX = 80, 400
OVERSEND = 1.3            # the stream sends 1.3 x the policer's rate
BURST = 10_000.0
BASE_DELAY_S = 0.030


def paced_stream(seed: int):
    """60 s of 50 packets/s, sizes uniform in 80..400 B, with up to 2 ms of send jitter."""
    rng = np.random.default_rng(seed)
    n = int(DURATION_S * PPS)
    send = np.sort(np.arange(n) / PPS + rng.uniform(0.0, 0.002, n))
    sizes = rng.integers(SIZE_MIN, SIZE_MAX + 1, n).astype(float)
    return send, sizes


def token_bucket_policer(t, sizes, rate_Bps, burst):
    """Drop a packet when the bucket (full at the start) holds fewer tokens than its size."""
    tokens, tp = burst, t[0]
    lost = np.zeros(t.size, dtype=bool)
    for i in range(t.size):
        tokens = min(burst, tokens + rate_Bps * (t[i] - tp))
        tp = t[i]
        if tokens < sizes[i]:
            lost[i] = True
        else:
            tokens -= sizes[i]
    return lost


def token_bucket_shaper(t, sizes, rate_Bps, burst, queue_bytes):
    """Token bucket that queues (FIFO of queue_bytes) instead of dropping: departure times and
    tail drops when the queue is full."""
    dep = np.full(t.size, np.nan)
    lost = np.zeros(t.size, dtype=bool)
    tokens, t_tok, prev_dep = burst, t[0], -np.inf
    backlog: list[tuple[float, float]] = []
    for i in range(t.size):
        backlog = [(d, s) for d, s in backlog if d > t[i]]
        if sum(s for _, s in backlog) + sizes[i] > queue_bytes:
            lost[i] = True
            continue
        start = max(t[i], prev_dep)
        tokens = min(burst, tokens + rate_Bps * (start - t_tok))
        t_tok = start
        if tokens < sizes[i]:
            wait = (sizes[i] - tokens) / rate_Bps
            start += wait
            tokens += rate_Bps * wait
            t_tok = start
        tokens -= sizes[i]
        dep[i] = prev_dep = start
        backlog.append((start, sizes[i]))
    return dep, lost


def received_view(arrival, sizes, lost):
    """What a receiver knows: nothing of lost packets but that they are missing."""
    return np.where(lost, np.nan, arrival), np.where(lost, np.nan, sizes)


def policer_rate(sizes):
    return sizes.sum() / DURATION_S / OVERSEND


# ---------------------------------------------------------------------------------------------
# fit_policer on arrays
# ---------------------------------------------------------------------------------------------


def test_policed_stream_is_detected_with_rate_within_5_percent():
    rows = []
    for seed in range(5):
        send, sizes = paced_stream(seed)
        rate = policer_rate(sizes)
        lost = token_bucket_policer(send, sizes, rate, BURST)
        arrival = send + BASE_DELAY_S + np.random.default_rng(100 + seed).exponential(0.002, send.size)
        fit = fit_policer(*received_view(arrival, sizes, lost), lost, send_s=send)
        err = fit.rate_bps / (8 * rate) - 1
        rows.append((seed, lost.mean(), 8 * rate, fit.rate_bps, err, fit.burst_bytes, fit.pvalue, fit.decision()))
        assert isinstance(fit, PolicerFit)
        assert fit.decision() == "detected", (fit.checks, fit.details)
        assert abs(err) < 0.05
        assert 0.5 * BURST < fit.burst_bytes < 2 * BURST
        assert fit.effect > 0.5
    print("\nseed loss   true_bps  est_bps   err     burst   p        decision")
    for r in rows:
        print("%4d %.3f %9.0f %9.0f %+6.2f%% %7.0f %8.2g %s" % (r[0], r[1], r[2], r[3], 100 * r[4], r[5], r[6], r[7]))


def test_independent_random_loss_is_not_policing():
    """20 seeds of 5 % independent loss: at most one false positive (observed: 0)."""
    positives, raw = 0, []
    for seed in range(20):
        send, sizes = paced_stream(seed)
        rng = np.random.default_rng(2000 + seed)
        arrival = send + BASE_DELAY_S + rng.exponential(0.002, send.size)
        lost = rng.random(send.size) < 0.05
        fit = fit_policer(*received_view(arrival, sizes, lost), lost, send_s=send)
        positives += fit.decision() == "detected"
        raw.append(fit.details["pvalue_raw"])
    print(f"\nrandom 5 % loss, 20 seeds: {positives} detected; uncorrected p < 0.05 in "
          f"{int(np.sum(np.array(raw) < 0.05))} of 20")
    assert positives <= 1


@pytest.mark.parametrize("queue_bytes", [20_000.0, 3_000.0])
def test_shaper_tail_drops_are_not_policing(queue_bytes):
    """A shaper (same bucket, but queueing) drops only when its queue is full: the one-way delay
    has grown before each drop, so it must not be called policing."""
    send, sizes = paced_stream(7)
    rate = policer_rate(sizes)
    dep, lost = token_bucket_shaper(send, sizes, rate, BURST, queue_bytes)
    arrival = dep + BASE_DELAY_S + np.random.default_rng(7).exponential(0.002, send.size)
    fit = fit_policer(*received_view(arrival, sizes, lost), lost, send_s=send)
    print(f"\nshaper queue {queue_bytes:.0f} B: loss {lost.mean():.3f}, decision {fit.decision()}, "
          f"checks failed {[k for k, v in fit.checks.items() if v is False]}, "
          f"inflated-delay share {fit.details.get('inflated_delay_share')}")
    assert lost.sum() > 15
    assert fit.decision() != "detected"
    assert fit.checks["no_inflated_delay"] is False


def test_no_loss_is_inconclusive():
    send, sizes = paced_stream(3)
    arrival = send + BASE_DELAY_S
    fit = fit_policer(arrival, sizes, np.zeros(send.size, bool), send_s=send)
    assert fit.decision() == "inconclusive" and fit.reason


def test_few_losses_are_inconclusive():
    send, sizes = paced_stream(4)
    lost = np.zeros(send.size, bool)
    lost[[100, 900, 1700, 2500]] = True
    fit = fit_policer(*received_view(send + BASE_DELAY_S, sizes, lost), lost, send_s=send)
    assert fit.decision() == "inconclusive"
    assert fit.checks["enough_samples"] is False


def test_rank_test_direction_and_effect():
    rng = np.random.default_rng(0)
    low, high = rng.normal(0, 1, 200), rng.normal(2, 1, 400)
    t = rank_test([(low, high)])
    assert t.pvalue < 1e-20 and t.effect > 0.7
    t = rank_test([(high, low)])
    assert t.pvalue > 0.99 and t.effect < -0.7
    # Stratified: the same as one stratum when there is one; sums strata otherwise.
    t2 = rank_test([(low[:100], high[:200]), (low[100:], high[200:])])
    assert t2.pvalue < 1e-20 and t2.pairs == 2 * 100 * 200


# ---------------------------------------------------------------------------------------------
# RTP fields -> arrays, and through a written capture
# ---------------------------------------------------------------------------------------------

CLOCK = 48000


def rtp_view(send, sizes, lost, arrival, *, seq0=65_000, ts0=4_294_000_000):
    seq = (np.arange(send.size) + seq0) % 65536
    ts = (np.round(send * CLOCK).astype(np.int64) + ts0) % (1 << 32)
    keep = ~lost
    return arrival[keep], seq[keep], ts[keep], sizes[keep]


def test_rtp_loss_arrays_wraps_and_marks_missing():
    arr = np.array([0.00, 0.02, 0.08, 0.06])            # reordered arrival
    seq = np.array([65534, 65535, 2, 1])                 # wraps; 0 missing
    ts = np.array([0, 960, 3840, 2880])
    size = np.array([100, 110, 120, 130])
    a, s, lost, send, clock, _ = rtp_loss_arrays(arr, seq, ts, size, clock_rate=CLOCK)
    assert lost.tolist() == [False, False, True, False, False]
    assert np.isnan(a[2]) and np.isnan(s[2]) and s[3] == 130
    assert np.allclose(send, [0, 0.02, 0.04, 0.06, 0.08])


def test_policing_from_rtp_arrays():
    send, sizes = paced_stream(11)
    rate = policer_rate(sizes)
    lost = token_bucket_policer(send, sizes, rate, BURST)
    arrival = send + BASE_DELAY_S + np.random.default_rng(11).exponential(0.002, send.size)
    det = policing_from_rtp(*rtp_view(send, sizes, lost, arrival))
    assert det.decision == "detected", det.reason
    assert abs(det.estimates["rate_bps"] / (8 * rate) - 1) < 0.05
    assert det.estimates["clock_rate"] == CLOCK
    assert det.kind == "policing" and det.pvalue < 0.01 and det.effect > 0.5
    assert set(det.estimates["checks"]) >= {"enough_samples", "lower_fill_on_loss", "no_inflated_delay"}


def _write_rtp_capture(path, send, sizes, lost, arrival, t0=1_700_000_000.0):
    frames, times = [], []
    seq = (np.arange(send.size) + 1000) % 65536
    ts = np.round(send * CLOCK).astype(np.int64) % (1 << 32)
    for i in np.flatnonzero(~lost):
        header = struct.pack("!BBHII", 0x80, 111, int(seq[i]), int(ts[i]), 0x1234ABCD)
        payload = header + bytes(int(sizes[i]) - len(header))
        frames.append(bytes(Ether() / IP(src="10.0.0.2", dst="10.0.0.1") / UDP(sport=40000, dport=50000) / payload))
        times.append(int((t0 + arrival[i]) * 1e9))
    write_pcap(path, frames, times)


def test_detect_policing_rtp_through_a_capture(tmp_path):
    send, sizes = paced_stream(12)
    # The policer meters link-layer frames: 12 B RTP header inside the payload size, plus
    # 14 + 20 + 8 B of Ethernet/IP/UDP headers.
    frame = sizes + 42
    lost = token_bucket_policer(send, frame, policer_rate(frame), BURST)
    arrival = send + BASE_DELAY_S + np.random.default_rng(12).exponential(0.002, send.size)
    path = tmp_path / "policed_rtp.pcap"
    _write_rtp_capture(path, send, sizes, lost, arrival)
    cap = read_capture(path)
    ft = build_flows(cap)
    assert len(ft) == 1
    det = detect_policing_rtp(cap, ft, 0, "ab")
    print(f"\ncapture: loss {lost.mean():.3f}, {det.decision}, rate {det.estimates.get('rate_bps'):.0f} "
          f"vs {8 * policer_rate(frame):.0f}, burst {det.estimates.get('burst_bytes'):.0f}")
    assert det.decision == "detected", det.reason
    assert abs(det.estimates["rate_bps"] / (8 * policer_rate(frame)) - 1) < 0.05
    assert det.estimates["ssrc"] == 0x1234ABCD
    # The other direction carries nothing.
    assert detect_policing_rtp(cap, ft, 0, "ba").decision == "inconclusive"


@need_corpus
def test_real_call_traces_policed_offline():
    """Real RTP streams (Wehe's Skype audio/video, a SIP G.711 call) with a token bucket applied
    to their own packet times and sizes: detected with the rate within 5 %."""
    from throttledetect.classify import classify
    from throttledetect.wire.rtp import rtp_fields

    cases = [("Skype_06172024_rebuilt.pcap", 0, 1), ("Skype_06172024_rebuilt.pcap", 0, 0), ("sip_rtp.pcap", 1, 0)]
    print("\ntrace                          dir loss   true_bps  est_bps  err     decision")
    for name, fi, dv in cases:
        cap = read_capture(EXTERNAL_DIR / name)
        ft = build_flows(cap)
        cl = classify(cap, ft)
        idx = ft.packet_indices(fi)
        rows = idx[(ft.dir_of[idx] == dv) & (cl.evidence.rtp_encap_of[idx] >= 0)]
        f = rtp_fields(cap.packets.prefix[rows], cl.evidence.rtp_offset_of[rows], length=cap.packets.payload_len[rows])
        ssrcs, counts = np.unique(f["ssrc"][f["valid"]], return_counts=True)
        s = f["valid"] & (f["ssrc"] == ssrcs[np.argmax(counts)])
        t = cap.packets.ts_ns[rows[s]] / 1e9
        size = cap.packets.wirelen[rows[s]].astype(float)
        rate = size.sum() / (t[-1] - t[0]) / OVERSEND
        lost = token_bucket_policer(t, size, rate, BURST)
        video = size.max() > 600
        det = policing_from_rtp(t[~lost], f["seq"][s][~lost], f["ts"][s][~lost], size[~lost],
                                marker=f["marker"][s][~lost] if video else None)
        err = det.estimates["rate_bps"] / (8 * rate) - 1
        print(f"{name:30s} {dv}   {lost.mean():.3f} {8 * rate:9.0f} {det.estimates['rate_bps']:9.0f} "
              f"{100 * err:+5.1f}%  {det.decision} {det.reason}")
        assert det.decision == "detected", det.reason
        assert abs(err) < 0.05


# ---------------------------------------------------------------------------------------------
# The SIGCOMM'16 lab traces
# ---------------------------------------------------------------------------------------------

TRUTH = re.compile(r"(PCIR|SCIR)=(\d+)")


def _truth(path):
    m = TRUTH.search(path.name)
    return m.group(1), float(m.group(2))


def _client_ports(path):
    return {int(x) for x in re.findall(r"CP\d?=(\d+)", path.name)}


@pytest.fixture(scope="module")
def corpus_results():
    """detect_policing_tcp on the data direction of every chunk connection of every trace."""
    if not HAVE_CORPUS or not policing_traces():
        pytest.skip("corpus/policing not found: these tests need ../shared/corpus/policing (CI provides it)")
    out = []
    t0 = time.perf_counter()
    for path in policing_traces():
        cap = read_capture(path)
        ft = build_flows(cap)
        kind, truth = _truth(path)
        ports = _client_ports(path)
        for i in range(len(ft)):
            if int(ft.proto[i]) != 6 or int(ft.a_port[i]) not in ports:
                continue
            # Captured at the server: the data direction is the one carrying most bytes.
            direction = "ba" if ft.bytes_ba[i] > ft.bytes_ab[i] else "ab"
            out.append((path, i, kind, truth, detect_policing_tcp(cap, ft, i, direction)))
    elapsed = time.perf_counter() - t0
    print(f"\n{'trace':64s} flow truth          decision     scope      estimate   error  burst>=   "
          f"p        segs pol/test/all  failed checks (testable segments)")
    for path, i, kind, truth, det in out:
        e = det.estimates
        rate = e.get("rate_bps")
        failed: dict = {}
        for seg in e.get("segments", []):
            if not any(c in seg.get("failed", []) for c in ("enough_losses", "enough_samples",
                                                              "enough_slices_with_loss")):
                for c in seg.get("failed", []):
                    failed[c] = failed.get(c, 0) + 1
        if not failed and det.decision == "inconclusive":
            failed = {"(no testable segment)": 0}
        print(f"{path.name[:64]:64s} {i:4d} {kind} {truth:9.0f} {det.decision:12s} {e.get('scope', '-'):10s} "
              f"{rate if rate else float('nan'):10.0f} {100 * (rate / truth - 1) if rate else float('nan'):+5.1f}% "
              f"{e.get('burst_bytes', float('nan')):8.0f} "
              f"{det.pvalue if det.pvalue is not None else float('nan'):8.2g} "
              f"{e.get('segments_policed', 0):4d}/{e.get('segments_testable', 0)}/{e.get('segments_total', 0):<8d} "
              f"{', '.join(f'{k} x{v}' if v else k for k, v in failed.items())}")
    print(f"{len(out)} connections in {len(policing_traces())} traces, {elapsed:.1f} s")
    return out, elapsed


@need_corpus
def test_policed_traces_are_found_with_the_rate(corpus_results):
    results, _ = corpus_results
    policed = [r for r in results if r[2] == "PCIR"]
    assert policed
    for path, i, _, truth, det in policed:
        assert det.decision == "detected", f"{path.name} flow {i}: {det.reason}"
        assert abs(det.estimates["rate_bps"] / truth - 1) < 0.10, f"{path.name} flow {i}: {det.estimates['rate_bps']}"
        assert det.pvalue < 0.01 and det.effect > 0
        assert det.estimates["checks"]["no_inflated_rtt"] is True


@need_corpus
def test_shaped_traces_are_not_called_policing(corpus_results):
    results, _ = corpus_results
    shaped = [r for r in results if r[2] == "SCIR"]
    assert shaped
    for path, i, _, _, det in shaped:
        assert det.decision != "detected", f"{path.name} flow {i}: {det.evidence}"


@need_corpus
def test_corpus_time_budget(corpus_results):
    _, elapsed = corpus_results
    assert elapsed < 60.0
