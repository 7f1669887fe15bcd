"""Decision rules: evidence + capture context -> (label, confidence, reason) per flow.

Rules run in order of how specific their sign is; the first that fires names the flow.
Signs inside the packets (SIP, STUN attributes, app framings) beat associations with other flows
(STUN peers, shared sockets, SDP), which beat addresses and ports. A second pass lets flows
inherit an app from flows classified in the first pass.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import numpy as np

from throttledetect.classify.evidence import CaptureEvidence, FlowEvidence
from throttledetect.classify.labels import CALL_OF_CHAT, is_call
from throttledetect.classify.tables import AddressTable, PortTable
from throttledetect.flows import DEFAULT_LOCAL_NETS, FlowTable
from throttledetect.read.table import addresses_text

# STUN app hint (throttledetect.wire.apps.stun_app_hint) -> our call label.
STUN_HINT_LABEL = {
    "whatsapp": "whatsapp_call", "zoom": "zoom", "teams": "teams", "google": "google_meet",
    "signal": "signal_call", "telegram": "telegram_call", "viber": "viber_call",
    # Meta's calls (Messenger; nDPI's FacebookVoip). Instagram's share the realm: context decides.
    "facebook": "messenger_call", "instagram": "instagram_call",
    "jitsi": "jitsi", "bigbluebutton": "bigbluebutton", "line": "line_call", "kakaotalk": "kakaotalk_call",
    "feishu": "feishu_call", "wechat": "wechat_call", "imo": "imo_call",
}
# App framing hits (FlowEvidence.apps) -> label, for UDP flows.
FRAMING_LABEL = {"telegram": "telegram_call", "discord": "discord", "zoom": "zoom", "line": "line_call",
                 "viber": "viber_call", "imo": "imo_call", "mumble": "mumble", "tencent_meeting": "tencent_meeting"}
# Generic call labels: what a flow carries, not whose. Context may name the app (see _context_app).
GENERIC = frozenset({"rtp", "webrtc", "unknown_call"})
ICE_MEDIA_MIN_PACKETS = 100    # datagrams after ICE's checks that make an ICE session a call (_ice_media) ...
ICE_MEDIA_MIN_EACH_WAY = 20    # ... with this many each way (2 s of voice at 100 ms frames: one way is no session)
STUN_SHARE_OF_MEDIA = 0.2      # a "STUN" flow whose STUN messages are at most this share of its packets carries other things
CONTEXT_WINDOW_S = 120.0    # names a host used this long before a call, or during it, are its context
# Address-range app labels that are call apps: their UDP media gets the app's call label.
RANGE_CALL_LABEL = {"whatsapp": "whatsapp_call", "telegram": "telegram_call", "signal": "signal_call",
                    "zoom": "zoom", "teams": "teams", "google_meet": "google_meet", "discord": "discord",
                    "facetime": "facetime", "viber_call": "viber_call", "line_call": "line_call", "webex": "webex",
                    "snapchat_call": "snapchat_call", "kakaotalk_call": "kakaotalk_call",
                    "imo_call": "imo_call", "mumble": "mumble", "tencent_meeting": "tencent_meeting",
                    "wechat_call": "wechat_call", "feishu_call": "feishu_call", "jitsi": "jitsi",
                    "bigbluebutton": "bigbluebutton", "messenger_call": "messenger_call",
                    "instagram_call": "instagram_call"}
# Telephony protocols recognised by their well-known ports plus a byte test (see _telephony).
IAX_PORT = 4569
MGCP_PORTS = (2427, 2727)
MEGACO_PORT = 2944
H323_PORTS = (1719, 1720)
SKINNY_PORT = 2000
TEAMSPEAK_PORTS = (9987, 2010, 2011)
AGORA_PORTS = (8130, 8443)
VIBER_TCP_PORTS = (4244, 5242, 5243, 7985)
# Labels that say what a flow carries but not whose it is: associations may name the app.
REFINABLE = frozenset({"rtp", "webrtc", "stun", "dtls", "unknown_call", "other"})
_MGCP_VERBS = (b"EPCF", b"CRCX", b"MDCX", b"DLCX", b"RQNT", b"NTFY", b"AUEP", b"AUCX", b"RSIP")


@dataclass
class Decision:
    label: str
    confidence: float
    reason: str
    settled: bool = False      # no later pass may relabel it (a flow shown not to be a call)


def _suffix_app(name: str, domains: dict) -> str | None:
    """The first app of `domains` (in its order) one of whose suffixes is `name` or a parent of it.
    A capture's DNS answers are tens of thousands of names: each looks up its own parents in an
    index rather than testing every app's every suffix."""
    index = _SUFFIX_INDEX.get(id(domains))
    if index is None or index[0] is not domains:
        order = {}
        for rank, (app, entry) in enumerate(domains.items()):
            for suffix in entry["suffixes"]:
                order.setdefault(suffix.lower().rstrip("."), (rank, app))
        index = _SUFFIX_INDEX[id(domains)] = (domains, order, {})
    order, known = index[1], index[2]
    app = known.get(name, False)
    if app is not False:            # every flow to an address asks again for its names
        return app
    if len(known) > 1 << 16:
        known.clear()
    key = name
    name = name.lower().rstrip(".")
    best = None
    while name:
        hit = order.get(name)
        if hit is not None and (best is None or hit[0] < best[0]):
            best = hit
        _, _, name = name.partition(".")
    known[key] = app = best[1] if best else None
    return app


