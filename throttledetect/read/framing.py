"""Record framing of classic pcap and pcapng files: where each packet's bytes are, and when.

Formats: libpcap savefile (https://www.tcpdump.org/manpages/pcap-savefile.5.txt, draft-ietf-opsawg-pcap)
and pcapng (draft-ietf-opsawg-pcapng): SHB, IDB (if_tsresol, if_tsoffset), EPB, SPB and the obsolete PB;
every other block is skipped by its length. Several sections, each with its own byte order, are allowed.

The walkers run twice over the file: once to count records, once to fill the index arrays, so
no array is ever resized. Work is linear in the file size even when resynchronising after damage:
each candidate offset is checked with a constant number of reads.
"""
from __future__ import annotations

import numpy as np

from throttledetect.jit import njit

# Warning codes written by the walkers; the reader turns them into sentences (see WARNING_TEXT).
W_TRUNCATED_RECORD = 1      # arg: bytes missing
W_CORRUPT_RECORD = 2        # arg: declared length
W_RESYNC = 3                # arg: bytes skipped to the next plausible record
W_NO_RESYNC = 4             # arg: bytes left unread at the end
W_BAD_BLOCK = 5             # arg: declared block length
W_UNKNOWN_IFACE = 6         # arg: interface id
W_TOO_MANY_IFACES = 7       # arg: interface id
W_BAD_TSRESOL = 8           # arg: the if_tsresol byte
W_CAPLEN_OVER_BLOCK = 9     # arg: caplen
W_TRUNCATED_BLOCK = 10      # arg: bytes missing
W_ABSURD_TIMESTAMP = 11     # arg: seconds
W_BAD_SHB = 12              # arg: 0
W_CAPLEN_FROM_WIRELEN = 13  # arg: the absurd captured length

WARNING_TEXT = {
    W_TRUNCATED_RECORD: "truncated record: {arg} bytes missing at end of file",
    W_CORRUPT_RECORD: "corrupt record header (captured length {arg})",
    W_RESYNC: "resynchronised after skipping {arg} unreadable bytes",
    W_NO_RESYNC: "no readable record in the last {arg} bytes",
    W_BAD_BLOCK: "corrupt pcapng block (declared length {arg})",
    W_UNKNOWN_IFACE: "packet on undeclared interface {arg}, skipped",
    W_TOO_MANY_IFACES: "more interfaces than supported (id {arg}); packets on it skipped",
    W_BAD_TSRESOL: "unsupported if_tsresol 0x{arg:02x}, microseconds assumed",
    W_CAPLEN_OVER_BLOCK: "captured length {arg} exceeds its block, clipped",
    W_TRUNCATED_BLOCK: "truncated pcapng block: {arg} bytes missing at end of file",
    W_ABSURD_TIMESTAMP: "timestamp out of range ({arg} s), set to 0",
    W_BAD_SHB: "corrupt section header block",
    W_CAPLEN_FROM_WIRELEN: "captured length {arg} is absurd; the wire length was used instead",
}

MAX_WARNINGS = 256
MAX_IFACES = 1024
# Largest plausible captured length when the file header's snaplen is not believable:
# 262144 is what libpcap and Wireshark use as their maximum snapshot length.
MAX_SNAPLEN = 262144
# Resynchronisation insists on timestamps within this many seconds of the last good record.
RESYNC_WINDOW_S = 86400 * 7

PCAPNG_SHB = 0x0A0D0D0A
PCAPNG_IDB = 1
PCAPNG_PB = 2
PCAPNG_SPB = 3
PCAPNG_EPB = 6
PCAPNG_BOM = 0x1A2B3C4D
_PCAPNG_KNOWN = (0x0A0D0D0A, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 0xBAD, 0x40000BAD)
NS_PER_S = 1_000_000_000
MAX_TS_S = 9_000_000_000  # year 2255: beyond this, int64 nanoseconds would overflow soon


