"""Options and outputs are checked before any work; inputs from files, folders and pipes; exit statuses.

"Before any work" is tested by giving standard input ("-") that never ends: a command that started
reading would hang, one that checks first answers at once with one line.
"""
from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import time

import pytest

from tests.test_robustness import ROOT, pcap_file, run_cli

CAPTURES = ROOT / "captures"
POLICED = CAPTURES / "call_policed.pcap"
CLEAN = CAPTURES / "call_clean.pcap"


def _one_line(proc, exit_code=2) -> str:
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr, proc.stderr
    assert proc.returncode == exit_code, (proc.returncode, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("throttledetect: error: "), proc.stderr
    return lines[0]


def _run_with_endless_stdin(*args, timeout=20):
    """The command with '-' among its inputs and a stdin that stays open: it must not start reading."""
    proc = subprocess.Popen([sys.executable, "-m", "throttledetect", *map(str, args)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise AssertionError(f"{args}: no error before reading the input (still running after {timeout} s)")
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


BAD_OPTIONS = [
    (["analyze", "-", "--idle-timeout", "0"], "--idle-timeout"),
    (["analyze", "-", "--idle-timeout", "-5"], "--idle-timeout"),
    (["analyze", "-", "--idle-timeout", "nan"], "--idle-timeout"),
    (["analyze", "-", "--idle-timeout", "1e30"], "--idle-timeout"),
    (["analyze", "-", "--alpha", "5"], "--alpha"),
    (["analyze", "-", "--alpha", "nan"], "--alpha"),
    (["analyze", "-", "--alpha", "0"], "--alpha"),
    (["analyze", "-", "--bin", "0"], "--bin"),
    (["analyze", "-", "--bin", "nan"], "--bin"),
    (["analyze", "-", "--bin", "1e308"], "--bin"),
    (["analyze", "-", "--bin", "inf"], "--bin"),
    (["analyze", "-", "--local", "10.0.0.0/33"], "--local"),
    (["analyze", "-", "--tag", "isp=x"], "--tag"),                  # tags need --db
    (["analyze", "-", "--db", "db.sqlite", "--tag", "no equals"], "--tag"),
    (["analyze", "-", "-o", "/no/such/folder/out.json"], "/no/such/folder"),
    (["analyze", "-", "--html", "/no/such/folder/r.html"], "/no/such/folder"),
    (["analyze", "-", "-o", "captures"], "directory"),
    (["analyze", "-", "-", "--format", "json"], "only once"),
    (["flows", "-", "--idle-timeout", "0"], "--idle-timeout"),
    (["classify", "-", "--idle-timeout", "inf"], "--idle-timeout"),
    (["simulate", "-", "/tmp/x.pcap", "--drop", "nan"], "--drop"),
]


@pytest.mark.parametrize("args,named", BAD_OPTIONS, ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_bad_option_is_one_line_before_any_work(args, named):
    line = _one_line(_run_with_endless_stdin(*args))
    assert named in line, line


@pytest.mark.parametrize("args,named", [
    (["simulate", str(CLEAN), "OUT", "--onset", "1e308", "--drop", "0.1"], "--onset"),
    (["simulate", str(CLEAN), "OUT", "--loop", "1e9", "--drop", "0.1"], "--loop"),
    (["simulate", str(CLEAN), "OUT", "--police", "1e308k"], "1 Tbit/s"),
    (["simulate", str(CLEAN), "OUT", "--jitter", "1e308"], "--jitter"),
    (["simulate", str(CLEAN), "OUT", "--congest", "--congest-model", "0.1,2,0.4"], "p_bg"),
    (["simulate", str(CLEAN), "OUT", "--drop", "0.1", "--seed", "-1"], "--seed"),
    (["simulate", str(CLEAN), str(CLEAN), "--drop", "0.1"], "overwritten"),
    (["validate", "--seconds", "nan"], "--seconds"),
    (["validate", "--out", "/no/such/folder/v.json"], "/no/such/folder"),
    (["capture", "-i", "lo", "-o", "x.pcap", "--duration", "nan"], "--duration"),
    (["capture", "-i", "lo", "-o", "/no/such/folder/x.pcap"], "/no/such/folder"),
    (["capture", "-i", "lo", "-o", "x.pcap", "--report", "r.json"], "--analyze"),
], ids=lambda v: " ".join(v[2:4]) if isinstance(v, list) else None)
def test_other_commands_check_their_options(tmp_path, args, named):
    args = [str(tmp_path / "out.pcap") if a == "OUT" else a for a in args]
    before = CLEAN.read_bytes()
    line = _one_line(run_cli(*args, timeout=60))
    assert named in line, line
    assert CLEAN.read_bytes() == before


def test_simulate_loop_too_large_is_refused_after_reading_only(tmp_path):
    """--loop within its range but too large for this capture: refused from the capture's size."""
    t0 = time.monotonic()
    line = _one_line(run_cli("simulate", CLEAN, tmp_path / "o.pcap", "--loop", "80000", "--drop", "0.1"))
    assert "copies" in line and "GB" in line
    assert time.monotonic() - t0 < 30
    assert not (tmp_path / "o.pcap").exists()


# ---------------------------------------------------------------------------------------------
# Outputs: never the input, never emptied, written whole


def test_missing_input_leaves_an_existing_report_as_it_was(tmp_path):
    report = tmp_path / "out.json"
    report.write_text('{"previous": "report"}\n')
    line = _one_line(run_cli("analyze", tmp_path / "missing.pcap", "-o", report))
    assert "missing.pcap" in line and "byte 0" in line
    assert report.read_text() == '{"previous": "report"}\n'


def test_report_is_replaced_whole_and_no_temporary_file_is_left(tmp_path):
    report = tmp_path / "out.json"
    report.write_text("old")
    proc = run_cli("analyze", POLICED, "--format", "json", "-o", report)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(report.read_text())["captures"][0]["packets"] == 3178
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_output_through_a_symlink_replaces_its_target(tmp_path):
    target = tmp_path / "real.json"
    target.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    assert run_cli("analyze", CLEAN, "--format", "json", "-o", link).returncode == 0
    assert link.is_symlink() and json.loads(target.read_text())["schema"] == "throttledetect/1"


def test_write_atomic_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    from throttledetect.report import output
    f = tmp_path / "r.txt"
    f.write_text("old")

    def boom(*a):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(output.os, "fsync", boom)
    with pytest.raises(output.OutputError, match="No space left"):
        output.write_atomic(f, "new")
    assert f.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["r.txt"]


# ---------------------------------------------------------------------------------------------
# Inputs: several files, folders, standard input


def test_unreadable_second_file_gives_results_and_exit_2(tmp_path):
    proc = run_cli("analyze", POLICED, tmp_path / "missing.pcap")
    assert proc.returncode == 2, proc.stderr
    assert "call_policed.pcap: 3178 packets" in proc.stdout
    assert "missing.pcap: byte 0: cannot open" in proc.stderr


def test_folder_is_read_recursively_with_a_view_per_capture(tmp_path):
    d = tmp_path / "calls"
    (d / "sub").mkdir(parents=True)
    (d / "a.pcap").write_bytes(CLEAN.read_bytes())
    (d / "sub" / "b.pcap").write_bytes(POLICED.read_bytes())
    (d / "notes.txt").write_text("not a capture")
    (d / "noext").write_bytes(pcap_file())                        # a capture by its first bytes
    proc = run_cli("analyze", d)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "#0 " in out and "a.pcap" in out and "#1 " in out and "noext" in out and "b.pcap" in out
    assert "notes.txt" not in out + proc.stderr
    # the policing of one capture is visible beside the clean one, not merged away
    per_capture = out.split("Per protocol and capture")[1].split("Per protocol, all captures")[0]
    assert "policing" in per_capture and "none" in per_capture
    merged = out.split("Per protocol, all captures together")[1]
    assert "policing in #2" in merged and "none in #0" in merged


def test_empty_folder_is_one_line(tmp_path):
    _one_line(run_cli("analyze", tmp_path))


@pytest.mark.parametrize("compress", ["", "gzip"])
def test_capture_on_a_pipe(compress):
    data = POLICED.read_bytes()
    if compress:
        import gzip
        data = gzip.compress(data)
    proc = subprocess.run([sys.executable, "-m", "throttledetect", "analyze", "-", "--format", "json"], input=data,
                          capture_output=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()
    doc = json.loads(proc.stdout)
    assert doc["captures"][0]["path"] == "<stdin>" and doc["captures"][0]["packets"] == 3178
    assert doc["protocols"][0]["verdict"] == "policing"


def test_stdin_from_a_terminal_or_empty_is_one_line():
    line = _one_line(subprocess.run([sys.executable, "-m", "throttledetect", "flows", "-"], input="",
                                    capture_output=True, text=True, cwd=ROOT, timeout=60))
    assert "<stdin>" in line and "nothing arrived" in line


# ---------------------------------------------------------------------------------------------
# Exit statuses and CSV


@pytest.mark.parametrize("capture,fail_on,expected", [
    (POLICED, "throttled", 1), (CLEAN, "throttled", 0), (POLICED, "never", 0), (CLEAN, "inconclusive", 0),
])
def test_fail_on_exit_status(capture, fail_on, expected):
    proc = run_cli("analyze", capture, "--fail-on", fail_on)
    assert proc.returncode == expected, proc.stderr
    assert "Per protocol" in proc.stdout                          # the results are printed either way


def test_bad_input_wins_over_throttling_found(tmp_path):
    assert run_cli("analyze", POLICED, tmp_path / "nope.pcap", "--fail-on", "throttled").returncode == 2


def test_analyze_csv_has_a_row_per_capture_protocol_and_per_flow():
    proc = run_cli("analyze", POLICED, CLEAN, "--format", "csv")
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(io.StringIO(proc.stdout)))
    prot = [r for r in rows if r["level"] == "protocol" and r["protocol"] == "webrtc"]
    assert {(r["capture"], r["verdict"]) for r in prot} == {("0", "policing"), ("1", "none")}
    flows = [r for r in rows if r["level"] == "flow" and r["verdict"] == "policing"]
    assert len(flows) == 2 and all(float(r["rate_bps"]) > 100_000 for r in flows)
    assert all(r["local_endpoint"].startswith("192.168.88.2:") for r in flows)
    assert all(0 < float(r["loss_to_you"]) < 1 for r in flows)


def test_classify_csv():
    proc = run_cli("classify", CLEAN, "--format", "csv")
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(io.StringIO(proc.stdout)))
    assert len(rows) == 4 and {r["protocol"] for r in rows} >= {"webrtc", "tls"}
    assert all(r["capture_path"].endswith("call_clean.pcap") for r in rows)


def test_help_is_fast_and_imports_no_analysis_stack():
    code = ("import sys, throttledetect.cli; "
            "print(sorted(m for m in ('numba', 'scipy', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_restated_defaults_match_their_sources():
    from throttledetect.commands import options
    from throttledetect.flows import DEFAULT_IDLE_TIMEOUT_S
    assert options.DEFAULT_IDLE_TIMEOUT_S == DEFAULT_IDLE_TIMEOUT_S

