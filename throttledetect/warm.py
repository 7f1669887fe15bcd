"""Compile the hot loops once, before a capture is waiting for them.

The decoding and flow loops are compiled by numba on first use and cached on disk (jit.py). On a
machine where they were never compiled, the first command pays for it: about 20 s on 2 cores.
For a file that is a slow first run; for live verdicts it was worse: the first look at a call
compiled for 19 s, so a fresh installation printed no verdict during a 16 s call at all (the
shaped sample, fed at real pace, had its first and only verdicts at the end).

warm_up() runs the analyze path (read, flows, classify, metrics, detectors, document) on a tiny
capture made here, in pcap and in pcapng (tcpdump and dumpcap write one each), so every loop a
capture will need is compiled, or loaded from the cache, before the capture arrives. `make venv`
runs it once after installing (`python -m throttledetect.warm`), and live verdicts run it before
their first look (live.py). With the cache warm it takes about a second: the cache loads that the
first look would otherwise pay.
"""
from __future__ import annotations

import contextlib
import os
import struct
import sys
import tempfile
import time

LOCAL_ADDR = bytes([192, 168, 88, 2])
REMOTE_ADDR = bytes([203, 0, 113, 10])


def internet_checksum(b: bytes) -> int:
    """RFC 1071's ones' complement sum (IPv4 header checksum); the tests build packets with it too."""
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def _ipv4(src: bytes, dst: bytes, proto: int, l4: bytes) -> bytes:
    head = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 0, 0x4000, 64, proto, 0, src, dst)
    head = head[:10] + struct.pack("!H", internet_checksum(head)) + head[12:]
    return b"\x02\0\0\0\0\x01\x02\0\0\0\0\x02\x08\x00" + head + l4


def udp_frame(src, dst, sport, dport, payload: bytes) -> bytes:
    """An Ethernet frame of an IPv4 UDP datagram (UDP checksum 0: none)."""
    return _ipv4(src, dst, 17, struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload)


def _tcp(src, dst, sport, dport, seq, ack, flags, payload=b"", options=b"") -> bytes:
    off = (20 + len(options)) // 4
    head = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, off << 4, flags, 65535, 0, 0) + options
    return _ipv4(src, dst, 6, head + payload)


