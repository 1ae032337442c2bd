"""`ramparts poison`: poison a training pipeline at several fractions, then try a sanitiser against it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import torch
import typer
from rich.table import Table

from ramparts.cli._common import (
    DataOption,
    err,
    load_splits,
    out,
    parse_params,
    parse_shares,
    print_json,
    user_errors,
)
from ramparts.defenses.detection import DetectionResult
from ramparts.errors import invalid
from ramparts.poisoning import POISONING, PoisonedSet, PoisoningAttack
from ramparts.poisoning.evaluate import (
    Pipeline,
    fraction_sweep,
    linear_pipeline,
    retrain_without,
    zoo_pipeline,
)
from ramparts.report.plots import poisoning_curves
from ramparts.training import TrainConfig
from ramparts.zoo import ARCHITECTURES

DEFENSES: tuple[str, ...] = ("spectral", "clustering", "sphere-slab", "none")


def parse_attack(spec: str) -> tuple[str, PoisoningAttack]:
    """ "badnets:target_class=3+patch_size=4" -> the configured attack (and its label)."""
    name, _, rest = spec.strip().partition(":")
    cls = POISONING.get(name.strip())
    params = parse_params([p for p in rest.split("+") if p], cls, name) if rest else {}
    return spec.strip(), cls(**params)


def detect(defense: str, model: torch.nn.Module, poisoned: PoisonedSet, expected: float) -> DetectionResult:
    """Run one sanitiser on the poisoned training set (the model trained on it, for the feature-space ones)."""
    if defense == "spectral":
        from ramparts.defenses.spectral import spectral_signatures

        return spectral_signatures(model, poisoned.data, expected_fraction=expected)
    if defense == "clustering":
        from ramparts.defenses.clustering import activation_clustering

        return activation_clustering(model, poisoned.data, expected_fraction=expected)
    from ramparts.defenses.sanitization import sphere_slab

    # The defender does not know the clean records: centroids and radii from the data (robust medians).
    return sphere_slab(poisoned.data, centroids="data")


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


@user_errors
def poison_command(
    data: DataOption = None,
    attack: Annotated[
        str,
        typer.Option(help="NAME[:KEY=VALUE+KEY=VALUE]: one of " + ", ".join(POISONING.names()) + "."),
    ] = "badnets",
    fractions: Annotated[
        str, typer.Option(help="Poisoned shares of the training set to try, e.g. 0.01,0.05.")
    ] = "0.01,0.05",
    arch: Annotated[
        str,
        typer.Option(
            help=f"The victim pipeline: linear, or a zoo architecture ({', '.join(ARCHITECTURES)})."
        ),
    ] = "small_cnn",
    arch_config: Annotated[
        str | None, typer.Option(help='JSON config of the architecture, e.g. {"hidden": [128]}.')
    ] = None,
    epochs: Annotated[
        int, typer.Option(min=1, help="Training epochs of every model the pipeline trains.")
    ] = 10,
    batch_size: Annotated[int, typer.Option(min=1)] = 64,
    lr: Annotated[float, typer.Option(min=0.0)] = 1e-3,
    defense: Annotated[
        str, typer.Option(help=f"Sanitiser tried at the largest fraction: {', '.join(DEFENSES)}.")
    ] = "spectral",
    expected_fraction: Annotated[
        float | None,
        typer.Option(help="The poison share the sanitiser assumes (default: the largest --fractions value)."),
    ] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda or auto.")] = "auto",
    seed: Annotated[int, typer.Option(min=0)] = 0,
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Folder for results.json and poisoning.png.")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Machine output only (JSON on stdout).")] = False,
) -> None:
    """Poison the training data of a pipeline (label flips or a backdoor) at each fraction, retrain, and
    measure clean accuracy and attack success; then sanitise the most poisoned set and retrain."""
    label, chosen = parse_attack(attack)
    levels = parse_shares(fractions, "--fractions", "fractions")
    if defense not in DEFENSES:
        raise invalid("--defense", defense, f"one of {', '.join(DEFENSES)}")
    expected = levels[-1] if expected_fraction is None else expected_fraction
    if defense in ("spectral", "clustering") and not 0 < expected < 0.5:
        raise invalid("--expected-fraction", expected, "a share in (0, 0.5)")
    try:
        config = json.loads(arch_config) if arch_config else {}
    except json.JSONDecodeError as exc:
        raise invalid("--arch-config", arch_config, "a JSON object", str(exc)) from exc
    train_cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, device=device)
    spec = data or "digits"
    train_ds, test_ds = load_splits(spec, seed=seed)
    if arch == "linear":
        pipeline: Pipeline = linear_pipeline(seed=seed)  # L-BFGS: its own iterations and step scale
    elif arch in ARCHITECTURES:
        c, h, _ = train_ds.input_shape
        full = {**config, "in_channels": c, "input_size": h, "num_classes": train_ds.num_classes}
        pipeline = zoo_pipeline(arch, full, train_cfg)
    else:
        raise invalid("--arch", arch, f"linear or one of {', '.join(ARCHITECTURES)}")
    if not json_out:
        err.print(
            f"[dim]{label} on {len(train_ds)} {spec} training records at {', '.join(f'{f:g}' for f in levels)}...[/]"
        )
    clean = pipeline(train_ds)
    sweep = fraction_sweep(
        chosen, train_ds, test_ds, pipeline, levels, seed=seed, progress=not json_out, baseline=clean
    )
    summary: dict[str, Any] = {
        "data": spec,
        "train_records": len(train_ds),
        "test_records": len(test_ds),
        "pipeline": {"arch": arch, "arch_config": config, **train_cfg.to_dict()},
        "attack": label,
        "baseline_accuracy": sweep.baseline_accuracy,
        "curve": sweep.curve,
        "sweep": sweep.summary(),
    }
    if defense != "none":
        if not json_out:
            err.print(f"[dim]Sanitising the {levels[-1]:g} set with {defense}, then retraining...[/]")
        poisoned = chosen(train_ds, fraction=levels[-1], seed=seed)
        model = pipeline(poisoned.data)
        found = detect(defense, model, poisoned, expected)
        outcome = retrain_without(
            poisoned, found, test_ds, pipeline, attack=chosen, before=sweep.curve[-1], baseline=clean
        )
        summary["defense"] = {
            "method": defense,
            "expected_fraction": expected,
            **outcome,
            "detector": found.summary(),
        }
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "results.json").write_text(
            json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8"
        )
        (out_dir / "poisoning.png").write_bytes(
            poisoning_curves({label: sweep.curve}, baseline=sweep.baseline_accuracy)
        )
    if json_out:
        print_json(summary)
        return
    table = Table(title=f"{label}: {spec}, {arch} pipeline (clean: {_pct(sweep.baseline_accuracy)})")
    for head in ("poisoned", "records", "clean accuracy", "attack success"):
        table.add_column(head, justify="right")
    for point in sweep.curve:
        table.add_row(
            _pct(point["fraction"]),
            str(point["n_poison"]),
            _pct(point["clean_accuracy"]),
            _pct(point.get("attack_success")),
        )
    out.print(table)
    if "defense" in summary:
        d = summary["defense"]
        m = d["detection"]
        out.print(
            f"{defense}: flagged {m['flagged']} records, {_pct(m['recall'])} of the {m['poisons']} poisons, "
            f"clean FPR {_pct(m['clean_fpr'])}; retrained without them: clean accuracy "
            f"{_pct(d['before']['clean_accuracy'])} -> {_pct(d['after']['clean_accuracy'])}, attack success "
            f"{_pct(d['before']['attack_success'])} -> {_pct(d['after']['attack_success'])}."
        )
    if out_dir is not None:
        out.print(f"[dim]Wrote {out_dir / 'results.json'} and {out_dir / 'poisoning.png'}[/]")
