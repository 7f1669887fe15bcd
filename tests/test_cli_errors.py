"""The CLI's error paths: every failure is one clear line on stderr and an exit status, never a traceback.

Model files are data only (models/*.json, loaded by throttledetect/classify/tables.py and
domains.py): a broken copy (bad JSON, wrong schema, pickle bytes, deeply nested, huge) pointed to
by THROTTLEDETECT_MODELS must give ModelError in the library, and one line with exit status 2
from `throttledetect classify`.
"""
from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_robustness import ROOT, pcap_file, run_cli
from throttledetect.classify import domains as domains_mod
from throttledetect.classify import tables

MODELS = ROOT / "models"
MODEL_FILES = ("address_ranges.json", "ports.json", "domains.json")
LOADERS = {
    "address_ranges.json": tables.load_address_ranges,
    "ports.json": tables.load_ports,
    "domains.json": domains_mod.load_domains,
}
if (MODELS / "media_model.json").is_file():
    from throttledetect.classify.media_model import load_media_model
    LOADERS["media_model.json"] = load_media_model


@pytest.fixture
def capture(tmp_path) -> Path:
    p = tmp_path / "small.pcap"
    p.write_bytes(pcap_file())
    return p


def _assert_one_error_line(proc, *, exit_code=2, names=()):
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, proc.stderr
    assert proc.returncode == exit_code, (proc.returncode, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("throttledetect: error: "), lines[0]
    for name in names:
        assert str(name) in lines[0], (name, lines[0])
    return lines[0]


# ---------------------------------------------------------------------------------------------
# Broken model files


def _bad_contents(name: str) -> dict[str, bytes]:
    good = json.loads((MODELS / name).read_text())
    wrong_schema = dict(good, schema="throttledetect/something-else/9")
    missing = {k: v for k, v in good.items() if k != "schema"}
    return {
        "bad_json": b'{"schema": "throttledetect/ports/1", "entries": [',
        "empty": b"",
        "not_utf8": b"\xff\xfe{\x00}\x00",
        "wrong_schema": json.dumps(wrong_schema).encode(),
        "missing_schema": json.dumps(missing).encode(),
        "a_list": b"[1, 2, 3]",
        "nan": b'{"schema": NaN}',
        "pickle": pickle.dumps(good, protocol=4),
        "pickle_protocol_0": pickle.dumps({"schema": good["schema"]}, protocol=0),
        "deeply_nested": b"[" * 200_000 + b"]" * 200_000,
        "deeply_nested_objects": b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
        "duplicate_keys": b'{"schema": "x", "schema": "y"}',
    }


def _models_dir(tmp_path: Path, name: str, content: bytes) -> Path:
    d = tmp_path / "models"
    d.mkdir()
    for f in MODEL_FILES:
        shutil.copy(MODELS / f, d / f)
    (d / name).write_bytes(content)
    return d


CASES = [(name, kind) for name in LOADERS for kind in _bad_contents(name)]


@pytest.mark.parametrize("name,kind", CASES, ids=[f"{n.split('.')[0]}-{k}" for n, k in CASES])
def test_bad_model_file_raises_model_error(tmp_path, name, kind):
    path = tmp_path / name
    path.write_bytes(_bad_contents(name)[kind])
    with pytest.raises(tables.ModelError) as e:
        LOADERS[name](path)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg, msg


@pytest.mark.parametrize("name,kind", [(n, k) for n, k in CASES if k in
                                       ("bad_json", "wrong_schema", "pickle", "deeply_nested", "a_list")],
                         ids=lambda v: str(v))
def test_bad_model_file_through_cli(tmp_path, capture, name, kind):
    d = _models_dir(tmp_path, name, _bad_contents(name)[kind])
    proc = run_cli("classify", capture, env={"THROTTLEDETECT_MODELS": str(d)})
    _assert_one_error_line(proc, names=(d / name,))


def test_huge_model_file_through_cli(tmp_path, capture):
    """A 3 GiB file (sparse: it costs no disk) must be refused quickly and in one line, not read whole."""
    d = _models_dir(tmp_path, "ports.json", b"")
    with open(d / "ports.json", "wb") as f:
        f.truncate(3 << 30)
    t0 = time.monotonic()
    proc = run_cli("classify", capture, env={"THROTTLEDETECT_MODELS": str(d)}, timeout=60)
    _assert_one_error_line(proc, names=(d / "ports.json",))
    assert time.monotonic() - t0 < 20


def test_models_variable_naming_no_directory(tmp_path, capture):
    proc = run_cli("classify", capture, env={"THROTTLEDETECT_MODELS": str(tmp_path / "nowhere")})
    _assert_one_error_line(proc, names=("THROTTLEDETECT_MODELS",))


def test_model_files_are_never_unpickled(tmp_path, capture):
    """A pickle whose loading would run code: the loader must refuse it without unpickling."""
    marker = tmp_path / "pwned"

    class Boom:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    d = _models_dir(tmp_path, "address_ranges.json", pickle.dumps(Boom()))
    proc = run_cli("classify", capture, env={"THROTTLEDETECT_MODELS": str(d)})
    assert not marker.exists()
    _assert_one_error_line(proc)


def test_good_models_dir_works(tmp_path, capture):
    d = _models_dir(tmp_path, "ports.json", (MODELS / "ports.json").read_bytes())
    proc = run_cli("classify", capture, env={"THROTTLEDETECT_MODELS": str(d)})
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr


# ---------------------------------------------------------------------------------------------
# Options and outputs


def test_output_into_missing_directory(tmp_path, capture):
    proc = run_cli("flows", capture, "-o", tmp_path / "no" / "such" / "dir" / "out.txt")
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr, proc.stderr
    assert proc.returncode != 0
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


@pytest.mark.parametrize("value", ["1e30", "1e300"])
def test_idle_timeout_out_of_range(capture, value):
    proc = run_cli("flows", "--idle-timeout", value, capture)
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr, proc.stderr
    assert proc.returncode in (0, 2), proc.stderr


@pytest.mark.parametrize("value", ["-5", "nan", "inf", "0"])
def test_idle_timeout_odd_values_no_crash(capture, value):
    proc = run_cli("flows", "--idle-timeout", value, capture)
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr, proc.stderr
    assert proc.returncode in (0, 2), proc.stderr


@pytest.mark.parametrize("args", [
    ["flows", "--local", "300.1.1.1"],
    ["flows", "--format", "xml"],
    ["nosuchcommand"],
    ["flows"],
    ["flows", "--idle-timeout", "soon"],
], ids=lambda a: "-".join(a))
def test_usage_errors_exit_2_without_traceback(capture, args):
    proc = run_cli(*args, *([capture] if args != ["flows"] and args != ["nosuchcommand"] else []))
    line = _assert_one_error_line(proc)
    assert "--help" in line                    # where to look next


def test_bad_max_decompressed_variable(tmp_path):
    import gzip
    p = tmp_path / "a.pcap.gz"
    p.write_bytes(gzip.compress(pcap_file()))
    proc = run_cli("flows", p, env={"THROTTLEDETECT_MAX_DECOMPRESSED": "4G"})
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode in (0, 2)
    assert len(proc.stderr.strip().splitlines()) <= 1, proc.stderr


def test_broken_pipe_is_quiet(tmp_path):
    # Many flows so the output is larger than the pipe buffer; the reader closes after one line.
    p = tmp_path / "many.pcap"
    p.write_bytes(pcap_file(tuple(range(20000, 24000))))
    proc = subprocess.Popen([sys.executable, "-m", "throttledetect", "flows", str(p)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=ROOT)
    proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read().decode()
    rc = proc.wait(timeout=60)
    assert "Traceback" not in err and "BrokenPipe" not in err, err
    assert rc in (0, 1, -signal.SIGPIPE), (rc, err)


def test_internal_error_message_is_one_line(capture):
    """Whatever escapes the library is reported on one line (the numba error for an absurd
    --idle-timeout is many lines long)."""
    proc = run_cli("flows", "--idle-timeout", "1e30", capture)
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) <= 1, proc.stderr
