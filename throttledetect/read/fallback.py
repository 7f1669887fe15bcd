"""Wireshark's dissectors where ours stop: records the compiled decoder cannot open, opened by tshark.

decode.py knows a dozen link types and one tunnel (GTP-U). A capture taken in monitor mode on Wi-Fi
(802.11 with radiotap, PPI, Prism or AVS headers), on a serial line (Cisco HDLC, PPP in HDLC
framing), from netfilter (NFLOG) or on a link that carries tunnels (GRE, IP-in-IP, VXLAN, GENEVE,
L2TP, ESP with NULL encryption, alone or in UDP for NAT traversal, Teredo, CAPWAP, TZSP ...) would
otherwise lose those packets, or see only the tunnel's outer flow. Wireshark has a dissector for
nearly all of them, so those records (and only those) go through it:

1. Candidates, chosen with numpy over the whole table: every record of an unsupported link type,
   and every decoded IP packet whose protocol or UDP port is a tunnel's (TUNNEL_PROTOS,
   TUNNEL_UDP_PORTS). ESP (and ESP in UDP) is almost always encrypted, and tshark can see inside
   only NULL-encrypted ESP, so those are candidates only when an IP header with a valid checksum
   (IPv6: a plausible one) follows the 8-byte ESP header.
2. They are written to a temporary pcapng (one interface per link type) and dissected by pyshark
   (tshark's JSON with raw bytes, ``-x``), IP reassembly off so that each frame stands alone.
3. For each frame tshark reports the byte offset of every IP header it found. The innermost one
   (not counting IP headers quoted in ICMP errors) is the packet the frame carried; its header
   must be byte for byte where tshark says (not a decrypted or reassembled copy).
4. The compiled decoder decodes that IP packet in place (link type "raw IP" at that offset), so
   every column, offsets into ``Capture.buffer`` included, is exactly what a plain IP capture
   would give; the row keeps its timestamp, frame offset and lengths (time order is untouched)
   and its ``tunnel`` column says TUNNEL_FALLBACK.

Nothing here raises: without tshark, when tshark fails, or when THROTTLEDETECT_NO_FALLBACK=1,
the records stay as the compiled decoder left them and a message says why. Records of an
unsupported link type that hold no IP packet Wireshark can see (encrypted 802.11, management
frames, 802.11 retransmissions) stay skipped. THROTTLEDETECT_FALLBACK_MAX bounds the records sent
(default 500,000: tshark through pyshark dissects 3,700-5,500 records a second here, see README).
"""
from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
import time
import warnings
from dataclasses import dataclass, field

import numpy as np

from throttledetect.read import decode
from throttledetect.read.table import PacketTable

ENV_OFF = "THROTTLEDETECT_NO_FALLBACK"
ENV_MAX = "THROTTLEDETECT_FALLBACK_MAX"
DEFAULT_MAX = 500_000
TUNNEL_FALLBACK = 2          # value of the `tunnel` column for rows decoded here

# IP protocols that carry IP (or a link layer carrying IP).
TUNNEL_PROTOS = {4: "IP-in-IP", 41: "IPv6-in-IP", 47: "GRE", 50: "ESP", 97: "EtherIP", 115: "L2TPv3",
                 137: "MPLS-in-IP"}
ESP = 50
# UDP ports of tunnels (either end). 8472 is the Linux kernel's default VXLAN port.
TUNNEL_UDP_PORTS = {4789: "VXLAN", 8472: "VXLAN", 4790: "VXLAN-GPE", 6081: "GENEVE", 4500: "IPsec NAT-T",
                    1701: "L2TP", 6635: "MPLS-in-UDP", 5247: "CAPWAP", 37008: "TZSP", 3544: "Teredo"}
NAT_T_PORT = 4500

LINKTYPE_NAMES = {
    6: "Token Ring", 10: "FDDI", 50: "PPP in HDLC framing", 104: "Cisco HDLC", 105: "802.11",
    107: "Frame Relay", 119: "802.11 Prism", 127: "802.11 radiotap", 163: "802.11 AVS", 192: "PPI",
    239: "NFLOG", 166: "PPP (pppd)", 204: "PPP with direction", 147: "user 0",
}

