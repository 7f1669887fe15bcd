"""Terminal output: bytes from a capture never reach the terminal raw, and tables fit the width.

The hostile capture is built here: a STUN Binding request whose REALM names Telegram (so the
classifier quotes the realm in its reason) followed by an escape sequence that would retitle the
terminal and turn the text red, a bidirectional override, and HTML. It goes through `analyze`
as a user runs it: table, CSV, JSON and HTML.
"""
from __future__ import annotations

import csv
import io
import json
import struct

import pytest

from tests.test_robustness import eth_udp, pcap_header, pcap_record, run_cli
from throttledetect.report.terminal import sanitize
from throttledetect.report.text import table
from throttledetect.testbed.traffic import stun_message

EVIL_REALM = "telegram\x1b]0;pwned\x07\x1b[31mRED\u202egnp.exe<script>alert(1)</script>"
T0 = 1_700_000_000


def hostile_capture(path) -> None:
    req = stun_message(0x0001, bytes(range(12)), [(0x0014, EVIL_REALM.encode())], None)
    resp = stun_message(0x0101, bytes(range(12)), [(0x0014, EVIL_REALM.encode())], None)
    recs = []
    for k in range(4):
        recs.append(pcap_record(eth_udp(50000, 3478, req), sec=T0 + k))
        frame = eth_udp(50000, 3478, resp)
        # the answer comes back: swap the IPv4 addresses (bytes 26-29 and 30-33 of the frame)
        frame = frame[:26] + frame[30:34] + frame[26:30] + frame[34:]
        frame = frame[:34] + struct.pack("!HH", 3478, 50000) + frame[38:]
        recs.append(pcap_record(frame, sec=T0 + k, frac=1000))
    path.write_bytes(pcap_header() + b"".join(recs))


@pytest.fixture(scope="module")
def evil(tmp_path_factory):
    p = tmp_path_factory.mktemp("evil") / "evil.pcap"
    hostile_capture(p)
    return p


def test_sanitize_shows_controls_instead_of_passing_them():
    s = sanitize(EVIL_REALM)
    assert "\x1b" not in s and "\x07" not in s and "\u202e" not in s
    assert "\\x1b]0;pwned\\x07\\x1b[31mRED\\u202e" in s
    assert sanitize("ok text: ÿ ü 日本") == "ok text: ÿ ü 日本"          # printable Unicode untouched
    assert sanitize("a\nb") == "a\\x0ab" and sanitize("a\nb", keep_newlines=True) == "a\nb"
    assert sanitize("bad \udcff byte") == "bad \\xff byte"             # undecodable byte (surrogateescape)
    assert sanitize("\x9b31m") == "\\x9b31m"                           # C1 CSI


def test_classify_quotes_the_realm(evil):
    proc = run_cli("classify", evil, env={"COLUMNS": "400"})
    assert proc.returncode == 0, proc.stderr
    assert "realm telegram\\x1b]0;pwned" in proc.stdout                            # the test below is not vacuous


@pytest.mark.parametrize("command", [["analyze"], ["classify"], ["flows"]])
def test_no_raw_escape_reaches_the_terminal(evil, command):
    proc = run_cli(*command, evil)
    assert proc.returncode == 0, proc.stderr
    for stream in (proc.stdout, proc.stderr):
        assert "\x1b" not in stream and "\x07" not in stream and "\u202e" not in stream


def test_escaped_in_json_csv_and_html(evil, tmp_path):
    out_json, out_csv, out_html = tmp_path / "r.json", tmp_path / "r.csv", tmp_path / "r.html"
    assert run_cli("analyze", evil, "--format", "json", "-o", out_json).returncode == 0
    assert run_cli("analyze", evil, "--format", "csv", "-o", out_csv, "--html", out_html).returncode == 0
    doc = json.loads(out_json.read_text())
    assert any(EVIL_REALM in f["reason"] for f in doc["flows"])       # data kept exact in JSON
    html = out_html.read_text()
    assert "<script>" not in html and "&lt;script&gt;" in html
    rows = list(csv.DictReader(io.StringIO(out_csv.read_text())))
    assert rows and all(not (v or "").startswith(("=", "+", "@")) for r in rows for v in r.values())


def test_csv_cells_that_a_spreadsheet_would_run_are_defused():
    from throttledetect.report.csvout import write_rows
    text = write_rows(["a", "b"], [{"a": "=HYPERLINK(\"http://x\")", "b": -3}])
    row = next(csv.DictReader(io.StringIO(text)))
    assert row["a"].startswith("'=") and row["b"] == "-3"             # numbers stay numbers


def test_table_wraps_long_text_to_the_width_and_keeps_every_word():
    why = "RTP: 1458 packets in 2 stream(s), payload types [111], and a long explanation that goes on " * 2
    rows = [["0:1", "192.168.88.2:50102", 1499, why], ["0:2", "10.0.0.1:5", 7, "short"]]
    for width in (60, 80, 120):
        text = table(["id", "local", "pkts", "why"], rows, width=width, wrap=("why",))
        assert max(len(line) for line in text.splitlines()) <= width
        assert " ".join(text.split()).count("a long explanation that goes on") == 2    # nothing cut
    wide = table(["id", "local", "pkts", "why"], rows)
    assert len(wide.splitlines()) == 4                                 # no width: one line per row


def test_analyze_fits_the_given_width(tmp_path):
    from pathlib import Path
    sample = Path(__file__).resolve().parents[1] / "captures" / "call_policed.pcap"
    for cols in ("70", "100"):
        proc = run_cli("analyze", sample, env={"COLUMNS": cols})
        assert proc.returncode == 0
        assert max(len(line) for line in proc.stdout.splitlines()) <= int(cols), proc.stdout
