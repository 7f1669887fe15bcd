"""Network-namespace topologies and kernel qdiscs for ground-truth throttling.

Two layouts, both isolated from the host's own networking (nothing is routed out of them):

    router=True (default)                       router=False
    client ns            router ns           server ns       client ns          server ns
    eth0 192.168.88.2 -- lan0 | wan0 -- eth0 203.0.113.10     eth0 192.168.88.2 -- eth0 203.0.113.10
                       192.168.88.1 203.0.113.1

203.0.113.0/24 is TEST-NET-3 (RFC 5737): it looks like a remote server to a classifier but is never
routed on the internet, and here it exists only inside our namespaces.

Throttling is a qdisc tree on the egress interface of one hop (the router's `lan0` for to-local
traffic, `wan0` for from-local; without a router, the server's or client's `eth0`):

    htb root (default 0: unclassified packets leave unshaped through htb's direct queue)
     └─ class 1:10 ── leaf qdisc, by kind:
          shaping   class rate 10gbit, leaf `tbf rate R burst B limit L`   (L large: queue, tail drop)
          policing  class rate 10gbit, leaf `tbf rate R burst B limit L`   (L about one packet: drops
                                                                            above the rate, ~no queue)
          htb       class `rate R ceil R burst B`, leaf `pfifo limit N`
          blocking  class rate 10gbit, leaf `pfifo limit 0`                (every packet dropped)

Only packets matched by u32 filters (UDP ports of the call flows) go into class 1:10, so control
flows on the same path pass untouched. The tree is built first and the filters are added at the
onset, so a tbf bucket is full when throttling starts (as a policer's would be).
Needs root, `ip` and `tc` (iproute2); netem and tc actions are not needed.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import time
from dataclasses import asdict, dataclass, field

CLIENT_IP = "192.168.88.2"
ROUTER_LAN_IP = "192.168.88.1"
ROUTER_WAN_IP = "203.0.113.1"
SERVER_IP = "203.0.113.10"

KINDS = ("shaping", "policing", "htb", "blocking")
DIRECTIONS = ("to-local", "from-local", "both")


class TestbedError(RuntimeError):
    pass


def run(argv: list[str], check: bool = True, timeout: float = 20.0) -> subprocess.CompletedProcess:
    p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise TestbedError(f"{' '.join(argv)} failed ({p.returncode}): {p.stderr.strip() or p.stdout.strip()}")
    return p


def availability() -> tuple[bool, str]:
    """(usable, reason): can this process build namespaces and qdiscs here?"""
    if os.geteuid() != 0:
        return False, "testbed needs root (network namespaces and tc)"
    for tool in ("ip", "tc", "tcpdump"):
        if shutil.which(tool) is None:
            return False, f"testbed needs `{tool}` on PATH"
    name = "tdprobe-" + secrets.token_hex(4)
    try:
        p = run(["ip", "netns", "add", name], check=False)
        if p.returncode != 0:
            return False, f"`ip netns add` does not work here: {p.stderr.strip()}"
        run(["ip", "netns", "del", name], check=False)
    except (OSError, subprocess.SubprocessError) as e:
        return False, f"`ip netns` unusable: {e}"
    return True, ""


@dataclass
class Match:
    """One u32 filter: UDP (17) or TCP (6) packets whose source or destination port is `port`."""

    proto: int
    port: int
    field: str  # "sport" or "dport"


@dataclass
class Throttle:
    kind: str                         # shaping | policing | htb | blocking
    rate_bps: int = 0                 # token rate in bit/s of link-layer frame bytes (tc counts skb->len)
    burst_bytes: int = 0              # bucket depth
    limit_bytes: int = 0              # tbf queue limit (shaping/policing)
    limit_packets: int = 0            # pfifo limit (htb)
    matches: list[Match] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def _ns_name(role: str, suffix: str) -> str:
    return f"td{role}-{suffix}"


class Topology:
    """Creates and destroys the namespaces. Use as a context manager; cleanup runs in all cases."""

    def __init__(self, router: bool = True, suffix: str | None = None):
        self.router = router
        self.suffix = suffix or secrets.token_hex(4)
        self.client_ns = _ns_name("c", self.suffix)
        self.server_ns = _ns_name("s", self.suffix)
        self.router_ns = _ns_name("r", self.suffix) if router else None
        self.client_if = "eth0"
        self.server_if = "eth0"
        self.client_ip = CLIENT_IP
        self.server_ip = SERVER_IP
        self._created: list[str] = []
        self._throttled: list[tuple[str, str]] = []  # (ns, dev) with our htb root
        self.commands: list[str] = []  # every tc/ip command run, for the truth file

    # -- helpers ----------------------------------------------------------------------------
    def ns_cmd(self, ns: str, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", ns, *argv]

    def _ip(self, ns: str | None, *args: str) -> None:
        argv = ["ip", *(["-n", ns] if ns else []), *args]
        self.commands.append(" ".join(argv))
        run(argv)

    def _tc(self, ns: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        argv = self.ns_cmd(ns, ["tc", *args])
        self.commands.append(" ".join(["tc", *args]) + f"   # in {ns}")
        return run(argv, check=check)

    def _sysctl(self, ns: str, key: str, value: str) -> None:
        path = "/proc/sys/" + key.replace(".", "/")
        run(self.ns_cmd(ns, ["sh", "-c", f"echo {value} > {path}"]), check=False)

    # -- lifecycle --------------------------------------------------------------------------
    def create(self) -> "Topology":
        try:
            namespaces = [self.client_ns, self.server_ns] + ([self.router_ns] if self.router else [])
            for ns in namespaces:
                run(["ip", "netns", "add", ns])
                self._created.append(ns)
                # keep captures clean (no IPv6 autoconf chatter) and forwarding predictable
                for k, v in (("net.ipv6.conf.all.disable_ipv6", "1"), ("net.ipv6.conf.default.disable_ipv6", "1"),
                             ("net.ipv4.conf.all.rp_filter", "0"), ("net.ipv4.conf.default.rp_filter", "0")):
                    self._sysctl(ns, k, v)
                self._ip(ns, "link", "set", "lo", "up")
            if self.router:
                self._ip(None, "link", "add", "eth0", "netns", self.client_ns, "type", "veth",
                         "peer", "name", "lan0", "netns", self.router_ns)
                self._ip(None, "link", "add", "wan0", "netns", self.router_ns, "type", "veth",
                         "peer", "name", "eth0", "netns", self.server_ns)
                self._sysctl(self.router_ns, "net.ipv4.ip_forward", "1")
                links = [(self.client_ns, "eth0", f"{CLIENT_IP}/24"), (self.router_ns, "lan0", f"{ROUTER_LAN_IP}/24"),
                         (self.router_ns, "wan0", f"{ROUTER_WAN_IP}/24"), (self.server_ns, "eth0", f"{SERVER_IP}/24")]
            else:
                self._ip(None, "link", "add", "eth0", "netns", self.client_ns, "type", "veth",
                         "peer", "name", "eth0", "netns", self.server_ns)
                links = [(self.client_ns, "eth0", f"{CLIENT_IP}/24"), (self.server_ns, "eth0", f"{SERVER_IP}/24")]
            for ns, dev, addr in links:
                self._ip(ns, "addr", "add", addr, "dev", dev)
                disable_offloads(ns, dev)
                self._ip(ns, "link", "set", dev, "up")
            if self.router:
                self._ip(self.client_ns, "route", "add", "default", "via", ROUTER_LAN_IP)
                self._ip(self.server_ns, "route", "add", "default", "via", ROUTER_WAN_IP)
            else:
                self._ip(self.client_ns, "route", "add", f"{SERVER_IP}/32", "dev", "eth0")
                self._ip(self.server_ns, "route", "add", f"{CLIENT_IP}/32", "dev", "eth0")
        except BaseException:
            self.destroy()
            raise
        return self

    def destroy(self) -> None:
        for ns in reversed(self._created):
            # end whatever we started inside (their ids come from the namespace itself)
            p = run(["ip", "netns", "pids", ns], check=False)
            for pid in p.stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            for _ in range(20):
                if run(["ip", "netns", "del", ns], check=False).returncode == 0:
                    break
                time.sleep(0.1)
        self._created.clear()

    def __enter__(self) -> "Topology":
        return self.create()

    def __exit__(self, *exc) -> None:
        self.destroy()

    # -- throttling -------------------------------------------------------------------------
    def egress_points(self, direction: str) -> list[tuple[str, str, str]]:
        """(namespace, device, 'to-local'|'from-local') where a direction's throttling sits."""
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}")
        dirs = ["to-local", "from-local"] if direction == "both" else [direction]
        out = []
        for d in dirs:
            if self.router:
                out.append((self.router_ns, "lan0" if d == "to-local" else "wan0", d))
            else:
                out.append((self.server_ns, "eth0", d) if d == "to-local" else (self.client_ns, "eth0", d))
        return out

    def install(self, throttle: Throttle, direction: str) -> list[tuple[str, str, str]]:
        """Build the qdisc tree (no filters yet: nothing is throttled until activate())."""
        points = self.egress_points(direction)
        for ns, dev, _ in points:
            self._tc(ns, "qdisc", "add", "dev", dev, "root", "handle", "1:", "htb", "default", "0", "r2q", "1000")
            t = throttle
            if t.kind == "htb":
                burst = max(int(t.burst_bytes), 1600)
                self._tc(ns, "class", "add", "dev", dev, "parent", "1:", "classid", "1:10", "htb",
                         "rate", f"{int(t.rate_bps)}bit", "ceil", f"{int(t.rate_bps)}bit",
                         "burst", f"{burst}b", "cburst", f"{burst}b", "quantum", "1600")
                self._tc(ns, "qdisc", "add", "dev", dev, "parent", "1:10", "handle", "10:", "pfifo",
                         "limit", str(int(t.limit_packets)))
            else:
                self._tc(ns, "class", "add", "dev", dev, "parent", "1:", "classid", "1:10", "htb",
                         "rate", "10gbit", "ceil", "10gbit", "quantum", "200000")
                if t.kind in ("shaping", "policing"):
                    self._tc(ns, "qdisc", "add", "dev", dev, "parent", "1:10", "handle", "10:", "tbf",
                             "rate", f"{int(t.rate_bps)}bit", "burst", f"{int(t.burst_bytes)}b",
                             "limit", f"{int(t.limit_bytes)}b")
                elif t.kind == "blocking":
                    self._tc(ns, "qdisc", "add", "dev", dev, "parent", "1:10", "handle", "10:", "pfifo", "limit", "0")
                else:
                    raise ValueError(f"unknown throttle kind {t.kind!r}")
            self._throttled.append((ns, dev))
        return points

    def activate(self, throttle: Throttle, direction: str) -> None:
        """Add the u32 filters steering the matched packets into class 1:10."""
        for ns, dev, d in self.egress_points(direction):
            for i, m in enumerate(throttle.matches):
                # a match names the server-side port; to-local packets carry it as source port
                fld = m.field
                if d == "from-local":
                    fld = "dport" if m.field == "sport" else "sport"
                self._tc(ns, "filter", "add", "dev", dev, "parent", "1:", "protocol", "ip", "prio", str(10 + i),
                         "u32", "match", "ip", "protocol", str(m.proto), "0xff",
                         "match", "ip", fld, str(m.port), "0xffff", "flowid", "1:10")

    def qdisc_stats(self) -> list[dict]:
        """`tc -s` counters of every qdisc we installed (sent, dropped, overlimits, backlog)."""
        out = []
        for ns, dev in self._throttled:
            p = run(self.ns_cmd(ns, ["tc", "-s", "-j", "qdisc", "show", "dev", dev]), check=False)
            try:
                items = json.loads(p.stdout or "[]")
            except json.JSONDecodeError:
                items = []
            for q in items:
                out.append({"namespace_role": "router" if ns == self.router_ns else
                            ("server" if ns == self.server_ns else "client"), "dev": dev,
                            "kind": q.get("kind"), "handle": q.get("handle"), "parent": q.get("parent", "root"),
                            "sent_bytes": q.get("bytes"), "sent_packets": q.get("packets"),
                            "dropped": q.get("drops"), "overlimits": q.get("overlimits")})
        return out


