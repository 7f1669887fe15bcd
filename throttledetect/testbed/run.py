"""Scenario runner: a synthetic call through known kernel throttling, captured with tcpdump.

    python -m throttledetect.testbed.run --scenario policed --seconds 15 --out captures/call_policed.pcap

builds the namespaces (netns.py), installs the scenario's qdisc tree on the throttling hop, starts
tcpdump on the client's eth0 (`tcpdump -i eth0 -w FILE -U`, default snaplen) and a second one on the
server's eth0 (the sender-side reference, kept only with --server-pcap), runs the call (traffic.py) in
both namespaces, adds the u32 filters at the onset, stops everything, and writes FILE.truth.json:
the configured throttling (kind, rate, burst, queue limit, direction, onset, the throttled 5-tuples,
every tc command), the qdisc counters, both endpoints' own statistics, and what was MEASURED by
matching each packet seen at the sender with the receiver's copy (exact loss, one-way delay, rate).

Requires root, iproute2 (ip, tc) and tcpdump. Everything it creates is removed on exit.
"""
from __future__ import annotations

import argparse
import json
import os
import select
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from throttledetect.testbed import netns
from throttledetect.testbed.netns import Match, Throttle, Topology
from throttledetect.testbed.traffic import (AUDIO_CLIENT_PORT, AUDIO_SERVER_PORT, CTL_SERVER_PORT, TCP_CLIENT_PORT,
                                            UDPCTL_CLIENT_PORT, VIDEO_CLIENT_PORT, VIDEO_SERVER_PORT, CallConfig,
                                            nominal_rates)

SCHEMA = "throttledetect-testbed-truth/1"
REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Scenario:
    name: str
    kind: str                       # none | shaping | policing | htb | blocking
    description: str
    direction: str = "to-local"
    rate_factor: float = 0.0        # rate = factor x nominal media rate of the throttled direction
    burst_bytes: int = 0
    limit_bytes: int = 0
    limit_packets: int = 0
    onset_s: float = 0.0            # seconds after the call starts
    media: bool = True              # throttle the media flows (always; controls are never throttled)


SCENARIOS = {
    "clean": Scenario("clean", "none", "A call with audio and video both ways, STUN at start, TCP and UDP control "
                      "flows; nothing throttled."),
    "policed": Scenario("policed", "policing",
                        "Server->client media (audio+video flows together) policed by a token bucket at ~0.6x its "
                        "rate: tbf with a queue of about one packet, so packets above the rate are dropped with "
                        "almost no queueing. Control flows untouched.",
                        rate_factor=0.6, burst_bytes=10000, limit_bytes=1300),
    "shaped": Scenario("shaped", "shaping",
                       "Server->client media shaped by a token bucket with a long queue at ~0.6x its rate: the "
                       "queue fills (one-way delay rises to a plateau of ~1 s), then tail drops. Control flows "
                       "untouched.",
                       rate_factor=0.6, burst_bytes=4000, limit_bytes=48000, onset_s=3.0),
    "htb": Scenario("htb", "htb", "Server->client media capped by an htb class (rate = ceil ~0.6x) with a "
                    "pfifo of 50 packets: shaping with a packet-counted queue. Control flows untouched.",
                    rate_factor=0.6, burst_bytes=1600, limit_packets=50),
    "blocked": Scenario("blocked", "blocking",
                        "The call's UDP flows are dropped in both directions from the onset (pfifo limit 0 on the "
                        "router): server media stops, STUN consent/reconnect requests go unanswered, the client "
                        "drops the call after 5 s of silence and keeps retrying STUN. Control flows untouched.",
                        direction="both", onset_s=5.0),
    "blocked_start": Scenario("blocked_start", "blocking",
                              "The call's UDP flows are dropped in both directions from the first packet: STUN "
                              "Binding requests are never answered, no media flows. Control flows untouched.",
                              direction="both", onset_s=0.0),
}

EXPECTED_VERDICT = {"none": "none", "shaping": "shaping", "htb": "shaping", "policing": "policing",
                    "blocking": "blocking"}


def truth_path(capture: str) -> str:
    """FILE.pcap -> FILE.truth.json (the sidecar written beside each capture)."""
    p = Path(capture)
    return str(p.with_suffix("")) + ".truth.json" if p.suffix in (".pcap", ".pcapng") else str(p) + ".truth.json"


