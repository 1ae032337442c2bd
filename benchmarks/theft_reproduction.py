"""Issue 4, "Reproduction": Papernot et al. 2017 substitute training on MNIST, Tramer et al. 2016 equation
solving on digits, and PRADA (Juuti et al. 2019) on the Jacobian attack's query stream and an honest stream.

Oracle: the cached `carlini_cnn` of `benchmarks/_common.py` (MNIST train, 2 epochs, seed 0, `runs/bench/`).
Everything is seeded (`--seed`); results go to `--json`. See docs/theft.md for the numbers and commands.

    .venv/bin/python benchmarks/theft_reproduction.py --device cpu --threads 2 --json benchmarks/theft_reproduction.cpu.json
    .venv/bin/python benchmarks/theft_reproduction.py --quick          # smoke run (2 rounds, small sets)
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C
from ramparts import data as rdata
from ramparts.defenses.prada import Prada
from ramparts.oracles import SklearnOracle, TorchOracle
from ramparts.theft import THEFTS
from ramparts.theft.transfer import transfer_attack
from ramparts.training import TrainConfig, train


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int, default=None, help="torch threads (CPU)")
    p.add_argument("--quick", action="store_true", help="smoke run: 2 rounds, 500 held-out, 200 transfer")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model-dir", default=str(C.ROOT / "runs" / "bench"))
    # Papernot et al.
    p.add_argument("--n-seeds", type=int, default=150)
    p.add_argument(
        "--seed-mode",
        choices=["first", "per-class"],
        default="first",
        help="first: the first N test images; per-class: the first N/10 of each class",
    )
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--lam", type=float, default=0.1)
    p.add_argument("--tau", type=int, default=None, help="lambda's sign flips every tau augmentations")
    p.add_argument("--arch", default=None, help="substitute architecture from ramparts.zoo (None: default)")
    p.add_argument("--arch-config", default=None, help="JSON dict for the substitute")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument(
        "--ensemble",
        type=int,
        default=1,
        help="attack an ensemble: the substitute plus K-1 copies trained afresh on its labelled set (no new queries)",
    )
    p.add_argument("--heldout", type=int, default=0, help="held-out images after the seeds (0: the rest)")
    p.add_argument("--transfer-n", type=int, default=1000, help="held-out images attacked")
    p.add_argument("--eps", default="0.1,0.2,0.3")
    p.add_argument("--attacks", default="fgsm,pgd,mifgsm")
    # PRADA
    p.add_argument("--prada-honest", type=int, default=10000)
    p.add_argument("--prada-honest-split", choices=["train", "test"], default="train")
    p.add_argument("--delta", type=float, default=0.9)
    p.add_argument("--min-samples", type=int, default=100)
    p.add_argument("--skip", default="", help="comma list of parts to skip: papernot,tramer,prada")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    if args.quick:
        args.rounds = min(args.rounds, 2)
        args.heldout = args.heldout or 500
        args.transfer_n = min(args.transfer_n, 200)
        args.prada_honest = min(args.prada_honest, 1000)
    return args


def seed_indices(test: Any, n: int, mode: str) -> np.ndarray:
    if mode == "first":
        return np.arange(n)
    y = test.y.numpy()
    per = n // 10
    return np.sort(np.concatenate([np.flatnonzero(y == c)[:per] for c in range(10)]))


def papernot(args: argparse.Namespace, device: torch.device, out: dict[str, Any]) -> dict[str, Any]:
    model, info = C.get_model(args.model_dir, 2, 0, device)
    test = rdata.load_shared("mnist", split="test")
    out["oracle"] = {**info, "test_accuracy": C.test_accuracy(model, test, device)}
    oracle = TorchOracle(model, input_shape=C.INPUT_SHAPE, num_classes=10, device=device)
    idx = seed_indices(test, args.n_seeds, args.seed_mode)
    rest = np.setdiff1d(np.arange(len(test)), idx)
    if args.heldout:
        rest = rest[: args.heldout]
    seeds = test.subset(idx.tolist())
    held = test.subset(rest.tolist())
    theft = THEFTS.get("jacobian")(
        rounds=args.rounds,
        lam=args.lam,
        tau=args.tau,
        arch=args.arch,
        arch_config=json.loads(args.arch_config) if args.arch_config else None,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
    )
    with tempfile.TemporaryDirectory() as run_dir:
        C.reseed(args.seed)
        with C.timed(device) as t:
            res = theft(oracle, seeds, held, seed=args.seed, run_dir=run_dir)
        # The labelled set of the last round, in the order the theft queried it (seeds, then each round's
        # augmentations): the query stream PRADA sees.
        npz = sorted(Path(run_dir).glob("arrays-step-*.npz"))[-1]
        with np.load(npz) as d:
            stream_x, stream_y = torch.from_numpy(d["x"]), torch.from_numpy(d["y"])
    row: dict[str, Any] = {
        "config": res.config,
        "seed_mode": args.seed_mode,
        "n_seeds": len(idx),
        "heldout": len(rest),
        "queries": res.queries,
        "accuracy": res.accuracy,
        "fidelity": res.fidelity,
        "oracle_accuracy_heldout": res.oracle_accuracy,
        "curve": res.curve,
        "theft_s": t["s"],
        "theft_loop_s": res.elapsed_s,
    }
    print(
        f"[papernot] queries={res.queries} acc={res.accuracy:.4f} fid={res.fidelity:.4f} "
        f"curve={res.curve} {t['s']:.1f}s",
        flush=True,
    )
    sub = res.substitute.to(device).eval()
    if args.ensemble > 1:
        sub = ensemble(sub, stream_x, stream_y, args, device)
        row["ensemble"] = args.ensemble
    xt, yt = held.x[: args.transfer_n].to(device), held.y[: args.transfer_n].to(device)
    eps = [float(e) for e in args.eps.split(",")]
    transfers = []
    for atk in [a for a in args.attacks.split(",") if a]:
        hyper = {"steps": 40, "step_size": 0.01} if atk == "pgd" else {}
        with C.timed(device) as tt:
            rows = transfer_attack(sub, oracle, xt, yt, attack=atk, eps_grid=eps, seed=args.seed, **hyper)
        for r in rows:
            r.pop("attack_summary", None)
            r["hyper"] = hyper
            r["seconds_all_eps"] = tt["s"]
            print(
                f"[transfer] {atk} eps={r['eps']} oracle_error={r['oracle_error']:.4f} "
                f"transfer_rate={r['transfer_rate']} noise={r.get('noise_error')} "
                f"sub_fooled={r['substitute_fooled']:.3f}",
                flush=True,
            )
        transfers += rows
    row["transfer"] = transfers
    row["transfer_n"] = len(xt)
    return {"result": row, "stream": (stream_x, stream_y)}


class Ensemble(torch.nn.Module):
    """Mean of the members' log-probabilities (Liu et al. 2017 attack ensembles of models this way)."""

    def __init__(self, members: list[torch.nn.Module]) -> None:
        super().__init__()
        self.members = torch.nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x).log_softmax(1) for m in self.members]).mean(0)


