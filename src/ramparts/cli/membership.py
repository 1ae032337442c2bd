"""`ramparts membership`: how much a training recipe leaks about its training records.

The experiment of Carlini et al. 2022: K + 1 models of the recipe train on random halves of the data;
model 0 is the target, the other K are the attacker's shadow models. Every record is scored by each
attack and the scores are judged against the truth (members are label 1): AUC, balanced accuracy and
TPR at low FPR with bootstrap intervals, and the ROC on log-log axes (`--out DIR/roc.png`). A tenth of
the records is kept out of every model as RMIA's population.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import torch
import typer
from rich.table import Table

from ramparts.cli._common import err, out, parse_params, print_json, user_errors
from ramparts.data import load_dataset
from ramparts.errors import invalid
from ramparts.parallel import executor_for
from ramparts.privacy import MEMBERSHIP, ShadowPool, ShadowRecipe, train_shadows
from ramparts.privacy.metrics import DEFAULT_FPRS
from ramparts.report.plots import roc_loglog
from ramparts.training import TrainConfig
from ramparts.zoo import ARCHITECTURES, build

DEFAULT_ATTACKS = "loss,gap,shokri,lira,lira:online=false,rmia,label_only"


def parse_attacks(spec: str) -> list[tuple[str, str, dict[str, Any]]]:
    """ "lira,lira:online=false+signal=hinge" -> [(label, name, params)]."""
    items = [s.strip() for s in spec.split(",") if s.strip()]
    if not items:
        raise invalid("--attacks", spec, f"a comma list of {', '.join(MEMBERSHIP.names())}")
    parsed = []
    for item in items:
        name, _, rest = item.partition(":")
        cls = MEMBERSHIP.get(name.strip())
        params = parse_params([p for p in rest.split("+") if p], cls, name) if rest else {}
        parsed.append((item, name.strip(), params))
    return parsed


@user_errors
def membership_command(
    data: Annotated[
        str, typer.Option(help="Dataset spec (digits, mnist, cifar10, an .npz file...).")
    ] = "digits",
    arch: Annotated[
        str, typer.Option(help=f"Architecture of the target and shadows: {', '.join(ARCHITECTURES)}.")
    ] = "mlp",
    arch_config: Annotated[
        str | None, typer.Option(help='JSON config of the architecture, e.g. {"hidden": [128]}.')
    ] = None,
    epochs: Annotated[int, typer.Option(min=1, help="Training epochs of every model.")] = 30,
    batch_size: Annotated[int, typer.Option(min=1)] = 64,
    lr: Annotated[float, typer.Option(min=0.0)] = 1e-3,
    shadows: Annotated[int, typer.Option(min=1, help="Shadow (reference) models the attacker trains.")] = 16,
    attacks: Annotated[
        str,
        typer.Option(
            help=f"Attacks, NAME[:KEY=VALUE+KEY=VALUE], comma-separated: {', '.join(MEMBERSHIP.names())}."
        ),
    ] = DEFAULT_ATTACKS,
    records: Annotated[
        int | None, typer.Option(min=10, help="Use only the first N records of the dataset.")
    ] = None,
    chunk: Annotated[int, typer.Option(min=1, help="Models trained together per task (vmap).")] = 8,
    device: Annotated[str, typer.Option(help="cpu, cuda or auto.")] = "auto",
    ray: Annotated[
        str | None, typer.Option(help="Ray cluster address (or 'auto') to spread shadow training.")
    ] = None,
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Run folder: models (resumable), results.json, roc.png.")
    ] = None,
    seed: Annotated[int, typer.Option(min=0)] = 0,
    json_out: Annotated[bool, typer.Option("--json", help="Machine output only (JSON on stdout).")] = False,
) -> None:
    """Train a target and shadow models on random halves of the data and run membership attacks."""
    chosen = parse_attacks(attacks)
    try:
        config = json.loads(arch_config) if arch_config else {}
    except json.JSONDecodeError as exc:
        raise invalid("--arch-config", arch_config, "a JSON object", str(exc)) from exc
    dev = TrainConfig(device=device).resolve_device()
    ds = load_dataset(data)
    if records is not None:
        ds = ds.subset(range(min(records, len(ds))))
    order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))
    held = max(1, len(ds) // 10)
    population, pool_data = ds.subset(order[:held].tolist()), ds.subset(order[held:].tolist())
    recipe = ShadowRecipe(arch, config, epochs=epochs, batch_size=batch_size, lr=lr)
    executor = executor_for(ray)
    if not json_out:
        err.print(
            f"[dim]Training {shadows + 1} {arch} models on halves of {len(pool_data)} {data} records...[/]"
        )
    models = train_shadows(
        pool_data,
        shadows + 1,
        recipe,
        seed=seed,
        device=dev,
        executor=executor,
        chunk=chunk,
        run_dir=out_dir / "models" if out_dir is not None else None,
    )
    target = build(arch, **recipe.full_config(pool_data))
    target.load_state_dict(models.states[0])
    target = target.to(dev).eval()
    members = models.masks[0]
    reference = ShadowPool(pool_data, models.masks[1:], recipe, models.states[1:], seed)
    rows = []
    for label, name, params in chosen:
        result = MEMBERSHIP.get(name)(**params)(
            target,
            pool_data.x,
            pool_data.y,
            members=members,
            shadows=reference,
            pool_index=torch.arange(len(pool_data)),
            population=population,
            seed=seed,
        )
        rows.append({"label": label, **result.summary()})
    with torch.no_grad():
        correct = target(pool_data.x.to(dev)).argmax(1).cpu() == pool_data.y
    summary = {
        "data": data,
        "records": len(pool_data),
        "population": len(population),
        "recipe": {"arch": arch, "arch_config": config, "epochs": epochs, "batch_size": batch_size, "lr": lr},
        "shadows": shadows,
        "seed": seed,
        "executor": executor.name,
        "target_train_accuracy": float(correct[members].float().mean()),
        "target_test_accuracy": float(correct[~members].float().mean()),
        "attacks": rows,
    }
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "roc.png").write_bytes(
            roc_loglog({r["label"]: r["metrics"]["roc"] for r in rows}, title=f"{arch} on {data}")
        )
        (out_dir / "results.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    if json_out:
        print_json(summary)
        return
    table = Table(
        title=f"Membership inference: target {arch} (train {summary['target_train_accuracy']:.1%}, "
        f"test {summary['target_test_accuracy']:.1%}), {shadows} shadow models, {len(pool_data)} records"
    )
    for column in ("attack", "AUC", "balanced acc.", *(f"TPR@{f:g}" for f in DEFAULT_FPRS), "queries"):
        table.add_column(column, justify="right" if column != "attack" else "left")
    for r in rows:
        m = r["metrics"]
        tprs = [m[f"tpr@{f:g}"] for f in DEFAULT_FPRS]
        table.add_row(
            r["label"],
            f"{m['auc']:.3f}",
            f"{m['balanced_accuracy']:.1%}",
            *("n/a" if t is None else f"{t:.2%}" for t in tprs),
            f"{r['queries']:,}",
        )
    out.print(table)
    if out_dir is not None:
        out.print(f"ROC (log-log): {out_dir / 'roc.png'}; numbers: {out_dir / 'results.json'}")