# tshark preferences for this run: every frame must stand alone (no reassembly across frames,
# whose result would live outside the frame's bytes), retransmitted 802.11 frames are not
# packets of their own, and ESP with NULL encryption is opened.
PREFS = {
    "ip.defragment": "FALSE",
    "ipv6.defragment": "FALSE",
    "wlan.defragment": "FALSE",
    "wlan.retransmitted": "FALSE",
    "tcp.desegment_tcp_streams": "FALSE",
    "esp.enable_null_encryption_decode_heuristic": "TRUE",
}
DECODE_AS = {"udp.port==8472": "vxlan"}
# Only the frame layer's fields: the other layers keep their `<name>_raw` [hex, offset, length ...]
# entries, which is all we read (halves tshark's output and pyshark's parsing). No tunnel we open
# runs over TCP, and undissected payload ("data") is never needed: both off (a fifth less time).
TSHARK_ARGS = ["-j", "frame", "--disable-protocol", "data", "--disable-protocol", "tcp"]


class TsharkFailed(RuntimeError):
    """tshark (through pyshark) ended without dissecting anything."""


@dataclass
class FallbackResult:
    messages: list[str] = field(default_factory=list)
    stats: dict = field(default_factory=dict)


def enabled() -> bool:
    return os.environ.get(ENV_OFF, "").strip() not in ("1", "true", "yes")


def max_records() -> int:
    raw = os.environ.get(ENV_MAX, "").strip()
    return int(raw) if raw.isdigit() else DEFAULT_MAX


def find_tshark() -> str | None:
    """tshark's path as pyshark finds it (its config.ini, then PATH), else from PATH, else None."""
    try:
        from pyshark.tshark.tshark import get_process_path
        path = get_process_path()
    except Exception:  # noqa: BLE001 - pyshark missing, no tshark, or a config.ini pyshark cannot read
        path = shutil.which("tshark")
    return path if path and os.path.isfile(path) and os.access(path, os.X_OK) else None


_VERSIONS: dict[str, str] = {}


def tshark_version(path: str) -> str:
    """'4.0.17' for the tshark at `path` ('' when it does not say); asked once per process."""
    if path not in _VERSIONS:
        import re
        try:
            out = subprocess.run([path, "-v"], capture_output=True, text=True, timeout=60, check=False).stdout
        except (OSError, subprocess.SubprocessError):
            out = ""
        m = re.search(r"\s(\d+\.\d+\.\d+)", out.splitlines()[0] if out else "")
        _VERSIONS[path] = m.group(1) if m else ""
    return _VERSIONS[path]


# --- which records ------------------------------------------------------------------------------


def _esp_null_plausible(prefix: np.ndarray, payload_len: np.ndarray, at: int) -> np.ndarray:
    """Rows whose payload holds an IP header at byte `at` (after SPI and sequence number): IPv4
    with a valid header checksum, or IPv6 with a payload length that fits. Encrypted ESP passes
    by chance about once in a million packets (and then tshark's own heuristic still decides)."""
    n = len(prefix)
    if n == 0 or prefix.shape[1] < at + 20:
        return np.zeros(n, dtype=bool)
    head = prefix[:, at:at + 20].astype(np.uint32)
    v4 = (head[:, 0] == 0x45) & (payload_len >= at + 20)
    words = (head[:, 0::2] << 8) | head[:, 1::2]
    s = words.sum(axis=1)
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    v4 &= s == 0xFFFF
    v6 = (head[:, 0] >> 4) == 6
    plen = (head[:, 4] << 8) | head[:, 5]
    v6 &= (payload_len >= at + 40) & (plen + 40 + at <= payload_len)
    return v4 | v6


