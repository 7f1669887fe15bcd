"""Packet surgery shared by the simulator and the validation harness.

Everything here edits the bytes of captured frames in place in a copy of a capture's buffer
(``cap.buffer``, or the records produced by ``write.pcap_records``) and keeps every checksum it
touches valid:

- header fields of RTP (sequence number, timestamp, SSRC, marker), RTCP report blocks (fraction
  and cumulative lost), TCP (sequence and acknowledgement numbers), with the UDP or TCP checksum
  updated incrementally (RFC 1624 eq. 3). A zero UDP checksum over IPv4 means "none" and stays
  zero; a computed zero UDP checksum is sent as all ones (RFC 768);
- IPv4 addresses and UDP ports (``rewrite_endpoint``), the IPv4 header checksum and the UDP
  checksum (its pseudo-header holds the addresses) updated incrementally;
- UDP payloads cut shorter (``shrink_udp``): IP and UDP lengths rewritten, the UDP checksum
  recomputed in full (a compiled loop; nothing incremental survives removed bytes);
- ``loop_capture``: a capture (or a window of it) repeated to a given duration, every RTP stream's
  sequence numbers and timestamps and every TCP connection's sequence space continuous across the
  joins; flows without readable RTP (encrypted media) are repeated by time only, payload untouched;
- ``build_capture``: chosen rows of a capture, re-timed (and optionally shortened), written to a
  temporary classic pcap and read back (memory-mapped; the file is unlinked at once), so every
  later stage sees an ordinary Capture.

Offsets: ``PacketTable.l4_off`` and ``payload_off`` are absolute buffer offsets; the functions
here take *frame-relative* offsets (``absolute - frame_off``) so that the same offsets apply to a
frame wherever its bytes are (the source buffer or an assembled pcap record).

All of it is numpy over whole arrays of rows (one call per field, not per packet) except the
full UDP checksum, which is a compiled loop (throttledetect.jit.njit).
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass

import numpy as np

from throttledetect.jit import njit
from throttledetect.read import Capture, read_capture
from throttledetect.write import pcap_header, pcap_records

U16 = 1 << 16
U32 = 1 << 32


# --------------------------------------------------------------------------- byte helpers

def be(buf: np.ndarray, pos, nbytes: int) -> np.ndarray:
    """Big-endian unsigned integers of `nbytes` at absolute positions `pos` (int64)."""
    pos = np.asarray(pos, dtype=np.int64)
    out = np.zeros(len(pos), dtype=np.int64)
    for j in range(nbytes):
        out = (out << 8) | buf[pos + j]
    return out


def put_be(buf: np.ndarray, pos, values, nbytes: int) -> None:
    """Write big-endian integers of `nbytes` at absolute positions `pos`."""
    pos = np.asarray(pos, dtype=np.int64)
    v = np.asarray(values, dtype=np.int64)
    for j in range(nbytes - 1, -1, -1):
        buf[pos + j] = (v & 0xFF).astype(np.uint8)
        v = v >> 8


def words(buf: np.ndarray, start, count: int) -> np.ndarray:
    """Sum of `count` big-endian 16-bit words from each absolute start (int64, not folded).

    Positions past the end of the buffer read its last byte: callers use this on both sides of
    an incremental update, where words that did not change cancel whatever they hold."""
    start = np.asarray(start, dtype=np.int64)
    last = len(buf) - 1
    s = np.zeros(len(start), dtype=np.int64)
    for j in range(count):
        hi = np.minimum(start + 2 * j, last)
        lo = np.minimum(start + 2 * j + 1, last)
        s += (buf[hi].astype(np.int64) << 8) | buf[lo]
    return s


def fold(s: np.ndarray) -> np.ndarray:
    """Ones'-complement fold of a sum of 16-bit words to 16 bits."""
    s = np.asarray(s, dtype=np.int64)
    for _ in range(4):
        s = (s & 0xFFFF) + (s >> 16)
    return s


def csum_update(old_csum, m_old, m_new) -> np.ndarray:
    """RFC 1624 eq. 3: HC' = ~(~HC + ~m + m'), m and m' the ones'-complement sums of the changed
    words before and after (negating a sum is summing the negations)."""
    return ~fold((~np.asarray(old_csum) & 0xFFFF) + (~fold(m_old) & 0xFFFF) + fold(m_new)) & 0xFFFF


def patch_field(buf: np.ndarray, frame, field_rel, values, nbytes: int, *, l4_rel, csum_rel, udp: bool,
                v4=None) -> None:
    """Write `values` (nbytes, big-endian) at frame + field_rel and update the transport checksum
    at frame + csum_rel incrementally.

    Word alignment is taken relative to the transport header (l4_rel), as the checksum sums it;
    nbytes // 2 + 1 words cover the field at either parity (unchanged words cancel). For UDP over
    IPv4 (v4 True) a zero checksum (none) stays zero; a computed zero is written as all ones."""
    frame = np.asarray(frame, dtype=np.int64)
    if not len(frame):
        return
    field_rel = np.asarray(field_rel, dtype=np.int64)
    l4_rel = np.asarray(l4_rel, dtype=np.int64)
    start = frame + l4_rel + ((field_rel - l4_rel) & ~np.int64(1))
    k = nbytes // 2 + 1
    m_old = words(buf, start, k)
    put_be(buf, frame + field_rel, values, nbytes)
    if csum_rel is None:
        return
    m_new = words(buf, start, k)
    at = frame + np.asarray(csum_rel, dtype=np.int64)
    old = be(buf, at, 2)
    c = csum_update(old, m_old, m_new)
    if udp:
        c = np.where(c == 0, 0xFFFF, c)
        upd = np.ones(len(frame), dtype=bool) if v4 is None else ~(np.asarray(v4, dtype=bool) & (old == 0))
        put_be(buf, at[upd], c[upd], 2)
    else:
        put_be(buf, at, c, 2)


