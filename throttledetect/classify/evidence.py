"""Evidence per flow: which signatures its packets carry, gathered for the whole capture at once.

Whole-capture numpy prefilters pick the few packets worth a full parse (STUN by its magic
cookie, SIP by its start line, TLS/DTLS/QUIC handshakes, DNS by port, the first packets of each
flow for app framings); the scalar parsers of throttledetect.wire run only on those. RTP and
RTCP are recognised fully vectorised over every UDP packet, per (flow, direction, SSRC).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from throttledetect.flows import FlowTable
from throttledetect.read import Capture, pages
from throttledetect.read.table import address_text
from throttledetect.wire import apps as appwire
from throttledetect.wire import dns as dnswire
from throttledetect.wire import dtls as dtlswire
from throttledetect.wire import quic as quicwire
from throttledetect.wire import sip as sipwire
from throttledetect.wire import stun as stunwire
from throttledetect.wire import tls as tlswire
from throttledetect.wire.rtp import classify_rtp_or_rtcp, rtp_fields

FIRST_PACKETS = 12          # per flow and direction, parsed for handshakes and app framings
MAX_STUN_PER_FLOW = 400     # STUN keeps coming (ICE consent every few seconds); enough to count answers
MIN_RTP_RUN = 3             # packets of one SSRC with advancing sequence numbers (nDPI needs 3 too)
RTP_SEQ_STEP_MAX = 64       # a sequence step larger than this is not "advancing" (loss bursts are shorter)
DNS_PORTS = (53, 5353, 5355)
SIP_PORTS = (5060, 5061)
_SIP_STARTS = tuple(m.encode() + b" " for m in sipwire.METHODS) + (b"SIP/2.0 ",)
STUN_COOKIE = bytes.fromhex("2112a442")
AGORA_SNI = b"\x04SNI"     # Agora SD-RTN edge request: byte 6 = 0x21, then a length-prefixed "SNI" tag

# Where an RTP header sits inside encapsulations recognised by their first bytes.
ENCAP_PLAIN, ENCAP_CHANNEL, ENCAP_MSTURN, ENCAP_ZOOM, ENCAP_TCP = 0, 1, 2, 3, 4


class _NoCounts(Counter):
    """The one empty Counter every flow without hits shares. Read-only, so that a writer that did
    not take the flow's own (_counts) fails loudly rather than counting for every flow."""

    def __setitem__(self, key, value):
        raise TypeError("the shared empty Counter is read-only: write through _counts()")

    def update(self, iterable=None, /, **kwds):
        if iterable is not None or kwds:      # Counter() itself calls update(None)
            raise TypeError("the shared empty Counter is read-only: write through _counts()")


# A capture may have a million flows, each with its evidence: the empty Counters and sets a flow
# without hits holds are these shared ones (read-only), and a flow gets its own on its first hit
# (_counts, _own_set). With an attribute dict per object and a fresh container per field, the
# evidence of a DNS flow took 2.9 kB (issue 15).
NO_COUNTS = _NoCounts()
NO_SET: frozenset = frozenset()


def _own(obj, name: str, shared, make):
    """obj.<name>, made obj's own (make()) in place of the shared empty one on the first write."""
    c = getattr(obj, name)
    if c is shared:
        c = make()
        setattr(obj, name, c)
    return c


def _counts(obj, name: str) -> Counter:
    return _own(obj, name, NO_COUNTS, Counter)


def _own_set(obj, name: str) -> set:
    return _own(obj, name, NO_SET, set)


def _no_counts() -> Counter:
    return NO_COUNTS


@dataclass(slots=True)
class StunSummary:
    messages: int = 0
    requests_ab: int = 0           # binding/allocate requests sent by side a
    requests_ba: int = 0
    responses_ab: int = 0          # success or error responses sent by side a
    responses_ba: int = 0
    apps: Counter = field(default_factory=_no_counts)     # app hint -> messages naming it
    realms: set = NO_SET
    software: set = NO_SET
    peers: set = NO_SET            # (ip, port) from XOR-PEER / XOR-RELAYED
    turn: bool = False
    relayed_media: Counter = field(default_factory=_no_counts)  # 'rtp'/'rtcp'/'dtls' inside TURN DATA attributes


