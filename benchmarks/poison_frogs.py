"""Issue 6 reproduction: the Poison Frogs one-shot kill in the transfer-learning setting (Shafahi et al. 2018).

Paper: 100% success on dog-vs-fish with a frozen Inception-v3 and one watermarked poison per target.
Here (CPU, one thread, it must stay cheap): a zoo `small_cnn` is trained on the 8 CIFAR-10 classes
other than airplane and dog (the 10,000-image test split is all we have); its flattened conv
features (4096-d, `--features conv`) are the frozen extractor, and a linear head is retrained on
airplane-vs-dog (300 images per class) plus one poison per target, for each held-out target (both
directions: dog targets with airplane bases and the reverse). Airplane vs dog is the closest
analogue of the paper's dog vs fish (an animal against a non-animal class); the extractor's classes
hold look-alikes of both (cat; ship, truck), so its features transfer and the clean head is accurate.

The one-shot kill needs a feature space where the clean training set is linearly separable (as
Inception's 2048-d features are for the paper's ~1800 images): then the retrained head must fit the
poison, and the target that shares its features. On the 128-d hidden layer (`--features
penultimate`) the task is not separable and the attack mostly fails (see docs/poisoning.md).

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/poison_frogs.py --targets-per-class 25 --steps 500 \
        --lr 0.5 --json benchmarks/poison_frogs.json [--extractor-cache runs/frogs_extractor.safetensors]
    .venv/bin/python benchmarks/poison_frogs.py --quick       # smoke run
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C
from ramparts import zoo
from ramparts.data import Dataset, load_shared
from ramparts.poisoning import PoisonFrogs, evaluate_transfer, penultimate
from ramparts.training import TrainConfig, evaluate, train

CLASS_A, CLASS_B = 0, 5  # airplane, dog


def split(ds: Dataset, per_class: dict[str, int], seed: int) -> dict[str, Dataset]:
    """Per task class: disjoint train / targets / bases / test parts, drawn by `seed`."""
    gen = torch.Generator().manual_seed(seed)
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in per_class}
    for c in (CLASS_A, CLASS_B):
        idx = (ds.y == c).nonzero().flatten()
        idx = idx[torch.randperm(idx.numel(), generator=gen)]
        start = 0
        for name, n in per_class.items():
            parts[name].append(idx[start : start + n])
            start += n
    return {k: ds.subset(torch.cat(v)) for k, v in parts.items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--extractor-epochs", type=int, default=8)
    parser.add_argument("--train-per-class", type=int, default=300)
    parser.add_argument("--targets-per-class", type=int, default=50)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--lr", type=float, nargs="+", default=[0.5])
    parser.add_argument("--beta", type=float, default=None, help="default: the paper's scaled beta")
    parser.add_argument("--opacity", type=float, nargs="+", default=[0.3])
    parser.add_argument("--poisons-per-target", type=int, nargs="+", default=[1])
    parser.add_argument(
        "--extractor-cache",
        type=Path,
        default=None,
        help="safetensors file: load the extractor from it, or train and save it there",
    )
    parser.add_argument(
        "--features",
        choices=("penultimate", "conv"),
        default="conv",
        help="frozen extractor: the 128-d hidden layer, or the 4096-d flattened conv features",
    )
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.extractor_epochs, args.targets_per_class, args.steps = 1, 5, 50
    torch.set_num_threads(args.threads)
    C.reseed(args.seed)

    cifar = load_shared("cifar10")
    other = cifar.subset((cifar.y != CLASS_A) & (cifar.y != CLASS_B))
    t0 = time.perf_counter()
    model = zoo.build("small_cnn", in_channels=3, input_size=32, num_classes=10, width=args.width)
    cache = args.extractor_cache
    if cache is not None and cache.is_file():
        zoo.load_weights(model, cache)
    else:
        config = TrainConfig(
            epochs=args.extractor_epochs, batch_size=64, lr=1e-3, seed=args.seed, device="cpu"
        )
        train(model, other, config=config, progress=False)
        if cache is not None:
            zoo.save_weights(model, cache)
    model.eval()
    extractor_s = time.perf_counter() - t0
    extractor_acc = evaluate(model, other)
    features = penultimate(model) if args.features == "penultimate" else model.features

    n = args.train_per_class
    parts = split(
        cifar, {"train": n, "targets": args.targets_per_class, "bases": 300, "test": 350}, args.seed
    )
    runs: list[dict[str, Any]] = []
    grid = [(lr, o, p) for lr in args.lr for o in args.opacity for p in args.poisons_per_target]
    for lr, opacity, per_target in grid:
        attack = PoisonFrogs(beta=args.beta, lr=lr, steps=args.steps, opacity=opacity)
        results = []
        for target_class, base_class in ((CLASS_B, CLASS_A), (CLASS_A, CLASS_B)):
            targets = parts["targets"].subset((parts["targets"].y == target_class).nonzero().flatten())
            bases = parts["bases"].x[parts["bases"].y == base_class]
            res = evaluate_transfer(
                attack,
                features,
                parts["train"],
                parts["test"],
                targets,
                bases,
                base_class=base_class,
                poisons_per_target=per_target,
                seed=args.seed,
            )
            results.append(res)
            print(
                f"lr {lr} opacity {opacity} x{per_target} {cifar.classes[target_class]}->{cifar.classes[base_class]}: "
                f"success {res.attack_success:.3f}, clean acc {res.clean_accuracy:.4f} "
                f"(baseline {res.baseline_accuracy:.4f}), {res.elapsed_s:.1f}s, craft {res.extra['craft']}",
                flush=True,
            )
        n_targets = sum(len(r.extra["per_target"]) for r in results)
        hits = sum(t["success"] for r in results for t in r.extra["per_target"])
        clean_hits = sum(t["clean_model_says_base"] for r in results for t in r.extra["per_target"])
        crafts = [r.extra["craft"] for r in results]
        runs.append(
            {
                "lr": lr,
                "opacity": opacity,
                "poisons_per_target": per_target,
                "beta": crafts[0]["beta"],
                "targets": n_targets,
                "attack_success": hits / n_targets,
                "clean_head_says_base": clean_hits / n_targets,
                "clean_accuracy": sum(r.clean_accuracy for r in results) / len(results),
                "baseline_accuracy": results[0].baseline_accuracy,
                "poison_l2_mean": sum(c["l2_mean"] for c in crafts) / len(crafts),
                "poison_linf_mean": sum(c["linf_mean"] for c in crafts) / len(crafts),
                "target_base_l2_mean": sum(c["target_l2_mean"] for c in crafts) / len(crafts),
                "feature_ratio_mean": sum(c["feature_ratio_mean"] for c in crafts) / len(crafts),
                "steps_mean": sum(c["steps_mean"] for c in crafts) / len(crafts),
                "elapsed_s": sum(r.elapsed_s for r in results),
                "directions": [r.summary() for r in results],
            }
        )
    out = {
        "paper": "Shafahi et al. 2018, Poison Frogs! (transfer learning: 100% on dog-vs-fish, Inception-v3)",
        "task": f"{cifar.classes[CLASS_A]} vs {cifar.classes[CLASS_B]}, CIFAR-10 test split",
        "settings": {
            **{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "extractor": f"small_cnn width {args.width}, trained on the 8 other classes",
            "split_per_class": {"train": n, "targets": args.targets_per_class, "bases": 300, "test": 350},
        },
        "extractor_train_accuracy": extractor_acc,
        "extractor_train_s": extractor_s,
        "runs": runs,
        "machine": C.machine_info(torch.device("cpu"), peers=()),
    }
    for r in runs:
        print(
            f"lr {r['lr']} opacity {r['opacity']} x{r['poisons_per_target']}: success {r['attack_success']:.3f} on {r['targets']} "
            f"targets, L2 {r['poison_l2_mean']:.3f}, Linf {r['poison_linf_mean']:.3f}, clean acc "
            f"{r['clean_accuracy']:.4f} (baseline {r['baseline_accuracy']:.4f})"
        )
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
