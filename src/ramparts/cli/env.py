"""`ramparts env`: versions and hardware, to paste into a bug report."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from ramparts.cli._common import out, print_json, user_errors


@user_errors
def env_command(
    json_output: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON only.")] = False,
) -> None:
    """Show the versions of Python and the libraries, the CPUs and the CUDA devices (for bug reports)."""
    from ramparts.report.environment import collect_environment

    env = collect_environment()
    if json_output:
        print_json(env)
        return
    table = Table(title="ramparts environment", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    table.add_row("python", f"{env['python']} ({env['implementation']})")
    table.add_row("platform", env["platform"])
    for name, version in env["packages"].items():
        table.add_row(name, version or "[dim]not installed[/]")
    cpu = env["cpu"]
    table.add_row(
        "cpu",
        f"{cpu['usable_cpus']} usable of {cpu['logical_cpus']} logical ({cpu['processor']}); "
        f"torch threads {cpu['torch_threads']}",
    )
    acc = env["accelerators"]
    devices = acc["cuda_devices"]
    table.add_row("cuda", f"build {acc['cuda_build'] or 'none'}, cuDNN {acc['cudnn'] or 'none'}")
    if devices:
        for d in devices:
            table.add_row(
                f"cuda:{d['index']}", f"{d['name']}, {d['memory_gib']} GiB, capability {d['capability']}"
            )
    else:
        table.add_row("cuda devices", "none")
    table.add_row("mps", "available" if acc["mps_available"] else "no")
    out.print(table)
