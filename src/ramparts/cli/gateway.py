"""`ramparts serve` (the gateway) and `ramparts gateway keys|log` (keys and the audit log, on the database)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from ramparts.cli._common import err, out, print_json, user_errors

gateway_app = typer.Typer(
    name="gateway",
    help="Manage the gateway's API keys and read its audit log (the SQLite file of `ramparts serve`).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
keys_app = typer.Typer(
    name="keys",
    help="Create, list, revoke and unblock API keys (tokens are shown once; the database keeps their sha256).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
gateway_app.add_typer(keys_app, name="keys")

DbOption = Annotated[Path, typer.Option("--db", help="The gateway's SQLite file.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON only.")]


@user_errors
def serve_command(
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="TOML configuration (see docs); env RAMPARTS_GATEWAY_*."),
    ] = None,
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="Model folder (overrides the config).")
    ] = None,
    db: Annotated[str | None, typer.Option("--db", help="SQLite file (overrides the config).")] = None,
    host: Annotated[
        str | None, typer.Option("--host", help="Address to listen on (default 127.0.0.1).")
    ] = None,
    port: Annotated[int | None, typer.Option("--port", help="Port (default 8000).")] = None,
) -> None:
    """Serve a model behind the gateway: keys, limits, validation, detection, PRADA and an audit log."""
    from ramparts.gateway.app import build_server
    from ramparts.gateway.config import load_config

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = load_config(config, overrides={"model": model, "db": db, "host": host, "port": port})
    server, gateway = build_server(settings)
    url = f"http://{settings.host}:{settings.port}"
    db_path = escape(settings.db)
    out.print(f"Serving [bold]{escape(gateway.model.name)}[/] at [bold]{url}[/] (database {db_path})")
    routes = "POST /v1/predict" + (
        ", POST /v1/encrypted/predict" if gateway.model.program is not None else ""
    )
    out.print(f"Routes: {routes}, GET /healthz (no key), GET /metrics, GET /openapi.json")
    out.print(f"Add a key:  ramparts gateway keys add NAME --db {db_path}")
    out.print(f"Read the log: ramparts gateway log --db {db_path}")
    server.run()


def _store(db: Path, *, create: bool = False) -> Any:
    from ramparts.errors import invalid
    from ramparts.gateway.store import Store

    if not create and not db.is_file():
        raise invalid("db", str(db), "an existing gateway database", "check --db, or create a key first")
    return Store(db)


def _key_dict(key: Any) -> dict[str, Any]:
    return {
        "name": key.name,
        "state": key.state,
        "output": key.output,
        "rate_per_s": key.rate_per_s,
        "burst": key.burst,
        "budget": key.budget,
        "used": key.used,
        "created_at": key.created_at,
        "blocked_at": key.blocked_at,
        "reason": key.reason,
    }


def _when(t: float | None) -> str:
    return "-" if t is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def _or_default(value: Any) -> str:
    return "default" if value is None else str(value)


@keys_app.command("add")
@user_errors
def keys_add(
    name: Annotated[str, typer.Argument(help="A name for the key (letters, digits, _ . @ -).")],
    db: DbOption = Path("gateway.db"),
    output: Annotated[
        str | None,
        typer.Option(help="Output mode: full, labels, topk:K, round:D, noise:SIGMA (default: the server's)."),
    ] = None,
    rate: Annotated[float | None, typer.Option(min=0.0, help="Requests per second (token bucket).")] = None,
    burst: Annotated[int | None, typer.Option(min=1, help="Bucket size.")] = None,
    budget: Annotated[
        int | None, typer.Option(min=0, help="Rows the key may send in total (0 = unlimited).")
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Create a key and print its token once (the database keeps only its sha256)."""
    from ramparts.errors import invalid
    from ramparts.gateway.config import FIELDS

    if output is not None and not FIELDS["defaults.output"].check(output):
        raise invalid("output", output, FIELDS["defaults.output"].expected)
    if rate is not None and rate <= 0:
        raise invalid("rate", rate, "a positive number of requests per second")
    store = _store(db, create=True)
    try:
        key, token = store.add_key(name, output=output, rate_per_s=rate, burst=burst, budget=budget)
    finally:
        store.close()
    if json_output:
        print_json({**_key_dict(key), "token": token})
        return
    out.print(f"Created key [bold]{escape(key.name)}[/] in {escape(str(db))}. Its token (shown only once):")
    out.print(token, markup=False)
    out.print(
        f"Use it as: Authorization: Bearer {token[:6]}... (or X-API-Key). Revoke: ramparts gateway keys revoke {escape(key.name)} --db {escape(str(db))}"
    )