@njit
def _u16(buf, o, swap):
    if swap:
        return np.int64(buf[o]) << 8 | np.int64(buf[o + 1])
    return np.int64(buf[o + 1]) << 8 | np.int64(buf[o])


@njit
def _u32(buf, o, swap):
    if swap:
        return (np.int64(buf[o]) << 24 | np.int64(buf[o + 1]) << 16
                | np.int64(buf[o + 2]) << 8 | np.int64(buf[o + 3]))
    return (np.int64(buf[o + 3]) << 24 | np.int64(buf[o + 2]) << 16
            | np.int64(buf[o + 1]) << 8 | np.int64(buf[o]))


@njit
def _warn(warn, nwarn, offset, code, arg):
    if nwarn < warn.shape[0]:
        warn[nwarn, 0] = offset
        warn[nwarn, 1] = code
        warn[nwarn, 2] = arg
    return nwarn + 1


@njit
def _pcap_header_plausible(buf, o, n, swap, frac_max, maxcap, ref_s):
    """A strict check used only while resynchronising: is there a record header at o?"""
    if o + 16 > n:
        return False
    sec = _u32(buf, o, swap)
    frac = _u32(buf, o + 4, swap)
    incl = _u32(buf, o + 8, swap)
    orig = _u32(buf, o + 12, swap)
    if frac >= frac_max or incl > maxcap or orig < incl or orig > MAX_SNAPLEN or incl == 0:
        return False
    if ref_s >= 0 and abs(sec - ref_s) > RESYNC_WINDOW_S:
        return False
    return o + 16 + incl <= n


@njit
def walk_pcap(buf, swap, nano, snaplen, fill, out_off, out_caplen, out_wirelen, out_ts, warn):
    """Frame the records of a classic pcap file (header already validated by the caller).

    Returns (records, warnings). With fill=False only counts; with fill=True writes the index.
    """
    o, count, nwarn, last_s, done = walk_pcap_block(buf, swap, nano, snaplen, fill, 24, 0, 0, -1,
                                                    out_off.shape[0] if fill else -1,
                                                    out_off, out_caplen, out_wirelen, out_ts, warn)
    return count, nwarn


@njit
def walk_pcap_block(buf, swap, nano, snaplen, fill, o, count, nwarn, last_s, stop_count,
                    out_off, out_caplen, out_wirelen, out_ts, warn, stop_o=-1):
    """Resumable walk: from offset o until `stop_count` records (-1: no limit) or the end, or the
    first record that starts at or after byte stop_o (-1: none; a part of the file read in parallel).

    Returns (next offset, records, warnings, last timestamp seconds, finished), so a caller can
    decode each block of records while its bytes are still in the CPU cache.
    """
    n = buf.shape[0]
    frac_max = 1_000_000_000 if nano else 1_000_000
    frac_to_ns = 1 if nano else 1000
    maxcap = snaplen if 0 < snaplen <= MAX_SNAPLEN * 4 else MAX_SNAPLEN
    if maxcap < MAX_SNAPLEN:
        # Writers often set snaplen below what they actually store; only reject truly absurd lengths.
        maxcap = MAX_SNAPLEN
    while o < n:
        if stop_o >= 0 and o >= stop_o:
            return o, count, nwarn, last_s, False
        if count == stop_count:
            return o, count, nwarn, last_s, False
        if o + 16 > n:
            nwarn = _warn(warn, nwarn, o, W_TRUNCATED_RECORD, o + 16 - n)
            break
        sec = _u32(buf, o, swap)
        frac = _u32(buf, o + 4, swap)
        incl = _u32(buf, o + 8, swap)
        orig = _u32(buf, o + 12, swap)
        if incl > maxcap and 0 < orig <= maxcap and o + 16 + orig <= n:
            # Only the captured-length field is damaged if the wire length leads to the end of
            # the file or to another plausible header: read the record with the wire length.
            nxt = o + 16 + orig
            if n - nxt < 16 or _pcap_header_plausible(buf, nxt, n, swap, frac_max, maxcap, sec):
                nwarn = _warn(warn, nwarn, o, W_CAPLEN_FROM_WIRELEN, incl)
                incl = orig
        if incl > maxcap:
            nwarn = _warn(warn, nwarn, o, W_CORRUPT_RECORD, incl)
            # Resynchronise: the next offset where two consecutive plausible headers chain up
            # (or one reaches the end of the file exactly).
            p = o + 1
            found = -1
            while p + 16 <= n:
                if _pcap_header_plausible(buf, p, n, swap, frac_max, maxcap, last_s):
                    q = p + 16 + _u32(buf, p + 8, swap)
                    if q == n or _pcap_header_plausible(buf, q, n, swap, frac_max, maxcap, last_s):
                        found = p
                        break
                p += 1
            if found < 0:
                nwarn = _warn(warn, nwarn, o, W_NO_RESYNC, n - o)
                break
            nwarn = _warn(warn, nwarn, found, W_RESYNC, found - o)
            o = found
            continue
        if o + 16 + incl > n:
            nwarn = _warn(warn, nwarn, o, W_TRUNCATED_RECORD, o + 16 + incl - n)
            break
        if fill:
            out_off[count] = o + 16
            out_caplen[count] = incl
            out_wirelen[count] = orig if orig >= incl else incl
            if frac >= frac_max:   # out-of-range fraction (damaged header): keep it in range
                frac = frac % frac_max
            out_ts[count] = sec * NS_PER_S + frac * frac_to_ns
        last_s = sec
        count += 1
        o += 16 + incl
    return o, count, nwarn, last_s, True


