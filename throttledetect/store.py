"""The results database: each capture's per-protocol verdicts and figures, with tags, over time.

    throttledetect analyze day1/*.pcap --db results.sqlite --tag isp=acme --tag city=Kazan
    throttledetect history --db results.sqlite --by isp

SQLite, one file, no server. A capture is known by the SHA-256 of its (decompressed) bytes, so
analysing it again (a newer version, other options, a renamed file) updates its rows instead of
adding a second copy; tags given again replace the values of the same keys. The schema carries
its version in `PRAGMA user_version`; opening an older database upgrades it in place by the steps
in MIGRATIONS (in one transaction), and a database from a newer throttledetect is refused rather
than damaged.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import sqlite3
from dataclasses import dataclass

SCHEMA_V1 = """
CREATE TABLE captures (
    id           INTEGER PRIMARY KEY,
    fingerprint  TEXT NOT NULL UNIQUE,      -- sha256 of the capture's bytes (decompressed)
    path         TEXT NOT NULL,             -- as last given
    first_ts     REAL,                      -- epoch seconds of the first and last packet
    last_ts      REAL,
    packets      INTEGER NOT NULL,
    bytes        INTEGER NOT NULL,
    analysed_at  TEXT NOT NULL,             -- UTC, ISO 8601
    tool_version TEXT NOT NULL,
    settings     TEXT NOT NULL              -- JSON: the analysis options
);
CREATE TABLE tags (
    capture_id INTEGER NOT NULL REFERENCES captures(id) ON DELETE CASCADE,
    key        TEXT NOT NULL,
    value      TEXT NOT NULL,
    PRIMARY KEY (capture_id, key)
);
CREATE TABLE protocol_results (
    capture_id         INTEGER NOT NULL REFERENCES captures(id) ON DELETE CASCADE,
    protocol           TEXT NOT NULL,
    flows              INTEGER NOT NULL,
    packets            INTEGER NOT NULL,
    bytes              INTEGER NOT NULL,
    verdict            TEXT,                -- shaping policing dropping blocking none inconclusive untested
    kinds              TEXT NOT NULL,       -- space-separated throttling kinds detected
    rate_bps           REAL,                -- the policing/shaping rate, when measured
    median_rate_to_you_bps REAL,            -- throughput toward the capturing host, median per bin
    loss_to_you        REAL,                -- RTP (or TCP retransmission) loss toward the capturing host
    jitter_to_you_ms   REAL,
    summary            TEXT,
    PRIMARY KEY (capture_id, protocol)
);
CREATE INDEX tags_by_key ON tags (key, value);
"""



def _statements(db: sqlite3.Connection, script: str) -> None:
    # not executescript(): it commits first, and a migration must be one transaction
    for statement in script.split(";"):
        if statement.strip():
            db.execute(statement)


# MIGRATIONS[k] takes a database at version k to version k + 1 (all steps run in one transaction).
MIGRATIONS: list = [
    lambda db: _statements(db, SCHEMA_V1),
]
SCHEMA_VERSION = len(MIGRATIONS)
THROTTLING_KINDS = ("shaping", "policing", "dropping", "blocking")


class StoreError(Exception):
    """The database cannot be used: one line naming the file."""


@dataclass
class ResultRow:
    capture_id: int
    path: str
    day: str | None
    tags: dict
    protocol: str
    verdict: str | None
    kinds: list
    rate_bps: float | None
    median_rate_to_you_bps: float | None
    loss_to_you: float | None
    jitter_to_you_ms: float | None
    flows: int
    analysed_at: str


class Store:
    def __init__(self, path: str | os.PathLike, *, create: bool = True):
        self.path = os.fspath(path)
        if not create and not os.path.isfile(self.path):
            raise StoreError(f"{self.path}: no such database (analyze ... --db {self.path} makes one)")
        try:
            self.db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
            self.db.execute("PRAGMA foreign_keys = ON")
            self._migrate()
        except sqlite3.Error as e:
            raise StoreError(f"{self.path}: {_why(e)}") from None

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.db.close()

    @property
    def version(self) -> int:
        return int(self.db.execute("PRAGMA user_version").fetchone()[0])

    def _migrate(self) -> None:
        version = self.version
        if version > SCHEMA_VERSION:
            raise StoreError(f"{self.path}: database schema version {version} is newer than this throttledetect "
                             f"understands ({SCHEMA_VERSION}); use a newer throttledetect")
        if version == 0 and self.db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
            raise StoreError(f"{self.path}: an SQLite database, but not a throttledetect one")
        if version == SCHEMA_VERSION:
            return
        self.db.execute("BEGIN IMMEDIATE")
        try:
            for step in range(self.version, SCHEMA_VERSION):
                MIGRATIONS[step](self.db)
                self.db.execute(f"PRAGMA user_version = {step + 1}")
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    # -- writing ------------------------------------------------------------------------------
    def record(self, report, tags: dict, settings: dict) -> list[int]:
        """Store (or update) every capture of an api.Report; returns their ids."""
        from throttledetect import __version__
        from throttledetect.report.build import capture_protocols
        from throttledetect.report.summary import protocol_stats
        now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        ids = []
        try:
            self.db.execute("BEGIN IMMEDIATE")
            for ci, (entry, analysis) in enumerate(zip(report.captures, report.analyses)):
                fp = fingerprint(analysis.capture)
                row = (entry["path"], entry.get("first_ts"), entry.get("last_ts"), int(entry["packets"]),
                       int(entry["bytes"]), now, __version__, json.dumps(settings, sort_keys=True, default=str))
                found = self.db.execute("SELECT id FROM captures WHERE fingerprint = ?", (fp,)).fetchone()
                if found:
                    cid = found[0]
                    self.db.execute("UPDATE captures SET path=?, first_ts=?, last_ts=?, packets=?, bytes=?, "
                                    "analysed_at=?, tool_version=?, settings=? WHERE id=?", row + (cid,))
                    self.db.execute("DELETE FROM protocol_results WHERE capture_id=?", (cid,))
                else:
                    cid = self.db.execute("INSERT INTO captures (fingerprint, path, first_ts, last_ts, packets, bytes, "
                                          "analysed_at, tool_version, settings) VALUES (?,?,?,?,?,?,?,?,?)",
                                          (fp,) + row).lastrowid
                for key, value in tags.items():
                    self.db.execute("INSERT INTO tags (capture_id, key, value) VALUES (?,?,?) "
                                    "ON CONFLICT (capture_id, key) DO UPDATE SET value = excluded.value",
                                    (cid, key, value))
                stats = protocol_stats(report.document, ci)
                for p in capture_protocols(report.document, ci):
                    st = stats.get(p["protocol"])
                    self.db.execute(
                        "INSERT INTO protocol_results VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                        (cid, p["protocol"], p["flows"], p["packets"], p["bytes"], p.get("verdict"),
                         " ".join(p.get("kinds", [])), p.get("rate_bps"), st.median_bps if st else None,
                         st.loss if st else None, st.jitter_ms if st else None, p.get("summary")))
                ids.append(cid)
            self.db.execute("COMMIT")
        except sqlite3.Error as e:
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            raise StoreError(f"{self.path}: {_why(e)}") from None
        except BaseException:
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            raise
        return ids

    # -- reading ------------------------------------------------------------------------------
    def results(self, *, protocol: str | None = None, tags: dict | None = None) -> list[ResultRow]:
        sql = ("SELECT c.id, c.path, c.first_ts, r.protocol, r.verdict, r.kinds, r.rate_bps, "
               "r.median_rate_to_you_bps, r.loss_to_you, r.jitter_to_you_ms, r.flows, c.analysed_at "
               "FROM protocol_results r JOIN captures c ON c.id = r.capture_id")
        where, args = [], []
        if protocol:
            where.append("r.protocol = ?")
            args.append(protocol)
        for key, value in (tags or {}).items():
            where.append("EXISTS (SELECT 1 FROM tags t WHERE t.capture_id = c.id AND t.key = ? AND t.value = ?)")
            args += [key, value]
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY c.first_ts, c.id, r.protocol"
        try:
            rows = self.db.execute(sql, args).fetchall()
            tag_rows = self.db.execute("SELECT capture_id, key, value FROM tags").fetchall()
        except sqlite3.Error as e:
            raise StoreError(f"{self.path}: {_why(e)}") from None
        tag_map: dict[int, dict] = {}
        for cid, k, v in tag_rows:
            tag_map.setdefault(cid, {})[k] = v
        return [ResultRow(capture_id=r[0], path=r[1], day=_day(r[2]), tags=tag_map.get(r[0], {}), protocol=r[3],
                          verdict=r[4], kinds=(r[5] or "").split(), rate_bps=r[6], median_rate_to_you_bps=r[7],
                          loss_to_you=r[8], jitter_to_you_ms=r[9], flows=r[10], analysed_at=r[11]) for r in rows]

    def capture_count(self) -> int:
        return int(self.db.execute("SELECT count(*) FROM captures").fetchone()[0])


def group_results(rows: list[ResultRow], by: str | None) -> list[dict]:
    """Rows summarised per group (a tag key's values, "day", or "protocol") and protocol: how many
    captures, how many of them throttled, the verdicts counted, medians of the figures."""
    import statistics
    groups: dict[tuple, list[ResultRow]] = {}
    for r in rows:
        if by in (None, "protocol"):
            key = ("", r.protocol)
        elif by == "day":
            key = (r.day or "-", r.protocol)
        else:
            key = (r.tags.get(by, "(untagged)"), r.protocol)
        groups.setdefault(key, []).append(r)

    def median(values):
        values = [v for v in values if v is not None]
        return statistics.median(values) if values else None

    out = []
    for (value, protocol), rs in sorted(groups.items()):
        verdicts: dict[str, int] = {}
        for r in rs:
            verdicts[r.verdict or "-"] = verdicts.get(r.verdict or "-", 0) + 1
        out.append({"group": value, "protocol": protocol, "captures": len({r.capture_id for r in rs}),
                    "throttled": len({r.capture_id for r in rs if r.verdict in THROTTLING_KINDS}),
                    "verdicts": dict(sorted(verdicts.items(), key=lambda kv: (-kv[1], kv[0]))),
                    "median_rate_bps": median(r.rate_bps for r in rs),
                    "median_rate_to_you_bps": median(r.median_rate_to_you_bps for r in rs),
                    "median_loss_to_you": median(r.loss_to_you for r in rs),
                    "median_jitter_to_you_ms": median(r.jitter_to_you_ms for r in rs)})
    return out


def fingerprint(capture) -> str:
    """SHA-256 of the capture's bytes as read (after decompression): the same packets, the same id."""
    h = hashlib.sha256()
    buf = capture.buffer
    step = 1 << 24
    for start in range(0, len(buf), step):
        h.update(memoryview(buf[start:start + step]))
    return h.hexdigest()


def _day(ts: float | None) -> str | None:
    if ts is None:
        return None
    return _dt.datetime.fromtimestamp(ts, _dt.timezone.utc).strftime("%Y-%m-%d")


def _why(e: sqlite3.Error) -> str:
    msg = str(e)
    if "not a database" in msg:
        return "not an SQLite database (a throttledetect --db file is one)"
    if "locked" in msg:
        return "the database is locked by another process (tried for 30 s)"
    if "readonly" in msg or "read-only" in msg:
        return "cannot write: the database or its folder is read-only"
    return msg
