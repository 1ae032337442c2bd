#!/usr/bin/env python
"""Shadow-model training: K models one after another vs all K at once with torch.func, plus the floor.

Data: the first `--n-train` images of the CIFAR-10 test split (`cifar10_test.npz` in the shared data
folder or `$RAMPARTS_DATA_DIR`). Each of the K models trains on its own random half of them (the
LiRA setup), for `--epochs` epochs of Adam, through `ramparts.privacy.batched.train_models` with
`batched=False` (the sequential reference) and `batched=True` (stacked parameters, functional_call +
vmap). The floor is K times the time of one model's bare forward + backward passes over its half for
the same epochs and batch size (no optimiser, no data gathering): what K separate models cannot avoid.
Times are wall clock after a warm-up step at the same K, CUDA-synchronised at both ends, one run each.
Both modes use Adam's fused kernel on CUDA (as `train_models` does) and the same `--precision` and
`--compile` (`torch.compile` of the forward pass, vmapped or not); `warmup_s` is the time of the warm-up
calls before each timing (for `--compile` it holds the compilation, which the timed runs then reuse). `max_abs_diff`
is the largest weight difference between the two modes: float rounding only, but Adam turns a rounding
difference in a near-zero gradient into a step of up to lr, so it can reach about lr x steps.

    python benchmarks/shadow_training.py --device cpu --k 4,16 --epochs 1 --n-train 2000 --threads 2
    python benchmarks/shadow_training.py --device cuda --k 16,64 --epochs 2 --n-train 10000 --json out.json

Prints one table and, with `--json`, writes the settings, machine and rows.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from _common import fmt, machine_info, machine_label, md_table, timed
from ramparts import data as rdata
from ramparts import zoo
from ramparts.errors import ValidationError
from ramparts.privacy.batched import train_models


def floor_seconds(
    arch: str, config: dict[str, Any], x: Tensor, y: Tensor, args: argparse.Namespace, device: torch.device
) -> float:
    """One model's forward + backward over ``x`` (already on ``device``) for the epochs, in batches."""
    torch.manual_seed(0)
    model = zoo.build(arch, **config).to(device).train()
    with timed(device) as t:
        for _ in range(args.epochs):
            for i in range(0, x.shape[0], args.batch_size):
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16"):
                    logits = model(x[i : i + args.batch_size])
                F.cross_entropy(logits.float(), y[i : i + args.batch_size]).backward()
    return t["s"]


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        test = rdata.load_shared("cifar10")
    except ValidationError as exc:
        sys.exit(f"shadow_training: the CIFAR-10 test split is needed ({exc})")
    if not 2 <= args.n_train <= len(test):
        sys.exit(f"shadow_training: --n-train must be in [2, {len(test)}], got {args.n_train}")
    x, y = test.x[: args.n_train].contiguous(), test.y[: args.n_train].contiguous()
    config = {"in_channels": x.shape[1], "input_size": x.shape[2], "num_classes": test.num_classes}
    half = args.n_train // 2
    gen = torch.Generator().manual_seed(args.seed)
    opts: dict[str, Any] = {
        "batch_size": args.batch_size,
        "lr": args.lr,
        "device": device,
        "precision": args.precision,
        "compiled": args.compile,
    }

    def subsets(k: int) -> Tensor:
        return torch.stack([torch.randperm(args.n_train, generator=gen)[:half] for _ in range(k)])

    first: dict[bool, float] = {}
    for batched in (False, True):  # warm-up: allocator, kernels, vmap's first trace, compilation
        with timed(device) as t:
            train_models(args.arch, config, x, y, subsets(2), [0, 1], epochs=1, batched=batched, **opts)
        first[batched] = t["s"]
    x_dev, y_dev = x[:half].to(device), y[:half].to(device)
    floor_one = floor_seconds(args.arch, config, x_dev, y_dev, args, device)
    rows = []
    for k in args.k:
        idx, seeds = subsets(k), list(range(k))
        times: dict[bool, float] = {}
        warmups: dict[bool, float] = {}
        states: dict[bool, list[dict[str, Tensor]]] = {}
        for batched in (False, True):
            # Warm-up at this K's shapes (grouped convolutions of K groups: cuDNN's first call is slow;
            # a compiled forward compiles for the full and the last partial batch).
            last = args.batch_size + half % args.batch_size
            with timed(device) as t:
                train_models(args.arch, config, x, y, idx[:, :last], seeds, epochs=1, batched=batched, **opts)
            warmups[batched] = t["s"]
            with timed(device) as t:
                states[batched] = train_models(
                    args.arch, config, x, y, idx, seeds, epochs=args.epochs, batched=batched, **opts
                )
            times[batched] = t["s"]
        diff = max(
            float((a[n] - b[n]).abs().max())
            for a, b in zip(states[True], states[False], strict=True)
            for n in a
        )
        floor = floor_one * k
        rows.append(
            {
                "k": k,
                "sequential_s": times[False],
                "batched_s": times[True],
                "floor_s": floor,
                "sequential_models_per_min": 60 * k / times[False],
                "batched_models_per_min": 60 * k / times[True],
                "speedup": times[False] / times[True],
                "batched_over_floor": times[True] / floor,
                "max_abs_diff": diff,
                "sequential_warmup_s": warmups[False],
                "batched_warmup_s": warmups[True],
            }
        )
    settings = {
        "arch": args.arch,
        "arch_config": config,
        "dataset": "cifar10 test",
        "n_train": args.n_train,
        "images_per_model": half,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "seed": args.seed,
        "precision": args.precision,
        "compiled": args.compile,
        "first_call_s": {"sequential": first[False], "batched": first[True]},
    }
    return {"settings": settings, "machine": machine_info(device, peers=()), "rows": rows}


