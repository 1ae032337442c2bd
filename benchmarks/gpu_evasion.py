#!/usr/bin/env python
"""GPU-fast white-box evasion on a CIFAR ResNet-18: ours in several settings vs torchattacks, ART and the floor.

Issue 11. Model: `zoo.build("resnet18")` (CIFAR stem, 32x32), trained in this script on the first
`--n-train` (8,000) images of the CIFAR-10 test split (`cifar10_test.npz` in the shared data folder or
`$RAMPARTS_DATA_DIR`), the other 2,000 held out; cached in `--model-dir` (runs/bench/, git-ignored).
A second model is adversarially trained (PGD-AT, `--at-steps` steps from a random start, a few epochs) so
that few samples leave the batch early. Attacks run on `--n` images (the held-out ones first, then the
training ones): PGD-Linf eps 8/255, 10 steps of 2/255 and 50 steps of 2.5 eps / 50, random start, and
APGD-CE (100 steps).

Rows per attack and model: ours (`ramparts`) with fp32 eager and compaction "exact" (the CPU default,
today's behaviour); bf16 + channels_last + "bucketed" (the CUDA default); the same with "exact"; bf16 +
channels_last + torch.compile; bf16 + channels_last with compaction "off"; torchattacks (PGD, APGD) and ART (ProjectedGradientDescentPyTorch,
AutoProjectedGradientDescent) on the same fp32 model as a user has it; and the floor, bare forward +
backward passes (gradient w.r.t. the input only) over the n images, in fp32 and in bf16 + channels_last,
`--floor-steps` passes timed and scaled to the attack's steps. "x floor" divides a row's time by the
floor over all n images; "x floor (attacked rows)" by the floor over the images ours attack at all (the
others are misclassified at the start and cost only the clean and final evaluations); "loop x floor"
divides the attack's own loop (`EvasionResult.elapsed_s`: the steps, between CUDA syncs, without the
evaluator's clean and final predictions, which the floor has no passes for) by the floor over the
attacked images: the measure of the loop's overhead that the compaction-off target uses. To fit ~8 minutes, ART (the slowest peer) runs
on the standard model only (`--art-models`) and compaction-off rows on the standard model and the AT
model's PGD-10 (elsewhere few samples leave early, so "off" equals "bucketed"); `--shadows`/`--hsj`
sections are not included (see benchmarks/shadow_training.py, blackbox_peers.py).

Timing: one process, one GPU; every run reseeded and CUDA-synchronised at both ends; each row is warmed
up first (a 2-step run at full n; compiled rows a full run, so compilation stays out of the timing), then
timed `--repeats` times (fewer once a row has used `--row-budget-s`), median reported. Robust accuracy
is judged for every tool by the same fp32 model on the returned x_adv (all n and the held-out part); ours
also report their own. The whole run stops starting new pieces after `--budget-s` seconds; the JSON (to
`--json`, default `$OUT/gpu_evasion.json`) is rewritten after every piece, so a cut run keeps its rows.

    python benchmarks/gpu_evasion.py --quick --device cpu --n 64 --n-train 512 --width 8   # smoke, CPU
    python benchmarks/gpu_evasion.py --device cuda --json $OUT/gpu_evasion.json            # H200, ~8 min
"""

from __future__ import annotations

import argparse
import copy
import datetime as _dt
import json
import math
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Batches of 10,000 CIFAR images through a ResNet-18 take tens of GB; growable segments keep the
# allocator from fragmenting between the rows. Set before torch initialises CUDA.
os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from _common import ROOT, art_classifier, fmt, machine_info, machine_label, md_table, reseed, sync
from ramparts import data as rdata
from ramparts import zoo
from ramparts.evasion import ATTACKS
from ramparts.oracles import TorchOracle
from ramparts.threat import ThreatModel

