"""Paced call traffic over plain sockets, run once inside each namespace (client and server).

What one call consists of (ports are the server's; the client binds fixed ports so the truth file can
name every 5-tuple in advance):

- audio flow  client:50102 <-> server:3478/udp  ICE-style STUN Binding checks both ways at start (RFC 5389
  header, magic cookie, USERNAME/PRIORITY/ICE-CONTROLLING|CONTROLLED, MESSAGE-INTEGRITY, FINGERPRINT; the
  response carries XOR-MAPPED-ADDRESS), then RTP v2 PT 111 (Opus-like: 48 kHz clock, 20 ms frames, 80-160
  byte payloads, continuous seq/timestamp) both ways, RTCP SR/RR+SDES multiplexed on the same ports
  (rtcp-mux) about once a second, consent-freshness STUN checks every ~5 s, RTCP BYE at the end.
- video flow  client:50104 <-> server:3479/udp  the same with RTP PT 96 (VP8-like descriptor, 90 kHz clock,
  30 frames/s, each frame sent as a burst of packets of up to ~1150 bytes, a key frame 4x larger every
  3 s); rates per direction are set separately (0 = that direction sends RTCP RR only).
- TCP control  client:50300 -> server:443/tcp   TLS-application-data-like records at a low paced rate.
- UDP control  client:50200 <-> server:443/udp  non-RTP (QUIC-short-header-like) datagrams server->client
  with an embedded counter, small acks back.

The client starts media on a flow once its STUN check got an answer; the server starts once it sees the
client's first check. If no packet arrives on the audio flow for `media_timeout` seconds, a side treats
the call as dropped: it stops media and RTCP, and (client) keeps sending unanswered STUN Binding requests
on the RFC 5389 retransmission schedule (0.5, 1.5, 3.5, 7.5 ... s), as an app retrying would.

Pacing: one event loop per process; it sleeps in select() until ~1 ms before the next send and spins for
the rest (time.perf_counter), so packets leave within tens of microseconds of their schedule. Each
sender's lateness is reported. Nothing adapts to loss: rates are fixed, so the truth stays known.
"""
from __future__ import annotations

import argparse
import errno
import hashlib
import heapq
import hmac
import itertools
import json
import math
import random
import select
import socket
import struct
import sys
import time
import zlib
from dataclasses import asdict, dataclass

AUDIO_SERVER_PORT = 3478
VIDEO_SERVER_PORT = 3479
CTL_SERVER_PORT = 443
AUDIO_CLIENT_PORT = 50102
VIDEO_CLIENT_PORT = 50104
UDPCTL_CLIENT_PORT = 50200
TCP_CLIENT_PORT = 50300

PT_AUDIO = 111
PT_VIDEO = 96
AUDIO_CLOCK = 48000
VIDEO_CLOCK = 90000
AUDIO_PTIME = 0.020
VIDEO_FPS = 30
VIDEO_MAX_PAYLOAD = 1150
STUN_COOKIE = 0x2112A442
SPIN_S = 0.0012
RECONNECT_S = 2.5  # a disconnected client starts a new STUN transaction this often


@dataclass
class CallConfig:
    role: str = "client"
    client_ip: str = "192.168.88.2"
    server_ip: str = "203.0.113.10"
    start_epoch: float = 0.0          # wall-clock time at which the client starts the call
    seconds: float = 10.0             # call length (client); the server stays up a little longer
    seed: int = 1
    video_down_kbps: float = 500.0    # server -> client RTP payload rate (0 = no video that way)
    video_up_kbps: float = 100.0      # client -> server
    audio: bool = True
    tcp_kbps: float = 32.0            # server -> client control records
    udpctl_kbps: float = 48.0         # server -> client control datagrams
    media_timeout: float = 5.0
    linger: float = 2.0               # seconds to keep sockets open, silent, after the call
    stats_path: str = ""

    @property
    def video(self) -> bool:
        return self.video_down_kbps > 0 or self.video_up_kbps > 0


