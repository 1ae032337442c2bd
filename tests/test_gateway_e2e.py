"""The gateway end to end: a real `ramparts serve` subprocess on 127.0.0.1, talked to over HTTP.

- The Jacobian theft (label oracle over HTTP) against PRADA with `on_alarm = "block"`: the thief's key is
  blocked, the log shows at which request and with which statistic, and an honest key is still served.
- `kill -9` in the middle of concurrent load, then a restart on the same database: every acknowledged
  request has its log row, and the restored PRADA state equals PRADA fed the logged requests in order.

The server helpers here are shared with `tests/test_gateway_fuzz.py`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from torch import nn

from ramparts.data import Dataset, load_digits
from ramparts.defenses.prada import Prada
from ramparts.gateway.logview import summarize
from ramparts.gateway.process import ServeError, ServeProcess
from ramparts.gateway.store import Store
from ramparts.oracles.http import HttpConfig, HttpOracle, OracleResponseError
from ramparts.theft.jacobian import JacobianAugmentation
from ramparts.zoo import build, load_model, save_model

RAMPARTS = Path(sys.executable).with_name("ramparts")
TOKEN = re.compile(r"rk_[A-Za-z0-9_-]{43}")
# One thread per process, sleeping when idle: the machine's cores are shared (see tests/conftest.py).
CHILD_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", "NO_COLOR": "1"}
ARCH_CONFIG = {"in_channels": 1, "input_size": 8, "num_classes": 10, "width": 8, "hidden": 32}


# ------------------------------------------------------------------------------------------ the server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")


def write_config(path: Path, settings: Mapping[str, Any]) -> Path:
    """A gateway TOML file: scalars at the top, dicts as [tables]."""
    lines = [f"{k} = {toml_value(v)}" for k, v in settings.items() if not isinstance(v, Mapping)]
    for table, values in settings.items():
        if isinstance(values, Mapping):
            lines += ["", f"[{table}]", *(f"{k} = {toml_value(v)}" for k, v in values.items())]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def cli(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run `ramparts ARGS` and fail the test with its output if it does not exit with 0."""
    done = subprocess.run(
        [str(RAMPARTS), *args], capture_output=True, text=True, env=CHILD_ENV, timeout=timeout, check=False
    )
    assert done.returncode == 0, (
        f"ramparts {' '.join(args)} -> {done.returncode}\n{done.stdout}\n{done.stderr}"
    )
    return done


def add_key(db: Path, name: str, *options: str) -> str:
    """Create a key with `ramparts gateway keys add --json` and return the token it shows once."""
    token = json.loads(cli("gateway", "keys", "add", name, *options, "--db", str(db), "--json").stdout)[
        "token"
    ]
    assert TOKEN.fullmatch(token), "tokens are rk_ and 43 url-safe characters"
    return str(token)


def add_keys_in_process(db: Path, names: list[str]) -> list[str]:
    """Create keys through `Store` directly: the CLI costs seconds per call (it imports torch); the theft
    test uses the CLI."""
    store = Store(db)
    try:
        return [store.add_key(name)[1] for name in names]
    finally:
        store.close()


def log_in_process(db: Path, *, last: int) -> dict[str, Any]:
    """What `ramparts gateway log --json --last LAST` prints, without the seconds the CLI costs."""
    store = Store(db)
    try:
        return summarize(store, last=last)
    finally:
        store.close()


def gateway_log(db: Path, *options: str) -> Any:
    return json.loads(cli("gateway", "log", "--db", str(db), "--json", *options).stdout)


@dataclass
class Server(ServeProcess):
    """A `ServeProcess` that also closes the HTTP clients the test opened on it when it stops."""

    clients: list[httpx.Client] = field(default_factory=list)

    def client(self, token: str | None = None, timeout: float = 30.0) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        c = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)
        self.clients.append(c)
        return c

    def stop(self, timeout_s: float = 20.0) -> None:
        for c in self.clients:
            c.close()
        super().stop(timeout_s)


def start_server(config: Path, workdir: Path) -> Server:
    """Start `ramparts serve --config CONFIG` (host and port come from the file) and wait for /healthz."""
    return Server.start(config, workdir, env=CHILD_ENV)


