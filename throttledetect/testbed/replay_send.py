"""One side of a replay: send prepared Ethernet frames at their times through a packet socket.

    ip netns exec NS python .../replay_send.py SCHEDULE.npz LOG.npy [--dev eth0]

Runs inside the client or the server namespace. SCHEDULE.npz holds `frames` (uint8, the frames
concatenated), `start` (int64[n + 1] offsets) and `rel_ns` (int64 send times relative to the
replay's start). It loads and slices everything first, says `READY n` on stdout, reads the start
time (epoch seconds) from stdin, then sends frame k at start + rel_ns[k] / 1e9. LOG.npy gets the
wall-clock time at which each send began (NaN where it failed); LOG.json the counts and CPU use.

Timing: the loop sleeps until SPIN_S before a packet's time (timer slack set to 1 us: as a FIFO task
the sleep ends 30 us late at the median, 55-65 us at p99 on this kind of machine) and spins for the rest; packets due at the
same time leave back to back. A sender that falls behind sends at once and does not skip. The
process asks for SCHED_FIFO (it is root): on a machine whose two cores are busy with other work,
a normal process woke up to 3-4 ms late at p99, a FIFO one within ~10 us; it only ever spins
SPIN_S per packet, so it cannot starve the machine (and the kernel caps real-time tasks at 95 %).
A packet socket sends the recorded IP packet untouched (any protocol, TCP as recorded); only
numpy and the standard library are imported, so startup stays short.
"""
from __future__ import annotations

import ctypes
import errno
import json
import os
import resource
import socket
import sys
import time

import numpy as np

SPIN_S = 0.0001
LONG_WAIT_S = 0.01
PR_SET_TIMERSLACK = 29
FIFO_PRIORITY = 20


def load(path: str) -> tuple[list[bytes], list[float]]:
    with np.load(path) as z:
        buf = z["frames"].tobytes()
        start = z["start"].tolist()
        rel = (z["rel_ns"].astype(np.float64) / 1e9).tolist()
    return [buf[a:b] for a, b in zip(start[:-1], start[1:])], rel


def send_all(sock: socket.socket, frames: list[bytes], rel: list[float], t0: float) -> tuple[list[float], int]:
    """The per-packet loop, kept lean: a clock read, maybe a sleep, a short spin, one send()."""
    clock, sleep, send = time.time, time.sleep, sock.send
    log = [float("nan")] * len(frames)
    retries = 0
    for i in range(len(frames)):
        due = t0 + rel[i]
        wait = due - clock()
        while wait > SPIN_S:
            # sleep() counts CLOCK_MONOTONIC, the schedule CLOCK_REALTIME (the capture's clock); where
            # the two run at different rates (0.49 % on this project's VMs) a long sleep would end late
            # by that fraction of it, so long waits are slept in parts and looked at again
            sleep(wait - SPIN_S if wait < LONG_WAIT_S else wait * 0.9)
            wait = due - clock()
        while clock() < due:
            pass
        log[i] = clock()
        try:
            send(frames[i])
        except OSError as e:
            # a full device queue: wait a little and try once more; otherwise the packet is lost
            if e.errno not in (errno.ENOBUFS, errno.EAGAIN):
                raise
            retries += 1
            sleep(0.0005)
            try:
                send(frames[i])
            except OSError:
                log[i] = float("nan")
    return log, retries


def main(argv: list[str]) -> int:
    sched, log_path = argv[0], argv[1]
    dev = argv[argv.index("--dev") + 1] if "--dev" in argv else "eth0"
    try:
        ctypes.CDLL(None).prctl(PR_SET_TIMERSLACK, 1000, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    policy = "other"
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(FIFO_PRIORITY))
        policy = "fifo"
    except (OSError, AttributeError):
        pass
    frames, rel = load(sched)
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    sock.bind((dev, 0))
    print(f"READY {len(frames)}", flush=True)
    line = sys.stdin.readline()
    if not line.strip():
        return 1
    t0 = float(line)
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    w0 = time.time()
    log, retries = send_all(sock, frames, rel, t0) if frames else ([], 0)
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    arr = np.array(log, dtype=np.float64)
    np.save(log_path, arr)
    late = arr - (t0 + np.array(rel, dtype=np.float64)) if len(arr) else arr
    stats = {"packets": len(frames), "scheduler": policy, "failed": int(np.isnan(arr).sum()), "retries": retries,
             "wall_s": time.time() - w0, "cpu_s": (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime),
             "late_us_p50": float(np.nanmedian(late) * 1e6) if len(arr) else None,
             "late_us_p99": float(np.nanpercentile(late, 99) * 1e6) if len(arr) else None,
             "late_us_max": float(np.nanmax(late) * 1e6) if len(arr) else None}
    with open(log_path[:-4] + ".json" if log_path.endswith(".npy") else log_path + ".json", "w") as f:
        json.dump(stats, f)
    print("DONE", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