def nominal_rates(cfg: CallConfig) -> dict:
    """Expected link-layer bit rates (Ethernet+IP+UDP+RTP headers included) of the call's flows."""
    hdr = 14 + 20 + 8 + 12
    audio = (hdr + 120) * 8 / AUDIO_PTIME if cfg.audio else 0.0

    def video(kbps):
        if kbps <= 0:
            return 0.0
        frame = kbps * 1000 / 8 / VIDEO_FPS
        pkts = max(1.0, math.ceil(frame / VIDEO_MAX_PAYLOAD)) * VIDEO_FPS
        return kbps * 1000 + pkts * (hdr + 4) * 8

    return {"audio_bps_each_way": round(audio), "video_down_bps": round(video(cfg.video_down_kbps)),
            "video_up_bps": round(video(cfg.video_up_kbps)),
            "media_down_bps": round(audio + video(cfg.video_down_kbps)),
            "media_up_bps": round(audio + video(cfg.video_up_kbps))}


# -- STUN (RFC 5389 / ICE RFC 8445) ---------------------------------------------------------------
def _attr(t: int, v: bytes) -> bytes:
    return struct.pack("!HH", t, len(v)) + v + b"\0" * (-len(v) % 4)


def stun_message(mtype: int, tid: bytes, attrs: list[tuple[int, bytes]], key: bytes | None) -> bytes:
    body = b"".join(_attr(t, v) for t, v in attrs)
    if key is not None:  # MESSAGE-INTEGRITY over the message with its length covering the MI attribute
        hdr = struct.pack("!HHI", mtype, len(body) + 24, STUN_COOKIE) + tid
        body += _attr(0x0008, hmac.new(key, hdr + body, hashlib.sha1).digest())
    hdr = struct.pack("!HHI", mtype, len(body) + 8, STUN_COOKIE) + tid
    crc = (zlib.crc32(hdr + body) ^ 0x5354554E) & 0xFFFFFFFF
    body += _attr(0x8028, struct.pack("!I", crc))
    return struct.pack("!HHI", mtype, len(body), STUN_COOKIE) + tid + body


def xor_mapped_address(ip: str, port: int) -> bytes:
    a = struct.unpack("!I", socket.inet_aton(ip))[0]
    return struct.pack("!BBHI", 0, 1, port ^ (STUN_COOKIE >> 16), a ^ STUN_COOKIE)


def parse_stun(data: bytes) -> tuple[int, bytes, dict[int, bytes]] | None:
    if len(data) < 20 or data[0] & 0xC0:
        return None
    mtype, length, cookie = struct.unpack_from("!HHI", data)
    if cookie != STUN_COOKIE or length + 20 != len(data):
        return None
    attrs, off = {}, 20
    while off + 4 <= len(data):
        t, n = struct.unpack_from("!HH", data, off)
        attrs[t] = data[off + 4: off + 4 + n]
        off += 4 + n + (-n % 4)
    return mtype, data[8:20], attrs


def decode_xor_mapped(v: bytes) -> tuple[str, int]:
    _, fam, xport, xaddr = struct.unpack("!BBHI", v[:8])
    return socket.inet_ntoa(struct.pack("!I", xaddr ^ STUN_COOKIE)), xport ^ (STUN_COOKIE >> 16)


# -- RTP / RTCP -----------------------------------------------------------------------------------
def rtp_header(marker: bool, pt: int, seq: int, ts: int, ssrc: int) -> bytes:
    return struct.pack("!BBHII", 0x80, (0x80 if marker else 0) | pt, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc)


def ntp_now() -> tuple[int, int]:
    t = time.time() + 2208988800
    return int(t), int((t % 1) * (1 << 32)) & 0xFFFFFFFF