def table(result: dict[str, Any]) -> str:
    head = [
        "K",
        "sequential s",
        "batched s",
        "floor s",
        "seq models/min",
        "batched models/min",
        "speed-up",
        "batched / floor",
        "max abs diff",
        "warm-up s (seq / batched)",
    ]
    body = [
        [
            str(r["k"]),
            fmt(r["sequential_s"], ".2f"),
            fmt(r["batched_s"], ".2f"),
            fmt(r["floor_s"], ".2f"),
            fmt(r["sequential_models_per_min"], ".1f"),
            fmt(r["batched_models_per_min"], ".1f"),
            fmt(r["speedup"], ".2f") + "x",
            fmt(r["batched_over_floor"], ".2f") + "x",
            fmt(r["max_abs_diff"], ".1e"),
            f"{fmt(r['sequential_warmup_s'], '.1f')} / {fmt(r['batched_warmup_s'], '.1f')}",
        ]
        for r in result["rows"]
    ]
    s = result["settings"]
    title = (
        f"{s['arch']} on {s['images_per_model']} CIFAR-10 images per model, {s['epochs']} epoch(s), "
        f"batch {s['batch_size']}, {s['precision']}{', compiled' if s['compiled'] else ''} "
        f"-- {machine_label(result['machine'])}"
    )
    return title + "\n\n" + md_table(head, body)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--k", type=lambda s: [int(v) for v in s.split(",")], default=[16, 64], help="e.g. 16,64")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument(
        "--n-train", type=int, default=10000, help="first n CIFAR-10 test images; each model gets half"
    )
    p.add_argument("--arch", default="small_cnn", choices=sorted(zoo.ARCHITECTURES))
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0, help="seed of the subsets")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--json", type=Path, default=None, help="write the result here")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="both modes")
    p.add_argument("--compile", action="store_true", help="torch.compile the forward pass (both modes)")
    p.add_argument("--cudnn-benchmark", action="store_true", help="let cuDNN autotune (both modes)")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device here")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    result = run(args)
    result["cudnn_benchmark"] = args.cudnn_benchmark
    print(table(result))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
