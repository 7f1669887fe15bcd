"""What the far end says it received of this host's media: RTCP receiver reports (RFC 3550 6.4.1).

A report block about a stream this host sends carries the extended highest sequence number the far
end received and the cumulative number lost. Between two blocks about the same stream, the
difference of the first is the packets expected in the interval and of the second the packets
lost (A.3), so a run of blocks is a loss signal for the uplink, which the capture alone cannot
see (every packet it holds was sent; the throttle may be past the capture point). The signal is
counts per interval, not which packets: a bucket cannot be fitted to it.

Only plain RTCP can be read: SRTCP encrypts the report blocks (WebRTC, WhatsApp and most apps), so
their blocks parse as junk SSRCs and are dropped by matching the SSRCs this host really sends.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_INTERVAL_PACKETS = 1 << 15   # a larger jump between two blocks is a restart (or a looped trace's seam), not an interval


def rtcp_report_blocks(cap, rows: np.ndarray, *, positions: bool = True) -> dict:
    """Report blocks (RFC 3550 6.4.1) of plain RTCP SR/RR in the given UDP rows, as arrays:
    row, ssrc, fraction, cumulative, highest (extended highest sequence number received), and
    with ``positions`` where a rewrite finds them: at (absolute position of the block's
    fraction-lost byte), udp_rel, v4 (the analysis reads none of these, and lets the columns they
    come from go: pipeline.UNREAD_AFTER_FLOWS). Compound packets walked, RFC 5761 demultiplexing
    by packet type 200-201. Encrypted SRTCP report blocks read as junk SSRCs: callers keep the
    blocks whose SSRC is a stream they know."""
    from throttledetect.wire.rtp import parse_rtcp
    t = cap.packets
    keys = ("row", "ssrc", "fraction", "cumulative", "highest") + (("at", "udp_rel", "v4") if positions else ())
    out = {k: [] for k in keys}
    rows = np.asarray(rows, dtype=np.int64)
    # a cheap prefilter on the first payload bytes (version 2, SR/RR type) keeps the parse to RTCP
    pre = t.prefix[rows]
    ok = ((pre[:, 0] >> 6) == 2) & ((pre[:, 1] == 200) | (pre[:, 1] == 201)) & (t.payload_off[rows] >= 0)
    for r in rows[ok].tolist():          # only RTCP datagrams: a few per second
        data = cap.payload(r)
        packets = parse_rtcp(data)
        if not packets:
            continue
        pos = 0
        for p in packets:
            first = 8 + (20 if p.packet_type == 200 else 0)   # header + SSRC (+ sender info)
            for k, b in enumerate(p.reports):
                out["row"].append(r)
                out["ssrc"].append(b.ssrc)
                out["fraction"].append(b.fraction_lost)
                out["cumulative"].append(b.cumulative_lost)
                out["highest"].append(b.highest_seq)
                if positions:
                    out["at"].append(int(t.payload_off[r]) + pos + first + 24 * k + 4)
                    out["udp_rel"].append(int(t.l4_off[r]) - int(t.frame_off[r]))
                    out["v4"].append(bool(t.l3[r] == 4))
            pos += p.length
    return {k: np.asarray(v, dtype=np.int64 if k != "v4" else bool) for k, v in out.items()}


@dataclass(eq=False)
class UplinkReports:
    """Intervals between consecutive report blocks about this host's streams, in time order."""

    t0: np.ndarray          # float: arrival of the block that opens the interval
    t1: np.ndarray          # float: arrival of the block that closes it
    expected: np.ndarray    # int: packets the far end expected in the interval
    lost: np.ndarray        # int: packets it counted lost in it (clipped to [0, expected])
    ssrc: np.ndarray        # int: the stream reported on
    blocks: int             # report blocks read

    @property
    def n(self) -> int:
        return len(self.t1)

    @property
    def fraction(self) -> float:
        e = int(self.expected.sum())
        return float(self.lost.sum()) / e if e else 0.0


def uplink_reports(cap, rows: np.ndarray, t: np.ndarray, ssrcs) -> UplinkReports | None:
    """The report blocks about the given SSRCs in the RTCP datagrams among ``rows`` (arriving at
    this host, arrival times ``t``), as intervals; None when fewer than two blocks about one stream."""
    rows = np.asarray(rows, dtype=np.int64)
    if not len(rows) or not len(ssrcs):
        return None
    b = rtcp_report_blocks(cap, rows, positions=False)
    keep = np.isin(b["ssrc"], np.asarray(list(ssrcs), dtype=np.int64))
    if np.count_nonzero(keep) < 2:
        return None
    at = t[np.searchsorted(rows, b["row"][keep])]
    ssrc, high, cum = b["ssrc"][keep], b["highest"][keep], b["cumulative"][keep]
    parts = []
    for s in np.unique(ssrc).tolist():                      # one run of blocks per stream: a few
        m = np.flatnonzero(ssrc == s)
        m = m[np.argsort(at[m], kind="stable")]
        e = (high[m][1:] - high[m][:-1]) % (1 << 32)
        lo = cum[m][1:] - cum[m][:-1]
        ok = (e > 0) & (e < MAX_INTERVAL_PACKETS)
        if not ok.any():
            continue
        parts.append((at[m][:-1][ok], at[m][1:][ok], e[ok], np.clip(lo[ok], 0, e[ok]), np.full(int(ok.sum()), s)))
    if not parts:
        return None
    t0, t1, e, lo, ss = (np.concatenate(x) for x in zip(*parts))
    o = np.argsort(t1, kind="stable")
    return UplinkReports(t0=t0[o], t1=t1[o], expected=e[o].astype(np.int64), lost=lo[o].astype(np.int64),
                         ssrc=ss[o].astype(np.int64), blocks=int(np.count_nonzero(keep)))
