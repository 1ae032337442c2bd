"""`ramparts shill`: push (or nuke) an item of a recommender with fake users, and try to find them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import torch
import typer
from rich.table import Table

from ramparts.cli._common import err, out, parse_shares, print_json, user_errors
from ramparts.errors import invalid
from ramparts.recsys import SHILLING, Ratings, fit, load_movielens, pca_detect, prediction_shift, rmse
from ramparts.recsys import train_test_split as split_ratings
from ramparts.recsys.data import synthetic_ratings
from ramparts.recsys.detection import detection_metrics


def unpopular_item(ratings: Ratings, minimum: int = 5) -> int:
    """The default target: an unpopular item (the 10th percentile of popularity among items with at least
    `minimum` ratings), as shilling studies use: popular items need no push."""
    counts = ratings.item_counts()
    rated = torch.nonzero(counts >= minimum).flatten()
    if len(rated) == 0:
        raise invalid(
            "--ratings", ratings.name, f"items with at least {minimum} ratings", "pass --target-item"
        )
    order = rated[torch.argsort(counts[rated], stable=True)]
    return int(order[len(order) // 10])


@user_errors
def shill_command(
    ratings_path: Annotated[
        Path | None,
        typer.Option(
            "--ratings",
            help="MovieLens-format ratings (u.data, ratings.dat, ratings.csv or their folder); default synthetic.",
        ),
    ] = None,
    users: Annotated[int, typer.Option(min=10, help="Synthetic data: real users.")] = 943,
    items: Annotated[int, typer.Option(min=10, help="Synthetic data: items.")] = 1682,
    attack: Annotated[
        str, typer.Option(help=f"Fake-user profile: {', '.join(SHILLING.names())}.")
    ] = "average",
    sizes: Annotated[
        str, typer.Option(help="Fake users as shares of the real users, e.g. 0.01,0.05.")
    ] = "0.01,0.05",
    filler: Annotated[float, typer.Option(help="Share of the items each fake user rates.")] = 0.05,
    intent: Annotated[str, typer.Option(help="push (rate the target max) or nuke (min).")] = "push",
    target_item: Annotated[
        int | None, typer.Option(help="Item index to attack (default: an unpopular item).")
    ] = None,
    factors: Annotated[int, typer.Option(min=1, help="Matrix-factorisation rank.")] = 20,
    epochs: Annotated[int, typer.Option(min=1)] = 100,
    detect: Annotated[bool, typer.Option(help="Run PCA-VarSelect on each attacked data set.")] = True,
    seed: Annotated[int, typer.Option(min=0)] = 0,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Folder for results.json.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Machine output only (JSON on stdout).")] = False,
) -> None:
    """Train a matrix-factorisation recommender, add fake users at each size, retrain, and measure how far the
    target's predicted rating and its top-10 hit ratio move; PCA-VarSelect then looks for the fakes."""
    levels = parse_shares(sizes, "--sizes", "attack sizes")
    cls = SHILLING.get(attack)
    data = (
        load_movielens(ratings_path)
        if ratings_path is not None
        else synthetic_ratings(n_users=users, n_items=items, seed=seed)
    )
    target = unpopular_item(data) if target_item is None else target_item
    train, test = split_ratings(data, seed=seed)
    if not json_out:
        err.print(
            f"[dim]{data.n_users} users x {data.n_items} items ({len(data)} ratings); target item {target}...[/]"
        )
    clean = fit(train, factors=factors, epochs=epochs, seed=seed)
    rows: list[dict[str, Any]] = []
    for size in levels:
        attacked = cls(attack_size=size, filler_size=filler, intent=intent)(
            train, target_item=target, seed=seed
        )
        model = fit(attacked.ratings, factors=factors, epochs=epochs, seed=seed)
        row: dict[str, Any] = {
            "size": size,
            "fake_users": attacked.n_fake,
            **prediction_shift(clean, model, train, target).summary(),
        }
        if detect:
            found = pca_detect(attacked.ratings, n_flag=attacked.n_fake)
            pr = detection_metrics(found.flagged, attacked.fake_mask)
            row["detection"] = {"method": "pca_varselect", "precision": pr.precision, "recall": pr.recall}
        rows.append(row)
    test_rmse = rmse(clean, test)
    summary: dict[str, Any] = {
        "ratings": str(ratings_path) if ratings_path is not None else "synthetic",
        "users": data.n_users,
        "items": data.n_items,
        "target_item": target,
        "attack": {"name": attack, "filler_size": filler, "intent": intent},
        "model": {"factors": factors, "epochs": epochs, "test_rmse": test_rmse},
        "seed": seed,
        "rows": rows,
    }
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "results.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    if json_out:
        print_json(summary)
        return
    table = Table(title=f"{attack} {intent} of item {target} (clean test RMSE {test_rmse:.3f})")
    for head in (
        "size",
        "fake users",
        "prediction shift",
        "HR@10 before",
        "HR@10 after",
        "PCA precision",
        "PCA recall",
    ):
        table.add_column(head, justify="right")
    for row in rows:
        d = row.get("detection", {})
        table.add_row(
            f"{100 * row['size']:g}%",
            str(row["fake_users"]),
            f"{row['prediction_shift']:+.3f}",
            f"{row['hr@10_before']:.3f}",
            f"{row['hr@10_after']:.3f}",
            f"{d['precision']:.2f}" if d else "-",
            f"{d['recall']:.2f}" if d else "-",
        )
    out.print(table)
