"""Flows of one call are one call: group the flows of each call attempt under a call id.

A call is rarely one flow: signalling (SIP, the app's TLS control connection), STUN connectivity
checks to several candidates, a relay leg and a peer leg, RTCP on its own port, audio and video on
separate 5-tuples. Detectors that judge a call attempt (were requests answered? did two-way media
ever flow?) need them together. The grouping rules, applied as unions of flows (so that they chain):

1. Shared local socket: UDP flows from the same local address and port belong to one call when
   one of them is a call flow (ICE checks, relay and peer legs all leave from the same socket).
2. STUN-learned peers: a flow to an address a call flow's STUN/TURN messages named (XOR-PEER,
   XOR-RELAYED) joins that call.
3. Same host, same app, same time: call flows of the same local host and the same app label that
   overlap in time or are less than GAP_S apart are one call. A generic flow (rtp, webrtc,
   unknown_call, sip) joins the one app call of its host it overlaps with; when it overlaps calls
   of several apps it stays apart, when it overlaps only generic flows it joins them.
4. Control flows: a TCP or UDP flow that is not itself a call (TLS, QUIC, STUN, DTLS, other) joins
   the call of its host that it overlaps in time when its remote address belongs to the call's
   app, by the app's address ranges or by the names (DNS answers, TLS SNI) that led to it.

Flows of no call get -1. Call ids are numbered by the start of each call's first flow.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from throttledetect.classify.labels import is_call
from throttledetect.read.table import address_text

GAP_S = 30.0                 # call flows of one app and host closer than this are one call
GENERIC = frozenset({"rtp", "webrtc", "unknown_call", "sip"})
SIGNALLING = frozenset({"sip", "h323", "mgcp", "megaco", "skinny"})
MIN_TWO_WAY_PACKETS = 5      # media packets each way before a call counts as having had two-way media


@dataclass
class CallSummary:
    call: int
    app: str                       # the most specific label among its flows
    host: str                      # the local host
    flows: list                    # flow indices, by start time
    start_ns: int
    end_ns: int
    media_flows: list = field(default_factory=list)
    sent_packets: int = 0          # media packets the local host sent
    received_packets: int = 0      # media packets it received
    two_way_media: bool = False    # media went both ways (at least MIN_TWO_WAY_PACKETS each way)

    def to_json(self) -> dict:
        return {"call": self.call, "app": self.app, "host": self.host, "flows": list(self.flows),
                "start_ns": int(self.start_ns), "end_ns": int(self.end_ns), "media_flows": list(self.media_flows),
                "sent_packets": int(self.sent_packets), "received_packets": int(self.received_packets),
                "two_way_media": bool(self.two_way_media)}


class _Union:
    def __init__(self, n: int):
        self.parent = np.arange(n)

    def find(self, i: int) -> int:
        p = self.parent
        root = i
        while p[root] != root:
            root = p[root]
        while p[i] != root:
            p[i], i = root, p[i]
        return root

    def join(self, i: int, j: int) -> None:
        a, b = self.find(i), self.find(j)
        if a != b:
            self.parent[max(a, b)] = min(a, b)


def _local_side(ft):
    """Per flow: whether the local side is b (the remote started the flow)."""
    return (ft.a_local == False) & ft.b_local  # noqa: E712 - numpy arrays


def _ip(hi, lo) -> str:
    return address_text(hi, lo)


def group_calls(ft, labels, evidence, app_of_address=None) -> np.ndarray:
    """call_of: int64 per flow, the call id (>= 0) of the call the flow belongs to, else -1.

    ``labels``: the classifier's label per flow; ``evidence``: its CaptureEvidence (STUN peers,
    names); ``app_of_address(ip, names) -> label | None``: the call label an address belongs to
    (address ranges, DNS/SNI names), for rule 4 (control flows); without it rule 4 is skipped."""
    n = len(ft)
    call_of = np.full(n, -1, dtype=np.int64)
    if n == 0:
        return call_of
    calls = np.array([is_call(lbl) for lbl in labels], dtype=bool)
    if not calls.any():
        return call_of
    remote_is_a = _local_side(ft)
    l_hi = np.where(remote_is_a, ft.b_hi, ft.a_hi)
    l_lo = np.where(remote_is_a, ft.b_lo, ft.a_lo)
    l_port = np.where(remote_is_a, ft.b_port, ft.a_port)
    r_hi = np.where(remote_is_a, ft.a_hi, ft.b_hi)
    r_lo = np.where(remote_is_a, ft.a_lo, ft.b_lo)
    r_port = np.where(remote_is_a, ft.a_port, ft.b_port)
    first, last = ft.first_ns.astype(np.int64), ft.last_ns.astype(np.int64)
    gap = int(GAP_S * 1e9)
    u = _Union(n)
    members = np.zeros(n, dtype=bool)
    members[calls] = True

    # 1. Shared local UDP sockets with a call flow among them.
    udp = np.flatnonzero(ft.proto == 17)
    if len(udp):
        key = np.stack([l_hi[udp], l_lo[udp], l_port[udp].astype(np.uint64)], axis=1)
        _, inv = np.unique(key, axis=0, return_inverse=True)
        inv = inv.reshape(-1)
        has_call = np.bincount(inv, weights=calls[udp], minlength=inv.max() + 1) > 0
        order = np.argsort(inv, kind="stable")
        groups = np.split(udp[order], np.flatnonzero(np.diff(inv[order])) + 1)
        for g in groups:
            if len(g) > 1 and has_call[inv[np.searchsorted(udp, g[0])]]:
                members[g] = True
                for f in g[1:]:
                    u.join(int(g[0]), int(f))

    # 2. STUN-learned peers of call flows.
    remote = {}
    for f in np.flatnonzero(ft.proto == 17).tolist():
        remote.setdefault((_ip(r_hi[f], r_lo[f]), int(r_port[f])), []).append(f)
    for f in np.flatnonzero(calls).tolist():
        for peer in evidence.flows[f].stun.peers:
            for g in remote.get(peer, ()):
                members[g] = True
                u.join(f, g)

    # 3. Same host, same app (or generic), overlapping or near in time.
    host = [(int(h), int(lo)) for h, lo in zip(l_hi.tolist(), l_lo.tolist())]
    by_host: dict = {}
    for f in np.flatnonzero(calls).tolist():
        by_host.setdefault(host[f], []).append(f)
    for flows in by_host.values():
        flows.sort(key=lambda f: first[f])
        named = [f for f in flows if labels[f] not in GENERIC]
        for i, f in enumerate(named):
            for g in named[i + 1:]:
                if first[g] > last[f] + gap:
                    break
                if labels[g] == labels[f]:
                    u.join(f, g)
        starts = first[flows]
        longest = int((last[flows] - starts).max())
        for f in (f for f in flows if labels[f] in GENERIC):
            # Only flows starting in [first - longest - gap, last + gap] can overlap f (flows is sorted).
            lo = np.searchsorted(starts, first[f] - longest - gap, side="left")
            hi = np.searchsorted(starts, last[f] + gap, side="right")
            near = [g for g in flows[lo:hi] if g != f and last[g] + gap >= first[f]]
            apps = {labels[g] for g in near if labels[g] not in GENERIC}
            if len(apps) == 1:
                for g in near:
                    if labels[g] in apps:
                        u.join(f, g)
            elif not apps:
                for g in near:
                    u.join(f, g)

    # 4. Control flows of the call's app to the app's own servers.
    if app_of_address is not None:
        spans: dict = {}
        for f in np.flatnonzero(members).tolist():
            if labels[f] in GENERIC:
                continue
            spans.setdefault((host[f], labels[f]), []).append(f)
        if spans:
            hosts = {h for h, _ in spans}
            app_of_ip: dict = {}      # one lookup per remote address, however many flows go to it
            for f in np.flatnonzero(~members & np.isin(ft.proto, (6, 17))).tolist():
                if host[f] not in hosts:
                    continue
                ip = _ip(r_hi[f], r_lo[f])
                if ip not in app_of_ip:
                    app_of_ip[ip] = app_of_address(ip, evidence.dns_names.get(ip, ()))
                app = app_of_ip[ip]
                for g in spans.get((host[f], app), ()):
                    if first[g] <= last[f] + gap and last[g] + gap >= first[f]:
                        members[f] = True
                        u.join(f, g)
                        break

    roots = np.array([u.find(f) for f in range(n)])
    keep = np.flatnonzero(members)
    # Only groups holding at least one call flow are calls.
    call_roots = {int(roots[f]) for f in np.flatnonzero(calls).tolist()}
    starts = {}
    for f in keep.tolist():
        r = int(roots[f])
        if r in call_roots:
            starts[r] = min(starts.get(r, first[f]), first[f])
    for cid, r in enumerate(sorted(starts, key=lambda r: (starts[r], r))):
        call_of[keep[roots[keep] == r]] = cid
    return call_of


def _media_packets(ft, f: int, e) -> tuple[int, int]:
    """(a->b, b->a) packets of flow f that are not STUN messages: RTP where RTP was recognised,
    else every packet but the STUN requests and responses (connectivity checks are not media)."""
    if e is None:
        return int(ft.packets_ab[f]), int(ft.packets_ba[f])
    if e.has_rtp:
        return e.rtp_packets_ab, e.rtp_packets_ba
    s = e.stun
    return (max(int(ft.packets_ab[f]) - s.requests_ab - s.responses_ab, 0),
            max(int(ft.packets_ba[f]) - s.requests_ba - s.responses_ba, 0))


def summarize_calls(ft, labels, call_of: np.ndarray, evidence=None) -> list[CallSummary]:
    """One CallSummary per call id: its flows, span, and whether two-way media was ever seen
    (media packets, STUN checks excluded, at least MIN_TWO_WAY_PACKETS in each direction)."""
    remote_is_a = _local_side(ft)
    out = []
    for cid in range(int(call_of.max()) + 1 if len(call_of) else 0):
        flows = np.flatnonzero(call_of == cid)
        flows = flows[np.argsort(ft.first_ns[flows], kind="stable")]
        media = [int(f) for f in flows if is_call(labels[f]) and labels[f] not in SIGNALLING]
        sent = recv = 0
        for f in media:
            ab, ba = _media_packets(ft, f, evidence.flows[f] if evidence is not None else None)
            s, r = (ba, ab) if remote_is_a[f] else (ab, ba)
            sent, recv = sent + s, recv + r
        named = [labels[f] for f in flows if is_call(labels[f]) and labels[f] not in GENERIC]
        app = max(set(named), key=named.count) if named else next(labels[f] for f in flows if is_call(labels[f]))
        f0 = int(flows[0])
        h = (ft.b_hi[f0], ft.b_lo[f0]) if remote_is_a[f0] else (ft.a_hi[f0], ft.a_lo[f0])
        out.append(CallSummary(cid, app, _ip(*h), [int(f) for f in flows], int(ft.first_ns[flows].min()),
                               int(ft.last_ns[flows].max()), media, sent, recv,
                               sent >= MIN_TWO_WAY_PACKETS and recv >= MIN_TWO_WAY_PACKETS))
    return out
