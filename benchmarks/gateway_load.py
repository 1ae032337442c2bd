"""Issue 10: a bounded load test of `ramparts serve` on loopback, and kill -9 mid-load with a restart.

The server (a subprocess: one uvicorn worker, one torch thread) serves a narrow `small_cnn` trained here on
the embedded digits (8x8). `--clients` concurrent clients (asyncio + httpx, one key each) send a fixed number
of requests each, one after another: `--requests` of 1 row and `--batched-requests` of 32 rows (fewer, since
PRADA's Shapiro-Wilk test after every row costs time linear in the key's stream), with PRADA on and off.
Per run: throughput (requests/s, rows/s), latency p50/p90/p99 as the clients see it, errors (any answer but
200; must be 0) and the log after a clean stop: every acknowledged request_id has its row (lost must be 0)
and, with PRADA on, each key's PRADA stream holds exactly the rows of its answered requests. Last, a kill -9
once half of a run is in the log, a restart on the same database, and the same checks, plus one more request
per key whose PRADA query count must continue from the whole stream (state rebuilt, nothing lost).
Results go to `--json` with the machine, the versions and the configuration; the table is printed.

    .venv/bin/python benchmarks/gateway_load.py                 # 16 clients: 400 x 1 row, 100 x 32 rows
    .venv/bin/python benchmarks/gateway_load.py --quick         # smoke run: 4 clients x 25, no file
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import json
import os
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C
from ramparts.data import load_digits
from ramparts.gateway.process import ServeProcess
from ramparts.gateway.store import Store
from ramparts.zoo import build, save_model

RAMPARTS = Path(sys.executable).with_name("ramparts")
ARCH_CONFIG = {"in_channels": 1, "input_size": 8, "num_classes": 10, "width": 8, "hidden": 32}
CHILD_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", "NO_COLOR": "1"}
VERSIONS = ("fastapi", "starlette", "uvicorn", "pydantic", "httpx", "prometheus_client", "torch")


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=16, help="concurrent clients, one key each")
    p.add_argument("--requests", type=int, default=400, help="requests per client in a run of 1 row/request")
    p.add_argument(
        "--batched-requests",
        type=int,
        default=100,
        help="requests per client in a run of more rows/request (PRADA's cost per row grows with the stream)",
    )
    p.add_argument("--batches", default="1,32", help="rows per request, one run each (comma list)")
    p.add_argument("--prada", default="on,off", help="PRADA settings to run (comma list of on/off)")
    p.add_argument("--min-samples", type=int, default=100, help="PRADA's min_samples")
    p.add_argument("--kill-batch", type=int, default=1, help="rows per request in the kill -9 run")
    p.add_argument("--max-seconds", type=float, default=120.0, help="a run stops its clients after this")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="smoke run: 4 clients x 25 requests")
    p.add_argument(
        "--json",
        default=None,
        help="results file (default: benchmarks/gateway_load.json; none for --quick unless given)",
    )
    args = p.parse_args()
    if args.json is None and not args.quick:
        args.json = str(Path(__file__).resolve().parent / "gateway_load.json")
    if args.quick:
        args.clients = min(args.clients, 4)
        args.requests = min(args.requests, 25)
        args.batched_requests = min(args.batched_requests, 25)
    return args


# ------------------------------------------------------------------------------------------ the server


def train_model(folder: Path, seed: int) -> dict[str, Any]:
    """The served model: a narrow small_cnn, 15 epochs on the first 1400 digits (a couple of seconds)."""
    ds = load_digits()
    torch.manual_seed(seed)
    model = build("small_cnn", **ARCH_CONFIG)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    x, y = ds.x[:1400], ds.y[:1400]
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    for _ in range(15):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), 64):
            b = perm[i : i + 64]
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[b]), y[b]).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc = float((model(ds.x[1400:]).argmax(1) == ds.y[1400:]).float().mean())
    extra = {"dataset": "digits", "classes": list(ds.classes), "input_shape": [1, 8, 8], "bounds": [0.0, 1.0]}
    save_model(model, folder, arch="small_cnn", config=ARCH_CONFIG, extra=extra)
    return {
        "arch": "small_cnn",
        "config": ARCH_CONFIG,
        "data": "digits (8x8, first 1400 for training)",
        "test_accuracy": round(acc, 4),
        "train_seconds": round(time.perf_counter() - t0, 2),
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(
    path: Path, model: Path, db: Path, port: int, prada: bool, min_samples: int
) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "model": str(model),
        "host": "127.0.0.1",
        "port": port,
        "db": str(db),
        "max_batch": 256,
        "prada": {"enabled": prada, "delta": 0.9, "min_samples": min_samples, "on_alarm": "alert"},
        "defaults": {"output": "full", "rate_per_s": 1e6, "burst": 1000000, "budget": 0},
    }
    lines = [f"{k} = {json.dumps(v)}" for k, v in settings.items() if not isinstance(v, dict)]
    for table, values in settings.items():
        if isinstance(values, dict):
            lines += ["", f"[{table}]", *(f"{k} = {json.dumps(v)}" for k, v in values.items())]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return settings


def ramparts(*args: str) -> str:
    """The standard output of `ramparts ARGS` (which must succeed)."""
    done = subprocess.run([str(RAMPARTS), *args], capture_output=True, text=True, env=CHILD_ENV, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"ramparts {' '.join(args)} -> {done.returncode}: {done.stdout}{done.stderr}")
    return done.stdout


def add_keys(db: Path, names: list[str]) -> list[str]:
    """Create keys through the gateway's `Store` (the CLI would cost seconds per key: it imports torch)."""
    store = Store(db)
    try:
        return [store.add_key(name)[1] for name in names]
    finally:
        store.close()


