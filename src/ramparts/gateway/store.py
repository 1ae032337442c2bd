"""The gateway's SQLite file: keys, the request log and each key's PRADA stream.

WAL with `synchronous=NORMAL`: a commit survives a killed process (the WAL is written before COMMIT returns);
an OS crash or power loss may lose the last commits. Writes go through one connection guarded by one lock
(`transaction()`, `BEGIN IMMEDIATE`), so the order of commits is the order PRADA saw the queries in; reads use
one connection per thread. Other processes (`ramparts gateway keys ...`) write the same file safely: SQLite
serialises writers, and the server re-reads a key's row inside its own transaction.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ramparts.errors import invalid
from ramparts.gateway.keys import KeyRecord, check_name, hash_token, new_token

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS keys (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    token_sha256 TEXT NOT NULL UNIQUE,
    output TEXT,
    rate_per_s REAL,
    burst INTEGER,
    budget INTEGER,
    used INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL DEFAULT 'active',
    created_at REAL NOT NULL,
    blocked_at REAL,
    reason TEXT,
    prada_epoch INTEGER NOT NULL DEFAULT 0,
    prada_stats TEXT
);
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY,
    request_id TEXT NOT NULL,
    time REAL NOT NULL,
    key_id INTEGER REFERENCES keys(id),
    route TEXT NOT NULL,
    status INTEGER NOT NULL,
    code TEXT,
    rows INTEGER NOT NULL DEFAULT 0,
    bytes INTEGER NOT NULL DEFAULT 0,
    input_sha256 TEXT,
    inputs BLOB,
    decision TEXT,
    detector_scores TEXT,
    alarm TEXT,
    latency_ms REAL,
    output TEXT
);
CREATE INDEX IF NOT EXISTS requests_key ON requests(key_id, id);
CREATE TABLE IF NOT EXISTS prada_stream (
    id INTEGER PRIMARY KEY,
    key_id INTEGER NOT NULL REFERENCES keys(id),
    epoch INTEGER NOT NULL,
    request INTEGER NOT NULL REFERENCES requests(id),
    rows INTEGER NOT NULL,
    dim INTEGER NOT NULL,
    labels BLOB NOT NULL,
    x BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS prada_stream_key ON prada_stream(key_id, epoch, id);
"""
_KEY_COLUMNS = (
    "id, name, output, rate_per_s, burst, budget, used, state, created_at, blocked_at, reason, prada_epoch"
)


@dataclass(frozen=True)
class LogEntry:
    """One row of the request log (`status` 200 or the 4xx it was refused with)."""

    request_id: str
    route: str
    status: int
    key_id: int | None = None
    code: str | None = None
    rows: int = 0
    body_bytes: int = 0
    input_sha256: list[str] | None = None
    inputs: bytes | None = None
    decision: str | None = None
    detector_scores: list[float] | None = None
    alarm: dict[str, Any] | None = None
    latency_ms: float | None = None
    output: str | None = None


class Transaction:
    """The write side of one `BEGIN IMMEDIATE ... COMMIT`; only `Store.transaction()` makes one."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def key(self, key_id: int) -> KeyRecord:
        row = self._conn.execute(f"SELECT {_KEY_COLUMNS} FROM keys WHERE id = ?", (key_id,)).fetchone()
        if row is None:
            raise invalid("key", key_id, "a key in the database")
        return KeyRecord(*row)

    def insert_log(self, entry: LogEntry) -> int:
        cur = self._conn.execute(
            "INSERT INTO requests (request_id, time, key_id, route, status, code, rows, bytes, input_sha256, "
            "inputs, decision, detector_scores, alarm, latency_ms, output) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                entry.request_id,
                time.time(),
                entry.key_id,
                entry.route,
                entry.status,
                entry.code,
                entry.rows,
                entry.body_bytes,
                None if entry.input_sha256 is None else json.dumps(entry.input_sha256),
                entry.inputs,
                entry.decision,
                None if entry.detector_scores is None else json.dumps(entry.detector_scores),
                None if entry.alarm is None else json.dumps(entry.alarm),
                entry.latency_ms,
                entry.output,
            ),
        )
        return int(cur.lastrowid or 0)

    def append_stream(self, key_id: int, epoch: int, request: int, x: np.ndarray, labels: np.ndarray) -> None:
        """Append a batch of PRADA queries (raw float32 rows and their predicted classes) to the key's stream."""
        flat = np.ascontiguousarray(x, dtype="<f4").reshape(len(x), -1)
        self._conn.execute(
            "INSERT INTO prada_stream (key_id, epoch, request, rows, dim, labels, x) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                key_id,
                epoch,
                request,
                flat.shape[0],
                flat.shape[1],
                np.ascontiguousarray(labels, dtype="<i8").tobytes(),
                flat.tobytes(),
            ),
        )

    def set_prada_stats(self, key_id: int, stats: dict[str, Any]) -> None:
        """Record the key's PRADA figures after this request (what `ramparts gateway log` shows)."""
        self._conn.execute("UPDATE keys SET prada_stats = ? WHERE id = ?", (json.dumps(stats), key_id))

    def add_used(self, key_id: int, rows: int) -> None:
        self._conn.execute("UPDATE keys SET used = used + ? WHERE id = ?", (rows, key_id))

    def block(self, key_id: int, reason: str) -> None:
        self._conn.execute(
            "UPDATE keys SET state = 'blocked', blocked_at = ?, reason = ? WHERE id = ? AND state = 'active'",
            (time.time(), reason, key_id),
        )


