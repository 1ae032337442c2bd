"""`ramparts attack`: run one evasion attack on a model and report what it achieved."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from ramparts.cli._common import (
    KNOWLEDGE_NAMES,
    DataOption,
    ModelOption,
    err,
    limit_knowledge,
    load_splits,
    load_target,
    make_oracle,
    out,
    parse_knowledge,
    parse_params,
    print_json,
    user_errors,
)
from ramparts.errors import AccessError, RampartsError, invalid
from ramparts.evasion import ATTACKS, AttackProgress
from ramparts.oracles.base import Knowledge
from ramparts.threat import GOALS, NORMS, TARGET_RULES

# Used when --eps is not given: moderate budgets on [0, 1] images.
DEFAULT_EPS: dict[str, str] = {"linf": "0.1", "l2": "1.0", "l0": "5px"}


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


def _check_knowledge(attack: str, given: Knowledge | None, source: str = "--knowledge") -> None:
    """The attack must need no more than `given` (checked before any model is loaded, and again against
    what the oracle offers)."""
    need = ATTACKS.get(attack).knowledge
    if given is None or need <= given:
        return
    fit = [n for n in ATTACKS.names() if ATTACKS.get(n).knowledge <= given]
    what = "labels" if given == Knowledge.LABEL else "class scores"
    gives = (
        f"--knowledge {given.name.lower()} gives the attack only {what}"
        if source == "--knowledge"
        else f"the --oracle answers only {what}"
    )
    raise AccessError(
        f"--attack {attack} needs {need.name.lower()} access, but {gives}. Fix: "
        + (f"pass --knowledge {need.name.lower()}, or " if source == "--knowledge" else "")
        + f"choose an attack that needs at most {given.name.lower()} access: "
        f"{', '.join(fit) or 'none is registered'}."
    )


class QueryProgress:
    """A live line on stderr fed by the attack's `progress=` callback: queries spent and success so far."""

    def __init__(self, attack: str, n: int, max_queries: int | None, enabled: bool) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.max_queries = max_queries
        self.bar = Progress(
            TextColumn("[bold]{task.description}[/]"),
            BarColumn(),
            TextColumn("{task.fields[text]}"),
            TimeElapsedColumn(),
            console=err,
            disable=not enabled,
            transient=False,
        )
        self.task = self.bar.add_task(attack, total=max_queries, text=describe_progress(None, n, max_queries))
        self.n = n

    def __enter__(self) -> QueryProgress:
        self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.stop()

    def __call__(self, p: AttackProgress) -> None:
        self.bar.update(
            self.task,
            completed=p.queries_max if self.max_queries else None,
            text=describe_progress(p, self.n, self.max_queries),
        )


def describe_progress(p: AttackProgress | None, n: int, max_queries: int | None) -> str:
    """`queries 12,400 (max 62/image of 100) · success 37/200`."""
    budget = f" of {max_queries:,}" if max_queries else ""
    if p is None:
        return f"queries 0 (max 0/image{budget}) · success 0/{n}"
    return f"queries {p.queries_total:,} (max {p.queries_max:,}/image{budget}) · success {p.succeeded}/{p.n}"


