"""Synthetic mixed packet capture for the benchmark, with exact ground truth.

``make_mixed_capture(path, packets, seed)`` writes a classic pcap (little-endian,
microsecond timestamps, Ethernet link type) holding exactly ``packets`` records:

* RTP over UDP (~78 %): about 200 concurrent bidirectional calls (fewer for small
  captures), 20 ms pacing with a little jitter, RTP v2 headers with incrementing
  sequence numbers and timestamps, 160-byte payloads, payload types 0/111/120.
  Mostly IPv4, a few IPv6, a few 802.1Q-tagged.
* TCP bulk downloads (~20 %): SYN / SYN-ACK / ACK, 1460-byte segments (1514-byte
  frames) with correct sequence numbers, a pure ACK back every second segment,
  FIN / FIN-ACK / ACK at the end. One over IPv6, one VLAN-tagged when there are enough.
* DNS over UDP 53 (the rest, ~2 %): one query and one A answer per flow (a single
  unanswered query when the remainder is odd), some over IPv6, some VLAN-tagged.

Every 5-tuple is used by exactly one flow and no flow has an idle gap longer than
~30 ms, so a flow table built by any tool has exactly the flows of the manifest.
IPv4 header checksums and UDP/TCP checksums are correct (payload bytes are zero).

Everything is vectorised with numpy: there is no per-packet Python loop (only loops
over calls, transfers, header layouts and output chunks).
"""
from __future__ import annotations

import ipaddress
import json
import os
import time
from pathlib import Path

import numpy as np

VERSION = 1
REPO = Path(__file__).resolve().parent.parent
CACHE_DIR = REPO / ".cache" / "bench"

EPOCH_US = 1_700_000_000 * 1_000_000  # first timestamp of the capture
RTP_SHARE, TCP_SHARE = 0.78, 0.20     # DNS fills the rest exactly
KIND_RTP, KIND_TCP, KIND_DNS = 0, 1, 2
KIND_NAMES = ("rtp", "tcp", "dns")
VAR_PLAIN, VAR_SYN = 0, 1             # TCP header with / without the MSS option
VAR_QUERY, VAR_ANSWER = 0, 1          # DNS message kinds
RTP_PAYLOAD = 160
RTP_TS_STEP = {0: 160, 111: 960, 120: 1800}  # 20 ms at 8 kHz / 48 kHz / 90 kHz
ROUTER_MAC = np.array([0x02, 0x00, 0x5E, 0x00, 0x00, 0x01], dtype=np.uint8)
CHUNK = 131072                        # records written per output chunk
PCAP_GLOBAL_HEADER = np.array(
    [0xA1B2C3D4, (4 << 16) | 2, 0, 0, 262144, 1], dtype="<u4"
)  # magic; u16 major=2, u16 minor=4; thiszone; sigfigs; snaplen; linktype 1 (Ethernet)


def cache_path(packets: int, seed: int = 0) -> Path:
    """Where the cached capture of (packets, seed) lives."""
    return CACHE_DIR / f"mixed-{packets}-{seed}.pcap"


def manifest_path(pcap: os.PathLike | str) -> Path:
    return Path(pcap).with_suffix(".json")


def cached_capture(packets: int = 2_000_000, seed: int = 0) -> tuple[Path, dict]:
    """(path, manifest) of the cached capture, generated only if absent."""
    path = cache_path(packets, seed)
    return path, make_mixed_capture(path, packets=packets, seed=seed)


def make_mixed_capture(path=None, packets: int = 2_000_000, seed: int = 0, force: bool = False) -> dict:
    """Write the mixed capture to `path` (default: the cache path) and return its manifest.

    The manifest is also written as JSON beside the pcap (same name, ``.json``). If both
    files exist already and the manifest matches (packets, seed, generator version), the
    capture is not regenerated unless `force`.
    """
    path = Path(path) if path is not None else cache_path(packets, seed)
    mpath = manifest_path(path)
    if not force and path.exists() and mpath.exists():
        try:
            manifest = json.loads(mpath.read_text())
            if (manifest.get("version"), manifest.get("packets"), manifest.get("seed")) == (VERSION, packets, seed) \
                    and manifest.get("file_bytes") == path.stat().st_size:
                manifest["path"] = str(path)
                manifest["cached"] = True
                return manifest
        except (OSError, ValueError):
            pass
    path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    flows, pk, duration_us = _generate(packets, np.random.default_rng(seed))
    manifest = _write(path, flows, pk)
    manifest.update(version=VERSION, packets=packets, seed=seed, duration_s=duration_us / 1e6,
                    generate_seconds=round(time.perf_counter() - t0, 3))
    tmp = mpath.with_name(mpath.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(manifest, separators=(",", ":")))
    os.replace(tmp, mpath)
    manifest["path"] = str(path)
    manifest["cached"] = False
    return manifest