def tiny_call() -> list[tuple[float, bytes]]:
    """(time, Ethernet frame) of a few seconds of a call: STUN, RTP both ways at 20 ms with RTCP
    and losses inbound, a DNS answer and a TCP connection with options and data (every decoder
    the analyze path has)."""
    frames = []
    dns_q = struct.pack("!HHHHHH", 7, 0x0100, 1, 0, 0, 0) + b"\x04call\x07example\x00\x00\x01\x00\x01"
    dns_a = (struct.pack("!HHHHHH", 7, 0x8180, 1, 1, 0, 0) + b"\x04call\x07example\x00\x00\x01\x00\x01"
             + b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04" + REMOTE_ADDR)
    frames.append((0.000, udp_frame(LOCAL_ADDR, bytes([192, 168, 88, 1]), 40000, 53, dns_q)))
    frames.append((0.010, udp_frame(bytes([192, 168, 88, 1]), LOCAL_ADDR, 53, 40000, dns_a)))
    txid = bytes(range(12))
    binding = struct.pack("!HHI", 0x0001, 0, 0x2112A442) + txid
    frames.append((0.020, udp_frame(LOCAL_ADDR, REMOTE_ADDR, 50000, 3478, binding)))
    frames.append((0.060, udp_frame(REMOTE_ADDR, LOCAL_ADDR, 3478, 50000,
                                    struct.pack("!HHI", 0x0101, 12, 0x2112A442) + txid
                                    + struct.pack("!HHBBH4s", 0x0020, 8, 0, 1, 50000 ^ 0x2112, LOCAL_ADDR))))
    for k in range(200):                      # 4 s of 20 ms frames each way
        t = 0.1 + 0.02 * k
        for src, dst, sp, dp, ssrc, lag in ((LOCAL_ADDR, REMOTE_ADDR, 50000, 3478, 0x1111, 0.0),
                                            (REMOTE_ADDR, LOCAL_ADDR, 3478, 50000, 0x2222, 0.003)):
            if ssrc == 0x2222 and k > 60 and k % 4 == 0:
                continue                      # losses inbound: the loss and policing tests run
            rtp = struct.pack("!BBHII", 0x80, 111, k, 960 * k, ssrc) + bytes(60 + (k % 7))
            frames.append((t + lag, udp_frame(src, dst, sp, dp, rtp)))
        if k % 50 == 25:
            sr = struct.pack("!BBHIIIIII", 0x80, 200, 6, 0x1111, 0, 0, 960 * k, k, 64 * k)
            frames.append((t + 0.001, udp_frame(LOCAL_ADDR, REMOTE_ADDR, 50000, 3478, sr)))
    opts = b"\x02\x04\x05\xb4\x04\x02\x08\x0a\0\0\0\1\0\0\0\0\x01\x03\x03\x07"
    frames.append((0.200, _tcp(LOCAL_ADDR, REMOTE_ADDR, 41000, 443, 100, 0, 0x02, options=opts)))
    frames.append((0.240, _tcp(REMOTE_ADDR, LOCAL_ADDR, 443, 41000, 500, 101, 0x12, options=opts)))
    frames.append((0.241, _tcp(LOCAL_ADDR, REMOTE_ADDR, 41000, 443, 101, 501, 0x10)))
    for k in range(20):
        data = _tcp(REMOTE_ADDR, LOCAL_ADDR, 443, 41000, 501 + 1000 * k, 101, 0x18, bytes(1000))
        frames.append((0.3 + 0.05 * k, data))
        frames.append((0.34 + 0.05 * k, _tcp(LOCAL_ADDR, REMOTE_ADDR, 41000, 443, 101, 1501 + 1000 * k, 0x10)))
    return sorted(frames, key=lambda f: f[0])


T0_NS = 1_700_000_000 * 10**9


def write_tiny_call(folder, frames=None) -> tuple[str, str]:
    """The tiny call (or the given (time, frame) list) written into folder as a pcap and a pcapng
    (write.py's writers); returns both paths."""
    from throttledetect.write import write_pcap, write_pcapng
    frames = tiny_call() if frames is None else frames
    ts_ns = [T0_NS + int(round(t * 1e9)) for t, _ in frames]
    pcap, pcapng = os.path.join(folder, "tiny.pcap"), os.path.join(folder, "tiny.pcapng")
    write_pcap(pcap, [f for _, f in frames], ts_ns)
    write_pcapng(pcapng, [(0, ns // 1000, f) for ns, (_, f) in zip(ts_ns, frames)], [(1, None)])
    return pcap, pcapng


def _on_first_compile(callback):
    """A context in which callback() is called once, when numba starts compiling a function (a
    cache miss; loading compiled code from the cache is no compile)."""
    from throttledetect.jit import JIT_ENABLED
    if callback is None or not JIT_ENABLED:
        return contextlib.nullcontext()
    from numba.core import event

    class FirstCompile(event.Listener):
        fired = False

        def on_start(self, ev):
            if not self.fired:
                self.fired = True
                callback()

        def on_end(self, ev):
            pass
    return event.install_listener("numba:compile", FirstCompile())


def warm_up(settings: dict | None = None, on_compile=None) -> float:
    """Run the analyze path on the tiny call, as pcap and as pcapng; returns the seconds it took
    (about one with the compiled loops cached, 20-30 when they had to be compiled). on_compile()
    is called once if something has to be compiled, before it is."""
    start = time.monotonic()
    with _on_first_compile(on_compile):
        _analyze_tiny_call(settings or {})
    return time.monotonic() - start


def _analyze_tiny_call(settings: dict) -> None:
    from throttledetect.pipeline import analyze_capture, to_document
    from throttledetect.read import read_capture
    with tempfile.TemporaryDirectory(prefix="throttledetect-warm-") as folder:
        for path in write_tiny_call(folder):
            to_document([analyze_capture(read_capture(path, name="<warm-up>"), **settings)], include_metrics=True)
            with open(path, "rb") as f:
                read_capture(f, name="<warm-up>", limit=os.path.getsize(path))     # as the live looks read


def main() -> None:
    took = warm_up(on_compile=lambda: print("throttledetect: compiling the packet decoder for this machine "
                                            "(once; 20-30 s on 2 cores)", file=sys.stderr, flush=True))
    from throttledetect.jit import CACHE
    where = CACHE.path if CACHE.path else "memory only (no writable cache place: every run compiles)"
    print(f"throttledetect: compiled loops ready in {took:.1f} s (cache: {where})", file=sys.stderr)


if __name__ == "__main__":
    main()
