"""Decoding of framed records: link layer -> IPv4/IPv6 -> TCP/UDP/ICMP, into PacketTable columns.

Link types (https://www.tcpdump.org/linktypes.html): Ethernet (1) with 802.1Q/802.1ad/QinQ tags,
PPPoE sessions and MPLS stacks; Linux cooked SLL (113) and SLL2 (276), what `tcpdump -i any`
writes; raw IP (101, and the DLT_RAW values 12 and 14 some systems write); IPv4 (228); IPv6 (229);
BSD NULL (0, host byte order) and LOOP (108, network byte order); PPP (9).
IPv4 options are skipped by IHL (RFC 791); IPv6 extension headers are walked (RFC 8200 4.1).

Every record gets a status code (STATUS_*), so the reader can say what it skipped and why.
"""
from __future__ import annotations

import numpy as np

from throttledetect.jit import njit

STATUS_OK = 0                 # IP packet decoded (transport decoded where it has one)
STATUS_LINKTYPE = 1           # link type not supported
STATUS_NOT_IP = 2             # link layer fine, but it carries something other than IP (ARP, LLDP ...)
STATUS_TRUNCATED_LINK = 3     # record shorter than its link-layer header
STATUS_BAD_IP = 4             # IP header invalid or truncated
STATUS_TRUNCATED_L4 = 5       # IP fine, transport header cut by the snapshot length
STATUS_FRAGMENT = 6           # a non-first IP fragment (no transport header of its own)

STATUS_TEXT = {
    STATUS_LINKTYPE: "unsupported link type",
    STATUS_NOT_IP: "not IP (ARP, LLDP, ...)",
    STATUS_TRUNCATED_LINK: "truncated link-layer header",
    STATUS_BAD_IP: "malformed or truncated IP header",
    STATUS_TRUNCATED_L4: "transport header cut short",
    STATUS_FRAGMENT: "non-first IP fragments",
}

SUPPORTED_LINKTYPES = {
    0: "NULL", 1: "ETHERNET", 9: "PPP", 12: "RAW", 14: "RAW", 101: "RAW", 108: "LOOP",
    113: "LINUX_SLL", 228: "IPV4", 229: "IPV6", 276: "LINUX_SLL2",
}

ETH_IPV4 = 0x0800
ETH_IPV6 = 0x86DD
_ETH_VLAN = (0x8100, 0x88A8, 0x9100, 0x9200)
ETH_PPPOE_SESSION = 0x8864
ETH_MPLS_UC = 0x8847
ETH_MPLS_MC = 0x8848
# IPv6 extension headers with the generic (next, length in 8-byte units) layout: hop-by-hop 0,
# routing 43, destination options 60, mobility 135, HIP 139, shim6 140.
IPV6_FRAGMENT = 44
IPV6_AH = 51
IPV6_NO_NEXT = 59
MAX_IPV6_EXT = 8
MAX_VLAN_TAGS = 4
MAX_MPLS_LABELS = 8
MAX_TUNNEL_DEPTH = 1
GTPU_PORT = 2152
TUNNEL_GTPU = 1

IPV4_MAPPED = np.uint64(0x0000FFFF00000000)


@njit
def _be16(buf, o):
    return np.int64(buf[o]) << 8 | np.int64(buf[o + 1])


@njit
def _be32(buf, o):
    return (np.int64(buf[o]) << 24 | np.int64(buf[o + 1]) << 16
            | np.int64(buf[o + 2]) << 8 | np.int64(buf[o + 3]))


@njit
def _be64u(buf, o):
    v = np.uint64(0)
    for k in range(8):
        v = (v << np.uint64(8)) | np.uint64(buf[o + k])
    return v


@njit
def _ethertype_from_version(buf, p, end):
    if p >= end:
        return -1
    v = np.int64(buf[p]) >> 4
    if v == 4:
        return ETH_IPV4
    if v == 6:
        return ETH_IPV6
    return -1