@dataclass(slots=True)
class FlowEvidence:
    """What the packets of one flow say about it. Filled by gather(); read by the rules."""

    stun: StunSummary = field(default_factory=StunSummary)
    rtp_packets: int = 0           # packets in valid RTP runs (both directions)
    rtp_packets_ab: int = 0
    rtp_packets_ba: int = 0
    rtp_pts: Counter = field(default_factory=_no_counts)
    rtp_ssrcs: int = 0
    rtp_encap: str | None = None   # 'plain', 'turn-channel', 'ms-turn', 'zoom', 'tcp'
    rtcp_packets: int = 0
    dtls: int = 0
    dtls_client_hello: bool = False
    sip: list = field(default_factory=list)           # SipMessage
    tls_sni: str | None = None
    tls_alpn: tuple = ()
    tls_records: int = 0
    quic: str | None = None        # version name
    dns_messages: int = 0
    apps: Counter = field(default_factory=_no_counts)     # app framing hits: 'zoom', 'telegram', 'discord', ...
    zoom_media: int = 0
    http: bool = False
    first_payload: bytes | None = None   # first bytes of the first packet that carried any
    mumble_pings: set = NO_SET    # identifiers of Mumble UDP pings sent by side a
    mumble_pongs: set = NO_SET    # ... and echoed in 24-byte answers from side b
    imo_last_byte: int = -1        # payload of the previous packet when it was a single byte, else -1
    tencent_ids: set = NO_SET     # Tencent Meeting session ids seen in the framing

    @property
    def has_rtp(self) -> bool:
        return self.rtp_packets >= MIN_RTP_RUN


@dataclass(slots=True)
class NameEvent:
    """A name a local host used: a DNS answer it received or a TLS SNI it sent."""

    ts_ns: int
    client: str                    # the host that asked (DNS) or connected (TLS)
    name: str
    address: str | None            # the address the name led to (DNS answer, TLS server)


@dataclass
class CaptureEvidence:
    flows: list                    # FlowEvidence per flow
    dns_names: dict                # ip string -> set of names it was resolved from, or was the TLS SNI for
    rtp_encap_of: np.ndarray       # per packet row: ENCAP_* where an RTP header was found, else -1
    rtp_offset_of: np.ndarray      # per packet row: byte offset of that RTP header in the payload
    names: list = field(default_factory=list)   # NameEvent, in capture order


