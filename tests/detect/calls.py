"""Synthetic calls and frames for the streams and detector tests (a helper module, not tests).

Frames are built with struct (checked against scapy in test_run.py) and written with
throttledetect.write.write_pcap. ``make_call`` writes a call of ``seconds`` between the local host
192.168.1.10:40000 and 203.0.113.50:50000/udp: ICE-style STUN Binding checks at the start, then
RTP PT 111 (48 kHz, 20 ms, 80-160 byte payloads) both ways; optionally DTX pauses (nothing sent,
sequence continues, timestamp jumps), a video flow (PT 96, 90 kHz, 30 fps, :40002 <-> :50002),
media without RTP headers (``encrypted``), periodic STUN consent checks from the local side, a
sender clock skew on the remote side's RTP timestamps, a hang-up, ICMP unreachable from a router;
and two control flows: a QUIC-like UDP download (no loss signal of its own) and a TCP download
(80 segments/s, a loss signal: TCP holes). Impairments come from throttledetect.simulate applied
to what arrives at the local host, as a capture on the client would record it.
"""
from __future__ import annotations

import struct

import numpy as np

from throttledetect.classify import classify
from throttledetect.flows import build_flows
from throttledetect.read import read_capture
from throttledetect.write import write_pcap

LOCAL = "192.168.1.10"
REMOTE_CALL = "203.0.113.50"
REMOTE_UDP = "198.51.100.7"
REMOTE_TCP = "198.51.100.20"
ROUTER = "100.64.0.1"
PEER = "192.0.2.77"
CALL_PORT, VIDEO_PORT, UDP_CTRL_PORT, TCP_CTRL_PORT = 40000, 40002, 50001, 51000
T0_NS = 1_700_000_000 * 10**9
_MAC_L, _MAC_R = bytes.fromhex("020000000001"), bytes.fromhex("020000000002")


# ------------------------------------------------------------------------------- frames

def _ip(a: str) -> bytes:
    return bytes(int(x) for x in a.split("."))


def _csum(b: bytes) -> int:
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def _ipv4(src: str, dst: str, proto: int, l4: bytes, ident: int) -> bytes:
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), ident & 0xFFFF, 0x4000, 64, proto, 0, _ip(src),
                      _ip(dst))
    return hdr[:10] + struct.pack("!H", _csum(hdr)) + hdr[12:] + l4


def _eth(src: str, ip_packet: bytes) -> bytes:
    macs = (_MAC_L + _MAC_R) if src == LOCAL else (_MAC_R + _MAC_L)
    return macs + b"\x08\x00" + ip_packet


def udp_frame(src, sport, dst, dport, payload: bytes, ident=0) -> bytes:
    l4 = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    return _eth(src, _ipv4(src, dst, 17, l4, ident))


def tcp_frame(src, sport, dst, dport, seq, ack, flags, payload: bytes = b"", ident=0) -> bytes:
    l4 = struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, 5 << 4, flags, 65535, 0, 0)
    return _eth(src, _ipv4(src, dst, 6, l4 + payload, ident))


def icmp_port_unreachable(router: str, quoted_frame: bytes, ident=0, to: str = LOCAL) -> bytes:
    """ICMP type 3 code 3 from `router` (to the local host) quoting the IP header + 8 bytes of a frame."""
    quoted = quoted_frame[14:14 + 28]
    body = struct.pack("!BBHI", 3, 3, 0, 0) + quoted
    body = body[:2] + struct.pack("!H", _csum(body)) + body[4:]
    return _eth(router, _ipv4(router, to, 1, body, ident))


def rtp_header(seq, ts, ssrc, pt, marker=False) -> bytes:
    return struct.pack("!BBHII", 0x80, pt | (0x80 if marker else 0), seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc & 0xFFFFFFFF)


def rtp_payload(seq, ts, ssrc, pt, size, rng, marker=False) -> bytes:
    return rtp_header(seq, ts, ssrc, pt, marker) + rng.bytes(size)


def stun_request(tid: bytes) -> bytes:
    return struct.pack("!HHI", 0x0001, 0, 0x2112A442) + tid