class RecvStats:
    """RFC 3550 A.1/A.3/A.8 receiver statistics for one remote SSRC."""

    def __init__(self, ssrc: int, clock: int):
        self.ssrc, self.clock = ssrc, clock
        self.base = self.max = None
        self.cycles = 0
        self.received = 0
        self.dups = 0
        self.expected_prior = self.received_prior = 0
        self.transit = None
        self.jitter = 0.0
        self.seen: set[int] = set()
        self.last_sr_mid = 0
        self.last_sr_at = 0.0

    def update(self, seq: int, ts: int, arrival: float) -> None:
        if self.base is None:
            self.base = self.max = seq
        delta = (seq - self.max) & 0xFFFF
        if delta < 0x8000:  # in order (or a duplicate of the newest)
            if seq < self.max:
                self.cycles += 1 << 16
            self.max = seq
            ext = self.cycles + seq
        else:  # late / reordered
            ext = self.cycles + self.max - (0x10000 - delta)
        if ext in self.seen:
            self.dups += 1
            return
        self.seen.add(ext)
        self.received += 1
        transit = arrival * self.clock - ts
        if self.transit is not None:
            d = abs(transit - self.transit)
            self.jitter += (d - self.jitter) / 16
        self.transit = transit

    @property
    def ext_max(self) -> int:
        return self.cycles + (self.max or 0)

    @property
    def expected(self) -> int:
        return 0 if self.base is None else self.ext_max - self.base + 1

    def report_block(self, now: float) -> bytes:
        expected = self.expected
        lost = expected - self.received
        exp_int = expected - self.expected_prior
        rec_int = self.received - self.received_prior
        self.expected_prior, self.received_prior = expected, self.received
        lost_int = exp_int - rec_int
        fraction = 0 if exp_int <= 0 or lost_int <= 0 else min(255, (lost_int << 8) // exp_int)
        lost = max(-(1 << 23), min((1 << 23) - 1, lost))
        dlsr = int((now - self.last_sr_at) * 65536) if self.last_sr_mid else 0
        return struct.pack("!IB3sIIII", self.ssrc, fraction, (lost & 0xFFFFFF).to_bytes(3, "big"),
                           self.ext_max & 0xFFFFFFFF, int(self.jitter) & 0xFFFFFFFF, self.last_sr_mid, dlsr)

    def summary(self) -> dict:
        return {"ssrc": self.ssrc, "received": self.received, "expected": self.expected,
                "lost": self.expected - self.received, "duplicates": self.dups,
                "jitter_ms": round(self.jitter / self.clock * 1000, 3)}


# -- the event loop -------------------------------------------------------------------------------
class Loop:
    def __init__(self):
        self.tasks: list = []
        self.readers: dict = {}
        self._n = itertools.count()
        self.lateness: dict[str, list[float]] = {}

    def at(self, t: float, fn, *args) -> None:
        heapq.heappush(self.tasks, (t, next(self._n), fn, args))

    def note_late(self, name: str, late: float) -> None:
        self.lateness.setdefault(name, []).append(late)

    def run_until(self, t_end: float) -> None:
        while True:
            now = time.perf_counter()
            if now >= t_end:
                return
            while self.tasks and self.tasks[0][0] <= now:
                t, _, fn, args = heapq.heappop(self.tasks)
                fn(t, *args)
            nxt = min(self.tasks[0][0] if self.tasks else t_end, t_end)
            wait = nxt - time.perf_counter()
            socks = list(self.readers)
            timeout = wait - SPIN_S if wait > SPIN_S else 0
            if socks:
                r, _, _ = select.select(socks, [], [], timeout)
                for s in r:
                    self.readers[s]()
            elif timeout > 0:
                time.sleep(timeout)

    def lateness_summary(self) -> dict:
        out = {}
        for k, v in self.lateness.items():
            v = sorted(v)
            out[k] = {"n": len(v), "p50_ms": round(v[len(v) // 2] * 1000, 3),
                      "p99_ms": round(v[min(len(v) - 1, int(len(v) * 0.99))] * 1000, 3),
                      "max_ms": round(v[-1] * 1000, 3)}
        return out


# -- one media flow (audio or video) --------------------------------------------------------------
class MediaFlow:
    def __init__(self, ep: "Endpoint", name: str, sock: socket.socket, peer: tuple[str, int] | None,
                 pt: int, clock: int, send_kbps: float):
        self.ep, self.name, self.sock, self.peer = ep, name, sock, peer
        self.pt, self.clock, self.send_kbps = pt, clock, send_kbps
        rng = ep.rng
        self.ssrc = rng.getrandbits(32)
        self.seq = rng.getrandbits(16)
        self.ts0 = rng.getrandbits(32)
        self.sending = False
        self.media_on = False
        self.connected = False
        self.sent_pkts = self.sent_octets = 0
        self.recv: dict[int, RecvStats] = {}
        self.rtcp_sent = self.rtcp_recv = 0
        self.last_rx = None
        self.stun_tx: dict[bytes, dict] = {}
        self.stun = {"requests_sent": 0, "requests_retransmitted": 0, "responses_received": 0,
                     "requests_received": 0, "responses_sent": 0, "transactions_timed_out": 0}
        self.frame_no = 0
        self.picture_id = rng.getrandbits(15)
        self.last_sr_ntp = (0, 0)
        self.last_sr_rtp = 0
        self.last_request = -1e9
        self.t_media0 = 0.0

    # --- sending helpers
    def send(self, data: bytes) -> None:
        if self.peer is None or self.ep.silent:
            return
        try:
            self.sock.sendto(data, self.peer)
        except OSError as e:
            self.ep.errors[e.errno] = self.ep.errors.get(e.errno, 0) + 1

    def start_media(self, t: float) -> None:
        if self.media_on:
            return
        self.media_on = True
        self.ep.event(f"{self.name}: media started")
        self.t_media0 = t
        gen = self.ep.generation
        if self.send_kbps > 0 or (self.pt == PT_AUDIO and self.ep.cfg.audio):
            self.sending = True
            if self.pt == PT_AUDIO:
                self.ep.loop.at(t, self._audio_tick, 0, gen)
            else:
                self.ep.loop.at(t, self._video_tick, 0, gen)
        self.ep.loop.at(t + 0.5 + self.ep.rng.random() * 0.5, self._rtcp_tick, gen)

    def stop_media(self) -> None:
        self.media_on = False
        self.sending = False

    def _alive(self, gen: int) -> bool:
        return self.media_on and gen == self.ep.generation and not self.ep.closing

    def _audio_tick(self, t: float, k: int, gen: int) -> None:
        if not self._alive(gen) or not self.sending:
            return
        self.ep.loop.note_late(self.name, time.perf_counter() - t)
        rng = self.ep.rng
        n = rng.randint(80, 160)
        payload = b"\x78" + rng.randbytes(n - 1)  # Opus TOC: config 15 (hybrid FB, 20 ms), mono, 1 frame
        ts = self.ts0 + k * int(AUDIO_CLOCK * AUDIO_PTIME)
        self.send(rtp_header(k == 0, PT_AUDIO, self.seq, ts, self.ssrc) + payload)
        self.seq = (self.seq + 1) & 0xFFFF
        self.sent_pkts += 1
        self.sent_octets += len(payload)
        self.last_sr_rtp = ts
        self.ep.loop.at(self.t_media0 + (k + 1) * AUDIO_PTIME, self._audio_tick, k + 1, gen)

    def _frame_bytes(self, k: int) -> int:
        mean = self.send_kbps * 1000 / 8 / VIDEO_FPS
        gop = 3 * VIDEO_FPS
        if k % gop == 0:
            return int(mean * 4)
        return max(200, int(mean * (gop - 4) / (gop - 1) * self.ep.rng.uniform(0.6, 1.4)))

    def _video_tick(self, t: float, k: int, gen: int) -> None:
        if not self._alive(gen) or not self.sending:
            return
        self.ep.loop.note_late(self.name, time.perf_counter() - t)
        rng = self.ep.rng
        size = self._frame_bytes(k)
        npk = max(1, math.ceil(size / VIDEO_MAX_PAYLOAD))
        ts = self.ts0 + k * (VIDEO_CLOCK // VIDEO_FPS)
        pid = self.picture_id = (self.picture_id + 1) & 0x7FFF
        for i in range(npk):
            part = size // npk + (1 if i < size % npk else 0)
            # VP8 payload descriptor: X=1, S on the first packet of a frame, PictureID (15 bit)
            desc = bytes([0x90 if i == 0 else 0x80, 0x80, 0x80 | (pid >> 8), pid & 0xFF])
            payload = desc + rng.randbytes(max(1, part - 4))
            self.send(rtp_header(i == npk - 1, PT_VIDEO, self.seq, ts, self.ssrc) + payload)
            self.seq = (self.seq + 1) & 0xFFFF
            self.sent_pkts += 1
            self.sent_octets += len(payload)
        self.last_sr_rtp = ts
        self.ep.loop.at(self.t_media0 + (k + 1) / VIDEO_FPS, self._video_tick, k + 1, gen)

    def rtcp_compound(self, now_pc: float, bye: bool = False) -> bytes:
        blocks = [r.report_block(now_pc) for r in list(self.recv.values())[:31]]
        if self.sending:
            sec, frac = ntp_now()
            self.last_sr_ntp = (sec, frac)
            body = struct.pack("!IIIIII", self.ssrc, sec, frac, self.last_sr_rtp & 0xFFFFFFFF,
                               self.sent_pkts, self.sent_octets & 0xFFFFFFFF) + b"".join(blocks)
            pkt = struct.pack("!BBH", 0x80 | len(blocks), 200, len(body) // 4) + body
        else:
            body = struct.pack("!I", self.ssrc) + b"".join(blocks)
            pkt = struct.pack("!BBH", 0x80 | len(blocks), 201, len(body) // 4) + body
        cname = self.ep.cname.encode()
        chunk = struct.pack("!I", self.ssrc) + bytes([1, len(cname)]) + cname + b"\0"
        chunk += b"\0" * (-len(chunk) % 4)
        pkt += struct.pack("!BBH", 0x81, 202, len(chunk) // 4) + chunk
        if bye:
            pkt += struct.pack("!BBHI", 0x81, 203, 1, self.ssrc)
        return pkt

    def _rtcp_tick(self, t: float, gen: int) -> None:
        if not self._alive(gen):
            return
        self.send(self.rtcp_compound(time.perf_counter()))
        self.rtcp_sent += 1
        self.ep.loop.at(t + self.ep.rng.uniform(0.5, 1.5), self._rtcp_tick, gen)

    # --- STUN
    def stun_request(self, t: float, use_candidate: bool = False) -> None:
        ep = self.ep
        tid = ep.rng.randbytes(12)
        attrs = [(0x0006, f"{ep.remote_ufrag}:{ep.ufrag}".encode()),
                 (0x0024, struct.pack("!I", 2130706431 if ep.role == "client" else 1694498815))]
        if ep.role == "client":
            attrs.append((0x802A, ep.tiebreaker))
            if use_candidate:
                attrs.append((0x0025, b""))
        else:
            attrs.append((0x8029, ep.tiebreaker))
        msg = stun_message(0x0001, tid, attrs, ep.remote_pwd.encode())
        self.stun_tx[tid] = {"msg": msg, "sent": t, "n": 0}
        self.last_request = t
        self.stun["requests_sent"] += 1
        self.send(msg)
        ep.loop.at(t + 0.5, self._stun_retx, tid, 1, 0.5)

    def _stun_retx(self, t: float, tid: bytes, n: int, rto: float) -> None:
        tx = self.stun_tx.get(tid)
        if tx is None or self.ep.closing:
            return
        self.send(tx["msg"])
        self.stun["requests_retransmitted"] += 1
        if n + 1 >= 7:  # RFC 5389: Rc = 7 transmissions, then wait Rm * RTO (16 * 0.5 s) before giving up
            self.ep.loop.at(t + 8.0, self._stun_timeout, tid)
            return
        rto *= 2
        self.ep.loop.at(t + rto, self._stun_retx, tid, n + 1, rto)

    def _stun_timeout(self, t: float, tid: bytes) -> None:
        if self.stun_tx.pop(tid, None) is not None:
            self.stun["transactions_timed_out"] += 1

    def consent_tick(self, t: float, gen: int) -> None:
        if not self._alive(gen):
            return
        if not self.stun_tx:
            self.stun_request(t)
        self.ep.loop.at(t + self.ep.rng.uniform(4.0, 6.0), self.consent_tick, gen)

    def on_packet(self, data: bytes, src: tuple[str, int], now: float) -> None:
        self.last_rx = now
        st = parse_stun(data)
        if st is not None:
            mtype, tid, attrs = st
            if mtype == 0x0001:
                self.stun["requests_received"] += 1
                resp = stun_message(0x0101, tid, [(0x0020, xor_mapped_address(*src))], self.ep.pwd.encode())
                if self.peer is None:
                    self.peer = src
                self.send(resp)
                self.stun["responses_sent"] += 1
                if self.ep.role == "server" and not self.media_on:
                    self.connected = True
                    self.stun_request(now)  # triggered check towards the client
                    self.start_media(now)
            elif mtype == 0x0101:
                tx = self.stun_tx.pop(tid, None)
                if tx is not None:
                    self.stun["responses_received"] += 1
                    if 0x0020 in attrs:
                        self.mapped = decode_xor_mapped(attrs[0x0020])
                    if self.ep.role == "client" and not self.connected:
                        self.connected = True
                        self.ep.event(f"{self.name}: connected (STUN answered)")
                        self.stun_request(now, use_candidate=True)
                        self.start_media(now)
                        self.ep.loop.at(now + self.ep.rng.uniform(4.0, 6.0), self.consent_tick, self.ep.generation)
            return
        if len(data) < 12 or data[0] >> 6 != 2:
            return
        pt = data[1]
        if 200 <= pt <= 206:
            self.rtcp_recv += 1
            off = 0
            while off + 4 <= len(data):  # walk the compound packet
                if data[off + 1] == 203 and not self.ep.closing:
                    self.ep.event(f"{self.name}: RTCP BYE received, call ended")
                    self.ep.closing = True
                off += 4 * (struct.unpack_from("!H", data, off + 2)[0] + 1)
            if pt == 200 and len(data) >= 28:
                ssrc, sec, frac = struct.unpack_from("!III", data, 4)
                for r in self.recv.values():
                    r.last_sr_mid = ((sec & 0xFFFF) << 16) | (frac >> 16)
                    r.last_sr_at = now
            return
        seq, ts, ssrc = struct.unpack_from("!HII", data, 2)
        r = self.recv.get(ssrc)
        if r is None:
            r = self.recv[ssrc] = RecvStats(ssrc, AUDIO_CLOCK if (pt & 0x7F) == PT_AUDIO else VIDEO_CLOCK)
        r.update(seq, ts, now)

    def summary(self) -> dict:
        return {"local_port": self.sock.getsockname()[1], "peer": list(self.peer) if self.peer else None,
                "ssrc": self.ssrc, "pt": self.pt, "sent_rtp": self.sent_pkts, "sent_payload_octets": self.sent_octets,
                "rtcp_sent": self.rtcp_sent, "rtcp_received": self.rtcp_recv, "stun": self.stun,
                "received": [r.summary() for r in self.recv.values()]}


# -- the endpoint ---------------------------------------------------------------------------------
class Endpoint:
    def __init__(self, cfg: CallConfig):
        self.cfg = cfg
        self.role = cfg.role
        self.rng = random.Random(cfg.seed * 2 + (cfg.role == "server"))
        self.loop = Loop()
        self.errors: dict[int, int] = {}
        self.events: list[tuple[float, str]] = []
        self.generation = 0
        self.closing = False
        self.silent = False
        self.ufrag = self.rng.randbytes(3).hex()
        self.pwd = self.rng.randbytes(11).hex()
        # both sides derive the other's credentials from the shared seed (as if signalled beforehand)
        other = random.Random(cfg.seed * 2 + (cfg.role != "server"))
        self.remote_ufrag = other.randbytes(3).hex()
        self.remote_pwd = other.randbytes(11).hex()
        self.tiebreaker = self.rng.randbytes(8)
        self.cname = self.rng.randbytes(8).hex()
        self.pc_start = time.perf_counter() + (cfg.start_epoch - time.time())
        self.flows: list[MediaFlow] = []
        self.tcp_listen = self.tcp = None
        self.tcp_tx = self.tcp_rx = 0
        self.tcp_pending = b""
        self.ctl = None
        self.ctl_peer = None
        self.ctl_tx = self.ctl_rx = 0
        self.ctl_expect = None
        self.ctl_lost = 0
        self.ctl_counter = 0

    def event(self, what: str) -> None:
        self.events.append((round(time.perf_counter() - self.pc_start, 4), what))

    def udp(self, ip: str, port: int) -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        s.bind((ip, port))
        s.setblocking(False)
        return s

    def setup(self) -> None:
        cfg = self.cfg
        client = self.role == "client"
        lip = cfg.client_ip if client else "0.0.0.0"
        specs = []
        if cfg.audio:
            specs.append(("audio", AUDIO_CLIENT_PORT, AUDIO_SERVER_PORT, PT_AUDIO, AUDIO_CLOCK, 1.0))
        if cfg.video:
            specs.append(("video", VIDEO_CLIENT_PORT, VIDEO_SERVER_PORT, PT_VIDEO, VIDEO_CLOCK,
                          cfg.video_up_kbps if client else cfg.video_down_kbps))
        for name, cport, sport, pt, clock, kbps in specs:
            sock = self.udp(lip, cport if client else sport)
            peer = (cfg.server_ip, sport) if client else None
            f = MediaFlow(self, name, sock, peer, pt, clock, kbps)
            self.flows.append(f)
            self.loop.readers[sock] = self._reader(f)
        self.ctl = self.udp(lip, UDPCTL_CLIENT_PORT if client else CTL_SERVER_PORT)
        self.loop.readers[self.ctl] = self._ctl_read
        if not client:
            ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            ls.bind(("0.0.0.0", CTL_SERVER_PORT))
            ls.listen(4)
            ls.setblocking(False)
            self.tcp_listen = ls
            self.loop.readers[ls] = self._accept

    def _reader(self, f: MediaFlow):
        def read():
            for _ in range(64):
                try:
                    data, src = f.sock.recvfrom(65535)
                except BlockingIOError:
                    return
                except OSError:
                    return
                f.on_packet(data, src, time.perf_counter())
        return read

    # --- control flows
    def _accept(self) -> None:
        try:
            s, _ = self.tcp_listen.accept()
        except OSError:
            return
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setblocking(False)
        self.tcp = s
        self.loop.readers[s] = self._tcp_read
        self.event("tcp control accepted")
        self.loop.at(time.perf_counter(), self._tcp_tick)

    def _tcp_connect(self, t: float) -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((self.cfg.client_ip, TCP_CLIENT_PORT))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.settimeout(2.0)
        try:
            s.connect((self.cfg.server_ip, CTL_SERVER_PORT))
        except OSError as e:
            self.event(f"tcp connect failed: {e}")
            return
        s.setblocking(False)
        self.tcp = s
        self.loop.readers[s] = self._tcp_read
        self.loop.at(t + 0.05, self._tcp_tick)

    def _tcp_send(self, data: bytes) -> None:
        self.tcp_pending += data
        try:
            n = self.tcp.send(self.tcp_pending)
        except BlockingIOError:
            n = 0
        except OSError:
            self.tcp_pending = b""
            return
        self.tcp_tx += n
        self.tcp_pending = self.tcp_pending[n:]

    def _tcp_tick(self, t: float) -> None:
        if self.tcp is None or self.closing:
            return
        rng = self.rng
        if self.role == "server":
            n = rng.randint(600, 1300)
            period = n * 8 / (self.cfg.tcp_kbps * 1000)
        else:
            n = rng.randint(120, 300)
            period = 1.0
        self._tcp_send(b"\x17\x03\x03" + struct.pack("!H", n - 5) + rng.randbytes(n - 5))
        self.loop.at(t + period * rng.uniform(0.8, 1.2), self._tcp_tick)

    def _tcp_read(self) -> None:
        try:
            d = self.tcp.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            d = b""
        if not d:
            self.loop.readers.pop(self.tcp, None)
            if self.role == "server":
                try:
                    self.tcp.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                self.tcp = None
            return
        self.tcp_rx += len(d)

    def _ctl_packet(self, n: int, kind: int) -> bytes:
        # QUIC-short-header-like: 0b01xxxxxx first byte (never an RTP v2 first byte), 8-byte DCID,
        # then a 4-byte counter (our own ground truth) and random bytes
        first = 0x40 | (self.rng.getrandbits(5) & 0x1F)
        cid = b"\x5c\x0f\xfe\xe0\x11\x22\x33\x44"
        self.ctl_counter += 1
        return bytes([first]) + cid + struct.pack("!BI", kind, self.ctl_counter) + self.rng.randbytes(max(0, n - 14))

    def _ctl_tick(self, t: float) -> None:
        if self.closing or self.ctl_peer is None:
            return
        n = self.rng.randint(200, 320)
        try:
            self.ctl.sendto(self._ctl_packet(n, 1), self.ctl_peer)
            self.ctl_tx += 1
        except OSError as e:
            self.errors[e.errno] = self.errors.get(e.errno, 0) + 1
        self.loop.at(t + n * 8 / (self.cfg.udpctl_kbps * 1000), self._ctl_tick)

    def _ctl_read(self) -> None:
        for _ in range(64):
            try:
                d, src = self.ctl.recvfrom(65535)
            except OSError:
                return
            self.ctl_rx += 1
            if self.role == "server":
                if self.ctl_peer is None:
                    self.ctl_peer = src
                    self.loop.at(time.perf_counter(), self._ctl_tick)
                continue
            if len(d) >= 14 and d[9] == 1:
                c = struct.unpack_from("!I", d, 10)[0]
                if self.ctl_expect is not None and c > self.ctl_expect:
                    self.ctl_lost += c - self.ctl_expect
                self.ctl_expect = max(c + 1, self.ctl_expect or 0)
                if self.ctl_rx % 4 == 0 and not self.closing:
                    try:
                        self.ctl.sendto(self._ctl_packet(self.rng.randint(40, 60), 2), src)
                        self.ctl_tx += 1
                    except OSError:
                        pass

    def _ctl_hello(self, t: float) -> None:
        self.ctl_peer = (self.cfg.server_ip, CTL_SERVER_PORT)
        try:
            self.ctl.sendto(self._ctl_packet(1200, 0), self.ctl_peer)
            self.ctl_tx += 1
        except OSError:
            pass

    # --- liveness: the call drops when the audio flow goes silent; the client keeps trying to reconnect
    def _watchdog(self, t: float) -> None:
        if self.closing:
            return
        now = time.perf_counter()
        main = self.flows[0] if self.flows else None
        if main is not None and main.media_on:
            last = main.last_rx if main.last_rx is not None else main.t_media0
            if now - last > self.cfg.media_timeout:
                self.event(f"no packets for {self.cfg.media_timeout:.0f} s: call dropped, media stopped")
                self.generation += 1
                for f in self.flows:
                    f.stop_media()
                    f.connected = False
        if self.role == "client":
            for f in self.flows:
                if not f.connected and now - f.last_request >= RECONNECT_S:
                    f.stun_request(now)  # a fresh transaction; earlier ones keep retransmitting
        self.loop.at(t + 0.1, self._watchdog)

    # --- run
    def run(self) -> dict:
        cfg = self.cfg
        t0 = self.pc_start
        end = t0 + cfg.seconds
        if self.role == "client":
            self.loop.at(t0, self._tcp_connect)
            self.loop.at(t0 + 0.03, self._ctl_hello)
            for i, f in enumerate(self.flows):
                self.loop.at(t0 + 0.06 + 0.02 * i, lambda t, f=f: f.stun_request(t))
        self.loop.at(t0 + 0.5, self._watchdog)
        self.loop.run_until(end - (0.05 if self.role == "client" else 0.0))
        self.closing = True
        if self.role == "client":  # orderly end: RTCP BYE, TCP FIN
            for f in self.flows:
                if f.media_on:
                    f.send(f.rtcp_compound(time.perf_counter(), bye=True))
            if self.tcp is not None:
                try:
                    self.tcp.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
        self.loop.readers = {s: fn for s, fn in self.loop.readers.items() if s is not self.tcp_listen}
        self.loop.run_until(end)
        return self.summary()

    def linger(self) -> dict:
        """Stay silent but keep every socket open (so late packets, e.g. a draining shaper queue, meet an open
        port rather than an ICMP port-unreachable), then report."""
        self.silent = True
        self.loop.tasks.clear()
        self.loop.run_until(time.perf_counter() + self.cfg.linger)
        return self.summary()

    def summary(self) -> dict:
        return {"role": self.role, "config": asdict(self.cfg), "flows": {f.name: f.summary() for f in self.flows},
                "tcp": {"bytes_sent": self.tcp_tx, "bytes_received": self.tcp_rx},
                "udp_control": {"sent": self.ctl_tx, "received": self.ctl_rx, "lost_by_counter": self.ctl_lost},
                "pacing_lateness": self.loop.lateness_summary(), "events": self.events,
                "send_errors": {errno.errorcode.get(k, str(k)): v for k, v in self.errors.items()}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="one side of a synthetic call (run inside a namespace)")
    ap.add_argument("role", choices=("client", "server"))
    ap.add_argument("--config", required=True, help="CallConfig as JSON")
    a = ap.parse_args(argv)
    cfg = CallConfig(**{**json.loads(a.config), "role": a.role})
    ep = Endpoint(cfg)
    ep.setup()
    print("READY", flush=True)
    ep.run()
    print("STOPPED", flush=True)
    out = ep.linger()
    if cfg.stats_path:
        with open(cfg.stats_path, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