@njit(inline=True)
def _link(buf, o, end, lt):
    """-> (ethertype or -1 for non-IP, network-layer offset, status)."""
    if lt == 1:
        if o + 14 > end:
            return -1, o, STATUS_TRUNCATED_LINK
        et = _be16(buf, o + 12)
        p = o + 14
        tags = 0
        while tags < MAX_VLAN_TAGS:
            is_vlan = False
            for v in _ETH_VLAN:
                if et == v:
                    is_vlan = True
            if not is_vlan:
                break
            if p + 4 > end:
                return -1, p, STATUS_TRUNCATED_LINK
            et = _be16(buf, p + 2)
            p += 4
            tags += 1
        if et == ETH_PPPOE_SESSION:
            if p + 8 > end:
                return -1, p, STATUS_TRUNCATED_LINK
            ppp = _be16(buf, p + 6)
            p += 8
            if ppp == 0x0021:
                return ETH_IPV4, p, STATUS_OK
            if ppp == 0x0057:
                return ETH_IPV6, p, STATUS_OK
            return -1, p, STATUS_NOT_IP
        if et == ETH_MPLS_UC or et == ETH_MPLS_MC:
            for _ in range(MAX_MPLS_LABELS):
                if p + 4 > end:
                    return -1, p, STATUS_TRUNCATED_LINK
                bottom = buf[p + 2] & 1
                p += 4
                if bottom:
                    break
            return _ethertype_from_version(buf, p, end), p, STATUS_OK
        return et, p, STATUS_OK
    if lt == 113:
        if o + 16 > end:
            return -1, o, STATUS_TRUNCATED_LINK
        return _be16(buf, o + 14), o + 16, STATUS_OK
    if lt == 276:
        if o + 20 > end:
            return -1, o, STATUS_TRUNCATED_LINK
        return _be16(buf, o), o + 20, STATUS_OK
    if lt == 101 or lt == 12 or lt == 14:
        return _ethertype_from_version(buf, o, end), o, STATUS_OK
    if lt == 228:
        return ETH_IPV4, o, STATUS_OK
    if lt == 229:
        return ETH_IPV6, o, STATUS_OK
    if lt == 0 or lt == 108:
        if o + 4 > end:
            return -1, o, STATUS_TRUNCATED_LINK
        # NULL stores the address family in the capturing host's byte order; LOOP in network order.
        fam_be = _be32(buf, o)
        fam_le = np.int64(buf[o]) | np.int64(buf[o + 1]) << 8 | np.int64(buf[o + 2]) << 16 | np.int64(buf[o + 3]) << 24
        fam = fam_be if lt == 108 or fam_be < 256 else fam_le
        if fam == 2:
            return ETH_IPV4, o + 4, STATUS_OK
        if fam == 10 or fam == 24 or fam == 28 or fam == 30:
            return ETH_IPV6, o + 4, STATUS_OK
        # Unknown family (some writers leave garbage there): trust the IP version nibble.
        et = _ethertype_from_version(buf, o + 4, end)
        return et, o + 4, STATUS_OK if et >= 0 else STATUS_NOT_IP
    if lt == 9:
        p = o
        if p + 2 <= end and buf[p] == 0xFF and buf[p + 1] == 0x03:
            p += 2
        if p + 2 > end:
            return -1, p, STATUS_TRUNCATED_LINK
        ppp = _be16(buf, p)
        if ppp == 0x0021:
            return ETH_IPV4, p + 2, STATUS_OK
        if ppp == 0x0057:
            return ETH_IPV6, p + 2, STATUS_OK
        return -1, p + 2, STATUS_NOT_IP
    return -1, o, STATUS_LINKTYPE