# --------------------------------------------------------------------------- addresses

def _v4(values) -> np.ndarray:
    """uint32 IPv4 addresses -> (n, 16) IPv4-mapped address bytes."""
    values = np.asarray(values, dtype=np.uint32)
    out = np.zeros((len(values), 16), dtype=np.uint8)
    out[:, 10:12] = 0xFF
    out[:, 12:16] = values.astype(">u4").view(np.uint8).reshape(-1, 4)
    return out


def _v6(prefix: str, values) -> np.ndarray:
    """prefix (an IPv6 /96 or shorter, as text) + uint32 host numbers -> (n, 16) bytes."""
    values = np.asarray(values, dtype=np.uint32)
    out = np.empty((len(values), 16), dtype=np.uint8)
    out[:] = np.frombuffer(ipaddress.IPv6Address(prefix).packed, dtype=np.uint8)
    out[:, 12:16] = values.astype(">u4").view(np.uint8).reshape(-1, 4)
    return out


def _ip4(text: str) -> int:
    return int(ipaddress.IPv4Address(text))


def _host_macs(addr16: np.ndarray) -> np.ndarray:
    """A locally administered MAC derived from the last 4 address bytes."""
    out = np.empty((len(addr16), 6), dtype=np.uint8)
    out[:, 0] = 0x02
    out[:, 1] = 0x42
    out[:, 2:6] = addr16[:, 12:16]
    return out


def _pick(n: int, share: float, rng, exclude=None, minimum_if=4) -> np.ndarray:
    """Boolean mask choosing round(share * n) of n items (at least one if n >= minimum_if)."""
    k = int(round(share * n))
    if n >= minimum_if:
        k = max(k, 1)
    pool = np.arange(n) if exclude is None else np.flatnonzero(~exclude)
    mask = np.zeros(n, dtype=bool)
    mask[rng.choice(pool, size=min(k, len(pool)), replace=False)] = True
    return mask


def _strictly_increasing(t: np.ndarray) -> np.ndarray:
    """Smallest strictly increasing integer sequence >= t (element-wise)."""
    i = np.arange(len(t), dtype=np.int64)
    return np.maximum.accumulate(t - i) + i


def _ranks(counts: np.ndarray) -> np.ndarray:
    """For groups of sizes `counts` laid end to end: index of each row within its group."""
    total = int(counts.sum())
    starts = np.repeat(np.cumsum(counts) - counts, counts)
    return np.arange(total, dtype=np.int64) - starts


# --------------------------------------------------------------------------- generation

def _generate(packets: int, rng):
    if packets < 100:
        raise ValueError("the mixed capture needs at least 100 packets")
    rtp_target = int(RTP_SHARE * packets)
    tcp_target = int(TCP_SHARE * packets)
    slots = int(np.clip(round(rtp_target / 500), 1, 200))  # concurrent calls
    duration_us = int(rtp_target / (slots * 100) * 1e6)     # 2 streams x 50 packets/s per call

    parts = [_rtp(rng, slots, duration_us), _tcp(rng, tcp_target, duration_us)]
    used = sum(len(p["ts_us"]) for _, p in parts)
    if used > packets:
        raise AssertionError("generator overshoot")  # cannot happen with the shares above
    parts.append(_dns(rng, packets - used, duration_us))

    flow_cols = [f for f, _ in parts]
    flows = {k: np.concatenate([f[k] for f in flow_cols]) for k in flow_cols[0]}
    offsets = np.cumsum([0] + [len(f["kind"]) for f in flow_cols[:-1]])
    pk = {}
    for k in parts[0][1]:
        cols = []
        for off, (_, p) in zip(offsets, parts):
            cols.append(p[k] + off if k == "flow" else p[k])
        pk[k] = np.concatenate(cols)
    assert len(pk["ts_us"]) == packets
    return flows, pk, duration_us


