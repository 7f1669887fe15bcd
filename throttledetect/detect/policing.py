"""Policing: does a token bucket that drops (rather than queues) explain a flow's losses?

A policer (RFC 2697/2698 style token bucket without a queue) forwards a packet when the bucket
holds at least its size in tokens and drops it otherwise; tokens arrive at the committed rate and
the bucket holds at most the burst size. Its signature, seen from the sender: losses happen
exactly when the sender has sent more than rate x time + burst, i.e. when a simulated bucket is
empty; packets pass when it is not; and the delay does not grow before losses (nothing queues).

Two detectors share that idea:

``detect_policing_tcp``
    The policing detector (PD) of Flach et al., "An Internet-Wide Analysis of Traffic Policing",
    SIGCOMM 2016 (public code: USC-NSL/policing-detection), reimplemented over the packet table,
    for server-side TCP traces. Losses are retransmitted sequence ranges (the first transmission
    of a range that was sent again is the lost packet; DSACK-reported spurious retransmissions are
    not losses). Per request/response segment of the connection: policing rate = goodput between
    the first and last loss; reject if the first loss comes after 2 MB or the implied initial
    bucket fill is negative; simulate a bucket that is empty at the first loss; require >= 15 lost
    and >= 15 passed packets, >= 3 RTT slices with loss, lower bucket fill at losses than at
    passes (mean and median), <= 10 % of losses far (2 median RTTs of tokens) from the median
    loss fill, <= 3 % of passes far below it (0.75 RTTs of tokens), and <= 20 % of losses after an
    inflated RTT (queueing: not a policer). The paper's constants are the defaults of
    ``TcpPolicingParams``. Added here: a p-value (below); a flow-level decision over the
    segments (policing in more than half of the testable ones); the rate also on link-layer
    bytes (what a policer meters; the paper's payload goodput is ``goodput_bps``); and a second
    scope, the flows that send the same way between the same two hosts analysed together, with
    the paper's segmentation extended to them (any member's new request starts a segment),
    because a policer on an access link meters them as one aggregate and each flow alone shows
    only its share of the tokens.

``fit_policer`` / ``detect_policing_flow`` (``detect_policing_rtp``: one stream only)
    The same idea for media, where the receiver-side view is all there is: lost packets are
    missing RTP sequence numbers (their size bounded by the largest nearby packet, their time
    placed from the neighbours: audio at the stream's usual spacing, a video frame's lost tail
    back to back with the frame, whole lost frames at their RTP timestamps), passed packets are
    the received ones. A policer meters packets, not RTP streams: every stream of the arriving
    direction (audio, video, retransmissions bundled on one 5-tuple) and its packets without
    RTP go into one bucket, and, when that does not show a policer, the call flows from the
    same remote host together (a host-level policer; the TCP detector's host-pair scope). A
    token bucket (rate, burst) that starts full (at a loss onset when the losses start at a
    change point) is fitted to explain the drops (grid search around the paper's goodput
    estimator), the paper's checks are applied to it with fills compared within streams, and
    the one-way delay (arrival minus RTP timestamp) must not be inflated before losses, which
    separates a policer from a shaper's tail drops. The rates that explain the drops about as
    well as the best are reported as a range: a bucket that refills to its depth between video
    frames passes the same packets at any rate above depth / frame interval, and then the data
    bound the rate from below only (rate_identifiable False, rate_note says so).

The p-value (both detectors)
    H0: losses are unrelated to the state of a token bucket (random loss, or loss caused by
    something else): whether a packet is lost does not depend on the bucket fill when it came.
    H1 (one-sided): lost packets see a lower fill. The fill at a packet is computed from the
    packets before it, so under H0 a packet's loss is independent of its fill. Test: the fill
    score test (``fill_score_test``): the losses' excess of low (standardised, winsorised)
    fills, whose sum is a martingale under H0 and asymptotically normal whatever the serial
    dependence of the fills; samples from the first loss on, as the paper's. (Mann-Whitney on
    the same fills ranks each among later fills too, which depend on the loss itself: a lost
    packet spends no tokens, TCP slows down after it; its p-value is reported as
    ``pvalue_mannwhitney``, for reference only.) Not exact: the TCP rate and the anchor come
    from the first and last loss, and the RTP (rate, burst) are fitted (hence Bonferroni over
    the grid). On synthetic paced streams with independent loss the uncorrected p-value is
    below 0.05 in 2-6 % of runs. On the two lab TCP traces with 2 % random loss behind a
    10 Mbit/s shaper it is 3e-4 and 0.01 (per segment z up to 2): H0 fails there too, whether
    from the shaper's own drops or from TCP dynamics is not established, so on TCP the
    p-value alone does not make a policer; the paper's checks reject both. A queue's tail
    drops (shaping, congestion) also fall on low fills: a small p-value says "a token bucket
    state explains the losses better than chance", and only with the checks (no delay
    inflation before losses) does it say "policer".
    Effect: the rank-biserial correlation r = 2 * CL - 1 of fills at losses vs passes, CL
    being the common-language effect size P(fill at a loss < fill at a pass) (ties count one
    half); r = 1 when every loss saw a lower fill than every pass. The caller controls false
    discoveries across flows (Benjamini-Hochberg, qvalue).
"""
from __future__ import annotations

import numpy as np

from throttledetect.detect.common import dir_name
from throttledetect.detect.policing_media import (MEDIA_PARAMS, MediaPolicingParams, PolicerFit, detect_policing_flow,
                                                  detect_policing_rtp, fit_policer, fit_token_bucket,
                                                  policing_from_rtp, rtp_loss_arrays, stream_units)
from throttledetect.detect.policing_stats import KIND, RankTest, ScoreTest, fill_score_test, rank_test
from throttledetect.detect.policing_tcp import (PAPER_PARAMS, TcpPolicingParams, detect_policing_tcp, pd_segment,
                                                tcp_direction_trace)
from throttledetect.detect.result import Detection


def detect(ctx, i: int) -> list[Detection]:
    """The registry's entry (detect/__init__.py): RTP through detect_policing_flow in the direction
    arriving here (every stream of it against one bucket, then the host pair); TCP through the
    SIGCOMM'16 detector on the direction that carries the data (at a server the losses show as
    retransmissions of what it sends, at a client as holes)."""
    out = []
    for d in ctx.inbound(i):
        if ctx.rtp(i, d):
            out.append(detect_policing_flow(ctx, i, d))
        elif int(ctx.ft.proto[i]) == 6:
            data = [int(ctx.packets(i, k).payload.sum()) for k in (0, 1)]
            k = int(np.argmax(data))
            if data[k] == 0:
                out.append(Detection.inconclusive(KIND, dir_name(d), "no TCP data in either direction"))
            else:
                out.append(detect_policing_tcp(ctx.cap, ctx.ft, i, dir_name(k), alpha=ctx.alpha))
        else:
            out.append(Detection.inconclusive(KIND, dir_name(d), "no loss signal: no RTP sequence numbers "
                                              "(encrypted UDP): a policer's drops cannot be located"))
    return out


# One import for users of either detector (the modules: policing_tcp, policing_media, policing_stats).
__all__ = ["KIND", "detect", "detect_policing_flow", "detect_policing_rtp", "detect_policing_tcp", "fit_policer",
           "fit_token_bucket", "policing_from_rtp", "rtp_loss_arrays", "stream_units", "pd_segment",
           "tcp_direction_trace", "MEDIA_PARAMS", "MediaPolicingParams", "PolicerFit", "PAPER_PARAMS",
           "TcpPolicingParams", "RankTest", "ScoreTest", "fill_score_test", "rank_test"]