def candidates(table: PacketTable, status: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows of unsupported link types, rows of decoded packets that carry a tunnel), in file order."""
    link_rows = np.flatnonzero(status == decode.STATUS_LINKTYPE)
    plain = (status == decode.STATUS_OK) & (table.tunnel == 0) & (table.l3 != 0)
    proto = table.proto
    tun = plain & np.isin(proto, [p for p in TUNNEL_PROTOS if p != ESP])
    udp = plain & (proto == 17)
    ports = np.array(sorted(TUNNEL_UDP_PORTS), dtype=np.uint16)
    on_port = udp & (np.isin(table.sport, ports) | np.isin(table.dport, ports))
    nat_t = on_port & ((table.sport == NAT_T_PORT) | (table.dport == NAT_T_PORT))
    tun |= on_port & ~nat_t
    # ESP: only what could be NULL-encrypted. In UDP (RFC 3948) a zero first word marks IKE, one
    # 0xFF byte a keepalive; otherwise the ESP header begins at the UDP payload.
    esp = plain & (proto == ESP)
    rows = np.flatnonzero(esp | nat_t)
    if len(rows):
        pre = table.prefix[rows]
        ok = _esp_null_plausible(pre, table.payload_len[rows].astype(np.int64), 8)
        ok &= pre[:, :4].any(axis=1)
        tun[rows[ok]] = True
    return link_rows, np.flatnonzero(tun)


def _what(table: PacketTable, rows: np.ndarray, link: bool) -> dict[str, int]:
    """Counts by what the records are: 'link type 127 (802.11 radiotap)', 'GRE', 'VXLAN' ..."""
    out: dict[str, int] = {}
    if link:
        lts, counts = np.unique(table.linktype[rows], return_counts=True)
        for lt, c in zip(lts.tolist(), counts.tolist()):
            name = LINKTYPE_NAMES.get(lt)
            out[f"link type {lt}" + (f" ({name})" if name else "")] = c
        return out
    proto = table.proto[rows].astype(np.int64)
    dport, sport = table.dport[rows].astype(np.int64), table.sport[rows].astype(np.int64)
    port = np.where(np.isin(dport, list(TUNNEL_UDP_PORTS)), dport, sport)
    key = np.where(proto == 17, 1_000_000 + port, proto)
    for k, c in zip(*(a.tolist() for a in np.unique(key, return_counts=True))):
        name = TUNNEL_UDP_PORTS.get(k - 1_000_000, f"UDP {k - 1_000_000}") if k >= 1_000_000 else \
            TUNNEL_PROTOS.get(k, f"IP protocol {k}")
        out[name] = out.get(name, 0) + c
    return out


def _one_line(text: str, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _describe(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {k}" for k, n in counts.items())


# --- running tshark -----------------------------------------------------------------------------


def _write_pcapng(path: str, buf: np.ndarray, table: PacketTable, rows: np.ndarray) -> None:
    """The records `rows` (frames as captured, nanosecond timestamps), one interface per link type."""
    from throttledetect.write import write_pcapng
    lts = sorted(set(table.linktype[rows].tolist()))
    iface = {lt: k for k, lt in enumerate(lts)}
    off, cl, ts, lt = (table.frame_off[rows].tolist(), table.caplen[rows].tolist(), table.ts_ns[rows].tolist(),
                       table.linktype[rows].tolist())
    data = buf
    write_pcapng(path, ((iface[lt[k]], ts[k], data[off[k]:off[k] + cl[k]].tobytes()) for k in range(len(rows))),
                 [(x, 9) for x in lts])


def _raw_spans(layer) -> list[tuple[str, int]]:
    """(hex, offset) of each occurrence of a pyshark JSON `<proto>_raw` layer.

    tshark writes [hex, offset, length, bitmask, type] per occurrence (a list of those when the
    protocol occurs more than once); pyshark's JsonLayer spreads that over `value` and
    `duplicate_layers`: one occurrence -> value = hex, duplicates = offset, length ...; several ->
    value = the first list, each duplicate = one more occurrence spread the same way."""
    v = layer.value
    dups = getattr(layer, "duplicate_layers", []) or []
    if isinstance(v, str):
        return [(v, int(dups[0].value))] if dups and isinstance(dups[0].value, (int, str)) else []
    spans = []
    if isinstance(v, list) and len(v) >= 2 and isinstance(v[0], str):
        spans.append((v[0], int(v[1])))
    for d in dups:
        spans += _raw_spans(d)
    return spans


def innermost_ip(packet) -> tuple[int, str, int] | None:
    """(offset, header hex, IP headers down to it) of the innermost IP packet of a pyshark packet
    (JSON with raw bytes); None without IP. IP headers quoted inside an ICMP error are not packets
    of their own, and a header that two dissectors claimed (one handing over to the other) counts once."""
    ips: dict[int, str] = {}
    icmp_at = None
    for layer in packet.layers:
        name = layer.layer_name
        if name in ("ip_raw", "ipv6_raw"):
            for hexstr, off in _raw_spans(layer):
                if len(hexstr) > len(ips.get(off, "")):
                    ips[off] = hexstr
        elif name in ("icmp_raw", "icmpv6_raw"):
            offs = [off for _, off in _raw_spans(layer)]
            if offs:
                icmp_at = min(offs) if icmp_at is None else min(icmp_at, *offs)
    offsets = sorted(off for off in ips if icmp_at is None or off < icmp_at)
    if not offsets:
        return None
    return offsets[-1], ips[offsets[-1]], len(offsets)


def _dissect(tshark: str, path: str, prefs: dict) -> tuple[dict[int, tuple[int, str, int]], str | None]:
    """({frame number (1-based): innermost_ip(...)} for every frame in which tshark found IP,
    what went wrong or None). What tshark printed before it failed is kept."""
    import pyshark
    from packaging import version

    class _Capture(pyshark.FileCapture):
        # Our tshark, asked for its version once: pyshark would look for both again on every
        # capture, through a config.ini in the current directory that may not even be its own.
        def _get_tshark_path(self):
            return tshark

        def _get_tshark_version(self):
            return version.parse(tshark_version(tshark) or "4.0.0")

    found: dict[int, tuple[int, str, int]] = {}
    error = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")       # asyncio's child-watcher deprecation (Python 3.12+)
        cap = _Capture(path, keep_packets=False, use_json=True, include_raw=True, display_filter="ip or ipv6",
                       override_prefs=prefs, decode_as=DECODE_AS, custom_parameters=TSHARK_ARGS, tshark_path=tshark)
        try:
            for pkt in cap:
                inner = innermost_ip(pkt)
                if inner is not None:
                    found[int(pkt.number)] = inner
        except Exception as e:  # noqa: BLE001 - tshark crashed or printed what pyshark cannot parse
            error = _tshark_error(e, cap)
        finally:
            try:
                cap.close()
            except Exception as e:  # noqa: BLE001
                error = error or _tshark_error(e, cap)
            cap._running_processes.clear()    # else pyshark's __del__ tries (and fails) once more
    return found, error


def _probe(tshark: str, path: str, prefs: dict) -> tuple[int, str]:
    """(exit status, last line on stderr) of tshark reading one frame of `path` with `prefs`."""
    args = [tshark, "-n", "-c", "1", "-T", "fields", "-e", "frame.number", "-r", path]
    for k, v in prefs.items():
        args += ["-o", f"{k}:{v}"]
    try:
        out = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.SubprocessError) as e:
        return -1, f"{type(e).__name__}: {e}"
    lines = [ln.strip() for ln in out.stderr.splitlines() if ln.strip() and not ln.startswith("Running as user")]
    return out.returncode, lines[-1] if lines else ""


def _unknown_pref(error: str | None) -> str | None:
    """The preference tshark refused ('-o flag "name:value" specifies unknown preference'), or None."""
    import re
    m = re.search(r'-o flag "([^":]+):[^"]*" specifies unknown preference', error or "")
    return m.group(1) if m else None


def _tshark_error(e: Exception, cap) -> str:
    """'tshark exited with status 2: <its last line on stderr>' for pyshark's TSharkCrashException
    (whose own text advises pyshark's debug mode), else the exception."""
    import re
    m = re.search(r"retcode: (-?\d+)", str(e))
    if type(e).__name__ == "TSharkCrashException" and m:
        last = getattr(cap, "_last_error_line", None)
        return f"tshark exited with status {m.group(1)}" + (f": {last}" if last else "")
    return f"{type(e).__name__}: {e}"


def _run_isolated(fn, *args):
    """fn(*args), in a worker thread when this thread already runs an asyncio loop (a notebook):
    pyshark drives tshark with run_until_complete, which a running loop refuses."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return fn(*args)
    import concurrent.futures
    with concurrent.futures.ThreadPoolExecutor(1) as ex:
        return ex.submit(fn, *args).result()


# --- decoding what tshark found -----------------------------------------------------------------

_COPIED = ("l3", "proto", "src_hi", "src_lo", "dst_hi", "dst_lo", "sport", "dport", "ttl", "ip_id", "frag",
           "tcp_seq", "tcp_ack", "tcp_flags", "tcp_win", "l4_off", "payload_off", "payload_len", "payload_wirelen")
_DECODED = (decode.STATUS_OK, decode.STATUS_TRUNCATED_L4, decode.STATUS_FRAGMENT)


def plausible_ip(header: bytes, room: int) -> bool:
    """Does this IP header (as tshark reported it) fit in the `room` bytes left in the frame on the
    wire, and, for IPv4, is its checksum right? A flow that uses a tunnel's UDP port by chance gets
    its payload dissected as that tunnel; this keeps what comes out of it from becoming a packet."""
    if len(header) >= 20 and header[0] >> 4 == 4:
        ihl = (header[0] & 0x0F) * 4
        if ihl < 20 or len(header) < ihl:
            return False
        total = int.from_bytes(header[2:4], "big")
        s = sum(int.from_bytes(header[i:i + 2], "big") for i in range(0, ihl, 2))
        while s >> 16:
            s = (s & 0xFFFF) + (s >> 16)
        return s == 0xFFFF and ihl <= total <= room
    if len(header) >= 40 and header[0] >> 4 == 6:
        return 40 + int.from_bytes(header[4:6], "big") <= room
    return False


def decode_at(buf: np.ndarray, table: PacketTable, status: np.ndarray, rows: np.ndarray,
              ip_off: np.ndarray) -> np.ndarray:
    """Decode the IP packet at frame offset `ip_off` of each row with the compiled decoder, in
    place; rows whose packet does not decode are left alone. Returns the mask of rows replaced."""
    k = len(rows)
    sub = PacketTable.empty(k, table.prefix.shape[1])
    st = np.zeros(k, dtype=np.uint8)
    rec_off = (table.frame_off[rows] + ip_off).astype(np.int64)
    rec_cap = (table.caplen[rows].astype(np.int64) - ip_off).astype(np.uint32)
    lt = np.full(k, 101, dtype=np.uint16)
    decode.decode_records(buf, rec_off, rec_cap, lt, table.prefix.shape[1],
                          st, sub.l3, sub.proto, sub.src_hi, sub.src_lo, sub.dst_hi, sub.dst_lo,
                          sub.sport, sub.dport, sub.ttl, sub.ip_id, sub.frag,
                          sub.tcp_seq, sub.tcp_ack, sub.tcp_flags, sub.tcp_win,
                          sub.l4_off, sub.payload_off, sub.payload_len, sub.payload_wirelen,
                          sub.prefix, sub.tunnel)
    ok = np.isin(st, _DECODED) & (sub.l3 != 0)
    dst = rows[ok]
    for name in _COPIED:
        getattr(table, name)[dst] = getattr(sub, name)[ok]
    table.prefix[dst] = sub.prefix[ok]
    table.tunnel[dst] = TUNNEL_FALLBACK
    status[dst] = st[ok]
    return ok


def apply(buf: np.ndarray, table: PacketTable, status: np.ndarray) -> FallbackResult:
    """Open what the compiled decoder could not, in place (see the module docstring). Never raises."""
    result = FallbackResult()
    if not enabled() or len(table) == 0:
        return result
    try:
        link_rows, tunnel_rows = candidates(table, status)
    except Exception as e:  # noqa: BLE001 - the fallback must never cost the capture
        result.messages.append(f"Wireshark fallback not tried ({type(e).__name__}: {e})")
        return result
    if len(link_rows) == 0 and len(tunnel_rows) == 0:
        return result
    try:
        _run(buf, table, status, link_rows, tunnel_rows, result)
    except Exception as e:  # noqa: BLE001
        what = _describe({**_what(table, link_rows, True), **_what(table, tunnel_rows, False)})
        detail = str(e) if isinstance(e, TsharkFailed) else f"{type(e).__name__}: {e}"
        result.messages.append(f"Wireshark fallback failed ({_one_line(detail)}); "
                               f"not opened: {what}")
        result.stats = {"records": 0, "decoded": 0, "seconds": 0.0, "reason": _one_line(detail)}
    return result


def _run(buf, table, status, link_rows, tunnel_rows, result: FallbackResult) -> None:
    link_what, tunnel_what = _what(table, link_rows, True), _what(table, tunnel_rows, False)
    tshark = find_tshark()
    if tshark is None:
        why = "needs tshark (Wireshark's command-line tool: apt-get install tshark), not found"
        if len(link_rows):
            result.messages.append(f"not decoded: {_describe(link_what)}: the Wireshark fallback {why}")
        if len(tunnel_rows):
            result.messages.append(f"tunnels not opened (their outer flows are analysed): {_describe(tunnel_what)}: "
                                   f"the Wireshark fallback {why}")
        result.stats = {"records": 0, "decoded": 0, "seconds": 0.0, "reason": "tshark not found"}
        return
    rows = np.union1d(link_rows, tunnel_rows)
    limit = max_records()
    cut = len(rows) > limit
    if cut:
        rows = rows[:limit]
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="throttledetect-fallback-") as tmp:
        path = os.path.join(tmp, "undecoded.pcapng")
        _write_pcapng(path, buf, table, rows)
        prefs = dict(PREFS)
        while True:
            found, error = _run_isolated(_dissect, tshark, path, prefs)
            if found or error is None:
                break
            # Nothing came out: ask tshark itself why (pyshark may miss its last words).
            rc, said = _probe(tshark, path, prefs)
            unknown = _unknown_pref(said)
            if unknown in prefs:
                del prefs[unknown]         # a tshark of another version without this preference
                continue
            if rc != 0:
                error = f"tshark exited with status {rc}" + (f": {said}" if said else "")
            break
    if error is not None and not found:
        raise TsharkFailed(error)
    # frame numbers are 1-based positions in `rows`
    is_tunnel = np.isin(rows, tunnel_rows)
    sel, ip_off = [], []
    n_rows = len(rows)
    for num, (off, hexstr, depth) in found.items():
        k = num - 1
        if not 0 <= k < n_rows or (is_tunnel[k] and depth < 2):
            continue                       # a tunnel packet whose only IP header is the outer one
        r = int(rows[k])
        start = int(table.frame_off[r]) + off
        head = bytes.fromhex(hexstr)
        if off < 0 or off >= int(table.caplen[r]) or bytes(buf[start:start + len(head)]) != head:
            continue                       # not in the frame's own bytes (decrypted or reassembled)
        if is_tunnel[k] and not plausible_ip(head, int(table.wirelen[r]) - off):
            continue                       # a tunnel's port by chance, and its payload read as IP
        sel.append(k)
        ip_off.append(off)
    sel = np.asarray(sel, dtype=np.int64)
    ok = decode_at(buf, table, status, rows[sel], np.asarray(ip_off, dtype=np.int64)) if len(sel) else \
        np.zeros(0, dtype=bool)
    seconds = time.perf_counter() - t0
    done = rows[sel[ok]]
    n_link = int(np.count_nonzero(~is_tunnel))
    n_tun = n_rows - n_link
    d_link = int(np.count_nonzero(np.isin(done, link_rows)))
    d_tun = len(done) - d_link
    parts = []
    if n_link:
        parts.append(f"{d_link} of {n_link} records of {', '.join(link_what)} decoded")
    if n_tun:
        parts.append(f"{d_tun} of {n_tun} tunnel packets opened ({_describe(tunnel_what)})")
    result.messages.append(f"Wireshark fallback (pyshark, tshark {tshark_version(tshark) or '?'}): "
                           f"{'; '.join(parts)} in {seconds:.1f} s")
    if n_link > d_link:
        result.messages.append(f"{n_link - d_link} records of an unsupported link type hold no IP packet Wireshark "
                               "can see (encrypted or management 802.11 frames, retransmissions, non-IP): skipped")
    if error is not None:
        result.messages.append(f"tshark stopped early ({_one_line(error)}); what it dissected before was used")
    if cut:
        result.messages.append(f"only the first {limit} records went through the Wireshark fallback "
                               f"({ENV_MAX}); the rest stay as they were")
    result.stats = {"records": n_rows, "decoded": int(len(done)), "link_records": n_link, "link_decoded": d_link,
                    "tunnel_records": n_tun, "tunnels_opened": d_tun, "seconds": round(seconds, 3),
                    "tshark": tshark_version(tshark)}
