"""Backdoor detection in training data: spectral signatures and activation clustering on a BadNets-style MNIST.

A 3x3 white square near the bottom-right corner is stamped on a random `rate` share of a random
`n_train` subset of MNIST train (non-target images only), relabelled to the target class (Gu et al.
2017, BadNets; poison made here, not with `ramparts.poisoning`). A LeNet-5 is trained on the poisoned
set; each detector reads its penultimate layer (input of the last Linear; `spectral_signatures_conv`:
the 400-dim conv features) and flags records; the model is retrained from the same seed on the records
left, and the attack success rate (triggered non-target MNIST test images classified as the target) is
measured before and after. Every detector gets the true poison share of the target class as
`expected_fraction`, as both papers assume an upper bound is known. One full run per seed (subset,
poison, initial weights, shuffling, ICA/k-means all follow it); `mean_over_seeds` averages them.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/backdoor_detection.py   # -> backdoor_detection.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from statistics import mean
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP: idle threads sleep

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # puts src/ on the path
from ramparts import zoo
from ramparts.data import Dataset, load_shared
from ramparts.defenses.clustering import activation_clustering
from ramparts.defenses.detection import DetectionResult
from ramparts.defenses.spectral import spectral_signatures
from ramparts.training import TrainConfig, evaluate, predict_logits, train

ARCH = "lenet5"
ARCH_CONFIG = {"in_channels": 1, "input_size": 28, "num_classes": 10}
# name -> (detector, its options besides expected_fraction)
DETECTORS: dict[str, tuple[Callable[..., DetectionResult], dict[str, Any]]] = {
    "spectral_signatures": (spectral_signatures, {}),
    "spectral_signatures_conv": (spectral_signatures, {"layer": "features"}),
    "activation_clustering_ica_size": (activation_clustering, {"reduction": "ica", "criterion": "size"}),
    "activation_clustering_pca_size": (activation_clustering, {"reduction": "pca", "criterion": "size"}),
    "activation_clustering_ica_silhouette": (
        activation_clustering,
        {"reduction": "ica", "criterion": "silhouette"},
    ),
}


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n-train", type=int, default=20000, help="MNIST training images used (random subset)")
    p.add_argument("--rates", type=float, nargs="+", default=[0.01, 0.05], help="poison share of the set")
    p.add_argument("--target", type=int, default=0)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="one full run per seed")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=str(Path(__file__).with_suffix(".json")))
    return p.parse_args()


def stamp(x: torch.Tensor) -> torch.Tensor:
    """The trigger: a 3x3 white square in the bottom-right corner, one pixel from the edge."""
    out = x.clone()
    out[:, :, -4:-1, -4:-1] = 1.0
    return out


def poison(ds: Dataset, *, rate: float, target: int, seed: int) -> tuple[Dataset, torch.Tensor]:
    """`ds` with `rate * len(ds)` random non-target records triggered and relabelled; the poison mask."""
    g = torch.Generator().manual_seed(seed)
    candidates = (ds.y != target).nonzero().flatten()
    pick = candidates[torch.randperm(candidates.numel(), generator=g)[: round(rate * len(ds))]]
    x, y = ds.x.clone(), ds.y.clone()
    x[pick] = stamp(x[pick])
    y[pick] = target
    mask = torch.zeros(len(ds), dtype=torch.bool)
    mask[pick] = True
    return Dataset(x, y, ds.classes, ds.name), mask


def fit(ds: Dataset, args: argparse.Namespace, seed: int) -> tuple[torch.nn.Module, float]:
    """A LeNet-5 trained on `ds`; the initial weights too come from `seed` (same seed, same model)."""
    torch.manual_seed(seed)
    model = zoo.build(ARCH, **ARCH_CONFIG)
    cfg = TrainConfig(epochs=args.epochs, batch_size=128, lr=1e-3, seed=seed, device="cpu")
    t0 = time.perf_counter()
    train(model, ds, config=cfg, progress=False)
    return model, time.perf_counter() - t0


def attack_success(model: torch.nn.Module, test: Dataset, target: int) -> float:
    others = test.x[test.y != target]
    return float((predict_logits(model, stamp(others)).argmax(1) == target).float().mean())


def one_run(full: Dataset, test: Dataset, rate: float, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """Poison a `seed`-drawn subset at `rate`, train, run every detector, retrain on what each keeps."""
    idx = torch.randperm(len(full), generator=torch.Generator().manual_seed(seed))[: args.n_train]
    pds, mask = poison(full.subset(idx.sort().values), rate=rate, target=args.target, seed=seed)
    model, seconds = fit(pds, args, seed)
    in_target = pds.y == args.target
    eps = float(mask.sum()) / float(in_target.sum())
    run: dict[str, Any] = {
        "rate": rate,
        "seed": seed,
        "n_poison": int(mask.sum()),
        "target_class_poison_share": eps,
        "train_seconds": seconds,
        "clean_accuracy": evaluate(model, test),
        "attack_success": attack_success(model, test, args.target),
        "detectors": {},
    }
    for name, (detector, options) in DETECTORS.items():
        t0 = time.perf_counter()
        seeded = {"seed": seed} if detector is activation_clustering else {}
        result = detector(model, pds, expected_fraction=eps, **options, **seeded)
        detect_s = time.perf_counter() - t0
        # nothing removed: retraining with the same seed on the same set gives the same model
        retrained = fit(pds.subset(~result.flagged), args, seed)[0] if result.flagged.any() else model
        run["detectors"][name] = {
            **result.metrics(mask),
            "target_class_clean_fpr": float((result.flagged & ~mask & in_target).sum())
            / float((~mask & in_target).sum()),
            "detect_seconds": detect_s,
            "retrained_clean_accuracy": evaluate(retrained, test),
            "retrained_attack_success": attack_success(retrained, test, args.target),
            "config": result.config,
            "per_class": result.extra["per_class"],
        }
    return run


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per rate and detector, the mean over seeds of recall, clean FPR, precision and retrained ASR."""
    keys = ("recall", "clean_fpr", "precision", "retrained_clean_accuracy", "retrained_attack_success")
    table: dict[str, Any] = {}
    for rate in sorted({r["rate"] for r in runs}):
        group = [r for r in runs if r["rate"] == rate]
        row: dict[str, Any] = {
            "seeds": len(group),
            "attack_success": mean([r["attack_success"] for r in group]),
            "clean_accuracy": mean([r["clean_accuracy"] for r in group]),
        }
        for name in DETECTORS:
            row[name] = {k: mean([r["detectors"][name][k] for r in group]) for k in keys}
        table[str(rate)] = row
    return table


def main() -> None:
    args = parse()
    torch.set_num_threads(args.threads)
    full = load_shared("mnist", split="train")
    test = load_shared("mnist", split="test")
    out: dict[str, Any] = {
        "settings": {
            "arch": ARCH,
            "n_train": args.n_train,
            "epochs": args.epochs,
            "target": args.target,
            "trigger": "3x3 white square, bottom-right corner",
            "seeds": args.seeds,
            "layer": "input of the last nn.Linear (84 dims); *_conv: output of `features` (400 dims)",
        },
        "machine": C.machine_info(torch.device("cpu"), peers=("sklearn",)),
        "runs": [],
    }
    for seed in args.seeds:
        for rate in args.rates:
            out["runs"].append(one_run(full, test, rate, seed, args))
            out["mean_over_seeds"] = summarise(out["runs"])
            Path(args.json).write_text(json.dumps(out, indent=2, default=str) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