ARCH = "resnet18"
INPUT_SHAPE = (3, 32, 32)
SPEEDUP = {"standard": 3.0, "at": 1.8}  # issue 11: ours vs torchattacks at equal robust accuracy
OFF_VS_FLOOR = 1.15  # compaction off: the attack loop <= 1.15 x the bf16 floor of the rows it attacks
ACC_SLACK = 0.005  # "equal robust accuracy": ours <= torchattacks' + 0.5 points
# Our settings: (precision, channels_last, compile, compaction)
SETTINGS: dict[str, tuple[str, bool, bool, str]] = {
    "exact_fp32": ("fp32", False, False, "exact"),
    "bucketed_bf16": ("bf16", True, False, "bucketed"),
    "exact_bf16": ("bf16", True, False, "exact"),
    "compiled_bf16": ("bf16", True, True, "bucketed"),
    "off_bf16": ("bf16", True, False, "off"),
}
DEFAULT_SETTING = "bucketed_bf16"  # what a user gets on CUDA with precision="bf16", channels_last=True

Runner = Callable[[], tuple[Tensor, dict[str, Any]]]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------ data, models


def load_data(args: argparse.Namespace) -> dict[str, Any]:
    test = rdata.load_shared("cifar10", split="test")
    total = len(test.y)
    if not 0 < args.n_train < total:
        raise SystemExit(f"--n-train must be in (0, {total})")
    order = torch.cat([torch.arange(args.n_train, total), torch.arange(args.n_train)])[: args.n]
    return {
        "x_train": test.x[: args.n_train],
        "y_train": test.y[: args.n_train],
        "x": test.x[order].contiguous(),
        "y": test.y[order].contiguous(),
        "held_out": order >= args.n_train,
        "total": total,
    }


def _augment(x: Tensor, gen: torch.Generator) -> Tensor:
    """Random crop (4-pixel reflect padding) and horizontal flip, on the batch's device."""
    n, dev = len(x), x.device
    padded = F.pad(x, (4, 4, 4, 4), mode="reflect")
    ar = torch.arange(32, device=dev)
    dy = torch.randint(0, 9, (n,), generator=gen, device=dev)
    dx = torch.randint(0, 9, (n,), generator=gen, device=dev)
    rows = (dy[:, None] + ar)[:, None, :, None]
    cols = (dx[:, None] + ar)[:, None, None, :]
    chans = torch.arange(x.shape[1], device=dev)[None, :, None, None]
    out = padded[torch.arange(n, device=dev)[:, None, None, None], chans, rows, cols]
    flip = torch.rand(n, generator=gen, device=dev) < 0.5
    return torch.where(flip[:, None, None, None], out.flip(3), out)


def _pgd_train_batch(
    model: nn.Module, x: Tensor, y: Tensor, eps: float, steps: int, gen: torch.Generator
) -> Tensor:
    """PGD-AT's inner maximisation (Madry et al. 2018): `steps` signed steps of 2.5 eps / steps from a
    uniform start, model in eval mode, bf16 autocast."""
    was = model.training
    model.eval()
    step = 2.5 * eps / steps
    xa = (x + (2 * torch.rand(x.shape, generator=gen, device=x.device) - 1) * eps).clamp(0, 1)
    for _ in range(steps):
        xa.requires_grad_(True)
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            loss = F.cross_entropy(model(xa).float(), y)
        (g,) = torch.autograd.grad(loss, xa)
        xa = torch.min(torch.max(xa.detach() + step * g.sign(), x - eps), x + eps).clamp(0, 1)
    model.train(was)
    return xa.detach()


