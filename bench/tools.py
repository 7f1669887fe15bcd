"""The other tools of `make bench`, each run as its own whole process: python -m bench.tools TOOL FILE [LIMIT].

Each prints one JSON line (flows, records, its own timing). scapy and dpkt are bench.run's loops
(read every record, decode to the 5-tuple, count per bidirectional flow); nfstream is nDPI's
flow engine (its C meters do the reading, decoding and flow table; every core); pyshark reads
through tshark's PDML and is timed on its first LIMIT packets.
"""
from __future__ import annotations

import json
import sys
import time
from types import SimpleNamespace


def nfstream_flows(path: str) -> dict:
    t = time.perf_counter()
    import nfstream
    startup = time.perf_counter() - t
    t0 = time.perf_counter()
    flows = packets = 0
    # no DPI, no statistics: the same job as the others (idle timeout as throttledetect's)
    for f in nfstream.NFStreamer(source=path, statistical_analysis=False, n_dissections=0, idle_timeout=60,
                                 active_timeout=10**9, accounting_mode=0):
        flows += 1
        packets += f.bidirectional_packets
    return {"flows": flows, "flow_packets": packets, "records": packets, "seconds": time.perf_counter() - t0,
            "import_s": startup}


def pyshark_flows(path: str, limit: int) -> dict:
    t = time.perf_counter()
    import pyshark
    cap = pyshark.FileCapture(path, keep_packets=False)
    flows: dict = {}
    records = 0
    t0 = None
    for pkt in cap:
        if t0 is None:
            t0 = time.perf_counter()       # tshark's start-up is counted once, apart
            startup = t0 - t
        records += 1
        ip = getattr(pkt, "ip", None) or getattr(pkt, "ipv6", None)
        if ip is not None:
            tr = pkt.transport_layer
            l4 = getattr(pkt, tr.lower()) if tr else None
            ends = sorted([(str(ip.src), str(getattr(l4, "srcport", 0))), (str(ip.dst), str(getattr(l4, "dstport", 0)))])
            key = (tr, *ends)
            flows[key] = flows.get(key, 0) + 1
        if records >= limit:
            break
    cap.close()
    return {"flows": len(flows), "records": records, "seconds": time.perf_counter() - (t0 or t),
            "startup_s": startup if t0 else 0.0, "partial": True}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    tool, path = argv[0], argv[1]
    limit = int(argv[2]) if len(argv) > 2 else 20_000
    if tool == "nfstream":
        res = nfstream_flows(path)
    elif tool == "pyshark":
        res = pyshark_flows(path, limit)
    else:
        from bench import run
        res = {"scapy": run._w_scapy, "dpkt": run._w_dpkt}[tool](SimpleNamespace(file=path))
    sys.stdout.write(json.dumps(res) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
