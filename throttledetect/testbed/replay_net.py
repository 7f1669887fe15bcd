"""The replay's namespaces: a client and a server joined through a router that carries the
capture's own addresses, and the throttles (qdiscs, u32 filters on 5-tuples, netfilter drops).

    client ns                 router ns                    server ns
    eth0 (02:74:64:00:00:c1) -- lan0 | wan0 -- eth0 (02:74:64:00:00:5e)

No endpoint namespace has an IP address. Each side sends the recorded IP packets in Ethernet
frames through a packet socket (replay_send.py), addressed to the router's MAC; the router
forwards by the original destination address: a /32 (/128) route per local address of the
capture towards lan0, everything else towards wan0, over permanent neighbour entries (no ARP or
NDP on the links). Why no addresses on the endpoints: a kernel that owns no address and does
not forward drops what arrives for others silently, so no TCP RST or ICMP port unreachable that
the original capture did not hold can appear, TCP segments go as recorded without netfilter, and
a capture with thousands of remote addresses needs no thousands of `ip addr add`.

Throttling sits on the router's egress: lan0 for to-local traffic (what arrives at the capturing
host), wan0 for from-local. The qdisc tree is netns.Topology.install()'s; only packets of the
throttled 5-tuples are steered into it, by u32 filters added at the onset (`tc -batch`).
Random drops use netfilter (`iptables -m statistic --mode random`) in the router's FORWARD chain
when iptables is installed and works in a namespace (netfilter_availability()).
"""
from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import tempfile

from throttledetect.testbed import netns
from throttledetect.testbed.netns import TestbedError, Topology, disable_offloads, run
from throttledetect.testbed.replay_plan import CLIENT_MAC, ROUTER_LAN_MAC, ROUTER_WAN_MAC, SERVER_MAC

# Next hops that exist only as permanent neighbour entries: they need no address anywhere, so no
# address of a capture can collide with them (a capture's 169.254.0.1 is not replayed anyway).
LAN_NEXTHOP4, WAN_NEXTHOP4 = "169.254.0.1", "169.254.0.2"
LAN_NEXTHOP6, WAN_NEXTHOP6 = "fe80::c1", "fe80::5e"
NAME_RE = re.compile(r"^td[csr]-rp(\d+)x[0-9a-f]+$")
TMP_RE = re.compile(r"^tdreplay-(?:net-)?(\d+)-")     # replay.py's and ReplayTopology's temporary folders
PROTO_NAMES = {6: "tcp", 17: "udp", 132: "sctp"}


def sweep_stale() -> list[str]:
    """Delete replay namespaces and temporary folders whose creating process is gone (killed before
    it could clean up). Their senders and tcpdump die with that process (PR_SET_PDEATHSIG); a
    leftover is ended first."""
    gone = []
    try:
        names = os.listdir("/run/netns")
    except OSError:
        return gone
    for name in names:
        m = NAME_RE.match(name)
        if not m or os.path.exists(f"/proc/{m.group(1)}"):
            continue
        for pid in run(["ip", "netns", "pids", name], check=False).stdout.split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        if run(["ip", "netns", "del", name], check=False).returncode == 0:
            gone.append(name)
    tmp = tempfile.gettempdir()
    for name in os.listdir(tmp):
        m = TMP_RE.match(name)
        if m and not os.path.exists(f"/proc/{m.group(1)}"):
            shutil.rmtree(os.path.join(tmp, name), ignore_errors=True)
            gone.append(name)
    return gone


_NETFILTER: tuple[bool, str] | None = None


def netfilter_availability() -> tuple[bool, str]:
    """(usable, reason): can iptables add a `statistic` DROP rule inside a namespace here?"""
    global _NETFILTER
    if _NETFILTER is not None:
        return _NETFILTER
    if shutil.which("iptables") is None:
        _NETFILTER = (False, "iptables is not installed (apt-get install iptables)")
        return _NETFILTER
    name = f"tdr-rp{os.getpid()}x{secrets.token_hex(3)}"
    try:
        if run(["ip", "netns", "add", name], check=False).returncode != 0:
            _NETFILTER = (False, "cannot create a network namespace")
            return _NETFILTER
        p = run(["ip", "netns", "exec", name, "iptables", "-A", "FORWARD", "-m", "statistic", "--mode", "random",
                 "--probability", "0.5", "-j", "DROP"], check=False)
        _NETFILTER = (True, "") if p.returncode == 0 else \
            (False, f"iptables does not work in a namespace here: {p.stderr.strip()[:200]}")
    finally:
        run(["ip", "netns", "del", name], check=False)
    return _NETFILTER


