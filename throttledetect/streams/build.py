"""Streams: one capture's per-(flow, direction) streams, built lazily and cached."""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from throttledetect.flows import local_side_is_a, local_side_known
from throttledetect.read import pages
from throttledetect.streams.cadence import Cadence, find_cadence
from throttledetect.streams.loss import LossUnits, merge_loss
from throttledetect.streams.packets import DirectionPackets
from throttledetect.streams.rtp import RtpStream, build_rtp_streams
from throttledetect.streams.srtcp import TRAILER, SrtcpIndex, find_srtcp_index, rtcp_mask
from throttledetect.streams.tcp import TcpSegments, build_tcp_segments

TCP, UDP = 6, 17
MIN_RTP_STREAM = 3          # packets of one SSRC that make a stream
MIN_LOSS_STREAM = 20        # a stream this short says nothing about loss
MAX_CACHED_FLOWS = 64       # flows whose streams are kept (Streams._cached)
MAX_PREREAD_HEADERS = 8_000_000     # RTP headers read ahead in one pass (96 MB; Streams.read_rtp_headers)


@dataclass
class Streams:
    cap: object
    ft: object
    cl: object | None = None
    _cache: dict = field(default_factory=dict, repr=False)
    _headers: dict = field(default_factory=dict, repr=False)     # (flow, direction) -> RTP headers read ahead

    @cached_property
    def t0_ns(self) -> int:
        ts = self.cap.packets.ts_ns
        return int(ts.min()) if len(ts) else 0

    @cached_property
    def t_end(self) -> float:
        ts = self.cap.packets.ts_ns
        return float((int(ts.max()) - self.t0_ns) / 1e9) if len(ts) else 0.0

    @cached_property
    def local_is_a(self) -> np.ndarray:
        return local_side_is_a(self.ft)[0]

    @cached_property
    def local_known(self) -> np.ndarray:
        """Per flow: is the local side grounded (not the tie-break): flows.local_side_known."""
        return local_side_known(self.ft)

    def one_way_unknown(self, i: int) -> bool:
        """A flow with one direction only whose local side is the tie-break: whether this host
        sent it or received it cannot be told."""
        one_way = min(int(self.ft.packets_ab[i]), int(self.ft.packets_ba[i])) == 0
        return one_way and not bool(self.local_known[i])

    def toward_local(self, i: int) -> int:
        """The direction of flow i that arrives at the capturing host (0: a->b arrives at b).
        The local side is flows.local_side_is_a's: the address ranges, else the endpoint seen in
        more flows (the capturing host is in all of them), else the side that sent first."""
        return 1 if self.local_is_a[i] else 0

    def flow_span(self, i: int) -> tuple[float, float]:
        return ((int(self.ft.first_ns[i]) - self.t0_ns) / 1e9, (int(self.ft.last_ns[i]) - self.t0_ns) / 1e9)

    def _cached(self, key, build):
        """What build() returns for key = (kind, flow, direction), kept for the MAX_CACHED_FLOWS
        flows used last. Everything here is a function of the capture, its flows and their
        classification, so a flow's streams built again are the same streams; the tested flows
        of a capture are many (their packets most of a call capture), and keeping every one's
        streams held 660 MB at ten million packets (issue 15)."""
        i = key[1]
        per_flow = self._cache.get(i)
        if per_flow is None:
            per_flow = self._cache[i] = {}
            if len(self._cache) > MAX_CACHED_FLOWS:
                del self._cache[next(iter(self._cache))]      # the flow used longest ago
        else:
            self._cache[i] = self._cache.pop(i)                # used last now
        if key not in per_flow:
            per_flow[key] = build()
        return per_flow[key]

    # ------------------------------------------------------------------ per flow and direction
    def packets(self, i: int, d: int) -> DirectionPackets:
        def build():
            rows = self.ft.packet_indices(i)
            rows = rows[self.ft.dir_of[rows] == d]
            pk = self.cap.packets
            return DirectionPackets(flow=i, direction=d, rows=rows,
                                    t=(pk.ts_ns[rows].astype(np.int64) - self.t0_ns) / 1e9,
                                    size=pk.wirelen[rows].astype(np.float64),
                                    payload=pk.payload_wirelen[rows].astype(np.int64))
        return self._cached(("pk", i, d), build)

    def rtp(self, i: int, d: int) -> list[RtpStream]:
        return self._cached(("rtp", i, d), lambda: self._rtp(i, d))

    def tcp(self, i: int, d: int) -> TcpSegments | None:
        def build():
            if int(self.ft.proto[i]) != TCP:
                return None
            p = self.packets(i, d)
            return build_tcp_segments(self.cap, self.ft, i, d, p.rows, p.t, p.size, p.payload)
        return self._cached(("tcp", i, d), build)

    def rtp_packet_share(self, i: int, d: int) -> float:
        p = self.packets(i, d)
        n = sum(s.n for s in self.rtp(i, d))
        return n / p.n if p.n else 0.0

    def cadence(self, i: int, d: int) -> Cadence | None:
        """The voice train of a UDP direction without RTP headers (None when there is RTP, or no train)."""
        def build():
            if int(self.ft.proto[i]) != UDP or self.rtp_packet_share(i, d) > 0.5:
                return None
            p = self.packets(i, d)
            return find_cadence(p.t, p.size)
        return self._cached(("cad", i, d), build)

    def cadence_sound(self, i: int, d: int) -> bool:
        """Is the direction's cadence the sender's whole clock: some window of it complete, or
        the other direction a complete train at the same period (the same app's clock, which
        the network did not touch)? Otherwise its empty slots may be the sender's own pacing.
        Either way it holds one packet per slot (Cadence.one_per_slot): where packets outnumber
        the slots, a lost packet's slot is filled by its neighbour, whatever the other way shows."""
        cad = self.cadence(i, d)
        return cad is not None and cad.sound(self.cadence(i, 1 - d))

    def srtcp(self, i: int, d: int) -> SrtcpIndex | None:
        """The SRTCP index of a UDP direction's RTCP packets (streams/srtcp.py), or None."""
        def build():
            if int(self.ft.proto[i]) != UDP:
                return None
            p = self.packets(i, d)
            pk = self.cap.packets
            rows = p.rows
            plen = pk.payload_len[rows].astype(np.int64)
            whole = (pk.payload_off[rows] >= 0) & (plen == pk.payload_wirelen[rows].astype(np.int64))
            first = pk.prefix[rows, :8]
            m = whole & rtcp_mask(first, plen)
            if np.count_nonzero(m) == 0:
                return None
            trailer = pages.gather(self.cap, pk.payload_off[rows[m]].astype(np.int64) + plen[m] - TRAILER, TRAILER)
            return find_srtcp_index(p.t[m], p.size[m], first[m], trailer, p.t, p.size)
        return self._cached(("srtcp", i, d), build)

    def loss(self, i: int, d: int) -> LossUnits | None:
        """The direction's loss signal: RTP sequence gaps (all streams), else TCP holes, else the
        SRTCP index where the RTCP is (nearly) all the direction carries, else the cadence's empty
        slots where the cadence is sound (cadence_sound); None when there is none."""
        def build():
            streams = [s for s in self.rtp(i, d) if s.n >= MIN_LOSS_STREAM]
            if streams:
                return merge_loss([s.loss_units() for s in streams])
            tcp = self.tcp(i, d)
            if tcp is not None:
                return tcp.loss_units() if tcp.n >= MIN_LOSS_STREAM else None
            idx = self.srtcp(i, d)
            if idx is not None and idx.covers_direction:
                return idx.loss_units()
            return self.cadence(i, d).loss_units() if self.cadence_sound(i, d) else None
        return self._cached(("loss", i, d), build)

    def loss_source(self, i: int, d: int) -> str | None:
        lu = self.loss(i, d)
        return None if lu is None else lu.source

    def read_rtp_headers(self, flows) -> None:
        """Read the RTP headers of these flows' packets (both directions) in one pass over the
        file, kept until each direction's streams are built. Read flow by flow, each call's
        headers lie spread over the whole capture: every flow then mapped the file's pages again
        and gave them back (read/pages.py), a third of the detectors' time on a 2 M-packet
        capture. Up to MAX_PREREAD_HEADERS headers (12 bytes each); the rest are read as before."""
        keys, offs, total = [], [], 0
        for i in flows:
            for d in (0, 1):
                if (i, d) in self._headers:
                    continue
                sel, off = self._rtp_positions(i, d)
                if total + len(sel) > MAX_PREREAD_HEADERS:
                    break
                keys.append((i, d))
                offs.append(off[sel])
                total += len(sel)
        if not keys:
            return
        header = pages.gather(self.cap, np.concatenate(offs), 12)
        for key, part in zip(keys, np.split(header, np.cumsum([len(o) for o in offs])[:-1])):
            self._headers[key] = part

    # ------------------------------------------------------------------ builders
    def _rtp_positions(self, i: int, d: int) -> tuple[np.ndarray, np.ndarray]:
        """(indices into packets(i, d) of the packets carrying an RTP header, every packet's
        header position in the file)."""
        p = self.packets(i, d)
        pk = self.cap.packets
        rows = p.rows
        if self.cl is not None and p.n:
            ev = self.cl.evidence
            has = ev.rtp_encap_of[rows] >= 0
            rel = ev.rtp_offset_of[rows].astype(np.int64)
        else:
            has = np.zeros(len(rows), bool)
            rel = np.zeros(len(rows), np.int64)
        off = pk.payload_off[rows].astype(np.int64) + rel
        has &= (pk.payload_off[rows] >= 0) & (rel + 12 <= pk.payload_len[rows].astype(np.int64))
        return np.flatnonzero(has), off

    def _rtp(self, i: int, d: int) -> list[RtpStream]:
        p = self.packets(i, d)
        if p.n == 0:
            self._headers.pop((i, d), None)
            return []
        sel, off = self._rtp_positions(i, d)
        header = self._headers.pop((i, d), None)
        if not len(sel):
            return []
        if header is None:
            header = pages.gather(self.cap, off[sel], 12)     # the file's pages given back (read/pages.py)
        return build_rtp_streams(i, d, p.rows[sel], p.t[sel], p.size[sel], header, MIN_RTP_STREAM)


def build_streams(cap, ft, cl=None) -> Streams:
    return Streams(cap, ft, cl)