def gateway_settings(model: Path, db: Path, port: int, **tables: Mapping[str, Any]) -> dict[str, Any]:
    """A configuration for tests: generous rate limits (the tests measure other things), PRADA per `tables`."""
    return {
        "model": str(model),
        "host": "127.0.0.1",
        "port": port,
        "db": str(db),
        "defaults": {"rate_per_s": 10000.0, "burst": 10000},
        **tables,
    }


def train_digits_model(folder: Path) -> Path:
    """A zoo `small_cnn` (narrow) trained on the first 1400 embedded digits in a second or two."""
    ds = load_digits()
    torch.manual_seed(0)
    model = build("small_cnn", **ARCH_CONFIG)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    x, y = ds.x[:1400], ds.y[:1400]
    gen = torch.Generator().manual_seed(0)
    for _ in range(15):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), 64):
            b = perm[i : i + 64]
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[b]), y[b]).backward()
            opt.step()
    model.eval()
    extra = {"dataset": "digits", "classes": list(ds.classes), "input_shape": [1, 8, 8], "bounds": [0.0, 1.0]}
    save_model(model, folder, arch="small_cnn", config=ARCH_CONFIG, extra=extra)
    return folder


@pytest.fixture(scope="module")
def gateway_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_digits_model(tmp_path_factory.mktemp("gateway-model"))


def key_summary(log: Any, name: str) -> dict[str, Any]:
    keys = {k["name"]: k for k in log["keys"]}
    assert name in keys, f"no key {name!r} in the log summary: {sorted(keys)}"
    return keys[name]


def row_hashes(x: torch.Tensor) -> list[str]:
    """The sha256 of each row's little-endian float32 bytes, as the gateway logs them."""
    flat = x.reshape(len(x), -1).numpy().astype("<f4")
    return [hashlib.sha256(row.tobytes()).hexdigest() for row in flat]


# ---------------------------------------------------------------------------- theft against PRADA block

THIEF_ROUNDS = 5  # 20 + 50 + 50 + 100 + 200 + 400 rows if nothing stopped it


