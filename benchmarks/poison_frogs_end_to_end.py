#!/usr/bin/env python
"""Poison Frogs end to end (Shafahi et al. 2018, section 4.2) at small scale on the digits.

A 10-class MLP is trained on the digits other than 3 and 8, then on a 3-vs-8 task (200 images); each of
`--targets` held-out 3s gets `--poisons` feature-collision poisons crafted from 8s (watermark opacity
`--opacity`), and a copy of the whole network is fine-tuned on the task set + its poisons. Success: the
target is now labelled 8. Writes JSON with the settings, the machine and one row per (poisons, opacity).

    python benchmarks/poison_frogs_end_to_end.py --targets 20 --poisons 1,5,10 --opacity 0,0.3 --json out.json
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path
from typing import Any

import torch

from _common import machine_info
from ramparts import zoo
from ramparts.data import load_digits
from ramparts.poisoning import PoisonFrogs, evaluate_end_to_end
from ramparts.training import TrainConfig, train

TARGET, BASE = 3, 8


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--targets", type=int, default=20)
    p.add_argument("--poisons", default="1,5,10")
    p.add_argument("--opacity", default="0,0.3")
    p.add_argument("--fine-tune-epochs", type=int, default=10)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    ds = load_digits()
    task = (ds.y == TARGET) | (ds.y == BASE)
    model = zoo.build("mlp", in_channels=1, input_size=8, num_classes=10)
    train(
        model,
        ds.subset(~task),
        config=TrainConfig(epochs=15, batch_size=64, lr=2e-3, seed=0, device="cpu"),
        progress=False,
    )
    idx = task.nonzero().flatten()
    idx = idx[torch.randperm(idx.numel(), generator=torch.Generator().manual_seed(0))]
    train_set, rest = ds.subset(idx[:200]), ds.subset(idx[200:])
    test_set, pool = rest.subset(torch.arange(60)), rest.subset(torch.arange(60, len(rest)))
    targets = pool.subset((pool.y == TARGET).nonzero().flatten()[: args.targets])
    bases = pool.x[pool.y == BASE]
    pretrained = copy.deepcopy(model)
    train(
        pretrained,
        train_set,
        config=TrainConfig(epochs=10, batch_size=32, seed=0, device="cpu"),
        progress=False,
    )
    tune = TrainConfig(epochs=args.fine_tune_epochs, batch_size=32, lr=1e-3, seed=0, device="cpu")
    rows: list[dict[str, Any]] = []
    for opacity in (float(v) for v in args.opacity.split(",")):
        for k in (int(v) for v in args.poisons.split(",")):
            t0 = time.perf_counter()
            result = evaluate_end_to_end(
                PoisonFrogs(lr=0.1, steps=args.steps, opacity=opacity),
                pretrained,
                train_set,
                test_set,
                targets,
                bases,
                base_class=BASE,
                poisons_per_target=k,
                config=tune,
            )
            rows.append(
                {
                    "poisons_per_target": k,
                    "opacity": opacity,
                    "success": result.attack_success,
                    "clean_accuracy": result.clean_accuracy,
                    "baseline_accuracy": result.baseline_accuracy,
                    "seconds": time.perf_counter() - t0,
                }
            )
            print(rows[-1], flush=True)
    out = {
        "settings": vars(args)
        | {"json": None, "task": "digits 3 (targets) vs 8 (bases)", "train": len(train_set)},
        "machine": machine_info(torch.device("cpu"), peers=()),
        "rows": rows,
    }
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