def _flow_cols(n, kind, proto, v6, vlan, a_addr, b_addr, a_port, b_port, a_ttl, b_ttl, a_mac, b_mac,
               pt=None, ssrc_a=None, ssrc_b=None, dns_id=None, answer=None):
    z32 = np.zeros(n, dtype=np.uint32)
    return {
        "kind": np.full(n, kind, dtype=np.uint8),
        "proto": np.full(n, proto, dtype=np.uint8),
        "v6": np.asarray(v6, dtype=bool),
        "vlan": np.asarray(vlan, dtype=np.uint16),
        "a_addr": a_addr, "b_addr": b_addr,
        "a_port": np.asarray(a_port, dtype=np.uint16), "b_port": np.asarray(b_port, dtype=np.uint16),
        "a_ttl": np.asarray(a_ttl, dtype=np.uint8), "b_ttl": np.asarray(b_ttl, dtype=np.uint8),
        "a_mac": a_mac, "b_mac": b_mac,
        "pt": np.zeros(n, np.uint8) if pt is None else np.asarray(pt, np.uint8),
        "ssrc_a": z32 if ssrc_a is None else ssrc_a.astype(np.uint32),
        "ssrc_b": z32 if ssrc_b is None else ssrc_b.astype(np.uint32),
        "dns_id": np.zeros(n, np.uint16) if dns_id is None else dns_id.astype(np.uint16),
        "answer": np.zeros((n, 4), np.uint8) if answer is None else answer,
    }


def _pk_cols(ts_us, flow, direction, variant, plen, f1, f2, flags):
    n = len(ts_us)
    return {
        "ts_us": np.asarray(ts_us, np.int64),
        "flow": np.asarray(flow, np.int32),
        "dir": np.asarray(direction, np.uint8),
        "variant": np.broadcast_to(np.asarray(variant, np.uint8), (n,)).copy(),
        "plen": np.broadcast_to(np.asarray(plen, np.uint16), (n,)).copy(),
        "f1": np.broadcast_to(np.asarray(f1, np.uint32), (n,)).copy(),   # TCP seq / RTP seq
        "f2": np.broadcast_to(np.asarray(f2, np.uint32), (n,)).copy(),   # TCP ack / RTP timestamp
        "flags": np.broadcast_to(np.asarray(flags, np.uint8), (n,)).copy(),  # TCP flags / RTP marker
    }