def test_jacobian_theft_gets_its_key_blocked_while_an_honest_key_is_served(
    gateway_model: Path, tmp_path: Path
) -> None:
    db = tmp_path / "gateway.db"
    # PRADA with its defaults (delta 0.9, min_samples 100), blocking the key on alarm.
    prada = {"enabled": True, "delta": 0.9, "min_samples": 100, "on_alarm": "block"}
    config = write_config(
        tmp_path / "gateway.toml", gateway_settings(gateway_model, db, free_port(), prada=prada)
    )
    thief_token, honest_token = add_key(db, "thief"), add_key(db, "honest")
    ds = load_digits()
    seeds = ds.x[1400:1450].contiguous()
    held = Dataset(
        ds.x[1450:1470].contiguous(), ds.y[1450:1470].contiguous(), classes=ds.classes, name="held"
    )
    server = start_server(config, tmp_path)
    try:
        http = HttpConfig(
            url=f"{server.url}/v1/predict",
            headers={"Authorization": f"Bearer {thief_token}"},
            output_kind="labels",
            num_classes=10,
            input_shape=(1, 8, 8),
            batch_size=25,
            max_retries=0,
        )
        attack = JacobianAugmentation(rounds=THIEF_ROUNDS, lam=0.1, epochs=3)
        with HttpOracle(http) as oracle:
            with pytest.raises(OracleResponseError, match=r"HTTP 403 .*key_blocked"):
                attack(oracle, seeds, held, seed=0)
            answered_rows = oracle.rows_sent  # rows of the requests answered with labels

        again = server.client(thief_token).post("/v1/predict", json={"inputs": ds.x[:1].tolist()})
        assert again.status_code == 403
        assert again.json()["error"]["code"] == "key_blocked"

        # The honest client (X-API-Key this time) sends natural digits and is served throughout.
        honest = httpx.Client(base_url=server.url, headers={"X-API-Key": honest_token}, timeout=30)
        server.clients.append(honest)
        for batch in ds.x[:300].split(20):
            answer = honest.post("/v1/predict", json={"inputs": batch.tolist()})
            assert answer.status_code == 200, answer.text
            body = answer.json()
            assert (body["decision"], body["alarm"]) == ("ok", None)
            assert len(body["labels"]) == len(batch)
            assert len(body["scores"]) == len(batch)
    finally:
        server.stop()

    log = gateway_log(db, "--last", "1000")
    thief = key_summary(log, "thief")
    assert thief["state"] == "blocked"
    assert thief["blocked_at"] is not None
    assert "PRADA" in thief["reason"]
    rows = [r for r in log["requests"] if r["key"] == "thief"]
    k = next(i for i, r in enumerate(rows) if r["alarm"] is not None)
    # Served until the request that raised the alarm; that one was refused and blocked the key (logged with
    # PRADA's statistic), and so was the next one, without model work.
    assert all(r["status"] == 200 and r["alarm"] is None for r in rows[:k])
    blocking, later = rows[k], rows[k + 1 :]
    assert (blocking["status"], blocking["code"], blocking["decision"]) == (403, "key_blocked", "blocked")
    alarm = blocking["alarm"]
    assert alarm["statistic"] < alarm["delta"] == 0.9
    assert alarm["num_distances"] >= 100
    served = sum(r["rows"] for r in rows[:k])
    assert served == answered_rows
    # The first alarm came inside the blocking request (its log row holds the batch's last alarm).
    first = thief["prada"]["first_alarm"]
    assert served < first <= alarm["query"] <= served + blocking["rows"]
    assert f"alarm at query {first} " in thief["reason"]
    assert [(r["status"], r["code"], r["rows"]) for r in later] == [(403, "key_blocked", 0)]
    assert served + blocking["rows"] < 20 + 50 * 2 ** (THIEF_ROUNDS - 1)  # stopped well before its end
    assert thief["blocked_at"] >= blocking["time"] - 1.0

    honest_summary = key_summary(log, "honest")
    assert honest_summary["state"] == "active"
    assert honest_summary["alarms"] == 0
    assert honest_summary["statuses"] == {"200": 15}
    assert honest_summary["rows"] == honest_summary["prada"]["queries"] == 300
    assert honest_summary["prada"]["statistic"] > 0.9


# ------------------------------------------------------------------------------------- kill -9, restart

MIN_SAMPLES = 20  # lowered from 100 so that PRADA runs its test within this short load


@dataclass
class Client:
    """One load client: its key, and for every answered request the request id, rows and labels."""

    name: str
    token: str
    acked: list[tuple[str, torch.Tensor, list[int]]] = field(default_factory=list)
    in_flight: torch.Tensor | None = None
    errors: list[str] = field(default_factory=list)


def run_client(url: str, client: Client, stream: torch.Tensor, batch: int) -> None:
    """Send `stream` in batches, one request after another, until it is exhausted or the server dies."""
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {client.token}"}, timeout=30) as http:
        for rows in stream.split(batch):
            client.in_flight = rows
            try:
                answer = http.post("/v1/predict", json={"inputs": rows.tolist()})
            except httpx.TransportError:
                return
            if answer.status_code != 200:
                client.errors.append(f"{answer.status_code}: {answer.text[:200]}")
                return
            body = answer.json()
            client.acked.append((body["request_id"], rows, list(body["labels"])))
            client.in_flight = None


