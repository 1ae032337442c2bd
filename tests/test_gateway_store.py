"""The gateway's SQLite store (keys hashed, transactions, PRADA streams, unblock epochs), the token bucket, and the
`ramparts gateway keys` / `gateway log` commands on it."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from ramparts.cli.main import app
from ramparts.errors import ValidationError
from ramparts.gateway.keys import TOKEN_PATTERN, hash_token
from ramparts.gateway.limits import RateLimiter, retry_after_header
from ramparts.gateway.logview import summarize
from ramparts.gateway.store import LogEntry, Store

runner = CliRunner(env={"COLUMNS": "240", "NO_COLOR": "1"})


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "g.db")


def test_keys_are_random_tokens_stored_only_as_their_sha256(store: Store, tmp_path: Path) -> None:
    key, token = store.add_key("alice", output="topk:3", budget=10)
    other, token2 = store.add_key("bob")
    assert TOKEN_PATTERN.fullmatch(token)
    assert TOKEN_PATTERN.fullmatch(token2)
    assert token != token2
    assert (key.output, key.budget, key.rate_per_s, key.state, key.used) == ("topk:3", 10, None, "active", 0)
    assert store.key_by_token(token) == key
    assert store.key_by_token(token + "x") is None
    assert (tmp_path / "g.db").stat().st_mode & 0o777 == 0o600  # raw inputs and key hashes: owner only
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("g.db*"))
    assert token.encode() not in raw  # the token itself is nowhere in the file
    stored = (
        sqlite3.connect(tmp_path / "g.db").execute("SELECT token_sha256 FROM keys ORDER BY id").fetchall()
    )
    assert stored[0][0] == hashlib.sha256(token.encode()).hexdigest() == hash_token(token)
    with pytest.raises(ValidationError, match="name: expected a name no other key has"):
        store.add_key("alice")
    with pytest.raises(ValidationError, match="name: expected 1-64 characters"):
        store.add_key("no spaces")
    with pytest.raises(ValidationError, match=r"name: expected the name of a key \(alice, bob\)"):
        store.key_by_name("carol")
    assert other.name == "bob"


def test_transactions_commit_together_or_not_at_all(store: Store) -> None:
    key, _ = store.add_key("alice")
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    with store.transaction() as tx:
        log_id = tx.insert_log(LogEntry("r1", "/v1/predict", 200, key_id=key.id, rows=3, decision="ok"))
        tx.append_stream(key.id, 0, log_id, x, np.array([1, 2, 1]))
        tx.add_used(key.id, 3)

    def failing() -> None:
        with store.transaction() as tx:
            log_id = tx.insert_log(LogEntry("r2", "/v1/predict", 200, key_id=key.id, rows=1))
            tx.append_stream(key.id, 0, log_id, x[:1], np.array([0]))
            tx.add_used(key.id, 1)
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        failing()
    assert [r["request_id"] for r in store.log_rows()] == ["r1"]
    assert store.key_by_name("alice").used == 3
    (stream_x, labels), *rest = list(store.stream(key.id, 0))
    assert not rest
    assert np.array_equal(stream_x, x)
    assert labels.tolist() == [1, 2, 1]
    assert list(store.stream(key.id, 1)) == []


def test_unblock_starts_a_new_prada_epoch_and_revoke_is_final(store: Store) -> None:
    key, _ = store.add_key("mallory")
    with store.transaction() as tx:
        log_id = tx.insert_log(LogEntry("r1", "/v1/predict", 200, key_id=key.id, rows=1))
        tx.append_stream(key.id, 0, log_id, np.zeros((1, 4), np.float32), np.array([3]))
        tx.set_prada_stats(key.id, {"queries": 1})
        tx.block(key.id, "PRADA alarm")
    blocked = store.key_by_name("mallory")
    assert blocked.state == "blocked"
    assert blocked.reason == "PRADA alarm"
    assert blocked.blocked_at is not None
    assert store.blocked_count() == 1
    assert store.prada_stats() == {key.id: {"queries": 1}}
    unblocked = store.unblock("mallory")
    assert (unblocked.state, unblocked.blocked_at, unblocked.prada_epoch) == ("active", None, 1)
    assert list(store.stream(key.id, 0)) == []
    assert store.prada_stats() == {}
    assert store.revoke("mallory").state == "revoked"
    with pytest.raises(ValidationError, match="revocation is final"):
        store.unblock("mallory")


def test_token_bucket_refills_at_its_rate_and_says_how_long_to_wait() -> None:
    now = [100.0]
    limiter = RateLimiter(clock=lambda: now[0])
    assert [limiter.take(1, 2.0, 3) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take(1, 2.0, 3) == pytest.approx(0.5)
    assert limiter.take(2, 2.0, 3) == 0.0  # buckets are per key
    now[0] += 0.5
    assert limiter.take(1, 2.0, 3) == 0.0
    assert limiter.take(1, 2.0, 3) > 0
    assert retry_after_header(0.01) == "1"
    assert retry_after_header(2.2) == "3"


def test_keys_commands_add_list_revoke_unblock(tmp_path: Path) -> None:
    db = tmp_path / "cli.db"
    added = runner.invoke(
        app,
        [
            "gateway",
            "keys",
            "add",
            "alice",
            "--output",
            "topk:3",
            "--rate",
            "10",
            "--budget",
            "100",
            "--db",
            str(db),
        ],
    )
    assert added.exit_code == 0, added.output
    tokens = TOKEN_PATTERN.findall(added.output)
    assert len(tokens) == 1  # printed once, in full
    as_json = runner.invoke(app, ["gateway", "keys", "add", "bob", "--db", str(db), "--json"])
    bob = json.loads(as_json.stdout)
    assert TOKEN_PATTERN.fullmatch(bob["token"])
    assert bob["output"] is None
    listed = runner.invoke(app, ["gateway", "keys", "list", "--db", str(db), "--json"])
    rows = {k["name"]: k for k in json.loads(listed.stdout)}
    assert rows["alice"]["output"] == "topk:3"
    assert rows["alice"]["rate_per_s"] == 10.0
    assert rows["alice"]["budget"] == 100
    assert "token" not in rows["alice"]
    table = runner.invoke(app, ["gateway", "keys", "list", "--db", str(db)])
    assert "alice" in table.output
    assert "topk:3" in table.output
    assert tokens[0] not in table.output
    bad = runner.invoke(app, ["gateway", "keys", "add", "carol", "--output", "fuzzy", "--db", str(db)])
    assert bad.exit_code == 2
    assert "--output: expected an output mode" in bad.output
    assert runner.invoke(app, ["gateway", "keys", "revoke", "alice", "--db", str(db)]).exit_code == 0
    assert Store(db).key_by_name("alice").state == "revoked"
    refused = runner.invoke(app, ["gateway", "keys", "unblock", "alice", "--db", str(db)])
    assert refused.exit_code == 2
    assert "revocation is final" in refused.output
    unblocked = runner.invoke(app, ["gateway", "keys", "unblock", "bob", "--db", str(db), "--json"])
    assert json.loads(unblocked.stdout)["state"] == "active"
    missing = runner.invoke(app, ["gateway", "keys", "list", "--db", str(tmp_path / "none.db")])
    assert missing.exit_code == 2
    assert "--db: expected an existing gateway database" in missing.output


def test_log_command_summarises_per_key_and_lists_the_last_requests(tmp_path: Path) -> None:
    db = tmp_path / "log.db"
    store = Store(db)
    alice, _ = store.add_key("alice")
    bob, _ = store.add_key("bob")
    with store.transaction() as tx:
        for i, latency in enumerate([1.0, 2.0, 3.0, 10.0]):
            decision = "alert" if i == 3 else "ok"
            alarm = {"statistic": 0.5, "delta": 0.9} if i == 3 else None
            tx.insert_log(
                LogEntry(
                    f"a{i}",
                    "/v1/predict",
                    200,
                    key_id=alice.id,
                    rows=5,
                    decision=decision,
                    alarm=alarm,
                    latency_ms=latency,
                )
            )
        tx.insert_log(LogEntry("b0", "/v1/predict", 429, key_id=bob.id, code="rate_limited"))
        tx.insert_log(LogEntry("x0", "/v1/predict", 401, code="unknown_key"))
    summary = summarize(store, last=3)
    keys = {k["name"]: k for k in summary["keys"]}
    assert keys["alice"]["requests"] == 4
    assert keys["alice"]["rows"] == 20
    assert keys["alice"]["alarms"] == 1
    assert keys["alice"]["decisions"] == {"ok": 3, "alert": 1}
    assert keys["alice"]["latency_ms_p50"] == pytest.approx(2.5)
    assert keys["alice"]["latency_ms_p99"] == pytest.approx(np.percentile([1, 2, 3, 10], 99))
    assert keys["bob"]["statuses"] == {"429": 1}
    assert keys["bob"]["rows"] == 0
    assert [r["request_id"] for r in summary["requests"]] == ["a3", "b0", "x0"]
    assert summary["requests"][-1]["key"] is None
    store.close()
    result = runner.invoke(
        app, ["gateway", "log", "--db", str(db), "--key", "alice", "--last", "2", "--json"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [k["name"] for k in data["keys"]] == ["alice"]
    assert [r["request_id"] for r in data["requests"]] == ["a2", "a3"]
    assert data["requests"][-1]["alarm"]["statistic"] == 0.5
    table = runner.invoke(app, ["gateway", "log", "--db", str(db)])
    assert table.exit_code == 0
    assert "alice" in table.output
    assert "rate_limited" in table.output
    unknown = runner.invoke(app, ["gateway", "log", "--db", str(db), "--key", "zed"])
    assert unknown.exit_code == 2
    assert "zed" in unknown.output
