"""What a kernel replay sends: a real capture turned into two send schedules of Ethernet frames.

Pure computation (no root, no namespaces), so it is testable anywhere:

- every packet of a flow is replayed from its original side (from-local packets by the client
  namespace, to-local packets by the server namespace) at its original time relative to the
  capture's first packet, as the IP packet that was recorded, byte for byte;
- the local side of each flow is decided as the rest of the project does (flows.local_side_is_a);
- a to-local packet's TTL / hop limit is raised by one (IPv4 header checksum updated, RFC 1624)
  because the router hop decrements it on the way: the client's capture then holds the recorded
  bytes exactly;
- a packet cut short by the original snapshot length is padded with zeros to its IP length, so
  the throttle sees its real size (counted in `padded`);
- flows that cannot cross a router are left out and counted per reason: multicast, broadcast,
  loopback, link-local or unspecified addresses, GTP-U tunnelled packets, non-IP records, and
  flows whose remote address is the capturing host's in another flow (it would have to be on
  both sides of the router).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from throttledetect.classify.labels import is_call
from throttledetect.flows import local_side_is_a
from throttledetect.jit import njit
from throttledetect.read.decode import _link
from throttledetect.read.table import halves_to_address

ETH_HDR = 14
# Fixed MACs: each trial has its own namespaces and links, so trials never see each other's
# addresses, and fixed ones make the frames (and so the output captures) reproducible.
CLIENT_MAC = "02:74:64:00:00:c1"
ROUTER_LAN_MAC = "02:74:64:00:00:a1"
ROUTER_WAN_MAC = "02:74:64:00:00:a2"
SERVER_MAC = "02:74:64:00:00:5e"


def mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


@njit
def _ip_offsets(buf, frame_off, caplen, linktype, out):
    """Absolute offset of each record's network layer (-1 where the link layer is not IP)."""
    for i in range(len(frame_off)):
        et, p, status = _link(buf, frame_off[i], frame_off[i] + caplen[i], linktype[i])
        out[i] = p if status == 0 and (et == 0x0800 or et == 0x86DD) else -1


def ip_offsets(cap, rows: np.ndarray) -> np.ndarray:
    t = cap.packets
    out = np.empty(len(rows), dtype=np.int64)
    _ip_offsets(cap.buffer, t.frame_off[rows].astype(np.int64), t.caplen[rows].astype(np.int64),
                t.linktype[rows].astype(np.int64), out)
    return out


def _be16(buf: np.ndarray, pos: np.ndarray) -> np.ndarray:
    return buf[pos].astype(np.int64) << 8 | buf[pos + 1].astype(np.int64)


def _fold(s: np.ndarray) -> np.ndarray:
    s = (s & 0xFFFF) + (s >> 16)
    return (s & 0xFFFF) + (s >> 16)


@dataclass
class ReplayPlan:
    """Everything the replay needs from the capture, as arrays in send (time) order."""

    rows: np.ndarray          # packet rows of the capture that are replayed, time order
    rel_ns: np.ndarray        # send time relative to the replay's start (the capture's first packet)
    to_local: np.ndarray      # bool: sent by the server namespace towards the client
    flow: np.ndarray          # flow id of each replayed packet
    frames: np.ndarray        # uint8: the Ethernet frames, concatenated
    frame_start: np.ndarray   # int64[n + 1]: frame k is frames[frame_start[k]:frame_start[k + 1]]
    is_ipv6: np.ndarray       # bool per replayed packet
    local_is_a: np.ndarray    # per flow (flows.local_side_is_a)
    replayed_flow: np.ndarray  # bool per flow
    throttled_flow: np.ndarray  # bool per flow (the selection; only replayed flows)
    local_addrs: list          # ipaddress objects on the client's side
    remote_addrs: list         # ... on the server's side
    skipped: dict = field(default_factory=dict)   # reason -> packets left out
    padded: int = 0            # packets padded to their IP length (cut by the snapshot length)

    @property
    def frame_len(self) -> np.ndarray:
        return np.diff(self.frame_start)

    @property
    def duration_s(self) -> float:
        return float(self.rel_ns[-1]) / 1e9 if len(self.rel_ns) else 0.0

    @property
    def has_ipv6(self) -> bool:
        return bool(self.is_ipv6.any())

    def side(self, to_local: bool) -> np.ndarray:
        """Indices (into the plan's arrays) of the packets one namespace sends."""
        return np.flatnonzero(self.to_local == to_local)

    def max_frame(self, flows_mask: np.ndarray | None = None, to_local: bool | None = None) -> int:
        m = np.ones(len(self.rows), dtype=bool) if flows_mask is None else flows_mask[self.flow]
        if to_local is not None:
            m &= self.to_local == to_local
        return int(self.frame_len[m].max()) if m.any() else 0

    def mean_rate_bps(self, flows_mask: np.ndarray, to_local: bool) -> float:
        """Mean rate of the given flows in one direction: frame bytes (as the router's qdisc counts
        them) over the span from that direction's first to its last packet."""
        m = flows_mask[self.flow] & (self.to_local == to_local)
        if m.sum() < 2:
            return 0.0
        t = self.rel_ns[m]
        span = (t[-1] - t[0]) / 1e9
        return float(self.frame_len[m][:-1].sum()) * 8 / span if span > 0 else 0.0


