"""HopSkipJump (L2 and Linf): a decision-based attack that estimates gradient directions from labels.

Chen, Jordan & Wainwright, "HopSkipJumpAttack: A Query-Efficient Decision-Based Attack", IEEE S&P 2020.
Starts, budgets and early stopping follow the decision-based family's rules in `boundary.py`.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor

from ramparts.evasion.base import AttackContext, EvasionAttack, register
from ramparts.evasion.boundary import (
    INITS,
    ask,
    binary_search,
    col,
    initial_points,
    offer,
    queries_left,
    samples_to_attack,
)
from ramparts.oracles.base import Knowledge
from ramparts.params import Interval, Options

_MAX_HALVINGS = 20  # HSJ's geometric step-size search: at most eps / 2**20
_MAX_ELEMENTS = 1 << 24  # HSJ's probes materialised at once (64 MiB of float32)


@register("hopskipjump")
class HopSkipJump(EvasionAttack):
    """HopSkipJump (L2 and Linf): gradient-direction estimates at the boundary from labels alone.

    Chen, Jordan & Wainwright, "HopSkipJumpAttack: A Query-Efficient Decision-Based Attack", IEEE S&P
    2020.

    From a start (see `init` in `boundary.py`'s docstring), each iteration t: a binary search between the original and
    the current point to the boundary (threshold theta = gamma / d^1.5 for l2, gamma / d^2 for linf, of
    the blend factor resp. the linf radius, the latter capped at theta * distance); a Monte-Carlo
    estimate of the gradient direction from min(init_evals * sqrt(t), max_evals) label queries at radius
    delta (0.1 of the bounds' width at t = 1, then sqrt(d) theta dist for l2, d theta dist for linf;
    Gaussian probes for l2, uniform for linf, with the paper's baseline subtraction); a geometric step
    along it (its sign for linf) from dist / sqrt(t), halved until the point reaches the goal; and the
    binary search again. The estimates of all samples go to the view in one query (chunked above 2^24
    probe values); with a budget, a sample's last estimate uses the queries it has left. Defaults are
    the paper's code's (64 iterations, 100 to 10,000 evaluations, gamma 1). On 8x8 digits (l2, median
    over 64 samples) the batch start helps at small budgets: 0.62 against 0.67 from noise at 2k queries.
    """

    knowledge: ClassVar = Knowledge.LABEL
    norms: ClassVar = ("l2", "linf")
    goals: ClassVar = ("untargeted", "targeted")
    tracking: ClassVar = "distance"
    minimizes_norm: ClassVar = True
    constraints: ClassVar = {
        "steps": Interval(int, 1, None),
        "init_evals": Interval(int, 1, None),
        "max_evals": Interval(int, 1, None),
        "gamma": Interval(float, 0, None, open_low=True),
        "init": Options(INITS),
        "init_trials": Interval(int, 1, None),
    }

    def __init__(
        self,
        *,
        steps: int = 64,
        init_evals: int = 100,
        max_evals: int = 10_000,
        gamma: float = 1.0,
        init: str = "auto",
        init_trials: int = 100,
    ) -> None:
        self.steps = steps
        self.init_evals = init_evals
        self.max_evals = max_evals
        self.gamma = gamma
        self.init = init
        self.init_trials = init_trials

    def _run(self, ctx: AttackContext) -> None:
        threat = ctx.threat
        linf = threat.norm == "linf"
        width = threat.bounds[1] - threat.bounds[0]
        d = ctx.x[0].numel()
        theta = self.gamma / (d**2 if linf else d**1.5)
        reserve = math.ceil(math.log2(1 / theta)) + 1  # one binary search and one step

        def tol(dist: Tensor) -> Tensor:
            return (dist * theta).clamp(max=theta * width) if linf else torch.full_like(dist, theta)

        idx = samples_to_attack(ctx)
        start, found = initial_points(ctx, idx, self.init, self.init_trials)
        starved = bool((~found & (queries_left(ctx, idx) < 1)).any())
        idx, start = idx[found], start[found]
        x0 = ctx.x[idx]
        xb, hungry = binary_search(ctx, idx, x0, start, linf, tol(threat.distance(start, x0)))
        starved |= hungry
        offer(ctx, idx, xb, torch.ones_like(idx, dtype=torch.bool))
        dist = threat.distance(xb, x0)
        for t in range(1, self.steps + 1):
            evals = min(int(self.init_evals * math.sqrt(t)), self.max_evals)
            counts = (queries_left(ctx, idx) - reserve).clamp(max=evals)
            keep = ~ctx.tracker.success[idx] if ctx.early_stop else torch.ones_like(idx, dtype=torch.bool)
            starved |= bool((keep & (counts < 1)).any())
            keep &= counts >= 1
            if not bool(keep.all()):
                idx, x0, xb, dist, counts = idx[keep], x0[keep], xb[keep], dist[keep], counts[keep]
                if len(idx) == 0:
                    break
            if t == 1:
                delta = torch.full_like(dist, 0.1 * width)
            else:
                delta = (d if linf else math.sqrt(d)) * theta * dist
            grad = self._estimate(ctx, idx, xb, delta, counts, evals)
            step, hungry = self._step(ctx, idx, xb, grad.sign() if linf else grad, dist / math.sqrt(t))
            xb, hungry2 = binary_search(ctx, idx, x0, step, linf, tol(threat.distance(step, x0)))
            starved |= hungry or hungry2
            offer(ctx, idx, xb, torch.ones_like(idx, dtype=torch.bool))
            dist = threat.distance(xb, x0)
        ctx.budget_exhausted |= starved

    @staticmethod
    def _estimate(
        ctx: AttackContext, idx: Tensor, xb: Tensor, delta: Tensor, counts: Tensor, evals: int
    ) -> Tensor:
        """Unit-l2 estimate of the direction that leads into the goal region, from `counts` probes per sample."""
        lo, hi = ctx.threat.bounds
        linf = ctx.threat.norm == "linf"
        grads = []
        chunk = max(1, _MAX_ELEMENTS // (evals * xb[0].numel()))
        for s in range(0, len(idx), chunk):
            x, dl, n, rows = (
                xb[s : s + chunk],
                delta[s : s + chunk],
                counts[s : s + chunk],
                idx[s : s + chunk],
            )
            shape = (len(x), evals, *x.shape[1:])
            if linf:
                rv = torch.rand(shape, generator=ctx.generator, device=x.device).mul_(2).sub_(1)
            else:
                rv = torch.randn(shape, generator=ctx.generator, device=x.device)
            rv /= rv.flatten(2).norm(dim=2).view(*shape[:2], *[1] * (x.dim() - 1))
            probes = (x[:, None] + col(dl, rv) * rv).clamp(lo, hi)
            rv = (probes - x[:, None]) / col(dl, rv)
            valid = torch.arange(evals, device=x.device)[None, :] < n[:, None]
            adv = torch.zeros_like(valid)
            adv[valid] = ask(ctx, probes[valid], rows[:, None].expand(-1, evals)[valid])
            fval = (2 * adv.float() - 1) * valid
            mean = fval.sum(dim=1, keepdim=True) / n[:, None]
            # Baseline subtraction, except when all probes agree (then the mean direction, signed).
            centred = torch.where(mean.abs() == 1, fval, (fval - mean) * valid)
            grads.append((centred.view(*shape[:2], *[1] * (x.dim() - 1)) * rv).sum(dim=1))
        grad = torch.cat(grads)
        return grad / col(grad.flatten(1).norm(dim=1).clamp_min(1e-12), grad)

    @staticmethod
    def _step(
        ctx: AttackContext, idx: Tensor, xb: Tensor, update: Tensor, eps: Tensor
    ) -> tuple[Tensor, bool]:
        """Geometric step-size search: halve each sample's step until its point reaches the goal."""
        lo, hi = ctx.threat.bounds
        eps, pending, starved = eps.clone(), torch.ones_like(idx, dtype=torch.bool), False
        for _ in range(_MAX_HALVINGS):
            act = pending.nonzero()[:, 0]
            if len(act) == 0:
                break
            pay = ctx.affordable(idx[act], 1)
            if not bool(pay.all()):
                starved = True
                pending[act[~pay]] = False
                eps[act[~pay]] = 0.0
                act = act[pay]
            cand = (xb[act] + col(eps[act], xb) * update[act]).clamp(lo, hi)
            adv = ask(ctx, cand, idx[act])
            pending[act[adv]] = False
            eps[act[~adv]] /= 2
        eps = torch.where(pending, 0.0, eps)
        return (xb + col(eps, xb) * update).clamp(lo, hi), starved
