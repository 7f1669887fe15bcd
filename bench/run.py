"""make bench: time read + flows for throttledetect, scapy and dpkt on one cached mixed capture.

    python -m bench.run [--packets N] [--repeat K] [--seed S] [--tools td,scapy,dpkt,scapy-full,tshark]

Every tool runs in its own subprocess (pinned to one CPU), so its peak RSS (ru_maxrss from
wait4) is its own. Each does the same job: read every record, decode Ethernet / 802.1Q /
IPv4 / IPv6 / TCP / UDP to the 5-tuple, and assign packets to bidirectional flows, counting
packets and link-layer bytes per direction. Results are checked against the capture's
manifest (flows, packets, bytes); goals are computed and printed, never asserted.
Figures are written to .cache/bench/last.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LAST_JSON = REPO / ".cache" / "bench" / "last.json"   # (bench.synth is imported lazily: workers stay lean)
GOAL_PPS = 3_000_000
GOAL_VS_SCAPY = 10.0
WARM_PACKETS = 2000          # tiny capture for the JIT warm-up call
ALL_TOOLS = ("td", "scapy", "dpkt", "scapy-full", "tshark")


# =============================================================================== workers
# Each worker runs in a fresh interpreter, times only its own loop (imports excluded and
# reported separately) and prints one JSON object on stdout.

def _w_throttledetect(args) -> dict:
    t = time.perf_counter()
    import throttledetect.jit as jit
    from throttledetect.flows import build_flows
    from throttledetect.read import read_capture
    res = {"import_s": time.perf_counter() - t, "jit_enabled": bool(jit.JIT_ENABLED)}

    t = time.perf_counter()
    build_flows(read_capture(args.warm))       # compiles, or loads the numba cache
    res["jit_first_call_s"] = time.perf_counter() - t
    if args.jit_only:
        return res

    t0 = time.perf_counter()
    cap = read_capture(args.file)
    t1 = time.perf_counter()
    ft = build_flows(cap)
    t2 = time.perf_counter()
    res.update(read_s=t1 - t0, flows_s=t2 - t1, seconds=t2 - t0, records=len(cap.packets), flows=len(ft),
               flow_packets=int(ft.packets_ab.sum() + ft.packets_ba.sum()),
               flow_bytes=int(ft.bytes_ab.sum() + ft.bytes_ba.sum()))
    # per-flow counters against the manifest (after timing): same multiset of flows?
    import numpy as np
    m = json.loads(Path(args.file).with_suffix(".json").read_text())["flows"]
    mine = np.stack([ft.first_ns, ft.last_ns, ft.packets_ab, ft.packets_ba, ft.bytes_ab, ft.bytes_ba]).astype(np.int64)
    want = np.array([m[k] for k in ("first_ns", "last_ns", "packets_ab", "packets_ba", "bytes_ab", "bytes_ba")],
                    dtype=np.int64)
    if mine.shape == want.shape:
        mine = mine[:, np.lexsort(mine[::-1])]
        want = want[:, np.lexsort(want[::-1])]
        res["per_flow_match"] = bool((mine == want).all())
    else:
        res["per_flow_match"] = False
    return res


def _w_scapy(args) -> dict:
    """scapy RawPcapReader with hand-written struct decoding: the fastest fair scapy loop."""
    t = time.perf_counter()
    from scapy.utils import RawPcapReader
    res = {"import_s": time.perf_counter() - t}
    unpack_from = struct.unpack_from
    flows: dict = {}
    get = flows.get
    records = nonip = 0
    t0 = time.perf_counter()
    reader = RawPcapReader(args.file)
    for buf, meta in reader:
        records += 1
        et = (buf[12] << 8) | buf[13]
        off = 14
        while et == 0x8100 or et == 0x88A8:
            et = (buf[off + 2] << 8) | buf[off + 3]
            off += 4
        if et == 0x0800:
            proto = buf[off + 9]
            src = buf[off + 12:off + 16]
            dst = buf[off + 16:off + 20]
            if (proto == 6 or proto == 17) and not ((buf[off + 6] & 0x1F) or buf[off + 7]):
                sport, dport = unpack_from("!HH", buf, off + ((buf[off] & 15) << 2))
            else:
                sport = dport = 0
        elif et == 0x86DD:
            proto = buf[off + 6]
            src = buf[off + 8:off + 24]
            dst = buf[off + 24:off + 40]
            if proto == 6 or proto == 17:
                sport, dport = unpack_from("!HH", buf, off + 40)
            else:
                sport = dport = 0
        else:
            nonip += 1
            continue
        wl = meta.wirelen
        key = (proto, src, sport, dst, dport)
        f = get(key)
        if f is None:
            f = get((proto, dst, dport, src, sport))
            if f is None:
                flows[key] = [1, 0, wl, 0]
            else:
                f[1] += 1
                f[3] += wl
        else:
            f[0] += 1
            f[2] += wl
    reader.close()
    res["seconds"] = time.perf_counter() - t0
    res.update(_dict_flow_stats(flows), records=records, nonip=nonip)
    return res


def _w_dpkt(args) -> dict:
    """dpkt.pcap.Reader + dpkt.ethernet.Ethernet objects (dpkt decodes 802.1Q itself)."""
    t = time.perf_counter()
    import dpkt
    res = {"import_s": time.perf_counter() - t}
    Ethernet, IP, IP6 = dpkt.ethernet.Ethernet, dpkt.ip.IP, dpkt.ip6.IP6
    TCP, UDP = dpkt.tcp.TCP, dpkt.udp.UDP
    flows: dict = {}
    get = flows.get
    records = nonip = 0
    t0 = time.perf_counter()
    with open(args.file, "rb") as fh:
        for _ts, buf in dpkt.pcap.Reader(fh):
            records += 1
            ip = Ethernet(buf).data
            cls = type(ip)
            if cls is not IP and cls is not IP6:
                nonip += 1
                continue
            proto = ip.p
            l4 = ip.data
            if type(l4) is UDP or type(l4) is TCP:
                sport, dport = l4.sport, l4.dport
            else:
                sport = dport = 0
            src, dst = ip.src, ip.dst
            wl = len(buf)  # dpkt's Reader does not expose orig_len; captures here are not truncated
            key = (proto, src, sport, dst, dport)
            f = get(key)
            if f is None:
                f = get((proto, dst, dport, src, sport))
                if f is None:
                    flows[key] = [1, 0, wl, 0]
                else:
                    f[1] += 1
                    f[3] += wl
            else:
                f[0] += 1
                f[2] += wl
    res["seconds"] = time.perf_counter() - t0
    res.update(_dict_flow_stats(flows), records=records, nonip=nonip)
    return res


def _w_scapy_full(args) -> dict:
    """scapy PcapReader with full dissection, first `limit` packets (extrapolated by the parent)."""
    t = time.perf_counter()
    from scapy.all import IP, TCP, UDP, IPv6, PcapReader
    res = {"import_s": time.perf_counter() - t}
    flows: dict = {}
    get = flows.get
    records = nonip = 0
    limit = args.limit
    t0 = time.perf_counter()
    reader = PcapReader(args.file)
    for pkt in reader:
        if records >= limit:
            break
        records += 1
        if IP in pkt:
            ip = pkt[IP]
            proto = ip.proto
        elif IPv6 in pkt:
            ip = pkt[IPv6]
            proto = ip.nh
        else:
            nonip += 1
            continue
        if TCP in pkt:
            l4 = pkt[TCP]
        elif UDP in pkt:
            l4 = pkt[UDP]
        else:
            l4 = None
        sport, dport = (l4.sport, l4.dport) if l4 is not None else (0, 0)
        src, dst = ip.src, ip.dst
        wl = pkt.wirelen or len(pkt)
        key = (proto, src, sport, dst, dport)
        f = get(key)
        if f is None:
            f = get((proto, dst, dport, src, sport))
            if f is None:
                flows[key] = [1, 0, wl, 0]
            else:
                f[1] += 1
                f[3] += wl
        else:
            f[0] += 1
            f[2] += wl
    reader.close()
    res["seconds"] = time.perf_counter() - t0
    res.update(_dict_flow_stats(flows), records=records, nonip=nonip, partial=True)
    return res


def _dict_flow_stats(flows: dict) -> dict:
    return {"flows": len(flows), "flow_packets": sum(f[0] + f[1] for f in flows.values()),
            "flow_bytes": sum(f[2] + f[3] for f in flows.values())}


WORKERS = {"td": _w_throttledetect, "scapy": _w_scapy, "dpkt": _w_dpkt, "scapy-full": _w_scapy_full}


def _worker_main(args) -> int:
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    res = WORKERS[args.worker](args)
    res["vmhwm_kib"] = _vmhwm()
    sys.stdout.write(json.dumps(res) + "\n")
    return 0


def _vmhwm() -> int | None:
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


# =============================================================================== parent

def _spawn(cmd: list[str], cpu: int | None, env: dict | None = None) -> dict:
    """Run cmd pinned to `cpu`; return wall seconds, peak RSS (KiB), exit code, stdout, stderr."""
    def pin():
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})

    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, preexec_fn=pin, cwd=REPO)
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return {"wall_s": wall, "maxrss_kib": ru.ru_maxrss, "rc": p.returncode,
                "stdout": out.read().decode(errors="replace"), "stderr": err.read().decode(errors="replace")}


def _run_worker(name: str, args, path: Path, warm: Path, cpu, extra=(), env_extra=None) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO), NUMBA_NUM_THREADS="1", OMP_NUM_THREADS="1")
    env.update(env_extra or {})
    cmd = [sys.executable, "-m", "bench.run", "--worker", name, "--file", str(path), "--warm", str(warm),
           "--limit", str(args.scapy_full_limit), *extra]
    r = _spawn(cmd, cpu, env)
    if r["rc"] != 0:
        return {"error": f"exit {r['rc']}: " + r["stderr"].strip()[-2000:], "maxrss_kib": r["maxrss_kib"]}
    try:
        res = json.loads(r["stdout"].strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"error": "no result: " + (r["stdout"] + r["stderr"]).strip()[-2000:]}
    res["maxrss_kib"] = r["maxrss_kib"]
    res["process_wall_s"] = r["wall_s"]
    return res


_CONV_FIELDS = re.compile(r"([\d,]+)\s+([\d,.]+\s*(?:bytes|kB|MB|GB|TB))")


def _run_tshark(path: Path, cpu) -> dict:
    exe = shutil.which("tshark")
    if exe is None:
        return {"skipped": "tshark not installed"}
    r = _spawn([exe, "-r", str(path), "-q", "-z", "conv,udp", "-z", "conv,tcp"], cpu)
    if r["rc"] != 0:
        return {"error": f"exit {r['rc']}: {r['stderr'].strip()[-1000:]}", "maxrss_kib": r["maxrss_kib"]}
    flows = packets = 0
    for line in r["stdout"].splitlines():
        if "<->" not in line:
            continue
        fields = _CONV_FIELDS.findall(line)
        if len(fields) >= 3:
            flows += 1
            packets += int(fields[2][0].replace(",", ""))
    return {"seconds": r["wall_s"], "maxrss_kib": r["maxrss_kib"], "flows": flows, "flow_packets": packets,
            "records": packets, "wall_only": True}


def _warm_page_cache(path: Path) -> float:
    t = time.perf_counter()
    buf = bytearray(16 << 20)
    with open(path, "rb", buffering=0) as f:
        while f.readinto(buf):
            pass
    return time.perf_counter() - t


def _nbi_count() -> int:
    return sum(1 for _ in (REPO / "throttledetect").rglob("*.nbi"))


def _cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _check(name: str, res: dict, manifest: dict, n: int, limit: int | None = None) -> list[str]:
    """Mismatches of a tool's result against the manifest (empty list: all good).

    With `limit`, the tool read only the first `limit` packets: only the count is checked."""
    if "error" in res or "skipped" in res:
        return []
    bad = []
    partial = limit is not None
    want_records = min(n, limit) if partial else n
    if res.get("records") != want_records:
        bad.append(f"{name}: read {res.get('records')} records, expected {want_records}")
    if not partial:
        if res.get("flows") != manifest["flow_count"]:
            bad.append(f"{name}: found {res.get('flows')} flows, expected {manifest['flow_count']}")
        if res.get("flow_packets") != n:
            bad.append(f"{name}: {res.get('flow_packets')} packets in flows, expected {n}")
        if "flow_bytes" in res and res["flow_bytes"] != manifest["total_frame_bytes"]:
            bad.append(f"{name}: {res['flow_bytes']} bytes in flows, expected {manifest['total_frame_bytes']}")
        if res.get("per_flow_match") is False:
            bad.append(f"{name}: per-flow packet/byte counters differ from the manifest")
    elif res.get("flow_packets") != res.get("records"):
        bad.append(f"{name}: {res.get('flow_packets')} packets in flows of {res.get('records')} read")
    return bad


def _fmt_rate(pps: float | None) -> str:
    if not pps:
        return "-"
    return f"{pps / 1e6:.2f} M/s" if pps >= 1e6 else f"{pps / 1e3:.1f} k/s"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    ap.add_argument("--packets", type=int, default=2_000_000, help="packets in the capture (default 2,000,000)")
    ap.add_argument("--repeat", type=int, default=3, help="throttledetect runs; the median is reported (default 3)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tools", default=",".join(ALL_TOOLS), help=f"comma-separated subset of {','.join(ALL_TOOLS)}")
    ap.add_argument("--scapy-full-limit", type=int, default=100_000,
                    help="packets dissected by full scapy (time extrapolated to the capture)")
    ap.add_argument("--cpu", type=int, default=None, help="CPU to pin every tool to (default: the last allowed)")
    ap.add_argument("--no-jit-cold", action="store_true", help="skip the cold-cache numba compile measurement")
    ap.add_argument("--json", type=Path, default=LAST_JSON, help=f"where to write the figures ({LAST_JSON})")
    # worker mode (internal)
    ap.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    ap.add_argument("--file", help=argparse.SUPPRESS)
    ap.add_argument("--warm", help=argparse.SUPPRESS)
    ap.add_argument("--limit", type=int, default=100_000, help=argparse.SUPPRESS)
    ap.add_argument("--jit-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return _worker_main(args)

    tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    unknown = set(tools) - set(ALL_TOOLS)
    if unknown:
        ap.error(f"unknown tools {sorted(unknown)}")
    cpu = args.cpu if args.cpu is not None else max(os.sched_getaffinity(0))
    n = args.packets

    from bench import synth

    t = time.perf_counter()
    path, manifest = synth.cached_capture(n, args.seed)
    gen_s = time.perf_counter() - t
    warm, _ = synth.cached_capture(WARM_PACKETS, args.seed)
    print(f"capture: {path} ({manifest['file_bytes'] / 2**20:.0f} MiB, {n:,} packets, "
          f"{manifest['flow_count']:,} flows: " + ", ".join(f"{v:,} {k}" for k, v in manifest["flows_by_kind"].items())
          + f"; {manifest['max_concurrent_rtp']} concurrent RTP) "
          + ("cached" if manifest["cached"] else f"generated in {gen_s:.1f} s"))
    page_s = _warm_page_cache(path)
    load = os.getloadavg()
    print(f"page cache warm-up read: {page_s:.2f} s; all tools pinned to CPU {cpu} of {os.cpu_count()} "
          f"({_cpu_model()}); load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")

    results: dict = {}
    problems: list[str] = []

    if "td" in tools:
        runs = []
        jit_cold = None
        if not args.no_jit_cold:
            with tempfile.TemporaryDirectory(prefix="bench-numba-") as cache_dir:
                jit_cold = _run_worker("td", args, path, warm, cpu, ["--jit-only"], {"NUMBA_CACHE_DIR": cache_dir})
        nbi_before = _nbi_count()
        for i in range(max(args.repeat, 1)):
            r = _run_worker("td", args, path, warm, cpu)
            runs.append(r)
            if "error" in r:
                break
            print(f"  throttledetect run {i + 1}: read {r['read_s']:.3f} s + flows {r['flows_s']:.3f} s = "
                  f"{r['seconds']:.3f} s ({_fmt_rate(n / r['seconds'])}), first call {r['jit_first_call_s']:.2f} s")
        ok = [r for r in runs if "error" not in r]
        if ok:
            td = {k: statistics.median(r[k] for r in ok) for k in ("seconds", "read_s", "flows_s", "import_s")}
            td.update(records=ok[0]["records"], flows=ok[0]["flows"], flow_packets=ok[0]["flow_packets"],
                      flow_bytes=ok[0]["flow_bytes"], per_flow_match=all(r["per_flow_match"] for r in ok),
                      maxrss_kib=max(r["maxrss_kib"] for r in ok), runs=runs, jit_enabled=ok[0]["jit_enabled"],
                      jit_first_call_s=[r["jit_first_call_s"] for r in ok],
                      numba_cache_files_written=_nbi_count() - nbi_before)
            if jit_cold is not None:
                td["jit_cold_compile_s"] = jit_cold.get("jit_first_call_s")
                if "error" in jit_cold:
                    td["jit_cold_error"] = jit_cold["error"]
        else:
            td = runs[0]
        results["td"] = td

    for name in ("scapy", "dpkt", "scapy-full"):
        if name in tools:
            print(f"  running {name} ...", flush=True)
            results[name] = _run_worker(name, args, path, warm, cpu)
    if "tshark" in tools:
        print("  running tshark ...", flush=True)
        results["tshark"] = _run_tshark(path, cpu)

    for name, res in results.items():
        if "error" in res:
            problems.append(f"{name} FAILED: {res['error']}")
        problems += _check(name, res, manifest, n, args.scapy_full_limit if name == "scapy-full" else None)

    # ------------------------------------------------------------------ table
    td = results.get("td", {})
    td_s = td.get("seconds")
    labels = {
        "td": f"throttledetect read+flows (median of {len(td.get('runs', [])) or args.repeat})",
        "scapy": "scapy RawPcapReader + struct loop",
        "dpkt": "dpkt pcap.Reader + Ethernet loop",
        "scapy-full": "scapy PcapReader full dissection*",
        "tshark": "tshark -z conv,udp -z conv,tcp (wall)**",
    }
    rows = []
    for name, res in results.items():
        if "error" in res or "skipped" in res:
            rows.append((labels[name], "-", "-", "-", "-", res.get("skipped") or "FAILED"))
            continue
        secs = res["seconds"]
        pk = res["records"]
        pps = pk / secs if secs else None
        if name == "scapy-full":
            res["extrapolated_seconds"] = n / pps if pps else None
            secs, pk = res["extrapolated_seconds"], n
        res["packets_per_s"] = pps
        ratio = f"{secs / td_s:.1f}x slower" if td_s and name != "td" else ("1.0x" if name == "td" else "-")
        res["ratio_vs_throttledetect"] = secs / td_s if td_s else None
        rows.append((labels[name], f"{pk:,}", f"{secs:.3f}", _fmt_rate(pps), f"{res['maxrss_kib'] / 1024:.0f}", ratio))
        if name == "td":
            for sub, key in (("  of which read_capture", "read_s"), ("  of which build_flows", "flows_s")):
                rows.append((sub, "", f"{td[key]:.3f}", _fmt_rate(n / td[key]), "", ""))
    head = ("tool", "packets", "seconds", "packets/s", "peak RSS MiB", "vs throttledetect")
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
    line = lambda r: "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
    print()
    print(line(head))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print(line(r))
    if "scapy-full" in results and "seconds" in results["scapy-full"]:
        print(f"*  extrapolated from the first {results['scapy-full']['records']:,} packets "
              f"({results['scapy-full']['seconds']:.2f} s measured)")
    if "tshark" in results and "seconds" in results["tshark"]:
        print("** whole tshark process, startup included; its own conversation statistics, not the same code path")
    if "td" in results and "jit_first_call_s" in td:
        cold = td.get("jit_cold_compile_s")
        print(f"numba: JIT {'on' if td['jit_enabled'] else 'OFF'}; "
              + (f"cold-cache compile (first call on a {WARM_PACKETS:,}-packet capture) {cold:.2f} s; " if cold else "")
              + "first call with the on-disk cache " + ", ".join(f"{s:.2f}" for s in td["jit_first_call_s"]) + " s; "
              + f"import {td['import_s']:.2f} s (all excluded from the timings above)")
    print("flows found: " + ", ".join(f"{k} {v.get('flows', '-'):,}" if isinstance(v.get('flows'), int)
                                      else f"{k} -" for k, v in results.items())
          + f" (manifest {manifest['flow_count']:,}; scapy-full counts only its first packets)")

    # ------------------------------------------------------------------ goals
    goals = {}
    print()
    if td_s:
        pps = n / td_s
        goals["pps"] = {"value": pps, "goal": GOAL_PPS, "met": pps >= GOAL_PPS}
        print(f"GOAL read+flows >= {GOAL_PPS / 1e6:.0f} M packets/s on one core: "
              f"{'MET' if pps >= GOAL_PPS else 'NOT MET'} ({pps / 1e6:.2f} M/s)")
        sc = results.get("scapy", {})
        if sc.get("seconds"):
            ratio = sc["seconds"] / td_s
            goals["vs_scapy"] = {"value": ratio, "goal": GOAL_VS_SCAPY, "met": ratio >= GOAL_VS_SCAPY}
            print(f"GOAL >= {GOAL_VS_SCAPY:.0f}x scapy's RawPcapReader loop: "
                  f"{'MET' if ratio >= GOAL_VS_SCAPY else 'NOT MET'} ({ratio:.1f}x)")
        else:
            print("GOAL >= 10x scapy's RawPcapReader loop: NOT MEASURED (scapy loop did not run)")
    else:
        print("GOALS NOT MEASURED: throttledetect did not run" + (f" ({td.get('error', '')[:300]})" if td else ""))
    if problems:
        print()
        print("!" * 78)
        for p in problems:
            print("!! MISMATCH / FAILURE: " + p)
        print("!" * 78)
    else:
        print("all tools agree with the manifest (flows, packets; bytes and per-flow counters where reported)")

    figures = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": {"cpu": _cpu_model(), "cpus": os.cpu_count(), "pinned_cpu": cpu, "loadavg": load,
                 "python": platform.python_version()},
        "capture": {k: v for k, v in manifest.items() if k != "flows"},
        "page_cache_warmup_s": page_s,
        "tools": results,
        "goals": goals,
        "problems": problems,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(figures, indent=1, default=str))
    print(f"figures written to {args.json}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