def select_flows(ft, cl, selector: str) -> np.ndarray:
    """Flow ids: "calls" (classified as calls), "all", comma-separated labels or flow ids."""
    n = len(ft)
    s = (selector or "calls").strip()
    if s == "all":
        return np.arange(n, dtype=np.int64)
    if s == "calls":
        return np.array([i for i in range(n) if is_call(cl.labels[i])], dtype=np.int64)
    parts = [p.strip() for p in s.split(",") if p.strip()]
    if parts and all(p.isdigit() for p in parts):
        ids = np.unique(np.array([int(p) for p in parts], dtype=np.int64))
        bad = ids[ids >= n]
        if len(bad):
            raise ValueError(f"flow id(s) {bad.tolist()} not in 0..{n - 1}")
        return ids
    return np.array([i for i in range(n) if cl.labels[i] in set(parts)], dtype=np.int64)


def _unroutable(addr) -> str | None:
    if addr.is_multicast:
        return "multicast"
    if addr.is_unspecified:
        return "unspecified address"
    if addr.is_loopback:
        return "loopback"
    if addr.is_link_local:
        return "link-local address"
    if addr.version == 4 and (addr.is_reserved or int(addr) == 0xFFFFFFFF):
        return "broadcast or reserved (240/4)"
    return None


def _addresses(hi: np.ndarray, lo: np.ndarray):
    """Unique addresses (as ipaddress objects) and the index of each input in them."""
    pairs = np.stack([hi, lo], axis=1)
    uniq, inv = np.unique(pairs, axis=0, return_inverse=True)
    return [halves_to_address(h, l) for h, l in uniq], inv.ravel()


