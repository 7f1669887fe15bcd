"""read_capture: a capture file in, a Capture (PacketTable + what was skipped and why) out."""
from __future__ import annotations

import bz2
import lzma
import mmap
import os
import zlib
from dataclasses import dataclass, field

import numpy as np

from throttledetect.read import blocks, decode, fallback, framing
from throttledetect.read.table import PacketTable

DEFAULT_PREFIX = 48
_DECOMPRESS_CHUNK = 1 << 16
_POPULATE_MAX = 8 << 30
# Above this size the file is read in steps and its pages given back as they are read (memory does
# not grow with the file); populating it all at once would hold it whole.
_POPULATE_MIN_RELEASE = 256 << 20
# Packets read from one file at most: about 200 bytes of columns each, so 50 million is ~10 GB.
# Bounds the memory a decompression bomb of tiny records can claim.
_MAX_RECORDS_RAW = os.environ.get("THROTTLEDETECT_MAX_RECORDS", "").strip()
MAX_RECORDS = int(_MAX_RECORDS_RAW) if _MAX_RECORDS_RAW.isdigit() and int(_MAX_RECORDS_RAW) > 0 else 50_000_000
# A compressed file may not expand without bound (a "zip bomb" must not eat the machine).
_MAX_DECOMPRESSED_RAW = os.environ.get("THROTTLEDETECT_MAX_DECOMPRESSED", "").strip()
MAX_DECOMPRESSED = int(_MAX_DECOMPRESSED_RAW) if _MAX_DECOMPRESSED_RAW.isdigit() else 4 << 30

PCAP_MAGICS = {
    # magic as read little-endian -> (swap to big-endian?, nanosecond?)
    0xA1B2C3D4: (False, False),
    0xD4C3B2A1: (True, False),
    0xA1B23C4D: (False, True),
    0x4D3CB2A1: (True, True),
}
PCAPNG_SHB_MAGIC = b"\x0a\x0d\x0d\x0a"


class CaptureError(Exception):
    """Nothing readable: the message is one line naming the file and the byte offset."""


@dataclass
class ReadWarning:
    offset: int
    message: str

    def __str__(self) -> str:
        return f"byte {self.offset}: {self.message}"


@dataclass
class Capture:
    path: str
    format: str                 # "pcap" or "pcapng", with "+gzip"/"+xz"/"+bzip2" when compressed
    buffer: np.ndarray = field(repr=False)   # uint8 bytes of the (decompressed) file
    packets: PacketTable = field(repr=False)
    linktypes: list[int]
    warnings: list[ReadWarning]
    stats: dict
    status: np.ndarray = field(repr=False)    # decode.STATUS_* per record

    def payload(self, i: int) -> bytes:
        """Captured transport payload of packet i (empty when it has none)."""
        off = int(self.packets.payload_off[i])
        if off < 0:
            return b""
        return self.buffer[off:off + int(self.packets.payload_len[i])].tobytes()

    def skipped_summary(self) -> str:
        """One sentence on what was not decoded, for users ('' when everything was)."""
        parts = [f"{n} {decode.STATUS_TEXT[s]}" for s, n in self.stats["skipped"].items() if n]
        return ", ".join(parts)