def call_flows(cfg: CallConfig) -> list[dict]:
    c, s = cfg.client_ip, cfg.server_ip
    flows = []
    if cfg.audio:
        flows.append({"name": "audio", "transport": "udp", "client": f"{c}:{AUDIO_CLIENT_PORT}",
                      "server": f"{s}:{AUDIO_SERVER_PORT}", "content": "STUN + RTP PT 111 (Opus-like, 48 kHz) + "
                      "RTCP (rtcp-mux), both directions", "media": True})
    if cfg.video:
        flows.append({"name": "video", "transport": "udp", "client": f"{c}:{VIDEO_CLIENT_PORT}",
                      "server": f"{s}:{VIDEO_SERVER_PORT}", "content": f"STUN + RTP PT 96 (VP8-like, 90 kHz, 30 fps; "
                      f"{cfg.video_down_kbps:g} kbit/s down, {cfg.video_up_kbps:g} kbit/s up) + RTCP", "media": True})
    flows.append({"name": "tcp_control", "transport": "tcp", "client": f"{c}:{TCP_CLIENT_PORT}",
                  "server": f"{s}:{CTL_SERVER_PORT}", "content": f"TLS-record-like stream, ~{cfg.tcp_kbps:g} kbit/s "
                  "server->client", "media": False})
    flows.append({"name": "udp_control", "transport": "udp", "client": f"{c}:{UDPCTL_CLIENT_PORT}",
                  "server": f"{s}:{CTL_SERVER_PORT}", "content": f"non-RTP datagrams (QUIC-short-header-like), "
                  f"~{cfg.udpctl_kbps:g} kbit/s server->client, acks back", "media": False})
    return flows


# -- a minimal pcap reader for our own captures (Ethernet/IPv4), independent of the code under test ----------
@dataclass
class Pkt:
    ts: float
    wirelen: int
    src: str
    dst: str
    proto: int
    sport: int
    dport: int
    payload: bytes
    tcp_seq: int = 0
    tcp_ack: int = 0
    ip_id: int = 0


def read_pcap(path: str) -> list[Pkt]:
    data = Path(path).read_bytes()
    if len(data) < 24:
        return []
    magic = struct.unpack_from("<I", data)[0]
    if magic in (0xA1B2C3D4, 0xA1B23C4D):
        e = "<"
    else:
        e = ">"
        magic = struct.unpack_from(">I", data)[0]
    nano = magic == 0xA1B23C4D
    linktype = struct.unpack_from(e + "I", data, 20)[0]
    off, out = 24, []
    while off + 16 <= len(data):
        sec, frac, incl, orig = struct.unpack_from(e + "IIII", data, off)
        off += 16
        frame = data[off: off + incl]
        off += incl
        ts = sec + frac / (1e9 if nano else 1e6)
        if linktype == 1:
            if len(frame) < 14 or frame[12:14] != b"\x08\x00":
                continue
            ip = frame[14:]
        elif linktype == 113:
            if len(frame) < 16 or frame[14:16] != b"\x08\x00":
                continue
            ip = frame[16:]
        else:
            continue
        if len(ip) < 20 or ip[0] >> 4 != 4:
            continue
        ihl = (ip[0] & 15) * 4
        tot = struct.unpack_from("!H", ip, 2)[0]
        proto = ip[9]
        ip_id = struct.unpack_from("!H", ip, 4)[0]
        src, dst = ".".join(map(str, ip[12:16])), ".".join(map(str, ip[16:20]))
        l4 = ip[ihl:tot]
        if proto == 17 and len(l4) >= 8:
            sp, dp = struct.unpack_from("!HH", l4)
            out.append(Pkt(ts, orig, src, dst, 17, sp, dp, l4[8:], 0, 0, ip_id))
        elif proto == 6 and len(l4) >= 20:
            sp, dp, seq, ack = struct.unpack_from("!HHII", l4)
            doff = (l4[12] >> 4) * 4
            out.append(Pkt(ts, orig, src, dst, 6, sp, dp, l4[doff:], seq, ack, ip_id))
        else:
            out.append(Pkt(ts, orig, src, dst, proto, 0, 0, b""))
    return out