_SUFFIX_INDEX: dict = {}


# the ranges that mark a capturing host's side are those a NAT rewrites on the way out
NAT_INSIDE = tuple(ipaddress.ip_network(n) for n in DEFAULT_LOCAL_NETS)


def _behind_nat(addr: str) -> bool:
    """An address a NAT would rewrite on its way out (RFC 1918, CGNAT, loopback, link-local, IPv6
    ULA). Not the documentation ranges, which stand for public addresses. False for what does not
    parse."""
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return False
    return any(ip.version == n.version and ip in n for n in NAT_INSIDE)


class Rules:
    def __init__(self, ranges: AddressTable, ports: PortTable, domains: dict):
        self.ranges = ranges
        self.ports = ports
        self.domains = domains

    def decide(self, cap, ft: FlowTable, ev: CaptureEvidence) -> list[Decision]:
        n = len(ft)
        remote_is_a = ft.a_local == False  # noqa: E712 - numpy arrays
        remote_is_a &= ft.b_local
        r_hi = np.where(remote_is_a, ft.a_hi, ft.b_hi)
        r_lo = np.where(remote_is_a, ft.a_lo, ft.b_lo)
        r_port = np.where(remote_is_a, ft.a_port, ft.b_port)
        l_hi = np.where(remote_is_a, ft.b_hi, ft.a_hi)
        l_lo = np.where(remote_is_a, ft.b_lo, ft.a_lo)
        l_port = np.where(remote_is_a, ft.b_port, ft.a_port)
        idx = self.ranges.lookup(r_hi, r_lo) if n else np.zeros(0, dtype=np.int64)
        range_label = [self.ranges.apps[i].label if i >= 0 else None for i in idx.tolist()]
        remote_ip = addresses_text(r_hi, r_lo)
        local_ip = addresses_text(l_hi, l_lo)
        sdp_endpoints = self._sdp_endpoints(ev)
        not_call = self._not_call_names(ev.dns_names)

        decisions: list[Decision | None] = [None] * n
        for f in range(n):
            if remote_ip[f] in not_call and ft.proto[f] == 17:
                decisions[f] = self._not_a_call(ev.flows[f], remote_ip[f], not_call[remote_ip[f]])
                continue
            decisions[f] = self._own_signs(ft, f, ev.flows[f], range_label[f], remote_ip[f], int(r_port[f]),
                                           ev.dns_names, sdp_endpoints, local_ip[f], int(l_port[f]))

        # Second pass: associations with flows named by their own signs.
        # Associations carry an app from flows named by strong signs of their own.
        peer_app: dict = {}
        socket_app: dict = {}
        for f in range(n):
            d = decisions[f]
            if d is None or d.label in REFINABLE or d.label == "sip" or not is_call(d.label) or d.confidence < 0.9:
                continue
            for peer in ev.flows[f].stun.peers:
                if peer not in peer_app or peer_app[peer][2] < d.confidence:
                    peer_app[peer] = (d.label, f, d.confidence)
            if ft.proto[f] == 17:
                sk = (local_ip[f], int(l_port[f]))
                if sk not in socket_app or socket_app[sk][2] < d.confidence:
                    socket_app[sk] = (d.label, f, d.confidence)
        for f in range(n):
            d = decisions[f]
            if d is not None and d.settled:
                continue
            # App-specific strong signs stand; generic or weak ones may learn their app.
            own = 0.0 if d is None or d.label in REFINABLE else d.confidence
            key = (remote_ip[f], int(r_port[f]))
            if key in peer_app and peer_app[key][1] != f and own < 0.9:
                label, src, _ = peer_app[key]
                decisions[f] = Decision(label, 0.9, f"peer address learned from STUN in flow {src}")
                continue
            sk = (local_ip[f], int(l_port[f]))
            if ft.proto[f] == 17 and sk in socket_app and socket_app[sk][1] != f and own < 0.85:
                label, src, _ = socket_app[sk]
                decisions[f] = Decision(label, 0.85, f"same local socket {sk[0]}:{sk[1]} as {label} flow {src}")
        out = [d if d is not None else self._fallback(ft, f, ev.flows[f]) for f, d in enumerate(decisions)]
        self._media_pattern(cap, ft, out, range_label, remote_ip, ev)
        self._ice_media(ft, out, ev)
        self._name_from_context(ft, ev, out, local_ip)
        return out

    @staticmethod
    def _ice_media(ft, out: list, ev: CaptureEvidence) -> None:
        """An ICE session that goes on as something else is a call, whatever the model says: STUN
        checks answered on the 5-tuple, then ICE_MEDIA_MIN_PACKETS datagrams that are neither
        STUN, readable RTP nor DTLS, ICE_MEDIA_MIN_EACH_WAY of them each way. ICE exists to carry
        real-time media; an app that encrypts whole packets over it (as Telegram and Tencent
        Meeting do with their own framings) leaves exactly this. The media-pattern model needs the
        media's own pattern, which a call blocked 2 s into media no longer shows."""
        for f, d in enumerate(out):
            if d.label != "stun" or d.settled or ft.proto[f] != 17:
                continue
            st = ev.flows[f].stun
            if st.responses_ab + st.responses_ba == 0:
                continue
            other_ab = int(ft.packets_ab[f]) - st.requests_ab - st.responses_ab
            other_ba = int(ft.packets_ba[f]) - st.requests_ba - st.responses_ba
            if other_ab + other_ba >= ICE_MEDIA_MIN_PACKETS and min(other_ab, other_ba) >= ICE_MEDIA_MIN_EACH_WAY:
                out[f] = Decision("unknown_call", 0.6, f"ICE session: STUN checks answered, then {other_ab + other_ba} "
                                                       f"datagrams ({other_ab} and {other_ba} each way) that are "
                                                       "neither STUN, RTP nor DTLS: media encrypted whole")

    def app_of_address(self, ip: str, names=()) -> str | None:
        """The call label an address belongs to: the app's address ranges, else the names (DNS
        answers, TLS SNI) that led to it. None when neither says a call app."""
        try:
            idx = int(self.ranges.lookup_addresses([ip])[0])
        except ValueError:
            idx = -1
        if idx >= 0 and self.ranges.apps[idx].label in RANGE_CALL_LABEL:
            return RANGE_CALL_LABEL[self.ranges.apps[idx].label]
        for nm in sorted(names):
            app = _suffix_app(nm, self.domains)
            if app is not None and self.domains[app].get("call"):
                return self.domains[app]["call"]
        return None

    def _not_call_names(self, dns_names: dict) -> dict:
        """Remote address -> (app, name) for addresses named by apps that stream media but hold no
        calls (cloud gaming, remote desktop, video streaming: models/domains.json "not_call")."""
        found = {}
        for ip, names in dns_names.items():
            for nm in sorted(names):
                app = _suffix_app(nm, self.domains)
                if app is not None and self.domains[app].get("not_call"):
                    found[ip] = (app, nm)
                    break
        return found

    @staticmethod
    def _not_a_call(e: FlowEvidence, remote_ip: str, why: tuple) -> Decision:
        app, name = why
        what = "dtls" if e.dtls else "stun" if e.stun.messages else "other"
        return Decision(what, 0.85, f"not a call: {remote_ip} is {name} ({app}, media without calls)", settled=True)

    def _name_from_context(self, ft, ev: CaptureEvidence, out: list, local_ip: list) -> None:
        """Name the app of generic call flows (rtp, webrtc, unknown_call) from the capture's
        context, as an analyst would: the call app of the same local host's other call flows
        in the same period (its signalling, relay or peer legs), else the one call app whose
        names (DNS answers, TLS SNI) that host used shortly before or during the flow.
        Nothing is named when the context points at two apps."""
        generic = [f for f, d in enumerate(out) if d.label in GENERIC and d.confidence < 0.95 and not d.settled]
        if not generic:
            return
        first_s, last_s = ft.first_ns / 1e9, ft.last_ns / 1e9
        named = [f for f, d in enumerate(out) if is_call(d.label) and d.label not in GENERIC | {"sip"}
                 and d.confidence >= 0.8]
        events = []
        for e in ev.names:
            app = _suffix_app(e.name, self.domains)
            if app is not None and self.domains[app].get("call"):
                events.append((e.ts_ns / 1e9, e.client, self.domains[app]["call"], e.name))
        named_by_host: dict = {}
        for g in named:
            named_by_host.setdefault(local_ip[g], []).append(g)
        events_by_host: dict = {}
        for ev_ in events:
            events_by_host.setdefault(ev_[1], []).append(ev_)
        for f in generic:
            host, lo = local_ip[f], first_s[f] - CONTEXT_WINDOW_S
            apps = {out[g].label: g for g in named_by_host.get(host, ())
                    if first_s[g] <= last_s[f] + CONTEXT_WINDOW_S and last_s[g] >= lo}
            if len(apps) == 1:
                label, g = next(iter(apps.items()))
                out[f] = Decision(label, 0.7, f"{out[f].reason}; the same host's {label} call flow {g} "
                                              f"at the same time names the app")
                continue
            if apps:
                continue
            hits = {label: nm for ts, client, label, nm in events_by_host.get(host, ()) if lo <= ts <= last_s[f]}
            if len(hits) == 1:
                label, nm = next(iter(hits.items()))
                out[f] = Decision(label, 0.65, f"{out[f].reason}; the host used {nm} ({label}) "
                                               f"around the call and no other call app's name")

    def _media_pattern(self, cap, ft, out: list, range_label: list, remote_ip: list, ev: CaptureEvidence) -> None:
        """UDP flows no rule named: real-time media by packet sizes and timing alone
        (models/media_model.json, classify/media_model.py). The model never sees ports or
        addresses; the address only says whose media it is once the pattern has said it is media.
        A flow whose STUN is a small part of it (ICE's checks, then thousands of datagrams that are
        neither STUN nor readable RTP nor DTLS: an app that encrypts its whole media packet over
        an ICE path) is asked too: "STUN only" said it held nothing else."""
        dns_names = ev.dns_names
        packets = ft.packets_ab + ft.packets_ba

        def unnamed(f, d):
            if d.settled or ft.proto[f] != 17:
                return False
            return d.label == "other" or (d.label == "stun" and
                                          ev.flows[f].stun.messages <= STUN_SHARE_OF_MEDIA * int(packets[f]))
        todo = np.array([f for f, d in enumerate(out) if unnamed(f, d)], dtype=np.int64)
        if not todo.size:
            return
        from throttledetect.classify.media_model import default_media_model, flow_stats
        model = default_media_model()
        stats = flow_stats(cap, ft, todo)
        p = model.score(stats)                          # NaN: cannot tell (< 20 packets, < 1 s)
        for j, f in enumerate(todo.tolist()):
            if not p[j] >= model.threshold:
                continue
            what = f"real-time media pattern (model p={p[j]:.2f}): {stats.describe(j)}"
            app = RANGE_CALL_LABEL.get(range_label[f])
            names = sorted(dns_names.get(remote_ip[f], ()))
            name_app = next((a for a in (_suffix_app(nm, self.domains) for nm in names) if a), None)
            conf = round(float(min(0.6 + 0.3 * (p[j] - model.threshold) / max(1 - model.threshold, 1e-6), 0.9)), 2)
            if app is not None:
                out[f] = Decision(app, 0.75, f"{what}; remote {remote_ip[f]} is a {range_label[f]} address")
            elif name_app and self.domains[name_app].get("call"):
                out[f] = Decision(self.domains[name_app]["call"], 0.75,
                                  f"{what}; remote {remote_ip[f]} was resolved from {names[0]}")
            else:
                out[f] = Decision("unknown_call", conf, what)

    @staticmethod
    def _sdp_endpoints(ev: CaptureEvidence) -> dict:
        found = {}
        for e in ev.flows:
            for msg in e.sip:
                if msg.sdp is None:
                    continue
                call_id = msg.header("call-id") or "?"
                for kind, addr, port in msg.sdp.endpoints():
                    found[(addr, port)] = (kind, call_id)
                    found[(addr, port + 1)] = ("rtcp", call_id)
                    if _behind_nat(addr) and port >= 1024:
                        # SDP written behind a NAT names the host's own address; a capture beyond
                        # the NAT (at a router, a server, a mirror port) sees another, and UDP NATs
                        # mostly keep the port: the port alone then names the stream
                        found.setdefault(("*", port), (kind, call_id, addr))
                        found.setdefault(("*", port + 1), ("rtcp", call_id, addr))
        return found

    def _own_signs(self, ft, f, e: FlowEvidence, range_label, remote_ip, r_port, dns_names, sdp, local_ip, l_port):
        proto = int(ft.proto[f])
        if e.sip:
            m = e.sip[0]
            what = m.method if m.is_request else f"response {m.status_code}"
            return Decision("sip", 0.99, f"SIP {what}")
        if e.stun.apps:
            hint, hits = e.stun.apps.most_common(1)[0]
            return Decision(STUN_HINT_LABEL[hint], 0.97, f"STUN names {hint} ({hits} messages{self._realm(e)})")
        for end in ((remote_ip, r_port), (local_ip, l_port)):
            if end in sdp:
                kind, call_id = sdp[end]
                return Decision("rtp", 0.97, f"{kind} stream negotiated in SDP (SIP Call-ID {call_id})")
        if proto == 17:
            for port in (r_port, l_port):
                hit = sdp.get(("*", port))
                if hit is not None:         # the address differs (the exact match above failed)
                    kind, call_id, addr = hit
                    return Decision("rtp", 0.9, f"{kind} stream on the port SDP negotiated for {addr}:{port}, an "
                                                f"address behind a NAT (SIP Call-ID {call_id})")
        if e.zoom_media:
            return Decision("zoom", 0.95, f"Zoom server media header on its port ({e.zoom_media} packets)")
        if e.rtp_encap == "zoom":
            return Decision("zoom", 0.93, f"RTP inside Zoom media encapsulation ({e.rtp_packets} packets)")
        if proto == 17 and e.apps:
            app, hits = e.apps.most_common(1)[0]
            if app == "imo" and (e.has_rtp or e.stun.messages or e.dtls or e.quic or e.rtcp_packets):
                app, hits = None, 0     # imo's short packets: believed only where nothing else explains the flow
            # Viber's and LINE's byte tests are short: believed only towards the app's own addresses.
            weak = app in ("viber", "line", "telegram") and RANGE_CALL_LABEL.get(range_label) != FRAMING_LABEL[app] \
                and not self._app_port(FRAMING_LABEL[app], r_port, "udp")
            # Reflector traffic is encrypted end to end: a flow carrying RTP streams is not it
            # (G.711 silence is runs of 0xFF, which the reflector test would otherwise see).
            weak |= app == "telegram" and e.has_rtp
            if app in FRAMING_LABEL and not weak:
                if app == "mumble":
                    return Decision("mumble", 0.93, f"Mumble UDP ping answered with its identifier ({hits} packets)")
                return Decision(FRAMING_LABEL[app], 0.93, f"{app} packet framing ({hits} packets)")
            if app == "agora":
                return Decision("agora", 0.9, f"Agora SD-RTN edge request ({hits} packets)")
        if e.quic and (e.has_rtp or e.rtcp_packets >= 2):
            what = "RTP" if e.has_rtp else "RTCP"
            return Decision("snapchat_call", 0.8, f"QUIC and {what} multiplexed on one 5-tuple (Snapchat's call transport)")
        t = self._telephony(ft, f, e, proto)
        if t is not None:
            return t
        names = dns_names.get(remote_ip, set()) | ({e.tls_sni} if e.tls_sni else set())
        name_app = next((a for a in (_suffix_app(nm, self.domains) for nm in sorted(names))
                         if a and not self.domains[a].get("not_call")), None)
        media = e.has_rtp or e.stun.messages > 0 or e.dtls > 0 or e.rtcp_packets >= 2
        # WhatsApp keys its SRTP itself: DTLS towards Meta's ranges is some other (web) client.
        if range_label == "whatsapp" and e.dtls:
            range_label = None
        if proto == 17 and media:
            if range_label in RANGE_CALL_LABEL:
                # A bare STUN server is shared by many apps (Google's serves every WebRTC app):
                # weak on its own, so a flow's own app sign on the same socket overrides it.
                conf = 0.85 if (e.has_rtp or e.dtls) else 0.7
                return Decision(RANGE_CALL_LABEL[range_label], conf,
                                f"{self._media_kind(e)} to a {range_label} address ({remote_ip})")
            if name_app and self.domains[name_app].get("call"):
                return Decision(self.domains[name_app]["call"], 0.85,
                                f"{self._media_kind(e)} to an address resolved from {sorted(names)[0]}")
        if proto == 17 and self._app_port(range_label, r_port, "udp"):
            return Decision(RANGE_CALL_LABEL[range_label], 0.8,
                            f"UDP to a {range_label} address ({remote_ip}) on its media port {r_port}")
        if e.has_rtp:
            label = "webrtc" if (e.stun.messages or e.dtls) else "rtp"
            return Decision(label, 0.9, f"RTP: {e.rtp_packets} packets in {e.rtp_ssrcs} stream(s), "
                                        f"payload types {sorted(e.rtp_pts)}{' inside ' + e.rtp_encap if e.rtp_encap not in (None, 'plain') else ''}")
        relayed = sum(e.stun.relayed_media.values())
        if relayed >= 3:
            kinds = ", ".join(f"{n} {k.upper()}" for k, n in e.stun.relayed_media.most_common())
            return Decision("webrtc", 0.85, f"TURN-relayed media: {kinds} inside Send/Data indications")
        if e.rtcp_packets >= 2:
            return Decision("rtp", 0.85, f"RTCP only ({e.rtcp_packets} packets)")
        if e.stun.messages and e.dtls:
            return Decision("webrtc", 0.85, "STUN connectivity checks and DTLS on one flow (WebRTC)")
        if proto == 6 or e.quic:
            chat = self._chat(e, range_label, name_app, names)
            if chat is not None:
                return chat
        return None

    @staticmethod
    def _realm(e: FlowEvidence) -> str:
        return f", realm {sorted(e.stun.realms)[0]}" if e.stun.realms else ""

    @staticmethod
    def _media_kind(e: FlowEvidence) -> str:
        if e.has_rtp:
            return f"RTP ({e.rtp_packets} packets)"
        if e.rtcp_packets >= 2 and not e.stun.messages and not e.dtls:
            return f"RTCP ({e.rtcp_packets} packets)"
        if e.stun.messages:
            return f"STUN ({e.stun.messages} messages)"
        return "DTLS"

    def _app_port(self, label, port: int, transport: str) -> bool:
        """Is `port` one of the documented ports of the app with this label? Callers supply the
        rest of the evidence: the remote address is the app's own, or the app's framing was seen."""
        want = RANGE_CALL_LABEL.get(label, label)
        if want not in RANGE_CALL_LABEL.values():
            return False
        return any(RANGE_CALL_LABEL.get(self.ports.entries[i].label) == want
                   for i in self.ports.match(transport, np.array([port], dtype=np.int64))[0])

    def _chat(self, e: FlowEvidence, range_label, name_app, names) -> Decision | None:
        if e.apps.get("whatsapp_chat"):
            return Decision("whatsapp", 0.95, "WhatsApp Noise prologue")
        if name_app and self.domains[name_app].get("chat"):
            return Decision(self.domains[name_app]["chat"], 0.9, f"TLS/DNS name {sorted(names)[0]}")
        if range_label in CALL_OF_CHAT:
            return Decision(range_label, 0.8, f"TCP to a {range_label} address")
        if e.apps.get("viber"):
            return Decision("viber_call", 0.8, "Viber framing")
        return None

    @staticmethod
    def _telephony(ft, f, e: FlowEvidence, proto: int) -> Decision | None:
        ports = (int(ft.a_port[f]), int(ft.b_port[f]))
        first = e.first_payload or b""
        if proto == 17 and IAX_PORT in ports and len(first) >= 12:
            return Decision("iax", 0.9, f"IAX2 on UDP {IAX_PORT}")
        if proto == 17 and any(p in MGCP_PORTS for p in ports) and (first[:4] in _MGCP_VERBS or first[:3].isdigit()):
            return Decision("mgcp", 0.9, "MGCP command")
        if proto == 17 and MEGACO_PORT in ports and (first[:7].upper() == b"MEGACO/" or first[:1] == b"!"):
            return Decision("megaco", 0.9, "Megaco/H.248 message")
        if any(p in H323_PORTS for p in ports) and ((proto == 6 and first[:2] == b"\x03\x00") or proto == 17):
            return Decision("h323", 0.85, "H.323 (TPKT/Q.931 or RAS port)")
        # SCCP header: little-endian length, then a header version (0, 0x12, 0x14, 0x16), then message id.
        if proto == 6 and SKINNY_PORT in ports and len(first) >= 12 and first[5:8] == b"\0\0\0" \
                and first[4] in (0, 0x12, 0x14, 0x16):
            return Decision("skinny", 0.85, "Cisco Skinny (SCCP) on TCP 2000")
        if proto == 17 and any(p in TEAMSPEAK_PORTS for p in ports) and first[:8] == b"TS3INIT1":
            return Decision("teamspeak", 0.9, "TeamSpeak 3 handshake")
        if proto == 6 and any(p in VIBER_TCP_PORTS for p in ports) and e.apps.get("viber"):
            return Decision("viber_call", 0.8, "Viber framing on its TCP port")
        return None

    @staticmethod
    def _fallback(ft, f, e: FlowEvidence) -> Decision:
        proto = int(ft.proto[f])
        if e.quic:
            return Decision("quic", 0.9, f"QUIC {e.quic}")
        if e.tls_sni or e.tls_records:
            return Decision("tls", 0.9, f"TLS{' to ' + e.tls_sni if e.tls_sni else ''}")
        if e.dns_messages:
            return Decision("dns", 0.95, "DNS messages")
        if e.http:
            return Decision("http", 0.9, "HTTP request/response")
        if e.dtls:
            return Decision("dtls", 0.8, "DTLS records")
        if e.stun.messages:
            return Decision("stun", 0.8, f"STUN only ({e.stun.messages} messages, no media seen)")
        return Decision("other", 0.5 if proto in (6, 17) else 0.9, "no signature matched")
