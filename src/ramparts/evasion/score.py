"""Score-based gradient estimation driving the PGD step: NES and SPSA.

Ilyas et al., "Black-box Adversarial Attacks with Limited Queries and Information", ICML 2018 (NES);
Uesato et al., "Adversarial Risk and the Dangers of Evaluating Against Weak Attacks", ICML 2018 (SPSA).

Both estimate the gradient of the criterion's objective by antithetic finite differences along random
directions (Gaussian for NES, Rademacher for SPSA) and then take the projected step of the white-box
attacks (`ramparts.evasion.gradient.ascent_direction`). One step costs `samples + 1` queries per
sample: the estimate, asked for all active samples in one batched query, then the new iterate.
"""

from __future__ import annotations

from typing import ClassVar, cast

import torch
from torch import Tensor

from ramparts.criteria import Criterion
from ramparts.errors import invalid
from ramparts.evasion.base import AttackContext, EvasionAttack, register
from ramparts.evasion.gradient import ascent_direction, loss_fn
from ramparts.oracles.base import Knowledge
from ramparts.params import Interval, Options
from ramparts.targets import ScoreBox
from ramparts.threat import ThreatModel

_LOSSES = ("ce", "margin")
_ADAM_BETAS = (0.9, 0.999)


def estimate_gradient(
    box: ScoreBox,
    crit: Criterion,
    loss: str,
    x: Tensor,
    rows: Tensor,
    directions: Tensor,
    scale: float,
    bounds: tuple[float, float],
) -> Tensor:
    """Antithetic finite-difference estimate of the gradient of the objective at `x` (one batched query).

    `directions` has shape `(n, m, *x.shape[1:])`: `m` directions per sample, each probed at `x + scale u`
    and `x - scale u` (clipped to `bounds`), so `2 m` queries per sample, charged to the samples `rows`.
    The estimate is `sum_j (f(x + scale u_j) - f(x - scale u_j)) u_j / (2 scale m)`: for Gaussian `u`
    the NES estimate of the gradient of the smoothed objective, for Rademacher `u` SPSA's.
    """
    n, m = directions.shape[:2]
    step = scale * directions
    probes = torch.cat([x[:, None] + step, x[:, None] - step], dim=1).clamp(*bounds).flatten(0, 1)
    per_row = torch.arange(n, device=x.device).repeat_interleave(2 * m)
    values = loss_fn(crit[per_row], loss)(box.log_probs(probes, rows[per_row])).view(n, 2, m)
    diff = (values[:, 0] - values[:, 1]).view(n, m, *([1] * (x.dim() - 1)))
    return (diff * directions).sum(dim=1) / (2 * scale * m)


class _EstimatedPGD(EvasionAttack):
    """The shared loop: estimate the gradient from scores, take a projected step, query the iterate."""

    knowledge: ClassVar = Knowledge.SCORE
    norms: ClassVar = ("linf", "l2")
    steps: int
    samples: int
    step_size: float | None
    loss: str

    def validate_params(self) -> None:
        super().validate_params()
        if self.samples % 2:
            raise invalid(
                f"{type(self).__name__}.samples",
                self.samples,
                "an even number (antithetic pairs: +u and -u)",
                f"use samples={self.samples + 1}.",
            )

    def _scale(self) -> float:
        """The finite-difference step (sigma for NES, delta for SPSA)."""
        raise NotImplementedError

    def _directions(self, shape: tuple[int, ...], like: Tensor, generator: torch.Generator) -> Tensor:
        """Random probing directions of `shape` (sample, pair, *input)."""
        raise NotImplementedError

    def _default_step(self, threat: ThreatModel) -> float:
        return threat.eps_value / 5

    def _adam(self) -> bool:
        return False

    def _run(self, ctx: AttackContext) -> None:
        box = cast(ScoreBox, ctx.box)
        threat = ctx.threat
        idx = ctx.start_indices()
        x0 = ctx.x[idx]
        x, crit, project = x0, ctx.criterion[idx], threat.projector(x0)
        pairs = self.samples // 2
        step = self.step_size or self._default_step(threat)
        moments = (torch.zeros_like(x), torch.zeros_like(x)) if self._adam() else None
        for t in range(1, self.steps + 1):
            need = ctx.tracker.margin[idx] >= 0 if ctx.early_stop else torch.ones_like(idx, dtype=torch.bool)
            afford = ctx.affordable(idx, self.samples + 1, wanted=need)
            keep = need & afford
            if not bool(keep.all()):
                idx, x0, x, crit = idx[keep], x0[keep], x[keep], crit[keep]
                project = threat.projector(x0)
                if moments is not None:
                    moments = (moments[0][keep], moments[1][keep])
            if len(idx) == 0:
                break
            u = self._directions((len(idx), pairs, *x.shape[1:]), x, ctx.generator)
            grad = estimate_gradient(box, crit, self.loss, x, idx, u, self._scale(), threat.bounds)
            if moments is None:
                update = ascent_direction(grad, threat.norm)
            else:
                (b1, b2), (m, v) = _ADAM_BETAS, moments
                m, v = b1 * m + (1 - b1) * grad, b2 * v + (1 - b2) * grad.square()
                moments = (m, v)
                update = (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + 1e-8)
            x = project(x + step * update)
            rows = None if len(idx) == len(ctx.x) else idx
            ctx.tracker.offer(rows, x, crit.margin(box.log_probs(x, rows)))