class ReplayTopology(Topology):
    """client -- router -- server for a replay; `ipv6` enables IPv6 forwarding on the router."""

    def __init__(self, local_addrs, mtu: int = 1500, ipv6: bool = False):
        super().__init__(router=True, suffix=f"rp{os.getpid()}x{secrets.token_hex(4)}")
        self.local_addrs = list(local_addrs)
        self.mtu = max(1500, int(mtu))
        self.ipv6 = ipv6
        self.netfilter_rules: list[str] = []
        self._tmp = tempfile.mkdtemp(prefix=f"tdreplay-net-{os.getpid()}-")

    def _sysctls(self, ns: str, values: dict) -> None:
        argv = self.ns_cmd(ns, ["sysctl", "-q", "-w", *[f"{k}={v}" for k, v in values.items()]])
        self.commands.append(" ".join(argv[4:]) + f"   # in {ns}")
        run(argv, check=False)

    def _batch(self, ns: str, tool: str, lines: list[str]) -> None:
        """Many `ip` or `tc` commands in one process (`-batch`): one fork instead of one per line."""
        path = os.path.join(self._tmp, f"{tool}-{len(self.commands)}.batch")
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")
        self.commands.extend(f"{tool} {line}   # in {ns}" for line in lines)
        run(self.ns_cmd(ns, [tool, "-batch", path]), timeout=60)

    def create(self) -> "ReplayTopology":
        try:
            for ns in (self.client_ns, self.router_ns, self.server_ns):
                run(["ip", "netns", "add", ns])
                self._created.append(ns)
                self._ip(ns, "link", "set", "lo", "up")
            # the endpoints never take part in IPv6 (an IPv6 packet is dropped on arrival, silently);
            # the router forwards it when the capture has any, with no address of its own
            off6 = {"net.ipv6.conf.all.disable_ipv6": 1, "net.ipv6.conf.default.disable_ipv6": 1}
            for ns in (self.client_ns, self.server_ns):
                self._sysctls(ns, off6)
            # icmp_msgs_burst 0: the router sends no ICMP error of its own (a recorded TTL-1 probe would
            # otherwise bring a "time exceeded" into the capture that the original did not hold)
            router = {"net.ipv4.ip_forward": 1, "net.ipv4.conf.all.rp_filter": 0,
                      "net.ipv4.conf.default.rp_filter": 0, "net.ipv4.icmp_msgs_per_sec": 0,
                      "net.ipv4.icmp_msgs_burst": 0}
            router.update({"net.ipv6.conf.default.addr_gen_mode": 1, "net.ipv6.conf.all.accept_ra": 0,
                           "net.ipv6.conf.default.accept_ra": 0, "net.ipv6.conf.all.forwarding": 1}
                          if self.ipv6 else off6)
            self._sysctls(self.router_ns, router)
            self._ip(None, "link", "add", "eth0", "netns", self.client_ns, "address", CLIENT_MAC, "mtu",
                     str(self.mtu), "type", "veth", "peer", "name", "lan0", "netns", self.router_ns,
                     "address", ROUTER_LAN_MAC, "mtu", str(self.mtu))
            self._ip(None, "link", "add", "wan0", "netns", self.router_ns, "address", ROUTER_WAN_MAC, "mtu",
                     str(self.mtu), "type", "veth", "peer", "name", "eth0", "netns", self.server_ns,
                     "address", SERVER_MAC, "mtu", str(self.mtu))
            for ns, dev in ((self.client_ns, "eth0"), (self.router_ns, "lan0"), (self.router_ns, "wan0"),
                            (self.server_ns, "eth0")):
                disable_offloads(ns, dev)
                self._ip(ns, "link", "set", dev, "up")
            lines = [f"neigh replace {LAN_NEXTHOP4} lladdr {CLIENT_MAC} dev lan0 nud permanent",
                     f"neigh replace {WAN_NEXTHOP4} lladdr {SERVER_MAC} dev wan0 nud permanent",
                     f"route add default via {WAN_NEXTHOP4} dev wan0 onlink"]
            if self.ipv6:
                # (`-batch` lines take no -6: the family follows from the addresses)
                lines += [f"neigh replace {LAN_NEXTHOP6} lladdr {CLIENT_MAC} dev lan0 nud permanent",
                          f"neigh replace {WAN_NEXTHOP6} lladdr {SERVER_MAC} dev wan0 nud permanent",
                          f"route add ::/0 via {WAN_NEXTHOP6} dev wan0"]
            for a in self.local_addrs:
                if a.version == 4:
                    lines.append(f"route add {a}/32 via {LAN_NEXTHOP4} dev lan0 onlink")
                elif self.ipv6:
                    lines.append(f"route add {a}/128 via {LAN_NEXTHOP6} dev lan0")
            self._batch(self.router_ns, "ip", lines)
        except BaseException:
            self.destroy()
            raise
        return self

    def destroy(self) -> None:
        super().destroy()
        shutil.rmtree(self._tmp, ignore_errors=True)

    # -- steering the throttled flows ---------------------------------------------------------------
    @staticmethod
    def _endpoints(t: dict, direction: str) -> tuple[str, int, str, int]:
        """(src ip, src port, dst ip, dst port) of a flow tuple's packets in one direction."""
        if direction == "to-local":
            return t["remote_ip"], t["remote_port"], t["local_ip"], t["local_port"]
        return t["local_ip"], t["local_port"], t["remote_ip"], t["remote_port"]

    def steer(self, tuples: list[dict] | None, direction: str) -> None:
        """u32 filters sending the flows' packets (None: every packet) into class 1:10, the throttle."""
        for ns, dev, d in self.egress_points(direction):
            lines = []
            if tuples is None:
                lines.append(f"filter add dev {dev} parent 1: protocol all prio 10 u32 match u32 0 0 flowid 1:10")
            for t in tuples or []:
                src, sport, dst, dport = self._endpoints(t, d)
                fam, plen, prio = ("ip6", 128, 11) if t["ipv6"] else ("ip", 32, 10)
                m = (f"match {fam} src {src}/{plen} match {fam} dst {dst}/{plen} "
                     f"match {fam} protocol {t['proto']} 0xff")
                if t["proto"] in PROTO_NAMES and (sport or dport):
                    m += f" match {fam} sport {sport} 0xffff match {fam} dport {dport} 0xffff"
                lines.append(f"filter add dev {dev} parent 1: protocol {'ipv6' if t['ipv6'] else 'ip'} "
                             f"prio {prio} u32 {m} flowid 1:10")
            self._batch(ns, "tc", lines)

    def drop_randomly(self, tuples: list[dict] | None, direction: str, probability: float) -> None:
        """netfilter DROP rules with `-m statistic --mode random` in the router's FORWARD chain."""
        stat = f"-m statistic --mode random --probability {probability:.6f} -j DROP"
        for fam, tool in ((4, "iptables-restore"), (6, "ip6tables-restore")):
            rules = []
            for _, dev, d in self.egress_points(direction):
                if tuples is None:
                    rules.append(f"-A FORWARD -o {dev} {stat}")
                for t in tuples or []:
                    if (6 if t["ipv6"] else 4) != fam:
                        continue
                    src, sport, dst, dport = self._endpoints(t, d)
                    plen = 128 if t["ipv6"] else 32
                    r = f"-A FORWARD -o {dev} -s {src}/{plen} -d {dst}/{plen} -p {t['proto']}"
                    if t["proto"] in PROTO_NAMES and (sport or dport):
                        r += f" -m {PROTO_NAMES[t['proto']]} --sport {sport} --dport {dport}"
                    rules.append(f"{r} {stat}")
            if not rules:
                continue
            path = os.path.join(self._tmp, f"{tool}.rules")
            with open(path, "w") as f:
                f.write("*filter\n" + "\n".join(rules) + "\nCOMMIT\n")
            self.netfilter_rules.extend(f"{tool.replace('-restore', '')} {r}" for r in rules)
            self.commands.extend(f"{tool.replace('-restore', '')} {r}   # in {self.router_ns}" for r in rules)
            run(self.ns_cmd(self.router_ns, [tool, "--noflush", path]), timeout=60)

    def netfilter_counters(self) -> dict:
        """Packets and bytes matched by our DROP rules, per family."""
        out = {}
        for fam, tool in ((4, "iptables-save"), (6, "ip6tables-save")):
            if shutil.which(tool) is None:
                continue
            p = run(self.ns_cmd(self.router_ns, [tool, "-c", "-t", "filter"]), check=False)
            pk = by = 0
            for line in p.stdout.splitlines():
                m = re.match(r"^\[(\d+):(\d+)\] -A FORWARD .*-j DROP", line)
                if m:
                    pk += int(m.group(1))
                    by += int(m.group(2))
            if pk or any(r for r in self.netfilter_rules):
                out[f"ipv{fam}"] = {"dropped_packets": pk, "dropped_bytes": by}
        return out


def tool_availability() -> tuple[bool, str]:
    """(usable, reason) for a replay: root, ip, tc, tcpdump, namespaces (netns.availability), sysctl."""
    ok, why = netns.availability()
    if not ok:
        return ok, why
    if shutil.which("sysctl") is None:
        return False, "replay needs `sysctl` on PATH (procps)"
    return True, ""


__all__ = ["ReplayTopology", "netfilter_availability", "tool_availability", "sweep_stale", "TestbedError",
           "PROTO_NAMES"]
