"""Gradient-based attacks with a fixed budget: FGSM, BIM, the iterative least-likely class, MI-FGSM, PGD.

They share one batched loop (`iterate`): each step costs one forward and one backward pass for the
samples still in play; with early stopping, a sample stops as soon as it reaches the goal. How finished
samples leave the batch is `compaction` (see `ramparts.evasion.buckets`): `"exact"` at once (the CPU
default), `"bucketed"` in a ladder of shapes without a host sync per step (the CUDA default),
`"off"` never (finished rows keep being computed, uncharged). All three give the same result.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import ClassVar, cast

import torch
from torch import Tensor

from ramparts.criteria import Criterion
from ramparts.evasion import buckets
from ramparts.evasion.base import AttackContext, EvasionAttack, register
from ramparts.params import Interval, Options
from ramparts.targets import WhiteBox
from ramparts.threat import ThreatModel

_LOSSES = ("ce", "margin")
_COMPACTION = Options(buckets.COMPACTIONS)


def loss_fn(criterion: Criterion, loss: str) -> Callable[[Tensor], Tensor]:
    """Per-sample objective to maximise: cross-entropy, or the negative signed margin (C&W's f6)."""
    if loss == "ce":
        return criterion.loss
    return lambda logits: -criterion.margin_from_logits(logits)


def ascent_direction(grad: Tensor, norm: str) -> Tensor:
    """Steepest ascent direction of unit size in `norm`: the sign for linf, the normalised gradient for l2."""
    if norm == "linf":
        return grad.sign()
    flat = grad.flatten(1).norm(p=2, dim=1).clamp_min(1e-12)
    return grad / flat.view(-1, *([1] * (grad.dim() - 1)))


def iterate(
    ctx: AttackContext,
    x_start: Tensor,
    idx: Tensor,
    *,
    steps: int,
    step_size: float,
    loss: str = "ce",
    momentum: float = 0.0,
    compaction: str = "exact",
) -> None:
    """Run `steps` projected ascent steps on the samples `idx`, starting from `x_start`.

    Every iterate is offered to the tracker (its logits come free with the gradient), and the last one
    after a final forward pass. With `momentum > 0` the L1-normalised gradients accumulate (MI-FGSM).
    `compaction` ("exact", "bucketed", "off"; resolved already) only matters with early stopping: with
    "exact" finished samples leave at once; otherwise they stay in the batch under the `live` mask,
    uncharged and never offered, and with "bucketed" the batch drops to a smaller ladder size once one
    holds the live rows.
    """
    box = cast(WhiteBox, ctx.box)
    threat = ctx.threat
    x0, x_adv, crit = ctx.x[idx], x_start, ctx.criterion[idx]
    # While every sample is in play, pass no indices: the views and the tracker then skip gathers.
    rows: Tensor | None = None if len(idx) == len(ctx.x) else idx
    velocity = torch.zeros_like(x_adv) if momentum else None
    project = threat.projector(x0)
    masked = ctx.early_stop and compaction != "exact"
    live = torch.ones(len(idx), dtype=torch.bool, device=idx.device) if masked else None
    counter = buckets.LaggedCount(idx.device) if masked and compaction == "bucketed" else None
    for _ in range(steps):
        logits, grad = box.value_and_grad(x_adv, loss_fn(crit, loss), rows, active=live)
        margin = crit.margin_from_logits(logits)
        ctx.tracker.offer(rows, x_adv, margin if live is None else buckets.masked(margin, live))
        keep: Tensor | None = None
        if ctx.early_stop:
            going = buckets.goes_on(margin, logits, box.tolerance)
            if live is None:
                keep = None if bool(going.all()) else going
            else:
                live = live & going
                size = None if counter is None else buckets.shrink_to(counter.exchange(live), len(live))
                keep = None if size is None else buckets.select(live, size)
        if keep is not None:
            idx, x0, x_adv, grad, crit = idx[keep], x0[keep], x_adv[keep], grad[keep], crit[keep]
            rows, project = idx, threat.projector(x0)
            if live is not None:
                live = live[keep]
            if velocity is not None:
                velocity = velocity[keep]
            if len(idx) == 0:
                return
        if velocity is not None:
            grad, velocity = _momentum(grad, velocity, momentum)
        x_adv = project(x_adv.add(ascent_direction(grad, threat.norm), alpha=step_size))
    logits = box.logits(x_adv, rows, active=live)
    margin = crit.margin_from_logits(logits)
    ctx.tracker.offer(rows, x_adv, margin if live is None else buckets.masked(margin, live))


def _momentum(grad: Tensor, velocity: Tensor, decay: float) -> tuple[Tensor, Tensor]:
    """MI-FGSM's update: the new velocity (decayed, plus the L1-normalised gradient), twice."""
    l1 = grad.abs().flatten(1).sum(dim=1).clamp_min(1e-12).view(-1, *([1] * (grad.dim() - 1)))
    velocity = decay * velocity + grad / l1
    return velocity, velocity


@register("fgsm")
class FGSM(EvasionAttack):
    """Fast Gradient Sign Method: one step of size eps along the gradient's sign (or its L2 direction).

    Goodfellow, Shlens & Szegedy, "Explaining and Harnessing Adversarial Examples", ICLR 2015.
    Targeted: one step down the cross-entropy of the target class.
    """

    norms: ClassVar = ("linf", "l2")
    constraints: ClassVar = {"loss": Options(_LOSSES)}

    def __init__(self, *, loss: str = "ce") -> None:
        self.loss = loss

    def _run(self, ctx: AttackContext) -> None:
        idx = ctx.start_indices()
        if len(idx):
            iterate(ctx, ctx.x[idx], idx, steps=1, step_size=ctx.threat.eps_value, loss=self.loss)


@register("bim")
class BIM(EvasionAttack):
    """Basic Iterative Method: FGSM repeated with a small step, clipped to the eps-ball after each step.

    Kurakin, Goodfellow & Bengio, "Adversarial examples in the physical world", ICLR workshop 2017.
    Defaults follow the paper for linf: a step of one pixel level (1/255 of the bounds' width) and
    min(eps + 4, 1.25 eps) steps, eps counted in pixel levels. `compaction`: how samples that reached the
    goal leave the batch ("auto": "bucketed" on CUDA, "exact" elsewhere; see `ramparts.evasion.buckets`).
    """

    norms: ClassVar = ("linf", "l2")
    constraints: ClassVar = {
        "steps": Interval(int, 1, None, none_ok=True),
        "step_size": Interval(float, 0, None, open_low=True, none_ok=True),
        "loss": Options(_LOSSES),
        "compaction": _COMPACTION,
    }

    def __init__(
        self,
        *,
        steps: int | None = None,
        step_size: float | None = None,
        loss: str = "ce",
        compaction: str = "auto",
    ) -> None:
        self.steps = steps
        self.step_size = step_size
        self.loss = loss
        self.compaction = compaction

    def schedule(self, threat: ThreatModel) -> tuple[int, float]:
        """The (steps, step size) actually used."""
        width = threat.bounds[1] - threat.bounds[0]
        if threat.norm == "linf":
            levels = threat.eps_value / width * threat.pixel_scale
            steps = self.steps or max(1, math.ceil(min(levels + 4, 1.25 * levels)))
            return steps, self.step_size or width / threat.pixel_scale
        steps = self.steps or 10
        return steps, self.step_size or 1.25 * threat.eps_value / steps

    def _run(self, ctx: AttackContext) -> None:
        idx = ctx.start_indices()
        steps, step_size = self.schedule(ctx.threat)
        mode = buckets.resolve(self.compaction, ctx.x.device)
        if len(idx):
            iterate(ctx, ctx.x[idx], idx, steps=steps, step_size=step_size, loss=self.loss, compaction=mode)


@register("ill")
class IterativeLeastLikely(BIM):
    """Iterative least-likely class method: BIM pushed towards the class the model finds least likely.

    Kurakin, Goodfellow & Bengio, "Adversarial examples in the physical world", ICLR workshop 2017.
    Needs `ThreatModel(goal="targeted", target="least_likely")`.
    """

    goals: ClassVar = ("targeted",)
    target_rules: ClassVar = ("least_likely",)


@register("mifgsm")
class MIFGSM(EvasionAttack):
    """Momentum Iterative FGSM: accumulates L1-normalised gradients with decay `decay`; transfers better.

    Dong et al., "Boosting Adversarial Attacks with Momentum", CVPR 2018. `compaction` as for `BIM`.
    """

    norms: ClassVar = ("linf", "l2")
    constraints: ClassVar = {
        "steps": Interval(int, 1, None),
        "decay": Interval(float, 0, None),
        "step_size": Interval(float, 0, None, open_low=True, none_ok=True),
        "loss": Options(_LOSSES),
        "compaction": _COMPACTION,
    }

    def __init__(
        self,
        *,
        steps: int = 10,
        decay: float = 1.0,
        step_size: float | None = None,
        loss: str = "ce",
        compaction: str = "auto",
    ) -> None:
        self.steps = steps
        self.decay = decay
        self.step_size = step_size
        self.loss = loss
        self.compaction = compaction

    def _run(self, ctx: AttackContext) -> None:
        idx = ctx.start_indices()
        step = self.step_size or ctx.threat.eps_value / self.steps
        if len(idx):
            iterate(
                ctx,
                ctx.x[idx],
                idx,
                steps=self.steps,
                step_size=step,
                loss=self.loss,
                momentum=self.decay,
                compaction=buckets.resolve(self.compaction, ctx.x.device),
            )


@register("pgd")
class PGD(EvasionAttack):
    """Projected Gradient Descent with a random start and restarts (linf or l2).

    Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks", ICLR 2018.
    The default step is 2.5 eps / steps, as in the paper. Restarts attack only the samples that are
    still unbroken when early stopping is on; the per-sample best over all restarts is kept.
    `compaction` as for `BIM`.
    """

    norms: ClassVar = ("linf", "l2")
    constraints: ClassVar = {
        "steps": Interval(int, 1, None),
        "step_size": Interval(float, 0, None, open_low=True, none_ok=True),
        "restarts": Interval(int, 1, None),
        "loss": Options(_LOSSES),
        "compaction": _COMPACTION,
    }

    def __init__(
        self,
        *,
        steps: int = 40,
        step_size: float | None = None,
        random_start: bool = True,
        restarts: int = 1,
        loss: str = "ce",
        compaction: str = "auto",
    ) -> None:
        self.steps = steps
        self.step_size = step_size
        self.random_start = random_start
        self.restarts = restarts
        self.loss = loss
        self.compaction = compaction

    def _run(self, ctx: AttackContext) -> None:
        step = self.step_size or 2.5 * ctx.threat.eps_value / self.steps
        mode = buckets.resolve(self.compaction, ctx.x.device)
        for _ in range(self.restarts):
            idx = ctx.start_indices()
            if len(idx) == 0:
                return
            x0 = ctx.x[idx]
            start = ctx.threat.random_start(x0, ctx.generator) if self.random_start else x0
            iterate(ctx, start, idx, steps=self.steps, step_size=step, loss=self.loss, compaction=mode)
