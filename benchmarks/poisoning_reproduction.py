"""Issue 6, "Reproduction": BadNets (Gu et al. 2017) on MNIST and label flipping (Biggio et al. 2011,
Xiao et al. 2012) on the embedded digits, on CPU.

1. BadNets: LeNet-5 trained on MNIST train (60k) with a 3x3 white square in the bottom-right corner,
   target class 0, poison rates 0.1%, 0.5%, 1%; attack success on the MNIST test images not of class 0,
   clean accuracy against the same pipeline trained on the clean set.
2. Label flipping: digits (75/25 stratified split, seed 0), accuracy against the flipped fraction for
   random, class-pair (1 -> 7) and loss-maximising flips, on a linear model and a small CNN.

    .venv/bin/python benchmarks/poisoning_reproduction.py --json benchmarks/poisoning_reproduction.json
    .venv/bin/python benchmarks/poisoning_reproduction.py --quick       # smoke run (MNIST subset, 1 epoch)

The committed JSON was made in two steps (the 10-epoch run added to the first output with --merge):

    ... --epochs 5 --json a.json --plot benchmarks/poisoning_flipping.png
    ... --epochs 10 --skip-flip --merge a.json --json benchmarks/poisoning_reproduction.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C
from ramparts import data as rdata
from ramparts.errors import ValidationError
from ramparts.poisoning import (
    BadNets,
    LossFlip,
    PairFlip,
    PoisoningAttack,
    RandomFlip,
    fraction_sweep,
    linear_pipeline,
    zoo_pipeline,
)
from ramparts.training import TrainConfig

FLIP_FRACTIONS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4)
BADNETS_FRACTIONS = (0.001, 0.005, 0.01)


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--epochs", type=int, nargs="+", default=[5, 10], help="LeNet-5 epochs on MNIST, one run each"
    )
    p.add_argument("--patch-size", type=int, default=3)
    p.add_argument("--pattern", default="square")
    p.add_argument("--quick", action="store_true", help="smoke run: 6k MNIST images, 1 epoch")
    p.add_argument("--skip-mnist", action="store_true")
    p.add_argument("--skip-flip", action="store_true")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument(
        "--merge",
        type=Path,
        default=None,
        help="an earlier output: its sections not rerun here are kept, its MNIST runs come first",
    )
    p.add_argument("--plot", type=Path, default=None, help="PNG of the flipping curves")
    return p.parse_args()


def badnets_mnist(args: argparse.Namespace, epochs: int) -> dict[str, Any]:
    train = rdata.load_shared("mnist", split="train")
    test = rdata.load_shared("mnist", split="test")
    if args.quick:
        train, test, epochs = train.subset(torch.arange(6000)), test.subset(torch.arange(2000)), 1
    config = TrainConfig(epochs=epochs, batch_size=128, lr=1e-3, seed=args.seed, device="cpu")
    attack = BadNets(
        target_class=0, patch_size=args.patch_size, position="bottom-right", pattern=args.pattern
    )
    start = time.perf_counter()
    result = fraction_sweep(
        attack, train, test, zoo_pipeline("lenet5", {}, config), BADNETS_FRACTIONS, seed=args.seed
    )
    return {
        "settings": {
            "model": "lenet5",
            "train": len(train),
            "test": len(test),
            "train_config": config.to_dict(),
            "attack": attack.config(),
            "fractions": list(BADNETS_FRACTIONS),
        },
        "curve": result.curve,
        "baseline_accuracy": result.baseline_accuracy,
        "seconds": time.perf_counter() - start,
    }


def flipping_digits(args: argparse.Namespace) -> dict[str, Any]:
    train, test = rdata.train_test_split(rdata.load_digits(), seed=args.seed)
    pipelines = {
        "linear": linear_pipeline(seed=args.seed),
        "small_cnn": zoo_pipeline(
            "small_cnn",
            {"width": 8, "hidden": 32},
            TrainConfig(epochs=20, batch_size=64, lr=3e-3, seed=args.seed, device="cpu"),
        ),
    }
    attacks: dict[str, PoisoningAttack] = {
        "flip_random": RandomFlip(),
        "flip_pair": PairFlip(source=1, target=7),
        "flip_loss": LossFlip(),
    }
    out: dict[str, Any] = {
        "settings": {"train": len(train), "test": len(test), "fractions": list(FLIP_FRACTIONS)},
        "curves": {},
    }
    for model_name, pipeline in pipelines.items():
        for attack_name, attack in attacks.items():
            start = time.perf_counter()
            fractions = [f for f in FLIP_FRACTIONS if _fits(attack, train, f)]
            result = fraction_sweep(attack, train, test, pipeline, fractions, seed=args.seed)
            out["curves"][f"{model_name}/{attack_name}"] = {
                "curve": result.curve,
                "config": attack.config(),
                "seconds": time.perf_counter() - start,
            }
            logging.info(
                "%s/%s: %s", model_name, attack_name, [round(p["clean_accuracy"], 3) for p in result.curve]
            )
    return out


def _fits(attack: PoisoningAttack, train: rdata.Dataset, fraction: float) -> bool:
    """Whether the attack's budget allows `fraction` (a class-pair flip has one class's records only)."""
    try:
        attack(train, fraction=fraction, seed=0)
    except ValidationError:
        return False
    return True


def plot(flip: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5), sharey=True)
    for ax, model in zip(axes, ("linear", "small_cnn"), strict=True):
        for key, entry in flip["curves"].items():
            if key.startswith(model + "/"):
                xs = [100 * p["fraction"] for p in entry["curve"]]
                ys = [100 * p["clean_accuracy"] for p in entry["curve"]]
                ax.plot(xs, ys, marker="o", label=key.split("/")[1])
        ax.set_title(f"digits, {model}")
        ax.set_xlabel("flipped labels (% of training set)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("clean test accuracy (%)")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    args = parse()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("ramparts.training").setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    out: dict[str, Any] = {"machine": C.machine_info(torch.device("cpu"), peers=()), "seed": args.seed}
    earlier: dict[str, Any] = json.loads(args.merge.read_text()) if args.merge is not None else {}
    if args.skip_flip and "flipping_digits" in earlier:
        out["flipping_digits"] = earlier["flipping_digits"]
    if not args.skip_flip:
        out["flipping_digits"] = flipping_digits(args)
        if args.plot is not None:
            plot(out["flipping_digits"], args.plot)
    runs: list[dict[str, Any]] = list(earlier.get("badnets_mnist", []))
    if not args.skip_mnist:
        for epochs in args.epochs:
            runs.append(badnets_mnist(args, epochs))
            logging.info("badnets, %d epochs: %s", epochs, runs[-1]["curve"])
    if runs:
        out["badnets_mnist"] = runs
    text = json.dumps(out, indent=2)
    if args.json is not None:
        args.json.write_text(text + "\n")
    else:
        sys.stdout.write(text + "\n")


if __name__ == "__main__":
    main()
