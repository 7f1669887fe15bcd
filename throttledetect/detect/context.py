"""What every detector works on: the streams of a capture and the facts about its flows that
several detectors need (roles, calls, controls, STUN transactions, ICMP errors), each computed
once and cached.

- ``streams``: the streams stage (packets, RTP, TCP, cadence, loss per flow and direction);
- ``role(i)``: "media" (a flow carrying media one way or both) or "setup" (STUN checks,
  signalling, probes: too little to judge media by);
- ``calls``: the call attempts (flows of one app from one local host close in time; the
  classifier's own grouping when it has one): who tried, what was answered, whether two-way
  media ever flowed;
- ``controls(i)``: the other flows of the capture that can show what the path does to traffic
  that is not this call (losses that hit them too are the path's, not a throttler's);
- ``stun(i)``: STUN transactions of a flow (RFC 8489: a request and its retransmissions share
  a transaction ID) and which were answered;
- ``icmp_unreachable()``: ICMP destination-unreachable messages quoting a flow's 5-tuple.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from throttledetect.classify.labels import APP_CALLS, CHAT_OF_CALL, is_call
from throttledetect.detect.config import DEFAULT_CONFIG, DetectConfig
from throttledetect.streams import Streams

TCP, UDP = 6, 17
STUN_COOKIE = np.array([0x21, 0x12, 0xA4, 0x42], dtype=np.uint8)
CALL_GAP_S = 30.0           # flows of one app and host further apart than this are separate attempts
MIN_CONTROL_PACKETS = 50
PAUSE_S = 1.0               # a gap this long in a sender's packets is its pause (no voice cadence is slower), not a queue's


def dir_name(d: int) -> str:
    return ("ab", "ba")[int(d)]


@dataclass(eq=False)
class StunTransactions:
    rows: np.ndarray            # STUN message rows
    t: np.ndarray
    direction: np.ndarray       # 0/1
    cls: np.ndarray             # 0 request, 1 indication, 2 success, 3 error
    tids: list                  # transaction id per message (bytes)

    @property
    def n(self) -> int:
        return len(self.rows)

    def requests_from(self, d_out: int) -> dict:
        """transaction id -> first send time, for requests sent in direction d_out."""
        first: dict = {}
        for k in np.flatnonzero((self.direction == d_out) & (self.cls == 0)):   # per STUN message
            first.setdefault(self.tids[k], float(self.t[k]))
        return first

    def answered_in(self, d_in: int) -> set:
        return {self.tids[k] for k in np.flatnonzero((self.direction == d_in) & ((self.cls == 2) | (self.cls == 3)))}


@dataclass(eq=False)
class CallAttempt:
    id: int
    label: str
    flows: list                 # flow indices
    start: float
    end: float
    media_flows: list           # flows with two-way media
    outbound: int               # packets the local side sent in the attempt
    inbound: int                # packets that came back

    @property
    def two_way_media(self) -> bool:
        return bool(self.media_flows)


@dataclass
class DetectContext:
    cap: object
    ft: object
    cl: object | None = None
    streams: Streams | None = None
    metrics: list | None = None              # metrics.flow.FlowMetrics per flow (TCP RTT samples)
    config: DetectConfig = DEFAULT_CONFIG
    tested: np.ndarray | None = None        # bool per flow: goes through the detectors
    _cache: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        if self.streams is None:
            self.streams = Streams(self.cap, self.ft, self.cl)

    # ---------------------------------------------------------------- capture level
    @property
    def alpha(self) -> float:
        return self.config.alpha

    @property
    def t_end(self) -> float:
        return self.streams.t_end

    @cached_property
    def labels(self) -> list:
        return list(self.cl.labels) if self.cl is not None else ["other"] * len(self.ft)

    def label(self, i: int) -> str:
        return self.labels[i]

    def is_call(self, i: int) -> bool:
        return is_call(self.labels[i])

    def is_setup_candidate(self, i: int) -> bool:
        """A bare STUN flow (not part of a labelled call): tested for call-setup blocking only."""
        return self.labels[i] == "stun" and int(self.ft.proto[i]) == UDP

    def rng(self, *key) -> np.random.Generator:
        """A generator seeded by the configuration's seed and a key: results do not depend on run order."""
        return np.random.default_rng([self.config.seed & 0xFFFFFFFF, zlib.crc32(repr(key).encode())])

    def toward_local(self, i: int) -> int:
        return self.streams.toward_local(i)

    def flow_span(self, i: int) -> tuple[float, float]:
        return self.streams.flow_span(i)

    def packets(self, i: int, d: int):
        return self.streams.packets(i, d)

    def _cached(self, key, build):
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]

    # ---------------------------------------------------------------- STUN and ICMP
    def stun(self, i: int) -> StunTransactions:
        def build():
            rows = self.ft.packet_indices(i)
            pk = self.cap.packets
            pre = pk.prefix[rows]
            if len(rows) == 0 or pre.shape[1] < 20:
                z = np.zeros(0, np.int64)
                return StunTransactions(rows[:0], np.zeros(0), z, z, [])
            mtype = (pre[:, 0].astype(np.int64) << 8) | pre[:, 1]
            length = (pre[:, 2].astype(np.int64) << 8) | pre[:, 3]
            ok = ((pre[:, 0] & 0xC0) == 0) & np.all(pre[:, 4:8] == STUN_COOKIE, axis=1) & \
                (length + 20 == pk.payload_wirelen[rows].astype(np.int64)) & ((length & 3) == 0) & \
                ((mtype & 0x3EEF) <= 0x00C)
            rows = rows[ok]
            cls = ((mtype[ok] >> 7) & 2) | ((mtype[ok] >> 4) & 1)
            t = (pk.ts_ns[rows].astype(np.int64) - self.streams.t0_ns) / 1e9
            return StunTransactions(rows, t, self.ft.dir_of[rows].astype(np.int64), cls,
                                    [bytes(r) for r in pre[ok, 8:20]])
        return self._cached(("stun", i), build)

    def non_stun_packets(self, i: int, d: int) -> int:
        st = self.stun(i)
        return self.packets(i, d).n - int(np.count_nonzero(st.direction == d))

    def icmp_unreachable(self) -> dict:
        """flow -> [(time s, icmp type, code, sent by the remote host itself)] for ICMP/ICMPv6
        destination-unreachable messages quoting one of the capture's TCP/UDP flows. Those the
        capturing host sent (it refused a packet that reached it) are left out: they are nobody's
        answer to this host and no sign of a block on the path."""
        return self._cached(("icmp",), self._icmp)

    def _icmp(self) -> dict:
        pk = self.cap.packets
        out: dict = {}
        rows = np.flatnonzero(((pk.proto == 1) | (pk.proto == 58)) & (pk.payload_off >= 0) & (pk.payload_len >= 8))
        if len(rows):
            pre = pk.prefix[rows]
            unreach = ((pk.proto[rows] == 1) & (pre[:, 0] == 3)) | ((pk.proto[rows] == 58) & (pre[:, 0] == 1))
            rows = rows[unreach]
        if not len(rows):
            return out
        index = {}
        for f in range(len(self.ft)):                # one dict entry per flow
            if int(self.ft.proto[f]) not in (TCP, UDP):
                continue
            a = (int(self.ft.a_hi[f]), int(self.ft.a_lo[f]), int(self.ft.a_port[f]))
            b = (int(self.ft.b_hi[f]), int(self.ft.b_lo[f]), int(self.ft.b_port[f]))
            index[(int(self.ft.proto[f]),) + a + b] = f
            index[(int(self.ft.proto[f]),) + b + a] = f
        for r in rows.tolist():                      # ICMP errors are few
            pl = self.cap.payload(r)
            q = _quoted_tuple(pl)
            if q is None or q not in index:
                continue
            f = index[q]
            src = (int(pk.src_hi[r]), int(pk.src_lo[r]))
            local = ((int(self.ft.a_hi[f]), int(self.ft.a_lo[f])) if self.streams.local_is_a[f]
                     else (int(self.ft.b_hi[f]), int(self.ft.b_lo[f])))
            if src == local:
                # the capturing host refusing a packet that reached it: an answer from nobody on
                # the path, and no answer to this host's requests either
                continue
            from_remote = src in ((q[1], q[2]), (q[4], q[5]))
            out.setdefault(f, []).append(((int(pk.ts_ns[r]) - self.streams.t0_ns) / 1e9, pl[0], pl[1],
                                          from_remote))
        return out

    # ---------------------------------------------------------------- roles and calls
    def role(self, i: int) -> str:
        """"media" when either direction carries at least min_media_packets non-STUN packets."""
        def build():
            m = self.config.blocking.min_media_packets
            n = max(self.non_stun_packets(i, 0), self.non_stun_packets(i, 1))
            return "media" if n >= m else "setup"
        return self._cached(("role", i), build)

    def two_way_media(self, i: int) -> bool:
        """Media flowed both ways (a call that was set up, if only for a moment)."""
        m = self.config.blocking.min_two_way_packets
        return min(self.non_stun_packets(i, 0), self.non_stun_packets(i, 1)) >= m

    @cached_property
    def calls(self) -> list:
        """Call attempts: the classifier's call groups when it has them (``call_of``), else the
        call flows of one label and one local host whose activity lies within CALL_GAP_S. Bare
        STUN flows outside any call (label "stun": what an attempt of an app without a rule leaves
        when its checks go unanswered) are grouped the same way, as attempts of their own."""
        ft = self.ft
        n = len(ft)
        call_of = getattr(self.cl, "call_of", None) if self.cl is not None else None
        groups: dict = {}
        if call_of is not None:
            for i in range(n):
                if call_of[i] >= 0 and self.is_call(i):
                    groups.setdefault(int(call_of[i]), []).append(i)
            grouped = {i for g in groups.values() for i in g}
            loose = [i for i in range(n) if self.is_setup_candidate(i) and i not in grouped]
            base = max(groups) + 1 if groups else 0
        else:
            loose = [i for i in range(n) if self.is_call(i) or self.is_setup_candidate(i)]
            base = 0
        is_a = self.streams.local_is_a
        local_hi = np.where(is_a, ft.a_hi, ft.b_hi)
        local_lo = np.where(is_a, ft.a_lo, ft.b_lo)
        loose.sort(key=lambda i: (self.labels[i], int(local_hi[i]), int(local_lo[i]), int(ft.first_ns[i])))
        key, end, gid = None, None, base - 1
        for i in loose:                               # the call flows (a few dozen)
            k = (self.labels[i], int(local_hi[i]), int(local_lo[i]))
            s, e = self.flow_span(i)
            if k != key or s > end + CALL_GAP_S:
                gid += 1
                key, end = k, e
            end = max(end, e)
            groups.setdefault(gid, []).append(i)
        out = []
        for gid, flows in sorted(groups.items()):
            spans = [self.flow_span(i) for i in flows]
            inb = sum(self.packets(i, self.toward_local(i)).n for i in flows)
            outb = sum(self.packets(i, 1 - self.toward_local(i)).n for i in flows)
            out.append(CallAttempt(id=gid, label=self.labels[flows[0]], flows=flows,
                                   start=min(s for s, _ in spans), end=max(e for _, e in spans),
                                   media_flows=[i for i in flows if self.two_way_media(i)],
                                   outbound=outb, inbound=inb))
        return out

    def call_of(self, i: int) -> CallAttempt | None:
        idx = self._cached(("call_index",), lambda: {f: c for c in self.calls for f in c.flows})
        return idx.get(i)

    def socket_siblings(self, i: int) -> list:
        """Other flows of this host's UDP/TCP socket of flow i (same local address, port and
        transport, another remote end): where an app's call goes when it switches relay or goes
        peer to peer, whatever label the new leg got."""
        def build():
            a = self._flow_arrays
            same = (a["l_hi"] == a["l_hi"][i]) & (a["l_lo"] == a["l_lo"][i]) & (a["l_port"] == a["l_port"][i])
            same &= a["proto"] == a["proto"][i]
            same[i] = False
            return [int(j) for j in np.flatnonzero(same)]
        return self._cached(("socket", i), build)

    def host_group(self, i: int) -> list:
        """The tested flows from flow i's remote host that overlap it in time (i included): what
        one policer or shaper on the path to this host meters together (audio, video and data on
        separate 5-tuples draw on one bucket or queue)."""
        def build():
            a = self._flow_arrays
            same = (a["r_hi"] == a["r_hi"][i]) & (a["r_lo"] == a["r_lo"][i])
            same &= (a["end"] > a["start"][i]) & (a["start"] < a["end"][i])
            if self.tested is not None:
                same &= self.tested
            same[i] = True
            return np.flatnonzero(same).tolist()
        return self._cached(("host_group", i), build)

    def uplink_reports(self, i: int):
        """What the far end reports receiving of the RTP this host sends in flow i
        (streams.reports.UplinkReports), read from every flow arriving from the same remote host
        (RTCP rides the media's 5-tuple or the next port), or None."""
        def build():
            from throttledetect.streams.reports import uplink_reports
            d_in = self.toward_local(i)
            ssrcs = [s.ssrc for s in self.streams.rtp(i, 1 - d_in)]
            if not ssrcs:
                return None
            a = self._flow_arrays
            same = (a["r_hi"] == a["r_hi"][i]) & (a["r_lo"] == a["r_lo"][i]) & (a["proto"] == 17)
            parts = [self.packets(j, self.toward_local(j)) for j in np.flatnonzero(same).tolist()]
            rows = np.concatenate([p.rows for p in parts])
            t = np.concatenate([p.t for p in parts])
            o = np.argsort(rows, kind="stable")
            return uplink_reports(self.cap, rows[o], t[o], ssrcs)
        return self._cached(("uplink_reports", i), build)

    def merged_packets(self, flows: list):
        """The packets arriving from several flows, merged in time (a shared queue's output)."""
        from throttledetect.streams.packets import DirectionPackets
        parts = [self.packets(j, self.toward_local(j)) for j in flows]
        t = np.concatenate([p.t for p in parts])
        o = np.argsort(t, kind="stable")
        return DirectionPackets(flow=flows[0], direction=-1, rows=np.concatenate([p.rows for p in parts])[o], t=t[o],
                                size=np.concatenate([p.size for p in parts])[o],
                                payload=np.concatenate([p.payload for p in parts])[o])

    # ---------------------------------------------------------------- controls
    @cached_property
    def _flow_arrays(self) -> dict:
        ft = self.ft
        is_a = self.streams.local_is_a
        labels = np.asarray(self.labels, dtype=object)
        _, code = np.unique(labels.astype(str), return_inverse=True) if len(labels) else (None, np.zeros(0, int))
        d_in = np.array([self.toward_local(j) for j in range(len(ft))], dtype=np.int64)
        return {
            "start": (ft.first_ns.astype(np.int64) - self.streams.t0_ns) / 1e9,
            "end": (ft.last_ns.astype(np.int64) - self.streams.t0_ns) / 1e9,
            "r_hi": np.where(is_a, ft.b_hi, ft.a_hi), "r_lo": np.where(is_a, ft.b_lo, ft.a_lo),
            "l_hi": np.where(is_a, ft.a_hi, ft.b_hi), "l_lo": np.where(is_a, ft.a_lo, ft.b_lo),
            "l_port": np.where(is_a, ft.a_port, ft.b_port).astype(np.int64),
            "label": code, "proto": ft.proto.astype(np.int64),
            "n_in": np.where(d_in == 1, ft.packets_ba, ft.packets_ab).astype(np.int64),
            "call": np.array([self.is_call(j) for j in range(len(ft))], dtype=bool),
        }

    def controls(self, i: int) -> list:
        """Flows that can show what the path does to other traffic while flow i runs: overlapping
        it in time, with at least MIN_CONTROL_PACKETS arriving at the capture point, and not
        possibly part of the same call (not of i's label; no call flow unless both are labelled
        with different apps and go to different remote hosts: a generic "rtp" flow may be this
        call's other stream). The same app's chat flows come first (2025: chat worked while
        calls did not)."""
        def build():
            lab = self.labels[i]
            a = self._flow_arrays
            same_remote = (a["r_hi"] == a["r_hi"][i]) & (a["r_lo"] == a["r_lo"][i])
            ok = (a["label"] != a["label"][i]) & ~(a["call"] & same_remote)
            ok &= (a["proto"] == TCP) | (a["proto"] == UDP)
            ok &= (a["end"] > a["start"][i]) & (a["start"] < a["end"][i]) & (a["n_in"] >= MIN_CONTROL_PACKETS)
            out = [j for j in np.flatnonzero(ok).tolist()
                   if not (a["call"][j] and not (lab in APP_CALLS and self.labels[j] in APP_CALLS))]
            chat = CHAT_OF_CALL.get(lab)
            out.sort(key=lambda j: (self.labels[j] != chat, j))
            return out
        return self._cached(("controls", i), build)


