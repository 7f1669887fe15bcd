"""The voice cadence of media without RTP headers (streams/cadence.py): which clock, how many
slots went empty. Arrival times and sizes are built here with the truth known: the period, the
packets removed, the jitter added."""
from __future__ import annotations

import numpy as np
import pytest

from throttledetect.streams.cadence import find_cadence


def train(period_s=0.02, seconds=60.0, *, seed=0, lo=80, hi=160, jitter_ms=0.5, loss=0.0, video_fps=0.0,
          video_per_frame=(2, 4), dtx=False, drift=0.0):
    """(t, size, truth): a voice train at `period_s` (sizes lo..hi bytes) with exponential jitter,
    optional video (video_per_frame packets of 1000-1200 B per frame at video_fps, their own clock), DTX
    pauses (1-3 s, nothing sent), a sender clock drifting by `drift`, and independent losses of
    voice packets with probability `loss`. truth: voice packets sent and lost."""
    rng = np.random.default_rng(seed)
    n = int(seconds / period_s)
    send = 0.5 + np.arange(n) * period_s * (1 + drift)
    active = np.ones(n, bool)
    if dtx:
        k = 0
        while k < n:
            k += int(rng.uniform(1.0, 3.0) / period_s)          # a talk spurt of 1-3 s
            pause = int(rng.uniform(1.0, 3.0) / period_s)
            active[k:k + pause] = False
            k += pause
    dropped = active & (rng.random(n) < loss)
    keep = active & ~dropped
    t = send[keep] + 0.03 + (rng.exponential(jitter_ms / 1e3, int(keep.sum())) if jitter_ms else 0.0)
    size = rng.integers(lo, hi + 1, int(keep.sum())).astype(float)
    if video_fps:
        frames = 0.5 + np.arange(int(seconds * video_fps)) / video_fps + 0.0071
        per = rng.integers(video_per_frame[0], video_per_frame[1] + 1, len(frames))
        vt = np.repeat(frames, per) + np.concatenate([np.arange(p) * 0.0008 for p in per])
        vt = vt + rng.exponential(jitter_ms / 1e3 if jitter_ms else 1e-4, len(vt))
        t = np.r_[t, vt]
        size = np.r_[size, rng.integers(1000, 1201, len(vt)).astype(float)]
    o = np.argsort(t, kind="stable")
    return t[o], size[o], {"sent": int(active.sum()), "lost": int(dropped.sum())}


@pytest.mark.parametrize("period_s", [0.02, 0.06])
def test_finds_the_voice_clock_and_counts_nothing_lost(period_s):
    t, size, truth = train(period_s, seed=1)
    cad = find_cadence(t, size)
    assert cad is not None
    assert cad.period_s == pytest.approx(period_s, abs=0.5e-3)
    assert cad.lost <= 0.002 * truth["sent"]
    assert cad.expected == pytest.approx(truth["sent"], rel=0.02)


@pytest.mark.parametrize("period_s,video_fps,per_frame", [
    (0.02, 10.0, (1, 1)), (0.02, 15.0, (1, 2)), (0.06, 10.0, (1, 1)), (0.06, 15.0, (1, 2)),
    (0.02, 30.0, (2, 4))])
def test_finds_the_voice_period_among_video(period_s, video_fps, per_frame):
    """Video packets (1000-1200 B, their own frame clock) interleaved with the voice train."""
    t, size, _ = train(period_s, video_fps=video_fps, video_per_frame=per_frame, seed=1)
    cad = find_cadence(t, size)
    assert cad is not None
    assert cad.period_s == pytest.approx(period_s, abs=0.5e-3)


HIDES = pytest.mark.xfail(strict=True, reason=(
    "streams.cadence: the widening step keeps a size subset that includes the video packets (max_size "
    "~1200 B) because the clock stays 'nearly as clear'; every packet of the subset counts as received in "
    "its slot, so the video packets fill the voice slots that were lost: 5 % voice loss is counted as 0"))
INVENTS = pytest.mark.xfail(strict=True, reason=(
    "streams.cadence: the size cap is a quantile of all the packets and lands inside the voice sizes "
    "(157 B of 80-160 B) when the next wider quantile reaches the video; the largest voice packets are left "
    "out of the subset and their slots counted lost: 3-4 % false loss on a lossless train"))