def _open_bytes(source, path: str, spill: bool = False) -> tuple[np.ndarray, str, list[ReadWarning], object]:
    """Map or decompress the file (a path, or a binary file object that can seek, such as a spooled
    pipe). Returns (bytes as uint8 array, compression, warnings, keepalive); `path` names it in messages.

    spill: the streaming reader's way. Compressed input is decompressed into an unlinked temporary
    file rather than memory, and nothing is mapped eagerly, so the pages it has read can be given
    back (madvise) and the reader's memory does not grow with the file."""
    if hasattr(source, "read"):
        f = os.fdopen(os.dup(source.fileno()), "rb")    # our own descriptor: closing it leaves the caller's
        f.seek(0)
    else:
        try:
            f = open(source, "rb")
        except OSError as e:
            raise CaptureError(f"{path}: byte 0: cannot open: {e.strerror or e}") from None
    with f:
        head = f.read(6)
        if head[:2] == b"\x1f\x8b":
            f.seek(0)
            if spill:
                return _decompress_to_map(f, path, "gzip")
            data, warns = _decompress(f, path, "gzip")
            return np.frombuffer(data, dtype=np.uint8), "gzip", warns, data
        if head == b"\xfd7zXZ\x00":
            f.seek(0)
            if spill:
                return _decompress_to_map(f, path, "xz")
            data, warns = _decompress(f, path, "xz")
            return np.frombuffer(data, dtype=np.uint8), "xz", warns, data
        if head[:3] == b"BZh":
            f.seek(0)
            if spill:
                return _decompress_to_map(f, path, "bzip2")
            data, warns = _decompress(f, path, "bzip2")
            return np.frombuffer(data, dtype=np.uint8), "bzip2", warns, data
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            return np.zeros(0, dtype=np.uint8), "", [], None
        # MAP_POPULATE maps the (page-cached) file in one go instead of one fault per 4 kB page:
        # measured 0.40 s steady against 0.38-1.36 s for a 740 MB capture. Not for files that may
        # exceed memory, where eager population would only thrash.
        populate = getattr(mmap, "MAP_POPULATE", 0) if size <= _POPULATE_MAX and not spill else 0
        populate = 0 if size > _POPULATE_MIN_RELEASE else populate
        mm = mmap.mmap(f.fileno(), 0, flags=mmap.MAP_SHARED | populate, prot=mmap.PROT_READ)
        return np.frombuffer(mm, dtype=np.uint8), "", [], mm


def _new_decompressor(kind: str):
    if kind == "gzip":
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if kind == "xz":
        return lzma.LZMADecompressor()
    return bz2.BZ2Decompressor()


class _FileSink:
    """Decompressed bytes appended to a file (`sink += data`, len(sink)), as a bytearray would take them."""

    def __init__(self, f):
        self.f = f
        self.size = 0

    def __iadd__(self, data: bytes) -> "_FileSink":
        self.f.write(data)
        self.size += len(data)
        return self

    def __len__(self) -> int:
        return self.size


