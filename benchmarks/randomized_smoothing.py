"""Randomized smoothing (Cohen, Rosenfeld & Kolter 2019) on MNIST: certified L2 accuracy of a small CNN.

For each noise level sigma, a `small_cnn` is trained under Gaussian noise of that sigma
(`gaussian_noise_training`), then CERTIFY (n0 selection samples, n estimation samples, failure
probability alpha) runs on the first `--n-test` images of a seeded permutation of the MNIST test split.
Reports the certified accuracy at radii 0, 0.25, 0.5 (and a curve), the abstention rate, the clean
accuracy of the base model and of the smoothed PREDICT. Deterministic (`--seed`). Writes JSON
(settings + machine) and a PNG of the curves. The defaults took 7.4 minutes on one shared core of a 2-core AMD EPYC:

    .venv/bin/python benchmarks/randomized_smoothing.py \
        --json benchmarks/randomized_smoothing.json --png benchmarks/randomized_smoothing.png
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch

import _common as C
from ramparts import data as rdata
from ramparts import training, zoo
from ramparts.defenses.smoothing import (
    SmoothedClassifier,
    abstention_rate,
    certified_accuracy,
    gaussian_noise_training,
)
from ramparts.report.plots import certified_accuracy_plot

REPORTED = (0.0, 0.25, 0.5)
GRID = tuple(round(0.05 * i, 2) for i in range(0, 41))


def run_sigma(
    sigma: float, train: rdata.Dataset, test: rdata.Dataset, args: argparse.Namespace, device: torch.device
) -> dict[str, Any]:
    """Train a base model under noise `sigma`, then certify `test`; the row of the JSON for this sigma."""
    torch.manual_seed(args.seed)
    model = zoo.build(
        "small_cnn", in_channels=1, input_size=28, num_classes=10, width=args.width, hidden=args.hidden
    )
    config = training.TrainConfig(
        epochs=args.epochs, batch_size=128, lr=1e-3, seed=args.seed, device=str(device)
    )
    t0 = time.perf_counter()
    report = training.train(
        model, train, config=config, progress=False, loss_hook=gaussian_noise_training(sigma=sigma)
    )
    train_s = time.perf_counter() - t0
    base_acc = training.evaluate(model, test)
    smoothed = SmoothedClassifier(
        model, sigma=sigma, num_classes=10, batch_size=args.batch_size, input_shape=(1, 28, 28)
    )
    x, y = test.x.to(device), test.y.to(device)
    t0 = time.perf_counter()
    labels, radii = smoothed.certify(x, n0=args.n0, n=args.n, alpha=args.alpha, seed=args.seed)
    C.sync(device)
    certify_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    predicted = smoothed.predict(x, n=args.n_predict, alpha=args.alpha, seed=args.seed + 1)
    predict_s = time.perf_counter() - t0
    curve = certified_accuracy(labels, radii, y, GRID)
    at = dict(certified_accuracy(labels, radii, y, REPORTED))
    return {
        "sigma": sigma,
        "train_seconds": round(train_s, 1),
        "train_acc": report.train_acc[-1],
        "base_clean_accuracy": base_acc,
        "smoothed_predict_accuracy": float((predicted == y).double().mean()),
        "smoothed_predict_abstention": abstention_rate(predicted),
        "certified_accuracy": {f"{r:g}": at[r] for r in REPORTED},
        "abstention_rate": abstention_rate(labels),
        "median_radius_of_correct": float(radii[labels == y].median()) if bool((labels == y).any()) else 0.0,
        "curve": curve,
        "certify_seconds": round(certify_s, 1),
        "predict_seconds": round(predict_s, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sigmas", type=float, nargs="+", default=[0.25, 0.5])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--train-size", type=int, default=60000)
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--n-test", type=int, default=200)
    parser.add_argument("--n0", type=int, default=100)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--n-predict", type=int, default=500)
    parser.add_argument("--alpha", type=float, default=0.001)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--png", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    train = rdata.load_shared("mnist", split="train")
    if args.train_size < len(train):
        train = train.subset(
            torch.randperm(len(train), generator=torch.Generator().manual_seed(args.seed))[: args.train_size]
        )
    test_all = rdata.load_shared("mnist", split="test")
    pick = torch.randperm(len(test_all), generator=torch.Generator().manual_seed(args.seed))[: args.n_test]
    test = test_all.subset(pick)
    t0 = time.perf_counter()
    rows = [run_sigma(s, train, test, args, device) for s in args.sigmas]
    out = {
        "paper": "Cohen, Rosenfeld & Kolter 2019, Certified Adversarial Robustness via Randomized Smoothing",
        "settings": {k: v for k, v in vars(args).items() if k not in ("json", "png")}
        | {"arch": "small_cnn", "test_subset": "first n_test of randperm(10000, seed)"},
        "machine": C.machine_info(device, peers=()),
        "total_seconds": round(time.perf_counter() - t0, 1),
        "results": rows,
    }
    text = json.dumps(out, indent=2)
    if args.json:
        args.json.write_text(text + "\n")
    else:
        print(text)
    if args.png:
        args.png.write_bytes(
            certified_accuracy_plot(
                {f"sigma = {r['sigma']:g}": r["curve"] for r in rows},
                title=f"MNIST small_cnn, {args.n_test} test images, n = {args.n}, alpha = {args.alpha:g}",
            )
        )
    for r in rows:
        print(
            f"sigma={r['sigma']:g}: certified {r['certified_accuracy']}, abstain {r['abstention_rate']:.3f}, "
            f"base clean {r['base_clean_accuracy']:.3f}, train {r['train_seconds']}s, certify {r['certify_seconds']}s"
        )


if __name__ == "__main__":
    main()