@pytest.mark.parametrize("period_s,video_fps,per_frame", [
    (0.02, 10.0, (1, 1)),
    (0.06, 10.0, (1, 1)),
    (0.02, 30.0, (1, 1))])
def test_counts_voice_losses_among_video(period_s, video_fps, per_frame):
    """The slots are the voice packets': a video packet neither fills a lost voice slot nor is a
    voice packet missing. Lossless: nothing lost; 5 % of the voice lost: within 20 % of it."""
    t, size, truth = train(period_s, video_fps=video_fps, video_per_frame=per_frame, seed=1)
    cad = find_cadence(t, size)
    assert cad is not None and cad.lost <= 0.002 * truth["sent"], (cad and cad.describe(), cad and cad.lost)
    t, size, truth = train(period_s, video_fps=video_fps, video_per_frame=per_frame, seed=2, loss=0.05)
    cad = find_cadence(t, size)
    assert cad is not None and abs(cad.lost - truth["lost"]) <= max(5, 0.2 * truth["lost"]), (cad.lost, truth)


@pytest.mark.parametrize("period_s,loss", [(0.02, 0.02), (0.02, 0.05), (0.06, 0.05), (0.02, 0.10)])
def test_counts_injected_losses(period_s, loss):
    """Independent losses of voice packets: counted within 20 % (or 5 packets) of the truth."""
    t, size, truth = train(period_s, loss=loss, seed=2)
    cad = find_cadence(t, size)
    assert cad is not None and cad.period_s == pytest.approx(period_s, abs=0.5e-3)
    assert abs(cad.lost - truth["lost"]) <= max(5, 0.2 * truth["lost"]), (cad.lost, truth)
    lu = cad.loss_units()
    assert lu.source == "cadence" and lu.n == cad.expected and lu.n_lost == cad.lost


def test_dtx_pauses_are_not_losses():
    t, size, truth = train(0.02, dtx=True, seed=3)
    cad = find_cadence(t, size)
    assert cad is not None and cad.spurts > 5
    assert cad.lost <= 0.002 * truth["sent"], (cad.lost, truth)
    assert cad.expected == pytest.approx(truth["sent"], rel=0.02)


def test_a_drifting_sender_clock_is_followed():
    """A sender clock 0.3 % slow: 0.18 s over a minute, far beyond a slot, yet windowed phases
    keep the grid and nothing is lost."""
    t, size, truth = train(0.02, drift=0.003, seed=4)
    cad = find_cadence(t, size)
    assert cad is not None and cad.lost <= 0.002 * truth["sent"]


@pytest.mark.parametrize("seed", range(3))
def test_jitter_does_not_create_losses_on_balance(seed):
    """Exponential jitter of 2 ms mean (a tenth of the period) re-times packets, some into a
    neighbour's slot: with no packet lost the count stays near zero; with 3 % lost, near 3 %."""
    t, size, truth = train(0.02, jitter_ms=2.0, seed=10 + seed)
    cad = find_cadence(t, size)
    assert cad is not None
    assert cad.lost <= 0.005 * truth["sent"], (cad.lost, truth)
    t, size, truth = train(0.02, jitter_ms=2.0, loss=0.03, seed=20 + seed)
    cad = find_cadence(t, size)
    assert abs(cad.lost - truth["lost"]) <= max(5, 0.25 * truth["lost"]), (cad.lost, truth)


@pytest.mark.parametrize("jitter_ms", [5.0, 10.0, 20.0])
def test_jitter_that_blurs_the_grid_gives_no_cadence_not_losses(jitter_ms):
    """Wider jitter: either the clock is still found and nothing is counted lost, or there is no
    cadence at all (no loss signal) -- never a false loss."""
    for seed in range(3):
        t, size, truth = train(0.02, jitter_ms=jitter_ms, seed=30 + seed)
        cad = find_cadence(t, size)
        assert cad is None or cad.lost <= 0.005 * truth["sent"], (jitter_ms, seed, cad.describe(), cad.lost)


