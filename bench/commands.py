"""make bench: throttledetect as users meet it, whole commands start to finish, beside other tools.

    python -m bench.commands [--packets 2000000] [--repeats 5] [--scale 1,5,13] [--tools ...] [--quick]

Captures: the 2 M-packet mix of bench/synth.py (200 RTP calls, TCP bulk, 45 k DNS flows), and the
same mix repeated --repeats times one after another (each copy shifted past the idle timeout, so
its flows are new flows): 10 M packets, 3.9 GB by default. --scale adds copies of 1, 5 and 13
repetitions (0.8, 3.9 and 10 GB) for `flows` alone, to show how time and memory grow with size.
Repeated captures are written under $TMPDIR/throttledetect-bench and deleted at the end (--keep).

Every measurement is one process tree run from start to finish (interpreter start-up, imports,
reading, output written to /dev/null): wall seconds, and peak memory as the largest sum of the
tree's resident set sizes sampled every 20 ms (with --workers the pool's processes count too)
beside ru_maxrss of the main process. Nothing is pinned: the commands use every core, as a user's
would. The other tools do the job the `flows` command does (group packets into bidirectional
5-tuple flows, counting packets and bytes): scapy's RawPcapReader loop with struct decoding (the
reference the goals name), dpkt, nfstream (nDPI's flow engine in C, installed with pip at bench
time when missing), tshark's conversation statistics, and pyshark (timed on its first packets and
extrapolated: it dissects every field through tshark's PDML). Goals are printed, never asserted;
figures go to .cache/bench/commands.json.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT_JSON = REPO / ".cache" / "bench" / "commands.json"
GOALS = {"flows_pps": 3e6, "flows_vs_scapy": 10.0, "analyze_pps": 1e6, "analyze_vs_scapy": 3.0,
         "rss_bytes": 1 << 30}
COMPARE_TOOLS = ("scapy", "dpkt", "nfstream", "tshark", "pyshark")
PYSHARK_LIMIT = 20_000


# ------------------------------------------------------------------------------- measuring
def _tree_rss_kib(pid: int) -> int:
    """Sum of the proportional set size (Pss: a page shared by n processes counts 1/n in each, so a
    forked pool's shared pages count once) over a process and its descendants (0 when gone)."""
    total = 0
    stack = [pid]
    while stack:
        p = stack.pop()
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
                        break
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    stack += [int(c) for c in f.read().split()]
        except (OSError, ValueError):
            continue
    return total


def run_measured(cmd: list[str], env: dict | None = None, stdin_path: str | None = None,
                 timeout: float | None = None) -> dict:
    """Run cmd to the end: wall seconds, peak tree RSS (KiB), ru_maxrss (KiB), exit status, output."""
    peak = {"kib": 0}
    stop = threading.Event()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        stdin = open(stdin_path, "rb") if stdin_path else subprocess.DEVNULL
        t = time.perf_counter()
        p = subprocess.Popen(_timed(cmd), stdout=out, stderr=err, stdin=stdin, env=env, cwd=REPO)

        def sample():
            while not stop.is_set():
                peak["kib"] = max(peak["kib"], _tree_rss_kib(p.pid))
                stop.wait(0.05)
        th = threading.Thread(target=sample, daemon=True)
        th.start()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            pid, status, ru = os.wait4(p.pid, os.WNOHANG)
            if pid:
                break
            if deadline is not None and time.monotonic() > deadline:
                p.kill()
            time.sleep(0.01)
        wall = time.perf_counter() - t
        stop.set()
        th.join()
        if stdin_path:
            stdin.close()
        err.seek(0)
        # ru_maxrss would count the pages this (forking) process had when the child started: the
        # sampled sum is the figure; GNU time's, when it wraps the command, is the largest process's
        text = err.read().decode(errors="replace")
        out.seek(0)
        timed = _gnu_time_kib(text)
        return {"seconds": wall, "peak_rss_kib": max(peak["kib"], timed or 0), "largest_process_kib": timed,
                "rc": os.waitstatus_to_exitcode(status), "stdout": out.read().decode(errors="replace"),
                "stderr": text}


_TIME_MARK = "bench-maxrss-kib="


def _gnu_time_kib(stderr: str) -> int | None:
    for line in stderr.splitlines()[::-1]:
        if line.startswith(_TIME_MARK):
            return int(line[len(_TIME_MARK):])
    return None


def _timed(cmd: list[str]) -> list[str]:
    """cmd under GNU time (when installed), which prints the largest resident size it waited for."""
    exe = "/usr/bin/time"
    return [exe, "-f", _TIME_MARK + "%M", *cmd] if os.access(exe, os.X_OK) else cmd


# ------------------------------------------------------------------------------- captures
def repeated_capture(base: Path, manifest: dict, times: int, out: Path) -> dict:
    """_repeat in a child process: this one stays small, so the children it forks start small."""
    r = subprocess.run([sys.executable, "-m", "bench.commands", "--make-repeat", str(base), str(times), str(out)],
                       cwd=REPO, capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"making {out} failed: {r.stderr.strip()[-500:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def _repeat(base: Path, manifest: dict, times: int, out: Path) -> dict:
    """`base` written `times` times one after another, each copy's timestamps shifted by the base's
    duration plus 120 s (past the 60 s idle timeout: every copy's flows are new flows)."""
    import numpy as np
    from throttledetect.read.chunks import CaptureStream
    want = {"packets": manifest["packets"] * times, "flow_count": manifest["flow_count"] * times,
            "total_frame_bytes": manifest["total_frame_bytes"] * times, "repeats": times,
            "file_bytes": 24 + (manifest["file_bytes"] - 24) * times}
    mpath = out.with_suffix(".json")
    if out.exists() and mpath.exists() and out.stat().st_size == want["file_bytes"]:
        return dict(json.loads(mpath.read_text()), cached=True)
    rec = np.concatenate([c.packets.frame_off - 16 for c in CaptureStream(base)])
    data = np.fromfile(base, dtype=np.uint8)
    sec_at = rec[:, None] + np.arange(4)
    secs = data[sec_at].copy().view("<u4").ravel()
    shift = int(manifest["duration_s"]) + 120
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "wb") as f:
        data[:24].tofile(f)
        for k in range(times):
            data[sec_at] = (secs + k * shift).astype("<u4").view(np.uint8).reshape(-1, 4)
            data[24:].tofile(f)
    os.replace(tmp, out)
    mpath.write_text(json.dumps(want))
    return dict(want, cached=False)


# ------------------------------------------------------------------------------- the runs
def _td(*args) -> list[str]:
    return [sys.executable, "-m", "throttledetect", *args]


def _tool_cmd(tool: str, path: Path) -> list[str] | None:
    if tool == "tshark":
        exe = shutil.which("tshark")
        return [exe, "-r", str(path), "-q", "-z", "conv,udp", "-z", "conv,tcp"] if exe else None
    if tool in ("scapy", "dpkt", "nfstream", "pyshark"):
        return [sys.executable, "-m", "bench.tools", tool, str(path), str(PYSHARK_LIMIT)]
    raise ValueError(tool)


def _ensure_nfstream() -> str | None:
    """nfstream is no test dependency: installed here with pip when missing. None, or why it cannot run."""
    try:
        import nfstream  # noqa: F401
        return None
    except ImportError:
        pass
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "nfstream"], capture_output=True, text=True)
    if r.returncode != 0:
        return "pip install nfstream failed: " + (r.stderr.strip().splitlines() or ["?"])[-1]
    return None