def gather(cap: Capture, ft: FlowTable) -> CaptureEvidence:
    t = cap.packets
    flows = [FlowEvidence() for _ in range(len(ft))]
    dns_names: dict[str, set] = {}
    names: list[NameEvent] = []
    rank = _rank_in_flow_direction(ft)
    member = ft.flow_of >= 0
    pre = t.prefix
    udp = member & (t.proto == 17)
    tcp = member & (t.proto == 6)
    has_payload = t.payload_len > 0

    # --- rows worth a scalar parse -----------------------------------------------------------
    b0 = pre[:, 0]
    cookie_at4 = (pre[:, 4] == 0x21) & (pre[:, 5] == 0x12) & (pre[:, 6] == 0xA4) & (pre[:, 7] == 0x42)
    cookie_at6 = (pre[:, 6] == 0x21) & (pre[:, 7] == 0x12) & (pre[:, 8] == 0xA4) & (pre[:, 9] == 0x42)
    stun_rows = member & has_payload & (((b0 < 4) & cookie_at4) | (tcp & cookie_at6 & (pre[:, 2] < 4)))
    classic_stun = udp & has_payload & (b0 < 2) & ~cookie_at4 & (rank < FIRST_PACKETS)
    wrapped = udp & has_payload & (((b0 >= 0x40) & (b0 <= 0x4F)) | ((b0 == 0xFF) & (pre[:, 1] == 0x10))) \
        & (rank < FIRST_PACKETS)
    port_in = lambda ports: np.isin(t.sport, ports) | np.isin(t.dport, ports)  # noqa: E731
    dns_rows = member & has_payload & port_in(DNS_PORTS)
    first = member & has_payload & (rank < FIRST_PACKETS)
    rows = np.flatnonzero(stun_rows | classic_stun | wrapped | dns_rows | first)
    _cap_stun_rows(rows, stun_rows, ft)

    # the columns the loop reads, as Python values for these rows only: a numpy scalar read per
    # row and column cost more than the parses on a capture of many small flows (issue 15)
    rows_flow = ft.flow_of[rows].tolist()
    rows_side_a = (ft.dir_of[rows] == 0).tolist()
    rows_tcp = (t.proto[rows] == 6).tolist()
    rows_sport, rows_dport = t.sport[rows].tolist(), t.dport[rows].tolist()
    rows_dns = dns_rows[rows].tolist()
    rows_stun = (stun_rows[rows] | classic_stun[rows] | wrapped[rows]).tolist()
    rows_first = first[rows].tolist()
    rows = rows.tolist()
    # payloads read with the file's pages given back as they go (read/pages.py): rows worth a
    # parse are spread over the whole file
    for k, (r, data) in enumerate(zip(rows, pages.payloads(cap, rows))):
        ev = flows[rows_flow[k]]
        side_a = rows_side_a[k]
        is_tcp = rows_tcp[k]
        if rows_dns[k]:
            msg = dnswire.parse_dns(data, tcp=is_tcp)
            if msg is not None:
                ev.dns_messages += 1
                if msg.is_response:
                    client = _endpoint_ip(t.dst_hi[r], t.dst_lo[r])
                    for addr, chain in _learn_dns(msg, dns_names).items():
                        names.extend(NameEvent(int(t.ts_ns[r]), client, nm, addr) for nm in sorted(chain))
                continue
        if rows_stun[k]:
            msg = _stun_in(data, is_tcp)
            if msg is not None:
                _note_stun(ev.stun, msg, side_a)
                continue
        if not rows_first[k]:
            continue
        if ev.first_payload is None:
            ev.first_payload = data[:64]
        had_sni = ev.tls_sni
        _note_first_packet(ev, data, is_tcp, rows_sport[k], rows_dport[k], side_a)
        if ev.tls_sni and not had_sni:
            client = _endpoint_ip(t.src_hi[r], t.src_lo[r])
            server = _endpoint_ip(t.dst_hi[r], t.dst_lo[r])
            dns_names.setdefault(server, set()).add(ev.tls_sni)
            names.append(NameEvent(int(t.ts_ns[r]), client, ev.tls_sni, server))

    # the per-row masks are done with: not held through the RTP pass
    del rank, member, has_payload, cookie_at4, cookie_at6, stun_rows, classic_stun, wrapped, dns_rows, first, rows
    del rows_flow, rows_side_a, rows_tcp, rows_sport, rows_dport, rows_dns, rows_stun, rows_first
    pages.trim_heap()
    rtp_encap_of, rtp_offset_of = _note_rtp(cap, ft, flows, udp, tcp)
    return CaptureEvidence(flows=flows, dns_names=dns_names, rtp_encap_of=rtp_encap_of, rtp_offset_of=rtp_offset_of,
                           names=names)


def _endpoint_ip(hi, lo) -> str:
    return address_text(hi, lo)