# --------------------------------------------------------------------------- RTP and RTCP

class RtpIndex:
    """The RTP packets over UDP of a capture (any framing the classification found: plain, TURN
    ChannelData, MS-TURN, Zoom) grouped into streams (flow, direction, SSRC, payload type),
    time-ordered. The payload type is part of the key because some apps run two sequence counters
    under one SSRC (Zoom's video and its FEC/RTX packets, PT 98 and 110): unwrapped together they
    would look like jumps of thousands. A stream that merely changes PT keeps one counter, and
    each part then spans about the same numbers, so per-PT spans stay right for it too.

    Arrays are aligned: row (packet row), frame (absolute frame start), hdr and udp (frame-relative
    offsets of the RTP and UDP headers), v4, flow, dir, ssrc, seq, ts, pt, stream (stream id),
    xseq / xts (sequence numbers and timestamps unwrapped within the stream)."""

    def __init__(self, cap: Capture, ft, cl):
        from throttledetect.classify.evidence import ENCAP_TCP
        t = cap.packets
        ev = cl.evidence
        encap = np.asarray(ev.rtp_encap_of)
        fo = t.frame_off.astype(np.int64)
        rows = np.flatnonzero((encap >= 0) & (encap != ENCAP_TCP) & (t.proto == 17) & (ft.flow_of >= 0)
                              & (t.payload_off >= 0) & (t.l4_off >= 0))
        hdr = (t.payload_off[rows].astype(np.int64) - fo[rows]) + np.asarray(ev.rtp_offset_of)[rows].astype(np.int64)
        fits = hdr + 12 <= t.caplen[rows]
        rows, hdr = rows[fits], hdr[fits]
        frame = fo[rows]
        buf = cap.buffer
        ssrc = be(buf, frame + hdr + 8, 4)
        fl = ft.flow_of[rows].astype(np.int64)
        dr = ft.dir_of[rows].astype(np.int64)
        pt = (buf[frame + hdr + 1] & 0x7F).astype(np.int64)
        order = np.lexsort((rows, t.ts_ns[rows], pt, ssrc, dr, fl))
        self.row = rows[order]
        self.frame = frame[order]
        self.hdr = hdr[order]
        self.udp = t.l4_off[self.row].astype(np.int64) - self.frame
        self.v4 = t.l3[self.row] == 4
        self.flow, self.dir, self.ssrc = fl[order], dr[order], ssrc[order]
        self.seq = be(buf, self.frame + self.hdr + 2, 2)
        self.ts = be(buf, self.frame + self.hdr + 4, 4)
        self.pt = pt[order]
        first = np.ones(len(self.row), dtype=bool)
        first[1:] = (self.flow[1:] != self.flow[:-1]) | (self.dir[1:] != self.dir[:-1]) \
            | (self.ssrc[1:] != self.ssrc[:-1]) | (self.pt[1:] != self.pt[:-1])
        self.first = first
        self.stream = np.cumsum(first) - 1
        self.starts = np.flatnonzero(first)
        self.ends = np.append(self.starts[1:], len(self.row))
        self.xseq = unwrap_groups(self.seq, first, U16)
        self.xts = unwrap_groups(self.ts, first, U32)

    def __len__(self) -> int:
        return len(self.row)

    def at(self, rows: np.ndarray) -> np.ndarray:
        """Positions in this index of the given packet rows (-1 where a row is not RTP)."""
        pos = np.full(int(rows.max()) + 1 if len(rows) else 0, -1, dtype=np.int64)
        ok = self.row < len(pos)
        pos[self.row[ok]] = np.flatnonzero(ok)
        return pos[rows]


def _one_counter(seq: np.ndarray) -> bool:
    """Do these sequence numbers (several payload types of one SSRC, in time order) come from one
    counter? Then they barely repeat and cover about as many numbers as there are packets."""
    x = unwrap_groups(seq, np.r_[True, np.zeros(len(seq) - 1, dtype=bool)], U16)
    n = len(x)
    return n > 0 and n - len(np.unique(x)) <= 0.01 * n and int(x.max() - x.min()) + 1 <= 1.5 * n


def counter_groups(ix: RtpIndex) -> np.ndarray:
    """Per position of ix, the sequence counter it draws from: its stream (flow, direction, SSRC,
    payload type), or one shared by its SSRC's payload types when they number from one counter."""
    gid = ix.stream.copy()
    if not len(ix.starts):
        return gid
    key = np.stack([ix.flow[ix.starts], ix.dir[ix.starts], ix.ssrc[ix.starts]], axis=1)
    _, grp = np.unique(key, axis=0, return_inverse=True)
    grp = grp.ravel()
    if len(np.unique(grp)) == len(grp):
        return gid
    for gr in np.unique(grp):
        members = np.flatnonzero(grp == gr)
        if len(members) < 2:
            continue
        p = np.concatenate([np.arange(ix.starts[m], ix.ends[m]) for m in members])
        p = p[np.argsort(ix.row[p], kind="stable")]
        if _one_counter(ix.seq[p]):
            gid[p] = members[0]
    return gid


