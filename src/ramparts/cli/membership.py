"""`ramparts membership`: how much a training recipe leaks about its training records.

The experiment of Carlini et al. 2022: K + 1 models of the recipe train on random halves of the data;
model 0 is the target, the other K are the attacker's shadow models. Every record is scored by each
attack and the scores are judged against the truth (members are label 1): AUC, balanced accuracy and
TPR at low FPR with bootstrap intervals, and the ROC on log-log axes (`--out DIR/roc.png`). A tenth of
the records is kept out of every model as RMIA's population. `--dp-epsilons` adds the privacy audit loop:
the target retrained with DP-SGD at each epsilon and attacked by LiRA (`DIR/dp.png`: TPR against epsilon).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import torch
import typer
from rich.table import Table
from torch import nn

from ramparts.cli._common import ModelOption, err, load_splits, out, parse_params, print_json, user_errors
from ramparts.data import Dataset, load_dataset
from ramparts.errors import invalid
from ramparts.parallel import executor_for
from ramparts.privacy import MEMBERSHIP, ShadowPool, ShadowRecipe, train_shadows
from ramparts.privacy.batched import PRECISIONS
from ramparts.privacy.dp_audit import dp_tradeoff
from ramparts.privacy.metrics import DEFAULT_FPRS
from ramparts.report.plots import privacy_tradeoff, roc_loglog
from ramparts.training import TrainConfig
from ramparts.zoo import ARCHITECTURES, build, load_model

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


def _epsilons(spec: str | None) -> list[float]:
    if spec is None or not spec.strip():
        return []
    try:
        values = [float(v) for v in spec.split(",") if v.strip()]
    except ValueError as exc:
        raise invalid("--dp-epsilons", spec, "a comma list of positive numbers, e.g. 1,4,16") from exc
    if not values or any(v <= 0 for v in values):
        raise invalid("--dp-epsilons", spec, "a comma list of positive numbers, e.g. 1,4,16")
    return values


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2%}"


@user_errors
def membership_command(
    data: Annotated[
        str | None,
        typer.Option(
            help="Dataset spec (digits, mnist, cifar10, an .npz file...); default digits, or the model's."
        ),
    ] = None,
    model: ModelOption = None,
    arch: Annotated[
        str | None,
        typer.Option(
            help=f"Architecture of the target and shadows: {', '.join(ARCHITECTURES)} (default mlp, or the model's)."
        ),
    ] = None,
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
    precision: Annotated[
        str, typer.Option(help="Shadow training: fp32, or bf16 autocast (faster on a GPU).")
    ] = "fp32",
    compile_forward: Annotated[
        bool,
        typer.Option(
            "--compile", help="torch.compile the shadows' forward pass (much faster batched GPU training)."
        ),
    ] = False,
    ray: Annotated[
        str | None,
        typer.Option(
            help="Spread shadow training: a Ray cluster address (or 'auto'), or 'gpus' / 'gpus:N' for one "
            "worker per GPU of this host (with --device cuda)."
        ),
    ] = None,
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Run folder: models (resumable), results.json, roc.png.")
    ] = None,
    dp_epsilons: Annotated[
        str | None,
        typer.Option(
            help="Also train the target with DP-SGD at each epsilon (e.g. 1,4,16) and attack it with LiRA."
        ),
    ] = None,
    seed: Annotated[int, typer.Option(min=0)] = 0,
    json_out: Annotated[bool, typer.Option("--json", help="Machine output only (JSON on stdout).")] = False,
) -> None:
    """Run membership attacks: on a target trained here with shadow models on random halves of the data, or
    on a saved `--model` whose training records are the dataset's train split (non-members: its test split)."""
    chosen = parse_attacks(attacks)
    epsilons = _epsilons(dp_epsilons)
    try:
        config = json.loads(arch_config) if arch_config else None
    except json.JSONDecodeError as exc:
        raise invalid("--arch-config", arch_config, "a JSON object", str(exc)) from exc
    if precision not in PRECISIONS:
        raise invalid("--precision", precision, f"one of {', '.join(PRECISIONS)}")
    dev = TrainConfig(device=device).resolve_device()
    schedule: dict[str, Any] = {
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "precision": precision,
        "compiled": compile_forward,
    }
    executor = executor_for(ray)
    run_dir = out_dir / "models" if out_dir is not None else None
    if model is None:
        data = data or "digits"
        arch, config = arch or "mlp", config or {}
        recipe = ShadowRecipe(arch, config, **schedule)
        ds = load_dataset(data)
        if records is not None:
            ds = ds.subset(range(min(records, len(ds))))
        order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))
        held = max(1, len(ds) // 10)
        population, pool_data = ds.subset(order[:held].tolist()), ds.subset(order[held:].tolist())
        if not json_out:
            err.print(
                f"[dim]Training {shadows + 1} {arch} models on halves of {len(pool_data)} {data} records...[/]"
            )
        trained = train_shadows(
            pool_data,
            shadows + 1,
            recipe,
            seed=seed,
            device=dev,
            executor=executor,
            chunk=chunk,
            run_dir=run_dir,
        )
        target: nn.Module = build(arch, **recipe.full_config(pool_data))
        target.load_state_dict(trained.states[0])
        members = trained.masks[0]
        reference = ShadowPool(pool_data, trained.masks[1:], recipe, trained.states[1:], seed)
    else:
        target, meta = load_model(model)
        fixed = ("in_channels", "input_size", "num_classes")
        arch = arch or str(meta["arch"])
        config = (
            config
            if config is not None
            else {k: v for k, v in meta.get("config", {}).items() if k not in fixed}
        )
        extra = meta.get("extra", {}) if isinstance(meta.get("extra"), dict) else {}
        data = data or str(extra.get("dataset", "digits"))
        recipe = ShadowRecipe(arch, config, **schedule)
        train_ds, test_ds = load_splits(data)
        pool_data = Dataset(
            torch.cat([train_ds.x, test_ds.x]), torch.cat([train_ds.y, test_ds.y]), train_ds.classes, data
        )
        members = torch.arange(len(pool_data)) < len(train_ds)
        population = pool_data.subset(
            torch.randperm(len(pool_data), generator=torch.Generator().manual_seed(seed))[
                : len(pool_data) // 10
            ]
        )
        if not json_out:
            err.print(
                f"[dim]Training {shadows} {arch} shadow models on halves of {len(pool_data)} {data} records...[/]"
            )
        reference = train_shadows(
            pool_data, shadows, recipe, seed=seed, device=dev, executor=executor, chunk=chunk, run_dir=run_dir
        )
    target = target.to(dev).eval()
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
    summary: dict[str, Any] = {
        "data": data,
        "records": len(pool_data),
        "population": len(population),
        "target": str(model) if model is not None else "model 0 of the shadow training",
        "recipe": {"arch": arch, "arch_config": config, **schedule},
        "shadows": shadows,
        "seed": seed,
        "executor": executor.name,
        "target_train_accuracy": float(correct[members].float().mean()),
        "target_test_accuracy": float(correct[~members].float().mean()),
        "attacks": rows,
    }
    if epsilons:
        if not json_out:
            err.print(
                f"[dim]Training DP-SGD targets at epsilon {', '.join(f'{e:g}' for e in epsilons)}...[/]"
            )
        # The lowest FPR the non-members can resolve: 0.1% from 1,000 of them, else 1%.
        fpr = 0.001 if int((~members).sum()) >= 1000 else 0.01
        summary["dp_fpr"] = fpr
        summary["dp"] = dp_tradeoff(
            pool_data, members, recipe, reference, epsilons, fpr=fpr, device=dev, seed=seed
        )
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        if epsilons:
            lira = {r["config"]["online"]: r["metrics"] for r in rows if r["attack"] == "lira"}
            fpr = summary["dp_fpr"]
            base = {("online" if k else "offline"): v[f"tpr@{fpr:g}"] or 0.0 for k, v in lira.items()}
            (out_dir / "dp.png").write_bytes(privacy_tradeoff(summary["dp"], baseline=base, fpr=fpr))
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
    table.add_column("attack", overflow="fold", min_width=12)
    for column in ("AUC", "balanced acc.", *(f"TPR@{100 * f:g}%" for f in DEFAULT_FPRS), "queries"):
        table.add_column(column, justify="right")
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
    for row in summary.get("dp", []):
        out.print(
            f"DP-SGD epsilon {row['epsilon']:g} (spent {row['spent_epsilon']:.2f}): test accuracy "
            f"{row['test_accuracy']:.1%}; LiRA online AUC {row['online']['auc']:.3f}, TPR@{summary['dp_fpr']:g} "
            f"{_pct(row['online']['tpr'])}; offline {_pct(row['offline']['tpr'])}"
        )
    if out_dir is not None:
        out.print(f"ROC (log-log): {out_dir / 'roc.png'}; numbers: {out_dir / 'results.json'}")
