"""`ramparts harden`: train a model with a defence (or wrap one in a detector), then judge it with attacks
that fit it — the plain model next to it, and gradient-masking warnings where they fire."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import torch
import typer
from rich.markup import escape
from rich.table import Table
from torch import nn

from ramparts.cli._common import err, load_splits, out, print_json, user_errors
from ramparts.data import Dataset
from ramparts.defenses.adaptive import adaptive_pgd, defense_outcome, masking_warnings
from ramparts.defenses.adversarial_training import fast_adversarial_training, pgd_training, trades
from ramparts.defenses.base import DefendedModel
from ramparts.defenses.distillation import distill
from ramparts.defenses.magnet import magnet
from ramparts.defenses.persist import save_defended
from ramparts.defenses.smoothing import gaussian_noise_training
from ramparts.defenses.squeezing import feature_squeezing
from ramparts.errors import invalid
from ramparts.evasion import ATTACKS
from ramparts.oracles import TorchOracle
from ramparts.threat import ThreatModel
from ramparts.training import LossHook, TrainConfig, evaluate, train
from ramparts.zoo import ARCHITECTURES, build, save_model

TRAINED: tuple[str, ...] = ("pgd", "trades", "fast", "noise", "distill")
WRAPPED: tuple[str, ...] = ("magnet", "squeeze")
DEFENSES: tuple[str, ...] = (*TRAINED, *WRAPPED)


def _hook(defense: str, eps: float, steps: int, sigma: float) -> LossHook | None:
    if defense == "pgd":
        return pgd_training(eps=eps, steps=steps)
    if defense == "trades":
        return trades(eps=eps, steps=steps)
    if defense == "fast":
        return fast_adversarial_training(eps=eps)
    if defense == "noise":
        return gaussian_noise_training(sigma=sigma)
    return None


def _robust(model: nn.Module, test: Dataset, eps: float, steps: int, seed: int) -> dict[str, float]:
    """Robust accuracy of a plain model (no detectors) under FGSM, PGD and APGD-DLR at eps and eps / 2."""
    oracle = TorchOracle(model.eval(), input_shape=test.input_shape)
    rows: dict[str, float] = {}
    for name, params in (("fgsm", {}), ("pgd", {"steps": steps}), ("apgd", {"steps": steps, "loss": "dlr"})):
        for e in (eps / 2, eps):
            result = ATTACKS.get(name)(**params)(oracle, test.x, test.y, ThreatModel(eps=e), seed=seed)
            rows[f"{name}@{e:g}"] = float(result.robust_accuracy)
    return rows


def _extra(
    data: str,
    train_ds: Dataset,
    clean: float,
    defense: str,
    eps: float,
    steps: int,
    sigma: float,
    temperature: float,
) -> dict[str, Any]:
    """The metadata saved with a hardened model: what `attack`, `audit` and the oracle loader read back."""
    return {
        "dataset": data,
        "classes": list(train_ds.classes),
        "input_shape": list(train_ds.input_shape),
        "bounds": [0.0, 1.0],
        "defense": {"name": defense, "eps": eps, "steps": steps, "sigma": sigma, "temperature": temperature},
        "test_accuracy": clean,
    }


def _curves(rows: dict[str, float]) -> dict[str, dict[float, float]]:
    curves: dict[str, dict[float, float]] = {}
    for key, value in rows.items():
        name, _, eps = key.partition("@")
        curves.setdefault(name, {})[float(eps)] = value
    return curves


@user_errors
def harden_command(
    defense: Annotated[str, typer.Option(help=f"Defence: {', '.join(DEFENSES)}.")] = "pgd",
    data: Annotated[
        str, typer.Option("--data", "-d", help="Dataset (digits, mnist, an .npz...).")
    ] = "digits",
    arch: Annotated[
        str, typer.Option("--arch", "-a", help=f"Architecture: {', '.join(ARCHITECTURES)}.")
    ] = "small_cnn",
    eps: Annotated[float, typer.Option(help="linf budget the defence trains for and is judged at.")] = 0.1,
    steps: Annotated[
        int, typer.Option(min=1, help="PGD steps inside training and in the judging attacks.")
    ] = 10,
    sigma: Annotated[
        float, typer.Option(help="Noise of --defense noise (randomized smoothing's training).")
    ] = 0.25,
    temperature: Annotated[float, typer.Option(help="Temperature of --defense distill.")] = 20.0,
    epochs: Annotated[int, typer.Option(min=1)] = 10,
    batch_size: Annotated[int, typer.Option(min=1)] = 64,
    lr: Annotated[float, typer.Option()] = 2e-3,
    n: Annotated[int, typer.Option(min=1, help="Test images the attacks judge on.")] = 200,
    device: Annotated[str, typer.Option(help="cpu, cuda or auto.")] = "auto",
    seed: Annotated[int, typer.Option(min=0)] = 0,
    out_dir: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Folder for the hardened model (a zoo model, or the whole wrapped defence) and results.json.",
        ),
    ] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="Machine output only (JSON on stdout).")
    ] = False,
) -> None:
    """Train ARCH with a defence (pgd, trades, fast, noise, distill) or wrap a plainly trained one in a detector
    (magnet, squeeze); judge it against the plain model with FGSM, PGD and APGD-DLR, and wrapped defences with
    the adaptive attack through the whole defence. With --out, the hardened model is saved there (a wrapped
    defence as a whole: classifier, detectors and reformer), ready for `ramparts attack --model`."""
    if defense not in DEFENSES:
        raise invalid("--defense", defense, f"one of {', '.join(DEFENSES)}")
    if arch not in ARCHITECTURES:
        raise invalid("--arch", arch, f"one of {', '.join(ARCHITECTURES)}")
    if not 0 < eps <= 1:
        raise invalid("--eps", eps, "a linf budget in (0, 1]")
    config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, device=device)
    dev = config.resolve_device()
    train_ds, test_ds = load_splits(data)
    test = test_ds.subset(range(min(n, len(test_ds))))
    c, h, _ = train_ds.input_shape
    arch_config = {"in_channels": c, "input_size": h, "num_classes": train_ds.num_classes}

    def fresh() -> nn.Module:
        torch.manual_seed(seed)
        return build(arch, **arch_config)

    say = (lambda text: None) if json_output else (lambda text: err.print(f"[dim]{escape(text)}[/]"))
    say(f"Training plain {arch} on {len(train_ds)} {data} images ({epochs} epochs)...")
    t0 = time.perf_counter()
    plain = fresh()
    train(plain, train_ds, config=config, progress=not json_output)
    plain_s = time.perf_counter() - t0
    summary: dict[str, Any] = {"defense": defense, "data": data, "arch": arch, "eps": eps, "n": len(test)}
    test_dev = Dataset(test.x.to(dev), test.y.to(dev), test.classes, test.name)
    summary["plain"] = {
        "clean": evaluate(plain, test),
        "train_s": plain_s,
        **_robust(plain, test_dev, eps, steps, seed),
    }
    t0 = time.perf_counter()
    if defense in TRAINED:
        say(f"Training {arch} with {defense}...")
        if defense == "distill":
            hardened = distill(fresh(), train_ds, temperature=temperature, config=config).student
        else:
            hardened = fresh()
            train(
                hardened,
                train_ds,
                config=config,
                loss_hook=_hook(defense, eps, steps, sigma),
                progress=not json_output,
            )
        rows = _robust(hardened, test_dev, eps, steps, seed)
        summary["hardened"] = {
            "clean": evaluate(hardened, test),
            "train_s": time.perf_counter() - t0,
            **rows,
        }
        summary["warnings"] = masking_warnings(_curves(rows), unbounded=None)
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
            extra = _extra(
                data, train_ds, summary["hardened"]["clean"], defense, eps, steps, sigma, temperature
            )
            summary["model"] = str(save_model(hardened, out_dir, arch=arch, config=arch_config, extra=extra))
    else:
        say(f"Wrapping the plain model in {defense}...")
        split = int(0.85 * len(train_ds))
        fit, val = train_ds.subset(range(split)), train_ds.subset(range(split, len(train_ds)))
        defended: DefendedModel = (
            magnet(
                plain,
                fit,
                val,
                fpr=0.05,
                config=TrainConfig(epochs=epochs, seed=seed, device=device),
                seed=seed,
            )
            if defense == "magnet"
            else feature_squeezing(plain, val, fpr=0.05)
        )
        defended = defended.to(dev).eval()
        attack: Any = ATTACKS.get("pgd")
        pgd = attack(steps=steps)(
            TorchOracle(plain, input_shape=test.input_shape),
            test_dev.x,
            test_dev.y,
            ThreatModel(eps=eps),
            seed=seed,
        )
        fooled = defense_outcome(defended, pgd.x_adv, test_dev.y)[0]
        adaptive = adaptive_pgd(
            defended, test_dev.x, test_dev.y, eps=eps, steps=max(steps, 50), detector_weight=10.0, seed=seed
        )
        summary["hardened"] = {
            "clean": evaluate(defended, test_dev),
            "clean_fpr": float(defended.rejects(test_dev.x).float().mean()),
            "train_s": time.perf_counter() - t0,
            "non_adaptive_pgd_robust": 1.0 - float(fooled.float().mean()),
            "adaptive_pgd": adaptive.summary(),
        }
        summary["warnings"] = []
        if out_dir is not None:
            extra = _extra(
                data, train_ds, summary["hardened"]["clean"], defense, eps, steps, sigma, temperature
            )
            saved = save_defended(defended, out_dir, arch=arch, config=arch_config, extra=extra)
            summary["model"] = str(saved.parent)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "results.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    if json_output:
        print_json(summary)
        return
    _print(summary)


def _print(summary: dict[str, Any]) -> None:
    plain, hard = summary["plain"], summary["hardened"]
    table = Table(
        title=f"{summary['defense']} on {summary['arch']} ({summary['data']}, {summary['n']} test images)"
    )
    table.add_column("measure")
    table.add_column("plain", justify="right")
    table.add_column(summary["defense"], justify="right")
    table.add_row(
        "clean accuracy",
        f"{100 * plain['clean']:.1f}%",
        f"{100 * hard['clean']:.1f}%" if "clean" in hard else "-",
    )
    for key in (k for k in plain if "@" in k):
        table.add_row(
            f"robust accuracy, {key}",
            f"{100 * plain[key]:.1f}%",
            f"{100 * hard[key]:.1f}%" if key in hard else "-",
        )
    if "adaptive_pgd" in hard:
        table.add_row("clean rejected", "-", f"{100 * hard['clean_fpr']:.1f}%")
        table.add_row(
            f"robust, PGD on the plain model @{summary['eps']:g}",
            "-",
            f"{100 * hard['non_adaptive_pgd_robust']:.1f}%",
        )
        table.add_row(
            f"robust, adaptive PGD @{summary['eps']:g}",
            "-",
            f"{100 * hard['adaptive_pgd']['robust_accuracy']:.1f}%",
        )
    out.print(table)
    for warning in summary["warnings"]:
        out.print(f"[yellow]Warning:[/] {escape(warning)}")
    if "model" in summary:
        out.print(f"Saved [bold]{escape(summary['model'])}[/]; attack it with `ramparts attack --model ...`.")
