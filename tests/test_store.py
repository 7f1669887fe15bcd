"""The results database (analyze --db, history): one row set per capture, updated on re-analysis,
tags, summaries, and a versioned schema that migrates forward and refuses what it does not know."""
from __future__ import annotations

import json
import shutil
import sqlite3

import pytest

import throttledetect
from tests.test_robustness import ROOT, run_cli
from throttledetect import store as store_mod
from throttledetect.store import Store, StoreError

POLICED = ROOT / "captures" / "call_policed.pcap"
CLEAN = ROOT / "captures" / "call_clean.pcap"


@pytest.fixture(scope="module")
def reports():
    return {"policed": throttledetect.analyze(POLICED), "clean": throttledetect.analyze(CLEAN)}


def _rows(db):
    with Store(db, create=False) as s:
        return s.results(), s.capture_count()


def test_record_and_read_back(tmp_path, reports):
    db = tmp_path / "r.sqlite"
    reports["policed"].save(db, {"isp": "acme", "city": "Kazan"}, {"alpha": 0.01})
    rows, n = _rows(db)
    assert n == 1
    web = next(r for r in rows if r.protocol == "webrtc")
    assert web.verdict == "policing" and web.kinds == ["policing"]
    assert web.rate_bps == pytest.approx(358_000, rel=0.01)
    assert web.tags == {"isp": "acme", "city": "Kazan"}
    assert 0.2 < web.loss_to_you < 0.5 and web.median_rate_to_you_bps > 100_000
    assert web.day == "2026-11-23"                          # the day of the capture, not of the analysis


def test_reanalysis_updates_never_duplicates(tmp_path, reports):
    db = tmp_path / "r.sqlite"
    reports["policed"].save(db, {"isp": "acme"})
    reports["policed"].save(db, {"isp": "other", "city": "Ufa"})
    rows, n = _rows(db)
    assert n == 1 and len([r for r in rows if r.protocol == "webrtc"]) == 1
    assert rows[0].tags == {"isp": "other", "city": "Ufa"}
    # the same bytes under another name are the same capture
    copy = tmp_path / "renamed.pcap"
    shutil.copy(POLICED, copy)
    throttledetect.analyze(copy).save(db)
    rows, n = _rows(db)
    assert n == 1 and rows[0].path == str(copy)


def test_history_by_tag_day_and_protocol(tmp_path):
    db = tmp_path / "h.sqlite"
    for capture, isp in ((POLICED, "acme"), (CLEAN, "beta")):
        proc = run_cli("analyze", capture, "--db", db, "--tag", f"isp={isp}")
        assert proc.returncode == 0, proc.stderr
    by_isp = json.loads(run_cli("history", "--db", db, "--by", "isp", "--format", "json").stdout)["rows"]
    got = {(r["group"], r["protocol"]): r for r in by_isp}
    assert got[("acme", "webrtc")]["throttled"] == 1 and got[("acme", "webrtc")]["verdicts"] == {"policing": 1}
    assert got[("beta", "webrtc")]["throttled"] == 0 and got[("beta", "webrtc")]["verdicts"] == {"none": 1}
    by_proto = json.loads(run_cli("history", "--db", db, "--by", "protocol", "--format", "json").stdout)["rows"]
    web = next(r for r in by_proto if r["protocol"] == "webrtc")
    assert web["captures"] == 2 and web["throttled"] == 1
    by_day = json.loads(run_cli("history", "--db", db, "--by", "day", "--format", "json").stdout)["rows"]
    assert {r["group"] for r in by_day} == {"2026-11-23"}
    table = run_cli("history", "--db", db)
    assert table.returncode == 0 and "isp=acme" in table.stdout and "policing" in table.stdout
    only = json.loads(run_cli("history", "--db", db, "--tag", "isp=beta", "--format", "json").stdout)["rows"]
    assert {r["verdict"] for r in only} == {"none"}
    csv_out = run_cli("history", "--db", db, "--by", "isp", "--format", "csv").stdout
    assert csv_out.startswith("group,protocol,captures,throttled")


def test_history_of_a_missing_or_foreign_file_is_one_line(tmp_path):
    proc = run_cli("history", "--db", tmp_path / "none.sqlite")
    assert proc.returncode == 2 and "no such database" in proc.stderr and len(proc.stderr.splitlines()) == 1
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not sqlite" * 100)
    proc = run_cli("history", "--db", junk)
    assert proc.returncode == 2 and "not an SQLite database" in proc.stderr
    other = tmp_path / "other.sqlite"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.commit()
    proc = run_cli("history", "--db", other)
    assert proc.returncode == 2 and "not a throttledetect one" in proc.stderr


def test_newer_schema_is_refused_not_damaged(tmp_path):
    db = tmp_path / "new.sqlite"
    Store(db).close()
    con = sqlite3.connect(db)
    con.execute(f"PRAGMA user_version = {store_mod.SCHEMA_VERSION + 1}")
    con.commit()
    con.close()
    before = db.read_bytes()
    with pytest.raises(StoreError, match="newer"):
        Store(db)
    assert db.read_bytes() == before


def test_an_older_database_is_migrated_in_place(tmp_path, reports, monkeypatch):
    """A database written at the current version gains a later version's step when opened by code
    that has one; the rows survive and the version says so."""
    db = tmp_path / "old.sqlite"
    reports["clean"].save(db, {"isp": "acme"})

    def add_notes(con):
        con.execute("ALTER TABLE captures ADD COLUMN notes TEXT DEFAULT ''")
    monkeypatch.setattr(store_mod, "MIGRATIONS", store_mod.MIGRATIONS + [add_notes])
    monkeypatch.setattr(store_mod, "SCHEMA_VERSION", len(store_mod.MIGRATIONS))
    with Store(db) as s:
        assert s.version == store_mod.SCHEMA_VERSION
        assert [r.tags for r in s.results()][0] == {"isp": "acme"}
        assert s.db.execute("SELECT notes FROM captures").fetchone() == ("",)


def test_a_failing_migration_leaves_the_database_as_it_was(tmp_path, reports, monkeypatch):
    db = tmp_path / "old.sqlite"
    reports["clean"].save(db)

    def broken(con):
        con.execute("ALTER TABLE captures ADD COLUMN half TEXT")
        raise sqlite3.OperationalError("disk I/O error")
    monkeypatch.setattr(store_mod, "MIGRATIONS", store_mod.MIGRATIONS + [broken])
    monkeypatch.setattr(store_mod, "SCHEMA_VERSION", len(store_mod.MIGRATIONS))
    with pytest.raises(StoreError):
        Store(db)
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA user_version").fetchone()[0] == 1
    assert "half" not in [c[1] for c in con.execute("PRAGMA table_info(captures)")]
