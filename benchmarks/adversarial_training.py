"""Issue 7: proactive defences (PGD adversarial training, TRADES, fast AT, defensive distillation) judged by
strong attacks: PGD with restarts, APGD-CE and APGD-DLR (Croce & Hein 2020), and, for distillation, PGD
on the logit margin (the Carlini & Wagner 2017 loss that sees through its gradient masking).

Robust accuracy is the per-sample worst case over the attacks (an input counts only if every attack
failed). Everything is seeded (`--seed`); results go to `--json`. See docs/defenses.md for the numbers.

    # CPU smoke run (digits, seconds):
    .venv/bin/python benchmarks/adversarial_training.py --quick
    # Madry et al. 2018 scale (GPU; MNIST, eps 0.3, 40-step PGD training, PGD-100 x 5 restarts + APGD):
    python benchmarks/adversarial_training.py --device cuda --dataset mnist --arch carlini_cnn \\
        --eps 0.3 --train-steps 40 --train-step-size 0.01 --epochs 40 --lr 1e-3 --batch-size 128 \\
        --eval-steps 100 --restarts 5 --apgd-steps 100 --n-eval 10000 \\
        --json benchmarks/adversarial_training.cuda.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C
from ramparts import data as rdata
from ramparts import zoo
from ramparts.defenses.adversarial_training import (
    FastATMonitor,
    fast_adversarial_training,
    pgd_training,
    trades,
)
from ramparts.defenses.distillation import distill
from ramparts.evasion.apgd import APGD
from ramparts.evasion.gradient import PGD
from ramparts.oracles import TorchOracle
from ramparts.threat import ThreatModel
from ramparts.training import LossHook, TrainConfig, evaluate, train

DEFENSES = ("plain", "pgd", "trades", "fast", "distill")


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int, default=1, help="torch threads (CPU)")
    p.add_argument("--dataset", default="digits", choices=["digits", "mnist"])
    p.add_argument("--arch", default="mlp", choices=sorted(zoo.ARCHITECTURES))
    p.add_argument(
        "--arch-config", default="{}", help='JSON merged into the architecture config, e.g. {"width": 8}'
    )
    p.add_argument("--defenses", default=",".join(DEFENSES), help=f"comma-separated, from {DEFENSES}")
    p.add_argument("--eps", type=float, default=0.15)
    p.add_argument("--train-steps", type=int, default=7, help="inner PGD/TRADES steps")
    p.add_argument("--train-step-size", type=float, default=None, help="default 2.5 eps / steps")
    p.add_argument("--beta", type=float, default=6.0, help="TRADES beta")
    p.add_argument("--temperature", type=float, default=20.0, help="distillation temperature")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument(
        "--schedule", default="constant", choices=["constant", "cyclic"], help="learning-rate schedule"
    )
    p.add_argument("--alpha", type=float, default=None, help="fast AT's FGSM step (default 1.25 eps)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--n-train", type=int, default=None, help="first n training examples (default all)")
    p.add_argument("--n-eval", type=int, default=397)
    p.add_argument("--eval-steps", type=int, default=20, help="PGD steps at evaluation")
    p.add_argument("--restarts", type=int, default=1, help="PGD restarts at evaluation")
    p.add_argument("--apgd-steps", type=int, default=20, help="0 skips APGD")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="smoke run: 3 epochs, 100 evaluation inputs")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument(
        "--checkpoint-dir",
        default=None,
        help="save every epoch of plain/pgd/trades under DIR/<defence>; a rerun with more --epochs resumes there",
    )
    args = p.parse_args()
    if args.quick:
        args.epochs, args.n_eval, args.eval_steps, args.apgd_steps = 3, 100, 10, 10
    return args


def load(args: argparse.Namespace) -> tuple[rdata.Dataset, rdata.Dataset, dict[str, Any]]:
    """(train, test, architecture config) for the chosen dataset."""
    if args.dataset == "mnist":
        train_set, test = rdata.load_shared("mnist", split="train"), rdata.load_shared("mnist", split="test")
    else:
        ds = rdata.load_digits()
        perm = torch.randperm(len(ds), generator=torch.Generator().manual_seed(args.seed))
        train_set, test = ds.subset(perm[:1400]), ds.subset(perm[1400:])
    if args.n_train is not None:
        train_set = train_set.subset(torch.arange(min(args.n_train, len(train_set))))
    channels, size = train_set.input_shape[0], train_set.input_shape[-1]
    config: dict[str, Any] = {
        "in_channels": channels,
        "input_size": size,
        "num_classes": train_set.num_classes,
    }
    config.update(json.loads(args.arch_config))
    return train_set, test, config


def hook_for(name: str, args: argparse.Namespace) -> LossHook | None:
    if name == "pgd":
        return pgd_training(eps=args.eps, steps=args.train_steps, step_size=args.train_step_size)
    if name == "trades":
        return trades(eps=args.eps, steps=args.train_steps, step_size=args.train_step_size, beta=args.beta)
    if name == "fast":
        return fast_adversarial_training(eps=args.eps, alpha=args.alpha)
    return None


def robust(model: nn.Module, x: Tensor, y: Tensor, args: argparse.Namespace, margin: bool) -> dict[str, Any]:
    """Per-attack and worst-case robust accuracy of ``model`` on (x, y) at ``args.eps``."""
    oracle = TorchOracle(model, input_shape=tuple(x.shape[1:]))
    threat = ThreatModel(eps=args.eps)
    attacks: dict[str, Any] = {
        f"pgd{args.eval_steps}x{args.restarts}": PGD(steps=args.eval_steps, restarts=args.restarts)
    }
    if margin:
        attacks[f"pgd{args.eval_steps}-margin"] = PGD(
            steps=args.eval_steps, restarts=args.restarts, loss="margin"
        )
    if args.apgd_steps > 0:
        attacks["apgd-ce"] = APGD(steps=args.apgd_steps, loss="ce")
        attacks["apgd-dlr"] = APGD(steps=args.apgd_steps, loss="dlr")
    correct = torch.ones(len(y), dtype=torch.bool, device=y.device)
    out: dict[str, Any] = {}
    for name, attack in attacks.items():
        start = time.perf_counter()
        result = attack(oracle, x, y, threat, seed=args.seed)
        correct &= (result.adv_pred == result.labels).to(correct.device)
        out[name] = {
            "robust_accuracy": result.robust_accuracy,
            "seconds": round(time.perf_counter() - start, 2),
        }
    out["worst_case"] = float(correct.float().mean())
    return out


def run(name: str, args: argparse.Namespace) -> dict[str, Any]:
    train_set, test, arch_config = load(args)
    device = torch.device(args.device)
    config = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        device=str(device),
        schedule=args.schedule,
    )
    torch.manual_seed(args.seed)
    model = zoo.build(args.arch, **arch_config)
    start = time.perf_counter()
    extra: dict[str, Any] = {}
    if name == "distill":
        model = distill(model, train_set, temperature=args.temperature, config=config).student
    elif name == "fast":  # the monitor's batch: the last 200 training examples, held out of training
        held = len(train_set) - 200
        monitor = FastATMonitor(train_set.x[held:], train_set.y[held:], eps=args.eps, seed=args.seed)
        fit = train_set.subset(torch.arange(held))
        train(model, fit, config=config, loss_hook=hook_for(name, args), on_epoch=monitor, progress=False)
        monitor.restore(model)
        extra = {
            "monitor_pgd_acc": monitor.history,
            "best_epoch": monitor.best_epoch,
            "stopped": monitor.stopped_at,
        }
    else:
        folder = None if args.checkpoint_dir is None else Path(args.checkpoint_dir) / name
        train(
            model,
            train_set,
            config=config,
            loss_hook=hook_for(name, args),
            progress=False,
            checkpoint_dir=folder,
        )
    seconds = time.perf_counter() - start
    model.eval()
    x, y = test.x[: args.n_eval].to(device), test.y[: args.n_eval].to(device)
    return {
        "defense": name,
        "train_seconds": round(seconds, 2),
        "clean_accuracy": evaluate(model, test, device=device),
        "attacks": robust(model, x, y, args, margin=name == "distill"),
        **extra,
    }


def main() -> None:
    args = parse()
    torch.set_num_threads(args.threads)
    names = [n.strip() for n in args.defenses.split(",") if n.strip()]
    unknown = sorted(set(names) - set(DEFENSES))
    if unknown:
        raise SystemExit(f"--defenses: unknown {unknown}; choose from {DEFENSES}")
    rows = [run(name, args) for name in names]
    info = C.machine_info(torch.device(args.device), peers=())
    print(f"{args.dataset} {args.arch} eps={args.eps} on {C.machine_label(info)}")
    print(f"{'defense':10s} {'train s':>8s} {'clean':>6s} {'worst':>6s}  per attack")
    for r in rows:
        per = ", ".join(
            f"{k} {v['robust_accuracy']:.3f}" for k, v in r["attacks"].items() if k != "worst_case"
        )
        print(
            f"{r['defense']:10s} {r['train_seconds']:8.1f} {r['clean_accuracy']:6.3f} "
            f"{r['attacks']['worst_case']:6.3f}  {per}"
        )
    if args.json:
        Path(args.json).write_text(
            json.dumps({"args": vars(args), "machine": info, "results": rows}, indent=2)
        )


if __name__ == "__main__":
    main()
