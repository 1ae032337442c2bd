"""The `ramparts` entry point: a typer app with one command per module of this package."""

from __future__ import annotations

import sys

import typer

from ramparts.cli._common import EXIT_USAGE, err
from ramparts.cli.attack import attack_command
from ramparts.cli.audit import audit_command
from ramparts.cli.encrypt import encrypt_app
from ramparts.cli.env import env_command
from ramparts.cli.gateway import gateway_app, serve_command
from ramparts.cli.harden import harden_command
from ramparts.cli.membership import membership_command
from ramparts.cli.poison import poison_command
from ramparts.cli.shill import shill_command
from ramparts.cli.steal import steal_command
from ramparts.cli.train import train_command

app = typer.Typer(
    name="ramparts",
    help="Red-team and harden machine-learning models. Start with `ramparts audit`.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
app.command("audit")(audit_command)
app.command("attack")(attack_command)
app.command("train")(train_command)
app.command("steal")(steal_command)
app.command("membership")(membership_command)
app.command("poison")(poison_command)
app.command("shill")(shill_command)
app.command("harden")(harden_command)
app.add_typer(encrypt_app, name="encrypt")
app.command("env")(env_command)
app.command("serve")(serve_command)
app.add_typer(gateway_app, name="gateway")


def main() -> None:
    """Console-script entry point (`ramparts`)."""
    try:
        app()
    except KeyboardInterrupt:
        err.print("[red]Interrupted.[/]")
        sys.exit(130)


if __name__ == "__main__":  # pragma: no cover
    main()

__all__ = ["EXIT_USAGE", "app", "main"]
