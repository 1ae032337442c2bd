"""Square Attack: random search over square-shaped updates at the boundary of the ball (linf and l2).

Andriushchenko, Croce, Flammarion & Hein, "Square Attack: a query-efficient black-box adversarial
attack via random search", ECCV 2020.

Each iteration draws, for every active sample, one square window at a uniformly random position (its
side set by the schedule of `p`, the fraction of pixels changed, shared by the batch), proposes a new
perturbation inside it, and keeps it if the loss went down: one query per active sample per iteration,
the whole batch in one call.
"""

from __future__ import annotations

import math
from typing import ClassVar, cast

import torch
from torch import Tensor

from ramparts.criteria import Criterion
from ramparts.evasion.base import AttackContext, EvasionAttack, register
from ramparts.oracles.base import Knowledge
from ramparts.params import Interval, Options
from ramparts.targets import ScoreBox

# The paper's schedule: p is halved after these fractions (in 1/10000) of the query budget.
_P_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def p_selection(p_init: float, it: int, n_queries: int) -> float:
    """The fraction of pixels to change at iteration `it`: `p_init` halved at the paper's iterations
    10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000 of 10000, rescaled to a budget of `n_queries`."""
    at = int(it / n_queries * 10000)
    halvings = sum(at > mark for mark in _P_HALVINGS)
    return p_init / 2**halvings


def _windows(
    n: int, s: int, h: int, w: int, generator: torch.Generator, device: torch.device
) -> tuple[Tensor, Tensor]:
    """Row and column indices (n, s) of one s x s window per sample, at a uniformly random position."""
    top = torch.randint(0, h - s + 1, (n,), generator=generator, device=device)
    left = torch.randint(0, w - s + 1, (n,), generator=generator, device=device)
    span = torch.arange(s, device=device)
    return top[:, None] + span, left[:, None] + span


