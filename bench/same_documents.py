"""Are two versions' `analyze --format json` documents the same? (issue 15: memory work must not
change a result)

    python -m bench.same_documents dump OUTDIR FILE...      # one document per capture, this code
    python -m bench.same_documents compare DIR_A DIR_B      # the same names in both, equal?

`dump` runs the `analyze` command itself (its click entry point, in this one process so that 60
small captures do not cost 60 interpreter start-ups) on each file, `--format json -o
OUTDIR/<file name>.json`, with whichever throttledetect is importable (run it once with
PYTHONPATH at the old code, once at the new). `compare` loads each pair, drops timing keys
(TIMING_KEYS, at any depth: none is in the document today, the list guards future ones) and the
seconds in the Wireshark fallback's note (TIMING_TEXT), and compares the rest exactly (floats
included); it prints the first differing paths and exits 1 on any difference or missing document.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

TIMING_KEYS = frozenset({"seconds", "cpu", "cpu_s", "cpu_seconds", "elapsed", "elapsed_s", "wall_s"})
# timing inside a text: the Wireshark fallback's note says how long tshark took ("... in 0.3 s"),
# which differs from one run to the next (read/fallback.py)
TIMING_TEXT = re.compile(r"^(byte \d+: Wireshark fallback .*) in \d+(?:\.\d+)? s$")


def dump(out: Path, files: list[str]) -> int:
    from click.testing import CliRunner
    from throttledetect.cli import cli
    out.mkdir(parents=True, exist_ok=True)
    runner = CliRunner()
    bad = 0
    for f in files:
        target = out / (Path(f).name + ".json")
        r = runner.invoke(cli, ["analyze", f, "--format", "json", "-o", str(target)])
        (out / (Path(f).name + ".rc")).write_text(f"{r.exit_code}\n")
        if r.exit_code not in (0, 1):
            bad += 1
            print(f"{f}: exit {r.exit_code}: {(r.output or '')[-300:]} {r.exception!r}", file=sys.stderr)
    print(f"{len(files)} captures, {bad} failed; documents in {out}")
    return 0


def strip(x):
    if isinstance(x, dict):
        return {k: strip(v) for k, v in x.items() if k not in TIMING_KEYS}
    if isinstance(x, list):
        return [strip(v) for v in x]
    if isinstance(x, str):
        return TIMING_TEXT.sub(r"\1 in (seconds) s", x)
    return x


def differences(a, b, path="", out=None, limit=10):
    out = [] if out is None else out
    if len(out) >= limit:
        return out
    if type(a) is not type(b):
        out.append(f"{path}: {type(a).__name__} != {type(b).__name__}")
    elif isinstance(a, dict):
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                out.append(f"{path}/{k}: only in {'b' if k not in a else 'a'}")
            else:
                differences(a[k], b[k], f"{path}/{k}", out, limit)
    elif isinstance(a, list):
        if len(a) != len(b):
            out.append(f"{path}: {len(a)} != {len(b)} items")
        for i, (x, y) in enumerate(zip(a, b)):
            differences(x, y, f"{path}[{i}]", out, limit)
    elif a != b and not (a != a and b != b):      # NaN equals NaN here
        out.append(f"{path}: {a!r} != {b!r}")
    return out


def compare(da: Path, db: Path) -> int:
    names = sorted({p.name for p in da.glob("*.json")} | {p.name for p in db.glob("*.json")})
    same = 0
    failed = []
    for name in names:
        pa, pb = da / name, db / name
        if not pa.exists() or not pb.exists():
            failed.append(name)
            print(f"{name}: missing in {da if not pa.exists() else db}")
            continue
        rc_a, rc_b = (p.with_suffix(".rc") for p in (pa, pb))
        if rc_a.exists() and rc_b.exists() and rc_a.read_text() != rc_b.read_text():
            failed.append(name)
            print(f"{name}: exit status {rc_a.read_text().strip()} != {rc_b.read_text().strip()}")
            continue
        a, b = (strip(json.loads(p.read_text())) for p in (pa, pb))
        diff = differences(a, b)
        if diff:
            failed.append(name)
            print(f"{name}: DIFFERENT\n  " + "\n  ".join(diff))
        else:
            same += 1
    print(f"{same} of {len(names)} documents identical (timing keys dropped: {sorted(TIMING_KEYS)})")
    return 1 if failed or not names else 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) >= 2 and argv[0] == "dump":
        return dump(Path(argv[1]), argv[2:])
    if len(argv) == 3 and argv[0] == "compare":
        return compare(Path(argv[1]), Path(argv[2]))
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