@pytest.mark.parametrize("kind", ["poisson", "bulk", "bursts"])
def test_no_cadence_without_a_clock(kind):
    rng = np.random.default_rng(5)
    if kind == "poisson":          # random arrivals at voice-like rate and sizes
        t = np.cumsum(rng.exponential(0.02, 3000))
        size = rng.integers(80, 161, 3000).astype(float)
    elif kind == "bulk":           # a download: back-to-back full-size packets, irregular pauses
        t = np.cumsum(np.where(rng.random(20000) < 0.02, rng.exponential(0.05, 20000), 0.00012))
        size = np.full(20000, 1400.0)
    else:                          # bursts at random times (screen sharing)
        starts = np.cumsum(rng.exponential(0.1, 600))
        per = rng.integers(1, 8, 600)
        t = np.repeat(starts, per) + np.concatenate([np.arange(p) * 0.001 for p in per])
        size = rng.integers(200, 1200, len(t)).astype(float)
    assert find_cadence(t, size) is None


def test_too_short_or_too_few_is_none():
    t, size, _ = train(0.02, seconds=1.0)
    assert find_cadence(t, size) is None
    assert find_cadence(np.zeros(0), np.zeros(0)) is None


def paired_sender(seconds=60.0, seed=0, jitter_ms=0.3):
    """A sender of 20 ms frames that sends them in a pattern on a 10 ms grid (gaps of 10, 20 and
    40 ms, as a real Teams client's audio arrives, with every RTP sequence number present): a
    10 ms grid, about half its slots empty, nothing lost."""
    rng = np.random.default_rng(seed)
    gaps = rng.choice([0.01, 0.02, 0.04], p=[0.5, 0.25, 0.25], size=int(seconds / 0.02))
    t = 0.5 + np.cumsum(gaps) + rng.exponential(jitter_ms / 1e3, len(gaps))
    return np.sort(t), rng.integers(80, 140, len(t)).astype(float)


@pytest.mark.parametrize("seed", range(5))
def test_a_grid_finer_than_the_sender_is_never_complete(seed):
    """Where the grid found is finer than the sender's clock, no window is whole, so the cadence
    is not complete and gives no loss signal on its own (Streams.cadence_sound); a voice train
    with real losses of 2-10 % keeps complete windows."""
    t, size = paired_sender(seed=seed)
    cad = find_cadence(t, size)
    if cad is not None:               # found at 10 ms: half its slots empty, nothing lost
        assert cad.fraction > 0.3 and not cad.complete
    for loss in (0.0, 0.02, 0.05, 0.1):
        t2, s2, _ = train(0.02, seed=seed, loss=loss, dtx=True)
        c2 = find_cadence(t2, s2)
        assert c2 is not None and c2.complete, (loss, c2 and c2.best_window_loss)


def test_a_policer_from_the_start_is_sound_only_through_the_other_way():
    """A steady train policed from the start to 70 % has no whole window; the same app's clock
    whole in the other direction (same period) makes it sound, another period does not."""
    from throttledetect.streams.cadence import Cadence
    t, size, _ = train(0.02, seed=3)
    keep = (np.arange(len(t)) % 10) < 7
    inbound = find_cadence(t[keep], size[keep])
    assert inbound is not None and not inbound.complete
    assert inbound.same_clock(find_cadence(*train(0.02, seed=4)[:2]))
    assert not inbound.same_clock(find_cadence(*train(0.06, seed=4)[:2]))
    assert not inbound.same_clock(None)
    assert isinstance(inbound, Cadence)


@pytest.mark.parametrize("seed", range(4))
def test_packets_between_the_frames_are_not_one_per_slot(seed):
    """Voice-sized packets sent between the frames (feedback, keepalives sharing the 5-tuple), 15 %
    as many as the frames: a lost frame's slot is filled by one of them, so 5 % of the frames
    dropped would read as little or no loss. The cadence says it holds more than one packet per
    slot, and is then not complete (no loss signal on its own)."""
    from throttledetect.streams.cadence import MAX_OVERFILL
    rng = np.random.default_rng(seed)
    t, size, _ = train(0.02, seed=seed, loss=0.05)
    extra = rng.uniform(t[0], t[-1], int(0.15 * len(t)))
    tt = np.r_[t, extra]
    ss = np.r_[size, rng.integers(80, 161, len(extra)).astype(float)]
    o = np.argsort(tt)
    cad = find_cadence(tt[o], ss[o])
    if cad is not None:
        assert cad.overfill > MAX_OVERFILL and not cad.one_per_slot and not cad.complete, cad.overfill