def ensemble(
    sub: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, args: argparse.Namespace, device: torch.device
) -> torch.nn.Module:
    """The substitute plus `args.ensemble - 1` copies of its architecture, each initialised with another
    seed and trained on the theft's final labelled set (the same labels: no extra queries)."""
    data = rdata.Dataset(x, y, tuple(str(k) for k in range(10)), "labelled")
    members = [sub]
    for k in range(1, args.ensemble):
        member = copy.deepcopy(sub)
        torch.manual_seed(args.seed + 1000 * k)
        for module in member.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
        epochs = args.epochs * args.rounds  # the substitute saw about this many epochs over its rounds
        cfg = TrainConfig(
            epochs=epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed + k, device=str(device)
        )
        train(member, data, config=cfg, progress=False)
        members.append(member.eval())
    return Ensemble(members).to(device).eval()


def tramer(args: argparse.Namespace, out: dict[str, Any]) -> dict[str, Any]:
    from sklearn.linear_model import LogisticRegression

    ds = rdata.load_digits()
    train, test = rdata.train_test_split(ds, test_fraction=0.25, seed=args.seed)
    lr = LogisticRegression(max_iter=2000).fit(train.x.flatten(1).numpy(), train.y.numpy())
    oracle = SklearnOracle(lr, input_shape=(1, 8, 8))
    res = THEFTS.get("equations")()(oracle, train.x[:5], test, seed=args.seed)
    w = res.substitute.weight.cpu().numpy()
    b = res.substitute.bias.cpu().numpy()
    row = {
        "d": 64,
        "queries": res.queries,
        "fidelity": res.fidelity,
        "accuracy": res.accuracy,
        "oracle_accuracy": res.oracle_accuracy,
        "n_test": len(test),
        "max_abs_weight_error": float(np.abs(w - (lr.coef_ - lr.coef_[0])).max()),
        "max_abs_bias_error": float(np.abs(b - (lr.intercept_ - lr.intercept_[0])).max()),
        "seconds": res.elapsed_s,
    }
    print(f"[tramer] {row}", flush=True)
    return row