def _mem_available_kib() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1])
    return 0


def _fmt_pps(pps):
    if not pps:
        return "-"
    return f"{pps / 1e6:.2f} M/s" if pps >= 1e6 else f"{pps / 1e3:.0f} k/s" if pps >= 1e4 else f"{pps:.0f}/s"


def _fmt_mib(kib):
    return "-" if not kib else (f"{kib / 2**20:.2f} GiB" if kib >= 2**20 else f"{kib / 1024:.0f} MiB")


def _print_table(head, rows):
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
    line = lambda r: "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
    print(line(head))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print(line(r))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.commands", description=__doc__.split("\n\n")[0])
    ap.add_argument("--packets", type=int, default=2_000_000, help="packets of the base mix (default 2,000,000)")
    ap.add_argument("--repeats", type=int, default=5, help="copies of the base mix in the big capture (default 5)")
    ap.add_argument("--scale", default="1,5,13",
                    help="repetitions for the size series of `flows` (default 1,5,13: 0.8, 3.9, 10 GB; '' for none)")
    ap.add_argument("--tools", default=",".join(COMPARE_TOOLS), help="other tools to run (default: all)")
    ap.add_argument("--commands", default="flows,analyze", help="throttledetect commands to time (default: both)")
    ap.add_argument("--workers", type=int, default=None, help="analyze --workers (default: the command's default)")
    ap.add_argument("--quick", action="store_true", help="the base capture only, no size series")
    ap.add_argument("--keep", action="store_true", help="keep the repeated captures")
    ap.add_argument("--tmp", type=Path, default=Path(tempfile.gettempdir()) / "throttledetect-bench")
    ap.add_argument("--json", type=Path, default=OUT_JSON)
    ap.add_argument("--make-repeat", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.make_repeat:
        base, times, out = args.make_repeat
        manifest = json.loads(Path(base).with_suffix(".json").read_text())
        print(json.dumps(_repeat(Path(base), manifest, int(times), Path(out))))
        return 0
    tools = [t for t in args.tools.split(",") if t]
    scale = [] if args.quick else [int(x) for x in args.scale.split(",") if x.strip()]

    from bench import synth
    base, manifest = synth.cached_capture(args.packets, 0)
    captures = [("base", base, {**manifest, "repeats": 1})]
    made = []
    if not args.quick and args.repeats > 1:
        p = args.tmp / f"mixed-{args.packets}-x{args.repeats}.pcap"
        captures.append((f"x{args.repeats}", p, repeated_capture(base, manifest, args.repeats, p)))
        made.append(p)
    print(f"cpus {os.cpu_count()}, load {os.getloadavg()[0]:.2f}; captures: " + "; ".join(
        f"{name} {m['packets']:,} packets, {m['file_bytes'] / 2**30:.2f} GiB, {m['flow_count']:,} flows"
        for name, _, m in captures), flush=True)
    if "nfstream" in tools:
        why = _ensure_nfstream()
        if why:
            print(f"nfstream: {why}")
            tools.remove("nfstream")

    warm = run_measured(_td("flows", str(synth.cached_capture(2000, 0)[0]), "-o", "/dev/null"))   # numba cache
    results = {"captures": {}, "scale": [], "warm_rc": warm["rc"]}
    workers = ["--workers", str(args.workers)] if args.workers else []
    for name, path, m in captures:
        n = m["packets"]
        subprocess.run(["cat", str(path)], stdout=subprocess.DEVNULL)      # page cache warm for every tool
        rows = {}
        runs = [("flows", _td("flows", str(path), "--format", "json", "-o", "/dev/null")),
                ("analyze", _td("analyze", str(path), "--format", "json", "-o", "/dev/null", *workers))]
        for label, cmd in runs:
            if label not in args.commands.split(","):
                continue
            print(f"  {name}: throttledetect {label} ...", flush=True)
            rows[f"throttledetect {label}"] = run_measured(cmd)
        for tool in tools:
            cmd = _tool_cmd(tool, path)
            if cmd is None:
                rows[tool] = {"skipped": "not installed"}
                continue
            print(f"  {name}: {tool} ...", flush=True)
            rows[tool] = run_measured(cmd)
        for label, r in rows.items():
            if "skipped" in r:
                continue
            counted = n
            if label == "pyshark" and r["rc"] == 0:
                info = json.loads(r["stdout"].strip().splitlines()[-1])
                r["measured"] = info
                counted = info["records"]
                r["extrapolated_seconds"] = info["startup_s"] + info["seconds"] * n / max(counted, 1)
            elif label in ("scapy", "dpkt", "nfstream") and r["rc"] == 0:
                r["measured"] = json.loads(r["stdout"].strip().splitlines()[-1])
            secs = r.get("extrapolated_seconds", r["seconds"])
            r["packets_per_s"] = n / secs if secs and r["rc"] in (0, 1) else None
            r.pop("stdout", None)
            r["stderr"] = r["stderr"][-600:]
        results["captures"][name] = {"manifest": {k: v for k, v in m.items() if k != "flows"}, "runs": rows}

    # ---------------------------------------------------------------- size series (flows)
    for times in scale:
        p = args.tmp / f"mixed-{args.packets}-x{times}.pcap"
        m = repeated_capture(base, manifest, times, p) if times > 1 else {**manifest, "repeats": 1}
        path = p if times > 1 else base
        if times > 1 and p not in made:
            made.append(p)
        subprocess.run(["cat", str(path)], stdout=subprocess.DEVNULL)
        print(f"  size series: flows on {m['file_bytes'] / 2**30:.1f} GiB ...", flush=True)
        r = run_measured(_td("flows", str(path), "--format", "json", "-o", "/dev/null"))
        r.pop("stdout", None)
        results["scale"].append({"repeats": times, "packets": m["packets"], "flows": m["flow_count"],
                                 "file_bytes": m["file_bytes"], **r})
        if times > 1 and not args.keep and p != captures[-1][1]:
            p.unlink(missing_ok=True)
            p.with_suffix(".json").unlink(missing_ok=True)

    # ---------------------------------------------------------------- report
    goals = {}
    for name, c in results["captures"].items():
        m = c["manifest"]
        print(f"\n{name}: {m['packets']:,} packets, {m['file_bytes'] / 2**30:.2f} GiB, {m['flow_count']:,} flows "
              f"(whole commands, start to finish, {os.cpu_count()} cores)")
        scapy = c["runs"].get("scapy", {})
        ref = scapy.get("seconds") if scapy.get("rc") == 0 else None
        table = []
        for label, r in c["runs"].items():
            if "skipped" in r:
                table.append((label, "-", "-", "-", "-", r["skipped"]))
                continue
            if r["rc"] not in (0, 1):
                table.append((label, "-", "-", "-", "-", f"FAILED (exit {r['rc']}): {r['stderr'].strip()[-120:]}"))
                continue
            secs = r.get("extrapolated_seconds", r["seconds"])
            ratio = f"{ref / secs:.1f}x" if ref and secs else "-"
            note = f"extrapolated from {r['measured']['records']:,} packets" if "extrapolated_seconds" in r else ""
            flows = r.get("measured", {}).get("flows")
            table.append((label, f"{secs:.1f}", _fmt_pps(r["packets_per_s"]), _fmt_mib(r["peak_rss_kib"]), ratio,
                          note or (f"{flows:,} flows" if flows else "")))
        _print_table(("command", "seconds", "packets/s", "peak RSS", "vs scapy loop", ""), table)
        if name != "base" or len(results["captures"]) == 1:
            for label, key, vs in (("throttledetect flows", "flows", "flows_vs_scapy"),
                                   ("throttledetect analyze", "analyze", "analyze_vs_scapy")):
                r = c["runs"].get(label, {})
                if r.get("packets_per_s"):
                    goals[f"{key}_pps"] = r["packets_per_s"]
                    if ref:
                        goals[vs] = ref / r["seconds"]
                    goals.setdefault("rss_max", 0)
                    goals["rss_max"] = max(goals["rss_max"], r["peak_rss_kib"] * 1024)
    if results["scale"]:
        print("\nflows as the capture grows (start to finish):")
        _print_table(("capture", "packets", "flows", "seconds", "packets/s", "peak RSS"),
                     [(f"{s['file_bytes'] / 2**30:.1f} GiB", f"{s['packets']:,}", f"{s['flows']:,}",
                       f"{s['seconds']:.1f}", _fmt_pps(s["packets"] / s["seconds"] if s["rc"] == 0 else None),
                       _fmt_mib(s["peak_rss_kib"])) for s in results["scale"]])
        goals["rss_max"] = max([goals.get("rss_max", 0)] + [s["peak_rss_kib"] * 1024 for s in results["scale"]])
    print()
    for key, goal in GOALS.items():
        have = goals.get("rss_max" if key == "rss_bytes" else key)
        if have is None:
            print(f"GOAL {key}: NOT MEASURED")
            continue
        met = have <= goal if key == "rss_bytes" else have >= goal
        shown = _fmt_mib(have / 1024) if key == "rss_bytes" else (f"{have:.1f}x" if "vs" in key else _fmt_pps(have))
        print(f"GOAL {key} {'<=' if key == 'rss_bytes' else '>='} "
              f"{_fmt_mib(goal / 1024) if key == 'rss_bytes' else (f'{goal:g}x' if 'vs' in key else _fmt_pps(goal))}: "
              f"{'MET' if met else 'NOT MET'} ({shown})")
    results["goals"] = goals
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1, default=str))
    print(f"figures written to {args.json}")
    if not args.keep:
        for p in made:
            p.unlink(missing_ok=True)
            p.with_suffix(".json").unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
