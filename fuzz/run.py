"""Build the seed corpora and run every atheris harness for a while (what `make fuzz` calls).

    .venv/bin/python fuzz/run.py [--seconds 60] [--only reader,parsers,flows] [--jobs 1] [--no-seeds]

Seeds are built at run time into fuzz/seeds/<harness>/ (git-ignored, never committed) from the
project's own captures (captures/) and from the shared corpus (../shared/corpus, read in place):
the first records of each capture for the reader, the transport payloads of their packets for the
parsers, and their packets re-encoded in the synthetic-capture format (fuzz/checks.py) for the
flows harness. The growing corpus of each harness lives in fuzz/corpus/<harness>/ and crash or
hang inputs in fuzz/crashes/ (both git-ignored); a finding becomes a file in tests/regressions/
with a replay test, and a fix.

Every harness runs with THROTTLEDETECT_NO_JIT=1, so the decoding loops run interpreted and the
fuzzer sees their branches. Exit status: 0 when no harness found anything, 1 otherwise.
"""
from __future__ import annotations

import argparse
import hashlib
import lzma
import os
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(HERE)]

HARNESSES = {
    # name: (script, -max_len)
    "reader": ("fuzz_reader.py", 16384),
    "parsers": ("fuzz_parsers.py", 2048),
    "flows": ("fuzz_flows.py", 8192),
}
READER_SEED_BYTES = 6144
MAX_PARSER_SEEDS = 4000
PARSER_SEEDS_PER_CAPTURE = 40
FLOW_SEED_PACKETS = 24


def corpus_dir() -> Path:
    env = os.environ.get("THROTTLEDETECT_CORPUS")
    return Path(env) if env else ROOT.parent / "shared" / "corpus"


def source_captures() -> list[Path]:
    """The project's captures and the shared corpus (read in place), smallest first."""
    found = sorted((ROOT / "captures").glob("*.pcap*"))
    base = corpus_dir()
    for sub in ("ndpi/pcap", "ndpi/malformed", "external", "policing"):
        d = base / sub
        if d.is_dir():
            found += sorted(p for p in d.iterdir() if p.is_file())
    return found


def _head(path: Path, n: int) -> bytes:
    if path.suffix == ".xz":
        with lzma.open(path) as f:
            return f.read(n)
    with open(path, "rb") as f:
        return f.read(n)


def _save(directory: Path, data: bytes) -> bool:
    name = hashlib.sha1(data).hexdigest()
    p = directory / name
    if p.exists():
        return False
    p.write_bytes(data)
    return True


def _synthetic_reader_seeds() -> list[bytes]:
    """Small well-formed files of every container variant the reader knows (built with write.py)."""
    import struct
    import tempfile

    from throttledetect.write import write_pcap, write_pcapng

    udp = (b"\x45\x00\x00\x24\x00\x01\x00\x00\x40\x11\x00\x00\x0a\x00\x00\x01\x5d\xb8\xd8\x22"
           b"\x9c\x40\x0d\x96\x00\x10\x00\x00" + b"\x00\x01\x00\x00\x21\x12\xa4\x42")
    eth = b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + udp
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "s"
        for nano in (False, True):
            for be in (False, True):
                write_pcap(p, [eth, eth[:30], eth], [10**18, 10**18 + 5, 10**18 + 9], 1, nano=nano, big_endian=be)
                out.append(p.read_bytes())
        for lt, frame in ((101, udp), (113, b"\0" * 14 + b"\x08\x00" + udp), (0, struct.pack("<I", 2) + udp),
                          (276, b"\x08\x00" + b"\0" * 18 + udp), (9, b"\xff\x03\x00\x21" + udp)):
            write_pcap(p, [frame, frame], [10**18, 10**18 + 1000], lt)
            out.append(p.read_bytes())
        for be in (False, True):
            write_pcapng(p, [(0, 1, eth), (1, 2, udp), (0, 3, eth)], [(1, None), (101, 9)], big_endian=be)
            out.append(p.read_bytes())
        write_pcapng(p, [(0, 5, eth)], [(1, 0x86)])
        blob = p.read_bytes()
        spb = struct.pack("<III", 3, 16 + len(eth) + (-len(eth) % 4), len(eth)) + eth + b"\0" * (-len(eth) % 4)
        spb += struct.pack("<I", 16 + len(eth) + (-len(eth) % 4))
        out.append(blob + spb + blob)   # a simple packet block, then a second section
    return out