def _key(p: Pkt) -> tuple:
    # the router changes only TTL and the IP checksum, so these identify a packet on both sides
    return (p.proto, p.src, p.sport, p.dst, p.dport, p.ip_id, p.tcp_seq, p.tcp_ack, zlib.crc32(p.payload),
            len(p.payload))


def _q(v: list[float], q: float) -> float:
    v = sorted(v)
    return v[min(len(v) - 1, int(q * len(v)))] if v else float("nan")


def _r(x, n=3):
    return None if x is None or x != x else round(x, n)


def _rate(pkts: list[Pkt], span: float) -> int:
    """Link-layer bit/s over a window (the last packet closes the window, so it is not counted)."""
    return round(sum(p.wirelen for p in pkts[:-1]) * 8 / span) if span > 0 else 0


def _rtp_seq_loss(pkts: list[Pkt]) -> dict:
    """What a receiver sees: per SSRC, packets received vs. the span of sequence numbers."""
    per: dict[int, list[int]] = {}
    for p in pkts:
        d = p.payload
        if len(d) >= 12 and d[0] >> 6 == 2 and not 200 <= d[1] <= 206:
            seq, ssrc = struct.unpack_from("!H", d, 2)[0], struct.unpack_from("!I", d, 8)[0]
            per.setdefault(ssrc, []).append(seq)
    out = {}
    for ssrc, seqs in per.items():
        ext, cyc, last = [], 0, None
        for s in seqs:
            if last is not None and s < last and last - s > 0x8000:
                cyc += 0x10000
            ext.append(cyc + s)
            last = s
        uniq = len(set(ext))
        expected = max(ext) - min(ext) + 1
        srt = sorted(set(ext))
        gaps = [b - a - 1 for a, b in zip(srt, srt[1:]) if b - a > 1]
        out[f"{ssrc:08x}"] = {"received": uniq, "expected": expected, "lost": expected - uniq,
                              "loss": _r((expected - uniq) / expected, 4), "gap_events": len(gaps),
                              "max_gap": max(gaps) if gaps else 0}
    return out


