#!/usr/bin/env python
"""Black-box evasion on an MNIST CNN: Ramparts vs ART and torchattacks at equal query budgets (issue 3).

Same model as `evasion_peers.py` (carlini_cnn, 2 epochs, cached in `runs/bench/`), the first `--n` MNIST
test images, one process. Three sections:

* HopSkipJump (L2, untargeted, label-only) vs ART `HopSkipJump` at budgets of 1k and 5k queries per
  sample: median L2 reached, success at L2 <= 2.0, wall time, queries used. ART's budget is set through
  `max_iter` (the largest number of iterations whose queries stay within the budget: see
  `art_hsj_iters`); ours runs with `max_queries=B` and eps = the L2 diameter of the domain (28), so it
  spends the budget minimising the norm.
* Square Attack (Linf eps 0.3, score-based) vs ART `SquareAttack` and `torchattacks.Square` at 100 and
  1000 queries per sample: success rate, queries used.
* One-pixel attack (k = 3 pixels, `l0` threat) vs `torchattacks.OnePixel` and ART `PixelAttack` (DE):
  both peers run a population of 396 (ART's fixed `400 // 9 * 9`) for `--op-iters` generations; ours gets
  the same per-sample budget of queries.

Queries are counted at the model, for every tool alike: the model is wrapped in `CountingModel`, which
counts the rows of every forward pass; per-sample counts come from marking the per-sample loops of the
peers (ART HSJ and PixelAttack, torchattacks OnePixel) or from the attacks' own bookkeeping checked
against the model's count (torchattacks Square, ART Square). For ours, the model's count also includes
the two evaluations outside the attack's budget (the clean and the final pass), so "queries" is
`result.queries` + 2.

Each tool runs once (reseeded: torch, numpy, `random`) after a warm-up on two images; wall time is the
whole public call. The floor of a row is its model-counted queries divided by the bare model's throughput
(no-grad forwards in batches of `--floor-batch`): the cost that the queries alone impose.

    python benchmarks/blackbox_peers.py --device cpu --threads 1 --hsj-n 100,50 --op-n 100
    python benchmarks/blackbox_peers.py --render benchmarks/blackbox_peers.cpu.json
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from _common import (
    ARCH,
    INPUT_SHAPE,
    ROOT,
    art_classifier,
    fmt,
    get_model,
    load_mnist_test,
    machine_info,
    machine_label,
    md_table,
    reseed,
    run_timed,
    section_key,
    sync,
    test_accuracy,
    write_section,
)
from ramparts.evasion import ATTACKS
from ramparts.oracles import TorchOracle
from ramparts.threat import ThreatModel

# Targets of issue 3 ("Benchmark (not a timed test)").
HSJ_TIME_VS_ART = 0.1  # our HSJ wall time <= 0.1 x ART's at the same budget
HSJ_L2 = 2.0  # success threshold for HSJ
TAG = "blackbox_peers"
HEADING = "## Black-box evasion vs peers (`benchmarks/blackbox_peers.py`)"
PRIVILEGED = 2  # our evaluator's own passes per sample (clean, final), outside the attack's budget
OP_POP = 396  # ART PixelAttack's population for 3 pixels of 1 channel: (400 // 9) * 9


# -------------------------------------------------------------------------------------- counting


class CountingModel(nn.Module):
    """The model, counting the rows of every forward pass (in total and, when marked, per sample)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.reset()

    def reset(self) -> None:
        self.total = 0
        self.calls = 0
        self.per: list[int] = []
        self.current: int | None = None

    def next_sample(self) -> None:
        self.per.append(0)
        self.current = len(self.per) - 1

    def forward(self, x: Tensor) -> Tensor:
        rows = int(x.shape[0])
        self.total += rows
        self.calls += 1
        if self.current is not None:
            self.per[self.current] += rows
        # ART's HopSkipJump hands float64 arrays to PyTorchClassifier.predict, which passes them on as
        # they are; the model's weights are float32.
        return self.model(x if x.dtype == torch.float32 else x.float())

    def per_sample_loop(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """Wrap a peer's per-sample function so the rows it costs count for a new sample."""

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            self.next_sample()
            try:
                return fn(*args, **kwargs)
            finally:
                self.current = None

        return wrapped

    def marked_counts(self, n: int) -> np.ndarray | None:
        """Per-sample rows of the marked loops, plus the unmarked rows spread evenly (whole-batch calls)."""
        if len(self.per) != n:
            return None
        per = np.asarray(self.per, dtype=np.float64)
        return per + (self.total - per.sum()) / n


# ------------------------------------------------------------------------------------- evaluation


def evaluate(model: nn.Module, x: Tensor, y: Tensor, x_adv: Tensor) -> dict[str, Any]:
    """The evaluator's look (bare model, not counted): per-sample adversarial flag and distances."""
    x_adv = x_adv.to(x.device, torch.float32)
    with torch.no_grad():
        clean = model(x).argmax(1) == y
        pred = model(x_adv).argmax(1)
    d = (x_adv - x).flatten(1)
    adv = (pred != y) | ~clean
    return {
        "clean_correct": clean.cpu().numpy(),
        "adv": adv.cpu().numpy(),
        "l2": torch.where(clean, d.norm(dim=1), torch.zeros_like(d[:, 0])).cpu().numpy(),
        "linf": float(d.abs().amax(dim=1).max()),
        "l0_max": int((d.abs() > 1e-4).sum(dim=1).max()),
        "in_bounds": bool((x_adv.min() >= -1e-6) & (x_adv.max() <= 1 + 1e-6)),
    }


def query_stats(q: np.ndarray | None, total: int, n: int) -> dict[str, Any]:
    out: dict[str, Any] = {"model_rows": total, "queries_mean": total / n}
    if q is not None:
        out.update(queries_median=float(np.median(q)), queries_max=float(q.max()))
    return out


def floor_throughput(model: nn.Module, x: Tensor, batch: int, device: torch.device, seconds: float) -> float:
    """Images per second of bare no-grad forwards of the model in batches of `batch`."""
    xb = x[:batch]
    if len(xb) < batch:
        xb = xb.repeat(math.ceil(batch / len(xb)), 1, 1, 1)[:batch]
    with torch.no_grad():
        for _ in range(2):
            model(xb)
        sync(device)
        t0, reps = time.perf_counter(), 0
        while time.perf_counter() - t0 < seconds or reps < 3:
            model(xb)
            reps += 1
        sync(device)
        return reps * batch / (time.perf_counter() - t0)


# -------------------------------------------------------------------------------------- the tools


class Bench:
    """The model, the images and the counters shared by every runner."""

    def __init__(
        self, model: nn.Module, x: Tensor, y: Tensor, device: torch.device, args: argparse.Namespace
    ):
        self.model, self.x, self.y, self.device, self.args = model, x, y, device, args
        self.cm = CountingModel(model).eval()
        self.oracle = TorchOracle(
            self.cm, input_shape=INPUT_SHAPE, num_classes=10, batch_size=args.oracle_batch
        )
        self._art_clf: Any = None

    def art_classifier(self) -> Any:
        if self._art_clf is None:
            self._art_clf = art_classifier(self.cm, self.device)
        return self._art_clf

    # --- ours -----------------------------------------------------------------------------------

    def ours(
        self, name: str, hyper: dict[str, Any], threat: ThreatModel, budget: int, k: int
    ) -> tuple[Tensor, dict[str, Any]]:
        attack = ATTACKS.get(name)(**hyper)
        x, y = self.x[:k], self.y[:k]
        # The two evaluations outside the attack's budget (clean, final) are queries too: the attack
        # gets B - 2, so that every tool makes at most B queries per sample at the model.
        # A minimum-norm attack runs to its budget (early stopping would stop it at the first
        # adversarial within eps).
        res = attack(
            self.oracle,
            x,
            y,
            threat,
            seed=self.args.seed,
            max_queries=budget - PRIVILEGED,
            early_stop=not attack.minimizes_norm,
        )
        q = res.queries.detach().cpu().numpy().astype(np.float64)
        won = res.success.cpu().numpy().astype(bool)
        dist = np.where(won, res.distance.detach().cpu().numpy(), np.inf)
        privileged = (self.cm.total - q.sum()) / k
        extra = {
            "reported": {
                key: res.summary().get(key)
                for key in ("success_rate", "mean_queries", "median_queries", "max_queries", "elapsed_s")
            },
            "privileged_rows_per_sample": privileged,
            "elapsed_s": res.elapsed_s,
            "budget_exhausted": res.budget_exhausted,
            "reported_median_distance": float(np.median(dist)),
            "reported_success_at_l2": float((dist <= HSJ_L2).mean()),
        }
        return res.x_adv, {**query_stats(q + privileged, self.cm.total, k), **extra}

    # --- HopSkipJump ----------------------------------------------------------------------------

    def art_hsj(self, budget: int, k: int, iters: int) -> tuple[Tensor, dict[str, Any]]:
        from art.attacks.evasion import HopSkipJump

        atk = HopSkipJump(
            self.art_classifier(),
            batch_size=self.args.art_batch,
            targeted=False,
            norm=2,
            max_iter=iters,
            max_eval=10000,
            init_eval=100,
            init_size=100,
            verbose=False,
        )
        atk._perturb = self.cm.per_sample_loop(atk._perturb)
        x_np, y_np = self.x[:k].cpu().numpy(), self.y[:k].cpu().numpy()
        out = torch.from_numpy(atk.generate(x_np, y_np))
        return out, {**query_stats(self.cm.marked_counts(k), self.cm.total, k), "max_iter": iters}

    # --- Square ---------------------------------------------------------------------------------

    def ta_square(self, budget: int, k: int) -> tuple[Tensor, dict[str, Any]]:
        import torchattacks

        # 1 clean pass + 1 initial stripe + n_queries iterations + 1 final pass per sample <= budget
        nq = budget - 3
        atk = torchattacks.Square(
            self.cm,
            norm="Linf",
            eps=self.args.square_eps,
            n_queries=nq,
            n_restarts=1,
            p_init=0.8,
            loss="margin",
            resc_schedule=True,
            seed=self.args.seed,
        )
        own: list[Tensor] = []
        run_single = atk.attack_single_run

        def single(xs: Tensor, ys: Tensor) -> Any:
            nq_, adv = run_single(xs, ys)
            own.append(nq_.detach().cpu())
            return nq_, adv

        atk.attack_single_run = single
        x, y = self.x[:k], self.y[:k]
        out = atk(x, y)
        with torch.no_grad():
            correct = (self.model(x).argmax(1) == y).cpu().numpy()
        per = np.ones(k)
        if own:
            per[correct] += own[0].numpy() + 1
        q = per if per.sum() == self.cm.total else None
        return out, {**query_stats(q, self.cm.total, k), "n_queries": nq}

    def art_square(self, budget: int, k: int, iters: int | None = None) -> tuple[Tensor, dict[str, Any]]:
        from art.attacks.evasion import SquareAttack

        # per iteration ART re-predicts every sample (1) and evaluates the robust ones twice (old, new)
        it = (budget - 3) // 3 if iters is None else iters
        atk = SquareAttack(
            self.art_classifier(),
            norm=np.inf,
            eps=self.args.square_eps,
            max_iter=it,
            p_init=0.8,
            nb_restarts=1,
            batch_size=self.args.art_batch,
            verbose=False,
        )
        robust_masks: list[np.ndarray] = []
        crit = atk.adv_criterion

        def criterion(y_pred: np.ndarray, y_: np.ndarray) -> Any:
            res = crit(y_pred, y_)
            robust_masks.append(~np.asarray(res, dtype=bool))
            return res

        atk.adv_criterion = criterion
        x_np, y_np = self.x[:k].cpu().numpy(), self.y[:k].cpu().numpy()
        out = torch.from_numpy(atk.generate(x_np, y_np))
        per = np.zeros(k)
        for m in robust_masks:
            per += 1
            if m.any():
                per[m] += 2
        q = per if per.sum() == self.cm.total else None
        return out, {**query_stats(q, self.cm.total, k), "max_iter": it}

    # --- one pixel ------------------------------------------------------------------------------

    def ta_onepixel(self, iters: int, k: int) -> tuple[Tensor, dict[str, Any]]:
        import torchattacks
        import torchattacks.attacks.onepixel as op_mod

        atk = torchattacks.OnePixel(self.cm, pixels=self.args.op_pixels, steps=iters, popsize=OP_POP)
        de = op_mod.differential_evolution
        op_mod.differential_evolution = self.cm.per_sample_loop(de)
        try:
            out = atk(self.x[:k], self.y[:k])
        finally:
            op_mod.differential_evolution = de
        return out, {**query_stats(self.cm.marked_counts(k), self.cm.total, k), "steps": iters}

    def art_pixel(self, iters: int, k: int) -> tuple[Tensor, dict[str, Any]]:
        from art.attacks.evasion import PixelAttack

        atk = PixelAttack(
            self.art_classifier(), th=self.args.op_pixels, es=1, max_iter=iters, targeted=False, verbose=False
        )
        atk._attack = self.cm.per_sample_loop(atk._attack)
        x_np, y_np = self.x[:k].cpu().numpy(), self.y[:k].cpu().numpy()
        out = torch.from_numpy(atk.generate(x_np, y_np))
        return out, {**query_stats(self.cm.marked_counts(k), self.cm.total, k), "max_iter": iters}


def art_hsj_iters(budget: int, dims: int = 784, step_queries: int = 2) -> int:
    """The most ART HopSkipJump iterations whose queries per sample stay within `budget`.

    Per sample ART spends: 2 whole-batch predictions (clean, final success check), the initial
    adversarial (about 1 random draw + 10 bisection steps to 0.001), then per iteration t = 1, 2, ...:
    a bisection to theta = 0.01 / sqrt(dims) (ceil(log2(1 / theta)) = 12 queries for MNIST),
    int(100 sqrt(t)) queries for the gradient estimate and a geometric step-size search (about
    `step_queries`).
    """
    theta = 0.01 / math.sqrt(dims)
    bisect = math.ceil(math.log2(1 / theta))
    used, t = 2 + 1 + 10, 0
    while True:
        nxt = used + bisect + min(int(100 * math.sqrt(t + 1)), 10000) + step_queries
        if nxt > budget:
            return max(t, 1)
        used, t = nxt, t + 1


def op_budget(iters: int) -> int:
    """Queries per sample of a DE one-pixel peer: initial population, then population + success check."""
    return OP_POP * (iters + 1) + iters + 1


# ------------------------------------------------------------------------------------------ rows


def hsj_metrics(ev: dict[str, Any], thr: float) -> dict[str, Any]:
    dist = np.where(ev["adv"], ev["l2"], np.inf)
    return {
        "median_l2": float(np.median(dist)),
        "success_at_l2": float((dist <= thr).mean()),
        "adversarial": float(ev["adv"].mean()),
        "median_l2_found": float(np.median(ev["l2"][ev["adv"]])) if ev["adv"].any() else None,
    }


def success_metrics(ev: dict[str, Any]) -> dict[str, Any]:
    return {"success": float(ev["adv"].mean()), "clean_correct": float(ev["clean_correct"].mean())}


def run_row(
    bench: Bench,
    rows: list[dict[str, Any]],
    meta: dict[str, Any],
    fn: Callable[[], tuple[Tensor, dict[str, Any]]],
    warm: Callable[[], Any] | None,
    k: int,
    metrics: Callable[[dict[str, Any]], dict[str, Any]],
    throughput: float,
) -> dict[str, Any]:
    row = dict(meta)
    rows.append(row)
    label = f"{row['section']} B={row['budget']} n={k} {row['label']}"
    try:
        if warm is not None:
            reseed(bench.args.seed)
            warm()
        bench.cm.reset()
        (x_adv, extra), secs = run_timed(fn, bench.device, bench.args.seed)
    except Exception as exc:
        row["error"] = f"{type(exc).__name__}: {exc}"
        print(f"  {label}: FAILED {row['error']}", file=sys.stderr, flush=True)
        return row
    ev = evaluate(bench.model, bench.x[:k], bench.y[:k], x_adv)
    row.update(n=k, time_s=secs, **metrics(ev))
    row.update(extra)
    row["floor_s"] = row["model_rows"] / throughput
    row["x_floor"] = secs / row["floor_s"]
    row["linf_max"], row["l0_max"], row["in_bounds"] = ev["linf"], ev["l0_max"], ev["in_bounds"]
    print(
        f"  {label}: {secs:8.1f}s  q mean {row['queries_mean']:.0f} max {row.get('queries_max', float('nan')):.0f}"
        + "".join(
            f"  {m}={row[m]:.4g}" for m in ("median_l2", "success_at_l2", "success") if row.get(m) is not None
        ),
        file=sys.stderr,
        flush=True,
    )
    return row


# -------------------------------------------------------------------------------------- sections


def ints(text: str) -> list[int]:
    return [int(v) for v in str(text).split(",") if v.strip()]


def params(text: str | None) -> dict[str, Any]:
    return json.loads(text) if text else {}


def registered(name: str) -> bool:
    return name in ATTACKS.names()


def section_hsj(bench: Bench, rows: list[dict[str, Any]], thr: float) -> None:
    args, n = bench.args, len(bench.x)
    budgets = ints(args.hsj_budgets)
    sizes = ints(args.hsj_n) if args.hsj_n else [n] * len(budgets)
    threat = ThreatModel(norm="l2", eps=args.hsj_eps)
    hyper = params(args.hsj_params)

    def metrics(ev: dict[str, Any]) -> dict[str, Any]:
        return hsj_metrics(ev, HSJ_L2)

    for budget, k in zip(budgets, sizes, strict=True):
        base = {"section": "hsj", "budget": budget}
        ours_rows = [(k, "ours")] + ([(n, "ours_full")] if args.ours_full and k < n else [])
        for kk, kind in ours_rows:
            meta = {
                **base,
                "tool": "ramparts",
                "kind": kind,
                "label": "ramparts hopskipjump",
                "params": hyper,
            }
            if not registered("hopskipjump"):
                rows.append({**meta, "error": "hopskipjump is not registered yet"})
                continue
            run_row(
                bench,
                rows,
                meta,
                lambda kk=kk, budget=budget: bench.ours("hopskipjump", hyper, threat, budget, kk),
                lambda: bench.ours("hopskipjump", hyper, threat, 60, 2),
                kk,
                metrics,
                thr,
            )
            if kind == "ours":
                iters = args.art_hsj_iters or art_hsj_iters(budget)
                run_row(
                    bench,
                    rows,
                    {**base, "tool": "art", "kind": "peer", "label": f"ART HopSkipJump (max_iter={iters})"},
                    lambda budget=budget, k=k, iters=iters: bench.art_hsj(budget, k, iters),
                    lambda: bench.art_hsj(60, 2, 1),
                    k,
                    metrics,
                    thr,
                )


def section_square(bench: Bench, rows: list[dict[str, Any]], thr: float) -> None:
    args = bench.args
    k = args.square_n or len(bench.x)
    threat = ThreatModel(norm="linf", eps=args.square_eps)
    hyper = params(args.square_params)
    for budget in ints(args.square_budgets):
        base = {"section": "square", "budget": budget}
        meta = {**base, "tool": "ramparts", "kind": "ours", "label": "ramparts square", "params": hyper}
        if registered("square"):
            h = {"n_queries": budget, **hyper}
            run_row(
                bench,
                rows,
                {**meta, "params": h},
                lambda h=h, budget=budget: bench.ours("square", h, threat, budget, k),
                lambda h=h: bench.ours("square", {**h, "n_queries": 20}, threat, 20, 2),
                k,
                success_metrics,
                thr,
            )
        else:
            rows.append({**meta, "error": "square is not registered yet"})
        run_row(
            bench,
            rows,
            {
                **base,
                "tool": "torchattacks",
                "kind": "peer",
                "label": f"torchattacks.Square (n_queries={budget - 3})",
            },
            lambda budget=budget: bench.ta_square(budget, k),
            lambda: bench.ta_square(20, 2),
            k,
            success_metrics,
            thr,
        )
        run_row(
            bench,
            rows,
            {
                **base,
                "tool": "art",
                "kind": "peer",
                "label": f"ART SquareAttack (max_iter={(budget - 3) // 3})",
            },
            lambda budget=budget: bench.art_square(budget, k),
            lambda: bench.art_square(20, 2),
            k,
            success_metrics,
            thr,
        )
        if args.art_square_ref:
            run_row(
                bench,
                rows,
                {
                    **base,
                    "tool": "art",
                    "kind": "ref",
                    "label": f"(ref) ART SquareAttack (max_iter={budget}, ~3x the queries)",
                },
                lambda budget=budget: bench.art_square(budget, k, iters=budget),
                None,
                k,
                success_metrics,
                thr,
            )


def section_onepixel(bench: Bench, rows: list[dict[str, Any]], thr: float) -> None:
    args, n = bench.args, len(bench.x)
    k = args.op_n or n
    threat = ThreatModel(norm="l0", eps=args.op_pixels)
    hyper = params(args.op_params)
    for iters in ints(args.op_iters):
        budget = op_budget(iters)
        base = {"section": "onepixel", "budget": budget}
        for kk, kind in [(k, "ours")] + ([(n, "ours_full")] if args.ours_full and k < n else []):
            meta = {**base, "tool": "ramparts", "kind": kind, "label": "ramparts onepixel", "params": hyper}
            if not registered("onepixel"):
                rows.append({**meta, "error": "onepixel is not registered yet"})
                continue
            run_row(
                bench,
                rows,
                meta,
                lambda kk=kk, budget=budget: bench.ours("onepixel", hyper, threat, budget, kk),
                lambda: bench.ours("onepixel", hyper, threat, 2 * OP_POP, 2),
                kk,
                success_metrics,
                thr,
            )
        run_row(
            bench,
            rows,
            {
                **base,
                "tool": "torchattacks",
                "kind": "peer",
                "label": f"torchattacks.OnePixel (pixels={args.op_pixels}, steps={iters}, popsize={OP_POP})",
            },
            lambda iters=iters: bench.ta_onepixel(iters, k),
            lambda: bench.ta_onepixel(1, 2),
            k,
            success_metrics,
            thr,
        )
        run_row(
            bench,
            rows,
            {
                **base,
                "tool": "art",
                "kind": "peer",
                "label": f"ART PixelAttack (th={args.op_pixels}, es=1 DE, max_iter={iters})",
            },
            lambda iters=iters: bench.art_pixel(iters, k),
            lambda: bench.art_pixel(1, 2),
            k,
            success_metrics,
            thr,
        )


# ------------------------------------------------------------------------------------ ratios, targets


def find(
    rows: list[dict[str, Any]], section: str, budget: int, tool: str, kind: str
) -> dict[str, Any] | None:
    for r in rows:
        if (r["section"], r["budget"], r["tool"], r["kind"]) == (
            section,
            budget,
            tool,
            kind,
        ) and "time_s" in r:
            return r
    return None


def add_ratios(rows: list[dict[str, Any]]) -> None:
    for r in rows:
        if "time_s" not in r:
            continue
        ours = find(rows, r["section"], r["budget"], "ramparts", "ours")
        if r["section"] == "hsj":
            art = find(rows, "hsj", r["budget"], "art", "peer")
            if art and art.get("n") == r.get("n"):
                r["x_art_time"] = r["time_s"] / art["time_s"]
                if math.isfinite(art["median_l2"]) and art["median_l2"] > 0:
                    r["x_art_l2"] = r["median_l2"] / art["median_l2"]
        else:
            if ours and r is not ours and ours.get("n") == r.get("n"):
                r["ours_minus_success_pts"] = 100 * (ours["success"] - r["success"])
                r["ours_x_queries"] = ours["queries_mean"] / r["queries_mean"]
                r["ours_x_time"] = ours["time_s"] / r["time_s"]


def check_targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for r in rows:
        if r["kind"] != "ours" or "time_s" not in r:
            continue
        b, sec = r["budget"], r["section"]
        if sec == "hsj":
            art = find(rows, "hsj", b, "art", "peer")
            if not art:
                continue
            out.append(
                {
                    "target": f"HSJ B={b} (n={r['n']}): median L2 <= ART's",
                    "value": f"{r['median_l2']:.3f} vs {art['median_l2']:.3f} ({r.get('x_art_l2', float('nan')):.3f}x)",
                    "met": r["median_l2"] <= art["median_l2"] + 1e-9,
                }
            )
            out.append(
                {
                    "target": f"HSJ B={b} (n={r['n']}): wall time <= {HSJ_TIME_VS_ART}x ART's",
                    "value": f"{r['time_s']:.1f}s vs {art['time_s']:.1f}s = {r['x_art_time']:.3f}x "
                    f"(floor of our queries {r['floor_s']:.1f}s = {r['floor_s'] / art['time_s']:.3f}x ART)",
                    "met": r["x_art_time"] <= HSJ_TIME_VS_ART,
                }
            )
        elif sec == "square":
            for peer in rows:
                if peer["section"] != "square" or peer["budget"] != b or peer["kind"] != "peer":
                    continue
                if "time_s" not in peer:
                    continue
                out.append(
                    {
                        "target": f"Square B={b}: success >= {peer['tool']}'s at no more queries",
                        "value": f"{100 * r['success']:.1f}% vs {100 * peer['success']:.1f}%; "
                        f"mean queries {r['queries_mean']:.1f} vs {peer['queries_mean']:.1f}"
                        f" (max {fmt(r.get('queries_max'), '.0f', '?')} vs {fmt(peer.get('queries_max'), '.0f', '?')})",
                        "met": r["success"] >= peer["success"] - 1e-9
                        and r["queries_mean"] <= peer["queries_mean"] + 1e-9,
                    }
                )
    return out


# ---------------------------------------------------------------------------------------- reporting


def q_cell(r: dict[str, Any]) -> str:
    return f"{r['queries_mean']:.0f} / {fmt(r.get('queries_max'), '.0f', '?')}"


def tables(res: dict[str, Any]) -> str:
    rows = [r for r in res["rows"]]
    out = []

    def err(r: dict[str, Any], width: int) -> list[str]:
        return [str(r["budget"]), "", r["label"], f"not run: {r['error'][:100]}"] + [""] * (width - 4)

    hsj = [r for r in rows if r["section"] == "hsj"]
    if hsj:
        head = [
            "budget B",
            "images",
            "tool",
            "median L2",
            "×ART L2",
            f"success @ L2≤{HSJ_L2:g} %",
            "adversarial %",
            "queries mean / max",
            "wall s",
            "×ART time",
            "floor s",
            "×floor",
        ]
        body = []
        for r in hsj:
            if "time_s" not in r:
                body.append(err(r, len(head)))
                continue
            body.append(
                [
                    str(r["budget"]),
                    str(r["n"]),
                    r["label"] + (" (all images)" if r["kind"] == "ours_full" else ""),
                    f"{r['median_l2']:.3f}",
                    fmt(r.get("x_art_l2"), ".3f"),
                    f"{100 * r['success_at_l2']:.1f}",
                    f"{100 * r['adversarial']:.1f}",
                    q_cell(r),
                    f"{r['time_s']:.1f}",
                    fmt(r.get("x_art_time"), ".3f"),
                    f"{r['floor_s']:.1f}",
                    f"{r['x_floor']:.2f}",
                ]
            )
        out += ["**HopSkipJump, L2, untargeted (label-only)**", "", md_table(head, body), ""]
    sq = [r for r in rows if r["section"] == "square"]
    if sq:
        head = [
            "budget B",
            "images",
            "tool",
            "success %",
            "ours − tool (pts)",
            "queries mean / max",
            "ours ÷ tool queries",
            "wall s",
            "ours ÷ tool time",
            "×floor",
        ]
        body = []
        for r in sq:
            if "time_s" not in r:
                body.append(err(r, len(head)))
                continue
            body.append(
                [
                    str(r["budget"]),
                    str(r["n"]),
                    r["label"],
                    f"{100 * r['success']:.1f}",
                    fmt(r.get("ours_minus_success_pts"), "+.1f"),
                    q_cell(r),
                    fmt(r.get("ours_x_queries"), ".3f"),
                    f"{r['time_s']:.2f}",
                    fmt(r.get("ours_x_time"), ".3f"),
                    f"{r['x_floor']:.2f}",
                ]
            )
        out += [
            f"**Square Attack, Linf eps {res['config']['square_eps']} (score-based)**",
            "",
            md_table(head, body),
            "",
        ]
    op = [r for r in rows if r["section"] == "onepixel"]
    if op:
        head = [
            "budget B",
            "images",
            "tool",
            "success %",
            "ours − tool (pts)",
            "queries mean / max",
            "wall s",
            "ours ÷ tool time",
            "×floor",
            "max pixels changed",
        ]
        body = []
        for r in op:
            if "time_s" not in r:
                body.append(err(r, len(head)))
                continue
            body.append(
                [
                    str(r["budget"]),
                    str(r["n"]),
                    r["label"] + (" (all images)" if r["kind"] == "ours_full" else ""),
                    f"{100 * r['success']:.1f}",
                    fmt(r.get("ours_minus_success_pts"), "+.1f"),
                    q_cell(r),
                    f"{r['time_s']:.1f}",
                    fmt(r.get("ours_x_time"), ".3f"),
                    f"{r['x_floor']:.2f}",
                    str(r["l0_max"]),
                ]
            )
        out += [
            f"**One-pixel attack, k = {res['config']['op_pixels']} pixels (score-based)**",
            "",
            md_table(head, body),
            "",
        ]
    return "\n".join(out)


def render_section(res: dict[str, Any]) -> str:
    info, cfg = res["machine"], res["config"]
    key = section_key(info, f"n{cfg['n']}")
    out = [f"<!-- {TAG}:{key} -->", f"### {machine_label(info)} — n={cfg['n']}", ""]
    out.append(
        f"{res['date']}; torch {info['torch']}, Python {info['python']}; torchattacks {info['torchattacks']}, "
        f"ART {info['art']}. Model: {ARCH} trained {cfg['epochs']} epochs on MNIST train (seed {cfg['seed']}), "
        f"clean test accuracy {100 * res['model']['test_accuracy']:.2f}%, {100 * res['model']['clean_accuracy_n']:.1f}% "
        f"on the first {cfg['n']} test images; a row's `images` are the first ones of those. Queries are counted "
        f"at the model for every tool (ours: the attack's count + 2 evaluations outside its budget). Each tool "
        f"ran once after a warm-up; ×floor = wall time ÷ (model-counted queries ÷ {res['throughput']:.0f} img/s, "
        f"the bare model's no-grad throughput in batches of {cfg['floor_batch']}). Oracle batch size "
        f"{cfg['oracle_batch']}, ART predict batch size {cfg['art_batch']}."
    )
    out += ["", tables(res)]
    if res.get("targets"):
        body = [[t["target"], t["value"], "yes" if t["met"] else "**no**"] for t in res["targets"]]
        out += [md_table(["target (issue 3)", "measured", "met"], body), ""]
    out.append(f"<!-- /{TAG}:{key} -->")
    return "\n".join(out)


def jsonable(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return str(v)


# --------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu"
    )
    p.add_argument("--n", type=int, default=500, help="test images (the first n)")
    p.add_argument("--sections", default="hsj,square,onepixel")
    p.add_argument("--hsj-budgets", default="1000,5000")
    p.add_argument("--hsj-n", default=None, help="images per HSJ budget, e.g. 100,50 (default: n for each)")
    p.add_argument(
        "--hsj-eps", type=float, default=28.0, help="our HSJ's l2 eps (28 = the domain's diameter)"
    )
    p.add_argument("--hsj-params", default=None, help="JSON hyperparameters of our hopskipjump")
    p.add_argument("--art-hsj-iters", type=int, default=None, help="override ART HSJ max_iter")
    p.add_argument("--square-budgets", default="100,1000")
    p.add_argument("--square-eps", type=float, default=0.3)
    p.add_argument("--square-n", type=int, default=None)
    p.add_argument("--square-params", default=None, help="JSON hyperparameters of our square")
    p.add_argument(
        "--art-square-ref", action="store_true", help="also ART Square with max_iter = B (~3B queries)"
    )
    p.add_argument("--op-pixels", type=int, default=3)
    p.add_argument("--op-iters", default="4", help="DE generations of the peers (budget = 396 (g+1) + g + 1)")
    p.add_argument("--op-n", type=int, default=None)
    p.add_argument("--op-params", default=None, help="JSON hyperparameters of our onepixel")
    p.add_argument("--ours-full", action="store_true", help="also run ours on all n where peers ran on fewer")
    p.add_argument("--oracle-batch", type=int, default=4096, help="TorchOracle batch_size (its default)")
    p.add_argument("--art-batch", type=int, default=1024, help="ART predict batch_size")
    p.add_argument("--floor-batch", type=int, default=256)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--retrain", action="store_true")
    p.add_argument("--model-dir", default=str(ROOT / "runs" / "bench"))
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "RESULTS.md"))
    p.add_argument(
        "--json", default=None, help="JSON path (default: blackbox_peers.<device>.json next to --out)"
    )
    p.add_argument("--no-md", action="store_true")
    p.add_argument("--render", default=None, help="only re-render --out's section from this JSON")
    return p.parse_args(argv)