@pytest.mark.parametrize("kw", [dict(), dict(jitter_ms=2.0), dict(dtx=True), dict(video_fps=30.0),
                                dict(loss=0.1), dict(period_s=0.06, jitter_ms=5.0)])
def test_a_voice_train_holds_one_packet_per_slot(kw):
    """The rule above leaves real voice trains alone: jitter, DTX pauses, video beside them and
    losses put no more packets than slots in any window."""
    kw = dict(kw)
    period = kw.pop("period_s", 0.02)
    for seed in range(3):
        t, size, _ = train(period, seed=seed, **kw)
        cad = find_cadence(t, size)
        assert cad is not None and cad.one_per_slot, (seed, cad and cad.overfill)


@pytest.mark.parametrize("seed", range(4))
def test_an_overfull_train_is_not_sound_through_the_other_way(seed):
    """The other direction's complete train at the same period vouches for the grid, not for the
    count: a train with 5 % of its frames dropped and voice-sized packets between its frames (15 %
    as many) holds more packets than slots, so its empty slots undercount the losses and it is no
    loss signal (Cadence.sound), though the clean way back keeps the same clock. Without the
    extras the same train is sound."""
    rng = np.random.default_rng(seed)
    t, size, _ = train(0.02, seed=seed)
    keep = rng.random(len(t)) >= 0.05
    back = find_cadence(*train(0.02, seed=seed + 10)[:2])
    assert back is not None and back.complete
    plain = find_cadence(t[keep], size[keep])
    assert plain is not None and plain.one_per_slot and plain.sound(back)
    extra = rng.uniform(t[0], t[-1], int(0.15 * len(t)))
    tt = np.r_[t[keep], extra]
    ss = np.r_[size[keep], rng.integers(80, 161, len(extra)).astype(float)]
    o = np.argsort(tt)
    cad = find_cadence(tt[o], ss[o])
    if cad is not None:
        assert cad.same_clock(back) and not cad.one_per_slot and not cad.sound(back), cad.overfill


def _with_rtcp(t, size, share, seed):
    """Voice-sized packets (RTCP muxed into the flow) at random times, `share` as many as t."""
    rng = np.random.default_rng(seed + 100)
    extra = rng.uniform(t[0], t[-1], int(share * len(t)))
    tt = np.r_[t, extra]
    ss = np.r_[size, rng.integers(80, 141, len(extra)).astype(float)]
    o = np.argsort(tt, kind="stable")
    return tt[o], ss[o]


@pytest.mark.parametrize("seed", range(4))
def test_rtcp_in_the_flow_does_not_hide_losses(seed):
    """2 % of the voice frames dropped, with 2.4 % as many RTCP packets of the voice's size at
    random times (the looped WebRTC call's encrypted twin: dropped 2 %, read 0.0 % while each
    extra packet filled a loss's count): the cadence counts most of the losses."""
    t, size, truth = train(0.02, seed=seed, loss=0.02)
    t, size = _with_rtcp(t, size, 0.024, seed)
    cad = find_cadence(t, size)
    true = truth["lost"] / truth["sent"]
    assert cad is not None and cad.one_per_slot
    assert cad.fraction >= 0.6 * true, (cad.fraction, true)


@pytest.mark.parametrize("seed", range(3))
def test_stalls_lose_nothing(seed):
    """Wi-Fi stalls: every 2 s the link holds the voice for 60-200 ms and then delivers what it
    held back to back (nothing lost). The held frames pile into the slots after the empty run,
    next to it, so they still count: (nearly) no loss, with or without RTCP in the flow."""
    rng = np.random.default_rng(seed)
    t, size, truth = train(0.02, seed=seed)
    for start in np.arange(1.0, t[-1] - 1.0, 2.0):
        hold = rng.uniform(0.06, 0.2)
        m = (t >= start) & (t < start + hold)
        t[m] = start + hold + np.arange(m.sum()) * 20e-6
    o = np.argsort(t, kind="stable")
    t, size = t[o], size[o]
    for tt, ss in ((t, size), _with_rtcp(t, size, 0.024, seed)):
        cad = find_cadence(tt, ss)
        assert cad is not None and cad.fraction <= 0.005, cad.fraction