def test_kill_9_mid_load_loses_no_acknowledged_request(gateway_model: Path, tmp_path: Path) -> None:
    db = tmp_path / "gateway.db"
    prada = {"enabled": True, "delta": 0.9, "min_samples": MIN_SAMPLES, "on_alarm": "alert"}
    config = write_config(
        tmp_path / "gateway.toml", gateway_settings(gateway_model, db, free_port(), prada=prada)
    )
    names = [f"client{i}" for i in range(4)]
    clients = [Client(n, t) for n, t in zip(names, add_keys_in_process(db, names), strict=True)]
    ds = load_digits()
    gen = torch.Generator().manual_seed(0)
    streams = []
    for _ in clients:
        x = ds.x[torch.randperm(len(ds), generator=gen)[:600]]
        # A little noise makes every row unique, so a log row's hashes name the rows it holds.
        streams.append((x + 0.02 * torch.rand(x.shape, generator=gen)).clamp(0, 1))

    server = start_server(config, tmp_path)
    threads = [
        threading.Thread(target=run_client, args=(server.url, c, s, 3), daemon=True)
        for c, s in zip(clients, streams, strict=True)
    ]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while min(len(c.acked) for c in clients) < 15 and time.monotonic() < deadline:
        time.sleep(0.01)
    server.kill()  # SIGKILL while the four clients are sending
    for t in threads:
        t.join(timeout=30)
    assert server.proc.returncode == -signal.SIGKILL
    assert all(not c.errors for c in clients), [c.errors for c in clients]
    assert all(15 <= len(c.acked) < len(s) // 3 for c, s in zip(clients, streams, strict=True))

    log = log_in_process(db, last=100_000)
    logged = {r["request_id"]: r for r in log["requests"]}
    model, _ = load_model(gateway_model)
    expected: dict[str, Prada] = {}
    for c in clients:
        # Every acknowledged request has its log row, with the hashes of the rows it sent.
        for request_id, rows, _ in c.acked:
            assert request_id in logged, f"acknowledged request {request_id} of {c.name} has no log row"
            row = logged[request_id]
            assert (row["key"], row["status"], row["rows"]) == (c.name, 200, len(rows))
            assert row["input_sha256"] == row_hashes(rows)
        # In commit order, the key's answered requests are the acknowledged ones, plus at most the request
        # in flight at the kill (committed, its answer lost with the process).
        served = [r for r in log["requests"] if r["key"] == c.name and r["status"] == 200]
        assert [r["request_id"] for r in served[: len(c.acked)]] == [rid for rid, _, _ in c.acked]
        inputs = [(rows, torch.tensor(labels)) for _, rows, labels in c.acked]
        unanswered = served[len(c.acked) :]
        assert len(unanswered) <= 1
        if unanswered:
            assert c.in_flight is not None
            assert unanswered[0]["input_sha256"] == row_hashes(c.in_flight)
            with torch.no_grad():
                inputs.append((c.in_flight, model(c.in_flight).argmax(1)))
        prada_of_key = expected[c.name] = Prada(delta=0.9, min_samples=MIN_SAMPLES)
        for rows, labels in inputs:
            prada_of_key.observe(c.name, rows, labels)
        summary = key_summary(log, c.name)
        assert summary["used"] == summary["rows"] == sum(len(rows) for rows, _ in inputs)
        assert summary["prada"] == prada_of_key.stats(c.name)  # as committed with the last request

    # After the restart, PRADA's state was rebuilt from the streams: one more request per key moves each
    # key's figures on from exactly the state the committed requests imply.
    restarted = start_server(config, tmp_path)
    try:
        for i, c in enumerate(clients):
            probe = ds.x[1700 + i : 1702 + i]
            answer = restarted.client(c.token).post("/v1/predict", json={"inputs": probe.tolist()})
            assert answer.status_code == 200, answer.text
            expected[c.name].observe(c.name, probe, torch.tensor(answer.json()["labels"]))
        after = log_in_process(db, last=0)
    finally:
        restarted.stop()
    for c in clients:
        stats = key_summary(after, c.name)["prada"]
        assert stats == expected[c.name].stats(c.name)
        assert stats["num_distances"] >= MIN_SAMPLES


def test_a_server_that_cannot_start_is_reported_with_its_output(tmp_path: Path) -> None:
    # A model folder with no model in it: `ramparts serve` refuses the configuration and exits.
    (tmp_path / "empty").mkdir()
    settings = gateway_settings(tmp_path / "empty", tmp_path / "g.db", free_port())
    config = write_config(tmp_path / "gateway.toml", settings)
    with pytest.raises(ServeError, match=r"ramparts serve exited with [1-9].*\n(.|\n)*model"):
        start_server(config, tmp_path)
