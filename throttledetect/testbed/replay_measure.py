"""What a kernel replay did, measured: every sent packet matched with its captured copy.

A packet is recognised on both sides by a 64-bit FNV-1a hash of its IP packet with the fields a
router changes left out (IPv4 TTL and header checksum, IPv6 hop limit). The same bytes can be
sent more than once (a loop repeats non-RTP packets byte for byte, STUN retransmits); within one
hash, captured copies are matched first-in first-out to the sent copies, skipping sent ones older
than the longest delay the throttle can add (they were dropped). The result per flow and
direction: packets sent and received, drop fraction, one-way delay (the part the router and the
throttle added), offered and received rate before and after the onset; the timing precision of
the replay; and for token buckets the largest burst the throttled direction carried in any window
(bytes above rate x window length), to compare with the configured burst.
"""
from __future__ import annotations

import numpy as np

from throttledetect.jit import njit

FNV_OFFSET = 0xCBF29CE484222325
FNV_PRIME = 0x100000001B3


@njit
def _keys(buf, ip_start, length, out):
    for i in range(len(ip_start)):
        p = ip_start[i]
        n = length[i]
        v6 = n > 0 and (buf[p] >> 4) == 6
        h = np.uint64(FNV_OFFSET) ^ np.uint64(n)
        for k in range(n):
            if v6:
                if k == 7:
                    continue
            elif k == 8 or k == 10 or k == 11:
                continue
            h = (h ^ np.uint64(buf[p + k])) * np.uint64(FNV_PRIME)
        out[i] = h


def packet_keys(buf: np.ndarray, ip_start: np.ndarray, length: np.ndarray) -> np.ndarray:
    """Hash of each IP packet buf[ip_start:ip_start+length], router-changed fields left out."""
    out = np.empty(len(ip_start), dtype=np.uint64)
    with np.errstate(over="ignore"):   # the FNV multiply wraps by design
        _keys(buf, np.asarray(ip_start, dtype=np.int64), np.asarray(length, dtype=np.int64), out)
    return out


@njit
def _match(sk, st, so, ck, ct, co, max_delay, tol, match_of_captured):
    """sk/st: sent keys and times sorted by (key, time), so their original indices; the same for
    captured. FIFO within a key; sent copies older than max_delay before a capture are skipped."""
    i = 0
    j = 0
    ns = len(sk)
    nc = len(ck)
    while j < nc:
        key = ck[j]
        while i < ns and sk[i] < key:
            i += 1
        g = i
        while j < nc and ck[j] == key:
            while g < ns and sk[g] == key and st[g] < ct[j] - max_delay:
                g += 1
            if g < ns and sk[g] == key and st[g] <= ct[j] + tol:
                match_of_captured[co[j]] = so[g]
                g += 1
            j += 1
        while i < ns and sk[i] == key:
            i += 1


def match(sent_keys, sent_t, cap_keys, cap_t, max_delay_s: float, tol_s: float = 0.002) -> np.ndarray:
    """Index of the sent packet each captured packet is a copy of (-1: none). Sent times that are
    NaN (the send failed) never match."""
    sent_ok = np.flatnonzero(~np.isnan(sent_t))
    so = sent_ok[np.lexsort((sent_t[sent_ok], sent_keys[sent_ok]))]
    co = np.lexsort((cap_t, cap_keys))
    out = np.full(len(cap_keys), -1, dtype=np.int64)
    _match(sent_keys[so], sent_t[so], so.astype(np.int64), cap_keys[co], cap_t[co], co.astype(np.int64),
           float(max_delay_s), float(tol_s), out)
    return out


def received_time(n_sent: int, match_of_captured: np.ndarray, cap_t: np.ndarray) -> np.ndarray:
    """Per sent packet: when its copy was captured (NaN: never)."""
    out = np.full(n_sent, np.nan)
    m = match_of_captured >= 0
    out[match_of_captured[m]] = cap_t[m]
    return out