def measure(client_pcap: str, server_pcap: str | None, truth: dict) -> dict:
    """Measured loss, delay and rate per flow and direction (sender capture matched with receiver's)."""
    cp = read_pcap(client_pcap)
    sp = read_pcap(server_pcap) if server_pcap and os.path.exists(server_pcap) else None
    onset = truth.get("onset_epoch") or truth["call_start_epoch"]
    end = truth["call_start_epoch"] + truth["seconds"]
    res = {"capture_packets": len(cp), "capture_bytes": os.path.getsize(client_pcap),
           "capture_first_ts": cp[0].ts if cp else None, "capture_duration_s": _r(cp[-1].ts - cp[0].ts) if cp else 0,
           "flows": {}}

    def ep(s):
        ip, port = s.rsplit(":", 1)
        return ip, int(port)

    for f in truth["flows"]:
        proto = 17 if f["transport"] == "udp" else 6
        (cip, cport), (sip, sport) = ep(f["client"]), ep(f["server"])
        fr = {}
        for d, (a, ap_, b, bp) in (("to-local", (sip, sport, cip, cport)), ("from-local", (cip, cport, sip, sport))):
            sel = lambda pk: [p for p in pk if p.proto == proto and p.src == a and p.sport == ap_ and p.dst == b
                              and p.dport == bp]
            at_client = sel(cp)
            at_server = sel(sp) if sp is not None else None
            sent, recv = (at_server, at_client) if d == "to-local" else (at_client, at_server)
            m = {"packets_in_capture": len(at_client), "bytes_in_capture": sum(p.wirelen for p in at_client)}
            if proto == 17 and f["media"]:
                m["rtp_seq"] = _rtp_seq_loss(at_client)
            if sent is not None and recv is not None and sent:
                rk = {}
                for p in recv:
                    rk.setdefault(_key(p), p.ts)
                delays, lost, after_n, after_lost, before_d, after_d = [], 0, 0, 0, [], []
                for p in sent:
                    t = rk.get(_key(p))
                    post = p.ts >= onset
                    if post:
                        after_n += 1
                    if t is None:
                        # the capture runs on until a shaper's queue has drained, so a missing packet was dropped
                        if p.ts < end:
                            lost += 1
                            after_lost += post
                        continue
                    dl = t - p.ts
                    delays.append(dl)
                    (after_d if post else before_d).append(dl)
                window = [p for p in recv if onset + 1.0 <= p.ts <= end - 0.5]
                span = (max(p.ts for p in window) - min(p.ts for p in window)) if len(window) > 1 else 0
                swin = [p for p in sent if onset + 1.0 <= p.ts <= end - 0.5]
                sspan = (max(p.ts for p in swin) - min(p.ts for p in swin)) if len(swin) > 1 else 0
                m.update({"sent": len(sent), "received": len(recv), "lost": lost,
                          "loss": _r(lost / len(sent), 4),
                          "loss_after_onset": _r(after_lost / after_n, 4) if after_n else None,
                          "delay_ms_p50": _r(_q(delays, 0.5) * 1000), "delay_ms_p90": _r(_q(delays, 0.9) * 1000),
                          "delay_ms_max": _r(max(delays) * 1000) if delays else None,
                          "delay_ms_before_onset_p50": _r(_q(before_d, 0.5) * 1000) if before_d else None,
                          "delay_ms_after_onset_p50": _r(_q(after_d, 0.5) * 1000) if after_d else None,
                          "delay_ms_after_onset_p90": _r(_q(after_d, 0.9) * 1000) if after_d else None,
                          "offered_bps_after_onset": _rate(swin, sspan),
                          "received_bps_after_onset": _rate(window, span)})
            fr[d] = m
        res["flows"][f["name"]] = fr
    # the throttled aggregate: all throttled flows together, in the throttled direction(s)
    agg = {}
    for d in ("to-local", "from-local"):
        names = [f["name"] for f in truth["flows"] if d in f.get("throttled_directions", [])]
        if not names:
            continue
        fl = [res["flows"][n][d] for n in names]
        seq = [v for x in fl for v in x.get("rtp_seq", {}).values()]
        exp_, got_ = sum(v["expected"] for v in seq), sum(v["received"] for v in seq)
        agg[d] = {"flows": names, "rtp_seq_expected": exp_, "rtp_seq_received": got_,
                  "rtp_seq_loss": _r((exp_ - got_) / exp_, 4) if exp_ else None}
        if all("sent" in x for x in fl):
            sent = sum(x["sent"] for x in fl)
            lost = sum(x["lost"] for x in fl)
            agg[d].update({"sent": sent, "lost": lost, "loss": _r(lost / sent, 4) if sent else None,
                      "offered_bps_after_onset": sum(x["offered_bps_after_onset"] for x in fl),
                      "received_bps_after_onset": sum(x["received_bps_after_onset"] for x in fl),
                      "delay_ms_after_onset_p90_max": max((x["delay_ms_after_onset_p90"] or 0) for x in fl)})
    res["throttled_aggregate"] = agg
    return res


# -- process helpers ------------------------------------------------------------------------------------------
def _wait_line(p: subprocess.Popen, stream, needle: str, timeout: float) -> str:
    buf, t_end = "", time.time() + timeout
    fd = stream.fileno()
    while time.time() < t_end:
        r, _, _ = select.select([fd], [], [], 0.1)
        if r:
            chunk = os.read(fd, 4096).decode(errors="replace")
            if not chunk:
                break
            buf += chunk
            if needle in buf:
                return buf
        if p.poll() is not None:
            break
    raise netns.TestbedError(f"did not see {needle!r} (got {buf.strip()!r}, exit {p.poll()})")


def _stop(p: subprocess.Popen, sig=signal.SIGINT, timeout=5.0) -> str:
    if p.poll() is None:
        p.send_signal(sig)
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    err = p.stderr.read().decode(errors="replace") if p.stderr else ""
    return err


def _end(procs: list[subprocess.Popen]) -> None:
    """Kill whatever of ours still runs (the normal path has stopped them already)."""
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


def _tcpdump_counts(text: str) -> dict:
    out = {}
    for line in text.splitlines():
        parts = line.strip().split(" ", 1)
        if len(parts) == 2 and parts[0].isdigit():
            out[parts[1].strip()] = int(parts[0])
    return out