def train_model(
    kind: str, data: dict[str, Any], args: argparse.Namespace, device: torch.device
) -> tuple[nn.Module, dict[str, Any]]:
    """ResNet-18 trained (or loaded from the cache): SGD + Nesterov, one-cycle lr, crop + flip, bf16 autocast;
    `kind="at"` trains on PGD examples (eps 8/255, `--at-steps` steps)."""
    epochs = args.epochs if kind == "standard" else args.at_epochs
    config = {"in_channels": 3, "input_size": 32, "num_classes": 10, "width": args.width}
    tag = (
        f"{ARCH}_w{args.width}_cifar{args.n_train}_{kind}_e{epochs}"
        + (f"_k{args.at_steps}" if kind == "at" else "")
        + f"_s{args.seed}"
    )
    prefix = Path(args.model_dir) / tag
    if prefix.with_suffix(".json").is_file() and not args.retrain:
        model, meta = zoo.load_model(prefix)
        return model.to(device).eval(), {"path": str(prefix), "cached": True, **meta.get("extra", {})}
    reseed(args.seed)
    model = zoo.build(ARCH, **config).to(device).to(memory_format=torch.channels_last)
    x_all, y_all = data["x_train"].to(device), data["y_train"].to(device)
    gen = torch.Generator(device=device).manual_seed(args.seed)
    steps_per_epoch = math.ceil(len(x_all) / args.batch_size)
    total = epochs * steps_per_epoch
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=total, pct_start=0.25)
    sync(device)
    t0 = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(x_all), generator=gen, device=device)
        for i in range(0, len(x_all), args.batch_size):
            b = perm[i : i + args.batch_size]
            x, y = _augment(x_all[b], gen), y_all[b]
            if kind == "at":
                x = _pgd_train_batch(model, x, y, args.eps, args.at_steps, gen)
            with torch.autocast(device.type, dtype=torch.bfloat16):
                loss = F.cross_entropy(model(x.contiguous(memory_format=torch.channels_last)).float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        log(f"  [{kind}] epoch {epoch + 1}/{epochs} loss {float(loss):.3f} ({time.perf_counter() - t0:.0f}s)")
    sync(device)
    model = model.to(memory_format=torch.contiguous_format).eval()
    extra = {
        "train_seconds": round(time.perf_counter() - t0, 1),
        "epochs": epochs,
        "kind": kind,
        "train_device": str(device),
    }
    prefix.parent.mkdir(parents=True, exist_ok=True)
    zoo.save_model(model.cpu(), prefix, arch=ARCH, config=config, extra=extra)
    return model.to(device).eval(), {"path": str(prefix), "cached": False, **extra}


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor, batch: int = 2048) -> Tensor:
    """Per-sample correctness of the fp32 model (the judge for every tool)."""
    preds = [model(x[i : i + batch]).argmax(1) for i in range(0, len(x), batch)]
    return torch.cat(preds) == y


# ------------------------------------------------------------------------------------------------ runners


def floor_runner(model: nn.Module, x: Tensor, y: Tensor, passes: int, bf16: bool) -> Runner:
    """`passes` bare forward + backward passes over x, gradient w.r.t. the input only."""
    net = copy.deepcopy(model).to(memory_format=torch.channels_last) if bf16 else model
    xin = x.contiguous(memory_format=torch.channels_last) if bf16 else x

    def run() -> tuple[Tensor, dict[str, Any]]:
        for _ in range(passes):
            xa = xin.detach().requires_grad_(True)
            with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
                logits = net(xa)
            (g,) = torch.autograd.grad(F.cross_entropy(logits.float(), y, reduction="sum"), xa)
            del g
        return x, {}

    return run


def make_oracle(setting: str, model: nn.Module, compile_mode: str) -> TorchOracle:
    """The oracle of one of our settings, over its own copy of the model (channels_last converts it)."""
    precision, cl, compiled, _ = SETTINGS[setting]
    return TorchOracle(
        copy.deepcopy(model),
        input_shape=INPUT_SHAPE,
        num_classes=10,
        precision=precision,
        channels_last=cl,
        compile=compile_mode if compiled else None,
    )


def ours_runner(
    attack_name: str,
    params: dict[str, Any],
    setting: str,
    oracle: TorchOracle,
    x: Tensor,
    y: Tensor,
    threat: ThreatModel,
    seed: int,
) -> Runner:
    attack = ATTACKS.get(attack_name)(**params, compaction=SETTINGS[setting][3])

    def run() -> tuple[Tensor, dict[str, Any]]:
        res = attack(oracle, x, y, threat, seed=seed)
        return res.x_adv, {
            "loop_s": res.elapsed_s,
            "forwards": int(res.queries.sum()),
            "backwards": int(res.backwards.sum()),
            # samples attacked at all (not misclassified at the start): the rows a no-compaction loop runs
            "attacked": int((res.queries > 0).sum()),
            "reported_robust_accuracy": res.robust_accuracy,
        }

    return run


def torchattacks_runner(
    attack: str, model: nn.Module, x: Tensor, y: Tensor, eps: float, step: float, steps: int, seed: int
) -> Runner:
    import torchattacks

    if attack == "apgd":
        atk = torchattacks.APGD(model, norm="Linf", eps=eps, steps=steps, n_restarts=1, loss="ce", seed=seed)
    else:
        atk = torchattacks.PGD(model, eps=eps, alpha=step, steps=steps, random_start=True)

    def run() -> tuple[Tensor, dict[str, Any]]:
        return atk(x, y), {}

    return run


