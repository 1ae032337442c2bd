"""Reproduce Steinhardt, Koh & Liang 2017 (Figure 2 style) on MNIST-1-7 with a linear SVM, on CPU.

For each poisoned fraction eps: the certified upper bound U* on the clean+poison training loss, and the
test 0-1 error of the SVM retrained on clean + the candidate attack, (a) without defence (attack points
anywhere in [0, 1]^784) and (b) with the oracle sphere+slab defence, one run per radii quantile.
Deterministic (`--seed` draws the optional training subsample). Writes JSON (settings + machine) and a PNG.
All 13007 training 1s and 7s, 100 descent steps: about 15 minutes on 2 shared CPU cores.

    .venv/bin/python benchmarks/certified_poisoning.py --steps 100 \
        --json benchmarks/certified_poisoning.json --png benchmarks/certified_poisoning.png
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch

import _common as C
from ramparts import data as rdata
from ramparts.defenses.certified import certify_linear_svm

EPS = (0.0, 0.005, 0.01, 0.015, 0.02, 0.03, 0.1, 0.3)


def pair(split: str, a: int, b: int) -> rdata.Dataset:
    """The MNIST records of digits `a` and `b` (label b becomes +1 in the SVM)."""
    ds = rdata.load_shared("mnist", split=split)
    return ds.subset((ds.y == a) | (ds.y == b))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n-train", type=int, default=0, help="training subsample (0 = all 1s and 7s)")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--lr", type=float, default=1.0)
    p.add_argument("--l2", type=float, default=0.01)
    p.add_argument(
        "--quantiles",
        type=float,
        nargs="+",
        default=[0.9, 0.98],
        help="sphere and slab radii quantiles, one run each",
    )
    p.add_argument("--eps", type=float, nargs="+", default=list(EPS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None)
    p.add_argument("--png", default=None)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    torch.set_num_threads(args.threads)
    if C.rdata.shared_data_dir() is None:
        print("MNIST not found in the shared data dir; nothing to do", file=sys.stderr)
        return 1
    train, test = pair("train", 1, 7), pair("test", 1, 7)
    n_all = len(train)
    if args.n_train and args.n_train < n_all:
        g = torch.Generator().manual_seed(args.seed)
        train = train.subset(torch.randperm(n_all, generator=g)[: args.n_train])
    out: dict[str, Any] = {
        "args": vars(args),
        "machine": C.machine_info(torch.device("cpu"), peers=()),
        "data": {
            "train_pool": n_all,
            "n_train": len(train),
            "n_test": len(test),
            "labels": "1 -> -1, 7 -> +1",
        },
        "runs": {},
    }
    settings: list[tuple[str, float | None]] = [("no_defence", None)]
    settings += [(f"sphere_slab_oracle_q{q:g}", q) for q in args.quantiles]
    for name, q in settings:
        t0 = time.perf_counter()
        res = certify_linear_svm(
            train,
            test,
            args.eps,
            l2=args.l2,
            steps=args.steps,
            lr=args.lr,
            sphere_quantile=q,
            slab_quantile=q,
            seed=args.seed,
            progress=True,
        )
        out["runs"][name] = {**res.summary(), "wall_s": round(time.perf_counter() - t0, 1)}
        print(f"{name}: clean test error {res.clean_test_error:.4f}")
        for e, u, err in zip(res.eps, res.upper_bound, res.candidate_test_error, strict=True):
            print(f"  eps={e:<6g} bound={u:.4f} candidate test error={err:.4f}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2, default=str) + "\n", encoding="utf-8")
    if args.png:
        plot(out, Path(args.png))
    return 0


def plot(out: dict[str, Any], path: Path) -> None:
    """Two panels: the certified bound on the loss, and the candidate attack's test error, against eps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for (name, run), style in zip(out["runs"].items(), ("o-", "s-", "^-", "v-", "d-"), strict=False):
        left.plot(run["eps"], run["upper_bound"], style, label=f"upper bound U*, {name}")
        right.plot(run["eps"], run["candidate_test_error"], style, label=f"candidate attack, {name}")
    left.set(
        xlabel="poisoned fraction eps", ylabel="hinge loss (clean + poison) / n", title="Certified bound"
    )
    right.set(
        xlabel="poisoned fraction eps", ylabel="test 0-1 error", title="Test error of the candidate attack"
    )
    for ax in (left, right):
        ax.set_xscale("symlog", linthresh=0.005)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(
        f"MNIST 1 vs 7, linear SVM, n={out['data']['n_train']} (Steinhardt et al. 2017, Fig. 2 style)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    raise SystemExit(main())