@user_errors
def attack_command(
    attack: Annotated[
        str, typer.Option("--attack", "-a", help=f"Attack: {', '.join(ATTACKS.names())}.")
    ] = "pgd",
    model: ModelOption = None,
    data: DataOption = None,
    oracle_spec: Annotated[
        str | None,
        typer.Option(
            "--oracle",
            help="Attack a model you can only query: an ONNX file, an http(s):// URL of a prediction API "
            "(see --oracle-config) or a model saved by `ramparts train`. Instead of --model.",
        ),
    ] = None,
    oracle_config: Annotated[
        Path | None,
        typer.Option(
            help="JSON config of an http(s) --oracle: request/response shapes, auth header, timeouts."
        ),
    ] = None,
    knowledge: Annotated[
        str | None,
        typer.Option(
            help=f"Access the attack gets: {', '.join(KNOWLEDGE_NAMES)} (gradients > class scores > "
            "labels only). Default: all the model offers."
        ),
    ] = None,
    max_queries: Annotated[
        int | None,
        typer.Option(min=1, help="Query budget per image (forward evaluations); the attack keeps its best."),
    ] = None,
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
    params = parse_params(param or [], ATTACKS.get(attack), attack)
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
    if oracle_spec is not None and model is not None:
        raise invalid("--oracle", oracle_spec, "either --model or --oracle, not both")
    if oracle_config is not None and oracle_spec is None:
        raise invalid("--oracle-config", str(oracle_config), "used with an http(s) --oracle")
    level = parse_knowledge(knowledge)
    runner = cls(**params)
    runner.validate_params()
    _check_supported(attack, threat)  # fail before training a model, not after
    _check_knowledge(attack, level)
    if oracle_spec is not None:
        loaded = _load_remote(oracle_spec, oracle_config, data)
        test_ds, full = loaded["test"], loaded["oracle"]
    else:
        loaded = load_target(model, data, seed=seed, epochs=epochs, quiet=json_output)
        test_ds = loaded["test"]
        full = make_oracle(loaded["model"], test_ds)
    oracle = limit_knowledge(full, level)
    _check_knowledge(attack, oracle.knowledge, "--oracle")  # an oracle may offer less (label-only API)
    pick = torch.randperm(len(test_ds), generator=torch.Generator().manual_seed(seed))[: min(n, len(test_ds))]
    x, y = test_ds.x[pick], test_ds.y[pick]
    targets = None
    if target_class is not None:
        if not 0 <= target_class < oracle.num_classes:
            raise invalid("--target-class", target_class, f"a class index in [0, {oracle.num_classes})")
        targets = torch.full_like(y, target_class)
    if not json_output:
        err.print(
            f"Running [bold]{attack}[/] ({threat.describe()}) on {len(x)} {escape(test_ds.name)} test images "
            f"with {oracle.knowledge.name.lower()} access"
            + (f", at most {max_queries:,} queries per image" if max_queries else "")
        )
    with QueryProgress(attack, len(x), max_queries, enabled=not json_output) as display:
        result = runner(
            oracle, x, y, threat, targets=targets, seed=seed, max_queries=max_queries, progress=display
        )
    summary = result.summary()
    defense = _defense_verdict(loaded.get("model"), x, result.x_adv, y)
    payload = {
        **summary,
        **({"defense": defense} if defense is not None else {}),
        "threat_description": threat.describe(),
        "knowledge": oracle.knowledge.name.lower(),
        "queries": {
            "budget_per_image": max_queries,
            "median_per_image": summary["median_queries"],
            "max_per_image": summary["max_queries"],
            "mean_per_image": summary["mean_queries"],
            "total": summary["total_forwards"],
        },
        "norm_reached": {
            "norm": threat.norm,
            "median_distance_success": summary["median_distance_success"],
            "mean_distance_success": summary["mean_distance_success"],
        },
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
    dist = summary["median_distance_success"]
    table.add_row(f"median {threat.norm} distance (successes)", "n/a" if dist is None else f"{dist:.4g}")
    table.add_row("access", oracle.knowledge.name.lower())
    table.add_row(
        "queries per image: median / max",
        f"{summary['median_queries']:.0f} / {summary['max_queries']:,}"
        + (f" (budget {max_queries:,})" if max_queries else ""),
    )
    if result.budget_exhausted:
        table.add_row("budget", "exhausted (best kept)")
    table.add_row("time", f"{result.elapsed_s:.2f} s")
    if defense is not None:
        table.add_row(
            "detectors reject: clean / adversarial",
            f"{100 * defense['rejected_clean']:.1f}% / {100 * defense['rejected_adversarial']:.1f}%",
        )
        table.add_row("robust accuracy, whole defence", f"{100 * defense['robust_accuracy']:.1f}%")
    out.print(table)
    if defense is not None:
        err.print(
            "[yellow]This attack does not adapt to the defence (it ignores the detectors and differentiates "
            "through the transforms as they are); judge it with `ramparts harden` or `ramparts audit`, "
            "which run the adaptive attack.[/]"
        )
    if out_dir is not None:
        out.print(escape(f"Wrote {out_dir / 'result.json'} and {out_dir / 'adv_examples.npz'}"))


def _defense_verdict(model: Any, x: Any, x_adv: Any, y: Any) -> dict[str, float] | None:
    """For a defended model: the detectors' verdicts on clean and adversarial inputs, and robust accuracy of
    the whole defence (an input counts as robust if rightly classified or rejected); None for other models."""
    import torch

    from ramparts.defenses.adaptive import defense_outcome
    from ramparts.defenses.base import DefendedModel

    if not isinstance(model, DefendedModel):
        return None
    device = next(model.parameters()).device
    with torch.no_grad():
        clean_rejected = model.rejects(x.to(device)).float().mean()
        fooled, rejected, _ = defense_outcome(model, x_adv.to(device), y.to(device))
    return {
        "rejected_clean": float(clean_rejected),
        "rejected_adversarial": float(rejected.float().mean()),
        "robust_accuracy": 1.0 - float(fooled.float().mean()),
    }


def _load_remote(spec: str, config: Path | None, data: str | None) -> dict[str, Any]:
    """An oracle from `--oracle` (ONNX file, http(s) URL or saved model) and the data it is judged on."""
    from ramparts.oracles import load_oracle

    _, test_ds = load_splits(data or "digits")
    try:
        oracle = load_oracle(
            spec,
            config_path=str(config) if config is not None else None,
            input_shape=test_ds.input_shape,
            num_classes=test_ds.num_classes,
        )
    except RampartsError as exc:  # name the command's options, not the function's parameters
        head, sep, rest = str(exc).partition(":")
        option = {"oracle": "--oracle", "config_path": "--oracle-config"}.get(
            head, "--data" if head in ("input_shape", "num_classes") else None
        )
        raise RampartsError(f"{option}{sep}{rest}" if option and sep else str(exc)) from None
    info = {
        "source": spec,
        "oracle": type(oracle).__name__,
        "offers": oracle.knowledge.name.lower(),
        "trained_here": False,
    }
    return {"oracle": oracle, "info": info, "test": test_ds, "data": data or "digits"}