def _rank_in_flow_direction(ft: FlowTable) -> np.ndarray:
    """Per packet row: its index among its flow's packets in the same direction (-1 outside flows).

    ft.order is grouped by flow and time-ordered within: a row's rank is the number of rows of
    its direction before it in its flow, counted with one cumulative sum, in int32 (a flow table
    of 2**31 rows would be 24 GB of packet columns): no sort, and a quarter of the memory of the
    int64 sort it replaces (the classifier's peak on ten million packets, issue 15)."""
    n = len(ft.flow_of)
    rank = np.full(n, -1, dtype=np.int32)
    order = ft.order
    m = len(order)
    if m == 0:
        return rank
    fstart = np.asarray(ft.start, dtype=np.int64)
    is_ba = ft.dir_of[order] != 0
    c_ab = np.cumsum(~is_ba, dtype=np.int32)                        # a->b rows up to and including each
    ab_before = np.concatenate(([0], c_ab)).astype(np.int32)[fstart[:-1]]   # a->b rows before each flow
    flow = np.repeat(np.arange(len(fstart) - 1, dtype=np.int32), np.diff(fstart))
    pos = np.arange(m, dtype=np.int32)
    # b->a rows before it in its flow: its position in the flow minus the a->b rows up to it
    ba = pos - c_ab - (fstart[:-1].astype(np.int32) - ab_before)[flow]
    c_ab -= 1
    c_ab -= ab_before[flow]                                         # now: a->b rows before it in its flow
    rank[order] = np.where(is_ba, ba, c_ab)
    return rank


def _cap_stun_rows(rows: np.ndarray, stun_rows: np.ndarray, ft: FlowTable) -> None:
    """Keep at most MAX_STUN_PER_FLOW STUN rows per flow: a long ICE session must not cost a parse per check."""
    idx = np.flatnonzero(stun_rows)
    if len(idx) <= MAX_STUN_PER_FLOW:
        return
    f = ft.flow_of[idx]
    perm = np.argsort(f, kind="stable")
    fs = f[perm]
    starts = np.flatnonzero(np.r_[True, fs[1:] != fs[:-1]])
    pos = np.arange(len(fs)) - np.repeat(starts, np.diff(np.r_[starts, len(fs)]))
    stun_rows[idx[perm[pos >= MAX_STUN_PER_FLOW]]] = False


def _stun_in(data: bytes, is_tcp: bool):
    msg = stunwire.parse_stun(data, tcp=is_tcp)
    if msg is not None:
        return msg
    if is_tcp:
        return None
    cd = stunwire.parse_channel_data(data)
    if cd is not None:
        return stunwire.parse_stun(cd.payload)
    ms = stunwire.parse_ms_turn(data)
    if ms is not None:
        return stunwire.parse_stun(ms.payload)
    return None


def _note_stun(s: StunSummary, msg, side_a: bool) -> None:
    s.messages += 1
    if msg.cls == 0:          # request
        if side_a:
            s.requests_ab += 1
        else:
            s.requests_ba += 1
    elif msg.cls in (2, 3):   # success / error response
        if side_a:
            s.responses_ab += 1
        else:
            s.responses_ba += 1
    hint = appwire.stun_app_hint(msg)
    if hint:
        _counts(s, "apps")[hint] += 1
    if msg.realm:
        _own_set(s, "realms").add(msg.realm)
    if msg.software:
        _own_set(s, "software").add(msg.software)
    if msg.is_turn:
        s.turn = True
        inner = msg.attribute(stunwire.DATA_ATTRIBUTE)
        if inner:
            kind = classify_rtp_or_rtcp(inner)
            if kind is None and dtlswire.parse_dtls(inner) is not None:
                kind = "dtls"
            if kind:
                _counts(s, "relayed_media")[kind] += 1
    for addr in msg.xor_peer_addresses:
        _own_set(s, "peers").add((addr.ip, addr.port))
    relayed = msg.xor_relayed_address
    if relayed is not None:
        _own_set(s, "peers").add((relayed.ip, relayed.port))


