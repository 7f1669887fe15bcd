"""Throughput and timing of the kernel replay (root): one capture, no throttle, played ever faster.

    python -m bench.replay [--capture captures/call_clean.pcap] [--wall 4] [--speeds 1,16,64,128,256]

At each speed the capture, looped to wall x speed seconds, is sent `speed` times faster (the
schedule's times divided by it), so every speed sends for `wall` seconds.
Printed per speed: packets/s asked and achieved by the senders, how late they sent (p50/p99 of the
send loop), how far captured inter-packet times are from the intended ones (p50/p99), packets lost
between the senders and the capture, the senders' CPU per packet. Nothing is asserted.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile

from throttledetect.testbed.replay import replay


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.replay", description=__doc__.split("\n\n")[0])
    ap.add_argument("--capture", default="captures/call_clean.pcap")
    ap.add_argument("--wall", type=float, default=4.0, help="seconds of sending at each speed")
    ap.add_argument("--speeds", default="1,16,64,128,256")
    a = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-replay-") as d:
        for speed in (float(s) for s in a.speeds.split(",")):
            out = os.path.join(d, f"x{speed:g}.pcap")
            t = replay(a.capture, out, {"kind": "none"}, seconds=a.wall * speed, speed=speed)
            r = t["replay"]
            s = r["senders"]
            tp = r["timing_precision"]["from_local_at_client"]
            n = r["packets"]
            got = t["measured"]["capture_packets"] - t["measured"]["extra_packets"]
            row = {"speed": speed, "asked_pps": r["scheduled_pps"], "achieved_pps": r["sent_pps"],
                   "late_us_p50": max(x["late_us_p50"] for x in s.values()),
                   "late_us_p99": max(x["late_us_p99"] for x in s.values()),
                   "ipt_error_us_p50": tp.get("inter_packet_error_us_p50"),
                   "ipt_error_us_p99": tp.get("inter_packet_error_us_p99"),
                   "lost": n - got, "send_failed": r["send_failed"],
                   "tcpdump_dropped": t["tcpdump"]["client"].get("packets dropped by kernel"),
                   "sender_cpu_us_per_packet": round(r["sender_cpu_s"] / n * 1e6, 1),
                   "scheduler": sorted({x.get("scheduler") for x in s.values()})}
            rows.append(row)
            print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
