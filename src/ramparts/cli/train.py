"""`ramparts train`: train a zoo architecture on a dataset and save it (safetensors + JSON)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from ramparts.cli._common import err, load_splits, out, print_json, user_errors
from ramparts.data import DATASET_FORMS
from ramparts.training import OPTIMIZERS
from ramparts.zoo import ARCHITECTURES


@user_errors
def train_command(
    data: Annotated[
        str, typer.Option("--data", "-d", help=f"Dataset: {'; '.join(DATASET_FORMS)}.")
    ] = "digits",
    arch: Annotated[
        str, typer.Option("--arch", "-a", help=f"Architecture: {', '.join(ARCHITECTURES)}.")
    ] = "small_cnn",
    epochs: Annotated[int, typer.Option(min=1, help="Passes over the training data.")] = 10,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per step.")] = 64,
    lr: Annotated[float, typer.Option(help="Learning rate.")] = 2e-3,
    optimizer: Annotated[str, typer.Option(help=f"Optimizer: {', '.join(OPTIMIZERS)}.")] = "adam",
    seed: Annotated[
        int, typer.Option(min=0, help="Seeds the weights and the shuffling (the split is fixed).")
    ] = 0,
    out_dir: Annotated[
        Path | None,
        typer.Option(
            "--out", "-o", help="Folder for model.safetensors + model.json (default: models/DATA-ARCH)."
        ),
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON only.")] = False,
) -> None:
    """Train a model from the zoo and save it as safetensors weights plus a JSON config."""
    import torch

    from ramparts.training import TrainConfig, train
    from ramparts.zoo import build, save_model

    config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer, seed=seed)
    train_ds, test_ds = load_splits(data)  # the same fixed split as `attack` and `audit` use
    c, h, _ = train_ds.input_shape
    arch_config = {"in_channels": c, "input_size": h, "num_classes": train_ds.num_classes}
    torch.manual_seed(seed)
    model = build(arch, **arch_config)
    folder = out_dir or Path("models") / f"{_slug(train_ds.name)}-{arch}"
    if not json_output:
        err.print(
            f"Training [bold]{escape(arch)}[/] on {escape(train_ds.name)} ({len(train_ds)} images, {epochs} epochs)"
        )
    t0 = time.perf_counter()
    report = train(model, train_ds, config=config, val=test_ds, progress=not json_output)
    seconds = time.perf_counter() - t0
    folder.mkdir(parents=True, exist_ok=True)
    extra = {
        "dataset": data,
        "classes": list(train_ds.classes),
        "input_shape": list(train_ds.input_shape),
        "bounds": [0.0, 1.0],
        "test_accuracy": report.val_acc[-1],
        "train": report.summary(),
    }
    weights = save_model(model, folder, arch=arch, config=arch_config, extra=extra)
    result = {
        "model": str(weights),
        "config": str(weights.with_suffix(".json")),
        "arch": arch,
        "data": data,
        "train_accuracy": report.train_acc[-1],
        "test_accuracy": report.val_acc[-1],
        "seconds": seconds,
        "training": report.summary(),
    }
    if json_output:
        print_json(result)
        return
    out.print(
        f"Saved [bold]{escape(str(weights))}[/] (+ .json): train accuracy {100 * report.train_acc[-1]:.1f}%, "
        f"test accuracy {100 * (report.val_acc[-1] or 0):.1f}% in {seconds:.1f} s."
    )
    out.print(f"Attack it: [bold]ramparts attack --model {escape(str(folder))}[/]")


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name) or "data"
