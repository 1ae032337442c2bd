"""Issue 5, "Reproduction": membership inference on the CIFAR-10 test split (or MNIST) with small CNNs.

K + 1 models of one recipe train together (vmap) on random halves of the records; model 0 is the target,
the others the shadows. Every attack scores every record; members are label 1. Rows: LOSS, gap, Shokri,
LiRA online / offline (per-record and global variance), RMIA offline with 1, 2, 4 reference models next
to offline LiRA with the same models, label-only. With `--dp`, targets trained with DP-SGD at each epsilon
are attacked by LiRA with the same (non-private) shadows: TPR at 0.1% FPR against epsilon.

    python benchmarks/membership_reproduction.py --device cuda --shadows 64 --json $OUT/mia.json
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
from ramparts import data as rdata
from ramparts.privacy import MEMBERSHIP, ShadowPool, ShadowRecipe, train_shadows
from ramparts.privacy.dp_audit import dp_tradeoff
from ramparts.zoo import build


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--data", default="cifar10", choices=["cifar10", "mnist"])
    p.add_argument("--records", type=int, default=None, help="first N records only (default: all)")
    p.add_argument("--arch", default="small_cnn")
    p.add_argument("--arch-config", default=None)
    p.add_argument("--shadows", type=int, default=64)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--chunk", type=int, default=16)
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--views", default="id,mirror", help="LiRA/RMIA query views")
    p.add_argument("--dp", default="", help="comma list of DP-SGD epsilons for the target (e.g. 1,4,16)")
    p.add_argument("--dp-clip", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None)
    return p.parse_args()


def load(args: argparse.Namespace) -> rdata.Dataset:
    ds = rdata.load_shared("cifar10") if args.data == "cifar10" else rdata.load_shared("mnist", split="test")
    return ds.subset(range(args.records)) if args.records else ds


def run_attack(
    label: str, name: str, params: dict[str, Any], target: Any, ds: Any, **kw: Any
) -> dict[str, Any]:
    t0 = time.perf_counter()
    res = MEMBERSHIP.get(name)(**params)(target, ds.x, ds.y, **kw)
    m = res.metrics or {}
    row = {"label": label, "attack": name, "params": params, "seconds": time.perf_counter() - t0, **m}
    row.pop("roc", None)
    row["roc"] = m.get("roc")
    print(
        f"[{label}] auc={m['auc']:.4f} bal={m['balanced_accuracy']:.4f} tpr@1%={m['tpr@0.01']:.4f} "
        f"tpr@0.1%={m['tpr@0.001']} ci@0.1%={m['ci95'].get('tpr@0.001')}",
        flush=True,
    )
    return row


def main() -> None:
    args = parse()
    device = torch.device(args.device)
    C.reseed(args.seed)
    ds = load(args)
    order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(args.seed))
    held = len(ds) // 10
    population, records = ds.subset(order[:held].tolist()), ds.subset(order[held:].tolist())
    config = json.loads(args.arch_config) if args.arch_config else {}
    recipe = ShadowRecipe(
        args.arch,
        config,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        precision=args.precision,
    )
    out: dict[str, Any] = {"args": vars(args), "machine": C.machine_info(device, peers=())}
    t0 = time.perf_counter()
    C.sync(device)
    models = train_shadows(records, args.shadows + 1, recipe, seed=args.seed, device=device, chunk=args.chunk)
    C.sync(device)
    out["train_s"] = time.perf_counter() - t0
    target = build(args.arch, **recipe.full_config(records))
    target.load_state_dict(models.states[0])
    target = target.to(device).eval()
    members = models.masks[0]
    with torch.no_grad():
        pred = torch.cat([target(b.to(device)).argmax(1).cpu() for b in records.x.split(1024)])
    correct = pred == records.y
    out["target"] = {
        "train_accuracy": float(correct[members].float().mean()),
        "test_accuracy": float(correct[~members].float().mean()),
    }
    print(f"[train] {args.shadows + 1} models in {out['train_s']:.1f}s; target {out['target']}", flush=True)
    views = tuple(v for v in args.views.split(",") if v)
    idx = torch.arange(len(records))
    full = ShadowPool(records, models.masks[1:], recipe, models.states[1:], args.seed)
    kw = {"members": members, "pool_index": idx, "population": population, "seed": args.seed}
    rows = [
        run_attack("LOSS", "loss", {}, target, records, **kw),
        run_attack("gap", "gap", {}, target, records, **kw),
        run_attack("Shokri", "shokri", {}, target, records, shadows=full, **kw),
        run_attack(
            f"LiRA online ({args.shadows})", "lira", {"views": views}, target, records, shadows=full, **kw
        ),
        run_attack(
            f"LiRA online, global var. ({args.shadows})",
            "lira",
            {"views": views, "global_variance": True},
            target,
            records,
            shadows=full,
            **kw,
        ),
        run_attack(
            f"LiRA offline ({args.shadows})",
            "lira",
            {"views": views, "online": False},
            target,
            records,
            shadows=full,
            **kw,
        ),
        run_attack("label-only", "label_only", {}, target, records, **kw),
    ]
    # RMIA and offline LiRA with few reference models: the first r shadows that did NOT train on... any
    # given record are unknown in advance, so both use the first r shadows and their masks (offline: OUT ones).
    for r in (1, 2, 4):
        few = ShadowPool(records, models.masks[1 : r + 1], recipe, models.states[1 : r + 1], args.seed)
        rows.append(
            run_attack(
                f"RMIA offline ({r} ref.)", "rmia", {"views": views}, target, records, shadows=few, **kw
            )
        )
        rows.append(
            run_attack(
                f"LiRA offline, global var. ({r} ref.)",
                "lira",
                {"views": views, "online": False, "global_variance": True},
                target,
                records,
                shadows=few,
                **kw,
            )
        )
    out["attacks"] = rows
    if args.dp:
        epsilons = [float(e) for e in args.dp.split(",") if e]
        out["dp"] = dp_tradeoff(
            records,
            members,
            recipe,
            full,
            epsilons,
            max_grad_norm=args.dp_clip,
            views=views,
            device=device,
            seed=args.seed,
        )
        for row in out["dp"]:
            print(f"[dp] {row}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