def plan_replay(cap, ft, cl, selector: str = "calls", seconds: float | None = None) -> ReplayPlan:
    """The replay of capture `cap` (flows `ft`, classification `cl`), cut at `seconds` if given."""
    t = cap.packets
    n_flows = len(ft)
    local_is_a, _ = local_side_is_a(ft)
    local_is_a = np.asarray(local_is_a, dtype=bool)
    skipped: dict[str, int] = {}

    def skip(reason: str, count: int) -> None:
        if count:
            skipped[reason] = skipped.get(reason, 0) + int(count)

    # flows whose addresses a router cannot carry, and local/remote address sets
    loc_hi = np.where(local_is_a, ft.a_hi, ft.b_hi)
    loc_lo = np.where(local_is_a, ft.a_lo, ft.b_lo)
    rem_hi = np.where(local_is_a, ft.b_hi, ft.a_hi)
    rem_lo = np.where(local_is_a, ft.b_lo, ft.a_lo)
    addrs, inv = _addresses(np.concatenate([loc_hi, rem_hi]), np.concatenate([loc_lo, rem_lo]))
    loc_id, rem_id = inv[:n_flows], inv[n_flows:]
    bad_reason = [_unroutable(a) for a in addrs]
    flow_reason: list[str | None] = [bad_reason[loc_id[f]] or bad_reason[rem_id[f]] for f in range(n_flows)]
    ok = np.array([r is None for r in flow_reason], dtype=bool)
    is_local_addr = np.zeros(len(addrs), dtype=bool)
    is_local_addr[loc_id[ok]] = True
    both_sides = ok & is_local_addr[rem_id]
    for f in np.flatnonzero(both_sides):
        flow_reason[f] = "remote address is the capturing host's in another flow"
    ok &= ~both_sides

    fo = ft.flow_of.astype(np.int64)
    in_flow = fo >= 0
    skip("not in a flow (non-IP or undecodable)", int((~in_flow).sum()))
    rows = np.flatnonzero(in_flow)
    rows = rows[np.argsort(t.ts_ns[rows], kind="stable")]
    tunnelled = t.tunnel[rows] != 0
    skip("GTP-U tunnelled", int(tunnelled.sum()))
    rows = rows[~tunnelled]
    flow_ok = ok[fo[rows]]
    for f in np.flatnonzero(~ok):
        skip(flow_reason[f], int((fo[rows] == f).sum()))
    rows = rows[flow_ok]
    ipo = ip_offsets(cap, rows)
    skip("link layer without IP", int((ipo < 0).sum()))
    rows, ipo = rows[ipo >= 0], ipo[ipo >= 0]
    t0 = int(t.ts_ns[rows[0]]) if len(rows) else 0
    rel = t.ts_ns[rows].astype(np.int64) - t0
    if seconds is not None:
        keep = rel <= int(round(seconds * 1e9))
        rows, ipo, rel = rows[keep], ipo[keep], rel[keep]
    if len(rows) == 0:
        raise ValueError("no packet of the capture can be replayed" +
                         (f" (left out: {skipped})" if skipped else ""))

    buf = cap.buffer
    flow = fo[rows]
    to_local = (ft.dir_of[rows] == 1) == local_is_a[flow]
    v6 = (buf[ipo] >> 4) == 6
    ip_len = np.where(v6, 40 + _be16(buf, ipo + 4), _be16(buf, ipo + 2))
    avail = (t.frame_off[rows].astype(np.int64) + t.caplen[rows].astype(np.int64)) - ipo
    copy_len = np.minimum(avail, ip_len)
    padded = int((avail < ip_len).sum())

    flen = ETH_HDR + ip_len
    start = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(flen, out=start[1:])
    frames = np.zeros(int(start[-1]), dtype=np.uint8)
    head = np.empty((len(rows), ETH_HDR), dtype=np.uint8)
    # from-local frames leave the client for the router's lan0; to-local ones the server for its wan0
    up = np.frombuffer(mac_bytes(ROUTER_LAN_MAC) + mac_bytes(CLIENT_MAC), dtype=np.uint8)
    down = np.frombuffer(mac_bytes(ROUTER_WAN_MAC) + mac_bytes(SERVER_MAC), dtype=np.uint8)
    head[:, :12] = np.where(to_local[:, None], down[None, :], up[None, :])
    head[:, 12] = np.where(v6, 0x86, 0x08)
    head[:, 13] = np.where(v6, 0xDD, 0x00)
    frames[(start[:-1, None] + np.arange(ETH_HDR)).ravel()] = head.ravel()
    total = int(copy_len.sum())
    first = np.zeros(len(rows), dtype=np.int64)
    np.cumsum(copy_len[:-1], out=first[1:])
    dst = np.repeat(start[:-1] + ETH_HDR - first, copy_len) + np.arange(total)
    frames[dst] = buf[np.repeat(ipo - first, copy_len) + np.arange(total)]

    # to-local: TTL / hop limit + 1 (the router takes one off again)
    ip_at = start[:-1] + ETH_HDR
    ttl_pos = ip_at + np.where(v6, 7, 8)
    raise_ttl = to_local & (frames[ttl_pos] < 255)
    r4 = np.flatnonzero(raise_ttl & ~v6)
    old_word = frames[ip_at[r4] + 8].astype(np.int64) << 8 | frames[ip_at[r4] + 9]
    frames[ttl_pos[raise_ttl]] += 1
    new_word = old_word + 0x100
    old_sum = _be16(frames, ip_at[r4] + 10)
    # RFC 1624 eq. 3: HC' = ~(~HC + ~m + m')
    c = ~_fold((~old_sum & 0xFFFF) + (~old_word & 0xFFFF) + new_word) & 0xFFFF
    frames[ip_at[r4] + 10] = (c >> 8).astype(np.uint8)
    frames[ip_at[r4] + 11] = (c & 0xFF).astype(np.uint8)

    replayed = np.zeros(n_flows, dtype=bool)
    replayed[np.unique(flow)] = True
    local_set = sorted({addrs[loc_id[f]] for f in np.flatnonzero(replayed)}, key=lambda a: (a.version, a))
    remote_set = sorted({addrs[rem_id[f]] for f in np.flatnonzero(replayed)}, key=lambda a: (a.version, a))
    throttled = np.zeros(n_flows, dtype=bool)
    sel = select_flows(ft, cl, selector)
    throttled[sel] = True
    throttled &= replayed
    return ReplayPlan(rows=rows, rel_ns=rel, to_local=to_local, flow=flow, frames=frames, frame_start=start,
                      is_ipv6=v6, local_is_a=local_is_a, replayed_flow=replayed, throttled_flow=throttled,
                      local_addrs=local_set, remote_addrs=remote_set, skipped=skipped, padded=padded)


def flow_tuple(ft, plan: ReplayPlan, f: int) -> dict:
    """One flow as the truth file and the filters name it: transport, local and remote endpoint."""
    a = halves_to_address(ft.a_hi[f], ft.a_lo[f]), int(ft.a_port[f])
    b = halves_to_address(ft.b_hi[f], ft.b_lo[f]), int(ft.b_port[f])
    (lip, lport), (rip, rport) = (a, b) if plan.local_is_a[f] else (b, a)
    return {"proto": int(ft.proto[f]), "local_ip": str(lip), "local_port": lport, "remote_ip": str(rip),
            "remote_port": rport, "ipv6": lip.version == 6}


__all__ = ["ReplayPlan", "plan_replay", "select_flows", "flow_tuple", "ip_offsets", "CLIENT_MAC", "SERVER_MAC",
           "ROUTER_LAN_MAC", "ROUTER_WAN_MAC", "ETH_HDR"]