def _take(t: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """The per-sample windows of `t` (n, c, h, w) as (n, c, s, s)."""
    b = torch.arange(len(t), device=t.device)[:, None, None]
    return t[b, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def _put(t: Tensor, rows: Tensor, cols: Tensor, value: Tensor) -> Tensor:
    """`t` with its per-sample windows replaced by `value` (n, c, s, s)."""
    b = torch.arange(len(t), device=t.device)[:, None, None]
    out = t.clone()
    out[b, :, rows[:, :, None], cols[:, None, :]] = value.permute(0, 2, 3, 1)
    return out


def _mask(rows: Tensor, cols: Tensor, h: int, w: int) -> Tensor:
    """Boolean (n, 1, h, w) map of the windows."""
    n = len(rows)
    in_rows = torch.zeros(n, h, dtype=torch.bool, device=rows.device).scatter_(1, rows, True)
    in_cols = torch.zeros(n, w, dtype=torch.bool, device=cols.device).scatter_(1, cols, True)
    return (in_rows[:, :, None] & in_cols[:, None, :])[:, None]


def _sum_sq(t: Tensor, dims: tuple[int, ...]) -> Tensor:
    return t.square().sum(dim=dims, keepdim=True)


def _bump(a: int, b: int) -> Tensor:
    """The paper's `pseudo_gaussian_pert_rectangles`: nested rectangles weighted 1/(k+1)^2, unit norm."""
    delta = torch.zeros(a, b)
    if a == 0 or b == 0:
        return delta
    r0, c0 = a // 2, b // 2
    for k in range(max(a // 2 + 1, b // 2 + 1)):
        delta[max(r0 - k, 0) : min(r0 - k + 2 * k + 1, a), max(c0 - k, 0) : min(c0 - k + 2 * k + 1, b)] += (
            1.0 / (k + 1) ** 2
        )
    return delta / delta.norm()


def square_perturbation(s: int) -> Tensor:
    """The paper's `meta_pseudo_gaussian_pert`: two opposite bumps (top and bottom halves), unit l2 norm."""
    delta = torch.cat([_bump(s // 2, s), -_bump(s - s // 2, s)])
    return delta / delta.norm()


@register("square")
class Square(EvasionAttack):
    """Square Attack (linf and l2): query-efficient random search with square-shaped updates.

    Andriushchenko, Croce, Flammarion & Hein, "Square Attack: a query-efficient black-box adversarial
    attack via random search", ECCV 2020.

    `n_queries` is the attack's per-sample budget, the initialisation included (the paper: 10,000).
    Initialisation: vertical stripes of +-eps (linf) or a grid of +-bumps scaled to norm eps (l2).
    Window side: sqrt(p n_features / channels) with `p` from `p_init` (default 0.8, the paper's MNIST
    and AutoAttack's setting) halved at the paper's fractions of the budget. `loss="auto"` is the
    paper's: the margin for untargeted (and confidence) goals, cross-entropy for targeted ones.
    """

    knowledge: ClassVar = Knowledge.SCORE
    norms: ClassVar = ("linf", "l2")
    constraints: ClassVar = {
        "n_queries": Interval(int, 1, None),
        "p_init": Interval(float, 0, 1, open_low=True),
        "loss": Options(("auto", "margin", "ce")),
    }

    def __init__(self, *, n_queries: int = 5000, p_init: float = 0.8, loss: str = "auto") -> None:
        self.n_queries = n_queries
        self.p_init = p_init
        self.loss = loss

    def _objective(self, crit: Criterion, log_probs: Tensor, margin: Tensor) -> Tensor:
        """Loss to minimise: the signed margin, or the cross-entropy (of the target when targeted)."""
        use_ce = self.loss == "ce" or (self.loss == "auto" and crit.goal == "targeted")
        return -crit.loss(log_probs) if use_ce else margin

    def _run(self, ctx: AttackContext) -> None:
        box = cast(ScoreBox, ctx.box)
        threat = ctx.threat
        idx = ctx.start_indices()
        keep = ctx.affordable(idx, 1)
        idx = idx[keep]
        if len(idx) == 0:
            return
        x0 = ctx.x[idx]
        img = x0.view(len(x0), 1, 1, -1) if x0.dim() != 4 else x0
        crit = ctx.criterion[idx]
        x_best = self._init(img, threat.eps_value, threat.norm, threat.bounds, ctx.generator)
        lp = box.log_probs(x_best.view_as(x0), idx)
        margin = crit.margin(lp)
        loss = self._objective(crit, lp, margin)
        ctx.tracker.offer(idx, x_best.view_as(x0), margin)
        shape = x0.shape
        step = self._linf_step if threat.norm == "linf" else self._l2_step
        for it in range(self.n_queries - 1):
            need = ctx.tracker.margin[idx] >= 0 if ctx.early_stop else torch.ones_like(idx, dtype=torch.bool)
            afford = ctx.affordable(idx, 1, wanted=need)
            keep = need & afford
            if not bool(keep.all()):
                idx, img, x_best, crit, loss = idx[keep], img[keep], x_best[keep], crit[keep], loss[keep]
            if len(idx) == 0:
                break
            p = p_selection(self.p_init, it, self.n_queries)
            x_new = step(img, x_best, p, threat.eps_value, threat.bounds, ctx.generator)
            lp = box.log_probs(x_new.view(-1, *shape[1:]), idx)
            new_margin = crit.margin(lp)
            new_loss = self._objective(crit, lp, new_margin)
            ctx.tracker.offer(idx, x_new.view(-1, *shape[1:]), new_margin)
            better = new_loss < loss
            x_best = torch.where(better.view(-1, 1, 1, 1), x_new, x_best)
            loss = torch.where(better, new_loss, loss)

    @staticmethod
    def _init(
        x: Tensor, eps: float, norm: str, bounds: tuple[float, float], generator: torch.Generator
    ) -> Tensor:
        """The paper's starting points: vertical stripes (linf) or a grid of signed bumps (l2)."""
        n, c, h, w = x.shape
        if norm == "linf":
            signs = _signs((n, c, 1, w), x, generator)
            return (x + eps * signs).clamp(*bounds)
        s = max(h // 5, 1)
        top0, left0 = (h - 5 * s) // 2 if h >= 5 * s else 0, (w - 5 * s) // 2 if w >= 5 * s else 0
        bump = square_perturbation(s).to(x.device, x.dtype)
        delta = torch.zeros_like(x)
        for top in range(top0, h - s + 1, s):
            for left in range(left0, w - s + 1, s):
                flip = torch.rand(n, generator=generator, device=x.device) < 0.5
                block = torch.where(flip.view(n, 1, 1, 1), bump.T, bump) * _signs((n, c, 1, 1), x, generator)
                delta[:, :, top : top + s, left : left + s] += block
        norms = _sum_sq(delta, (1, 2, 3)).sqrt().clamp_min(1e-12)
        return (x + delta / norms * eps).clamp(*bounds)

    @staticmethod
    def _linf_step(
        x0: Tensor, x_best: Tensor, p: float, eps: float, bounds: tuple[float, float], gen: torch.Generator
    ) -> Tensor:
        """One square of +-eps per channel at a random position, resampled if it changes nothing."""
        n, c, h, w = x0.shape
        s = min(max(round(math.sqrt(p * h * w)), 1), h, w)
        rows, cols = _windows(n, s, h, w, gen, x0.device)
        base, best = _take(x0, rows, cols), _take(x_best, rows, cols)
        signs = _signs((n, c, 1, 1), x0, gen)
        window = (base + eps * signs).clamp(*bounds)
        for _ in range(10):  # the paper resamples until the window changes
            same = ((window - best).abs() < 1e-7).flatten(1).all(dim=1)
            if not bool(same.any()):
                break
            signs = torch.where(same.view(n, 1, 1, 1), _signs((n, c, 1, 1), x0, gen), signs)
            window = (base + eps * signs).clamp(*bounds)
        return _put(x_best, rows, cols, window)

    @staticmethod
    def _l2_step(
        x0: Tensor, x_best: Tensor, p: float, eps: float, bounds: tuple[float, float], gen: torch.Generator
    ) -> Tensor:
        """The paper's l2 update: a new signed bump in window 1 taking the budget freed from window 2."""
        n, c, h, w = x0.shape
        s = max(round(math.sqrt(p * h * w)), 3)
        s = min(s + 1 - s % 2, h, w)
        delta = x_best - x0
        rows1, cols1 = _windows(n, s, h, w, gen, x0.device)
        rows2, cols2 = _windows(n, s, h, w, gen, x0.device)
        mask1, mask2 = _mask(rows1, cols1, h, w), _mask(rows2, cols2, h, w)
        norm_window1 = _sum_sq(delta * mask1, (2, 3)).sqrt()
        norm_image_sq = _sum_sq(delta, (1, 2, 3))
        norm_windows_sq = _sum_sq(delta * (mask1 | mask2), (2, 3))
        bump = square_perturbation(s).to(x0.device, x0.dtype)
        flip = torch.rand(n, generator=gen, device=x0.device) < 0.5
        new = torch.where(flip.view(n, 1, 1, 1), bump.T, bump) * _signs((n, c, 1, 1), x0, gen)
        new = new + _take(delta, rows1, cols1) / (1e-10 + norm_window1)
        budget = ((eps**2 - norm_image_sq).clamp_min(0) / c + norm_windows_sq).sqrt()
        new = new / _sum_sq(new, (2, 3)).sqrt().clamp_min(1e-12) * budget
        delta = _put(delta * ~mask2, rows1, cols1, new)
        norms = _sum_sq(delta, (1, 2, 3)).sqrt().clamp_min(1e-12)
        return (x0 + delta / norms * eps).clamp(*bounds)


def _signs(shape: tuple[int, ...], like: Tensor, generator: torch.Generator) -> Tensor:
    bits = torch.randint(0, 2, shape, generator=generator, device=like.device)
    return bits.to(like.dtype).mul_(2).sub_(1)