def _learn_dns(msg, names: dict) -> dict:
    """Every address in an answer inherits the question and every CNAME on the way to it.
    Returns {address: names} for this answer."""
    chain = {n.lower().rstrip(".") for n in ([msg.qname] if msg.qname else [])}
    for rec in msg.answers:
        if rec.rtype == dnswire.CNAME and isinstance(rec.value, str):
            chain.add(rec.name.lower().rstrip("."))
            chain.add(rec.value.lower().rstrip("."))
    learnt = {}
    for rec in msg.answers:
        if rec.rtype in (dnswire.A, dnswire.AAAA) and isinstance(rec.value, str):
            these = chain | {rec.name.lower().rstrip(".")}
            names.setdefault(rec.value, set()).update(these)
            learnt.setdefault(rec.value, set()).update(these)
    return learnt


def _note_first_packet(ev: FlowEvidence, data: bytes, is_tcp: bool, sport: int, dport: int,
                       side_a: bool = True) -> None:
    if data.startswith(_SIP_STARTS) or (data[:3].isalpha() and (sport in SIP_PORTS or dport in SIP_PORTS)):
        msg = sipwire.parse_sip(data)
        if msg is not None:
            ev.sip.append(msg)
            return
    if data[:4] in (b"GET ", b"POST", b"HTTP", b"HEAD", b"PUT "):
        ev.http = True
        return
    if is_tcp:
        if data[:1] == b"\x16" and data[1:2] == b"\x03":
            ev.tls_records += 1
            hello = tlswire.parse_client_hello(data)
            if hello is not None and hello.sni and not ev.tls_sni:
                ev.tls_sni = hello.sni.lower()
                ev.tls_alpn = hello.alpn
            return
        if data[:1] in (b"\x17", b"\x14", b"\x15") and data[1:2] == b"\x03":
            ev.tls_records += 1
            return
        if appwire.parse_whatsapp_preamble(data) is not None:
            _counts(ev, "apps")["whatsapp_chat"] += 1
        elif appwire.is_viber_packet(data, tcp=True):
            _counts(ev, "apps")["viber"] += 1
        return
    b0 = data[0] if data else -1
    if _note_small_app_packet(ev, data, side_a):
        return
    if 20 <= b0 <= 63:
        rec = dtlswire.parse_dtls(data)
        if rec is not None:
            ev.dtls += 1
            if getattr(rec, "is_client_hello", False):
                ev.dtls_client_hello = True
            return
    if b0 >= 0x80 and (sport == 443 or dport == 443 or quicwire.is_quic_initial(data)):
        hdr = quicwire.parse_quic_long_header(data)
        if hdr is not None:
            ev.quic = quicwire.version_name(hdr.version)
            return
        g = quicwire.gquic_version(data)
        if g:
            ev.quic = g
            return
    zoom = appwire.parse_zoom_media(data)
    # Only the server header on Zoom's ports counts here: the P2P header is a single byte, which
    # random payloads match; P2P media is confirmed by RTP streams found inside it (rtp_encap).
    if zoom is not None and zoom.via_server and (8801 <= sport <= 8810 or 8801 <= dport <= 8810):
        ev.zoom_media += 1
        return
    if len(data) >= 18 and data[6] == 0x21 and data[12:16] == AGORA_SNI:
        _counts(ev, "apps")["agora"] += 1
        return
    if data.startswith(appwire.ZOOM_P2P_HELLO_PREFIX) and appwire.parse_zoom_p2p_hello(data):
        _counts(ev, "apps")["zoom"] += 1
        return
    if appwire.parse_telegram_reflector(data) is not None:
        _counts(ev, "apps")["telegram"] += 1
        return
    if appwire.parse_discord(data) is not None:
        _counts(ev, "apps")["discord"] += 1
        return
    if appwire.is_line_call_packet(data):
        _counts(ev, "apps")["line"] += 1
        return
    if appwire.is_viber_packet(data):
        _counts(ev, "apps")["viber"] += 1