def requests_per_client(args: argparse.Namespace, batch: int) -> int:
    return args.requests if batch == 1 else args.batched_requests


# ------------------------------------------------------------------------------------------- the load


@dataclass
class Record:
    client: int
    seconds: float
    status: int  # 0: no answer (connection lost)
    rows: int
    request_id: str | None = None


@dataclass
class Load:
    records: list[Record] = field(default_factory=list)
    wall_s: float = 0.0


def payloads(clients: int, requests: int, batch: int, seed: int) -> list[list[bytes]]:
    """Every client's request bodies, encoded before the clock starts: natural digits plus a little noise."""
    ds = load_digits()
    gen = torch.Generator().manual_seed(seed)
    out: list[list[bytes]] = []
    for _ in range(clients):
        idx = torch.randint(0, len(ds), (requests * batch,), generator=gen)
        x = (ds.x[idx] + 0.02 * torch.rand(len(idx), 1, 8, 8, generator=gen)).clamp(0, 1)
        out.append([json.dumps({"inputs": rows.tolist()}).encode() for rows in x.split(batch)])
    return out


async def client_loop(
    i: int, url: str, token: str, bodies: list[bytes], rows: int, load: Load, stop_at: float
) -> None:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as http:
        for body in bodies:
            if time.monotonic() > stop_at:
                return
            t0 = time.perf_counter()
            try:
                answer = await http.post("/v1/predict", content=body)
            except httpx.TransportError:
                load.records.append(Record(i, time.perf_counter() - t0, 0, rows))
                return
            rid = answer.json().get("request_id") if answer.status_code == 200 else None
            load.records.append(Record(i, time.perf_counter() - t0, answer.status_code, rows, rid))


async def run_load(
    url: str, tokens: list[str], bodies: list[list[bytes]], batch: int, max_seconds: float
) -> Load:
    load = Load()
    t0 = time.perf_counter()
    stop_at = time.monotonic() + max_seconds
    await asyncio.gather(
        *(
            client_loop(i, url, t, b, batch, load, stop_at)
            for i, (t, b) in enumerate(zip(tokens, bodies, strict=True))
        )
    )
    load.wall_s = time.perf_counter() - t0
    return load