@njit
def decode_records(buf, rec_off, rec_caplen, rec_linktype, prefix_len,
                   status, l3, proto, src_hi, src_lo, dst_hi, dst_lo, sport, dport, ttl, ip_id, frag,
                   tcp_seq, tcp_ack, tcp_flags, tcp_win, l4_off, payload_off, payload_len, payload_wirelen,
                   prefix, tunnel):
    """Fill the network/transport columns of every framed record. Pure function of the bytes.

    One flat loop on purpose: a per-layer helper returning tuples, called per packet with two
    dozen array arguments, made this three times slower under numba. Early exits set `st` and
    break out of the tunnel loop; a GTP-U payload sends the loop round once more on the inner packet.
    """
    n = rec_off.shape[0]
    for i in range(n):
        o = rec_off[i]
        end = o + np.int64(rec_caplen[i])
        l4_off[i] = -1
        payload_off[i] = -1
        et, p, st = _link(buf, o, end, np.int64(rec_linktype[i]))
        if st != STATUS_OK:
            status[i] = st
            continue
        for depth in range(MAX_TUNNEL_DEPTH + 1):
            st = STATUS_OK
            if et == ETH_IPV4:
                if p + 20 > end or (buf[p] >> 4) != 4:
                    st = STATUS_BAD_IP
                    break
                ihl = np.int64(buf[p] & 0x0F) * 4
                total = _be16(buf, p + 2)
                if ihl < 20 or p + ihl > end:
                    st = STATUS_BAD_IP
                    break
                if total == 0:
                    total = end - p  # TSO/GSO super-packets captured on the sending host say 0
                if total < ihl:
                    st = STATUS_BAD_IP
                    break
                l3[i] = 4
                ttl[i] = buf[p + 8]
                ip_id[i] = _be16(buf, p + 4)
                proto[i] = buf[p + 9]
                src_hi[i] = 0
                dst_hi[i] = 0
                src_lo[i] = IPV4_MAPPED | np.uint64(_be32(buf, p + 12))
                dst_lo[i] = IPV4_MAPPED | np.uint64(_be32(buf, p + 16))
                ip_end = p + total
                q = p + ihl
                fo = _be16(buf, p + 6)
                if fo & 0x1FFF:
                    frag[i] = 2
                    payload_wirelen[i] = total - ihl
                    st = STATUS_FRAGMENT
                    break
                frag[i] = 1 if fo & 0x2000 else 0
            elif et == ETH_IPV6:
                if p + 40 > end or (buf[p] >> 4) != 6:
                    st = STATUS_BAD_IP
                    break
                l3[i] = 6
                ttl[i] = buf[p + 7]
                plen = _be16(buf, p + 4)
                src_hi[i] = _be64u(buf, p + 8)
                src_lo[i] = _be64u(buf, p + 16)
                dst_hi[i] = _be64u(buf, p + 24)
                dst_lo[i] = _be64u(buf, p + 32)
                ip_end = p + 40 + plen if plen > 0 else end  # 0: jumbogram, length in hop-by-hop
                nh = np.int64(buf[p + 6])
                q = p + 40
                later_fragment = False
                bad = False
                frag[i] = 0
                for _ in range(MAX_IPV6_EXT):
                    if nh == 0 or nh == 43 or nh == 60 or nh == 135 or nh == 139 or nh == 140:
                        if q + 2 > end:
                            bad = True
                            break
                        nxt = np.int64(buf[q])
                        q += (np.int64(buf[q + 1]) + 1) * 8
                        nh = nxt
                    elif nh == IPV6_FRAGMENT:
                        if q + 8 > end:
                            bad = True
                            break
                        nxt = np.int64(buf[q])
                        fo = _be16(buf, q + 2)
                        ip_id[i] = _be32(buf, q + 4)
                        q += 8
                        nh = nxt
                        if fo & 0xFFF8:
                            later_fragment = True
                            break
                        if fo & 1:
                            frag[i] = 1
                    elif nh == IPV6_AH:
                        if q + 2 > end:
                            bad = True
                            break
                        nxt = np.int64(buf[q])
                        q += (np.int64(buf[q + 1]) + 2) * 4
                        nh = nxt
                    else:
                        break
                proto[i] = nh
                if bad or q > end:
                    st = STATUS_TRUNCATED_L4
                    break
                if later_fragment:
                    frag[i] = 2
                    payload_wirelen[i] = max(ip_end - q, 0)
                    st = STATUS_FRAGMENT
                    break
            else:
                st = STATUS_NOT_IP
                break

            pr = np.int64(proto[i])
            cap_end = min(ip_end, end)  # Ethernet padding lies beyond ip_end; the snapshot may cut before it
            l4_off[i] = q
            sport[i] = 0
            dport[i] = 0
            if pr == 6:
                if q + 20 > cap_end:
                    st = STATUS_TRUNCATED_L4
                    break
                sport[i] = _be16(buf, q)
                dport[i] = _be16(buf, q + 2)
                tcp_seq[i] = _be32(buf, q + 4)
                tcp_ack[i] = _be32(buf, q + 8)
                doff = (np.int64(buf[q + 12]) >> 4) * 4
                tcp_flags[i] = buf[q + 13]
                tcp_win[i] = _be16(buf, q + 14)
                if doff < 20:
                    st = STATUS_TRUNCATED_L4
                    break
                start = q + doff
                declared = ip_end - start
            elif pr == 17 or pr == 136:  # UDP, UDP-Lite
                if q + 8 > cap_end:
                    st = STATUS_TRUNCATED_L4
                    break
                sport[i] = _be16(buf, q)
                dport[i] = _be16(buf, q + 2)
                ulen = _be16(buf, q + 4)
                start = q + 8
                declared = ip_end - start
                if pr == 17 and 8 <= ulen and q + ulen <= ip_end:
                    declared = ulen - 8
                    cap_end = min(cap_end, q + ulen)
            elif pr == 132:  # SCTP: ports like TCP/UDP
                if q + 12 > cap_end:
                    st = STATUS_TRUNCATED_L4
                    break
                sport[i] = _be16(buf, q)
                dport[i] = _be16(buf, q + 2)
                start = q + 12
                declared = ip_end - start
            else:
                # ICMP and others: the whole transport message is the payload (type/code come first).
                start = q
                declared = ip_end - start
            payload_off[i] = start
            have = cap_end - start
            if have < 0:
                have = 0
            payload_len[i] = have
            payload_wirelen[i] = declared if declared > 0 else 0
            if pr == 17 and depth < MAX_TUNNEL_DEPTH and (sport[i] == GTPU_PORT or dport[i] == GTPU_PORT):
                inner = _gtpu_inner(buf, start, cap_end)
                if inner >= 0:
                    inner_et = _ethertype_from_version(buf, inner, end)
                    if inner_et >= 0:
                        # GTP-U: decode the user's packet inside; the outer frame's length stays its size.
                        et = inner_et
                        p = inner
                        tunnel[i] = TUNNEL_GTPU
                        continue
            k = min(have, prefix_len)
            for j in range(k):
                prefix[i, j] = buf[start + j]
            break
        status[i] = st
    return 0


@njit
def _gtpu_inner(buf, start, end):
    """Offset of the IP packet inside a GTPv1-U T-PDU (3GPP TS 29.281 section 5), or -1."""
    if start + 8 > end:
        return -1
    flags = np.int64(buf[start])
    if (flags >> 5) != 1 or buf[start + 1] != 0xFF:
        return -1
    q = start + 8
    if flags & 0x07:           # E, S or PN: the optional 4-byte field is present
        q += 4
        if flags & 0x04:       # extension headers: length in 4-byte units, last byte = next type
            if q > end:
                return -1
            nxt = np.int64(buf[q - 1])
            hops = 0
            while nxt != 0:
                if hops >= 8 or q >= end:
                    return -1
                ln = np.int64(buf[q]) * 4
                if ln == 0 or q + ln > end:
                    return -1
                nxt = np.int64(buf[q + ln - 1])
                q += ln
                hops += 1
    if q >= end:
        return -1
    return q