def _decompress_to_map(f, path: str, kind: str):
    import tempfile
    spool = tempfile.TemporaryFile(prefix="throttledetect-decompressed-")
    sink, warns = _decompress(f, path, kind, _FileSink(spool))
    spool.flush()
    mm = mmap.mmap(spool.fileno(), 0, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
    spool.close()     # the mapping keeps the unlinked file's pages
    return np.frombuffer(mm, dtype=np.uint8), kind, warns, mm


def _decompress(f, path: str, kind: str, out=None) -> tuple[bytes, list[ReadWarning]]:
    """Stream-decompress, keeping everything produced before damage or a cut-off end.

    Small input chunks bound how far one step can overshoot the size limit (a "bomb").
    Concatenated streams (gzip -c a >> b) are one capture to a reader.
    """
    if _MAX_DECOMPRESSED_RAW and not _MAX_DECOMPRESSED_RAW.isdigit():
        raise CaptureError(f"{path}: byte 0: THROTTLEDETECT_MAX_DECOMPRESSED={_MAX_DECOMPRESSED_RAW!r} "
                           "is not a whole number of bytes")
    out = bytearray() if out is None else out
    warns: list[ReadWarning] = []
    dec = None
    consumed = 0
    while len(out) < MAX_DECOMPRESSED:
        chunk = f.read(_DECOMPRESS_CHUNK)
        if not chunk:
            break
        data = chunk
        while data:
            if dec is None:
                if not data.strip(b"\0"):
                    break  # zero padding after the last stream
                dec = _new_decompressor(kind)
            try:
                out += dec.decompress(data)
            except (zlib.error, lzma.LZMAError, OSError, EOFError, ValueError) as e:
                warns.append(ReadWarning(consumed, f"{kind} data corrupt ({e}); using the {len(out)} bytes before it"))
                return _finish(out, warns, path, kind, consumed)
            data = dec.unused_data if dec.eof else b""
            if dec.eof:
                dec = None
        consumed += len(chunk)
    else:
        warns.append(ReadWarning(consumed, f"decompressed size limit reached ({MAX_DECOMPRESSED} bytes, "
                                           "THROTTLEDETECT_MAX_DECOMPRESSED); the rest is ignored"))
        return _finish(out, warns, path, kind, consumed)
    if dec is not None:
        warns.append(ReadWarning(consumed, f"{kind} stream ends early (file cut short); "
                                           f"using the {len(out)} bytes it yielded"))
    return _finish(out, warns, path, kind, consumed)


def _finish(out: bytearray, warns: list[ReadWarning], path: str, kind: str, consumed: int):
    if not len(out):
        detail = f": {warns[0].message}" if warns else ""
        raise CaptureError(f"{path}: byte {consumed}: {kind} stream yielded no data{detail}")
    return (bytes(out) if isinstance(out, bytearray) else out), warns


class _PcapArrays:
    """The index and column arrays the compiled pcap reader fills, and how they grow."""

    def __init__(self, size: int, prefix_len: int):
        self.table = t = PacketTable.empty(size, prefix_len)
        # the record index is written straight into the table's columns of the same values
        # (fill_record_columns then copies each onto itself): not 26 more bytes a record beside
        # them while the file is read (260 MB on 10 M packets, issue 15)
        self.rec_off, self.caplen, self.wirelen, self.ts, self.lt = t.frame_off, t.caplen, t.wirelen, t.ts_ns, t.linktype
        self.status = np.zeros(size, dtype=np.uint8)
        self.prefix_len = prefix_len

    def args(self):
        t = self.table
        return (self.rec_off, self.caplen, self.wirelen, self.ts, self.lt, self.status, t.l3, t.proto, t.src_hi,
                t.src_lo, t.dst_hi, t.dst_lo, t.sport, t.dport, t.ttl, t.ip_id, t.frag, t.tcp_seq, t.tcp_ack,
                t.tcp_flags, t.tcp_win, t.l4_off, t.payload_off, t.payload_len, t.payload_wirelen, t.prefix,
                t.tunnel)

    def grown(self, size: int, count: int) -> "_PcapArrays":
        new = _PcapArrays(size, self.prefix_len)
        for old_a, new_a in zip(self.args(), new.args()):
            new_a[:count] = old_a[:count]
        return new


def _index_arrays(bound: int):
    return (np.empty(bound, dtype=np.int64), np.empty(bound, dtype=np.uint32),
            np.empty(bound, dtype=np.uint32), np.empty(bound, dtype=np.int64))


def _warnings_from(warn: np.ndarray, nwarn: int, base_offset: int = 0) -> list[ReadWarning]:
    out = []
    for off, code, arg in warn[: min(nwarn, len(warn))]:
        out.append(ReadWarning(int(off) + base_offset, framing.WARNING_TEXT[int(code)].format(arg=int(arg))))
    if nwarn > len(warn):
        out.append(ReadWarning(int(warn[-1, 0]), f"... and {nwarn - len(warn)} more warnings like these"))
    return out


_RELEASE_STEP = 1 << 18     # records read between two give-backs of the pages behind them


def _release(keep, released: int, upto: int) -> int:
    """madvise(DONTNEED) the mapped pages in [released, upto): they stay in the page cache, and a
    later look at a payload maps its page back. Returns the new mark."""
    if not isinstance(keep, mmap.mmap):
        return released
    upto = (upto // mmap.PAGESIZE) * mmap.PAGESIZE
    if upto > released:
        try:
            keep.madvise(mmap.MADV_DONTNEED, released, upto - released)
        except (OSError, ValueError, AttributeError):
            return released
        return upto
    return released


def _where(compression: str) -> str:
    return f" (in the {compression}-decompressed data)" if compression else ""


def probe_format(buf: np.ndarray, path: str, where: str = "") -> tuple[str, bool, bool, int, int]:
    """(format, byte-swapped, nanosecond, snaplen, linktype) from a capture's first bytes (pcap's
    fields are 0 for pcapng), or a CaptureError naming the file and byte offset."""
    n = len(buf)
    head = bytes(buf[:4])
    if n < 4:
        raise CaptureError(f"{path}: byte 0: too short to be a capture ({n} bytes){where}")
    magic = int.from_bytes(head, "little")
    if magic in PCAP_MAGICS:
        swap, nano = PCAP_MAGICS[magic]
        if n < 24:
            raise CaptureError(f"{path}: byte {n}: pcap file header cut short ({n} of 24 bytes){where}")
        order = "big" if swap else "little"
        snaplen = int.from_bytes(bytes(buf[16:20]), order)
        linktype = int.from_bytes(bytes(buf[20:24]), order) & 0xFFFF  # upper 16 bits: FCS length, reserved (libpcap LT_LINKTYPE)
        return "pcap", swap, nano, snaplen, linktype
    if head == PCAPNG_SHB_MAGIC:
        return "pcapng", False, False, 0, 0
    raise CaptureError(f"{path}: byte 0: not a pcap or pcapng capture (starts with {head.hex(' ')}){where}")


def fill_record_columns(table: PacketTable, ts, rec_off, caplen, wirelen, iface, lt) -> None:
    """The columns a record's header gives (the decoder fills the rest)."""
    table.ts_ns[:] = ts
    table.frame_off[:] = rec_off
    table.caplen[:] = caplen
    table.wirelen[:] = wirelen
    table.iface[:] = iface
    table.linktype[:] = lt


def read_capture(path, *, prefix_len: int = DEFAULT_PREFIX, name: str | None = None,
                 limit: int | None = None) -> Capture:
    """Read a pcap or pcapng file (optionally gzip/xz/bzip2 compressed) into a Capture.

    `path` is a file name or a seekable binary file object (stdin spooled to a temporary file);
    `name` is what messages and Capture.path call it (default: the path, or the object's name).
    Damaged records are skipped with a warning naming their byte offset, and reading resumes at
    the next plausible record; CaptureError is raised only when nothing at all is readable.
    `limit`: read only the first `limit` bytes (a capture still being written: live verdicts).
    """
    source = path
    if hasattr(source, "read"):
        path = name or str(getattr(source, "name", "<stream>"))
    else:
        source = os.fspath(source)
        path = name or source
    buf, compression, warns, keep = _open_bytes(source, path, spill=limit is not None)
    if limit is not None:
        buf = buf[:limit]
    n = len(buf)
    where = _where(compression)
    fmt, swap, nano, snaplen, linktype = probe_format(buf, path, where)
    warn = np.zeros((framing.MAX_WARNINGS, 3), dtype=np.int64)
    if fmt == "pcap":
        # One compiled pass; arrays start at a typical record density and double when the file
        # holds more (a damaged or hostile file cannot make us reserve memory for records it lacks).
        most = max(0, (n - 24) // 16)
        size = min(most, MAX_RECORDS, max(1 << 16, (n - 24) // 256))
        arrays = _PcapArrays(size, prefix_len)
        o, count, nwarn, last_s = 24, 0, 0, -1
        released = 0
        while True:
            # in steps, giving back the pages read so far: the file is not held in memory whole
            o, count, nwarn, last_s, done = blocks.read_pcap_records(
                buf, swap, nano, snaplen, linktype, blocks.BLOCK, prefix_len, o, count, nwarn, last_s,
                min(size, count + _RELEASE_STEP), *arrays.args(), warn)
            released = _release(keep, released, o)
            if done:
                break
            if count < size:
                continue
            if size >= MAX_RECORDS:
                warns.append(ReadWarning(int(o), f"record limit reached ({MAX_RECORDS} packets, "
                                                 "THROTTLEDETECT_MAX_RECORDS); the rest of the file is ignored"))
                break
            size = min(MAX_RECORDS, max(size * 2, 1))
            arrays = arrays.grown(size, count)
        table, status = arrays.table.take(slice(0, count)), arrays.status[:count]
        rec_off, caplen, wirelen = arrays.rec_off[:count], arrays.caplen[:count], arrays.wirelen[:count]
        ts, lt = arrays.ts[:count], arrays.lt[:count]
        iface = np.zeros(count, dtype=np.uint16)
        linktypes = [linktype]
        decoded = True
    else:
        # Two passes (count, then fill): exact arrays, whatever the block sizes.
        iface_lt = np.zeros(framing.MAX_IFACES, dtype=np.int32)
        none64, none32, none16 = np.zeros(0, np.int64), np.zeros(0, np.uint32), np.zeros(0, np.uint16)
        count, _, _ = framing.walk_pcapng(buf, False, none64, none32, none32, none64, none16, iface_lt, warn)
        if count > MAX_RECORDS:
            warns.append(ReadWarning(0, f"record limit reached ({MAX_RECORDS} of {count} packets, "
                                        "THROTTLEDETECT_MAX_RECORDS); the rest of the file is ignored"))
            count = MAX_RECORDS
        rec_off, caplen, wirelen, ts = _index_arrays(count)
        iface = np.empty(count, dtype=np.uint16)
        warn[:] = 0
        count, nwarn, nif = framing.walk_pcapng(buf, True, rec_off, caplen, wirelen, ts, iface, iface_lt, warn)
        lt = iface_lt[iface].astype(np.uint16)
        linktypes = sorted(set(int(x) for x in iface_lt[:nif]))
        decoded = False

    warns += _warnings_from(warn, nwarn)
    if count == 0:
        detail = f"; {warns[0]}" if warns else ""
        off = warns[0].offset if warns else (24 if fmt == "pcap" else 0)
        raise CaptureError(f"{path}: byte {off}: no readable packet in this {fmt} file{detail}{where}")

    if not decoded:
        table = PacketTable.empty(count, prefix_len)
        status = np.zeros(count, dtype=np.uint8)
        decode.decode_records(buf, rec_off, caplen, lt, prefix_len,
                              status, table.l3, table.proto, table.src_hi, table.src_lo, table.dst_hi, table.dst_lo,
                              table.sport, table.dport, table.ttl, table.ip_id, table.frag,
                              table.tcp_seq, table.tcp_ack, table.tcp_flags, table.tcp_win,
                              table.l4_off, table.payload_off, table.payload_len, table.payload_wirelen,
                              table.prefix, table.tunnel)
    fill_record_columns(table, ts, rec_off, caplen, wirelen, iface, lt)
    fb = fallback.apply(buf, table, status)     # Wireshark's dissectors where ours stop (read/fallback.py)
    warns += [ReadWarning(0, m) for m in fb.messages]
    _assign_fragment_ports(table, status)

    counts = np.bincount(status, minlength=len(decode.STATUS_TEXT) + 1)
    unsupported = sorted(set(int(x) for x in np.unique(lt[status == decode.STATUS_LINKTYPE])))
    if unsupported:
        warns.append(ReadWarning(0, f"unsupported link type(s) {unsupported}: "
                                    f"{int(counts[decode.STATUS_LINKTYPE])} packets not decoded"))
    stats = {
        "records": count,
        "bytes": int(table.wirelen.sum(dtype=np.int64)),
        "file_bytes": n,
        "decoded": int(counts[decode.STATUS_OK]),
        "skipped": {s: int(counts[s]) for s in decode.STATUS_TEXT},
        "fragments": int(np.count_nonzero(table.frag)),
        "fragments_reassigned": int(np.count_nonzero(table.frag & 4)),
        "tunnelled": int(np.count_nonzero(table.tunnel)),
        "fallback": fb.stats,
    }
    cap = Capture(path=path, format=fmt + (f"+{compression}" if compression else ""), buffer=buf,
                  packets=table, linktypes=linktypes, warnings=warns, stats=stats, status=status)
    cap._keepalive = keep  # the mmap or bytes behind `buffer`
    if isinstance(keep, mmap.mmap):
        # Every page was read once; later stages touch the payloads of a few packets only. The
        # pages stay in the page cache (a touch maps one back), but not in this process's memory.
        try:
            keep.madvise(mmap.MADV_DONTNEED)
        except (OSError, ValueError, AttributeError):
            pass
    return cap


def _assign_fragment_ports(table: PacketTable, status: np.ndarray) -> None:
    """Give later IP fragments the ports of their first fragment, so they join its flow.

    Fragments belong together by (src, dst, protocol, IP id) (RFC 791 / RFC 8200); ids recur
    over a long capture, so each later fragment takes the latest first fragment *before* it.
    A later fragment whose first fragment is not in the capture keeps ports 0 and no flow.
    """
    rows = np.flatnonzero((table.frag == 1) | (table.frag == 2))
    if not np.any(table.frag[rows] == 2):
        return
    cols = [getattr(table, c)[rows] for c in ("src_hi", "src_lo", "dst_hi", "dst_lo", "proto", "ip_id")]
    order = np.lexsort([rows] + cols[::-1])       # exact tuple first, file order last
    r = rows[order]
    same = np.ones(len(r), dtype=bool)            # same tuple as the previous row in sort order
    same[0] = False
    for c in cols:
        cs = c[order]
        same[1:] &= cs[1:] == cs[:-1]
    group_start = np.maximum.accumulate(np.where(~same, np.arange(len(r)), 0))
    is_first = table.frag[r] == 1
    latest_first = np.maximum.accumulate(np.where(is_first, np.arange(len(r)), -1))
    ok = (table.frag[r] == 2) & (latest_first >= group_start)
    later, first = r[ok], r[latest_first[ok]]
    table.sport[later] = table.sport[first]
    table.dport[later] = table.dport[first]
    table.frag[later] |= 4