def art_runner(
    attack: str,
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    step: float,
    steps: int,
    device: torch.device,
) -> Runner:
    from art.attacks.evasion import AutoProjectedGradientDescent, ProjectedGradientDescentPyTorch

    clf = art_classifier(model, device, INPUT_SHAPE)
    if attack == "apgd":
        atk: Any = AutoProjectedGradientDescent(
            clf,
            norm=np.inf,
            eps=eps,
            eps_step=2 * eps,
            max_iter=steps,
            nb_random_init=1,
            batch_size=len(x),
            loss_type="cross_entropy",
            verbose=False,
        )
    else:
        atk = ProjectedGradientDescentPyTorch(
            clf,
            norm=np.inf,
            eps=eps,
            eps_step=step,
            max_iter=steps,
            num_random_init=1,
            batch_size=len(x),
            verbose=False,
        )
    # ART works on numpy arrays: converting the inputs is the caller's, outside the timing.
    x_np, y_np = x.cpu().numpy(), y.cpu().numpy()

    def run() -> tuple[Tensor, dict[str, Any]]:
        return torch.from_numpy(atk.generate(x_np, y_np)), {}

    return run


# ---------------------------------------------------------------------------------------------- measuring


class Bench:
    """The run's clock, its budget and its JSON, rewritten after every piece."""

    def __init__(self, args: argparse.Namespace, device: torch.device, result: dict[str, Any]) -> None:
        self.args, self.device, self.result = args, device, result
        self.t0 = time.perf_counter()
        self.json_path = Path(args.json)

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def over_budget(self) -> bool:
        return self.elapsed() > self.args.budget_s

    def save(self) -> None:
        self.result["benchmark_seconds"] = round(self.elapsed(), 1)
        self.json_path.parent.mkdir(parents=True, exist_ok=True)
        self.json_path.write_text(json.dumps(self.result, indent=2, default=str) + "\n")

    def time_row(
        self,
        row: dict[str, Any],
        run: Runner,
        warm: Runner | None,
        judge: Callable[[Tensor], dict[str, Any]],
        repeats: int,
    ) -> None:
        """Warm up, then time `run` up to `repeats` times (at least once; fewer past the row budget)."""
        t_piece = time.perf_counter()
        try:
            if warm is not None:
                reseed(self.args.seed)
                t = time.perf_counter()
                warm()
                sync(self.device)
                row["warmup_s"] = round(time.perf_counter() - t, 2)
            times: list[float] = []
            extras: list[dict[str, Any]] = []
            for r in range(repeats):
                reseed(self.args.seed)
                sync(self.device)
                t = time.perf_counter()
                x_adv, extra = run()
                sync(self.device)
                times.append(time.perf_counter() - t)
                extras.append(extra)
                if r == 0:
                    row.update(judge(x_adv))
                if sum(times) > self.args.row_budget_s:
                    break
        except Exception as exc:  # a peer or a setting that fails is reported, not fatal
            row["error"] = f"{type(exc).__name__}: {exc}"[:500]
            log(f"    {row['label']}: FAILED {row['error']}")
            return
        row["times_s"] = [round(t, 4) for t in times]
        row["time_s"] = statistics.median(times)
        row["images_per_s"] = row["n"] / row["time_s"]
        if extras and extras[0]:
            row.update(extras[0])
            if "loop_s" in extras[0]:
                row["loop_s"] = statistics.median(e["loop_s"] for e in extras)
        log(
            f"    {row['label']:<44} {row['time_s']:8.3f}s  {row['images_per_s']:9.0f} img/s  "
            f"robust {fmt(row.get('robust_accuracy'), '.3f', '-')}  (piece {time.perf_counter() - t_piece:.1f}s, "
            f"total {self.elapsed():.0f}s)"
        )