def _w_trace(x: torch.Tensor, y: torch.Tensor, min_samples: int) -> tuple[list[int], list[float], float]:
    """PRADA with delta just below 1: every tested query alarms, so the alarms give W after each query."""
    prada = Prada(delta=1.0 - 1e-12, min_samples=min_samples)
    t0 = time.perf_counter()
    alarms = prada.observe("c", x.float(), y)
    return [a.query for a in alarms], [a.statistic for a in alarms], time.perf_counter() - t0


def _first_below(qs: list[int], ws: list[float], delta: float) -> int | None:
    return next((q for q, w in zip(qs, ws, strict=True) if w < delta), None)


def prada(
    args: argparse.Namespace,
    device: torch.device,
    stream: tuple[torch.Tensor, torch.Tensor] | None,
    out: dict[str, Any],
) -> dict[str, Any]:
    model, _ = C.get_model(args.model_dir, 2, 0, device)
    oracle = TorchOracle(model, input_shape=C.INPUT_SHAPE, num_classes=10, device=device)
    row: dict[str, Any] = {"delta": args.delta, "min_samples": args.min_samples}
    # The real detector at the default delta (the figures below are also derived from the W trace).
    if stream is not None:
        sx, sy = stream
        p = Prada(delta=args.delta, min_samples=args.min_samples)
        alarms = p.observe("attacker", sx.float(), sy)
        row["attack_stream_len"] = len(sx)
        row["attack_first_alarm"] = alarms[0].query if alarms else None
        row["attack_alarms"] = len(alarms)
        qa, wa, sa = _w_trace(sx, sy, args.min_samples)
        row["attack_w_first"] = wa[0] if wa else None
        row["attack_w_min"] = min(wa) if wa else None
        row["attack_w_at"] = {
            q: w for q, w in zip(qa, wa, strict=True) if q in (250, 300, 450, 600, 1200, 2400, 4800)
        }
        row["attack_trace_s"] = sa
    split = rdata.load_shared("mnist", split=args.prada_honest_split)
    gen = torch.Generator().manual_seed(args.seed)
    order = torch.randperm(len(split), generator=gen)[: args.prada_honest]
    hx = split.x[order]
    with torch.no_grad():
        hy = oracle.labels(hx.to(device)).cpu()
    p = Prada(delta=args.delta, min_samples=args.min_samples)
    alarms = p.observe("honest", hx, hy)
    row["honest_split"] = args.prada_honest_split
    row["honest_n"] = len(hx)
    row["honest_alarms"] = len(alarms)
    row["honest_first_alarm"] = alarms[0].query if alarms else None
    qh, wh, sh = _w_trace(hx, hy, args.min_samples)
    row["honest_w_min"] = min(wh) if wh else None
    row["honest_w_min_at"] = qh[int(np.argmin(wh))] if wh else None
    row["honest_w_final"] = wh[-1] if wh else None
    row["honest_trace_s"] = sh
    if row["honest_alarms"] and wh:
        # The largest delta (2 decimals, floored) that the honest stream never falls below.
        safe = float(np.floor(min(wh) * 100) / 100)
        row["safe_delta"] = safe
        if stream is not None:
            row["attack_first_alarm_at_safe_delta"] = _first_below(qa, wa, safe)
    if stream is not None:
        row["attack_first_alarm_by_delta"] = {
            str(d): _first_below(qa, wa, d) for d in (0.95, 0.9, 0.85, 0.8, 0.7, 0.5)
        }
        row["honest_alarms_by_delta"] = {
            str(d): int(sum(w < d for w in wh)) for d in (0.95, 0.9, 0.85, 0.8, 0.7, 0.5)
        }
    print(f"[prada] {row}", flush=True)
    return row


def main() -> None:
    args = parse()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    out: dict[str, Any] = {"args": vars(args), "machine": C.machine_info(device, peers=())}
    skip = set(args.skip.split(","))

    def dump() -> None:
        if args.json:
            Path(args.json).write_text(json.dumps(out, indent=2, default=str) + "\n", encoding="utf-8")

    stream = None
    if "papernot" not in skip:
        got = papernot(args, device, out)
        out["papernot"], stream = got["result"], got["stream"]
        dump()
    if "tramer" not in skip:
        out["tramer"] = tramer(args, out)
        dump()
    if "prada" not in skip:
        out["prada"] = prada(args, device, stream, out)
        dump()


if __name__ == "__main__":
    main()