def _rtp(rng, slots: int, duration_us: int):
    """Calls laid out in `slots` lanes, back to back, each lane busy most of the time."""
    starts, lens, lane = [], [], []
    end_limit = duration_us - 100_000
    for s in range(slots):  # loop over calls (a few hundred), not packets
        t = rng.uniform(0, min(2_000_000, 0.05 * duration_us))
        while True:
            length = rng.uniform(0.3, 1.0) * duration_us
            end = min(t + length, end_limit)
            if end - t < min(1_000_000, 0.2 * duration_us):
                break
            starts.append(t)
            lens.append(end - t)
            lane.append(s)
            t = end + rng.uniform(200_000, 2_000_000)
    starts = np.array(starts, dtype=np.int64)
    lens = np.array(lens, dtype=np.int64)
    lane = np.array(lane, dtype=np.int64)
    n = len(starts)

    v6 = _pick(n, 0.05, rng)
    vlan = np.where(_pick(n, 0.03, rng, exclude=v6), 10, 0)
    caller_local = rng.random(n) < 0.5
    local_v4 = _v4(_ip4("10.20.0.1") + lane)
    local_v6 = _v6("2001:db8:20::", 0x100 + lane)
    peer = rng.integers(0, 4096, n)
    remote_v4 = _v4(_ip4("198.18.0.0") + 1 + peer)
    remote_v6 = _v6("2001:db8:ff::", 0x1000 + peer)
    local = np.where(v6[:, None], local_v6, local_v4)
    remote = np.where(v6[:, None], remote_v6, remote_v4)
    local_port = 16384 + 2 * np.arange(n)          # unique per call: no 5-tuple is reused
    if n and local_port[-1] > 65534:
        raise ValueError("too many calls for distinct RTP ports")
    remote_port = 10000 + 2 * rng.integers(0, 25000, n)
    cl = caller_local[:, None]
    a_addr = np.where(cl, local, remote)
    b_addr = np.where(cl, remote, local)
    a_port = np.where(caller_local, local_port, remote_port)
    b_port = np.where(caller_local, remote_port, local_port)
    a_ttl = np.where(caller_local, 64, 53)
    b_ttl = np.where(caller_local, 53, 64)
    lmac = _host_macs(local)
    a_mac = np.where(cl, lmac, ROUTER_MAC)
    b_mac = np.where(cl, ROUTER_MAC, lmac)
    pt = rng.choice(np.array([0, 111, 120]), n, p=[0.4, 0.4, 0.2])
    flows = _flow_cols(n, KIND_RTP, 17, v6, vlan, a_addr, b_addr, a_port, b_port, a_ttl, b_ttl, a_mac, b_mac,
                       pt=pt, ssrc_a=rng.integers(0, 2**32, n), ssrc_b=rng.integers(0, 2**32, n))

    # Two streams per call: the caller (a) first, the callee (b) 10-80 ms later.
    delay = rng.integers(10_000, 80_000, n)
    n_a = (lens - 3_000) // 20_000 + 1
    n_b = np.maximum((lens - delay - 3_000) // 20_000 + 1 - rng.integers(0, 3, n), 1)
    s_flow = np.repeat(np.arange(n), 2)
    s_dir = np.tile(np.array([0, 1]), n)
    s_start = np.stack([starts, starts + delay], axis=1).ravel()
    s_count = np.stack([n_a, n_b], axis=1).ravel()
    s_seq0 = rng.integers(0, 65536, 2 * n)
    s_ts0 = rng.integers(0, 2**32, 2 * n)
    s_step = np.vectorize(RTP_TS_STEP.get)(np.repeat(pt, 2)) if n else np.zeros(0, np.int64)

    k = _ranks(s_count)
    rep = lambda col: np.repeat(col, s_count)
    jitter = np.clip(np.rint(rng.normal(0, 400, len(k))), -3000, 3000).astype(np.int64)
    ts_us = rep(s_start) + 20_000 * k + jitter
    pk = _pk_cols(
        ts_us, rep(s_flow), rep(s_dir), 0, RTP_PAYLOAD,
        (rep(s_seq0) + k) & 0xFFFF,
        (rep(s_ts0) + rep(s_step) * k) & 0xFFFFFFFF,
        (k == 0).astype(np.uint8),
    )
    return flows, pk


def _tcp(rng, budget: int, duration_us: int):
    """Bulk downloads (server -> client) with handshake, ACK every 2nd segment, FIN."""
    n = int(np.clip(budget // 150, 1, 6))
    v6 = np.zeros(n, bool)
    vlan = np.zeros(n, np.uint16)
    if n >= 3:
        v6[1] = True
    if n >= 4:
        vlan[2] = 20
    client = np.where(v6[:, None], _v6("2001:db8:21::", 0x100 + np.arange(n)), _v4(_ip4("10.20.1.1") + np.arange(n)))
    server = np.where(v6[:, None], _v6("2001:db8:fe::", 0x443 + np.arange(n)),
                      _v4(_ip4("203.0.113.10") + np.arange(n)))
    flows = _flow_cols(n, KIND_TCP, 6, v6, vlan, client, server, 40000 + 7 * np.arange(n),
                       np.where(np.arange(n) % 2, 80, 443), np.full(n, 64), np.full(n, 57),
                       _host_macs(client), np.broadcast_to(ROUTER_MAC, (n, 6)).copy())
    parts = []
    for i in range(n):  # loop over transfers (at most 6), each vectorised over its segments
        pbudget = budget // n + (budget % n if i == n - 1 else 0)
        segs = max(int(2 * (pbudget - 6) // 3), 1)
        while 6 + segs + (segs + 1) // 2 > pbudget and segs > 1:
            segs -= 1
        mss = 1440 if v6[i] else 1460
        total = (segs - 1) * mss + int(rng.integers(1, mss + 1))
        isn_c, isn_s = (int(x) for x in rng.integers(0, 2**32, 2))
        t0 = int(rng.uniform(0, 0.1) * duration_us)
        t_end = int(rng.uniform(0.85, 0.95) * duration_us)
        rtt = int(rng.integers(5_000, 60_000))
        gap = max((t_end - t0 - 2 * rtt) / (segs + 2), 1.0)

        j = np.arange(segs)
        acked = j[(j % 2 == 1) | (j == segs - 1)]
        d_seq = isn_s + 1 + j * mss
        d_len = np.where(j == segs - 1, total - (segs - 1) * mss, mss)
        d_t = t0 + rtt + 300 + j * gap + rng.uniform(-0.1, 0.1, segs) * gap
        a_ack = isn_s + 1 + np.minimum((acked + 1) * mss, total)
        a_t = d_t[acked] + 0.4 * gap
        # logical order: data j, then its ACK if any
        order = np.argsort(np.concatenate([2 * j, 2 * acked + 1]), kind="stable")
        mid_t = np.concatenate([d_t, a_t])[order]
        mid = {
            "dir": np.concatenate([np.ones(segs), np.zeros(len(acked))])[order],
            "plen": np.concatenate([d_len, np.zeros(len(acked))])[order],
            "f1": np.concatenate([d_seq, np.full(len(acked), isn_c + 1)])[order],
            "f2": np.concatenate([np.full(segs, isn_c + 1), a_ack])[order],
            "flags": np.concatenate([np.where(j == segs - 1, 0x18, 0x10), np.full(len(acked), 0x10)])[order],
        }
        last = mid_t[-1] + gap
        fin_seq = isn_s + 1 + total
        head_t = [t0, t0 + rtt, t0 + rtt + 150]
        tail_t = [last, last + rtt / 2, last + rtt / 2 + 200]
        ts = np.concatenate([head_t, mid_t, tail_t])
        cols = {
            "dir": np.concatenate([[0, 1, 0], mid["dir"], [1, 0, 1]]),
            "variant": np.concatenate([[VAR_SYN, VAR_SYN, VAR_PLAIN], np.zeros(len(mid_t)), [VAR_PLAIN] * 3]),
            "plen": np.concatenate([[0, 0, 0], mid["plen"], [0, 0, 0]]),
            "f1": np.concatenate([[isn_c, isn_s, isn_c + 1], mid["f1"], [fin_seq, isn_c + 1, fin_seq + 1]]),
            "f2": np.concatenate([[0, isn_c + 1, isn_s + 1], mid["f2"], [isn_c + 1, fin_seq + 1, isn_c + 2]]),
            "flags": np.concatenate([[0x02, 0x12, 0x10], mid["flags"], [0x11, 0x11, 0x10]]),
        }
        ts = _strictly_increasing(np.rint(ts).astype(np.int64))
        parts.append(_pk_cols(
            ts, np.full(len(ts), i), cols["dir"].astype(np.uint8), cols["variant"].astype(np.uint8),
            cols["plen"].astype(np.uint16),
            (cols["f1"].astype(np.int64) & 0xFFFFFFFF).astype(np.uint32),
            (cols["f2"].astype(np.int64) & 0xFFFFFFFF).astype(np.uint32),
            cols["flags"].astype(np.uint8)))
    pk = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    return flows, pk


def _dns(rng, count: int, duration_us: int):
    """`count` packets of DNS: query + answer pairs, plus one lone query if `count` is odd."""
    n = (count + 1) // 2
    v6 = rng.random(n) < 0.1
    tagged = rng.random(n) < 0.05
    if n >= 3:
        v6[:3] = [True, False, True]
        tagged[:3] = [False, True, True]
    j = np.arange(n)
    nclients = 32
    port = 33000 + j // nclients
    if n and port[-1] > 65535:
        raise ValueError("too many DNS flows for distinct client ports")
    client = np.where(v6[:, None], _v6("2001:db8:22::", 0x100 + j % nclients), _v4(_ip4("10.20.2.1") + j % nclients))
    resolver_v4 = np.where(rng.random(n) < 0.5, _ip4("8.8.8.8"), _ip4("1.1.1.1"))
    server = np.where(v6[:, None], _v6("2001:4860:4860::", np.full(n, 0x8888)), _v4(resolver_v4))
    answer = rng.integers(0, 256, (n, 4), dtype=np.uint8)
    answer[:, 0] = 93
    flows = _flow_cols(n, KIND_DNS, 17, v6, np.where(tagged, 100, 0), client, server, port, np.full(n, 53),
                       np.full(n, 64), np.full(n, 118), _host_macs(client),
                       np.broadcast_to(ROUTER_MAC, (n, 6)).copy(), dns_id=rng.integers(0, 65536, n), answer=answer)
    t_q = rng.integers(0, max(duration_us - 100_000, 1), n)
    t_a = t_q + rng.integers(1_000, 40_000, n)
    answered = np.ones(n, bool)
    if count % 2:
        answered[-1] = False
    fl = np.concatenate([j, j[answered]])
    pk = _pk_cols(
        np.concatenate([t_q, t_a[answered]]), fl,
        np.concatenate([np.zeros(n, np.uint8), np.ones(answered.sum(), np.uint8)]),
        np.concatenate([np.full(n, VAR_QUERY), np.full(answered.sum(), VAR_ANSWER)]),
        0, fl, 0, 0)  # f1 = flow number, used for the query name
    return flows, pk


# --------------------------------------------------------------------------- frame layouts

_LAYOUTS: dict = {}


def _layout(kind: int, v6: bool, vlan: bool, variant: int):
    """numpy structured dtype of the explicit bytes of a record (pcap record header included)."""
    key = (kind, v6, vlan, variant)
    if key in _LAYOUTS:
        return _LAYOUTS[key]
    f = [("rec_sec", "<u4"), ("rec_usec", "<u4"), ("rec_incl", "<u4"), ("rec_orig", "<u4"),
         ("eth_dst", "u1", (6,)), ("eth_src", "u1", (6,))]
    if vlan:
        f += [("vlan_tpid", ">u2"), ("vlan_tci", ">u2")]
    f += [("eth_type", ">u2")]
    if v6:
        f += [("ip6_vtcfl", ">u4"), ("ip6_plen", ">u2"), ("ip6_nh", "u1"), ("ip6_hlim", "u1"),
              ("ip_src", "u1", (16,)), ("ip_dst", "u1", (16,))]
    else:
        f += [("ip4_vihl", "u1"), ("ip4_tos", "u1"), ("ip4_len", ">u2"), ("ip4_id", ">u2"), ("ip4_frag", ">u2"),
              ("ip4_ttl", "u1"), ("ip4_proto", "u1"), ("ip4_csum", ">u2"), ("ip_src", "u1", (4,)),
              ("ip_dst", "u1", (4,))]
    if kind == KIND_TCP:
        f += [("l4_sport", ">u2"), ("l4_dport", ">u2"), ("tcp_seq", ">u4"), ("tcp_ack", ">u4"), ("tcp_off", "u1"),
              ("tcp_flags", "u1"), ("tcp_win", ">u2"), ("l4_csum", ">u2"), ("tcp_urg", ">u2")]
        if variant == VAR_SYN:
            f += [("tcp_opt", "u1", (4,))]
    else:
        f += [("l4_sport", ">u2"), ("l4_dport", ">u2"), ("udp_len", ">u2"), ("l4_csum", ">u2")]
    if kind == KIND_RTP:
        f += [("rtp_b0", "u1"), ("rtp_b1", "u1"), ("rtp_seq", ">u2"), ("rtp_ts", ">u4"), ("rtp_ssrc", ">u4")]
    elif kind == KIND_DNS:
        f += [("dns_id", ">u2"), ("dns_flags", ">u2"), ("dns_qd", ">u2"), ("dns_an", ">u2"), ("dns_ns", ">u2"),
              ("dns_ar", ">u2"), ("dns_qname", "u1", (len(_QNAME_TEMPLATE),)), ("dns_qtype", ">u2"),
              ("dns_qclass", ">u2")]
        if variant == VAR_ANSWER:
            f += [("an_name", ">u2"), ("an_type", ">u2"), ("an_class", ">u2"), ("an_ttl", ">u4"),
                  ("an_rdlen", ">u2"), ("an_rdata", "u1", (4,))]
    dt = np.dtype(f)
    eth_end = dt.fields["eth_type"][1] + 2
    l4_off = dt.fields["l4_sport"][1]
    _LAYOUTS[key] = (dt, eth_end, l4_off)
    return _LAYOUTS[key]


# "h000000.example.com" in DNS wire form; the 6 digits are the flow number.
_QNAME_TEMPLATE = np.frombuffer(b"\x07h000000\x07example\x03com\x00", dtype=np.uint8)


def _sum16(mat: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Per row: sum of the big-endian 16-bit words of mat[:, start:stop] (zero-padded)."""
    seg = mat[:, start:stop].astype(np.uint32)
    if seg.shape[1] % 2:
        seg = np.concatenate([seg, np.zeros((len(seg), 1), np.uint32)], axis=1)
    return ((seg[:, 0::2] << 8) | seg[:, 1::2]).sum(axis=1, dtype=np.uint64)


def _csum(total: np.ndarray) -> np.ndarray:
    for _ in range(3):
        total = (total & 0xFFFF) + (total >> 16)
    return (~total & 0xFFFF).astype(np.uint16)


def _build(key: tuple, sel: np.ndarray, flows: dict, pk: dict, frame_len: np.ndarray) -> np.ndarray:
    """Explicit bytes (pcap record header + headers) of the records `sel`, as (n, L) uint8."""
    kind, v6, vlan, variant = key
    dt, eth_end, l4_off = _layout(*key)
    n = len(sel)
    fl = pk["flow"][sel]
    back = (pk["dir"][sel] == 1)
    b2 = back[:, None]
    flen = frame_len[sel].astype(np.uint32)
    ts = pk["ts_us"][sel] + EPOCH_US

    r = np.zeros(n, dtype=dt)
    r["rec_sec"] = ts // 1_000_000
    r["rec_usec"] = ts % 1_000_000
    r["rec_incl"] = flen
    r["rec_orig"] = flen
    r["eth_src"] = np.where(b2, flows["b_mac"][fl], flows["a_mac"][fl])
    r["eth_dst"] = np.where(b2, flows["a_mac"][fl], flows["b_mac"][fl])
    if vlan:
        r["vlan_tpid"] = 0x8100
        r["vlan_tci"] = flows["vlan"][fl]
    src = np.where(b2, flows["b_addr"][fl], flows["a_addr"][fl])
    dst = np.where(b2, flows["a_addr"][fl], flows["b_addr"][fl])
    ttl = np.where(back, flows["b_ttl"][fl], flows["a_ttl"][fl])
    proto = 6 if kind == KIND_TCP else 17
    ip_len = flen - (eth_end - 16)                   # IP packet bytes
    tos = 0xB8 if kind == KIND_RTP else 0            # DSCP EF for media
    if v6:
        r["eth_type"] = 0x86DD
        r["ip6_vtcfl"] = (6 << 28) | (tos << 20) | (fl.astype(np.uint32) * 2654435761 & 0xFFFFF)
        r["ip6_plen"] = ip_len - 40
        r["ip6_nh"] = proto
        r["ip6_hlim"] = ttl
        r["ip_src"] = src
        r["ip_dst"] = dst
        ip_hdr = 40
    else:
        r["eth_type"] = 0x0800
        r["ip4_vihl"] = 0x45
        r["ip4_tos"] = tos
        r["ip4_len"] = ip_len
        r["ip4_id"] = (pk["ts_us"][sel] * 7 + fl * 40503) & 0xFFFF
        r["ip4_frag"] = 0x4000
        r["ip4_ttl"] = ttl
        r["ip4_proto"] = proto
        r["ip_src"] = src[:, 12:]
        r["ip_dst"] = dst[:, 12:]
        ip_hdr = 20
    r["l4_sport"] = np.where(back, flows["b_port"][fl], flows["a_port"][fl])
    r["l4_dport"] = np.where(back, flows["a_port"][fl], flows["b_port"][fl])
    l4_len = ip_len - ip_hdr
    if kind == KIND_TCP:
        r["tcp_seq"] = pk["f1"][sel]
        r["tcp_ack"] = pk["f2"][sel]
        r["tcp_off"] = (6 if variant == VAR_SYN else 5) << 4
        r["tcp_flags"] = pk["flags"][sel]
        r["tcp_win"] = np.where(back, 501, 2048)
        if variant == VAR_SYN:
            mss = 1440 if v6 else 1460
            r["tcp_opt"] = np.array([2, 4, mss >> 8, mss & 0xFF], np.uint8)
    else:
        r["udp_len"] = l4_len
    if kind == KIND_RTP:
        r["rtp_b0"] = 0x80
        r["rtp_b1"] = (pk["flags"][sel] << 7) | flows["pt"][fl]
        r["rtp_seq"] = pk["f1"][sel]
        r["rtp_ts"] = pk["f2"][sel]
        r["rtp_ssrc"] = np.where(back, flows["ssrc_b"][fl], flows["ssrc_a"][fl])
    elif kind == KIND_DNS:
        r["dns_id"] = flows["dns_id"][fl]
        r["dns_flags"] = 0x8180 if variant == VAR_ANSWER else 0x0100
        r["dns_qd"] = 1
        r["dns_an"] = 1 if variant == VAR_ANSWER else 0
        qname = np.empty((n, len(_QNAME_TEMPLATE)), np.uint8)
        qname[:] = _QNAME_TEMPLATE
        num = pk["f1"][sel] % 1_000_000
        for d in range(6):  # six digit columns
            qname[:, 7 - d] = ord("0") + (num // 10 ** d) % 10
        r["dns_qname"] = qname
        r["dns_qtype"] = 1
        r["dns_qclass"] = 1
        if variant == VAR_ANSWER:
            r["an_name"] = 0xC00C
            r["an_type"] = 1
            r["an_class"] = 1
            r["an_ttl"] = 300
            r["an_rdlen"] = 4
            r["an_rdata"] = flows["answer"][fl]

    mat = r.view(np.uint8).reshape(n, dt.itemsize)
    ip_off = eth_end
    if not v6:
        r["ip4_csum"] = _csum(_sum16(mat, ip_off, ip_off + 20))
        pseudo = _sum16(mat, ip_off + 12, ip_off + 20)
    else:
        pseudo = _sum16(mat, ip_off + 8, ip_off + 40)
    total = pseudo + proto + l4_len.astype(np.uint64) + _sum16(mat, l4_off, dt.itemsize)  # payload is zeros
    c = _csum(total)
    if kind != KIND_TCP:
        c[c == 0] = 0xFFFF
    r["l4_csum"] = c
    return mat


def _write(path: Path, flows: dict, pk: dict) -> dict:
    order = np.argsort(pk["ts_us"], kind="stable")  # per-flow order is preserved (strictly increasing)
    pk = {k: v[order] for k, v in pk.items()}
    fl = pk["flow"]
    kind = flows["kind"][fl]
    v6 = flows["v6"][fl]
    tagged = flows["vlan"][fl] != 0
    gkey = (kind.astype(np.int16) << 3) | (v6.astype(np.int16) << 2) | (tagged.astype(np.int16) << 1) | pk["variant"]
    keys = np.unique(gkey)
    explicit = np.zeros(32, np.int64)
    for k in keys:
        explicit[k] = _layout(*_unkey(int(k)))[0].itemsize
    frame_len = explicit[gkey] - 16 + pk["plen"]
    rec_len = frame_len + 16
    rec_off = np.concatenate([[0], np.cumsum(rec_len)]) + 24
    npk = len(fl)

    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "wb") as out:
        out.write(PCAP_GLOBAL_HEADER.tobytes())
        for s in range(0, npk, CHUNK):
            e = min(s + CHUNK, npk)
            base = rec_off[s]
            buf = np.zeros(int(rec_off[e] - base), np.uint8)
            g = gkey[s:e]
            by = np.argsort(g, kind="stable")
            bounds = np.flatnonzero(np.diff(g[by])) + 1
            for part in np.split(by, bounds):  # one part per header layout present in the chunk
                sel = part + s
                mat = _build(_unkey(int(gkey[sel[0]])), sel, flows, pk, frame_len)
                pos = (rec_off[sel] - base)[:, None] + np.arange(mat.shape[1])
                buf[pos] = mat
            buf.tofile(out)
    os.replace(tmp, path)

    # ground truth
    nf = len(flows["kind"])
    idx = fl.astype(np.int64) * 2 + pk["dir"]
    pkts = np.bincount(idx, minlength=2 * nf).reshape(nf, 2)
    byts = np.bincount(idx, weights=frame_len, minlength=2 * nf).reshape(nf, 2).astype(np.int64)
    first = np.full(nf, -1, np.int64)
    last = np.full(nf, -1, np.int64)
    u, i_first = np.unique(fl, return_index=True)
    first[u] = pk["ts_us"][i_first]
    u, i_last = np.unique(fl[::-1], return_index=True)
    last[u] = pk["ts_us"][npk - 1 - i_last]
    fo = np.argsort(first, kind="stable")  # flows in order of their first packet
    ts_ns = lambda us: ((us + EPOCH_US) * 1000).tolist()

    def endpoints(addr, port):
        out = []
        for a, p in zip(addr, port.tolist()):
            if a[10] == 0xFF and a[11] == 0xFF and not a[:10].any():
                out.append(f"{ipaddress.IPv4Address(bytes(a[12:]))}:{p}")
            else:
                out.append(f"[{ipaddress.IPv6Address(bytes(a))}]:{p}")
        return out

    kinds = flows["kind"]
    manifest = {
        "file_bytes": int(rec_off[-1]),
        "flow_count": int(nf),
        "flows_by_kind": {name: int((kinds == i).sum()) for i, name in enumerate(KIND_NAMES)},
        "packets_by_kind": {name: int((kind == i).sum()) for i, name in enumerate(KIND_NAMES)},
        "ipv6_flows": int(flows["v6"].sum()),
        "vlan_flows": int((flows["vlan"] != 0).sum()),
        "ipv6_packets": int(v6.sum()),
        "vlan_packets": int(tagged.sum()),
        "total_frame_bytes": int(frame_len.sum()),
        "max_concurrent_rtp": _max_concurrent(first[kinds == KIND_RTP], last[kinds == KIND_RTP]),
        "flows": {
            "kind": [KIND_NAMES[k] for k in kinds[fo]],
            "proto": flows["proto"][fo].tolist(),
            "a": endpoints(flows["a_addr"][fo], flows["a_port"][fo]),
            "b": endpoints(flows["b_addr"][fo], flows["b_port"][fo]),
            "packets_ab": pkts[fo, 0].tolist(), "packets_ba": pkts[fo, 1].tolist(),
            "bytes_ab": byts[fo, 0].tolist(), "bytes_ba": byts[fo, 1].tolist(),
            "first_ns": ts_ns(first[fo]), "last_ns": ts_ns(last[fo]),
        },
    }
    return manifest


def _unkey(k: int) -> tuple:
    return (k >> 3, bool(k & 4), bool(k & 2), k & 1)


def _max_concurrent(first: np.ndarray, last: np.ndarray) -> int:
    if len(first) == 0:
        return 0
    ev = np.concatenate([np.stack([first, np.ones_like(first)], 1), np.stack([last + 1, -np.ones_like(last)], 1)])
    ev = ev[np.lexsort((ev[:, 1], ev[:, 0]))]
    return int(np.cumsum(ev[:, 1]).max())


if __name__ == "__main__":  # python -m bench.synth [packets] [seed]
    import sys
    p = int(sys.argv[1]) if len(sys.argv) > 1 else 2_000_000
    sd = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    t = time.perf_counter()
    path, m = cached_capture(p, sd)
    info = {k: v for k, v in m.items() if k != "flows"}
    print(path, f"{time.perf_counter() - t:.2f}s", json.dumps(info))