def max_window_excess(t: np.ndarray, size: np.ndarray, rate_bps: float) -> float:
    """max over windows [t_i, t_j] of (bytes of packets i..j) - rate x (t_j - t_i), in bytes: what a
    token bucket of that rate must have held to let this through (its burst, plus one packet)."""
    if len(t) == 0:
        return 0.0
    r = rate_bps / 8
    c = np.cumsum(size.astype(np.float64))
    before = c - size                       # bytes before packet i
    lo = np.minimum.accumulate(before - r * t)
    return float(np.max((c - r * t) - lo))


def _q(x: np.ndarray, q: float):
    return round(float(np.quantile(x, q)), 3) if len(x) else None


def _rate(sizes: np.ndarray, span_s: float):
    return int(round(float(sizes.sum()) * 8 / span_s)) if span_s > 0 else None


def direction_effect(sent_t, recv_t, size, t_start, onset, t_end) -> dict:
    """Effect on one flow in one direction. sent_t / recv_t: epoch seconds per packet (recv NaN:
    lost); the rates are over [t_start, onset) and [onset, t_end] of the schedule."""
    ok = ~np.isnan(sent_t)
    sent_t, recv_t, size = sent_t[ok], recv_t[ok], size[ok]
    got = ~np.isnan(recv_t)
    after = sent_t >= onset
    d_ms = (recv_t - sent_t) * 1000
    out = {"sent": int(len(sent_t)), "received": int(got.sum()), "lost": int((~got).sum()),
           "drop_fraction": round(float((~got).mean()), 5) if len(sent_t) else None,
           "drop_fraction_after_onset": round(float((~got[after]).mean()), 5) if after.any() else None,
           "delay_ms_p50": _q(d_ms[got], 0.5), "delay_ms_p90": _q(d_ms[got], 0.9),
           "delay_ms_max": _q(d_ms[got], 1.0),
           "delay_ms_before_onset_p50": _q(d_ms[got & ~after], 0.5),
           "delay_ms_after_onset_p50": _q(d_ms[got & after], 0.5),
           "delay_ms_after_onset_p90": _q(d_ms[got & after], 0.9)}
    b, a = out["delay_ms_before_onset_p50"], out["delay_ms_after_onset_p50"]
    # the router's own transit is the floor: the median before the onset, or the least delay seen
    floor = b if b is not None else (_q(d_ms[got], 0.0) if got.any() else None)
    out["delay_added_ms_p50"] = round(a - floor, 3) if a is not None and floor is not None else None
    pre, post = max(onset - t_start, 0.0), max(t_end - onset, 0.0)
    out.update({"offered_bps_before_onset": _rate(size[~after], pre),
                "offered_bps_after_onset": _rate(size[after], post),
                "received_bps_before_onset": _rate(size[got & ~after], pre),
                "received_bps_after_onset": _rate(size[got & after], post)})
    return out


def timing_precision(intended: np.ndarray, captured: np.ndarray) -> dict:
    """Intended vs captured times of the same packets (time order): how far each packet is from
    its time (after the constant offset, the median, is removed) and how far each inter-packet
    time is from the recorded one. Microseconds."""
    if len(intended) < 2:
        return {"packets": int(len(intended))}
    o = np.argsort(intended, kind="stable")
    i, c = intended[o], captured[o]
    late = (c - i) * 1e6
    ipt_err = np.abs(np.diff(c) - np.diff(i)) * 1e6
    off = late - np.median(late)
    return {"packets": int(len(i)), "offset_us_p50": round(float(np.median(late)), 1),
            "abs_error_us_p50": round(float(np.median(np.abs(off))), 1),
            "abs_error_us_p99": round(float(np.quantile(np.abs(off), 0.99)), 1),
            "inter_packet_error_us_p50": round(float(np.median(ipt_err)), 1),
            "inter_packet_error_us_p99": round(float(np.quantile(ipt_err, 0.99)), 1),
            "inter_packet_error_us_max": round(float(ipt_err.max()), 1)}


__all__ = ["packet_keys", "match", "received_time", "max_window_excess", "direction_effect", "timing_precision"]
