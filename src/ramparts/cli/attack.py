"""`ramparts attack`: run one evasion attack on a model and report what it achieved."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from ramparts.cli._common import (
    DataOption,
    ModelOption,
    err,
    load_target,
    make_oracle,
    out,
    print_json,
    user_errors,
)
from ramparts.errors import invalid
from ramparts.evasion import ATTACKS
from ramparts.threat import GOALS, NORMS, TARGET_RULES

# Used when --eps is not given: moderate budgets on [0, 1] images.
DEFAULT_EPS: dict[str, str] = {"linf": "0.1", "l2": "1.0", "l0": "5px"}


def parse_params(items: list[str], attack: str) -> dict[str, Any]:
    """`-p steps=20 -p loss=dlr` -> {"steps": 20, "loss": "dlr"} (values read as JSON when they parse)."""
    cls = ATTACKS.get(attack)
    allowed = cls.param_names()
    params: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise invalid(
                "--param", item, "KEY=VALUE", f"e.g. -p {allowed[0]}=... ; keys: {', '.join(allowed)}."
            )
        if key not in allowed:
            raise invalid("--param", key, f"a hyperparameter of {attack!r}: {', '.join(allowed)}")
        try:
            params[key] = json.loads(raw)
        except json.JSONDecodeError:
            params[key] = raw
    return params


def _check_supported(attack: str, threat: Any) -> None:
    """The norm, goal and target rule must be ones the attack's class declares."""
    cls = ATTACKS.get(attack)
    for option, value, allowed in (
        ("--norm", threat.norm, cls.norms),
        ("--goal", threat.goal, cls.goals),
        ("--target", threat.target, cls.target_rules),
    ):
        if allowed is not None and value not in allowed:
            raise invalid(option, value, f"one of {', '.join(allowed)} for --attack {attack}")


@user_errors
def attack_command(
    attack: Annotated[
        str, typer.Option("--attack", "-a", help=f"Attack: {', '.join(ATTACKS.names())}.")
    ] = "pgd",
    model: ModelOption = None,
    data: DataOption = None,
    eps: Annotated[
        str | None,
        typer.Option(
            help="Budget: a number (0.3), a fraction (8/255) or pixel levels (5px). "
            f"Default: {', '.join(f'{k} {v}' for k, v in DEFAULT_EPS.items())}."
        ),
    ] = None,
    norm: Annotated[str, typer.Option(help=f"Norm: {', '.join(NORMS)}.")] = "linf",
    goal: Annotated[str, typer.Option(help=f"Goal: {', '.join(GOALS)}.")] = "untargeted",
    target: Annotated[
        str | None, typer.Option(help=f"Target class rule for --goal targeted: {', '.join(TARGET_RULES)}.")
    ] = None,
    target_class: Annotated[int | None, typer.Option(help="The class to reach, for --target given.")] = None,
    min_target_confidence: Annotated[
        float | None, typer.Option(help="Targeted: probability the target class must reach.")
    ] = None,
    max_true_confidence: Annotated[
        float | None, typer.Option(help="Goal confidence: push the true class's probability below this.")
    ] = None,
    confidence_margin: Annotated[
        float | None, typer.Option(help="Goal confidence: lower the true class's probability by this much.")
    ] = None,
    param: Annotated[
        list[str] | None,
        typer.Option("--param", "-p", help="Attack hyperparameter KEY=VALUE (repeatable), e.g. -p steps=20."),
    ] = None,
    n: Annotated[int, typer.Option("--n", "-n", min=1, help="Number of test images to attack.")] = 200,
    seed: Annotated[
        int, typer.Option(min=0, help="Seed for the sample choice, random starts and training.")
    ] = 0,
    epochs: Annotated[
        int, typer.Option(min=1, help="Training epochs of the default model (no --model).")
    ] = 10,
    out_dir: Annotated[
        Path | None, typer.Option("--out", "-o", help="Also write result.json and adv_examples.npz here.")
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON only.")] = False,
) -> None:
    """Run one evasion attack on test images and report clean vs robust accuracy and success rate."""
    import numpy as np
    import torch

    from ramparts.report.json import write_json
    from ramparts.threat import ThreatModel

    cls = ATTACKS.get(attack)
    params = parse_params(param or [], attack)
    threat = ThreatModel(
        norm=norm,
        eps=eps if eps is not None else DEFAULT_EPS.get(norm, "0.1"),
        goal=goal,
        target=target,
        min_target_confidence=min_target_confidence,
        max_true_confidence=max_true_confidence,
        confidence_margin=confidence_margin,
    )
    if target_class is not None and threat.target != "given":
        raise invalid("--target-class", target_class, "used with --goal targeted --target given")
    if threat.target == "given" and target_class is None:
        raise invalid("--target-class", None, "a class index for --target given", "e.g. --target-class 3.")
    runner = cls(**params)
    runner.validate_params()
    _check_supported(attack, threat)  # fail before training a model, not after
    loaded = load_target(model, data, seed=seed, epochs=epochs, quiet=json_output)
    test_ds = loaded["test"]
    oracle = make_oracle(loaded["model"], test_ds)
    pick = torch.randperm(len(test_ds), generator=torch.Generator().manual_seed(seed))[: min(n, len(test_ds))]
    x, y = test_ds.x[pick], test_ds.y[pick]
    targets = None
    if target_class is not None:
        if not 0 <= target_class < oracle.num_classes:
            raise invalid("--target-class", target_class, f"a class index in [0, {oracle.num_classes})")
        targets = torch.full_like(y, target_class)
    if not json_output:
        err.print(
            f"Running [bold]{attack}[/] ({threat.describe()}) on {len(x)} {escape(test_ds.name)} test images"
        )
    result = runner(oracle, x, y, threat, targets=targets, seed=seed)
    summary = result.summary()
    payload = {
        **summary,
        "threat_description": threat.describe(),
        "model": loaded["info"],
        "data": {"spec": loaded["data"], "name": test_ds.name, "n_test": len(test_ds)},
    }
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_json(payload, out_dir / "result.json")
        np.savez(
            out_dir / "adv_examples.npz",
            x=x.numpy(),
            y=y.numpy(),
            x_adv=result.x_adv.cpu().numpy(),
            success=result.success.cpu().numpy(),
            distance=result.distance.cpu().numpy(),
            adv_pred=result.adv_pred.cpu().numpy(),
        )
    if json_output:
        print_json(payload)
        return
    table = Table(title=f"{attack}: {threat.describe()}", show_header=False)
    table.add_column("metric", style="bold")
    table.add_column("value", justify="right")
    table.add_row("images", str(len(result)))
    table.add_row("clean accuracy", f"{100 * result.clean_accuracy:.1f}%")
    table.add_row("robust accuracy", f"{100 * result.robust_accuracy:.1f}%")
    table.add_row("success rate", f"{100 * result.success_rate:.1f}%")
    dist = summary["mean_distance_success"]
    table.add_row(f"mean {threat.norm} distance (successes)", "n/a" if dist is None else f"{dist:.4g}")
    table.add_row("mean queries per image", f"{summary['mean_queries']:.1f}")
    table.add_row("time", f"{result.elapsed_s:.2f} s")
    out.print(table)
    if out_dir is not None:
        out.print(escape(f"Wrote {out_dir / 'result.json'} and {out_dir / 'adv_examples.npz'}"))