def build_seeds(verbose: bool = True) -> dict[str, Path]:
    import numpy as np

    from throttledetect.read import CaptureError, read_capture

    from checks import PORTS, WRAPPINGS  # noqa: E402

    dirs = {name: HERE / "seeds" / name for name in HARNESSES}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    counts = dict.fromkeys(dirs, 0)
    gz = [i for i, (n, _) in enumerate(WRAPPINGS) if n == "gzip"][0]
    classify = 0x08     # byte 0 of a reader input: bits 0-2 the wrapping, bit 3 "classify too"
    for blob in _synthetic_reader_seeds():
        counts["reader"] += _save(dirs["reader"], b"\0" + blob)
        counts["reader"] += _save(dirs["reader"], bytes([gz | classify]) + blob)
    port_index = {p: i for i, p in enumerate(PORTS)}
    parser_total = 0
    for path in source_captures():
        head = _head(path, READER_SEED_BYTES)
        if not head:
            continue
        counts["reader"] += _save(dirs["reader"], bytes([classify if len(head) % 2 else 0]) + head)
        try:
            cap = read_capture(path)
        except CaptureError:
            continue
        t = cap.packets
        rows = np.flatnonzero(t.payload_len > 0)
        # Parser seeds: payloads, preferring variety of first bytes over many of the same kind.
        seen_kinds: dict[bytes, int] = {}
        taken = 0
        for r in rows.tolist():
            if taken >= PARSER_SEEDS_PER_CAPTURE or parser_total >= MAX_PARSER_SEEDS:
                break
            data = cap.payload(r)[: HARNESSES["parsers"][1]]
            kind = data[:2]
            if seen_kinds.get(kind, 0) >= 4:
                continue
            seen_kinds[kind] = seen_kinds.get(kind, 0) + 1
            if _save(dirs["parsers"], data):
                taken += 1
                parser_total += 1
        # Flow seeds: the first packets of the capture re-encoded for synth_capture.
        enc = bytearray([0])
        for r in np.flatnonzero((t.proto == 6) | (t.proto == 17))[:FLOW_SEED_PACKETS].tolist():
            data = cap.payload(r)[:1400]
            flags = (1 if t.l3[r] == 6 else 0) | (2 if t.proto[r] == 6 else 0)
            sp, dp = int(t.sport[r]), int(t.dport[r])
            if dp not in port_index and sp in port_index:
                sp, dp, flags = dp, sp, flags | 4
            enc += bytes([flags | 0x40]) + sp.to_bytes(2, "big") + bytes([port_index.get(dp, 0), 0, 160])
            enc += len(data).to_bytes(2, "big") + data
        if len(enc) > 1:
            counts["flows"] += _save(dirs["flows"], bytes(enc[: HARNESSES["flows"][1]]))
    if verbose:
        print("seeds: " + ", ".join(f"{k} {len(list(d.iterdir()))} files" for k, d in dirs.items())
              + f" (from {len(source_captures())} captures; corpus at {corpus_dir()})")
    return dirs


_STAT = re.compile(r"stat::number_of_executed_units:\s*(\d+)")
_SECS = re.compile(r"Done (\d+) runs in (\d+) second")


def run_harness(name: str, seconds: int, seed_dir: Path | None) -> dict:
    script, max_len = HARNESSES[name]
    work = HERE / "corpus" / name
    crashes = HERE / "crashes"
    work.mkdir(parents=True, exist_ok=True)
    crashes.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, THROTTLEDETECT_NO_JIT="1", NUMBA_DISABLE_JIT="1", PYTHONHASHSEED="0")
    before = set(crashes.iterdir())
    cmd = [sys.executable, str(HERE / script), str(work)] + ([str(seed_dir)] if seed_dir else []) + [
        f"-max_total_time={seconds}", "-timeout=20", "-rss_limit_mb=4096", f"-max_len={max_len}",
        f"-artifact_prefix={crashes}/{name}-", "-print_final_stats=1",
    ]
    log = HERE / "corpus" / f"{name}.log"
    t0 = time.time()
    with open(log, "w") as out:
        proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    text = log.read_text(errors="replace")
    execs = _STAT.search(text)
    new = sorted(set(crashes.iterdir()) - before)
    return {"harness": name, "seconds": round(time.time() - t0), "execs": int(execs.group(1)) if execs else None,
            "exit": proc.returncode, "findings": [str(p) for p in new], "log": str(log),
            "corpus": len(list(work.iterdir()))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=int, default=int(os.environ.get("FUZZ_SECONDS", "60")),
                    help="per harness (default: $FUZZ_SECONDS or 60)")
    ap.add_argument("--only", default=",".join(HARNESSES), help="comma-separated harness names")
    ap.add_argument("--no-seeds", action="store_true", help="do not (re)build fuzz/seeds/")
    args = ap.parse_args(argv)
    try:
        import atheris  # noqa: F401
    except ImportError:
        print("fuzz: atheris is not installed (pip install atheris; it is in the 'dev' extra)", file=sys.stderr)
        return 2
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in HARNESSES]
    if unknown:
        ap.error(f"unknown harness {unknown}; known: {', '.join(HARNESSES)}")
    seeds = {n: HERE / "seeds" / n for n in HARNESSES} if args.no_seeds else build_seeds()
    failed = False
    for name in names:
        r = run_harness(name, args.seconds, seeds.get(name))
        status = "ok" if r["exit"] == 0 and not r["findings"] else "FOUND SOMETHING"
        print(f"fuzz {name}: {status}: {r['execs']} execs in {r['seconds']} s, corpus {r['corpus']} inputs, "
              f"exit {r['exit']}, log {r['log']}")
        for f in r["findings"]:
            print(f"  finding: {f}  (replay: python fuzz/{HARNESSES[name][0]} {f})")
        failed |= status != "ok"
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