def _counter_spans(ix: RtpIndex, pos: np.ndarray, starts: np.ndarray, spans: np.ndarray) -> np.ndarray:
    """Per stream (payload type) of ix at positions pos (grouped, stream starts at `starts`), the
    span of the sequence counter it draws from: its own span when its SSRC has one payload type
    or runs a counter per type (Zoom's video and FEC), else the SSRC's span in time order. A
    G.711 call's comfort-noise packets (PT 13) share the voice's counter but occur only in
    silences: shifted by their own span, copy k's CN numbers would land on copy k's voice."""
    out = spans.copy()
    sid = np.arange(len(starts))
    key = np.stack([ix.flow[pos[starts]], ix.dir[pos[starts]], ix.ssrc[pos[starts]]], axis=1)
    _, grp = np.unique(key, axis=0, return_inverse=True)
    grp = grp.ravel()
    if len(np.unique(grp)) == len(grp):
        return out
    ends = np.append(starts[1:], len(pos))
    for g in np.unique(grp):                       # SSRCs with several payload types (a few)
        members = sid[grp == g]
        if len(members) < 2:
            continue
        p = np.concatenate([pos[starts[m]:ends[m]] for m in members])
        p = p[np.argsort(ix.row[p], kind="stable")]
        if _one_counter(ix.seq[p]):
            x = unwrap_groups(ix.seq[p], np.r_[True, np.zeros(len(p) - 1, dtype=bool)], U16)
            out[members] = int(x.max() - x.min())   # one counter shared by the types
    return out


def unwrap_groups(values: np.ndarray, first: np.ndarray, modulus: int) -> np.ndarray:
    """Unwrap counters per group: values sorted by (group, time), first = True at group starts."""
    v = np.asarray(values, dtype=np.int64)
    if not len(v):
        return v.copy()
    half = modulus // 2
    step = np.zeros(len(v), dtype=np.int64)
    step[1:] = (np.diff(v) + half) % modulus - half
    step[first] = 0
    gid = np.cumsum(first) - 1
    cs = np.cumsum(step)
    starts = np.flatnonzero(first)
    return v[starts][gid] + cs - cs[starts][gid]


def set_rtp(buf: np.ndarray, ix: RtpIndex, pos: np.ndarray, *, seq=None, ts=None, ssrc=None, marker=None,
            frame=None) -> None:
    """Rewrite RTP header fields of the index positions `pos` (UDP checksums kept valid).

    seq / ts / ssrc: new values (taken mod 2^16 / 2^32); marker: bool array, True sets the bit.
    frame: absolute frame starts to edit (default the index's own, i.e. in cap.buffer)."""
    pos = np.asarray(pos, dtype=np.int64)
    if not len(pos):
        return
    fr = ix.frame[pos] if frame is None else np.asarray(frame, dtype=np.int64)
    hdr, udp, v4 = ix.hdr[pos], ix.udp[pos], ix.v4[pos]
    kw = dict(l4_rel=udp, csum_rel=udp + 6, udp=True, v4=v4)
    if marker is not None:
        m = np.asarray(marker, dtype=bool)
        b1 = buf[fr + hdr + 1].astype(np.int64)
        patch_field(buf, fr[m], hdr[m] + 1, b1[m] | 0x80, 1, l4_rel=udp[m], csum_rel=udp[m] + 6, udp=True, v4=v4[m])
    if seq is not None:
        patch_field(buf, fr, hdr + 2, np.asarray(seq, dtype=np.int64) % U16, 2, **kw)
    if ts is not None:
        patch_field(buf, fr, hdr + 4, np.asarray(ts, dtype=np.int64) % U32, 4, **kw)
    if ssrc is not None:
        patch_field(buf, fr, hdr + 8, np.asarray(ssrc, dtype=np.int64) % U32, 4, **kw)


def renumber_after_removal(buf: np.ndarray, ix: RtpIndex, removed: np.ndarray, *, mark_resume: bool = False
                           ) -> int:
    """A sender that never sent some packets (DTX, hold, lower bitrate) leaves no sequence gap:
    lower the sequence number of every later packet of the stream by the number removed before
    it. removed: bool per index position. mark_resume sets the marker bit on the first packet
    after a removed run (the start of a talk spurt, RFC 3551 4.1). Returns packets rewritten."""
    removed = np.asarray(removed, dtype=bool)
    if not removed.any():
        return 0
    # removed earlier on the same sequence counter, in time order (payload types sharing one
    # counter, as G.711 and its comfort noise do, shift together)
    gid = counter_groups(ix)
    order = np.lexsort((ix.row, gid))
    r = removed[order]
    g = gid[order]
    gfirst = np.r_[True, g[1:] != g[:-1]] if len(g) else np.zeros(0, dtype=bool)
    cs = np.cumsum(r)
    base = (cs - r)[np.flatnonzero(gfirst)][np.cumsum(gfirst) - 1]
    shift = np.empty(len(r), dtype=np.int64)
    shift[order] = cs - r - base
    kept = ~removed
    resume = np.zeros(len(removed), dtype=bool)
    resume[1:] = removed[:-1] & ~ix.first[1:]
    resume &= kept
    mod = kept & ((shift > 0) | (resume & mark_resume))
    pos = np.flatnonzero(mod)
    set_rtp(buf, ix, pos, seq=ix.seq[pos] - shift[pos], marker=(resume[pos] if mark_resume else None))
    return int(len(pos))