def stun_response(tid: bytes, ip: str, port: int) -> bytes:
    xaddr = bytes(a ^ b for a, b in zip(_ip(ip), bytes.fromhex("2112a442")))
    attr = struct.pack("!HHBBH", 0x0020, 8, 0, 1, port ^ 0x2112) + xaddr
    return struct.pack("!HHI", 0x0101, len(attr), 0x2112A442) + tid + attr


class _Packets:
    """Collects (time s, frame) and writes them sorted."""

    def __init__(self):
        self.items = []
        self._ident = 0

    def ident(self) -> int:
        self._ident += 1
        return self._ident

    def add(self, t_s: float, frame: bytes) -> None:
        self.items.append((T0_NS + int(round(t_s * 1e9)), frame))

    def write(self, path) -> int:
        self.items.sort(key=lambda p: p[0])
        write_pcap(path, [p[1] for p in self.items], [p[0] for p in self.items])
        return len(self.items)


# ------------------------------------------------------------------------------- the synthetic call

def make_call(path, *, seconds=60.0, seed=0, stun_answered=True, media=True, dtx=False, video=False,
              encrypted=False, jitter_ms=1.0, rate_pps=50, hangup_at=None, after_hangup_every_s=None,
              icmp_at=None, controls=True, tcp_control=True, stun_every_s=None, skew=0.0,
              inbound=True, local_refuses_every_s=None, migrate_at=None, local_quiet=None, sizes=None,
              uplink_loss=None, remote_refuses_port=None, bundle=False, pages=None) -> dict:
    """Write the synthetic capture to `path` (see the module docstring); return what it holds.

    media=False: only STUN (a call that rang out or was rejected). inbound=False: nothing of the
    call arrives at the local host (blocked from the start), which keeps sending.
    hangup_at: both directions of the media stop then (a normal end); after_hangup_every_s: the
    local side still sends one small packet that often afterwards (RTCP, keepalives).
    icmp_at: from then on nothing of the call arrives and local media draws an ICMP port
    unreachable (one per second) from a router on the path. stun_every_s: the local side sends
    a STUN Binding request (a new transaction) that often for the whole call, answered when
    stun_answered and the far end is up. skew: the remote sender's media clock runs fast by this
    fraction (0.0025: its RTP timestamps advance 0.25 % faster than real time).
    controls=False: the call alone; tcp_control=False: only the UDP control.
    local_refuses_every_s: the local host sends an ICMP port unreachable to the far end that often,
    quoting a packet of the far end's (its own refusal of a packet that reached it, or a replayed
    trace's: not an answer to anything this host sent).
    migrate_at: from then on the call's media (both ways) goes between the same local socket and
    PEER (a relay -> peer switch), and the local host keeps sending small packets to the old
    remote end, 20 a second, unanswered (an app keeping its relay leg warm).
    uplink_loss=(at_s, before, after): the far end sends a plain RTCP receiver report every second
    (in the call's flow, RFC 5761) about this host's stream, counting lost a share ``before`` of
    the packets this host sent in each second until at_s and ``after`` from then on (what the
    uplink lost past the capture point: every packet is still in the capture).
    sizes: the voice payloads' sizes are drawn from these (a codec with a few frame sizes), not
    from 80-160 bytes.
    dtx: talk spurts of 100-300 packets and pauses (nothing sent) of 50-150 packets, or of a
    (low, high) range of packets given instead of True.
    local_quiet=(t0, t1): the local side sends no media then, only an RTCP packet every 0.5 s
    (a listener in a one-way phase of the call: the far end talks or shares its screen).
    remote_refuses_port: the local side also sends a STUN request from the call's socket to this
    port of the far end every second, and the far end's own kernel answers each with an ICMP port
    unreachable (a candidate on a closed port, as Signal's UDP 443 beside its TURN port).
    bundle: the video goes in the call's own flow (one 5-tuple for voice and video, as WebRTC's
    BUNDLE and Telegram's calls send it), encrypted too when ``encrypted``.
    pages=(on_s, off_s, scale): the voice load comes and goes, as a fax's pages or a screen share's
    changes: for on_s seconds of every on_s + off_s the payloads are ``scale`` times larger (the
    same packet clock: the sender never pauses)."""
    rng = np.random.default_rng(seed)
    P = _Packets()
    end = seconds if hangup_at is None else hangup_at
    info = {"remote_sent": 0, "local_sent": 0}

    def remote_up(t):
        return inbound and (icmp_at is None or t < icmp_at) and t < end

    for k in range(5):        # ICE checks from the local side, answered (or not)
        tid = rng.bytes(12)
        P.add(0.05 * k, udp_frame(LOCAL, CALL_PORT, REMOTE_CALL, 50000, stun_request(tid), P.ident()))
        if stun_answered and inbound:
            P.add(0.05 * k + 0.03, udp_frame(REMOTE_CALL, 50000, LOCAL, CALL_PORT,
                                             stun_response(tid, LOCAL, CALL_PORT), P.ident()))
    if stun_answered and inbound:         # and from the remote side, answered by the local side
        for k in range(3):
            tid = rng.bytes(12)
            P.add(0.3 + 0.05 * k, udp_frame(REMOTE_CALL, 50000, LOCAL, CALL_PORT, stun_request(tid), P.ident()))
            P.add(0.3 + 0.05 * k + 0.001, udp_frame(LOCAL, CALL_PORT, REMOTE_CALL, 50000,
                                                    stun_response(tid, REMOTE_CALL, 50000), P.ident()))
    if stun_every_s:
        for t in np.arange(1.0, seconds - 0.2, stun_every_s):
            if hangup_at is not None and t >= hangup_at:
                break
            tid = rng.bytes(12)
            P.add(t, udp_frame(LOCAL, CALL_PORT, REMOTE_CALL, 50000, stun_request(tid), P.ident()))
            if stun_answered and remote_up(t):
                P.add(t + 0.03, udp_frame(REMOTE_CALL, 50000, LOCAL, CALL_PORT,
                                          stun_response(tid, LOCAL, CALL_PORT), P.ident()))
    ptime = 1.0 / rate_pps
    n = int(seconds * rate_pps)
    last_icmp = -1.0
    for src, sport, dst, dport, ssrc, one_way in ((LOCAL, CALL_PORT, REMOTE_CALL, 50000, 0x1111, 0.0),
                                                  (REMOTE_CALL, 50000, LOCAL, CALL_PORT, 0x2222, 0.03)):
        if not media:
            break
        seq0, ts0 = int(rng.integers(0, 65535)), int(rng.integers(0, 2**32))
        if src == LOCAL:
            local_seq0 = seq0
        send = 0.5 + ptime * np.arange(n)
        active = send < end
        if dtx:
            k = 0
            while k < n:
                k += int(rng.integers(100, 300))
                pause = int(rng.integers(*((50, 150) if dtx is True else dtx)))
                active[k:k + pause] = False
                k += pause
        jit = rng.exponential(jitter_ms / 1e3, n) if jitter_ms > 0 else np.zeros(n)
        arrive = np.maximum.accumulate(send + one_way + jit)      # FIFO path: no reordering
        clock_scale = 1.0 + (skew if src != LOCAL else 0.0)
        seq = seq0
        prev = True
        for k in np.flatnonzero(active):
            size = int(rng.integers(80, 161)) if sizes is None else int(rng.choice(sizes))
            if pages is not None and (send[k] - 0.5) % (pages[0] + pages[1]) < pages[0]:
                size = int(size * pages[2])
            if encrypted:
                body = bytes([0x40 | int(rng.integers(0, 0x3F))]) + rng.bytes(size + 11)
            else:
                ts = ts0 + int(round(k * 48000 * ptime * clock_scale))
                body = rtp_payload(seq, ts, ssrc, 111, size, rng, marker=dtx and not prev)
            prev = bool(active[k + 1]) if k + 1 < n else True
            if src != LOCAL and not remote_up(send[k]):
                seq += 1
                continue
            if src == LOCAL and local_quiet is not None and local_quiet[0] <= send[k] < local_quiet[1]:
                seq += 1
                continue
            s_, d_ = src, dst
            if migrate_at is not None and send[k] >= migrate_at:
                s_, d_ = (LOCAL, PEER) if src == LOCAL else (PEER, LOCAL)
            frame = udp_frame(s_, sport, d_, dport, body, P.ident())
            P.add(arrive[k], frame)
            info["local_sent" if src == LOCAL else "remote_sent"] += 1
            if src == LOCAL and icmp_at is not None and arrive[k] >= icmp_at and arrive[k] - last_icmp >= 1.0:
                P.add(arrive[k] + 0.01, icmp_port_unreachable(ROUTER, frame, P.ident()))
                last_icmp = arrive[k]
            seq += 1
    if remote_refuses_port:
        for t in np.arange(0.8, seconds - 0.2, 1.0):
            frame = udp_frame(LOCAL, CALL_PORT, REMOTE_CALL, remote_refuses_port, stun_request(rng.bytes(12)), P.ident())
            P.add(t, frame)
            P.add(t + 0.02, icmp_port_unreachable(REMOTE_CALL, frame, P.ident()))
    if migrate_at is not None:
        for t in np.arange(migrate_at + 0.025, seconds, 0.05):
            P.add(t, udp_frame(LOCAL, CALL_PORT, REMOTE_CALL, 50000, rng.bytes(60), P.ident()))
    if local_refuses_every_s:
        for t in np.arange(0.7, seconds - 0.2, local_refuses_every_s):
            quoted = udp_frame(REMOTE_CALL, 50000, LOCAL, CALL_PORT, rng.bytes(40), P.ident())
            P.add(t, icmp_port_unreachable(LOCAL, quoted, P.ident(), to=REMOTE_CALL))
    if media and uplink_loss is not None:
        at_s, before, after = uplink_loss
        first = 0.5 + np.arange(n) / rate_pps
        cum = 0
        for k, t in enumerate(np.arange(1.5, seconds, 1.0)):
            sent = int(np.count_nonzero(first < t))
            prev = int(np.count_nonzero(first < t - 1.0))
            cum += int(round((after if t - 0.5 >= at_s else before) * (sent - prev)))
            high = (local_seq0 + sent - 1) & 0xFFFFFFFF
            rr = struct.pack("!BBHI", 0x81, 201, 7, 0x2222) + struct.pack("!IIIIII", 0x1111, cum & 0xFFFFFF, high,
                                                                          0, 0, 0)
            P.add(t + 0.03, udp_frame(REMOTE_CALL, 50000, LOCAL, CALL_PORT, rr, P.ident()))
    if media and local_quiet is not None:
        for t in np.arange(local_quiet[0] + 0.25, local_quiet[1], 0.5):
            P.add(t, udp_frame(LOCAL, CALL_PORT, REMOTE_CALL, 50000, bytes([0x81, 0xC9, 0, 1]) + rng.bytes(4),
                               P.ident()))
    if media and hangup_at is not None and after_hangup_every_s:
        for t in np.arange(hangup_at + 0.5, seconds, after_hangup_every_s):
            P.add(t, udp_frame(LOCAL, CALL_PORT, REMOTE_CALL, 50000, bytes([0x81, 0xC9, 0, 1]) + rng.bytes(4),
                               P.ident()))
    if video and media:       # down 1000-2200 byte frames (~400 kbit/s), up 300-600 bytes
        remote_port, local_port = (50000, CALL_PORT) if bundle else (50002, VIDEO_PORT)
        for src, sport, dst, dport, ssrc, lo, hi, delay in (
                (REMOTE_CALL, remote_port, LOCAL, local_port, 0x3333, 1000, 2200, 0.03),
                (LOCAL, local_port, REMOTE_CALL, remote_port, 0x4444, 300, 600, 0.0)):
            seq, ts0 = int(rng.integers(0, 65535)), int(rng.integers(0, 2**32))
            clock_scale = 1.0 + (skew if src != LOCAL else 0.0)
            for f in range(int(seconds * 30)):
                t_send = 0.5 + f / 30.0
                if src != LOCAL and not remote_up(t_send):
                    continue
                if t_send >= end:
                    break
                size = int(rng.integers(lo, hi))
                parts = int(np.ceil(size / 1100))
                for p in range(parts):
                    body = (bytes([0x40 | int(rng.integers(0, 0x3F))]) + rng.bytes(size // parts + 11)) if encrypted \
                        else rtp_payload(seq, ts0 + int(round(f * 3000 * clock_scale)), ssrc, 96, size // parts, rng,
                                         marker=p == parts - 1)
                    P.add(t_send + delay + p * 0.0005 + (rng.exponential(jitter_ms / 1e3) if delay else 0.0),
                          udp_frame(src, sport, dst, dport, body, P.ident()))
                    seq += 1
    if controls:
        add_udp_control(P, rng, seconds)
        if tcp_control:
            add_tcp_control(P, rng, seconds, jitter_ms=jitter_ms)
    info["packets"] = P.write(path)
    return info


def add_udp_control(P: _Packets, rng, seconds: float) -> None:
    """QUIC-like download: bursts of 4-10 full-size datagrams every 0.25 s, a small ack after each."""
    for t in 0.2 + 0.25 * np.arange(int(seconds * 4)) + rng.uniform(0, 0.05, int(seconds * 4)):
        for j in range(int(rng.integers(4, 11))):
            body = bytes([0x40 | int(rng.integers(0, 0x3F))]) + rng.bytes(int(rng.integers(1150, 1300)))
            P.add(t + 0.0012 * j, udp_frame(REMOTE_UDP, 443, LOCAL, UDP_CTRL_PORT, body, P.ident()))
        ack = bytes([0x40 | int(rng.integers(0, 0x3F))]) + rng.bytes(int(rng.integers(30, 60)))
        P.add(t + 0.02, udp_frame(LOCAL, UDP_CTRL_PORT, REMOTE_UDP, 443, ack, P.ident()))


def add_tcp_control(P: _Packets, rng, seconds: float, *, jitter_ms=1.0, pps=80) -> None:
    """TCP download with a handshake (RTT 30 ms), `pps` 1200-byte segments per second, acks."""
    P.add(0.1, tcp_frame(LOCAL, TCP_CTRL_PORT, REMOTE_TCP, 443, 1000, 0, 0x02, ident=P.ident()))
    P.add(0.13, tcp_frame(REMOTE_TCP, 443, LOCAL, TCP_CTRL_PORT, 5000, 1001, 0x12, ident=P.ident()))
    P.add(0.131, tcp_frame(LOCAL, TCP_CTRL_PORT, REMOTE_TCP, 443, 1001, 5001, 0x10, ident=P.ident()))
    seq = 5001
    m = int(seconds * pps)
    times = np.maximum.accumulate(0.2 + np.arange(m) / pps + rng.exponential(max(jitter_ms, 1e-3) / 1e3, m))
    for k, t in enumerate(times):
        P.add(t, tcp_frame(REMOTE_TCP, 443, LOCAL, TCP_CTRL_PORT, seq, 1001, 0x18, rng.bytes(1200), P.ident()))
        seq += 1200
        if k % 2:
            P.add(t + 0.0002, tcp_frame(LOCAL, TCP_CTRL_PORT, REMOTE_TCP, 443, 1001, seq, 0x10, ident=P.ident()))


def tcp_download(path, *, segments=600, pps=100.0, rtt=0.03, lost=(), reordered=(), reorder_s=0.002,
                 resend_after_rtts=1.5, seed=0) -> None:
    """A TCP download seen at the receiver (the local host): handshake with an RTT of `rtt` s,
    `segments` 1200-byte data segments every 1/pps s; the segments with the indices in `lost`
    never arrive on time (a resend comes `resend_after_rtts` x rtt after the hole showed); those in `reordered`
    arrive `reorder_s` late (after their successor), both as a receiver would see them."""
    rng = np.random.default_rng(seed)
    P = _Packets()
    P.add(0.0, tcp_frame(LOCAL, TCP_CTRL_PORT, REMOTE_TCP, 443, 1000, 0, 0x02, ident=P.ident()))
    P.add(rtt, tcp_frame(REMOTE_TCP, 443, LOCAL, TCP_CTRL_PORT, 5000, 1001, 0x12, ident=P.ident()))
    P.add(rtt + 0.0005, tcp_frame(LOCAL, TCP_CTRL_PORT, REMOTE_TCP, 443, 1001, 5001, 0x10, ident=P.ident()))
    lost, reordered = set(lost), set(reordered)
    for k in range(segments):
        seq = 5001 + 1200 * k
        t = rtt + 0.01 + k / pps

        def frame(seq=seq):
            return tcp_frame(REMOTE_TCP, 443, LOCAL, TCP_CTRL_PORT, seq, 1001, 0x18, rng.bytes(1200), P.ident())
        if k in lost:
            # the hole shows when the next segment that is not lost arrives; the resend comes
            # resend_after_rtts round trips after that (duplicate ACKs, then the resend); None:
            # never (lost before the capture point and not resent within the capture)
            nxt = next(j for j in range(k + 1, segments + len(lost) + 1) if j not in lost)
            if resend_after_rtts is not None:
                P.add(rtt + 0.01 + nxt / pps + resend_after_rtts * rtt, frame())
        elif k in reordered:
            P.add(t + reorder_s + 1.0 / pps, frame())
        else:
            P.add(t, frame())
        if k % 2:
            P.add(t + 0.0002, tcp_frame(LOCAL, TCP_CTRL_PORT, REMOTE_TCP, 443, 1001, seq + 1200, 0x10,
                                        ident=P.ident()))
    P.write(path)


# ------------------------------------------------------------------------------- analysis helpers

def analyze(path):
    cap = read_capture(str(path))
    ft = build_flows(cap)
    return cap, ft, classify(cap, ft)


def impaired(src, out, impairment, *, select="calls", onset_s=None, seed=0, direction="to-local"):
    """Apply a throttledetect.simulate impairment to capture `src`, write `out`, analyse it.
    Returns (cap, ft, cl) of the impaired capture."""
    from throttledetect.simulate import simulate
    from throttledetect.write import write_rows
    cap, ft, cl = analyze(src)
    if isinstance(select, int):
        select = [select]
    res = simulate(cap, ft, cl, impairment, select=select, direction=direction, onset_s=onset_s, seed=seed)
    write_rows(cap, res.rows, res.ts_ns, out)
    return analyze(out)


def detect(cap, ft, cl, **kw):
    from throttledetect.detect.run import run_detectors
    return run_detectors(cap, ft, cl, **kw)


def flow_of(ft, port) -> int:
    for i in range(len(ft)):
        if port in (int(ft.a_port[i]), int(ft.b_port[i])):
            return i
    raise KeyError(port)


def inbound_rate(ft, i) -> float:
    """Link-layer bit/s arriving at the local host in flow i (over the flow's span)."""
    b = ft.bytes_ba[i] if ft.a_local[i] else ft.bytes_ab[i]
    return float(b) * 8 / ((int(ft.last_ns[i]) - int(ft.first_ns[i])) / 1e9)


def of_kind(report, i, kind, test=None) -> dict:
    """The (first) detection of `kind` (and `test`) of flow i, as a JSON dict."""
    found = [d for d in report.detections[i] if d["kind"] == kind and (test is None or d.get("test") == test)]
    assert found, f"no {kind} detection for flow {i}: {report.detections[i]}"
    return found[0]


def detected(report, i, kind) -> list:
    return [d for d in report.detections[i] if d["kind"] == kind and d["decision"] == "detected"]


def why(report, i) -> str:
    """A failure message: the flow's verdict and every detection in short."""
    lines = [f"flow {i}: {report.verdicts[i]}"]
    for d in report.detections[i]:
        lines.append(f"  {d['kind']}/{d.get('test')}: {d['decision']} p={d.get('pvalue')} q={d.get('qvalue')} "
                     f"effect={d.get('effect')} checks={d.get('checks')} rate={d.get('rate_bps')} "
                     f"onset={d.get('onset_s')} reason={d.get('reason')} evidence={d.get('evidence')}")
    return "\n".join(lines)


THROTTLING = ("shaping", "policing", "dropping", "blocking")


# ------------------------------------------------------------------------------- streams without a capture

def rtp_stream(seq, ts, t, size=None, *, ssrc=0x2222, pt=111, marker=None):
    """One RtpStream built from header fields (16-bit seq, 32-bit ts, wrapping as on the wire) and
    arrival times, through streams.rtp.build_rtp_streams (the parser the capture path uses)."""
    from throttledetect.streams.rtp import build_rtp_streams
    seq = np.asarray(seq, dtype=np.int64)
    ts = np.asarray(ts, dtype=np.int64)
    t = np.asarray(t, dtype=np.float64)
    n = len(t)
    size = np.full(n, 200.0) if size is None else np.asarray(size, dtype=np.float64)
    marker = np.zeros(n, bool) if marker is None else np.asarray(marker, bool)
    header = np.frombuffer(b"".join(rtp_header(int(s), int(x), ssrc, pt, bool(m))
                                     for s, x, m in zip(seq, ts, marker)), dtype=np.uint8).reshape(n, 12)
    streams = build_rtp_streams(0, 1, np.arange(n), t, size, header)
    assert len(streams) == 1, streams
    return streams[0]


# The synthetic calls the detector tests share (tests/conftest.py caches each once per session).
AUDIO = dict(seed=1, seconds=40.0)                          # the call + a UDP and a TCP control
SOLO = dict(seed=2, seconds=40.0, controls=False)           # the call alone
VIDEO = dict(seed=3, seconds=40.0, video=True)              # audio and video flows + both controls
UDP_ONLY = dict(seed=5, seconds=40.0, tcp_control=False)    # a control without a loss signal of its own
ENCRYPTED = dict(seed=8, seconds=40.0, encrypted=True)      # voice without RTP headers + both controls
BUNDLED = dict(seed=9, seconds=40.0, encrypted=True, video=True, bundle=True)   # ... and video in the same flow


def rate_of(synthetic_call, call: dict, port: int) -> float:
    """Link-layer bit/s arriving at the local host in the flow on `port` of the clean call."""
    _, ft, _ = analyze(synthetic_call(**call))
    return inbound_rate(ft, flow_of(ft, port))


# ------------------------------------------------------------------------------- real call traces

TRACE_SECONDS = 40.0
_TRACE_BASES: dict = {}
_TRACE_RUNS: dict = {}


def trace_base(name: str):
    """validate.TRACES' trace `name` (corpus Teams/Skype, or the project's testbed call) looped to
    TRACE_SECONDS, classified, with its target flows and their rates (validate.prepare_trace)."""
    if name not in _TRACE_BASES:
        from tests.corpus import CORPUS
        from throttledetect import validate as v
        spec = next(s for s in v.TRACES if s.name == name)
        _TRACE_BASES[name] = v.prepare_trace(spec, CORPUS, TRACE_SECONDS)
    return _TRACE_BASES[name]


def trace_run(name: str, imp=None, *, select=None, onset_s=None, seed=3):
    """(analysis, the first target flow in it) of trace `name` impaired towards the client by
    `imp` (None: as it is); select: simulate's selector (default: the trace's target flows).
    Cached for the session."""
    key = (name, repr(imp), repr(select), onset_s, seed)
    if key not in _TRACE_RUNS:
        import os
        import tempfile

        from throttledetect.pipeline import analyze_capture
        from throttledetect.read import read_capture
        from throttledetect.simulate import simulate
        from throttledetect.write import write_rows
        b = trace_base(name)
        if imp is None:
            cap = b.cap
        else:
            res = simulate(b.cap, b.ft, b.cl, imp, select=select or b.targets, direction="to-local",
                           onset_s=onset_s, seed=seed)
            fd, tmp = tempfile.mkstemp(suffix=".pcap")
            os.close(fd)
            try:
                write_rows(b.cap, res.rows, res.ts_ns, tmp)
                cap = read_capture(tmp)
            finally:
                os.unlink(tmp)
        a = analyze_capture(cap, with_metrics=False)
        ends = {b.ft.endpoint(b.targets[0], "a"), b.ft.endpoint(b.targets[0], "b")}
        target = next(j for j in range(len(a.flows)) if {a.flows.endpoint(j, "a"), a.flows.endpoint(j, "b")} == ends)
        _TRACE_RUNS[key] = (a, target)
    return _TRACE_RUNS[key]


def trace_flow(a, b, f: int) -> int:
    """The flow of analysis `a` that is base flow `f` of trace base `b`."""
    ends = {b.ft.endpoint(f, "a"), b.ft.endpoint(f, "b")}
    return next(j for j in range(len(a.flows)) if {a.flows.endpoint(j, "a"), a.flows.endpoint(j, "b")} == ends)
