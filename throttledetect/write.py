"""Writing captures: classic pcap (the simulator's output) and pcapng (tests, multi-interface).

Formats as in throttledetect.read.framing. Timestamps are written with nanosecond resolution
(magic 0xA1B23C4D) unless asked otherwise, so re-timed packets keep their exact times.
"""
from __future__ import annotations

import struct
from typing import Iterable, Sequence

import numpy as np

from throttledetect.jit import JIT_ENABLED, njit
from throttledetect.read.capture import Capture

PCAP_MAGIC_US = 0xA1B2C3D4
PCAP_MAGIC_NS = 0xA1B23C4D


def pcap_header(linktype: int, *, nano: bool = True, big_endian: bool = False, snaplen: int = 262144) -> bytes:
    e = ">" if big_endian else "<"
    return struct.pack(e + "IHHiIII", PCAP_MAGIC_NS if nano else PCAP_MAGIC_US, 2, 4, 0, 0, snaplen, linktype)


def write_pcap(path, frames: Sequence[bytes], ts_ns: Sequence[int], linktype: int = 1, *,
               wirelens: Sequence[int] | None = None, nano: bool = True, big_endian: bool = False) -> None:
    """Write frames (bytes) with their epoch-nanosecond timestamps as one classic pcap file."""
    e = ">" if big_endian else "<"
    with open(path, "wb") as f:
        f.write(pcap_header(linktype, nano=nano, big_endian=big_endian))
        for k, (frame, t) in enumerate(zip(frames, ts_ns)):
            t = int(t)
            frac = t % 1_000_000_000 if nano else (t % 1_000_000_000) // 1000
            wl = len(frame) if wirelens is None else int(wirelens[k])
            f.write(struct.pack(e + "IIII", t // 1_000_000_000, frac, len(frame), wl))
            f.write(frame)


def write_pcapng(path, packets: Iterable[tuple[int, int, bytes]], interfaces: Sequence[tuple[int, int | None]], *,
                 big_endian: bool = False) -> None:
    """Write a one-section pcapng file.

    interfaces: (linktype, if_tsresol byte or None for the default microseconds) per interface id.
    packets: (interface id, timestamp in that interface's units, frame) as enhanced packet blocks.
    """
    e = ">" if big_endian else "<"

    def block(btype: int, body: bytes) -> bytes:
        body += b"\0" * (-len(body) % 4)
        n = len(body) + 12
        return struct.pack(e + "II", btype, n) + body + struct.pack(e + "I", n)

    with open(path, "wb") as f:
        f.write(block(0x0A0D0D0A, struct.pack(e + "IHHq", 0x1A2B3C4D, 1, 0, -1)))
        for linktype, tsresol in interfaces:
            opts = b""
            if tsresol is not None:
                opts = struct.pack(e + "HHB", 9, 1, tsresol) + b"\0" * 3 + struct.pack(e + "HH", 0, 0)
            f.write(block(1, struct.pack(e + "HHI", linktype, 0, 262144) + opts))
        for iface, ts, frame in packets:
            body = struct.pack(e + "IIIII", iface, ts >> 32, ts & 0xFFFFFFFF, len(frame), len(frame)) + frame
            f.write(block(6, body))


@njit
def _assemble(buffer, frame_off, caplen, wirelen, ts_ns, starts, out):
    """Classic-pcap records (nanosecond, little-endian) for the given frames, at `starts` in `out`."""
    for i in range(len(frame_off)):
        p = starts[i]
        sec = ts_ns[i] // 1_000_000_000
        frac = ts_ns[i] - sec * 1_000_000_000
        for j in range(4):
            out[p + j] = (sec >> (8 * j)) & 0xFF
            out[p + 4 + j] = (frac >> (8 * j)) & 0xFF
            out[p + 8 + j] = (caplen[i] >> (8 * j)) & 0xFF
            out[p + 12 + j] = (wirelen[i] >> (8 * j)) & 0xFF
        src = frame_off[i]
        for j in range(caplen[i]):
            out[p + 16 + j] = buffer[src + j]


def pcap_records(buffer: np.ndarray, frame_off, caplen, wirelen, ts_ns) -> tuple[np.ndarray, np.ndarray]:
    """Bytes of classic-pcap records (no file header) and each record's start offset."""
    caplen = np.asarray(caplen, dtype=np.int64)
    starts = np.zeros(len(caplen) + 1, dtype=np.int64)
    np.cumsum(caplen + 16, out=starts[1:])
    out = np.empty(int(starts[-1]), dtype=np.uint8)
    frame_off = np.asarray(frame_off, dtype=np.int64)
    ts_ns = np.asarray(ts_ns, dtype=np.int64)
    if JIT_ENABLED:
        _assemble(buffer, frame_off, caplen, np.asarray(wirelen, dtype=np.int64), ts_ns, starts, out)
        return out, starts[:-1]
    # interpreted runs (THROTTLEDETECT_NO_JIT=1): the same bytes, gathered with numpy
    hdr = np.zeros(len(caplen), dtype=[("sec", "<u4"), ("frac", "<u4"), ("incl", "<u4"), ("orig", "<u4")])
    hdr["sec"] = ts_ns // 1_000_000_000
    hdr["frac"] = ts_ns % 1_000_000_000
    hdr["incl"] = caplen
    hdr["orig"] = wirelen
    out[(starts[:-1, None] + np.arange(16)).ravel()] = hdr.view(np.uint8)
    first = np.concatenate(([0], np.cumsum(caplen)[:-1]))
    total = int(caplen.sum())
    dst = np.repeat(starts[:-1] + 16 - first, caplen) + np.arange(total)
    out[dst] = buffer[np.repeat(frame_off - first, caplen) + np.arange(total)]
    return out, starts[:-1]


def write_rows(cap: Capture, rows: np.ndarray, ts_ns: np.ndarray, path) -> None:
    """Write the given packet rows of a capture, re-timed to ts_ns, as a nanosecond pcap.

    The frame copy is compiled (no index array per byte): a 2M-packet capture takes about a second."""
    t = cap.packets
    rows = np.asarray(rows, dtype=np.int64)
    lts = np.unique(t.linktype[rows])
    if len(lts) > 1:
        raise ValueError("rows span several link types; classic pcap holds one")
    linktype = int(lts[0]) if len(rows) else (cap.linktypes[0] if cap.linktypes else 1)
    out, _ = pcap_records(cap.buffer, t.frame_off[rows], t.caplen[rows], t.wirelen[rows], ts_ns)
    with open(path, "wb") as f:
        f.write(pcap_header(linktype, nano=True))
        f.write(memoryview(out))