@keys_app.command("list")
@user_errors
def keys_list(db: DbOption = Path("gateway.db"), json_output: JsonOption = False) -> None:
    """List the keys: state, output mode, limits, budget and rows used."""
    store = _store(db)
    try:
        keys = store.keys()
    finally:
        store.close()
    if json_output:
        print_json([_key_dict(k) for k in keys])
        return
    table = Table(title=f"Keys in {escape(str(db))}")
    for column in (
        "name",
        "state",
        "output",
        "rate/s",
        "burst",
        "budget",
        "used",
        "created",
        "blocked",
        "reason",
    ):
        table.add_column(column)
    for k in keys:
        table.add_row(
            escape(k.name),
            k.state,
            _or_default(k.output),
            _or_default(k.rate_per_s),
            _or_default(k.burst),
            _or_default(k.budget),
            str(k.used),
            _when(k.created_at),
            _when(k.blocked_at),
            escape(k.reason or "-"),
        )
    out.print(table)


@keys_app.command("revoke")
@user_errors
def keys_revoke(
    name: Annotated[str, typer.Argument(help="The key's name.")],
    db: DbOption = Path("gateway.db"),
    json_output: JsonOption = False,
) -> None:
    """Revoke a key for good (a running server refuses it from its next request on)."""
    _change_key(db, name, "revoke", json_output, "Revoked key [bold]{name}[/].")


@keys_app.command("unblock")
@user_errors
def keys_unblock(
    name: Annotated[str, typer.Argument(help="The key's name.")],
    db: DbOption = Path("gateway.db"),
    json_output: JsonOption = False,
) -> None:
    """Unblock a key and reset its PRADA state (after reviewing why it was blocked)."""
    _change_key(
        db, name, "unblock", json_output, "Unblocked key [bold]{name}[/]; its PRADA state starts afresh."
    )


def _change_key(db: Path, name: str, action: str, json_output: bool, message: str) -> None:
    """Apply the store's `action` ("revoke", "unblock") to key `name` and report the key."""
    store = _store(db)
    try:
        key = getattr(store, action)(name)
    finally:
        store.close()
    if json_output:
        print_json(_key_dict(key))
        return
    out.print(message.format(name=escape(key.name)))


@gateway_app.command("log")
@user_errors
def log_command(
    db: DbOption = Path("gateway.db"),
    key: Annotated[str | None, typer.Option("--key", help="Only this key.")] = None,
    last: Annotated[int, typer.Option("--last", min=0, help="How many recent requests to list.")] = 20,
    json_output: JsonOption = False,
) -> None:
    """Summarise the audit log per key (requests, rows, decisions, alarms, blocking, latency) and list the last N."""
    from ramparts.gateway.logview import summarize

    store = _store(db)
    try:
        summary = summarize(store, key=key, last=last)
    finally:
        store.close()
    if json_output:
        print_json(summary)
        return
    table = Table(title=f"Keys in {escape(str(db))}")
    for column in (
        "key",
        "state",
        "requests",
        "rows",
        "decisions",
        "refused",
        "alarms",
        "blocked",
        "p50 ms",
        "p99 ms",
    ):
        table.add_column(column)
    for k in summary["keys"]:
        refused = sum(n for status, n in k["statuses"].items() if status != "200")
        decisions = ", ".join(f"{d} {n}" for d, n in sorted(k["decisions"].items())) or "-"
        table.add_row(
            escape(k["name"]),
            k["state"],
            str(k["requests"]),
            str(k["rows"]),
            escape(decisions),
            str(refused),
            str(k["alarms"]),
            _when(k["blocked_at"]),
            "-" if k["latency_ms_p50"] is None else f"{k['latency_ms_p50']:.1f}",
            "-" if k["latency_ms_p99"] is None else f"{k['latency_ms_p99']:.1f}",
        )
    out.print(table)
    if not summary["requests"]:
        err.print("No requests logged yet.")
        return
    recent = Table(title=f"Last {len(summary['requests'])} requests")
    for column in ("time", "key", "route", "status", "rows", "decision", "alarm W", "ms"):
        recent.add_column(column)
    for r in summary["requests"]:
        recent.add_row(
            _when(r["time"]),
            escape(r["key"] or "-"),
            r["route"],
            f"{r['status']}" + (f" {r['code']}" if r["code"] else ""),
            str(r["rows"]),
            r["decision"] or "-",
            "-" if r["alarm"] is None else f"{r['alarm']['statistic']:.3f}",
            "-" if r["latency_ms"] is None else f"{r['latency_ms']:.1f}",
        )
    out.print(recent)


__all__ = ["gateway_app", "serve_command"]
