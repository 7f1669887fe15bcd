"""The HTML report: self-contained, every call flow with its figures, and it renders in a real browser.

The browser test opens the report in headless Chromium (Debian `chromium`, installed by `make
tools`) in a window as narrow as Chromium allows (about 500 px; the report's phone layout applies
below 640 px), with a checking script added to a copy of the report (the report itself
has no script): every figure must be decoded by the browser and laid out with a width, the verdict
table must be there with its rows, and nothing may push the page wider than the screen. It skips
with the reason when Chromium is absent, and fails then under THROTTLEDETECT_REQUIRE_CHROMIUM=1 (CI).
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from tests.test_robustness import ROOT, run_cli

pytest.importorskip("matplotlib")

CAPTURES = ROOT / "captures"
CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
need_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (make tools installs it as root)")

PHONE = (390, 844)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("html") / "report.html"
    proc = run_cli("analyze", CAPTURES / "call_policed.pcap", CAPTURES / "call_shaped.pcap", "--html", out,
                   timeout=180)
    assert proc.returncode == 0, proc.stderr
    return out


def test_self_contained_without_scripts_or_network(report):
    html = report.read_text()
    assert "<script" not in html.lower()
    refs = re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', html)
    assert refs and all(r.startswith("data:image/png;base64,") or r.startswith("#") for r in refs), refs
    assert 'name="viewport"' in html
    assert "@import" not in html and "url(" not in html


def test_verdicts_first_then_each_call_with_its_figures(report):
    html = report.read_text()
    assert html.index("Verdicts per protocol") < html.index("Call flows")
    sections = re.findall(r'<section class="flow" id="flow-([0-9:]+)">(.*?)</section>', html, re.S)
    assert sorted(s[0] for s in sections) == ["0:2", "0:3", "1:2", "1:3"]
    assert [s[0][0] for s in sections] == ["0", "0", "1", "1"]          # grouped by capture
    for fid, body in sections:
        alts = re.findall(r'<img alt="([^"]*)"', body)
        assert any(a.startswith("Rate to and from you") for a in alts), fid
        assert any(a.startswith("Time between consecutive packets") for a in alts), fid
        assert any(a.startswith("Relative one-way delay") for a in alts), fid
        assert "<table class=\"cards tests\">" in body
    policed = dict(sections)
    for fid in ("0:2", "0:3"):                       # policing: the token bucket is drawn
        assert "Bytes arrived to you minus rate" in policed[fid] and "policing" in policed[fid]
    assert "Bytes arrived to you minus rate" not in policed["1:2"]      # shaping: no bucket fitted
    assert html.count("<img") == 14
    assert len(html) < 2_000_000


@need_chromium
def test_renders_in_a_browser_at_phone_size(report, tmp_path):
    probe = tmp_path / "probe.html"
    checker = """<script>
window.addEventListener('load', () => {
  const imgs = [...document.images];
  const drawn = imgs.filter(i => i.complete && i.naturalWidth > 0 && i.getBoundingClientRect().width > 0);
  const table = document.querySelector('table.protocols');
  const rows = table ? [...table.querySelectorAll('tbody tr')] : [];
  const out = document.createElement('pre');
  out.id = 'probe-result';
  out.textContent = JSON.stringify({
    images: imgs.length, drawn: drawn.length,
    maxImageWidth: Math.max(...drawn.map(i => i.getBoundingClientRect().width)),
    rows: rows.length, rowsShown: rows.filter(r => r.getBoundingClientRect().height > 0).length,
    firstVerdict: rows.length ? rows[0].querySelector('.v').textContent : null,
    pageWidth: document.documentElement.scrollWidth, viewport: window.innerWidth});
  document.body.appendChild(out);
});
</script></body>"""
    probe.write_text(report.read_text().replace("</body>", checker))
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
           f"--user-data-dir={tmp_path / 'profile'}", f"--window-size={PHONE[0]},{PHONE[1]}",
           "--virtual-time-budget=10000", "--dump-dom", probe.as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    m = re.search(r'<pre id="probe-result">(.*?)</pre>', proc.stdout, re.S)
    assert m, f"chromium gave no result (exit {proc.returncode}): {proc.stderr[-800:]}"
    got = json.loads(m.group(1).replace("&quot;", '"'))
    assert got["images"] == 14 and got["drawn"] == 14, got
    assert got["rows"] == 3 and got["rowsShown"] == 3 and got["firstVerdict"] == "policing", got
    assert got["viewport"] <= 640, got                      # the phone layout (tables as cards) was in use
    assert got["pageWidth"] <= got["viewport"], got         # nothing wider than the screen
    assert got["maxImageWidth"] <= got["viewport"], got


def test_a_figure_that_fails_is_reported_and_the_rest_stands(monkeypatch):
    import throttledetect
    from throttledetect.report import figures

    def broken(*args):
        raise ValueError("boom")
    report = throttledetect.analyze(CAPTURES / "call_policed.pcap")
    monkeypatch.setattr(figures, "delay", broken)
    html = report.to_html()
    assert html.count("A figure could not be drawn (ValueError: boom)") == 2      # one per call flow
    assert html.count("<img") == 6                                                # the other 3 figures of each