def _quoted_tuple(msg: bytes):
    """(proto, src_hi, src_lo, sport, dst_hi, dst_lo, dport) of the packet quoted in an ICMP error."""
    q = msg[8:]
    if len(q) < 1:
        return None
    ver = q[0] >> 4
    if ver == 4:
        ihl = (q[0] & 0x0F) * 4
        if len(q) < ihl + 4 or ihl < 20:
            return None
        proto = q[9]
        src, dst = int.from_bytes(q[12:16], "big"), int.from_bytes(q[16:20], "big")
        src_hi, src_lo = 0, (0xFFFF << 32) | src
        dst_hi, dst_lo = 0, (0xFFFF << 32) | dst
        l4 = q[ihl:]
    elif ver == 6:
        if len(q) < 44:
            return None
        proto = q[6]
        src, dst = int.from_bytes(q[8:24], "big"), int.from_bytes(q[24:40], "big")
        src_hi, src_lo = src >> 64, src & 0xFFFFFFFFFFFFFFFF
        dst_hi, dst_lo = dst >> 64, dst & 0xFFFFFFFFFFFFFFFF
        l4 = q[40:]
    else:
        return None
    if proto not in (TCP, UDP) or len(l4) < 4:
        return None
    sport, dport = int.from_bytes(l4[0:2], "big"), int.from_bytes(l4[2:4], "big")
    return (proto, src_hi, src_lo, sport, dst_hi, dst_lo, dport)
