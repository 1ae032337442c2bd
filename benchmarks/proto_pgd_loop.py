#!/usr/bin/env python
"""What-if for `ramparts.evasion.gradient.iterate`: how close to the floor can the PGD loop get?

Not a benchmark of the library: a lean re-implementation of the same loop (same bookkeeping: per-sample
best by signed margin, per-sample pass counts, a final forward of the last iterate, plus the base class's
clean and final evaluation passes) to measure the overhead the suggestions in docs/benchmarks.md remove:

* one log_softmax per step shared by the loss and the margin (criteria.py computes it twice);
* tracker update without gather/index_put while the active set is the whole batch (base.py Tracker.offer);
* pass counters kept as Python ints per active set instead of two index_add_ per step (targets.py _charge);
* early stopping that compacts the batch every `k` steps instead of a host sync every step (gradient.py).

    python benchmarks/proto_pgd_loop.py --device cuda --n 1000
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

from ramparts import data as rdata  # noqa: E402
from ramparts import zoo  # noqa: E402
from ramparts.evasion import ATTACKS  # noqa: E402
from ramparts.oracles import TorchOracle  # noqa: E402
from ramparts.threat import ThreatModel  # noqa: E402


def margin_of(lp: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    own = lp.gather(1, y[:, None])[:, 0]
    return own - lp.scatter(1, y[:, None], float("-inf")).amax(dim=1)


def lean_pgd(model, x, y, eps, step, steps, rs, seed, check_every: int | None):
    """Lean PGD; check_every=None: no early stop; k: drop finished samples every k steps."""
    gen = torch.Generator(device=x.device).manual_seed(seed)
    with torch.no_grad():  # base class: clean pass (criterion + start margin)
        best_m = margin_of(model(x).log_softmax(1), y)
    best_x = x.clone()
    passes = 0
    idx = (best_m >= 0).nonzero()[:, 0] if check_every else None
    x0, yy = (x, y) if idx is None else (x[idx], y[idx])
    xa = x0
    if rs:
        xa = (x0 + (2 * torch.rand(x0.shape, generator=gen, device=x.device) - 1) * eps).clamp(0, 1)
    for k in range(steps):
        xa = xa.detach().requires_grad_(True)
        with torch.enable_grad():
            lp = model(xa).log_softmax(1)
            loss = -lp.gather(1, yy[:, None]).sum()
            (g,) = torch.autograd.grad(loss, xa)
        passes += len(xa)
        m = margin_of(lp.detach(), yy)
        xd = xa.detach()
        if idx is None:  # whole batch: no gather / index_put
            better = m < best_m
            best_x = torch.where(better.view(-1, 1, 1, 1), xd, best_x)
            best_m = torch.minimum(best_m, m)
        else:
            old = best_m[idx]
            better = m < old
            best_x[idx] = torch.where(better.view(-1, 1, 1, 1), xd, best_x[idx])
            best_m[idx] = torch.minimum(old, m)
            if (k + 1) % check_every == 0:  # one host sync every k steps
                keep = m >= 0
                if not bool(keep.all()):
                    idx, x0, yy, xd, g = idx[keep], x0[keep], yy[keep], xd[keep], g[keep]
                    if len(idx) == 0:
                        break
        xa = torch.min(torch.max(xd + step * g.sign(), x0 - eps), x0 + eps).clamp(0, 1)
    else:
        with torch.no_grad():  # final pass on the last iterate
            m = margin_of(model(xa).log_softmax(1), yy)
        if idx is None:
            better = m < best_m
            best_x = torch.where(better.view(-1, 1, 1, 1), xa, best_x)
        else:
            old = best_m[idx]
            best_x[idx] = torch.where((m < old).view(-1, 1, 1, 1), xa, best_x[idx])
        passes += len(xa)
    x_adv = torch.min(torch.max(best_x, x - eps), x + eps).clamp(0, 1)
    with torch.no_grad():  # base class: recompute success
        acc = float((model(x_adv).argmax(1) == y).float().mean())
    return acc, passes


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    model, _ = zoo.load_model(ROOT / "runs" / "bench" / "carlini_cnn_mnist_e2_s0")
    model = model.to(dev).eval()
    test = rdata.load_shared("mnist", split="test")
    x, y = test.x[: a.n].to(dev).contiguous(), test.y[: a.n].to(dev)
    eps, step, steps = 0.3, 0.01, 40
    oracle = TorchOracle(model, input_shape=(1, 28, 28), num_classes=10)
    threat = ThreatModel(norm="linf", eps=eps)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def floor():
        xa = x.clone()
        for _ in range(steps):
            xa.requires_grad_(True)
            torch.autograd.grad(F.cross_entropy(model(xa), y, reduction="sum"), xa)
            xa = xa.detach()
        return None

    def ours(es):
        atk = ATTACKS.get("pgd")(steps=steps, step_size=step, random_start=True)
        return lambda: (atk(oracle, x, y, threat, seed=0, early_stop=es).robust_accuracy, None)

    import torchattacks

    ta = torchattacks.PGD(model, eps=eps, alpha=step, steps=steps, random_start=True)
    cases = {
        "floor (40 fwd+bwd)": lambda: (None, floor()),
        "torchattacks.PGD": lambda: (float((model(ta(x, y)).argmax(1) == y).float().mean()), None),
        "ramparts pgd, early stop off": ours(False),
        "ramparts pgd, early stop on": ours(True),
        "lean loop, early stop off": lambda: lean_pgd(model, x, y, eps, step, steps, True, 0, None),
        "lean loop, early stop every 1": lambda: lean_pgd(model, x, y, eps, step, steps, True, 0, 1),
        "lean loop, early stop every 4": lambda: lean_pgd(model, x, y, eps, step, steps, True, 0, 4),
        "lean loop, early stop every 8": lambda: lean_pgd(model, x, y, eps, step, steps, True, 0, 8),
    }
    for fn in cases.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in cases}
    info: dict[str, tuple] = {}
    for _ in range(a.repeats):
        for name, fn in cases.items():
            torch.manual_seed(0)
            sync()
            t0 = time.perf_counter()
            info[name] = fn()
            sync()
            times[name].append(time.perf_counter() - t0)
    fl = statistics.median(times["floor (40 fwd+bwd)"])
    tat = statistics.median(times["torchattacks.PGD"])
    name = torch.cuda.get_device_name() if dev.type == "cuda" else "CPU"
    print(f"\n{name}, n={a.n}, torch {torch.__version__}, median of {a.repeats}")
    print("| case | robust acc | passes | wall ms | ×floor | ×torchattacks |\n|---|---|---|---|---|---|")
    for k, ts in times.items():
        t = statistics.median(ts)
        acc, passes = info[k]
        acc_s = "" if acc is None else f"{100 * acc:.1f}%"
        print(f"| {k} | {acc_s} | {passes or ''} | {1e3 * t:.1f} | {t / fl:.3f} | {t / tat:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
