"""Auto-PGD: PGD with momentum and a step size that halves itself when progress stalls.

Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks", ICML 2020. Losses: cross-entropy and the Difference of Logits Ratio (DLR),
whose targeted form needs at least four classes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar, cast

import torch
from torch import Tensor

from ramparts.criteria import Criterion
from ramparts.errors import invalid
from ramparts.evasion import buckets
from ramparts.evasion.base import AttackContext, EvasionAttack, register
from ramparts.evasion.gradient import ascent_direction
from ramparts.params import Interval, Options
from ramparts.targets import WhiteBox
from ramparts.threat import ThreatModel


def dlr_loss(logits: Tensor, labels: Tensor, targets: Tensor | None = None) -> Tensor:
    """Per-sample DLR to maximise: scale-invariant margin of the true class (or towards `targets`)."""
    ranked = logits.sort(dim=1, descending=True).values
    own = logits.gather(1, labels[:, None])[:, 0]
    if targets is None:
        others = logits.scatter(1, labels[:, None], float("-inf")).amax(dim=1)
        return -(own - others) / (ranked[:, 0] - ranked[:, 2] + 1e-12)
    tgt = logits.gather(1, targets[:, None])[:, 0]
    return -(own - tgt) / (ranked[:, 0] - 0.5 * (ranked[:, 2] + ranked[:, 3]) + 1e-12)


def checkpoints(steps: int) -> set[int]:
    """Iterations at which the step size may be halved: intervals of 0.22 N, shrinking by 0.03 N to at least 0.06 N.

    These are the paper's p_j = p_{j-1} + max(p_{j-1} - p_{j-2} - 0.03, 0.06), p_1 = 0.22, counted in
    whole iterations (22, 41, 57, 70, ... for N = 100).
    """
    first, shrink, least = (max(int(f * steps), 1) for f in (0.22, 0.03, 0.06))
    marks, at, interval = set(), 0, first
    while at + interval <= steps:
        at += interval
        marks.add(at)
        interval = max(interval - shrink, least)
    return marks


@register("apgd")
class APGD(EvasionAttack):
    """Auto-PGD (linf or l2) with the cross-entropy (`loss="ce"`) or DLR (`loss="dlr"`) loss.

    Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
    parameter-free attacks", ICML 2020.

    Step size starts at 2 eps and halves at a checkpoint when fewer than `rho` of the steps since the
    last checkpoint increased the loss, or when neither the step size nor the best loss changed; the
    iterate then restarts from the best point. Momentum 0.75 as in the paper. `compaction`: how samples
    that reached the goal leave the batch ("auto": "bucketed" on CUDA, "exact" elsewhere; see
    `ramparts.evasion.buckets`); the result does not depend on it.
    """

    norms: ClassVar = ("linf", "l2")
    constraints: ClassVar = {
        "steps": Interval(int, 1, None),
        "loss": Options(("ce", "dlr")),
        "restarts": Interval(int, 1, None),
        "rho": Interval(float, 0, 1, open_low=True, open_high=True),
        "compaction": Options(buckets.COMPACTIONS),
    }

    def __init__(
        self,
        *,
        steps: int = 100,
        loss: str = "ce",
        restarts: int = 1,
        rho: float = 0.75,
        random_start: bool = True,
        compaction: str = "auto",
    ) -> None:
        self.steps = steps
        self.loss = loss
        self.restarts = restarts
        self.rho = rho
        self.random_start = random_start
        self.compaction = compaction

    def _check_threat(self, threat: ThreatModel) -> None:
        super()._check_threat(threat)
        if self.loss == "dlr" and threat.goal == "confidence":
            raise invalid(
                "loss", "dlr", "'ce' for goal='confidence' (DLR is a margin loss)", "use loss='ce'."
            )

    def _objective(self, crit: Criterion) -> Callable[[Tensor], Tensor]:
        if self.loss == "ce":
            return crit.loss
        return lambda logits: dlr_loss(logits, crit.labels, crit.targets)

    def _run(self, ctx: AttackContext) -> None:
        mode = buckets.resolve(self.compaction, ctx.x.device)
        for _ in range(self.restarts):
            idx = ctx.start_indices()
            if len(idx) == 0:
                return
            self._attack(ctx, idx, mode)

    def _attack(self, ctx: AttackContext, idx: Tensor, mode: str) -> None:
        box = cast(WhiteBox, ctx.box)
        threat = ctx.threat
        crit = ctx.criterion[idx]
        x0 = ctx.x[idx]
        x = threat.random_start(x0, ctx.generator) if self.random_start else x0
        rows = None if len(idx) == len(ctx.x) else idx  # whole batch: views and tracker skip gathers
        logits, grad = box.value_and_grad(x, self._objective(crit), rows)
        loss = self._objective(crit)(logits)
        margin = crit.margin_from_logits(logits)
        ctx.tracker.offer(rows, x, margin)
        tol = box.tolerance
        s = {
            "idx": idx,
            "x0": x0,
            "x": x,
            "x_prev": x,
            "grad": grad,
            "loss": loss,
            "margin": margin,
            "go_on": buckets.goes_on(margin, logits, tol),
            "x_best": x,
            "grad_best": grad,
            "best": loss,
            "best_at_ckpt": loss,
            "eta": torch.full_like(loss, 2 * threat.eps_value),
            "increases": torch.zeros_like(loss),
            "reduced": torch.zeros_like(loss, dtype=torch.bool),
            # Rows still attacked; finished rows stay in the batch (uncharged) unless compaction is exact.
            "live": torch.ones_like(loss, dtype=torch.bool),
        }
        masked = ctx.early_stop and mode != "exact"
        counter = buckets.LaggedCount(idx.device) if masked and mode == "bucketed" else None
        marks = checkpoints(self.steps)
        last_mark = 0
        shape = (-1,) + (1,) * (x.dim() - 1)
        for k in range(self.steps):
            if masked:
                s["live"] = s["live"] & s["go_on"]
                size = (
                    None if counter is None else buckets.shrink_to(counter.exchange(s["live"]), len(s["idx"]))
                )
                if size == 0:
                    return
                if size is not None:
                    keep = buckets.select(s["live"], size)
                    s = {key: value[keep] for key, value in s.items()}
                    crit, rows = crit[keep], s["idx"]
            elif ctx.early_stop:
                keep = s["go_on"]
                if not bool(keep.all()):
                    s = {key: value[keep] for key, value in s.items()}
                    crit, rows = crit[keep], s["idx"]
                    if len(s["idx"]) == 0:
                        return
            live = s["live"] if masked else None
            x, eta = s["x"], s["eta"].view(shape)
            z = threat.project(x + eta * ascent_direction(s["grad"], threat.norm), s["x0"])
            x_new = z if k == 0 else threat.project(x + 0.75 * (z - x) + 0.25 * (x - s["x_prev"]), s["x0"])
            logits, grad = box.value_and_grad(x_new, self._objective(crit), rows, active=live)
            loss = self._objective(crit)(logits)
            s["margin"] = crit.margin_from_logits(logits)
            s["go_on"] = buckets.goes_on(s["margin"], logits, tol)
            ctx.tracker.offer(rows, x_new, s["margin"] if live is None else buckets.masked(s["margin"], live))
            s["increases"] = s["increases"] + (loss > s["loss"]).float()
            improved = loss > s["best"]
            s["x_best"] = torch.where(improved.view(shape), x_new, s["x_best"])
            s["grad_best"] = torch.where(improved.view(shape), grad, s["grad_best"])
            s["best"] = torch.where(improved, loss, s["best"])
            s["x_prev"], s["x"], s["grad"], s["loss"] = x, x_new, grad, loss
            if k + 1 in marks:
                since = k + 1 - last_mark
                stalled = s["increases"] < self.rho * since
                flat = ~s["reduced"] & (s["best_at_ckpt"] >= s["best"])
                halve = stalled | flat
                s["eta"] = torch.where(halve, s["eta"] / 2, s["eta"])
                back = halve.view(shape)
                s["x"] = torch.where(back, s["x_best"], s["x"])
                s["x_prev"] = torch.where(back, s["x_best"], s["x_prev"])
                s["grad"] = torch.where(back, s["grad_best"], s["grad"])
                s["reduced"], s["best_at_ckpt"] = halve, s["best"].clone()
                s["increases"] = torch.zeros_like(s["increases"])
                last_mark = k + 1