def _note_small_app_packet(ev: FlowEvidence, data: bytes, side_a: bool) -> bool:
    """imo, Mumble and Tencent Meeting packets, recognised by their lengths and first bytes."""
    if len(data) == 1:
        if ev.imo_last_byte == data[0]:
            _counts(ev, "apps")["imo"] += 1
        ev.imo_last_byte = data[0]
        return True
    ev.imo_last_byte = -1
    if appwire.is_imo_packet(data):
        _counts(ev, "apps")["imo"] += 1
        return True
    ident = appwire.mumble_ping_ident(data)
    if ident is not None:
        _own_set(ev, "mumble_pings" if side_a and len(data) == appwire.MUMBLE_PING_LEN else "mumble_pongs").add(ident)
        if ev.mumble_pings & ev.mumble_pongs:
            _counts(ev, "apps")["mumble"] += 1
        return len(data) == appwire.MUMBLE_PING_LEN
    tid = appwire.tencent_media_id(data)
    if tid is not None:
        _own_set(ev, "tencent_ids").add(tid)
        _counts(ev, "apps")["tencent_meeting"] += 1
        return True
    return False


def _zoom_offsets(pre: np.ndarray) -> np.ndarray:
    """Per row: the RTP offset inside a Zoom SFU/P2P media packet, or -1 (vectorised)."""
    table = np.full(256, -1, dtype=np.int64)
    for media_type, at in appwire._ZOOM_RTP_AT.items():
        table[media_type] = at
    sfu = (pre[:, 0] == appwire.ZOOM_SFU_MEDIA)
    off_sfu = np.where(sfu, table[pre[:, 8]], -1)
    off_sfu = np.where(off_sfu >= 0, off_sfu + 8, -1)
    off_p2p = table[pre[:, 0]]
    return np.where(sfu, off_sfu, off_p2p)


# rows whose RTP candidates are found (and whole flows of about as many rows whose RTP runs are
# decided) at once: bounds the temporaries per row (about 120 MB a million rows)
ROW_CHUNK = 1 << 18


def _rtp_candidates(t, flow_of: np.ndarray, udp: np.ndarray, tcp: np.ndarray, lo: int, hi: int):
    """Rows lo..hi: the candidates with a valid RTP header (row, encapsulation, header offset,
    seq, SSRC, payload type) and the RTCP rows. Per-row temporaries live for one chunk only;
    what is kept is a few bytes per candidate."""
    pre = t.prefix[lo:hi]
    width = pre.shape[1]
    plen = t.payload_len[lo:hi].astype(np.int64)
    udp, tcp = udp[lo:hi], tcp[lo:hi]
    b0, b1 = pre[:, 0], pre[:, 1]
    n = hi - lo
    encap = np.full(n, -1, dtype=np.int8)
    offset = np.full(n, -1, dtype=np.int64)

    plain = udp & ((b0 & 0xC0) == 0x80)
    channel = udp & (b0 >= 0x40) & (b0 <= 0x4F) & ((pre[:, 4] & 0xC0) == 0x80)
    msturn = udp & (b0 == 0xFF) & (b1 == 0x10) & ((pre[:, 12] & 0xC0) == 0x80)
    framed = tcp & ((pre[:, 2] & 0xC0) == 0x80) & (((pre[:, 0].astype(np.int64) << 8) | pre[:, 1]) + 2 == plen)
    for mask, kind, off in ((plain, ENCAP_PLAIN, 0), (channel, ENCAP_CHANNEL, 4), (msturn, ENCAP_MSTURN, 12),
                            (framed, ENCAP_TCP, 2)):
        encap[mask] = kind
        offset[mask] = off
    zoff = _zoom_offsets(pre)
    zoom = udp & (encap < 0) & (zoff >= 0) & (zoff + 12 <= width)
    encap[zoom] = ENCAP_ZOOM
    offset[zoom] = zoff[zoom]

    # RTCP: version 2, packet type 192-213, its length inside the datagram (RFC 3550 6.4, RFC 5761 4).
    rtcp = plain & (b1 >= 192) & (b1 <= 213) & \
        (((pre[:, 2].astype(np.int64) << 8 | pre[:, 3]) + 1) * 4 <= plen)

    cand = np.flatnonzero((encap >= 0) & ~rtcp)
    fields = rtp_fields(pre[cand], offset[cand], plen[cand])
    ok = fields["valid"]
    cand = cand[ok]
    rtcp_rows = np.flatnonzero(rtcp & (flow_of[lo:hi] >= 0)) + lo
    return (cand + lo, encap[cand], offset[cand].astype(np.int16), fields["seq"][ok], fields["ssrc"][ok],
            fields["pt"][ok], rtcp_rows)