@register("nes")
class NES(_EstimatedPGD):
    """NES gradient estimation driving projected gradient steps (linf sign step or l2 normalised step).

    Ilyas, Engstrom, Athalye & Lin, "Black-box Adversarial Attacks with Limited Queries and
    Information", ICML 2018. Each step estimates the gradient from `samples` queries (antithetic
    Gaussian pairs, `sigma` in input units; the paper: 50 samples, sigma 0.001), then steps by
    `step_size` (default eps / 5, the paper's 0.01 for eps 0.05) and projects. `loss="ce"` (default,
    the paper's cross-entropy) or `"margin"` (the criterion's signed margin).
    """

    constraints: ClassVar = {
        "steps": Interval(int, 1, None),
        "samples": Interval(int, 2, None),
        "sigma": Interval(float, 0, None, open_low=True),
        "step_size": Interval(float, 0, None, open_low=True, none_ok=True),
        "loss": Options(_LOSSES),
    }

    def __init__(
        self,
        *,
        steps: int = 100,
        samples: int = 50,
        sigma: float = 0.001,
        step_size: float | None = None,
        loss: str = "ce",
    ) -> None:
        self.steps = steps
        self.samples = samples
        self.sigma = sigma
        self.step_size = step_size
        self.loss = loss

    def _scale(self) -> float:
        return self.sigma

    def _directions(self, shape: tuple[int, ...], like: Tensor, generator: torch.Generator) -> Tensor:
        return torch.randn(shape, generator=generator, device=like.device, dtype=like.dtype)


@register("spsa")
class SPSA(_EstimatedPGD):
    """SPSA gradient estimation (Rademacher perturbations) driving Adam or the projected gradient step.

    Uesato, O'Donoghue, van den Oord & Kohli, "Adversarial Risk and the Dangers of Evaluating Against
    Weak Attacks", ICML 2018. Each step estimates the gradient from `samples` queries (antithetic +-1
    perturbations of size `delta`; the paper: delta 0.01) of the margin loss (default, as in the paper;
    or `loss="ce"`). With `adam=True` (default, as in the paper) the estimate feeds Adam with learning
    rate `step_size` (default 0.01 of the bounds' width); with `adam=False` it drives the PGD step
    (linf sign / l2 normalised) of size `step_size` (default eps / 5). Every iterate is projected.
    """

    constraints: ClassVar = {
        "steps": Interval(int, 1, None),
        "samples": Interval(int, 2, None),
        "delta": Interval(float, 0, None, open_low=True),
        "step_size": Interval(float, 0, None, open_low=True, none_ok=True),
        "loss": Options(_LOSSES),
    }

    def __init__(
        self,
        *,
        steps: int = 100,
        samples: int = 128,
        delta: float = 0.01,
        step_size: float | None = None,
        adam: bool = True,
        loss: str = "margin",
    ) -> None:
        self.steps = steps
        self.samples = samples
        self.delta = delta
        self.step_size = step_size
        self.adam = adam
        self.loss = loss

    def _scale(self) -> float:
        return self.delta

    def _adam(self) -> bool:
        return bool(self.adam)

    def _default_step(self, threat: ThreatModel) -> float:
        if self.adam:
            return 0.01 * (threat.bounds[1] - threat.bounds[0])
        return super()._default_step(threat)

    def _directions(self, shape: tuple[int, ...], like: Tensor, generator: torch.Generator) -> Tensor:
        bits = torch.randint(0, 2, shape, generator=generator, device=like.device)
        return bits.to(like.dtype).mul_(2).sub_(1)
