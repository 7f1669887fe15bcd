"""Write a pcap file to stdout at the pace of its timestamps (x `speed`), as tcpdump -w - -U would:
python -m tests.pace FILE SPEED. Prints on stderr the wall time at which the last byte was written."""
from __future__ import annotations

import sys
import time


def main() -> int:
    path, speed = sys.argv[1], float(sys.argv[2])
    data = open(path, "rb").read()
    order = "little" if data[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else "big"
    nano = data[:4] in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")
    out = sys.stdout.buffer
    out.write(data[:24])
    pos, t0, start = 24, None, time.monotonic()
    while pos + 16 <= len(data):
        sec = int.from_bytes(data[pos:pos + 4], order)
        frac = int.from_bytes(data[pos + 4:pos + 8], order)
        ts = sec + frac / (1e9 if nano else 1e6)
        incl = int.from_bytes(data[pos + 8:pos + 12], order)
        t0 = ts if t0 is None else t0
        wait = (ts - t0) / speed - (time.monotonic() - start)
        if wait > 0:
            out.flush()
            time.sleep(wait)
        out.write(data[pos:pos + 16 + incl])
        pos += 16 + incl
    out.flush()
    print(f"done {time.time():.3f}", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