def summarise(load: Load, sent: int) -> dict[str, Any]:
    ok = [r for r in load.records if r.status == 200]
    lat = np.array([r.seconds for r in ok]) * 1000 if ok else np.zeros(1)
    return {
        "requests_planned": sent,
        "requests_answered": len(load.records),
        "acknowledged": len(ok),
        "errors": len(load.records) - len(ok),
        "error_statuses": sorted({r.status for r in load.records if r.status != 200}),
        "wall_s": round(load.wall_s, 3),
        "requests_per_s": round(len(ok) / load.wall_s, 1),
        "rows_per_s": round(sum(r.rows for r in ok) / load.wall_s, 1),
        "latency_ms": {q: round(float(np.percentile(lat, int(q[1:]))), 2) for q in ("p50", "p90", "p99")},
        "latency_ms_mean": round(float(lat.mean()), 2),
    }


# ----------------------------------------------------------------------------------------- the log


def logged_requests(db: Path) -> list[dict[str, Any]]:
    """Every row of the request log (oldest first), from `ramparts gateway log --json`."""
    log = json.loads(ramparts("gateway", "log", "--db", str(db), "--json", "--last", "100000000"))
    return [r for r in log["requests"] if str(r["key"]).startswith("client")]


def durability(logged: list[dict[str, Any]], load: Load) -> dict[str, Any]:
    """Acknowledged requests against the clients' log rows: lost = acknowledged without a row."""
    ids = {r["request_id"] for r in logged}
    acked = [r.request_id for r in load.records if r.status == 200]
    lost = sum(1 for rid in acked if rid not in ids)
    served = sum(1 for r in logged if r["status"] == 200)
    return {
        "log_rows": len(logged),
        "log_rows_status_200": served,
        "acknowledged": len(acked),
        "lost": lost,
        "logged_not_acknowledged": served - (len(acked) - lost),
    }


def server_latency(logged: list[dict[str, Any]]) -> dict[str, float]:
    """p50/p99 of the latency the server logged for its answers (body read to commit, no network)."""
    values = [r["latency_ms"] for r in logged if r["status"] == 200 and r["latency_ms"] is not None]
    if not values:
        return {}
    return {q: round(float(np.percentile(values, int(q[1:]))), 2) for q in ("p50", "p99")}


