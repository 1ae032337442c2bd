#!/usr/bin/env python
"""PGD-Linf on an MNIST CNN: Ramparts vs torchattacks, Foolbox and ART, plus the floor (issue 2).

Same model, same images, same budget, one process. The model is the Carlini & Wagner / Papernot
MNIST CNN (`ramparts.zoo.build("carlini_cnn")`), trained on `mnist.npz` from the shared data folder
(or `$RAMPARTS_DATA_DIR`) and cached in `runs/bench/`. The attack is PGD-Linf with eps 0.3, 40 steps
of 0.01, random start on (Madry et al.) and, secondarily, off. The floor is the cost the attack cannot
avoid: 40 bare forward + backward passes (gradient w.r.t. the inputs only) on the same images.

Wall time is that of the whole public call (`attack(...)`, `atk(x, y)`, `attack(fmodel, ...)`,
`pgd.generate(...)`), median of `--repeats` runs taken round-robin after a short warm-up (2 steps on the
full batch), with `torch.cuda.synchronize()` around each run on a GPU. Every run is reseeded (torch,
numpy, CUDA) so each repeat computes the same thing.

    python benchmarks/evasion_peers.py --device cpu --n 1000 --repeats 2 --repeats-secondary 1
    python benchmarks/evasion_peers.py --render benchmarks/evasion_peers.cuda.json   # re-render a section

Results: a table on stdout, a JSON next to `--out` (`evasion_peers.<device>.json`) and a section of
`--out` (benchmarks/RESULTS.md) replaced or appended per machine.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as _dt
import io
import json
import pstats
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from _common import (
    ARCH,
    INPUT_SHAPE,
    ROOT,
    art_classifier,
    fmt,
    machine_info,
    machine_label,
    reseed,
    sync,
    write_section,
)
from _common import get_model as _get_model
from _common import section_key as _section_key
from ramparts import data as rdata
from ramparts import training
from ramparts.evasion import ATTACKS
from ramparts.oracles import TorchOracle
from ramparts.threat import ThreatModel

# Targets of issue 2 ("Benchmark (not a timed test)").
ACC_SLACK = 0.002  # our robust accuracy <= best peer's + 0.2 points
ES_VS_TA = 0.25  # with early stopping: wall time <= 0.25 x torchattacks'
NOES_VS_FLOOR = 1.05  # without early stopping: wall time <= 1.05 x the floor


# --------------------------------------------------------------------------------------------- setup


def get_model(args: argparse.Namespace, device: torch.device) -> tuple[nn.Module, dict[str, Any]]:
    """The cached carlini_cnn, or train one (deterministic: seed 0) and cache it."""
    return _get_model(args.model_dir, args.epochs, args.seed, device, args.retrain)


# ------------------------------------------------------------------------------------------- runners

Runner = Callable[[], tuple[Tensor, dict[str, Any]]]


def floor_runner(model: nn.Module, x: Tensor, y: Tensor, steps: int, weight_grads: bool = False) -> Runner:
    """`steps` bare forward + backward passes on x (CE summed over the batch).

    `weight_grads=False` is the floor: only the gradient w.r.t. the inputs (what an attack needs).
    `weight_grads=True` calls `loss.backward()` with the weights requiring grad, as Foolbox (eagerpy)
    and ART do, so the weight gradients are computed too: information, not the floor.
    """

    def run() -> tuple[Tensor, dict[str, Any]]:
        xa = x.clone()
        for _ in range(steps):
            xa.requires_grad_(True)
            loss = F.cross_entropy(model(xa), y, reduction="sum")
            if weight_grads:
                loss.backward()
                g = xa.grad
                model.zero_grad(set_to_none=True)
            else:
                (g,) = torch.autograd.grad(loss, xa)
            xa = xa.detach()
            del g
        return x, {}

    return run


def ours_runner(
    name: str,
    params: dict[str, Any],
    oracle: TorchOracle,
    x: Tensor,
    y: Tensor,
    threat: ThreatModel,
    seed: int,
    early_stop: bool,
) -> Runner:
    attack = ATTACKS.get(name)(**params)

    def run() -> tuple[Tensor, dict[str, Any]]:
        res = attack(oracle, x, y, threat, seed=seed, early_stop=early_stop)
        return res.x_adv, {
            "loop_s": res.elapsed_s,
            "forwards": int(res.queries.sum()),
            "backwards": int(res.backwards.sum()),
            "reported_robust_accuracy": res.robust_accuracy,
        }

    return run


def torchattacks_pgd(
    model: nn.Module, x: Tensor, y: Tensor, eps: float, step: float, steps: int, rs: bool
) -> Runner:
    import torchattacks

    atk = torchattacks.PGD(model, eps=eps, alpha=step, steps=steps, random_start=rs)

    def run() -> tuple[Tensor, dict[str, Any]]:
        return atk(x, y), {}

    return run


def torchattacks_apgd(
    model: nn.Module, x: Tensor, y: Tensor, eps: float, steps: int, loss: str, seed: int
) -> Runner:
    import torchattacks

    atk = torchattacks.APGD(model, norm="Linf", eps=eps, steps=steps, n_restarts=1, loss=loss, seed=seed)

    def run() -> tuple[Tensor, dict[str, Any]]:
        return atk(x, y), {}

    return run


def foolbox_pgd(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    step: float,
    steps: int,
    rs: bool,
    device: torch.device,
) -> Runner:
    import foolbox as fb

    fmodel = fb.PyTorchModel(model, bounds=(0.0, 1.0), device=device)
    attack = fb.attacks.LinfPGD(abs_stepsize=step, steps=steps, random_start=rs)

    def run() -> tuple[Tensor, dict[str, Any]]:
        _, clipped, _ = attack(fmodel, x, y, epsilons=eps)
        return clipped, {}

    return run


def art_pgd(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    step: float,
    steps: int,
    rs: bool,
    device: torch.device,
) -> Runner:
    from art.attacks.evasion import ProjectedGradientDescent

    clf = art_classifier(model, device)
    pgd = ProjectedGradientDescent(
        clf,
        norm=np.inf,
        eps=eps,
        eps_step=step,
        max_iter=steps,
        num_random_init=1 if rs else 0,
        batch_size=len(x),
        verbose=False,
    )
    # ART works on numpy arrays: the conversion of the inputs is the caller's, outside the timing.
    x_np, y_np = x.cpu().numpy(), y.cpu().numpy()

    def run() -> tuple[Tensor, dict[str, Any]]:
        return torch.from_numpy(pgd.generate(x_np, y_np)), {}

    return run


# ---------------------------------------------------------------------------------------- measuring


def evaluate_adv(model: nn.Module, x: Tensor, y: Tensor, x_adv: Tensor) -> dict[str, float]:
    x_adv = x_adv.to(x.device, torch.float32)
    with torch.no_grad():
        pred = model(x_adv).argmax(dim=1)
    return {
        "robust_accuracy": float((pred == y).float().mean()),
        "max_linf": float((x_adv - x).abs().flatten(1).amax(dim=1).max()),
        "in_bounds": bool((x_adv.min() >= 0) & (x_adv.max() <= 1)),
    }


def measure(
    rows: list[dict[str, Any]],
    runners: dict[str, Runner],
    warmups: dict[str, Runner],
    repeats: int,
    device: torch.device,
    seed: int,
    model: nn.Module,
    x: Tensor,
    y: Tensor,
) -> None:
    """Warm each runner up, then time `repeats` rounds round-robin; fills each row's measurements."""
    for key, warm in list(warmups.items()):
        reseed(seed)
        try:
            warm()
        except Exception as exc:
            print(f"  warm-up of {key} failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        sync(device)
    times: dict[str, list[float]] = {k: [] for k in runners}
    outputs: dict[str, Any] = {}
    failed: dict[str, str] = {}
    for r in range(repeats):
        for key, run in runners.items():
            if key in failed:
                continue
            reseed(seed)
            sync(device)
            t0 = time.perf_counter()
            try:
                x_adv, extra = run()
            except Exception as exc:
                failed[key] = f"{type(exc).__name__}: {exc}"
                print(f"  {key} FAILED: {failed[key]}", file=sys.stderr, flush=True)
                continue
            sync(device)
            times[key].append(time.perf_counter() - t0)
            if r == 0:
                outputs[key] = (evaluate_adv(model, x, y, x_adv), extra)
            elif "loop_s" in extra:
                outputs[key][1].setdefault("loop_s_all", [outputs[key][1]["loop_s"]]).append(extra["loop_s"])
            print(f"  [{r + 1}/{repeats}] {key:<28} {times[key][-1]:8.3f}s", file=sys.stderr, flush=True)
    for row in rows:
        key = row["key"]
        if key in failed:
            row["error"] = failed[key]
        if key not in runners or key not in outputs:
            continue
        ev, extra = outputs[key]
        row.update(ev)
        row["times_s"] = times[key]
        row["time_s"] = statistics.median(times[key])
        if "loop_s_all" in extra:
            extra["loop_s"] = statistics.median(extra.pop("loop_s_all"))
        row.update(extra)


def add_ratios(rows: list[dict[str, Any]], steps: int) -> None:
    by = {r["key"]: r for r in rows}
    peers = [r for r in rows if r["kind"] == "peer" and r["steps"] == steps and "robust_accuracy" in r]
    for section in {r["section"] for r in rows}:
        sec = [r for r in rows if r["section"] == section]
        sec_peers = [r for r in peers if r["section"] == section]
        best = min((r["robust_accuracy"] for r in sec_peers), default=None)
        ta = next((r for r in sec_peers if r["tool"] == "torchattacks"), None)
        for r in sec:
            if "time_s" not in r:
                continue
            floor = by.get("floor")
            if floor and "time_s" in floor:
                r["x_floor"] = r["time_s"] / (floor["time_s"] * r["steps"] / floor["steps"])
            if ta:
                r["x_torchattacks"] = r["time_s"] / ta["time_s"]
            if best is not None and "robust_accuracy" in r and r["kind"] not in ("floor", "info"):
                r["acc_vs_best_peer_pts"] = 100 * (r["robust_accuracy"] - best)


def check_targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for section in ("rs_on", "rs_off"):
        sec = {r["key"]: r for r in rows if r["section"] == section and "time_s" in r}
        peers = [r for r in sec.values() if r["kind"] == "peer"]
        if not peers:
            continue
        best = min(peers, key=lambda r: r["robust_accuracy"])
        for key in (f"ours_es_{section}", f"ours_noes_{section}"):
            if key in sec:
                r = sec[key]
                out.append(
                    {
                        "target": f"{section}: {r['label']} robust acc <= best peer + 0.2 pts",
                        "value": f"{100 * r['robust_accuracy']:.1f}% vs {100 * best['robust_accuracy']:.1f}% ({best['label']})",
                        "met": r["robust_accuracy"] <= best["robust_accuracy"] + ACC_SLACK + 1e-9,
                    }
                )
        es, ta = sec.get(f"ours_es_{section}"), sec.get(f"torchattacks_{section}")
        noes = sec.get(f"ours_noes_{section}")
        bound = ""
        if es and noes and "forwards" in es:
            bound = f"; passes {es['forwards']} vs {noes['forwards']} without early stop = {es['forwards'] / noes['forwards']:.3f}"
        if es and ta:
            out.append(
                {
                    "target": f"{section}: early stopping on, time <= {ES_VS_TA}x torchattacks",
                    "value": f"{es['x_torchattacks']:.3f}x (loop only: {es['loop_s'] / ta['time_s']:.3f}x{bound})",
                    "met": es["x_torchattacks"] <= ES_VS_TA,
                }
            )
        if noes and "x_floor" in noes:
            out.append(
                {
                    "target": f"{section}: early stopping off, time <= {NOES_VS_FLOOR}x floor",
                    "value": f"{noes['x_floor']:.3f}x (loop only: {noes['loop_s'] / (noes['time_s'] / noes['x_floor']):.3f}x)",
                    "met": noes["x_floor"] <= NOES_VS_FLOOR,
                }
            )
    return out


# ------------------------------------------------------------------------------------------ profiling


def component_costs(
    model: nn.Module,
    oracle: TorchOracle,
    x: Tensor,
    y: Tensor,
    threat: ThreatModel,
    step: float,
    device: torch.device,
    reps: int,
) -> list[dict[str, Any]]:
    """Per-step cost of each piece of `ramparts.evasion.gradient.iterate` on the full batch."""
    from ramparts.criteria import Criterion
    from ramparts.evasion.base import Tracker
    from ramparts.evasion.gradient import ascent_direction
    from ramparts.targets import WhiteBox

    n = len(x)
    crit = Criterion.build(threat, y, None, None)
    box = WhiteBox(oracle, n)
    idx = torch.arange(n, device=device)
    x_adv = threat.random_start(x, torch.Generator(device=device).manual_seed(0))
    with torch.no_grad():
        logits0 = model(x)
    tracker = Tracker(x, crit.margin_from_logits(logits0), threat)
    logits, grad = box.value_and_grad(x_adv, crit.loss, idx)
    margin = crit.margin_from_logits(logits)

    def bare() -> None:
        xa = x_adv.detach().requires_grad_(True)
        torch.autograd.grad(F.cross_entropy(model(xa), y, reduction="sum"), xa)

    pieces: list[tuple[str, str, Callable[[], Any]]] = [
        ("bare fwd+bwd (floor step)", "-", bare),
        (
            "box.value_and_grad(x, crit.loss, idx)",
            "targets.py WhiteBox.value_and_grad + criteria.py loss",
            lambda: box.value_and_grad(x_adv, crit.loss, idx),
        ),
        (
            "box._charge(x, idx, backward=True)",
            "targets.py LabelBox._charge",
            lambda: box._charge(x_adv, idx, True),
        ),
        (
            "crit.margin_from_logits(logits)",
            "gradient.py iterate: margin; criteria.py margin",
            lambda: crit.margin_from_logits(logits),
        ),
        (
            "ctx.tracker.offer(idx, x_adv, margin)",
            "gradient.py iterate -> base.py Tracker.offer",
            lambda: tracker.offer(idx, x_adv, margin),
        ),
        (
            "early-stop test bool((margin>=0).all())",
            "gradient.py iterate (early_stop)",
            lambda: bool((margin >= 0).all()),
        ),
        (
            "threat.project(x + a*sign(g), x0)",
            "gradient.py iterate: step + threat.py project",
            lambda: threat.project(x_adv + step * ascent_direction(grad, "linf"), x),
        ),
        ("box.logits(x_adv, idx) (final pass)", "gradient.py iterate end", lambda: box.logits(x_adv, idx)),
    ]
    out = []
    for name, where, fn in pieces:
        for _ in range(2):
            fn()
        ts = []
        for _ in range(reps):
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            ts.append(time.perf_counter() - t0)
        out.append({"piece": name, "where": where, "ms": 1e3 * statistics.median(ts)})
    return out


def profile_ours(
    model: nn.Module,
    oracle: TorchOracle,
    x: Tensor,
    y: Tensor,
    threat: ThreatModel,
    args: argparse.Namespace,
    device: torch.device,
    out_dir: Path,
) -> dict[str, str]:
    """torch.profiler (and cProfile) of our PGD, early stopping off and on; tables written to out_dir."""
    from torch.profiler import ProfilerActivity, profile

    out_dir.mkdir(parents=True, exist_ok=True)
    files = {}
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    params = {"steps": args.steps, "step_size": args.step_size, "random_start": True}
    for es in (False, True):
        run = ours_runner("pgd", params, oracle, x, y, threat, args.seed, es)
        run()
        sync(device)
        with profile(activities=acts) as prof:
            run()
            sync(device)
        tag = "es" if es else "noes"
        text = prof.key_averages().table(sort_by=sort, row_limit=30)
        text_cpu = prof.key_averages().table(sort_by="cpu_time_total", row_limit=30)
        path = out_dir / f"torchprof_ours_{tag}.txt"
        path.write_text(f"sorted by {sort}\n{text}\n\nsorted by cpu_time_total\n{text_cpu}\n")
        files[f"torchprof_{tag}"] = str(path)
        pr = cProfile.Profile()
        pr.enable()
        run()
        sync(device)
        pr.disable()
        buf = io.StringIO()
        pstats.Stats(pr, stream=buf).sort_stats("tottime").print_stats(25)
        path = out_dir / f"cprofile_ours_{tag}.txt"
        path.write_text(buf.getvalue())
        files[f"cprofile_{tag}"] = str(path)
    return files


# ---------------------------------------------------------------------------------------- reporting


def table(res: dict[str, Any]) -> str:
    head = (
        "| section | tool / setting | robust acc % | Δ vs best peer (pts) | wall s (median) | ours loop s "
        "| ×torchattacks | ×floor | fwd / bwd passes | max ‖δ‖∞ |"
    )
    lines = [head, "|" + "|".join(["---"] * (head.count("|") - 1)) + "|"]
    for r in res["rows"]:
        if "time_s" not in r:
            if "error" in r:
                lines.append(f"| {r['section']} | {r['label']} | failed: {r['error'][:120]} |" + " |" * 7)
            continue
        passes = f"{r['forwards']} / {r['backwards']}" if "forwards" in r else ""
        lines.append(
            f"| {r['section']} | {r['label']} | {fmt(100 * r['robust_accuracy'] if r['kind'] not in ('floor', 'info') else None, '.1f', '—')} "
            f"| {fmt(r.get('acc_vs_best_peer_pts'), '+.1f')} | {r['time_s']:.3f} | {fmt(r.get('loop_s'), '.3f')} "
            f"| {fmt(r.get('x_torchattacks'), '.3f')} | {fmt(r.get('x_floor'), '.3f')} | {passes} "
            f"| {fmt(r.get('max_linf') if r['kind'] not in ('floor', 'info') else None, '.4f')} |"
        )
    return "\n".join(lines)


def render_section(res: dict[str, Any]) -> str:
    info, cfg = res["machine"], res["config"]
    key = section_key(res)
    out = [f"<!-- evasion_peers:{key} -->", f"### {machine_label(info)} — n={cfg['n']}", ""]
    out.append(
        f"{res['date']}; torch {info['torch']}, Python {info['python']}; torchattacks {info['torchattacks']}, "
        f"Foolbox {info['foolbox']} (eagerpy {info['eagerpy']}), ART {info['art']}. "
        f"Model: {ARCH} trained {cfg['epochs']} epochs on MNIST train (seed {cfg['seed']}), "
        f"clean test accuracy {100 * res['model']['test_accuracy']:.2f}% on 10,000, "
        f"{100 * res['model']['clean_accuracy_n']:.1f}% on the {cfg['n']} attacked images (the first {cfg['n']} of the test set). "
        f"PGD-Linf eps {cfg['eps']}, {cfg['steps']} steps of {cfg['step_size']}; APGD {cfg['apgd_steps']} steps. "
        f"Wall time: whole call, median of {cfg['repeats']} (random start on) / {cfg['repeats_secondary']} "
        f"(random start off, APGD) runs after a warm-up; ×floor scales the floor by steps (APGD: ×{cfg['apgd_steps'] / cfg['steps']:g})."
    )
    out += ["", table(res), ""]
    if res.get("targets"):
        out.append("| target (issue 2) | measured | met |")
        out.append("|---|---|---|")
        for t in res["targets"]:
            out.append(f"| {t['target']} | {t['value']} | {'yes' if t['met'] else '**no**'} |")
        out.append("")
    if res.get("components"):
        out.append("Per-step cost of the pieces of our PGD loop (full batch, median):")
        out.append("")
        out.append("| piece | where | ms |")
        out.append("|---|---|---|")
        for c in res["components"]:
            out.append(f"| {c['piece']} | {c['where']} | {c['ms']:.3f} |")
        out.append("")
    out.append(f"<!-- /evasion_peers:{key} -->")
    return "\n".join(out)


def section_key(res: dict[str, Any]) -> str:
    return _section_key(res["machine"], f"n{res['config']['n']}")


def write_results_md(path: Path, res: dict[str, Any]) -> None:
    write_section(
        path,
        "evasion_peers",
        section_key(res),
        render_section(res),
        "## Evasion: PGD-Linf vs peers (`benchmarks/evasion_peers.py`)",
        heading_marker="## Evasion: PGD-Linf vs peers",
    )


# --------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu"
    )
    p.add_argument("--n", type=int, default=1000, help="test images attacked (the first n)")
    p.add_argument("--eps", type=float, default=0.3)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--step-size", type=float, default=0.01)
    p.add_argument("--apgd-steps", type=int, default=100)
    p.add_argument("--repeats", type=int, default=3, help="timed runs per tool, random start on (median)")
    p.add_argument(
        "--repeats-secondary", type=int, default=None, help="timed runs for random start off and APGD"
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--retrain", action="store_true")
    p.add_argument("--model-dir", default=str(ROOT / "runs" / "bench"))
    p.add_argument("--no-rs-off", action="store_true", help="skip the random-start-off section")
    p.add_argument("--no-apgd", action="store_true", help="skip the APGD section")
    p.add_argument("--no-peer-apgd", action="store_true", help="skip torchattacks' APGD in the APGD section")
    p.add_argument(
        "--no-weight-grad-floor", action="store_true", help="skip the informational floor with weight grads"
    )
    p.add_argument("--components", action="store_true", help="time each piece of our PGD loop")
    p.add_argument("--profile", default=None, help="folder for torch.profiler / cProfile tables of our PGD")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "RESULTS.md"))
    p.add_argument(
        "--json", default=None, help="JSON path (default: evasion_peers.<device>.json next to --out)"
    )
    p.add_argument("--no-md", action="store_true", help="do not touch --out")
    p.add_argument("--render", default=None, help="only re-render --out's section from this JSON")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        res = json.loads(Path(args.render).read_text())
        res["targets"] = check_targets(res["rows"])
        write_results_md(Path(args.out), res)
        print(render_section(res))
        return 0
    warnings.filterwarnings("ignore")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("--device cuda but CUDA is not available", file=sys.stderr)
        return 2
    rep2 = args.repeats if args.repeats_secondary is None else args.repeats_secondary
    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine_info(device)
    print(f"machine: {machine_label(info)}; torch {info['torch']}", file=sys.stderr)

    model, model_info = get_model(args, device)
    for p_ in model.parameters():  # as a user would have it: weights still require grad
        p_.requires_grad_(True)
    test = rdata.load_shared("mnist", split="test")
    test_acc = training.evaluate(model, test, device=device)
    x = test.x[: args.n].to(device).contiguous()
    y = test.y[: args.n].to(device)
    with torch.no_grad():
        clean_n = float((model(x).argmax(1) == y).float().mean())
    print(
        f"model: {model_info['path']} (cached={model_info['cached']}), test acc {100 * test_acc:.2f}%, "
        f"clean acc on {args.n}: {100 * clean_n:.1f}%",
        file=sys.stderr,
    )

    oracle = TorchOracle(model, input_shape=INPUT_SHAPE, num_classes=10)
    threat = ThreatModel(norm="linf", eps=args.eps)
    eps, step, steps = args.eps, args.step_size, args.steps

    def pgd_params(rs: bool) -> dict[str, Any]:
        return {"steps": steps, "step_size": step, "random_start": rs, "restarts": 1, "loss": "ce"}

    def warm_params(rs: bool) -> dict[str, Any]:
        return {**pgd_params(rs), "steps": 2}

    rows: list[dict[str, Any]] = []

    def row(key: str, section: str, tool: str, label: str, kind: str, nsteps: int = steps) -> None:
        rows.append(
            {"key": key, "section": section, "tool": tool, "label": label, "kind": kind, "steps": nsteps}
        )

    # -- random start on (main table) ------------------------------------------------------------
    runners: dict[str, Runner] = {}
    warm: dict[str, Runner] = {}
    row("floor", "rs_on", "floor", f"floor: {steps} x fwd+bwd (input grad only)", "floor")
    runners["floor"], warm["floor"] = floor_runner(model, x, y, steps), floor_runner(model, x, y, 2)
    if not args.no_weight_grad_floor:
        row("floor_w", "rs_on", "floor", f"(info) {steps} x fwd+loss.backward() incl. weight grads", "info")
        runners["floor_w"], warm["floor_w"] = (
            floor_runner(model, x, y, steps, True),
            floor_runner(model, x, y, 2, True),
        )

    def add_pgd_section(section: str, rs: bool, runners: dict[str, Runner], warm: dict[str, Runner]) -> None:
        tag = "random start" if rs else "no random start"
        for es in (True, False):
            key = f"ours_{'es' if es else 'noes'}_{section}"
            row(key, section, "ramparts", f"ramparts pgd, early stop {'on' if es else 'off'} ({tag})", "ours")
            runners[key] = ours_runner("pgd", pgd_params(rs), oracle, x, y, threat, args.seed, es)
            warm[key] = ours_runner("pgd", warm_params(rs), oracle, x, y, threat, args.seed, es)
        peers: list[tuple[str, str, Callable[[int], Runner]]] = [
            (
                "torchattacks",
                f"torchattacks.PGD ({tag})",
                lambda k: torchattacks_pgd(model, x, y, eps, step, k, rs),
            ),
            (
                "foolbox",
                f"foolbox LinfPGD ({tag})",
                lambda k: foolbox_pgd(model, x, y, eps, step, k, rs, device),
            ),
            (
                "art",
                f"ART ProjectedGradientDescent (num_random_init={int(rs)})",
                lambda k: art_pgd(model, x, y, eps, step, k, rs, device),
            ),
        ]
        for tool, label, make in peers:
            key = f"{tool}_{section}"
            row(key, section, tool, label, "peer")
            try:
                runners[key], warm[key] = make(steps), make(2)
            except Exception as exc:
                rows[-1]["error"] = f"{type(exc).__name__}: {exc}"
                print(f"  {tool} unavailable: {rows[-1]['error']}", file=sys.stderr)

    add_pgd_section("rs_on", True, runners, warm)
    t_start = time.perf_counter()
    print("== PGD, random start on", file=sys.stderr)
    measure(rows, runners, warm, args.repeats, device, args.seed, model, x, y)

    if not args.no_rs_off:
        runners, warm = {}, {}
        add_pgd_section("rs_off", False, runners, warm)
        print("== PGD, random start off", file=sys.stderr)
        measure(rows, runners, warm, rep2, device, args.seed, model, x, y)

    if not args.no_apgd:
        runners, warm = {}, {}
        a = args.apgd_steps
        for loss in ("ce", "dlr"):
            key = f"ours_apgd_{loss}"
            row(key, "apgd", "ramparts", f"ramparts apgd-{loss}, early stop on", "ours", a)
            runners[key] = ours_runner(
                "apgd", {"steps": a, "loss": loss}, oracle, x, y, threat, args.seed, True
            )
            warm[key] = ours_runner("apgd", {"steps": 2, "loss": loss}, oracle, x, y, threat, args.seed, True)
        key = "ours_apgd_ce_noes"
        row(key, "apgd", "ramparts", "ramparts apgd-ce, early stop off", "ours", a)
        runners[key] = ours_runner("apgd", {"steps": a, "loss": "ce"}, oracle, x, y, threat, args.seed, False)
        warm[key] = ours_runner("apgd", {"steps": 2, "loss": "ce"}, oracle, x, y, threat, args.seed, False)
        if not args.no_peer_apgd:
            for loss in ("ce", "dlr"):
                key = f"torchattacks_apgd_{loss}"
                row(key, "apgd", "torchattacks", f"(ref) torchattacks.APGD {loss}", "ref", a)
                runners[key] = torchattacks_apgd(model, x, y, eps, a, loss, args.seed)
                warm[key] = torchattacks_apgd(model, x, y, eps, 2, loss, args.seed)
        print("== APGD", file=sys.stderr)
        measure(rows, runners, warm, rep2, device, args.seed, model, x, y)
        # PGD (random start, early stop on) for comparison in the same section
        src = next(r for r in rows if r["key"] == "ours_es_rs_on")
        rows.append(
            {
                **src,
                "key": "ours_pgd_ref_apgd",
                "section": "apgd",
                "label": "ramparts pgd-40, early stop on (from above)",
            }
        )

    add_ratios(rows, steps)
    total = time.perf_counter() - t_start
    res: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": info,
        "config": {
            "n": args.n,
            "eps": eps,
            "steps": steps,
            "step_size": step,
            "apgd_steps": args.apgd_steps,
            "repeats": args.repeats,
            "repeats_secondary": rep2,
            "seed": args.seed,
            "epochs": args.epochs,
        },
        "model": {**model_info, "test_accuracy": test_acc, "clean_accuracy_n": clean_n},
        "rows": rows,
        "benchmark_seconds": total,
    }
    res["targets"] = check_targets(rows)
    if args.components:
        print("== component costs", file=sys.stderr)
        res["components"] = component_costs(
            model, oracle, x, y, threat, step, device, 20 if device.type == "cuda" else 3
        )
    if args.profile:
        print("== profiling", file=sys.stderr)
        res["profile_files"] = profile_ours(model, oracle, x, y, threat, args, device, Path(args.profile))

    out_md = Path(args.out)
    json_path = Path(args.json) if args.json else out_md.with_name(f"evasion_peers.{args.device}.json")
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(res, indent=2, default=str) + "\n")
    if not args.no_md:
        write_results_md(out_md, res)
    print(render_section(res))
    print(f"\n(benchmark {total:.0f}s; JSON: {json_path})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
