"""A capture read part by part: the same framing and decoding as read_capture, in chunks of records.

    stream = CaptureStream("huge.pcap")
    for chunk in stream:            # Chunk: a PacketTable of up to chunk_records rows, in file order
        ...
    stream.summary                  # format, link types, warnings and stats, as read_capture's Capture has

Memory does not grow with the file: the file is mapped without being populated and the pages of
each chunk are given back to the kernel (madvise DONTNEED) once the next chunk is asked for;
compressed input is decompressed into an unlinked temporary file, not into memory. A chunk's
offsets (frame_off, payload_off, l4_off) are absolute in `Chunk.buffer`, which stays readable for
the whole stream (given-back pages are read again from the page cache when touched).

What each chunk holds equals the rows of read_capture's PacketTable (tested on every sample and
corpus capture), warnings included, with one difference on purpose: no record limit
(THROTTLEDETECT_MAX_RECORDS bounds the whole-file reader's memory; this one needs none). Later IP
fragments find their first fragment across chunks among the last FRAG_CARRY first fragments.
"""
from __future__ import annotations

import mmap
import os
from dataclasses import dataclass, field

import numpy as np

from throttledetect.read import blocks, decode, framing
from throttledetect.read import fallback
from throttledetect.read.pages import large_allocations_mapped
from throttledetect.read.capture import (DEFAULT_PREFIX, ReadWarning, CaptureError, _assign_fragment_ports,
                                         fill_record_columns,
                                         _open_bytes, _PcapArrays, _warnings_from, _where, probe_format)
from throttledetect.read.table import FRAG_FIRST, PacketTable

DEFAULT_CHUNK_RECORDS = 1 << 18    # ~45 MB of columns: large enough that per-chunk overhead vanishes
FRAG_CARRY = 4096                  # first fragments remembered across chunks
DEFAULT_SEGMENT_BYTES = 48 << 20   # a part of a classic pcap read by one thread: ~130 k records of a call mix


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1
_PAGE = mmap.PAGESIZE


@dataclass
class Chunk:
    packets: PacketTable
    status: np.ndarray          # decode.STATUS_* per row
    buffer: np.ndarray = field(repr=False)   # the whole file's bytes (offsets in packets are absolute)
    first_record: int = 0       # file-wide index of row 0
    end_offset: int = 0         # byte offset where the next chunk's records begin


@dataclass
class StreamSummary:
    """What read_capture's Capture says besides its packets; complete once the stream is exhausted."""

    path: str
    format: str
    linktypes: list
    warnings: list
    stats: dict
    first_ns: int | None = None
    last_ns: int | None = None

    def skipped_summary(self) -> str:
        parts = [f"{n} {decode.STATUS_TEXT[s]}" for s, n in self.stats["skipped"].items() if n]
        return ", ".join(parts)