def rows_per_key(logged: list[dict[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in logged:
        if r["status"] == 200:
            out[r["key"]] = out.get(r["key"], 0) + r["rows"]
    return out


def prada_stream_rows(db: Path) -> dict[str, int]:
    """Rows in each client key's PRADA stream, read from the SQLite file (read-only)."""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
        rows = con.execute(
            "SELECT k.name, SUM(s.rows) FROM prada_stream s JOIN keys k ON k.id = s.key_id GROUP BY k.name"
        )
        return {str(name): int(n) for name, n in rows if str(name).startswith("client")}


def prada_queries(db: Path) -> dict[str, int]:
    """Each client key's PRADA query count as committed with its last request (`ramparts gateway log`)."""
    log = json.loads(ramparts("gateway", "log", "--db", str(db), "--json", "--last", "0"))
    return {
        k["name"]: k["prada"]["queries"] for k in log["keys"] if k["name"].startswith("client") and k["prada"]
    }


# ------------------------------------------------------------------------------------------ the runs


def prepare(
    work: Path, model: Path, args: argparse.Namespace, tag: str, prada: bool, batch: int
) -> tuple[Path, Path, list[str], list[list[bytes]], dict[str, Any]]:
    """Database, config file (on a free port), client tokens and request bodies of one run, and its server
    settings."""
    db = work / f"{tag}.db"
    config = work / f"{tag}.toml"
    settings = write_config(config, model, db, free_port(), prada, args.min_samples)
    tokens = add_keys(db, [f"client{i:02d}" for i in range(args.clients)])
    bodies = payloads(args.clients, requests_per_client(args, batch), batch, args.seed)
    shown = {k: v for k, v in settings.items() if k not in ("model", "db", "port")}
    return db, config, tokens, bodies, shown


def warm_up(server: ServeProcess, db: Path, bodies: list[list[bytes]]) -> None:
    """One request with a key of its own, so that the first measured request does not pay for lazy setup."""
    answer = httpx.post(
        f"{server.url}/v1/predict",
        content=bodies[0][0],
        headers=_auth(add_keys(db, ["warmup"])[0]),
        timeout=30,
    )
    if answer.status_code != 200:
        raise RuntimeError(f"warm-up request -> {answer.status_code}: {answer.text}")


def load_run(work: Path, model: Path, args: argparse.Namespace, prada: bool, batch: int) -> dict[str, Any]:
    """One measured run to the end, a clean stop, and the log checked against what was acknowledged."""
    tag = f"prada-{'on' if prada else 'off'}-b{batch}"
    db, config, tokens, bodies, shown = prepare(work, model, args, tag, prada, batch)
    server = ServeProcess.start(config, work, env=CHILD_ENV, wait_s=120)
    try:
        warm_up(server, db, bodies)
        load = asyncio.run(run_load(server.url, tokens, bodies, batch, args.max_seconds))
    finally:
        server.stop()
    logged = logged_requests(db)
    result = {
        "prada": prada,
        "batch": batch,
        "clients": args.clients,
        **summarise(load, args.clients * requests_per_client(args, batch)),
        "log": durability(logged, load),
        "server_latency_ms": server_latency(logged),
        "server_exit": server.proc.returncode,
        "server_config": shown,
    }
    if prada:
        result["log"]["prada_stream_equals_log_per_key"] = prada_stream_rows(db) == rows_per_key(logged)
    print(_line(tag, result), flush=True)
    return result


def kill_run(work: Path, model: Path, args: argparse.Namespace, batch: int) -> dict[str, Any]:
    """kill -9 once half the run is in the log, restart on the same database, check what survived."""
    tag = f"prada-on-b{batch}-kill"
    db, config, tokens, bodies, shown = prepare(work, model, args, tag, True, batch)
    planned = args.clients * requests_per_client(args, batch)
    server = ServeProcess.start(config, work, env=CHILD_ENV, wait_s=120)
    try:
        warm_up(server, db, bodies)
        killer = threading.Thread(target=_kill_when_logged, args=(server, db, planned // 2), daemon=True)
        killer.start()
        load = asyncio.run(run_load(server.url, tokens, bodies, batch, args.max_seconds))
        killer.join(timeout=150)
    finally:
        server.kill()
    exit_code = server.proc.returncode
    logged = logged_requests(db)
    stream, logged_rows = prada_stream_rows(db), rows_per_key(logged)
    # Restart; one more request per key must find PRADA's state rebuilt from the whole stream.
    restarted = ServeProcess.start(config, work, env=CHILD_ENV, wait_s=120)
    try:
        probes = [
            httpx.post(f"{restarted.url}/v1/predict", content=b[-1], headers=_auth(t), timeout=30).status_code
            for t, b in zip(tokens, bodies, strict=True)
        ]
    finally:
        restarted.stop()
    restored = {name: queries - batch for name, queries in prada_queries(db).items()}
    result = {
        "prada": True,
        "batch": batch,
        "clients": args.clients,
        **summarise(load, planned),
        "server_exit": exit_code,
        "server_config": shown,
        "kill": {
            **durability(logged, load),
            "connections_lost_at_kill": sum(1 for r in load.records if r.status == 0),
            "prada_stream_rows": sum(stream.values()),
            "logged_rows_status_200": sum(logged_rows.values()),
            "stream_equals_log_per_key": stream == logged_rows,
            "restart_probe_statuses": sorted(set(probes)),
            "restored_queries_equal_stream_per_key": restored == stream,
        },
    }
    print(_line(tag, result), flush=True)
    return result


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}


def _kill_when_logged(server: ServeProcess, db: Path, half: int) -> None:
    """SIGKILL the server once `half` requests are in its log (the clients do not know when it comes)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with (
            contextlib.suppress(sqlite3.Error),
            contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con,
        ):
            if con.execute("SELECT COUNT(*) FROM requests").fetchone()[0] >= half:
                break
        time.sleep(0.05)
    server.kill()


def _line(tag: str, r: dict[str, Any]) -> str:
    lat = r["latency_ms"]
    return (
        f"{tag:>20}: {r['acknowledged']}/{r['requests_planned']} ok in {r['wall_s']:.1f} s, "
        f"{r['requests_per_s']:.0f} req/s, {r['rows_per_s']:.0f} rows/s, p50 {lat['p50']:.1f} ms, "
        f"p99 {lat['p99']:.1f} ms, errors {r['errors']}"
        + (f", lost {r['log']['lost']}" if "log" in r else "")
        + (
            f", kill: lost {r['kill']['lost']}, stream == log {r['kill']['stream_equals_log_per_key']}, "
            f"restored == stream {r['kill']['restored_queries_equal_stream_per_key']}"
            if "kill" in r
            else ""
        )
    )


def versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0], "sqlite": sqlite3.sqlite_version}
    for name in VERSIONS:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "missing"
    return out


def main() -> None:
    args = parse()
    torch.set_num_threads(1)
    batches = [int(b) for b in args.batches.split(",") if b.strip()]
    pradas = [p.strip() == "on" for p in args.prada.split(",") if p.strip()]
    info = C.machine_info(torch.device("cpu"), peers=())
    print(
        f"gateway load on {C.machine_label(info)}: {args.clients} clients x {args.requests} requests "
        f"({args.batched_requests} with more than one row per request)",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="gateway-load-") as tmp:
        work = Path(tmp)
        model = work / "model"
        training = train_model(model, args.seed)
        runs = [load_run(work, model, args, prada, batch) for prada in pradas for batch in batches]
        kill = kill_run(work, model, args, args.kill_batch)
    out = {
        "benchmark": "gateway_load",
        "quick": args.quick,
        "machine": info,
        "versions": versions(),
        "config": {k: v for k, v in vars(args).items() if k != "json"},
        "server": {
            "workers": 1,
            "torch_threads": 1,
            "host": "127.0.0.1",
            "output": "full",
            "on_alarm": "alert",
        },
        "model": training,
        "runs": runs,
        "kill_restart": kill,
    }
    print(markdown(out))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")


def markdown(out: dict[str, Any]) -> str:
    """The results as a RESULTS.md table: one line per run, the kill -9 run last."""
    head = [
        "PRADA",
        "rows/request",
        "requests",
        "req/s",
        "rows/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "errors",
        "lost",
    ]
    rows = []
    for r in [*out["runs"], out["kill_restart"]]:
        check = r["log"] if "log" in r else r["kill"]
        kill = "kill -9 at half, " if "kill" in r else ""
        rows.append(
            [
                "on" if r["prada"] else "off",
                str(r["batch"]),
                f"{kill}{r['acknowledged']}/{r['requests_planned']}",
                C.fmt(r["requests_per_s"], ".0f"),
                C.fmt(r["rows_per_s"], ".0f"),
                *(C.fmt(r["latency_ms"][q], ".1f") for q in ("p50", "p90", "p99")),
                str(r["errors"]) if "kill" not in r else f"{r['errors']} (lost connections at the kill)",
                str(check["lost"]),
            ]
        )
    return C.md_table(head, rows)


if __name__ == "__main__":
    main()