# -- NIC offloads (ethtool ioctl; no ethtool binary needed) -----------------------------------------
_SIOCETHTOOL = 0x8946
_ETHTOOL_SET = {"tx-checksum": 0x17, "sg": 0x19, "tso": 0x1F, "gso": 0x24, "gro": 0x2C}

_OFFLOAD_SNIPPET = r"""
import ctypes, fcntl, socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for cmd in (%s):
    buf = ctypes.create_string_buffer(struct.pack('II', cmd, 0), 8)
    try:
        fcntl.ioctl(s.fileno(), %d, struct.pack('16sP', sys.argv[1].encode(), ctypes.addressof(buf)))
    except OSError:
        pass
""" % (", ".join(str(v) for v in _ETHTOOL_SET.values()), _SIOCETHTOOL)


def disable_offloads(ns: str, dev: str) -> None:
    """Turn off checksum offload, TSO/GSO/GRO on a veth so tcpdump sees wire-like packets
    (correct checksums, no 64 KB super-segments). Runs inside the namespace."""
    import sys
    run(["ip", "netns", "exec", ns, sys.executable, "-c", _OFFLOAD_SNIPPET, dev], check=False)


__all__ = ["Topology", "Throttle", "Match", "TestbedError", "availability", "run", "KINDS", "DIRECTIONS",
           "CLIENT_IP", "SERVER_IP", "disable_offloads"]