def _rtp_runs(cand, ssrc, dr, fl, seq) -> np.ndarray:
    """Per candidate (whole flows of them, in any order): whether its (flow, direction, SSRC)
    group is an RTP stream."""
    perm = np.lexsort((cand, ssrc, dr, fl))
    g_fl, g_dr, g_ss, g_seq = fl[perm], dr[perm], ssrc[perm], seq[perm]
    same = np.r_[False, (g_fl[1:] == g_fl[:-1]) & (g_dr[1:] == g_dr[:-1]) & (g_ss[1:] == g_ss[:-1])]
    del g_fl, g_dr, g_ss
    step = np.r_[0, (g_seq[1:] - g_seq[:-1]) % 65536]
    advancing = same & (step >= 1) & (step <= RTP_SEQ_STEP_MAX)
    gid = np.cumsum(~same) - 1
    size = np.bincount(gid)
    adv = np.bincount(gid, weights=advancing)
    # Duplicates (step 0: a SPAN port copying each packet twice) count neither way.
    dup = np.bincount(gid, weights=same & (step == 0))
    # A stream: at least MIN_RTP_RUN packets, most consecutive distinct pairs advancing.
    stream = (size - dup >= MIN_RTP_RUN) & (adv >= 0.6 * (size - 1 - dup)) & (adv >= MIN_RTP_RUN - 1)
    good = np.zeros(len(cand), dtype=bool)
    good[perm] = stream[gid]
    return good


