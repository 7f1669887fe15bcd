"""Reading bytes of a mapped capture without holding its pages.

A capture file is mapped (read/capture.py) and its pages given back once the reader has framed
them. Every page a later stage touches (a payload for the classifier, an RTP header, a TCP
option) is mapped into the process again and counted in its resident size until it is given
back: the classifier's payload reads alone touched every page of a 2 M-packet capture (740 MB of
RssFile at 776 MB of file, issue 15), and the RTP headers of the metrics and the detectors do it
again. The helpers here read what they are asked for and give the pages back as they go, so the
file-backed part of the resident size stays a few megabytes whatever the capture's size. The
bytes read are the same: a given-back page is read again from the page cache when touched.

Buffers that are not a mapping (decompressed captures, tables built in memory) are left alone.
"""
from __future__ import annotations

import mmap

import numpy as np

# Bytes of file read between two give-backs. The page cache of a large file holds it in folios of
# up to 2 MB, and touching one byte maps the whole folio: a batch must be bounded by the span of
# file it reads, not by how many positions it reads (4096 RTP headers of one call, spread over a
# capture, mapped 243 MB). Positions are read in file order, SPAN bytes at a time.
SPAN = 16 << 20
# Payloads handed out one by one (the classifier's scalar parsers) between two give-backs at most.
PAYLOAD_BATCH = 1 << 11


_MALLOC_FIXED = False


def large_allocations_mapped() -> None:
    """Have glibc map every allocation of 1 MB or more on its own and unmap it when freed (the
    streaming reader's way). By default the threshold rises after such a free, and a chunk's
    columns then stay in the allocator's arenas after they are freed: measured 607 MB against 390
    MB at the peak of `flows` on 2 M packets. Not for `analyze`: with its temporaries bounded
    (classify, metrics) it saved 34 MB of 3.1 GB on 10 M packets and cost 15% of the time (every
    large temporary's pages faulted in afresh). Elsewhere (no glibc) nothing is done."""
    global _MALLOC_FIXED
    if _MALLOC_FIXED:
        return
    _MALLOC_FIXED = True
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 20)      # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


_LIBC = None


def trim_heap() -> None:
    """Give the allocator's free memory back to the system (glibc's malloc_trim). Numpy arrays
    under glibc's mmap threshold (which rises to 32 MB as large blocks are freed) live in its
    arenas, and what a stage frees there stays resident, scattered between live blocks, while
    the next stage may need less. A trim costs a walk of the free blocks (and the pages given back
    are faulted in again when used): done between the stages of the analysis, not per allocation
    as a fixed threshold would (large_allocations_mapped) nor per batch of a stage (2.6 s of CPU
    on 10 M packets, and no lower peak). Elsewhere (no glibc) nothing is done."""
    global _LIBC
    if _LIBC is None:
        try:
            import ctypes
            _LIBC = ctypes.CDLL("libc.so.6")
            _LIBC.malloc_trim.argtypes = [ctypes.c_size_t]
        except (OSError, AttributeError):
            _LIBC = False
    if _LIBC:
        _LIBC.malloc_trim(0)


def _mapping(cap):
    keep = getattr(cap, "_keepalive", None)
    return keep if isinstance(keep, mmap.mmap) else None


def release(cap) -> None:
    """Give back every page of the capture's mapping (they stay in the page cache)."""
    keep = _mapping(cap)
    if keep is None:
        return
    try:
        keep.madvise(mmap.MADV_DONTNEED)
    except (OSError, ValueError, AttributeError):
        pass


def windows(cap, at: np.ndarray):
    """Index arrays into `at` (byte positions) that split it into runs of positions inside one
    SPAN of the file, in file order; the pages are given back after each run is consumed. One
    run of everything when the buffer is no mapping."""
    at = np.asarray(at, dtype=np.int64)
    if _mapping(cap) is None or len(at) == 0:
        yield np.arange(len(at))
        return
    order = np.arange(len(at)) if np.all(at[1:] >= at[:-1]) else np.argsort(at, kind="stable")
    key = at[order] // SPAN
    cuts = np.flatnonzero(key[1:] != key[:-1]) + 1
    try:
        for idx in np.split(order, cuts):
            yield idx
            release(cap)
    finally:
        release(cap)


def gather(cap, at: np.ndarray, width: int = 0) -> np.ndarray:
    """cap.buffer[at] (width 0), or the `width` bytes from each position (uint8[n, width]), read a
    SPAN of file at a time with the pages given back after each."""
    buf = cap.buffer
    at = np.asarray(at, dtype=np.int64)
    out = np.empty((len(at),) if width == 0 else (len(at), width), dtype=buf.dtype)
    cols = None if width == 0 else np.arange(width)[None, :]
    for idx in windows(cap, at):
        part = at[idx]
        out[idx] = buf[part] if cols is None else buf[part[:, None] + cols]
    return out


def payloads(cap, rows):
    """cap.payload(r) for each row, in order; the pages are given back whenever the reads have
    moved more than SPAN bytes from where they were last given back (rows in file order move on
    steadily), and every PAYLOAD_BATCH rows."""
    if _mapping(cap) is None:
        for r in rows:
            yield cap.payload(r)
        return
    off = cap.packets.payload_off
    mark, k = None, 0
    try:
        for r in rows:
            o = int(off[r])
            if mark is None:
                mark = o
            elif abs(o - mark) > SPAN or k >= PAYLOAD_BATCH:
                release(cap)
                mark, k = o, 0
            yield cap.payload(r)
            k += 1
    finally:
        release(cap)