class CaptureStream:
    """Iterate a capture file's records in chunks (see the module docstring)."""

    def __init__(self, source, *, name: str | None = None, chunk_records: int = DEFAULT_CHUNK_RECORDS,
                 prefix_len: int = DEFAULT_PREFIX, segment_bytes: int | None = None):
        if hasattr(source, "read"):
            path = name or str(getattr(source, "name", "<stream>"))
        else:
            source = os.fspath(source)
            path = name or source
        self.path = path
        large_allocations_mapped()
        self.chunk_records = max(1, int(chunk_records))
        # classic pcap is read in parts of this many bytes by two threads (None: one chunk of
        # chunk_records after another); the default when chunk_records is the default
        self.segment_bytes = segment_bytes if segment_bytes is not None else \
            (DEFAULT_SEGMENT_BYTES if chunk_records == DEFAULT_CHUNK_RECORDS and _cores() > 1 else 0)
        self.prefix_len = prefix_len
        buf, compression, warns, keep = _open_bytes(source, path, spill=True)
        self.buffer, self._keep, self._compression = buf, keep, compression
        self._where = _where(compression)
        self.format, self._swap, self._nano, self._snaplen, self._linktype = probe_format(buf, path, self._where)
        self._pre_warnings = warns
        self._warn = np.zeros((framing.MAX_WARNINGS, 3), dtype=np.int64)
        self._nwarn = 0
        self.records = 0
        self._counts = np.zeros(len(decode.STATUS_TEXT) + 1, dtype=np.int64)
        self._bytes = 0
        self._frag = self._frag_reassigned = self._tunnelled = 0
        self._linktypes: set = set()
        self._released = 0
        self._firsts: PacketTable | None = None      # recent first fragments (rows of earlier chunks)
        self._fallback_stats: dict = {}
        self._fallback_messages: list[str] = []
        self._first_ns: int | None = None
        self._last_ns: int | None = None
        self.summary: StreamSummary | None = None

    # ------------------------------------------------------------------ iteration
    def __iter__(self):
        if self.format == "pcap":
            parts = self._pcap_parts()
        else:
            parts = self._pcapng_parts()
        for table, status, end in parts:
            if len(table):
                self._account(table, status)
                yield Chunk(table, status, self.buffer, self.records - len(table), end)
            self._release(end)
        self._finish()

    def _pcap_parts(self):
        self._linktypes.add(self._linktype)
        if self.segment_bytes and len(self.buffer) > 2 * self.segment_bytes:
            yield from self._pcap_segments()
        else:
            yield from self._pcap_sequential(24, 0, -1)

    def _pcap_sequential(self, o: int, nwarn: int, last_s: int):
        while True:
            arrays = _PcapArrays(self.chunk_records, self.prefix_len)
            o, count, nwarn, last_s, done = blocks.read_pcap_records(
                self.buffer, self._swap, self._nano, self._snaplen, self._linktype, blocks.BLOCK, self.prefix_len,
                o, 0, nwarn, last_s, self.chunk_records, *arrays.args(), self._warn)
            self._nwarn = nwarn
            table, status = arrays.table.take(slice(0, count)), arrays.status[:count]
            self._fill(table, status, arrays.rec_off[:count], arrays.caplen[:count], arrays.wirelen[:count],
                       arrays.ts[:count], np.zeros(count, np.uint16), arrays.lt[:count])
            yield table, status, int(o)
            if done:
                return

    def _pcap_segments(self):
        """Parts of the file framed and decoded two at a time, each by a thread of its own (the compiled
        reader releases the GIL). A part starts where find_pcap_record guesses a record begins; the
        guess holds only if the part before it ends exactly there, else (or when a later part met
        damage, where the reader's state carried from the part before matters) the rest of the file
        is read one chunk after another from where the last confirmed part ended."""
        from concurrent.futures import ThreadPoolExecutor
        buf, n, seg = self.buffer, len(self.buffer), self.segment_bytes
        ref_s = int.from_bytes(bytes(buf[24:28]), "big" if self._swap else "little") if n >= 40 else -1
        starts = [24]
        for b in range(24 + seg, n - seg // 2, seg):
            p = int(framing.find_pcap_record(buf, b, self._swap, self._nano, self._snaplen, ref_s, 4))
            if p > starts[-1]:
                starts.append(p)
        self._give_back(0, n)       # a guess's page fault maps megabytes around it (read-around)
        bounds = list(zip(starts, starts[1:] + [-1]))
        pool = ThreadPoolExecutor(2, thread_name_prefix="throttledetect-read")
        try:
            pending = [pool.submit(self._segment, a, b) for a, b in bounds[:2]]   # two parts in flight
            expected, nwarn, last_s = 24, 0, -1
            for k, (a, _) in enumerate(bounds):
                if k + 2 < len(bounds):
                    pending.append(pool.submit(self._segment, *bounds[k + 2]))
                o, table, status, rec, seg_warn, seg_nwarn, seg_last, done = pending.pop(0).result()
                if a != expected or (k > 0 and seg_nwarn):
                    for f in pending:
                        f.cancel()
                    yield from self._pcap_sequential(expected, nwarn, last_s)
                    return
                for row in seg_warn[:seg_nwarn]:
                    if nwarn < len(self._warn):
                        self._warn[nwarn] = row
                    nwarn += 1
                self._nwarn = nwarn
                self._fill(table, status, *rec)
                yield table, status, int(o)
                expected, last_s = int(o), seg_last
                if done:
                    return
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _segment(self, start: int, stop: int):
        """Frame and decode the records from `start` up to the first at or after `stop` (-1: the end)."""
        size = max(1024, ((stop if stop > 0 else len(self.buffer)) - start) // 128)
        arrays = _PcapArrays(size, self.prefix_len)
        warn = np.zeros_like(self._warn)
        o, count, nwarn, last_s = start, 0, 0, -1
        while True:
            o, count, nwarn, last_s, done = blocks.read_pcap_records(
                self.buffer, self._swap, self._nano, self._snaplen, self._linktype, blocks.BLOCK, self.prefix_len,
                o, count, nwarn, last_s, size, *arrays.args(), warn, stop)
            if done or (stop >= 0 and o >= stop):
                break
            size *= 2
            arrays = arrays.grown(size, count)
        self._give_back(start, o)
        table, status = arrays.table.take(slice(0, count)), arrays.status[:count]
        rec = (arrays.rec_off[:count], arrays.caplen[:count], arrays.wirelen[:count], arrays.ts[:count],
               np.zeros(count, np.uint16), arrays.lt[:count])
        return o, table, status, rec, warn, nwarn, last_s, done

    def _pcapng_parts(self):
        st, units, offs, snap = framing.pcapng_state()
        iface_lt = np.zeros(framing.MAX_IFACES, dtype=np.int32)
        buf, n = self.buffer, len(self.buffer)
        while True:
            size = self.chunk_records
            rec_off = np.empty(size, np.int64)
            caplen, wirelen = np.empty(size, np.uint32), np.empty(size, np.uint32)
            ts, iface = np.empty(size, np.int64), np.empty(size, np.uint16)
            count = framing.walk_pcapng_part(buf, n, True, st, units, offs, snap, rec_off, caplen, wirelen, ts,
                                             iface, iface_lt, self._warn)
            self._nwarn = int(st[framing.NG_NWARN])
            rec_off, caplen, wirelen, ts, iface = rec_off[:count], caplen[:count], wirelen[:count], ts[:count], \
                iface[:count]
            lt = iface_lt[iface].astype(np.uint16)
            self._linktypes.update(int(x) for x in iface_lt[:int(st[framing.NG_NIF_TOTAL])])
            table = PacketTable.empty(count, self.prefix_len)
            status = np.zeros(count, dtype=np.uint8)
            decode.decode_records(buf, rec_off, caplen, lt, self.prefix_len,
                                  status, table.l3, table.proto, table.src_hi, table.src_lo, table.dst_hi,
                                  table.dst_lo, table.sport, table.dport, table.ttl, table.ip_id, table.frag,
                                  table.tcp_seq, table.tcp_ack, table.tcp_flags, table.tcp_win,
                                  table.l4_off, table.payload_off, table.payload_len, table.payload_wirelen,
                                  table.prefix, table.tunnel)
            self._fill(table, status, rec_off, caplen, wirelen, ts, iface, lt)
            yield table, status, int(st[framing.NG_O])
            if st[framing.NG_DONE]:
                return

    # ------------------------------------------------------------------ per chunk
    def _fill(self, table, status, rec_off, caplen, wirelen, ts, iface, lt) -> None:
        fill_record_columns(table, ts, rec_off, caplen, wirelen, iface, lt)
        # Wireshark's dissectors where ours stop, chunk by chunk (a chunk without candidates costs
        # a numpy pass); read_capture does the same for the whole file at once
        fb = fallback.apply(self.buffer, table, status)
        for m in fb.messages:
            if m not in self._fallback_messages:
                self._fallback_messages.append(m)
        for k, v in fb.stats.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                self._fallback_stats[k] = self._fallback_stats.get(k, 0) + v
            else:
                self._fallback_stats.setdefault(k, v)
        self._fragments(table, status)

    def _fragments(self, table: PacketTable, status: np.ndarray) -> None:
        """Later fragments take the ports of their latest first fragment, earlier chunks included."""
        firsts = np.flatnonzero(table.frag == FRAG_FIRST)
        if np.any(table.frag == 2) and self._firsts is not None and len(self._firsts):
            k = len(self._firsts)
            both = PacketTable.concat([self._firsts, table])
            _assign_fragment_ports(both, np.concatenate([np.zeros(k, np.uint8), status]))
            table.sport[:] = both.sport[k:]
            table.dport[:] = both.dport[k:]
            table.frag[:] = both.frag[k:]
        else:
            _assign_fragment_ports(table, status)
        if len(firsts):
            new = table.take(firsts)
            self._firsts = new if self._firsts is None else PacketTable.concat([self._firsts, new])
            if len(self._firsts) > FRAG_CARRY:
                self._firsts = self._firsts.take(slice(len(self._firsts) - FRAG_CARRY, None))

    def _account(self, table: PacketTable, status: np.ndarray) -> None:
        self.records += len(table)
        self._counts += np.bincount(status, minlength=len(self._counts))[:len(self._counts)]
        self._bytes += int(table.wirelen.sum(dtype=np.int64))
        self._frag += int(np.count_nonzero(table.frag))
        self._frag_reassigned += int(np.count_nonzero(table.frag & 4))
        self._tunnelled += int(np.count_nonzero(table.tunnel))
        lo, hi = int(table.ts_ns.min()), int(table.ts_ns.max())
        self._first_ns = lo if self._first_ns is None else min(self._first_ns, lo)
        self._last_ns = hi if self._last_ns is None else max(self._last_ns, hi)
        unsupported = table.linktype[status == decode.STATUS_LINKTYPE]
        if len(unsupported):
            self._unsupported = getattr(self, "_unsupported", set()) | set(int(x) for x in np.unique(unsupported))

    def _give_back(self, start: int, end: int) -> None:
        """A part's pages, once decoded (whole pages inside it: its neighbours' are theirs to give)."""
        if isinstance(self._keep, mmap.mmap):
            a = -(-start // _PAGE) * _PAGE
            b = (end // _PAGE) * _PAGE
            if b > a:
                try:
                    self._keep.madvise(mmap.MADV_DONTNEED, a, b - a)
                except (OSError, ValueError, AttributeError):
                    pass

    def _release(self, end: int) -> None:
        """Give back the pages of records already handed out (they stay in the page cache)."""
        if not isinstance(self._keep, mmap.mmap):
            return
        upto = (end // _PAGE) * _PAGE
        if upto > self._released:
            try:
                self._keep.madvise(mmap.MADV_DONTNEED, self._released, upto - self._released)
            except (OSError, ValueError, AttributeError):
                return
            self._released = upto

    def _finish(self) -> None:
        warns = list(self._pre_warnings) + _warnings_from(self._warn, self._nwarn)
        warns += [ReadWarning(0, m) for m in self._fallback_messages]
        if self.records == 0:
            detail = f"; {warns[0]}" if warns else ""
            off = warns[0].offset if warns else (24 if self.format == "pcap" else 0)
            raise CaptureError(f"{self.path}: byte {off}: no readable packet in this {self.format} file{detail}"
                               f"{self._where}")
        unsupported = sorted(getattr(self, "_unsupported", ()))
        if unsupported:
            warns.append(ReadWarning(0, f"unsupported link type(s) {unsupported}: "
                                        f"{int(self._counts[decode.STATUS_LINKTYPE])} packets not decoded"))
        stats = {
            "records": self.records,
            "bytes": self._bytes,
            "file_bytes": len(self.buffer),
            "decoded": int(self._counts[decode.STATUS_OK]),
            "skipped": {s: int(self._counts[s]) for s in decode.STATUS_TEXT},
            "fragments": self._frag,
            "fragments_reassigned": self._frag_reassigned,
            "tunnelled": self._tunnelled,
            "fallback": self._fallback_stats,
        }
        fmt = self.format + (f"+{self._compression}" if self._compression else "")
        self.summary = StreamSummary(self.path, fmt, sorted(self._linktypes), warns, stats, self._first_ns,
                                     self._last_ns)