@njit
def find_pcap_record(buf, o, swap, nano, snaplen, ref_s, chain):
    """The first offset from o where `chain` plausible record headers follow one another (or reach
    the end of the file): where a part of a classic pcap file read in parallel probably starts.
    -1 if none. A guess, confirmed only when the part before it ends exactly there."""
    n = buf.shape[0]
    frac_max = 1_000_000_000 if nano else 1_000_000
    maxcap = snaplen if 0 < snaplen <= MAX_SNAPLEN * 4 else MAX_SNAPLEN
    if maxcap < MAX_SNAPLEN:
        maxcap = MAX_SNAPLEN
    p = o
    while p + 16 <= n:
        q = p
        k = 0
        while k < chain and q < n and _pcap_header_plausible(buf, q, n, swap, frac_max, maxcap, ref_s):
            q = q + 16 + _u32(buf, q + 8, swap)
            k += 1
        if k == chain or (k > 0 and q == n):
            return p
        p += 1
    return -1


@njit
def _iface_ns(ts, units_per_s, offset_s):
    """pcapng timestamp in interface units -> epoch nanoseconds (int64), or -1 if absurd."""
    sec = ts // units_per_s
    frac = ts - sec * units_per_s
    sec += offset_s
    if sec < 0 or sec > MAX_TS_S:
        return -1
    if units_per_s <= NS_PER_S:
        return sec * NS_PER_S + frac * NS_PER_S // units_per_s  # frac < units <= 1e9: no overflow
    # Finer than nanoseconds: integer division keeps exactness without overflowing.
    return sec * NS_PER_S + frac // (units_per_s // NS_PER_S)


@njit
def _pcapng_block_ok(buf, o, n, swap):
    if o + 12 > n:
        return False
    btype = _u32(buf, o, swap)
    blen = _u32(buf, o + 4, swap)
    if blen < 12 or blen % 4 != 0 or o + blen > n:
        return False
    known = False
    for k in _PCAPNG_KNOWN:
        if btype == k:
            known = True
    if not known:
        return False
    return _u32(buf, o + blen - 4, swap) == blen


# Where a resumable pcapng walk stands (PcapngState.scalars): the walk carries its section and
# interface context from one part of the file to the next.
NG_O, NG_SWAP, NG_BASE, NG_NIF_LOCAL, NG_NIF_TOTAL, NG_LAST_NS, NG_NWARN, NG_DONE = range(8)