def run_scenario(name: str, seconds: float, out: str, **kw) -> dict:
    """Run one scenario; write `out` and its truth file; return the truth. See main() for the options."""
    tmp = tempfile.mkdtemp(prefix="tdtestbed-")  # endpoint statistics and the sender-side capture
    try:
        return _run_scenario(tmp, name, seconds, out, **kw)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _run_scenario(tmp: str, name: str, seconds: float, out: str, *, onset: float | None = None, rate: int | None = None,
                 burst: int | None = None, limit: int | None = None, direction: str | None = None,
                 router: bool = True, seed: int = 1, video_down_kbps: float = 500.0, video_up_kbps: float = 100.0,
                 tcp_kbps: float = 32.0, udpctl_kbps: float = 48.0, server_pcap: str | None = None,
                 command: str | None = None) -> dict:
    sc = SCENARIOS[name]
    sc = replace(sc, onset_s=sc.onset_s if onset is None else onset, direction=direction or sc.direction)
    out = str(Path(out).resolve())
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    cfg = CallConfig(seconds=seconds, seed=seed, video_down_kbps=video_down_kbps, video_up_kbps=video_up_kbps,
                     tcp_kbps=tcp_kbps, udpctl_kbps=udpctl_kbps)
    nominal = nominal_rates(cfg)
    flows = call_flows(cfg)
    throttle = None
    if sc.kind != "none":
        base = nominal["media_up_bps"] if sc.direction == "from-local" else nominal["media_down_bps"]
        r = int(rate if rate is not None else round(sc.rate_factor * base, -3)) if sc.kind != "blocking" else 0
        lb = int(limit if (limit is not None and sc.kind in ("shaping", "policing")) else sc.limit_bytes)
        lp = int(limit if (limit is not None and sc.kind == "htb") else sc.limit_packets)
        matches = [Match(17, AUDIO_SERVER_PORT, "sport"), Match(17, VIDEO_SERVER_PORT, "sport")]
        throttle = Throttle(sc.kind, r, int(burst if burst is not None else sc.burst_bytes), lb, lp, matches)
        dirs = ["to-local", "from-local"] if sc.direction == "both" else [sc.direction]
        for f in flows:
            f["throttled_directions"] = dirs if f["media"] else []
    else:
        for f in flows:
            f["throttled_directions"] = []
    for f in flows:
        f["expected_verdict"] = EXPECTED_VERDICT[sc.kind] if f["throttled_directions"] else "none"

    drain = 0.3
    if throttle is not None and throttle.rate_bps > 0:
        qbytes = throttle.limit_bytes if sc.kind in ("shaping", "policing") else throttle.limit_packets * 1250
        drain += qbytes * 8 / throttle.rate_bps
    cfg.linger = drain + 1.0
    spcap = server_pcap or os.path.join(tmp, "server.pcap")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    procs: list[subprocess.Popen] = []
    truth: dict = {"schema": SCHEMA, "scenario": name, "description": sc.description,
                   "capture": os.path.basename(out), "command": command, "seconds": seconds, "seed": seed}
    topo = Topology(router=router)
    try:
        topo.create()
        points = topo.install(throttle, sc.direction) if throttle else []
        # --immediate-mode: without it libpcap hands packets over in blocks retired after up to 1 s, and the
        # last block (e.g. a shaper's queue draining after the call) is lost when tcpdump is interrupted
        td = ["tcpdump", "-U", "--immediate-mode", "-n", "-Z", "root", "-i"]
        cmd_c = topo.ns_cmd(topo.client_ns, [*td, topo.client_if, "-w", out])
        cmd_s = topo.ns_cmd(topo.server_ns, [*td, topo.server_if, "-w", spcap])
        td_c = subprocess.Popen(cmd_c, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        procs.append(td_c)
        td_s = subprocess.Popen(cmd_s, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        procs.append(td_s)
        _wait_line(td_c, td_c.stderr, "listening on", 10)
        _wait_line(td_s, td_s.stderr, "listening on", 10)
        start = time.time() + 0.5
        cfg.start_epoch = start
        stats = {r_: os.path.join(tmp, f"{r_}.json") for r_ in ("client", "server")}

        def launch(role, ns):
            c = replace(cfg, role=role, stats_path=stats[role])
            argv = topo.ns_cmd(ns, [sys.executable, "-m", "throttledetect.testbed.traffic", role,
                                    "--config", json.dumps(asdict(c))])
            p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=str(REPO_ROOT))
            procs.append(p)
            _wait_line(p, p.stdout, "READY", 15)
            return p

        server = launch("server", topo.server_ns)
        client = launch("client", topo.client_ns)
        if time.time() > start - 0.05:
            raise netns.TestbedError("endpoints took too long to start")
        onset_epoch = None
        if throttle is not None:
            t_on = start + max(0.0, sc.onset_s)
            if sc.onset_s <= 0:
                topo.activate(throttle, sc.direction)
                onset_epoch = start
            else:
                while time.time() < t_on:
                    time.sleep(min(0.05, max(0.0, t_on - time.time())))
                t0 = time.time()
                topo.activate(throttle, sc.direction)
                onset_epoch = (t0 + time.time()) / 2  # filters go in between these two instants
        for p in (client, server):
            _wait_line(p, p.stdout, "STOPPED", max(5.0, start + seconds - time.time() + 15))
        time.sleep(drain)  # let a shaper's queue empty into the capture; the endpoints keep their ports open
        err_c, err_s = _stop(td_c), _stop(td_s)
        for p in (client, server):
            try:
                p.wait(timeout=cfg.linger + 10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        endpoint = {}
        for role, path in stats.items():
            try:
                endpoint[role] = json.loads(Path(path).read_text())
            except (OSError, json.JSONDecodeError):
                proc = client if role == "client" else server
                endpoint[role] = {"error": "no statistics written",
                                  "stderr": proc.stderr.read().decode(errors="replace")[-2000:]}
        qstats = topo.qdisc_stats()
        truth.update({
            "capture_point": "client namespace, eth0 (the client's side of the path; what a capture on the "
                             "calling device sees)",
            "topology": {"router": router, "client_ip": topo.client_ip, "server_ip": topo.server_ip,
                         "throttling_hop": [{"namespace": ("router" if router else ("server" if d == "to-local" else
                                                                                    "client")), "dev": dev,
                                             "direction": d} for _, dev, d in points]},
            "capture_position": {d: ("after" if (d == "to-local" or not router) else "before") + " the throttling hop"
                                 for _, _, d in points},
            "kind": {"htb": "shaping"}.get(sc.kind, sc.kind),
            "qdisc": {"none": None, "shaping": "tbf", "policing": "tbf (tiny queue)", "htb": "htb class + pfifo",
                      "blocking": "pfifo limit 0"}[sc.kind],
            "direction": sc.direction if throttle else None,
            "rate_bps": throttle.rate_bps if throttle and sc.kind != "blocking" else None,
            "rate_counts": "link-layer frame bytes (Ethernet header included, as the capture's frame lengths)",
            "burst_bytes": throttle.burst_bytes if throttle and sc.kind != "blocking" else None,
            "queue_limit_bytes": throttle.limit_bytes if throttle and sc.kind in ("shaping", "policing") else None,
            "queue_limit_packets": throttle.limit_packets if throttle and sc.kind in ("htb", "blocking") else None,
            "max_queue_delay_ms": (round(throttle.limit_bytes * 8 / throttle.rate_bps * 1000, 1)
                                   if throttle and sc.kind in ("shaping", "policing") else None),
            "aggregate": "one bucket shared by all throttled flows of a direction" if throttle else None,
            "call_start_epoch": start,
            "onset_epoch": onset_epoch,
            "flows": flows,
            "nominal_rates_bps": nominal,
            "tc_commands": topo.commands,
            "qdisc_stats": qstats,
            "tcpdump": {"client": _tcpdump_counts(err_c), "server": _tcpdump_counts(err_s)},
            "endpoint_stats": endpoint,
        })
    finally:
        _end(procs)
        topo.destroy()
    measured = measure(out, spcap, truth)
    first = measured.get("capture_first_ts")
    # relative to the capture's first packet; 0 when the throttling was in place before the call began
    truth["onset_s"] = max(0.0, round(truth["onset_epoch"] - first, 4)) if truth["onset_epoch"] and first else None
    truth["call_start_s"] = round(truth["call_start_epoch"] - first, 4) if first else None
    truth["measured"] = measured
    truth["expected_verdict"] = EXPECTED_VERDICT[sc.kind]
    Path(truth_path(out)).write_text(json.dumps(truth, indent=1) + "\n")
    return truth


def summary_lines(t: dict) -> list[str]:
    m = t["measured"]
    lines = [f"{t['capture']}: {m['capture_packets']} packets, {m['capture_bytes']} bytes, "
             f"{m['capture_duration_s']} s; kind={t['kind']} rate={t['rate_bps']} burst={t['burst_bytes']} "
             f"direction={t['direction']} onset_s={t['onset_s']}"]
    for name, fr in m["flows"].items():
        for d, x in fr.items():
            if "sent" in x:
                lines.append(f"  {name:12s} {d:10s} sent={x['sent']:5d} lost={x['lost']:5d} loss={x['loss']} "
                             f"after_onset={x['loss_after_onset']} delay p50/p90/max ms={x['delay_ms_p50']}/"
                             f"{x['delay_ms_p90']}/{x['delay_ms_max']} offered={x['offered_bps_after_onset']} "
                             f"received={x['received_bps_after_onset']}")
    for d, a in m["throttled_aggregate"].items():
        lines.append(f"  THROTTLED {d}: loss={a.get('loss')} (RTP seq gaps in capture: {a['rtp_seq_loss']}) "
                     f"offered={a.get('offered_bps_after_onset')} received={a.get('received_bps_after_onset')} "
                     f"(configured {t['rate_bps']}) delay p90 after onset={a.get('delay_ms_after_onset_p90_max')} ms")
    for side, td in t.get("tcpdump", {}).items():
        if td.get("packets dropped by kernel") or td.get("packets captured") != td.get("packets received by filter"):
            lines.append(f"  WARNING: {side} tcpdump did not write every packet: {td}")
    return lines


MANIFEST_NOTES = [
    "Made by throttledetect's own kernel testbed (throttledetect/testbed): a synthetic call between network "
    "namespaces, client 192.168.88.2 -- router -- server 203.0.113.10 (TEST-NET-3, exists only inside the "
    "namespaces). Captured with tcpdump on the client's eth0; ts are wall-clock, microseconds.",
    "Throttling is a real kernel qdisc on the router's egress (lan0 = towards the client, wan0 = towards the "
    "server), selected by u32 filters on the call's UDP ports, so the TCP and UDP control flows on the same path "
    "are untouched: policing = tbf whose queue holds about one packet (the closest kernel approximation of a "
    "policer: it still delays a packet by up to max_queue_delay_ms while tokens accrue), shaping = tbf with a "
    "long queue, blocking = pfifo limit 0 (every matched packet dropped in the network; neither nft nor iptables "
    "was needed). Rates count link-layer frame bytes, like the capture's frame lengths.",
    "measured: every packet seen at the sender (a second capture on the server's eth0, not kept) was matched with "
    "its copy at the receiver: loss, one-way delay, offered and received rate after the onset. rtp_seq_loss is "
    "what the capture alone shows (RTP sequence gaps). onset_s and call_start_s are seconds after the capture's "
    "first packet.",
    "The senders do not adapt to loss (fixed rates), so the truth stays known; real apps would react.",
]


def update_manifest(manifest: str, truth: dict, out: str) -> None:
    """Add or replace this capture's entry in a MANIFEST.json (e.g. captures/MANIFEST.json)."""
    p = Path(manifest)
    doc = json.loads(p.read_text()) if p.exists() else {"schema": "throttledetect-captures/1", "captures": []}
    doc["notes"] = MANIFEST_NOTES
    m = truth["measured"]
    agg = m["throttled_aggregate"]
    flows = []
    for f in truth["flows"]:
        fm = m["flows"][f["name"]]
        flows.append({"name": f["name"], "transport": f["transport"], "client": f["client"], "server": f["server"],
                      "content": f["content"], "throttled_directions": f["throttled_directions"],
                      "expected_verdict": f["expected_verdict"],
                      "measured": {d: {k: x.get(k) for k in ("packets_in_capture", "sent", "lost", "loss",
                                                             "loss_after_onset", "delay_ms_p50", "delay_ms_p90", "delay_ms_before_onset_p50",
                                                             "delay_ms_after_onset_p90",
                                                             "delay_ms_max", "received_bps_after_onset")}
                                   for d, x in fm.items()}})
    entry = {
        "file": os.path.basename(out),
        "description": truth["description"],
        "command": truth["command"],
        "bytes": m["capture_bytes"], "packets": m["capture_packets"], "duration_s": m["capture_duration_s"],
        "truth": {"kind": truth["kind"], "qdisc": truth["qdisc"], "direction": truth["direction"],
                  "rate_bps": truth["rate_bps"], "burst_bytes": truth["burst_bytes"],
                  "queue_limit_bytes": truth["queue_limit_bytes"], "queue_limit_packets": truth["queue_limit_packets"],
                  "max_queue_delay_ms": truth["max_queue_delay_ms"], "onset_s": truth["onset_s"],
                  "call_start_s": truth["call_start_s"],
                  "throttled_flows": [f"udp {f['client']} <-> {f['server']}" for f in truth["flows"]
                                      if f["throttled_directions"]]},
        "measured": {"throttled_aggregate": agg,
                     "qdisc_dropped": sum((q.get("dropped") or 0) for q in truth["qdisc_stats"]
                                          if q.get("parent") != "root"),
                     "tcpdump_dropped_by_kernel": truth["tcpdump"]["client"].get("packets dropped by kernel")},
        "flows": flows,
        "tc_commands": [c for c in truth["tc_commands"] if c.startswith("tc ")],
        "qdisc_stats": truth["qdisc_stats"],
        "capture_position": truth["capture_position"],
        "sender_pacing_lateness_ms": {r: {k: v["p99_ms"] for k, v in truth["endpoint_stats"].get(r, {})
                                          .get("pacing_lateness", {}).items()} for r in ("client", "server")},
        "endpoint_events": {r: truth["endpoint_stats"].get(r, {}).get("events") for r in ("client", "server")},
        "expected_verdict": {"call": truth["expected_verdict"], "per_flow": {f["name"]: f["expected_verdict"]
                                                                             for f in truth["flows"]}},
    }
    doc["captures"] = [c for c in doc["captures"] if c.get("file") != entry["file"]] + [entry]
    doc["captures"].sort(key=lambda c: c["file"])
    p.write_text(json.dumps(doc, indent=1) + "\n")


def _raise_interrupt(*_):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(prog="python -m throttledetect.testbed.run", description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenario", required=True, choices=sorted(SCENARIOS))
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--out", required=True, help="capture file to write (FILE.truth.json is written beside it)")
    ap.add_argument("--onset", type=float, help="seconds after call start at which throttling begins")
    ap.add_argument("--rate", type=int, help="token rate in bit/s (default: scenario factor x nominal media rate)")
    ap.add_argument("--burst", type=int, help="bucket depth in bytes")
    ap.add_argument("--limit", type=int, help="queue limit (bytes for tbf, packets for htb)")
    ap.add_argument("--direction", choices=netns.DIRECTIONS)
    ap.add_argument("--no-router", action="store_true", help="two namespaces only; throttle on the sender's veth")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--video-down-kbps", type=float, default=500.0)
    ap.add_argument("--video-up-kbps", type=float, default=100.0)
    ap.add_argument("--tcp-kbps", type=float, default=32.0)
    ap.add_argument("--udpctl-kbps", type=float, default=48.0)
    ap.add_argument("--server-pcap", help="also keep the sender-side (server eth0) capture here")
    ap.add_argument("--manifest", help="add/replace this capture's entry in the given MANIFEST.json")
    ap.add_argument("--list", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so the finally blocks remove the namespaces
    signal.signal(signal.SIGTERM, _raise_interrupt)
    ok, why = netns.availability()
    if not ok:
        print(f"testbed unavailable: {why}", file=sys.stderr)
        return 2
    command = "python -m throttledetect.testbed.run " + " ".join(shlex.quote(x) for x in argv)
    t = run_scenario(a.scenario, a.seconds, a.out, onset=a.onset, rate=a.rate, burst=a.burst, limit=a.limit,
                     direction=a.direction, router=not a.no_router, seed=a.seed, video_down_kbps=a.video_down_kbps,
                     video_up_kbps=a.video_up_kbps, tcp_kbps=a.tcp_kbps, udpctl_kbps=a.udpctl_kbps,
                     server_pcap=a.server_pcap, command=command)
    if a.manifest:
        update_manifest(a.manifest, t, a.out)
    print("\n".join(summary_lines(t)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