def _note_rtp(cap: Capture, ft: FlowTable, flows: list, udp: np.ndarray, tcp: np.ndarray):
    """Vectorised RTP/RTCP recognition over every packet of every flow.

    Returns per packet row the encapsulation (ENCAP_*, -1 = no RTP stream) and RTP header offset.
    Candidates are found ROW_CHUNK rows at a time (_rtp_candidates): a capture of ten million
    packets held gigabytes of per-row temporaries when they were found all at once. What a
    candidate needs later (encapsulation, offset, sequence number, SSRC, payload type: 10 bytes)
    is kept in per-row columns, not as lists of candidates with their row numbers, and the runs
    are decided, and each flow's streams summed up, ROW_CHUNK rows' worth of whole flows at a
    time (issue 15: this was the classifier's peak, some 40 bytes a candidate held at once beside
    the sort of them all, and a pass over every stream row per flow with streams).
    """
    t = cap.packets
    n = len(t)
    encap_of = np.full(n, -1, dtype=np.int8)      # the candidates', then the streams' only
    offset_of = np.full(n, -1, dtype=np.int16)
    seq_of = np.zeros(n, dtype=np.uint16)
    ssrc_of = np.zeros(n, dtype=np.uint32)
    pt_of = np.zeros(n, dtype=np.uint8)
    rtcp_parts = []
    for lo in range(0, n, ROW_CHUNK):
        cand, c_encap, c_offset, c_seq, c_ssrc, c_pt, rtcp = _rtp_candidates(t, ft.flow_of, udp, tcp, lo,
                                                                           min(n, lo + ROW_CHUNK))
        encap_of[cand], offset_of[cand], seq_of[cand], ssrc_of[cand], pt_of[cand] = c_encap, c_offset, c_seq, \
            c_ssrc, c_pt
        rtcp_parts.append(rtcp)
        del cand, c_encap, c_offset, c_seq, c_ssrc, c_pt, rtcp
    rtcp_rows = np.concatenate(rtcp_parts) if rtcp_parts else np.zeros(0, dtype=np.int64)
    del rtcp_parts

    # Group by (flow, direction, SSRC) in time order: a real stream advances its sequence number.
    # A group never spans two flows, so whole flows are decided at a time (in ft.order, rows
    # grouped by flow), about ROW_CHUNK rows of them: the same decisions, bounded temporaries.
    # Candidates of flows that are no stream go back to -1.
    # seq, SSRC and payload type in the widths they came in: the differences and keys below are
    # the same values as in int64
    nf = len(ft)
    start = np.asarray(ft.start, dtype=np.int64)
    per_ab = np.zeros(nf, dtype=np.int64)
    per_ba = np.zeros(nf, dtype=np.int64)
    encap_names = {ENCAP_PLAIN: "plain", ENCAP_CHANNEL: "turn-channel", ENCAP_MSTURN: "ms-turn",
                   ENCAP_ZOOM: "zoom", ENCAP_TCP: "tcp"}
    f0 = 0
    while f0 < nf:
        f1 = int(np.searchsorted(start, int(start[f0]) + ROW_CHUNK, side="right")) - 1
        f1 = min(nf, max(f1, f0 + 1))
        rows = ft.order[int(start[f0]):int(start[f1])]
        rows = rows[encap_of[rows] >= 0]
        if len(rows):
            good = _rtp_runs(rows, ssrc_of[rows], ft.dir_of[rows], ft.flow_of[rows], seq_of[rows].astype(np.int32))
            bad = rows[~good]
            encap_of[bad] = -1
            offset_of[bad] = -1
            rows = rows[good]
        if len(rows):
            # the streams' rows of these flows, each flow's in row order (as all of them were
            # taken in row order): per flow, its payload types (in the order they first came),
            # SSRCs, main encapsulation and packets each way
            rows = np.sort(rows)
            fg = ft.flow_of[rows]
            by_flow = np.argsort(fg, kind="stable")
            rows, fg = rows[by_flow], fg[by_flow]
            dg = ft.dir_of[rows]
            per_ab[f0:f1] = np.bincount(fg[dg == 0] - f0, minlength=f1 - f0)
            per_ba[f0:f1] = np.bincount(fg[dg == 1] - f0, minlength=f1 - f0)
            pts, ss, enc = pt_of[rows], ssrc_of[rows], encap_of[rows]
            cuts = np.flatnonzero(np.r_[True, fg[1:] != fg[:-1], True])
            for a, b in zip(cuts[:-1].tolist(), cuts[1:].tolist()):
                ev = flows[int(fg[a])]
                ev.rtp_pts = Counter(pts[a:b].tolist())
                ev.rtp_ssrcs = len(np.unique(ss[a:b]))
                ev.rtp_encap = encap_names[int(np.bincount(enc[a:b]).argmax())]
        f0 = f1
    # candidates in no flow (none: _rtp_candidates takes flow members only) are no stream either
    outside = ft.flow_of < 0
    encap_of[outside] = -1
    offset_of[outside] = -1
    del outside

    per_rtcp = np.bincount(ft.flow_of[rtcp_rows], minlength=nf)
    for f in np.flatnonzero(per_ab + per_ba + per_rtcp).tolist():
        ev = flows[f]
        ev.rtp_packets_ab = int(per_ab[f])
        ev.rtp_packets_ba = int(per_ba[f])
        ev.rtp_packets = ev.rtp_packets_ab + ev.rtp_packets_ba
        ev.rtcp_packets = int(per_rtcp[f])
    return encap_of, offset_of
