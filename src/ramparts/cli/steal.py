"""`ramparts steal`: rebuild a model through its prediction API and measure how faithful the copy is."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from ramparts.cli._common import (
    DataOption,
    ModelOption,
    err,
    load_target,
    make_oracle,
    out,
    parse_params,
    print_json,
    user_errors,
)
from ramparts.data import Dataset, load_dataset
from ramparts.defenses.hardening import harden as apply_hardening
from ramparts.errors import invalid
from ramparts.theft import THEFTS
from ramparts.theft.knockoff import adapt_images


@user_errors
def steal_command(
    theft: Annotated[
        str, typer.Option("--theft", "-t", help=f"Theft: {', '.join(THEFTS.names())}.")
    ] = "jacobian",
    model: ModelOption = None,
    data: DataOption = None,
    seeds: Annotated[
        int, typer.Option(min=1, help="Attacker inputs taken from the victim's test split (the seed set).")
    ] = 150,
    seed_data: Annotated[
        str | None,
        typer.Option(
            help="Attacker inputs from another dataset spec instead (e.g. Knockoff's natural images)."
        ),
    ] = None,
    max_queries: Annotated[
        int | None, typer.Option(min=1, help="Budget of oracle queries (labels or scores).")
    ] = None,
    harden: Annotated[
        str | None,
        typer.Option(
            help="Defend the victim's outputs first, e.g. labels, topk:3, round:2, reverse_sigmoid:0.5,0.1."
        ),
    ] = None,
    run_dir: Annotated[
        Path | None, typer.Option(help="Folder for the theft's state: an interrupted run resumes from it.")
    ] = None,
    param: Annotated[
        list[str] | None, typer.Option("--param", "-p", help="Theft hyperparameter KEY=VALUE (repeatable).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed for every random choice.")] = 0,
    epochs: Annotated[int, typer.Option(min=1, help="Epochs for the default victim (no --model).")] = 10,
    json_out: Annotated[bool, typer.Option("--json", help="Machine output only (JSON on stdout).")] = False,
) -> None:
    """Steal a model: query it, train a substitute, report accuracy, fidelity and queries spent."""
    cls = THEFTS.get(theft)
    params = parse_params(param or [], cls, theft)
    target = load_target(model, data, seed=seed, epochs=epochs, quiet=json_out)
    test = target["test"]
    oracle = make_oracle(target["model"], test)
    if harden is not None:
        oracle = apply_hardening(oracle, harden)
    if seed_data is None:
        if seeds >= len(test):
            raise invalid("seeds", seeds, f"fewer than the {len(test)} test images", "lower --seeds.")
        attacker, held_out = test.subset(range(seeds)), test.subset(range(seeds, len(test)))
    else:
        natural = load_dataset(seed_data)
        # Natural images of another distribution, converted to the victim's input shape (Knockoff's setting).
        attacker = Dataset(
            adapt_images(natural.x, test.input_shape), natural.y, natural.classes, natural.name
        )
        held_out = test
    if not json_out:
        err.print(f"[dim]Stealing with {theft} from {len(attacker)} attacker inputs...[/]")
    result = cls(**params)(oracle, attacker, held_out, max_queries=max_queries, seed=seed, run_dir=run_dir)
    summary: dict[str, Any] = {
        "victim": target["info"],
        "data": target["data"],
        "harden": harden,
        **result.summary(),
    }
    if json_out:
        print_json(summary)
        return
    table = Table(title=f"{theft}: substitute vs oracle on {len(held_out)} held-out images")
    for column in ("queries", "fidelity", "substitute accuracy", "oracle accuracy", "seconds"):
        table.add_column(column, justify="right")
    table.add_row(
        f"{result.queries:,}",
        f"{result.fidelity:.1%}",
        f"{result.accuracy:.1%}",
        f"{result.oracle_accuracy:.1%}",
        f"{result.elapsed_s:.1f}",
    )
    out.print(table)
    if result.curve:
        out.print("fidelity vs queries: " + ", ".join(f"{q:,}: {f:.1%}" for q, f in result.curve))