def pcapng_state():
    """(scalars, units, offsets, snaplens) of a walk that has not started."""
    return (np.zeros(8, np.int64), np.empty(MAX_IFACES, dtype=np.int64), np.zeros(MAX_IFACES, dtype=np.int64),
            np.zeros(MAX_IFACES, dtype=np.int64))


@njit
def walk_pcapng(buf, fill, out_off, out_caplen, out_wirelen, out_ts, out_iface, iface_linktype, warn):
    """Frame the packets of a pcapng file.

    iface_linktype (int32[MAX_IFACES]) receives the link type of every interface, numbered
    globally across sections (section base + local id). Returns (records, warnings, interfaces).
    """
    st = np.zeros(8, np.int64)
    units = np.empty(MAX_IFACES, dtype=np.int64)
    offs = np.zeros(MAX_IFACES, dtype=np.int64)
    snap = np.zeros(MAX_IFACES, dtype=np.int64)
    count = walk_pcapng_part(buf, buf.shape[0], fill, st, units, offs, snap, out_off, out_caplen, out_wirelen, out_ts,
                             out_iface, iface_linktype, warn)
    return count, st[NG_NWARN], st[NG_NIF_TOTAL]


@njit
def walk_pcapng_part(buf, n, fill, st, units, offs, snap, out_off, out_caplen, out_wirelen, out_ts, out_iface,
                     iface_linktype, warn):
    """Resumable pcapng walk from st[NG_O] until the output arrays are full (fill) or byte n.

    Returns the records framed in this part (written from index 0); st carries the position,
    byte order, section and interface context, the warning count and whether the walk is done.
    """
    o = st[NG_O]
    swap = st[NG_SWAP] != 0
    base = st[NG_BASE]          # global number of this section's interface 0
    nif_local = st[NG_NIF_LOCAL]     # interfaces declared in this section
    nif_total = st[NG_NIF_TOTAL]
    last_ns = st[NG_LAST_NS]
    nwarn = st[NG_NWARN]
    count = 0
    done = True
    while o < n:
        if o + 12 > n:
            nwarn = _warn(warn, nwarn, o, W_TRUNCATED_BLOCK, o + 12 - n)
            break
        btype = _u32(buf, o, swap)
        if btype == PCAPNG_SHB and o + 12 <= n:
            bom = _u32(buf, o + 8, False)
            if bom == PCAPNG_BOM:
                swap = False
            elif _u32(buf, o + 8, True) == PCAPNG_BOM:
                swap = True
            else:
                nwarn = _warn(warn, nwarn, o, W_BAD_SHB, 0)
        blen = _u32(buf, o + 4, swap)
        if blen < 12 or blen % 4 != 0 or o + blen > n or _u32(buf, o + blen - 4, swap) != blen:
            if blen >= 12 and blen % 4 == 0 and o + blen > n and o + 8 <= n:
                nwarn = _warn(warn, nwarn, o, W_TRUNCATED_BLOCK, o + blen - n)
                break
            nwarn = _warn(warn, nwarn, o, W_BAD_BLOCK, blen)
            p = o + 1
            found = -1
            while p + 12 <= n:
                if _pcapng_block_ok(buf, p, n, swap):
                    q = p + _u32(buf, p + 4, swap)
                    if q == n or _pcapng_block_ok(buf, q, n, swap):
                        found = p
                        break
                p += 1
            if found < 0:
                nwarn = _warn(warn, nwarn, o, W_NO_RESYNC, n - o)
                break
            nwarn = _warn(warn, nwarn, found, W_RESYNC, found - o)
            o = found
            continue
        body = o + 8
        body_end = o + blen - 4
        if btype == PCAPNG_SHB:
            base = nif_total
            nif_local = 0
        elif btype == PCAPNG_IDB and body + 8 <= body_end:
            gid = base + nif_local
            nif_local += 1
            if gid < MAX_IFACES:
                nif_total = gid + 1
                iface_linktype[gid] = _u16(buf, body, swap)
                snap[gid] = _u32(buf, body + 4, swap)
                units[gid] = 1_000_000
                offs[gid] = 0
                p = body + 8
                nopt = 0
                while p + 4 <= body_end and nopt < 64:
                    code = _u16(buf, p, swap)
                    olen = _u16(buf, p + 2, swap)
                    if code == 0 or p + 4 + olen > body_end:
                        break
                    if code == 9 and olen >= 1:
                        r = np.int64(buf[p + 4])
                        v = r & 0x7F
                        if r & 0x80:
                            if v <= 62:
                                units[gid] = np.int64(1) << v
                            else:
                                nwarn = _warn(warn, nwarn, p, W_BAD_TSRESOL, r)
                        elif v <= 18:
                            u = np.int64(1)
                            for _ in range(v):
                                u *= 10
                            units[gid] = u
                        else:
                            nwarn = _warn(warn, nwarn, p, W_BAD_TSRESOL, r)
                    elif code == 14 and olen >= 8:
                        lo = _u32(buf, p + 4, swap)
                        hi = _u32(buf, p + 8, swap)
                        if not swap:
                            offs[gid] = (hi << 32) | lo
                        else:
                            offs[gid] = (lo << 32) | hi
                    p += 4 + ((olen + 3) // 4) * 4
                    nopt += 1
            else:
                nwarn = _warn(warn, nwarn, o, W_TOO_MANY_IFACES, gid)
        elif (btype == PCAPNG_EPB or btype == PCAPNG_PB or btype == PCAPNG_SPB) and fill \
                and count >= out_off.shape[0]:
            done = False
            break   # the arrays are full (record limit): never write past them
        elif btype == PCAPNG_EPB or btype == PCAPNG_PB:
            if btype == PCAPNG_EPB:
                lid = _u32(buf, body, swap)
            else:
                lid = _u16(buf, body, swap)
            gid = base + lid
            if lid >= nif_local or gid >= MAX_IFACES:
                nwarn = _warn(warn, nwarn, o, W_UNKNOWN_IFACE, lid)
            elif body + 20 <= body_end:
                hi = _u32(buf, body + 4, swap)
                lo = _u32(buf, body + 8, swap)
                incl = _u32(buf, body + 12, swap)
                orig = _u32(buf, body + 16, swap)
                room = body_end - (body + 20)
                if incl > room:
                    nwarn = _warn(warn, nwarn, o, W_CAPLEN_OVER_BLOCK, incl)
                    incl = room
                if hi >= 0x80000000:
                    ns = -1
                else:
                    ns = _iface_ns((hi << 32) | lo, units[gid], offs[gid])
                if ns < 0:
                    nwarn = _warn(warn, nwarn, o, W_ABSURD_TIMESTAMP, hi)
                    ns = 0
                if fill:
                    out_off[count] = body + 20
                    out_caplen[count] = incl
                    out_wirelen[count] = orig if orig >= incl else incl
                    out_ts[count] = ns
                    out_iface[count] = gid
                last_ns = ns
                count += 1
        elif btype == PCAPNG_SPB and body + 4 <= body_end:
            gid = base
            if nif_local == 0:
                nwarn = _warn(warn, nwarn, o, W_UNKNOWN_IFACE, 0)
            else:
                orig = _u32(buf, body, swap)
                incl = min(orig, body_end - (body + 4))
                if snap[gid] > 0:
                    incl = min(incl, snap[gid])
                if fill:
                    out_off[count] = body + 4
                    out_caplen[count] = incl
                    out_wirelen[count] = orig
                    # A simple packet block has no timestamp: keep the last known time.
                    out_ts[count] = last_ns
                    out_iface[count] = gid
                count += 1
        o += blen
    st[NG_O] = o
    st[NG_SWAP] = 1 if swap else 0
    st[NG_BASE] = base
    st[NG_NIF_LOCAL] = nif_local
    st[NG_NIF_TOTAL] = nif_total
    st[NG_LAST_NS] = last_ns
    st[NG_NWARN] = nwarn
    st[NG_DONE] = 1 if done else 0
    return count
