#!/usr/bin/env python
"""Prototype: where does the time of a vmapped training step of K small CNNs go, and what speeds it up?

Variants of one epoch loop (K models, each on its own half of the CIFAR-10 test split, batch 128, Adam),
each a `+`-joined set of flags: `base` (as `privacy.batched`), `fused` (Adam fused=True), `cl`
(channels-last inputs), `bf16` (autocast), `compile` (torch.compile of the vmapped forward), `unfold`
(convolutions as unfold + one matmul per model instead of the grouped convolution vmap makes), `tf32`
(TF32 matmuls, as cuDNN's convolutions already use), and `fwdbwd` (no optimiser: the batched floor).
Prints seconds per epoch after a warm-up epoch. For choosing what `train_models` should do on CUDA.

    python benchmarks/proto_batched_step.py --k 64 --variants base,fused,cl,bf16,bf16+cl,unfold+tf32,compile
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


class UnfoldConv2d(torch.nn.Conv2d):
    """A convolution computed as unfold + matmul: under vmap a batched matmul, not a grouped convolution."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = self.kernel_size, self.stride, self.padding, self.dilation
        oh, ow = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
        cols = F.unfold(x, self.kernel_size, self.dilation, self.padding, self.stride)
        out = cols.transpose(1, 2).reshape(n * oh * ow, -1) @ self.weight.reshape(self.out_channels, -1).t()
        if self.bias is not None:
            out = out + self.bias
        return out.view(n, oh, ow, self.out_channels).permute(0, 3, 1, 2)


def swap_convs(module: torch.nn.Module) -> None:
    for sub in module.modules():
        if type(sub) is torch.nn.Conv2d:
            sub.__class__ = UnfoldConv2d


def epoch(variant: str, k: int, x: torch.Tensor, y: torch.Tensor, rows: torch.Tensor, bs: int) -> float:
    dev = x.device
    config = {"in_channels": 3, "input_size": 32, "num_classes": 10}
    models = []
    for i in range(k):
        torch.manual_seed(i)
        models.append(zoo.build("small_cnn", **config))
    flags = set(variant.split("+"))
    torch.backends.cuda.matmul.allow_tf32 = "tf32" in flags
    template = copy.deepcopy(models[0]).to("meta").train()
    if "unfold" in flags:
        swap_convs(template)
    params, buffers = stack_module_state(models)
    params = {n: p.detach().to(dev).requires_grad_() for n, p in params.items()}
    buffers = {n: b.to(dev) for n, b in buffers.items()}
    opt = torch.optim.Adam(params.values(), lr=1e-3, fused="fused" in flags)

    def logits(p: dict, b: dict, xb: torch.Tensor) -> torch.Tensor:
        return functional_call(template, (p, b), (xb,))

    forward = vmap(logits)
    if "compile" in flags:
        forward = torch.compile(forward)
    if "cl" in flags:
        x = x.contiguous(memory_format=torch.channels_last)
    m = rows.shape[1]

    def run_epoch() -> None:
        for i in range(0, m, bs):
            idx = rows[:, i : i + bs]
            xb = x[idx]
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled="bf16" in flags):
                out = forward(params, buffers, xb)
                loss = F.cross_entropy(out.flatten(0, 1).float(), y[idx].flatten(), reduction="none")
                loss = loss.view(k, -1).mean(1).sum()
            if "fwdbwd" not in flags:
                opt.zero_grad(set_to_none=True)
            loss.backward()
            if "fwdbwd" not in flags:
                opt.step()

    run_epoch()  # warm-up (and compilation)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    run_epoch()
    torch.cuda.synchronize()
    return time.perf_counter() - t0


def sequential_epoch(
    k: int, x: torch.Tensor, y: torch.Tensor, rows: torch.Tensor, bs: int, fused: bool, bf16: bool
) -> float:
    config = {"in_channels": 3, "input_size": 32, "num_classes": 10}
    models = [zoo.build("small_cnn", **config).to(x.device).train() for _ in range(k)]
    opts = [torch.optim.Adam(m.parameters(), lr=1e-3, fused=fused) for m in models]

    def run_epoch() -> None:
        for model, opt, r in zip(models, opts, rows, strict=True):
            for i in range(0, r.shape[0], bs):
                idx = r[i : i + bs]
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
                    out = model(x[idx])
                loss = F.cross_entropy(out.float(), y[idx])
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
    for fused, bf16 in ((False, False), (True, False), (True, True)):
        secs = sequential_epoch(args.k, x, y, rows, args.batch_size, fused, bf16)
        print(
            f"sequential{' fused' if fused else ''}{' bf16' if bf16 else ''}: {secs:.3f} s/epoch", flush=True
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
