#!/usr/bin/env python
"""Prototype: where does the time of a vmapped training step of K small CNNs go, and what speeds it up?

Variants of one epoch loop (K models, each on its own half of the CIFAR-10 test split, batch 128, Adam):
`base` (as `privacy.batched`), `fused` (Adam fused=True), `cl` (channels-last inputs), `bf16` (autocast),
`compile` (torch.compile of the vmapped forward), and `fwdbwd` (no optimiser: the batched floor). Prints
seconds per epoch after a warm-up epoch. For choosing what `train_models` should do on CUDA.

    python benchmarks/proto_batched_step.py --k 64 --variants base,fused,cl,bf16,compile,fwdbwd
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
import torch.nn.functional as F
from torch.func import functional_call, stack_module_state, vmap

from ramparts import data as rdata
from ramparts import zoo


def epoch(variant: str, k: int, x: torch.Tensor, y: torch.Tensor, rows: torch.Tensor, bs: int) -> float:
    dev = x.device
    config = {"in_channels": 3, "input_size": 32, "num_classes": 10}
    models = []
    for i in range(k):
        torch.manual_seed(i)
        models.append(zoo.build("small_cnn", **config))
    template = copy.deepcopy(models[0]).to("meta").train()
    params, buffers = stack_module_state(models)
    params = {n: p.detach().to(dev).requires_grad_() for n, p in params.items()}
    buffers = {n: b.to(dev) for n, b in buffers.items()}
    opt = torch.optim.Adam(params.values(), lr=1e-3, fused=variant == "fused")

    def logits(p: dict, b: dict, xb: torch.Tensor) -> torch.Tensor:
        return functional_call(template, (p, b), (xb,))

    forward = vmap(logits)
    if variant == "compile":
        forward = torch.compile(forward)
    if variant == "cl":
        x = x.contiguous(memory_format=torch.channels_last)
    m = rows.shape[1]

    def run_epoch() -> None:
        for i in range(0, m, bs):
            idx = rows[:, i : i + bs]
            xb = x[idx]
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=variant == "bf16"):
                out = forward(params, buffers, xb)
                loss = F.cross_entropy(out.flatten(0, 1).float(), y[idx].flatten(), reduction="none")
                loss = loss.view(k, -1).mean(1).sum()
            if variant != "fwdbwd":
                opt.zero_grad(set_to_none=True)
            loss.backward()
            if variant != "fwdbwd":
                opt.step()

    run_epoch()  # warm-up (and compilation)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    run_epoch()
    torch.cuda.synchronize()
    return time.perf_counter() - t0


def sequential_epoch(
    k: int, x: torch.Tensor, y: torch.Tensor, rows: torch.Tensor, bs: int, fused: bool
) -> float:
    config = {"in_channels": 3, "input_size": 32, "num_classes": 10}
    models = [zoo.build("small_cnn", **config).to(x.device).train() for _ in range(k)]
    opts = [torch.optim.Adam(m.parameters(), lr=1e-3, fused=fused) for m in models]

    def run_epoch() -> None:
        for model, opt, r in zip(models, opts, rows, strict=True):
            for i in range(0, r.shape[0], bs):
                idx = r[i : i + bs]
                loss = F.cross_entropy(model(x[idx]), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

    run_epoch()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    run_epoch()
    torch.cuda.synchronize()
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--k", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--variants", default="base,fused,cl,bf16,compile,fwdbwd")
    args = p.parse_args()
    ds = rdata.load_shared("cifar10")
    x, y = ds.x.cuda(), ds.y.cuda()
    gen = torch.Generator().manual_seed(0)
    rows = torch.stack([torch.randperm(len(ds), generator=gen)[: len(ds) // 2] for _ in range(args.k)]).cuda()
    print(f"K={args.k} on {torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
    for fused in (False, True):
        print(
            f"sequential{' fused' if fused else ''}: {sequential_epoch(args.k, x, y, rows, args.batch_size, fused):.3f} s/epoch",
            flush=True,
        )
    for variant in args.variants.split(","):
        try:
            print(
                f"batched {variant}: {epoch(variant, args.k, x, y, rows, args.batch_size):.3f} s/epoch",
                flush=True,
            )
        except Exception as exc:  # a variant that does not run is a finding, not a crash of the prototype
            print(f"batched {variant}: failed: {type(exc).__name__}: {str(exc)[:200]}", flush=True)


if __name__ == "__main__":
    main()