def attack_plan(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Per attack key: our attack name and parameters, the peers' step size and the step count."""
    eps = args.eps
    s10, s50, sa = (3, 6, 8) if args.quick else (10, 50, 100)
    return {
        "pgd10": {"name": "pgd", "steps": s10, "step": 2 / 255, "label": f"PGD-{s10}"},
        "pgd50": {"name": "pgd", "steps": s50, "step": 2.5 * eps / s50, "label": f"PGD-{s50}"},
        "apgd": {"name": "apgd", "steps": sa, "step": 2 * eps, "label": f"APGD-CE-{sa}"},
    }


def run_model(
    bench: Bench, kind: str, model: nn.Module, data: dict[str, Any], floors: dict[str, float]
) -> None:
    args, device = bench.args, bench.device
    x, y, held = data["x_dev"], data["y_dev"], data["held_dev"]
    n = len(x)
    clean = accuracy(model, x, y)
    bench.result["models"][kind]["clean_accuracy"] = float(clean.float().mean())
    bench.result["models"][kind]["clean_accuracy_held_out"] = (
        float(clean[held].float().mean()) if held.any() else None
    )
    threat = ThreatModel(norm="linf", eps=args.eps)
    for p in model.parameters():  # as a user has it: weights still require grad
        p.requires_grad_(True)

    def judge(x_adv: Tensor) -> dict[str, Any]:
        x_adv = x_adv.to(device, torch.float32)
        ok = accuracy(model, x_adv, y)
        return {
            "robust_accuracy": float(ok.float().mean()),
            "robust_accuracy_held_out": float(ok[held].float().mean()) if held.any() else None,
            "max_linf": float((x_adv - x).abs().amax()),
        }

    oracles: dict[tuple[str, bool, bool], TorchOracle] = {}
    plans = attack_plan(args)
    for key in args.attacks:
        plan = plans[key]
        steps = plan["steps"]
        log(f"== {kind}: {plan['label']} on {n} images (elapsed {bench.elapsed():.0f}s)")
        if plan["name"] == "pgd":
            params: dict[str, Any] = {"steps": steps, "step_size": plan["step"], "random_start": True}
        else:
            params = {"steps": steps, "loss": "ce"}
        warm_params = {**params, "steps": 2}
        for setting in args.settings:
            if setting == "off_bf16" and not (kind == "standard" or key == "pgd10"):
                continue  # compaction off matters where samples leave early; elsewhere it equals bucketed
            row = new_row(bench, kind, key, steps, n, "ours", setting, f"ramparts {plan['name']} {setting}")
            if bench.over_budget():
                row["skipped"] = "budget"
                continue
            # One oracle per model and oracle configuration, shared by the attacks. A compiled row warms up
            # with the full attack, so that every shape it meets compiles before the timing (its first use
            # compiles the model; a later attack can meet new shapes: APGD's last few samples).
            config = SETTINGS[setting][:3]
            if config not in oracles:
                oracles[config] = make_oracle(setting, model, args.compile_mode)
            oracle = oracles[config]
            row["oracle"] = oracle.summary()
            run = ours_runner(plan["name"], params, setting, oracle, x, y, threat, args.seed)
            warm_run = ours_runner(plan["name"], warm_params, setting, oracle, x, y, threat, args.seed)
            bench.time_row(row, run, run if config[2] else warm_run, judge, args.repeats)
            bench.save()
        peers: list[tuple[str, Callable[[int], Runner]]] = []
        if "torchattacks" in args.peers:
            peers.append(
                (
                    "torchattacks",
                    lambda k, plan=plan: torchattacks_runner(
                        plan["name"], model, x, y, args.eps, plan["step"], k, args.seed
                    ),
                )
            )
        if "art" in args.peers and key in args.art_attacks and kind in args.art_models:
            peers.append(
                (
                    "art",
                    lambda k, plan=plan: art_runner(
                        plan["name"], model, x, y, args.eps, plan["step"], k, device
                    ),
                )
            )
        for tool, make in peers:
            row = new_row(bench, kind, key, steps, n, "peer", tool, f"{tool} {plan['name']}")
            if bench.over_budget():
                row["skipped"] = "budget"
                continue
            try:
                run, warm = make(steps), make(2)
            except Exception as exc:
                row["error"] = f"{type(exc).__name__}: {exc}"[:500]
                log(f"    {tool} unavailable: {row['error']}")
                continue
            bench.time_row(row, run, warm, judge, args.peer_repeats)
            bench.save()
        for precision, per_pass in floors.items():
            row = new_row(
                bench, kind, key, steps, n, "floor", precision, f"floor {precision}: {steps} x fwd+bwd"
            )
            row["time_s"] = per_pass * steps
            row["images_per_s"] = n / row["time_s"]
        add_ratios(bench.result["rows"])
        bench.save()


def measure_floors(bench: Bench, model: nn.Module, x: Tensor, y: Tensor) -> dict[str, float]:
    """Seconds of one bare forward + backward pass over x, fp32 (as given) and bf16 + channels_last."""
    out = {}
    for name, bf16 in (("fp32", False), ("bf16", True)):
        passes = bench.args.floor_steps
        run = floor_runner(model, x, y, passes, bf16)
        row: dict[str, Any] = {"n": len(x), "label": f"floor {name}"}
        bench.time_row(row, run, floor_runner(model, x, y, 2, bf16), lambda _: {}, bench.args.repeats)
        if "time_s" in row:
            out[name] = row["time_s"] / passes
            bench.result["floor_per_pass_s"][name] = out[name]
    return out


def new_row(
    bench: Bench, model: str, attack: str, steps: int, n: int, kind: str, tool: str, label: str
) -> dict[str, Any]:
    row = {
        "model": model,
        "attack": attack,
        "steps": steps,
        "n": n,
        "kind": kind,
        "tool": tool,
        "label": label,
    }
    bench.result["rows"].append(row)
    return row


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Speed-up vs torchattacks (its time / ours) and time over the floor of the same precision."""
    for r in rows:
        same = [o for o in rows if o["model"] == r["model"] and o["attack"] == r["attack"] and "time_s" in o]
        ta = next((o for o in same if o["tool"] == "torchattacks"), None)
        if "time_s" not in r or r["kind"] == "floor":
            continue
        if ta:
            r["speedup_vs_torchattacks"] = ta["time_s"] / r["time_s"]
        precision = "bf16" if r["tool"].endswith("bf16") else "fp32"
        floor = next((o for o in same if o["kind"] == "floor" and o["tool"] == precision), None)
        if floor:
            r["x_floor"] = r["time_s"] / floor["time_s"]
            r["floor_precision"] = precision
            if r.get("attacked"):
                attacked_floor = floor["time_s"] * r["attacked"] / r["n"]
                r["x_floor_attacked"] = r["time_s"] / attacked_floor
                r["loop_x_floor"] = r["loop_s"] / attacked_floor


def check_targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for model in ("standard", "at"):
        for attack in ("pgd10", "pgd50", "apgd"):
            sec = {
                r["tool"]: r for r in rows if r["model"] == model and r["attack"] == attack and "time_s" in r
            }
            ta = sec.get("torchattacks")
            best = max(
                (
                    r
                    for t, r in sec.items()
                    if r["kind"] == "ours"
                    and "robust_accuracy" in r
                    and ta
                    and r["robust_accuracy"] <= ta.get("robust_accuracy", -1) + ACC_SLACK
                ),
                key=lambda r: r.get("speedup_vs_torchattacks", 0),
                default=None,
            )
            if ta and "robust_accuracy" in ta:
                value = (
                    "no setting of ours at equal robust accuracy"
                    if best is None
                    else (
                        f"{best['tool']}: {best['speedup_vs_torchattacks']:.2f}x, robust {100 * best['robust_accuracy']:.2f}% "
                        f"vs {100 * ta['robust_accuracy']:.2f}%"
                    )
                )
                out.append(
                    {
                        "target": f"{model} {attack}: >= {SPEEDUP[model]}x torchattacks at equal robust accuracy (+{100 * ACC_SLACK:.1f} pts)",
                        "value": value,
                        "met": best is not None and best["speedup_vs_torchattacks"] >= SPEEDUP[model],
                    }
                )
                default = sec.get(DEFAULT_SETTING)
                if default and "robust_accuracy" in default:
                    equal = default["robust_accuracy"] <= ta["robust_accuracy"] + ACC_SLACK
                    out.append(
                        {
                            "target": f"{model} {attack}: the same with the CUDA default ({DEFAULT_SETTING}, not compiled)",
                            "value": f"{default['speedup_vs_torchattacks']:.2f}x, robust {100 * default['robust_accuracy']:.2f}%",
                            "met": equal and default["speedup_vs_torchattacks"] >= SPEEDUP[model],
                        }
                    )
            off = sec.get("off_bf16")
            if off and "loop_x_floor" in off:
                out.append(
                    {
                        "target": f"{model} {attack}: compaction off, the attack loop within {OFF_VS_FLOOR}x "
                        "the bf16 floor of the samples it attacks",
                        "value": f"{off['loop_x_floor']:.3f}x ({off['attacked']} of {off['n']} attacked; "
                        f"the whole call with the clean and final evaluations {off['x_floor_attacked']:.3f}x, "
                        f"{off['x_floor']:.3f}x the floor over all {off['n']})",
                        "met": off["loop_x_floor"] <= OFF_VS_FLOOR,
                    }
                )
    return out


# ---------------------------------------------------------------------------------------------- reporting


def table(res: dict[str, Any]) -> str:
    head = [
        "model",
        "attack",
        "tool / setting",
        "robust acc % (all / held-out)",
        "ours' own %",
        "wall s",
        "images/s",
        "x faster than torchattacks",
        "x floor",
        "x floor (attacked rows)",
        "loop x floor (attacked rows)",
        "fwd / bwd passes",
        "max |d|inf",
    ]
    lines = []
    for r in res["rows"]:
        if "time_s" not in r:
            why = r.get("error") or f"skipped ({r.get('skipped', '?')})"
            lines.append([r["model"], r["attack"], r["label"], why[:80]] + [""] * 9)
            continue
        acc = (
            "—"
            if "robust_accuracy" not in r
            else f"{100 * r['robust_accuracy']:.2f} / {fmt(100 * r['robust_accuracy_held_out'] if r.get('robust_accuracy_held_out') is not None else None, '.2f', '—')}"
        )
        lines.append(
            [
                r["model"],
                r["attack"],
                r["label"],
                acc,
                fmt(100 * r["reported_robust_accuracy"] if "reported_robust_accuracy" in r else None, ".2f"),
                f"{r['time_s']:.3f}",
                f"{r['images_per_s']:.0f}",
                fmt(r.get("speedup_vs_torchattacks"), ".2f"),
                fmt(r.get("x_floor"), ".3f"),
                fmt(r.get("x_floor_attacked"), ".3f"),
                fmt(r.get("loop_x_floor"), ".3f"),
                f"{r['forwards']} / {r['backwards']}" if "forwards" in r else "",
                fmt(r.get("max_linf"), ".4f"),
            ]
        )
    out = [md_table(head, lines), ""]
    if res.get("targets"):
        out.append(
            md_table(
                ["target (issue 11)", "measured", "met"],
                [[t["target"], t["value"], "yes" if t["met"] else "**no**"] for t in res["targets"]],
            )
        )
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu"
    )
    p.add_argument("--n", type=int, default=None, help="images attacked (default 10,000; --quick 512)")
    p.add_argument("--n-train", type=int, default=8000, help="CIFAR-10 test images the models train on")
    p.add_argument("--eps", type=float, default=8 / 255)
    p.add_argument("--width", type=int, default=64, help="ResNet-18 width (64 is the standard model)")
    p.add_argument("--epochs", type=int, default=None, help="standard model (default 15; --quick 1)")
    p.add_argument(
        "--at-epochs", type=int, default=None, help="adversarially trained model (default 6; --quick 1)"
    )
    p.add_argument("--at-steps", type=int, default=2, help="PGD steps of adversarial training")
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--models", default="standard,at")
    p.add_argument("--attacks", default="pgd10,apgd,pgd50", help="in order of priority")
    p.add_argument("--settings", default=",".join(SETTINGS))
    p.add_argument("--peers", default="torchattacks,art")
    p.add_argument("--art-attacks", default="pgd10,apgd", help="attacks ART runs (it is the slowest peer)")
    p.add_argument("--art-models", default="standard", help="models ART runs on (standard, at)")
    p.add_argument("--compile-mode", default="default", choices=("default", "reduce-overhead"))
    p.add_argument("--repeats", type=int, default=None, help="timed runs of ours (default 3; --quick 1)")
    p.add_argument("--peer-repeats", type=int, default=1)
    p.add_argument("--row-budget-s", type=float, default=6.0, help="no further repeats once a row used this")
    p.add_argument("--budget-s", type=float, default=400.0, help="start no new row after this many seconds")
    p.add_argument("--floor-steps", type=int, default=None, help="passes timed for the floors (default 10)")
    p.add_argument("--cudnn-benchmark", action="store_true", help="torch.backends.cudnn.benchmark = True")
    p.add_argument("--quick", action="store_true", help="smoke run: n 512, fewer steps and epochs, 1 repeat")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--retrain", action="store_true")
    p.add_argument("--model-dir", default=str(ROOT / "runs" / "bench"))
    p.add_argument(
        "--json", default=None, help="default: $OUT/gpu_evasion.json, else runs/bench/gpu_evasion.json"
    )
    p.add_argument("--render", default=None, help="only print the tables of this JSON (e.g. of a cut run)")
    args = p.parse_args(argv)
    quick = args.quick
    args.n = args.n or (512 if quick else 10000)
    args.epochs = args.epochs or (1 if quick else 15)
    args.at_epochs = args.at_epochs or (1 if quick else 6)
    args.repeats = args.repeats or (1 if quick else 3)
    args.floor_steps = args.floor_steps or (2 if quick else 10)
    for name in ("models", "attacks", "settings", "peers", "art_attacks", "art_models"):
        setattr(args, name, [s for s in getattr(args, name).split(",") if s])
    unknown = set(args.settings) - set(SETTINGS)
    if unknown:
        p.error(f"--settings: unknown {sorted(unknown)}; choose from {list(SETTINGS)}")
    if set(args.attacks) - {"pgd10", "pgd50", "apgd"}:
        p.error("--attacks: choose from pgd10, pgd50, apgd")
    if set(args.models) - {"standard", "at"}:
        p.error("--models: choose from standard, at")
    if args.json is None:
        out = os.environ.get("OUT")
        args.json = (
            str(Path(out) / "gpu_evasion.json") if out else str(ROOT / "runs" / "bench" / "gpu_evasion.json")
        )
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        res = json.loads(Path(args.render).read_text())
        add_ratios(res["rows"])
        res["targets"] = check_targets(res["rows"])
        print(table(res))
        return 0
    warnings.filterwarnings("ignore")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        log("--device cuda but CUDA is not available")
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    info = machine_info(device, ("torchattacks", "art"))
    log(f"machine: {machine_label(info)}; torch {info['torch']}")
    result: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": info,
        "config": {k: v for k, v in vars(args).items() if k not in ("json",)},
        "cudnn_benchmark": args.cudnn_benchmark,
        "models": {},
        "floor_per_pass_s": {},
        "rows": [],
        "pieces_s": {},
    }
    bench = Bench(args, device, result)
    data = load_data(args)
    data["x_dev"] = data["x"].to(device).contiguous()
    data["y_dev"] = data["y"].to(device)
    data["held_dev"] = data["held_out"].to(device)
    log(f"data: {args.n_train} training images, attacking {args.n} ({int(data['held_out'].sum())} held out)")
    floors: dict[str, float] | None = None
    for kind in args.models:
        if bench.over_budget():
            log(f"== {kind}: skipped (budget {args.budget_s:.0f}s reached)")
            result["models"][kind] = {"skipped": "budget"}
            continue
        t = time.perf_counter()
        model, minfo = train_model(kind, data, args, device)
        result["models"][kind] = minfo
        result["pieces_s"][f"{kind}: model"] = round(time.perf_counter() - t, 1)
        log(f"== {kind} model ready in {result['pieces_s'][f'{kind}: model']}s (cached={minfo['cached']})")
        if floors is None:  # the floor depends on the architecture, not the weights
            t = time.perf_counter()
            floors = measure_floors(bench, model, data["x_dev"], data["y_dev"])
            result["pieces_s"]["floors"] = round(time.perf_counter() - t, 1)
            log(f"== floors per pass: {floors} ({result['pieces_s']['floors']}s)")
        t = time.perf_counter()
        run_model(bench, kind, model, data, floors)
        result["pieces_s"][f"{kind}: attacks"] = round(time.perf_counter() - t, 1)
        bench.save()
    add_ratios(result["rows"])
    result["targets"] = check_targets(result["rows"])
    bench.save()
    print(f"\n{machine_label(info)}; torch {info['torch']}; n={args.n}; pieces (s): {result['pieces_s']}\n")
    print(table(result))
    print(f"\n(benchmark {bench.elapsed():.0f}s; JSON: {args.json})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