def write_results_md(path: Path, res: dict[str, Any]) -> None:
    key = section_key(res["machine"], f"n{res['config']['n']}")
    write_section(path, TAG, key, render_section(res), HEADING)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        res = json.loads(Path(args.render).read_text())
        add_ratios(res["rows"])
        res["targets"] = check_targets(res["rows"])
        if not args.no_md:
            write_results_md(Path(args.out), res)
        print(render_section(res))
        return 0
    warnings.filterwarnings("ignore")
    import logging

    logging.getLogger("art").setLevel(logging.ERROR)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine_info(device, ("torchattacks", "art"))
    print(f"machine: {machine_label(info)}; torch {info['torch']}", file=sys.stderr)
    model, model_info = get_model(args.model_dir, args.epochs, args.seed, device, args.retrain)
    for p_ in model.parameters():
        p_.requires_grad_(False)
    test, x, y = load_mnist_test(device, args.n)
    test_acc = test_accuracy(model, test, device)
    with torch.no_grad():
        clean_n = float((model(x).argmax(1) == y).float().mean())
    thr = floor_throughput(model, x, args.floor_batch, device, 2.0)
    print(
        f"model: {model_info['path']}, test acc {100 * test_acc:.2f}%, clean acc on {args.n}: {100 * clean_n:.1f}%; "
        f"bare forward {thr:.0f} img/s (batch {args.floor_batch}); attacks: {ATTACKS.names()}",
        file=sys.stderr,
    )
    info["loadavg_start"] = list(os.getloadavg())
    bench = Bench(model, x, y, device, args)
    rows: list[dict[str, Any]] = []
    t_start = time.perf_counter()
    sections = {"hsj": section_hsj, "square": section_square, "onepixel": section_onepixel}
    out_md = Path(args.out)
    json_path = Path(args.json) if args.json else out_md.with_name(f"blackbox_peers.{args.device}.json")
    json_path.parent.mkdir(parents=True, exist_ok=True)
    config_keys = (
        "n",
        "sections",
        "hsj_budgets",
        "hsj_n",
        "hsj_eps",
        "square_budgets",
        "square_eps",
        "op_pixels",
        "op_iters",
        "op_n",
        "oracle_batch",
        "art_batch",
        "floor_batch",
        "seed",
        "epochs",
    )

    def results(complete: bool) -> dict[str, Any]:
        info["loadavg_end"] = list(os.getloadavg())
        add_ratios(rows)
        res: dict[str, Any] = {
            "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": info,
            "config": {k: getattr(args, k) for k in config_keys},
            "model": {**model_info, "test_accuracy": test_acc, "clean_accuracy_n": clean_n},
            "throughput": thr,
            "rows": rows,
            "benchmark_seconds": time.perf_counter() - t_start,
            "complete": complete,
        }
        res["targets"] = check_targets(rows)
        json_path.write_text(json.dumps(res, indent=2, default=jsonable) + "\n")
        return res

    for name in args.sections.split(","):
        print(f"== {name}", file=sys.stderr, flush=True)
        sections[name](bench, rows, thr)
        results(False)  # what is done so far survives an interrupted run
    res = results(True)
    total = res["benchmark_seconds"]
    if not args.no_md:
        write_results_md(out_md, res)
    print(render_section(res))
    print(f"\n(benchmark {total:.0f}s; JSON: {json_path})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