def set_report_loss(buf: np.ndarray, cap: Capture, blocks: dict, sel: np.ndarray, fraction, cumulative) -> None:
    """Rewrite the fraction lost (8 bits) and cumulative lost (24-bit two's complement) of the
    selected report blocks, UDP checksums kept valid."""
    sel = np.asarray(sel, dtype=np.int64)
    if not len(sel):
        return
    rows = blocks["row"][sel]
    frame = cap.packets.frame_off[rows].astype(np.int64)
    field = blocks["at"][sel] - frame
    value = (np.clip(np.asarray(fraction, dtype=np.int64), 0, 255) << 24) | (np.asarray(cumulative, np.int64) & 0xFFFFFF)
    udp = blocks["udp_rel"][sel]
    patch_field(buf, frame, field, value, 4, l4_rel=udp, csum_rel=udp + 6, udp=True, v4=blocks["v4"][sel])


# --------------------------------------------------------------------------- addresses and lengths

def ip_offsets(cap: Capture, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Frame-relative offset of the IP header before the transport header of each row, and
    whether it is IPv4 (-1 when no IPv4 header without options... with options, nor a plain
    IPv6 header directly before the transport header, is found)."""
    t = cap.packets
    buf = cap.buffer
    rows = np.asarray(rows, dtype=np.int64)
    l4 = t.l4_off[rows].astype(np.int64)
    fo = t.frame_off[rows].astype(np.int64)
    proto = t.proto[rows].astype(np.int64)
    out = np.full(len(rows), -1, dtype=np.int64)
    v4 = t.l3[rows] == 4
    for ihl in range(5, 16):
        at = l4 - 4 * ihl
        ok = v4 & (out < 0) & (at >= fo)
        ok[ok] = (buf[at[ok]] == (0x40 | ihl)) & (buf[at[ok] + 9] == proto[ok])
        out[ok] = at[ok] - fo[ok]
    at = l4 - 40
    ok = ~v4 & (at >= fo)
    ok[ok] = ((buf[at[ok]] >> 4) == 6) & (buf[at[ok] + 6] == proto[ok])
    out[ok] = at[ok] - fo[ok]
    return out, v4


def rewrite_endpoint(buf: np.ndarray, cap: Capture, rows: np.ndarray, side: str, address: str | None = None,
                     port: int | None = None) -> int:
    """Give the source (side "src") or destination ("dst") endpoint of UDP/TCP rows a new IPv4
    address and/or port. The IPv4 header checksum and the transport checksum (whose
    pseudo-header holds the address) are updated incrementally. Rows that are not IPv4 (or whose
    header is not found) are left alone; returns the number rewritten."""
    import ipaddress
    t = cap.packets
    rows = np.asarray(rows, dtype=np.int64)
    rows = rows[(t.l4_off[rows] >= 0) & np.isin(t.proto[rows], (6, 17))]
    ip, v4 = ip_offsets(cap, rows)
    keep = (ip >= 0) & v4
    rows, ip = rows[keep], ip[keep]
    if not len(rows):
        return 0
    frame = t.frame_off[rows].astype(np.int64)
    l4 = t.l4_off[rows].astype(np.int64) - frame
    udp = t.proto[rows] == 17
    csum = np.where(udp, l4 + 6, l4 + 16)
    old_l4 = be(buf, frame + csum, 2)
    has_l4 = ~(udp & (old_l4 == 0))                    # UDP over IPv4 without a checksum
    m_old = np.zeros(len(rows), dtype=np.int64)
    m_new = np.zeros(len(rows), dtype=np.int64)
    if address is not None:
        a = int(ipaddress.IPv4Address(address))
        at = frame + ip + (12 if side == "src" else 16)
        m_addr_old = words(buf, at, 2)
        put_be(buf, at, np.full(len(rows), a), 4)
        m_addr_new = words(buf, at, 2)
        hc = frame + ip + 10
        put_be(buf, hc, csum_update(be(buf, hc, 2), m_addr_old, m_addr_new), 2)
        m_old += m_addr_old
        m_new += m_addr_new
    if port is not None:
        at = frame + l4 + (0 if side == "src" else 2)
        m_old += be(buf, at, 2)
        put_be(buf, at, np.full(len(rows), int(port)), 2)
        m_new += be(buf, at, 2)
    c = csum_update(old_l4, m_old, m_new)
    c = np.where(udp & (c == 0), 0xFFFF, c)
    put_be(buf, (frame + csum)[has_l4], c[has_l4], 2)
    return int(len(rows))


@njit
def _udp_checksums(buf, frame, ip, udp, v4, udp_len, out):
    """Full UDP checksum (RFC 768 / RFC 8200 8.1) of each datagram: pseudo-header + UDP header
    (checksum field as zero) + payload of udp_len bytes."""
    for i in range(len(frame)):
        f = frame[i]
        s = 0
        if v4[i]:
            a = f + ip[i] + 12
            for j in range(4):
                s += (np.int64(buf[a + 2 * j]) << 8) | buf[a + 2 * j + 1]
        else:
            a = f + ip[i] + 8
            for j in range(16):
                s += (np.int64(buf[a + 2 * j]) << 8) | buf[a + 2 * j + 1]
        s += 17 + udp_len[i]
        u = f + udp[i]
        n = udp_len[i]
        for j in range(0, n - 1, 2):
            if j != 6:
                s += (np.int64(buf[u + j]) << 8) | buf[u + j + 1]
        if n % 2 == 1:
            s += np.int64(buf[u + n - 1]) << 8
        while s >> 16:
            s = (s & 0xFFFF) + (s >> 16)
        c = (~s) & 0xFFFF
        out[i] = 0xFFFF if c == 0 else c


def shrink_udp(buf: np.ndarray, cap: Capture, rows: np.ndarray, new_payload: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cut the UDP payload of rows to new_payload bytes (a sender choosing smaller packets).

    IPv4 total length (and header checksum), IPv6 payload length and the UDP length are rewritten
    and the UDP checksum recomputed (left zero where an IPv4 sender sent none). Returns (rows
    rewritten, their new caplen, their new wirelen); rows whose IP header is not found, or whose
    payload is not captured whole, are left out."""
    t = cap.packets
    rows = np.asarray(rows, dtype=np.int64)
    new_payload = np.asarray(new_payload, dtype=np.int64)
    sel = (t.proto[rows] == 17) & (t.l4_off[rows] >= 0) & (t.payload_off[rows] >= 0) \
        & (t.payload_len[rows] == t.payload_wirelen[rows])
    rows, new_payload = rows[sel], new_payload[sel]
    ip, v4 = ip_offsets(cap, rows)
    ok = ip >= 0
    rows, new_payload, ip, v4 = rows[ok], new_payload[ok], ip[ok], v4[ok]
    new_payload = np.minimum(new_payload, t.payload_wirelen[rows].astype(np.int64))
    frame = t.frame_off[rows].astype(np.int64)
    udp = t.l4_off[rows].astype(np.int64) - frame
    cut = t.payload_wirelen[rows].astype(np.int64) - new_payload
    udp_len = 8 + new_payload
    # IP lengths
    w4 = np.flatnonzero(v4)
    if len(w4):
        at = frame[w4] + ip[w4] + 2
        m_old = words(buf, at, 1)
        put_be(buf, at, be(buf, at, 2) - cut[w4], 2)
        hc = frame[w4] + ip[w4] + 10
        put_be(buf, hc, csum_update(be(buf, hc, 2), m_old, words(buf, at, 1)), 2)
    w6 = np.flatnonzero(~v4)
    if len(w6):
        at = frame[w6] + ip[w6] + 4
        put_be(buf, at, be(buf, at, 2) - cut[w6], 2)
    put_be(buf, frame + udp + 4, udp_len, 2)
    old = be(buf, frame + udp + 6, 2)
    c = np.zeros(len(rows), dtype=np.int64)
    _udp_checksums(buf, frame, ip, udp, v4, udp_len, c)
    upd = ~(v4 & (old == 0))
    put_be(buf, (frame + udp + 6)[upd], c[upd], 2)
    caplen = t.caplen[rows].astype(np.int64) - cut
    wirelen = t.wirelen[rows].astype(np.int64) - cut
    return rows, caplen, wirelen


def hide_media(cap: Capture, ft, cl, flows, seed: int = 0) -> tuple[Capture, int]:
    """The capture with the RTP and RTCP of the given flows made unreadable, as an app that
    encrypts its whole media packet sends it (Telegram, Tencent Meeting): from each RTP header
    (wherever its framing puts it: plain, TURN ChannelData, MS-TURN, Zoom's) to the datagram's
    end, and every other version-2 datagram (RTCP, SRTCP) whole, become random bytes whose first
    byte is no RTP version 2. Sizes, times and everything else (STUN, DTLS, an app's own framing
    before the RTP header) are kept, so the twin has the real call's timing without its
    sequence numbers. UDP checksums are recomputed (a zero IPv4 one stays zero). Returns (the
    capture read back, datagrams hidden)."""
    t = cap.packets
    rows = np.concatenate([ft.packet_indices(int(f)) for f in flows]) if len(flows) else np.zeros(0, np.int64)
    rows = np.sort(rows.astype(np.int64))
    rows = rows[(t.proto[rows] == 17) & (t.payload_off[rows] >= 0) & (t.payload_len[rows] > 0)
                & (t.payload_len[rows] == t.payload_wirelen[rows])]
    ev = cl.evidence
    enc = np.asarray(ev.rtp_encap_of)[rows]
    rel = np.where(enc >= 0, np.asarray(ev.rtp_offset_of)[rows].astype(np.int64), 0)
    first = cap.buffer[t.payload_off[rows].astype(np.int64)]
    hide = (enc >= 0) | ((first & 0xC0) == 0x80)
    rows, rel = rows[hide], rel[hide]
    ip, v4 = ip_offsets(cap, rows)
    ok = ip >= 0
    rows, rel, ip, v4 = rows[ok], rel[ok], ip[ok], v4[ok]
    buf = np.array(cap.buffer, dtype=np.uint8, copy=True)
    start = t.payload_off[rows].astype(np.int64) + rel
    length = t.payload_len[rows].astype(np.int64) - rel
    keep = length > 0
    rows, start, length, ip, v4 = rows[keep], start[keep], length[keep], ip[keep], v4[keep]
    if len(rows):
        rng = np.random.default_rng(seed)
        at = np.repeat(start - np.cumsum(np.r_[0, length[:-1]]), length) + np.arange(int(length.sum()))
        buf[at] = rng.integers(0, 256, size=len(at), dtype=np.uint8)
        buf[start] = (buf[start] & 0x3F) | 0x40          # version 1: never read as RTP or RTCP
        frame = t.frame_off[rows].astype(np.int64)
        udp = t.l4_off[rows].astype(np.int64) - frame
        old = be(buf, frame + udp + 6, 2)
        udp_len = 8 + t.payload_wirelen[rows].astype(np.int64)
        c = np.zeros(len(rows), dtype=np.int64)
        _udp_checksums(buf, frame, ip, udp, v4, udp_len, c)
        upd = ~(v4 & (old == 0))
        put_be(buf, (frame + udp + 6)[upd], c[upd], 2)
    out = build_capture(buf, cap, np.arange(len(t)), t.ts_ns, "media hidden")
    return out, int(len(rows))


# --------------------------------------------------------------------------- captures out

def build_capture(buf: np.ndarray, cap: Capture, rows, ts_ns, what: str, *, caplen=None, wirelen=None) -> Capture:
    """A Capture of the given rows of `cap` (repeats allowed), frame bytes from `buf` (cap.buffer or
    an edited copy of it), re-timed to ts_ns and optionally shortened (caplen / wirelen per row):
    written to a temporary nanosecond pcap, read back (memory-mapped), the file unlinked."""
    t = cap.packets
    rows = np.asarray(rows, dtype=np.int64)
    lts = np.unique(t.linktype[rows]) if len(rows) else np.asarray(cap.linktypes[:1] or [1])
    if len(lts) > 1:
        raise ValueError("rows span several link types; classic pcap holds one")
    cl = t.caplen[rows] if caplen is None else np.asarray(caplen, dtype=np.int64)
    wl = t.wirelen[rows] if wirelen is None else np.asarray(wirelen, dtype=np.int64)
    out, _ = pcap_records(buf, t.frame_off[rows], cl, wl, np.asarray(ts_ns, dtype=np.int64))
    return _read_back(out, int(lts[0]), f"{cap.path} ({what})")


def _read_back(records: np.ndarray, linktype: int, path_label: str) -> Capture:
    fd, tmp = tempfile.mkstemp(prefix="throttledetect-", suffix=".pcap")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(pcap_header(linktype, nano=True))
            f.write(memoryview(records))
        new = read_capture(tmp)
    finally:
        os.unlink(tmp)          # the mapping keeps the bytes alive
    new.path = path_label
    return new


def sha256_file(path: str) -> str | None:
    try:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()
    except OSError:
        return None


def input_identity(cap: Capture) -> dict:
    """Where a capture came from: its path and sha256, or (looped) the source's."""
    loop = getattr(cap, "loop", None)
    if loop is not None:
        return dict(loop["source"])
    return {"path": cap.path, "sha256": sha256_file(cap.path)}


# --------------------------------------------------------------------------- looping

def _tcp_continuity(cap: Capture, ft, rows: np.ndarray):
    """TCP rows of the looped window, with per row the sequence-space shift per copy of its own
    direction (seq) and of the other direction (ack): the span each direction's segments cover in
    the window, so that copy k continues where copy k-1 ended instead of repeating its bytes."""
    t = cap.packets
    r = rows[(t.proto[rows] == 6) & (t.l4_off[rows] >= 0) & (ft.flow_of[rows] >= 0)]
    if not len(r):
        return r, r, r
    fl = ft.flow_of[r].astype(np.int64)
    dr = ft.dir_of[r].astype(np.int64)
    order = np.lexsort((r, t.ts_ns[r], dr, fl))
    r, fl, dr = r[order], fl[order], dr[order]
    key = fl * 2 + dr
    first = np.ones(len(r), dtype=bool)
    first[1:] = key[1:] != key[:-1]
    xs = unwrap_groups(t.tcp_seq[r].astype(np.int64), first, U32)
    flags = t.tcp_flags[r].astype(np.int64)
    end = xs + t.payload_wirelen[r].astype(np.int64) + ((flags & 0x02) > 0) + ((flags & 0x01) > 0)
    starts = np.flatnonzero(first)
    span = np.maximum.reduceat(end, starts) - np.minimum.reduceat(xs, starts)
    span_of = dict(zip(key[starts].tolist(), span.tolist()))
    gid = np.cumsum(first) - 1
    seq_shift = span[gid]
    other = key ^ 1
    uk, inv = np.unique(other, return_inverse=True)
    ack_shift = np.array([span_of.get(int(k), 0) for k in uk], dtype=np.int64)[inv]
    return r, seq_shift, ack_shift


# The longest pause a loop's join may get to keep a stream's timestamps level: a packet-time is
# at most 120 ms (Opus's longest frame); a span longer than the window by more is a jump in the
# stream's timestamps (a fax switching to T.38), which no pause at the joins could keep level.
MAX_JOIN_STRETCH_NS = 200_000_000


@dataclass(eq=False)
class RtpLoopPlan:
    """The RTP streams of a loop's repeated part, one entry per stream (arrays and ``rate``),
    their packets at ``pos_ix`` in the RtpIndex ``ix`` (``gid``: each one's stream)."""
    ix: "RtpIndex"
    pos_ix: np.ndarray
    gid: np.ndarray
    starts: np.ndarray
    ends: np.ndarray
    seq_span: np.ndarray
    ts_span: np.ndarray
    ptime: np.ndarray           # median positive timestamp step (clock ticks)
    rate: list                  # clock rate in Hz, None when unknown

    def need_ns(self) -> np.ndarray:
        """The period each stream's timestamps need (span plus a packet-time; 0 without a rate)."""
        return np.array([int(np.ceil((int(sp) + int(pt)) / r * 1e9)) if r else 0
                         for sp, pt, r in zip(self.ts_span, self.ptime, self.rate)], dtype=np.int64)


def _rtp_loop_plan(cap: Capture, ft, cl, ts_all: np.ndarray, body_pos: np.ndarray) -> RtpLoopPlan | None:
    """The RTP streams of the looped part: sequence and timestamp spans, packet-time, clock rate
    (static payload type or estimated from its timestamps). None when no stream lies in it."""
    from throttledetect.metrics.rtp import STATIC_CLOCK_RATES, estimate_clock_rate
    ix = RtpIndex(cap, ft, cl)
    inb = body_pos[ix.row] >= 0 if len(ix) else np.zeros(0, dtype=bool)
    if not inb.any():
        return None
    # spans over the looped part only; packets kept once precede copy 0 unchanged
    pos_ix = np.flatnonzero(inb)
    grp = ix.stream[pos_ix]
    first = np.ones(len(pos_ix), dtype=bool)
    first[1:] = grp[1:] != grp[:-1]
    starts = np.flatnonzero(first)
    gid = np.cumsum(first) - 1
    xseq, xts = ix.xseq[pos_ix], ix.xts[pos_ix]
    seq_span = _counter_spans(ix, pos_ix, starts, np.maximum.reduceat(xseq, starts)
                              - np.minimum.reduceat(xseq, starts))
    ts_span = np.maximum.reduceat(xts, starts) - np.minimum.reduceat(xts, starts)
    step = np.zeros(len(pos_ix), dtype=np.int64)
    step[1:] = np.diff(xts)
    step[first] = 0
    ptime = np.ones(len(starts), dtype=np.int64)
    pos = step > 0
    if pos.any():                       # median positive timestamp step per stream
        pg, pv = gid[pos], step[pos]
        o = np.lexsort((pv, pg))
        pg, pv = pg[o], pv[o]
        cnt = np.bincount(pg, minlength=len(starts))
        pstart = np.zeros(len(starts) + 1, dtype=np.int64)
        np.cumsum(cnt, out=pstart[1:])
        has = cnt > 0
        ptime[has] = pv[pstart[:-1][has] + (cnt[has] - 1) // 2]
    ends = np.append(starts[1:], len(pos_ix))
    rates = []
    for s in range(len(starts)):        # one call per stream, not per packet
        a, b = starts[s], ends[s]
        p = pos_ix[a]
        rate = STATIC_CLOCK_RATES.get(int(ix.pt[p])) if ix.pt[p] < 96 else None
        if rate is None and b - a >= 10:
            rr = ix.row[pos_ix[a:b]]
            rate = estimate_clock_rate((ts_all[rr] - ts_all[rr[0]]) / 1e9, ix.ts[pos_ix[a:b]])
        rates.append(rate)
    return RtpLoopPlan(ix, pos_ix, gid, starts, ends, seq_span, ts_span, ptime, rates)


def loop_capture(cap: Capture, ft, cl, seconds: float, *, window: tuple | None = None) -> tuple[Capture, dict]:
    """Repeat a capture, or a window of it, until the repeated part lasts at least `seconds`.

    window = (keep_from_ns, loop_from_ns, loop_to_ns), absolute: packets in [keep_from, loop_from)
    are kept once (a call's setup: signalling, DNS, STUN), packets in [loop_from, loop_to] are
    repeated, everything else is left out. Default: the whole capture repeated.

    Copy k of the repeated part is shifted by k * period: its duration + median inter-packet gap,
    lengthened (by at most MAX_JOIN_STRETCH_NS) where an RTP stream's timestamps span more than
    that less one packet-time, so that each stream's next copy starts at least a packet-time after
    its last timestamp. In every RTP stream over UDP found by the classification (cl.evidence:
    plain RTP, TURN ChannelData, MS-TURN and Zoom framing), copy k's sequence numbers advance by
    k * (sequence span + 1) mod 2^16 and its timestamps by k * T mod 2^32, where T is the period in
    clock ticks when the stream's clock rate is known (static payload type or estimated from its
    timestamps), never less than the timestamp span plus one packet-time, and exactly that when the
    rate is unknown: arrival time minus RTP timestamp stays level across the joins (a stream whose
    timestamps jump by more than the stretch allows steps at each join). Every TCP connection's sequence
    and acknowledgement numbers advance by the sequence space its direction covers in the window,
    so a looped TCP control carries new bytes instead of repeating old ones (SACK blocks and TCP
    timestamps are left as captured). Everything else — flows without readable RTP (encrypted
    media), RTCP, SRTP tags — repeats byte for byte, shifted in time only. Checksums updated
    incrementally (RFC 1624).

    Returns (the looped Capture, read back from a temporary pcap, with ``.loop`` = the info dict
    also returned).
    """
    t = cap.packets
    n_all = len(t)
    if n_all == 0:
        raise ValueError("empty capture")
    ts_all = t.ts_ns.astype(np.int64)
    if window is None:
        keep_from = loop_from = int(ts_all.min())
        loop_to = int(ts_all.max())
    else:
        keep_from, loop_from, loop_to = (int(x) for x in window)
    pre = np.flatnonzero((ts_all >= keep_from) & (ts_all < loop_from))
    body = np.flatnonzero((ts_all >= loop_from) & (ts_all <= loop_to))
    if not len(body):
        raise ValueError("nothing to loop in the window")
    lts = np.unique(t.linktype[np.concatenate([pre, body])])
    if len(lts) > 1:
        raise ValueError("capture mixes link types; a looped classic pcap holds one")
    ts = ts_all[body]
    t0, t1 = int(ts.min()), int(ts.max())
    duration = t1 - t0
    gaps = np.diff(np.sort(ts))
    gaps = gaps[gaps > 0]
    gap = int(np.median(gaps)) if len(gaps) else 1_000_000
    period = duration + gap
    want = int(round(float(seconds) * 1e9))
    n_pre, n = len(pre), len(body)
    body_pos = np.full(n_all, -1, dtype=np.int64)
    body_pos[body] = np.arange(n)
    plan = _rtp_loop_plan(cap, ft, cl, ts_all, body_pos) if want > duration else None
    stretch = 0
    if plan is not None:
        # Each stream's next copy must start a packet-time after its last timestamp, and arrival
        # minus timestamp must stay level across the join (a step there reads as a queue filling
        # or draining: the testbed call's video stepped 33 ms at every join). Where a stream's
        # timestamps span a packet-time more than the window's time, the period is lengthened by
        # that much (a pause of one packet-time at each join); a stream whose timestamps jump by
        # more than MAX_JOIN_STRETCH_NS cannot be kept level and is not waited for.
        need = plan.need_ns()
        need = need[(need > period) & (need <= period + MAX_JOIN_STRETCH_NS)]
        stretch = int(need.max() - period) if len(need) else 0
    period += stretch
    copies = max(1, int(np.ceil((want + gap) / period))) if want > duration else 1

    kk = np.repeat(np.arange(copies, dtype=np.int64), n)
    rows_out = np.concatenate([pre, np.tile(body, copies)])
    ts_out = np.concatenate([ts_all[pre], np.tile(ts, copies) + kk * period])
    fo = t.frame_off.astype(np.int64)
    buf, rec_start = pcap_records(cap.buffer, fo[rows_out], t.caplen[rows_out], t.wirelen[rows_out], ts_out)
    del kk

    def out_frames(k: int, pos_in_body: np.ndarray) -> np.ndarray:
        return rec_start[n_pre + k * n + pos_in_body] + 16

    info = {"seconds_requested": float(seconds), "copies": copies, "period_s": period / 1e9,
            "gap_s": gap / 1e9, "join_stretch_s": stretch / 1e9,
            "source_duration_s": (int(ts_all.max()) - int(ts_all.min())) / 1e9,
            "window_s": [(keep_from - int(ts_all.min())) / 1e9, (loop_from - int(ts_all.min())) / 1e9,
                         (loop_to - int(ts_all.min())) / 1e9] if window is not None else None,
            "kept_once": n_pre, "looped_duration_s": (duration + (copies - 1) * period) / 1e9,
            "checksums": "updated incrementally (RFC 1624); zero IPv4 UDP checksums left zero",
            "rtp_streams": [], "tcp_directions": 0}

    if copies > 1:
        if plan is not None:
            ix, pos_ix, gid = plan.ix, plan.pos_ix, plan.gid
            ts_shift = plan.ts_span + plan.ptime
            for s, rate in enumerate(plan.rate):     # one step per stream, not per packet
                if rate:
                    ts_shift[s] = max(int(ts_shift[s]), int(round(period / 1e9 * rate)))
                p = pos_ix[plan.starts[s]]
                info["rtp_streams"].append({
                    "flow": int(ix.flow[p]), "dir": "ab" if ix.dir[p] == 0 else "ba", "ssrc": int(ix.ssrc[p]),
                    "packets": int(plan.ends[s] - plan.starts[s]),
                    "seq_step_per_copy": int(plan.seq_span[s] + 1),
                    "ts_step_per_copy": int(ts_shift[s]), "clock_rate": int(rate) if rate else None})
            sshift, tshift = (plan.seq_span + 1)[gid], ts_shift[gid]
            bp = body_pos[ix.row[pos_ix]]
            for k in range(1, copies):
                set_rtp(buf, ix, pos_ix, seq=ix.seq[pos_ix] + k * sshift, ts=ix.ts[pos_ix] + k * tshift,
                        frame=out_frames(k, bp))
        tr, seq_shift, ack_shift = _tcp_continuity(cap, ft, body)
        if len(tr):
            info["tcp_directions"] = int(len(np.unique(ft.flow_of[tr].astype(np.int64) * 2 + ft.dir_of[tr])))
            l4 = t.l4_off[tr].astype(np.int64) - fo[tr]
            seq0 = t.tcp_seq[tr].astype(np.int64)
            ack0 = t.tcp_ack[tr].astype(np.int64)
            has_ack = (t.tcp_flags[tr] & 0x10) > 0
            bp = body_pos[tr]
            for k in range(1, copies):
                fr = out_frames(k, bp)
                kw = dict(l4_rel=l4, csum_rel=l4 + 16, udp=False)
                patch_field(buf, fr, l4 + 4, (seq0 + k * seq_shift) % U32, 4, **kw)
                patch_field(buf, fr, l4 + 8, np.where(has_ack, (ack0 + k * ack_shift) % U32, ack0), 4, **kw)

    looped = _read_back(buf, int(lts[0]), "")
    del buf
    info["source"] = input_identity(cap)
    info["packets"] = int(len(rows_out))
    looped.path = f"{cap.path} (looped to {info['looped_duration_s']:.3f} s)"
    looped.loop = info
    return looped, info