class Store:
    """The gateway database at `path` (created with its schema when missing)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if self.path.parent and not self.path.parent.exists():
            raise invalid("db", str(path), "a file in an existing folder", f"create {self.path.parent} first")
        if not self.path.exists():  # owner-only: the file holds PRADA streams (raw inputs) and key hashes
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
        self.lock = threading.RLock()
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._conn = self._connect()
        with self.lock:
            self._conn.executescript(_SCHEMA)
            self._conn.execute(
                "INSERT OR IGNORE INTO meta (name, value) VALUES ('schema_version', ?)",
                (str(SCHEMA_VERSION),),
            )

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        return conn

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
            with self.lock:
                self._readers.append(conn)
        return conn

    def close(self) -> None:
        with self.lock:
            for conn in [*self._readers, self._conn]:
                conn.close()
            self._readers.clear()

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """One write transaction under the store's lock: committed on success, rolled back on any error."""
        with self.lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield Transaction(self._conn)
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    # -- keys ------------------------------------------------------------------------------------------

    def add_key(
        self,
        name: str,
        *,
        output: str | None = None,
        rate_per_s: float | None = None,
        burst: int | None = None,
        budget: int | None = None,
    ) -> tuple[KeyRecord, str]:
        """Create a key; returns its record and the token (shown once, never stored)."""
        check_name(name)
        token = new_token()
        with self.transaction() as tx:
            if tx._conn.execute("SELECT 1 FROM keys WHERE name = ?", (name,)).fetchone():
                raise invalid(
                    "name", name, "a name no other key has", "choose another name, or revoke the old key"
                )
            cur = tx._conn.execute(
                "INSERT INTO keys (name, token_sha256, output, rate_per_s, burst, budget, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (name, hash_token(token), output, rate_per_s, burst, budget, time.time()),
            )
            record = tx.key(int(cur.lastrowid or 0))
        return record, token

    def key_by_token(self, token: str) -> KeyRecord | None:
        row = (
            self._reader()
            .execute(f"SELECT {_KEY_COLUMNS} FROM keys WHERE token_sha256 = ?", (hash_token(token),))
            .fetchone()
        )
        return None if row is None else KeyRecord(*row)

    def key_by_name(self, name: str) -> KeyRecord:
        row = self._reader().execute(f"SELECT {_KEY_COLUMNS} FROM keys WHERE name = ?", (name,)).fetchone()
        if row is None:
            names = ", ".join(k.name for k in self.keys()) or "none yet"
            raise invalid(
                "name", name, f"the name of a key ({names})", "list them with `ramparts gateway keys list`"
            )
        return KeyRecord(*row)

    def keys(self) -> list[KeyRecord]:
        rows = self._reader().execute(f"SELECT {_KEY_COLUMNS} FROM keys ORDER BY id").fetchall()
        return [KeyRecord(*row) for row in rows]

    def revoke(self, name: str) -> KeyRecord:
        """Revoke a key for good (its log and stream stay for the audit)."""
        key = self.key_by_name(name)
        with self.transaction() as tx:
            tx._conn.execute(
                "UPDATE keys SET state = 'revoked', reason = 'revoked by an operator' WHERE id = ?", (key.id,)
            )
            return tx.key(key.id)

    def unblock(self, name: str) -> KeyRecord:
        """Make a blocked (or alarmed) key active again and start its PRADA state afresh (a new epoch)."""
        key = self.key_by_name(name)
        if key.state == "revoked":
            raise invalid("name", name, "a key that is not revoked", "create a new key; revocation is final")
        with self.transaction() as tx:
            tx._conn.execute(
                "UPDATE keys SET state = 'active', blocked_at = NULL, reason = NULL, prada_stats = NULL, "
                "prada_epoch = prada_epoch + 1 WHERE id = ?",
                (key.id,),
            )
            tx._conn.execute("DELETE FROM prada_stream WHERE key_id = ?", (key.id,))
            return tx.key(key.id)

    def prada_stats(self) -> dict[int, dict[str, Any]]:
        """Each key's PRADA figures as of its last committed request (keys PRADA has not seen are absent)."""
        rows = self._reader().execute("SELECT id, prada_stats FROM keys WHERE prada_stats IS NOT NULL")
        return {int(key_id): json.loads(text) for key_id, text in rows.fetchall()}

    def blocked_count(self) -> int:
        return int(self._reader().execute("SELECT COUNT(*) FROM keys WHERE state = 'blocked'").fetchone()[0])

    # -- PRADA stream and log ----------------------------------------------------------------------------

    def stream(self, key_id: int, epoch: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The key's PRADA queries of `epoch` in commit order: (x [n, dim] float32, labels [n] int64) per request."""
        cur = self._reader().execute(
            "SELECT rows, dim, labels, x FROM prada_stream WHERE key_id = ? AND epoch = ? ORDER BY id",
            (key_id, epoch),
        )
        for rows, dim, labels, x in cur:
            yield (
                np.frombuffer(x, dtype="<f4").reshape(rows, dim),
                np.frombuffer(labels, dtype="<i8"),
            )

    def log_rows(self, *, key: str | None = None, last: int | None = None) -> list[dict[str, Any]]:
        """Log rows (oldest first), optionally of one key name and only the last `last`."""
        where, args = "", []
        if key is not None:
            where = "WHERE r.key_id = ?"
            args.append(self.key_by_name(key).id)
        limit = "" if last is None else f"LIMIT {int(last)}"
        rows = self._reader().execute(
            "SELECT r.id, r.request_id, r.time, k.name, r.route, r.status, r.code, r.rows, r.bytes, "
            "r.input_sha256, r.decision, r.detector_scores, r.alarm, r.latency_ms, r.output, r.inputs IS NOT NULL "
            f"FROM requests r LEFT JOIN keys k ON k.id = r.key_id {where} ORDER BY r.id DESC {limit}",
            args,
        )
        out = []
        for row in rows.fetchall():
            out.append(
                {
                    "id": row[0],
                    "request_id": row[1],
                    "time": row[2],
                    "key": row[3],
                    "route": row[4],
                    "status": row[5],
                    "code": row[6],
                    "rows": row[7],
                    "bytes": row[8],
                    "input_sha256": None if row[9] is None else json.loads(row[9]),
                    "decision": row[10],
                    "detector_scores": None if row[11] is None else json.loads(row[11]),
                    "alarm": None if row[12] is None else json.loads(row[12]),
                    "latency_ms": row[13],
                    "output": row[14],
                    "inputs_kept": bool(row[15]),
                }
            )
        return out[::-1]

    def count_rows(self) -> int:
        return int(self._reader().execute("SELECT COUNT(*) FROM requests").fetchone()[0])

    def log_stats(self) -> list[tuple[int | None, int, str | None, int, bool, float | None, float]]:
        """(key id, status, decision, rows, alarm?, latency ms, time) of every log row, oldest first."""
        rows = self._reader().execute(
            "SELECT key_id, status, decision, rows, alarm IS NOT NULL, latency_ms, time FROM requests ORDER BY id"
        )
        return [(r[0], r[1], r[2], r[3], bool(r[4]), r[5], r[6]) for r in rows.fetchall()]


__all__ = ["SCHEMA_VERSION", "LogEntry", "Store", "Transaction"]
