"""The one-pixel attack: differential evolution over k pixels (the `l0` threat model, k = eps).

Su, Vargas & Sakurai, "One Pixel Attack for Fooling Deep Neural Networks", IEEE Transactions on
Evolutionary Computation, 2019.

A candidate is k pixels, each (row, column, one value per channel). The populations of all active
samples are evaluated together: one batched query per generation, `population` rows per sample.
"""

from __future__ import annotations

from typing import ClassVar, cast

import torch
from torch import Tensor

from ramparts.criteria import Criterion
from ramparts.evasion.base import AttackContext, EvasionAttack, register
from ramparts.oracles.base import Knowledge
from ramparts.params import Interval
from ramparts.targets import ScoreBox

# The paper initialises values with N(128, 127) on the 0..255 scale.
_VALUE_MEAN, _VALUE_STD = 128 / 255, 127 / 255


def donors(n: int, population: int, generator: torch.Generator, device: torch.device) -> Tensor:
    """Indices (n, population, 3) of three distinct members, all different from the one they mutate.

    Three distinct offsets in [1, population) are drawn without replacement (a draw from a shrinking
    range, shifted past the values already taken) and added to the member's own index.
    """
    size = (n, population)
    a = torch.randint(0, population - 1, size, generator=generator, device=device)
    b = torch.randint(0, population - 2, size, generator=generator, device=device)
    b = b + (b >= a).long()
    c = torch.randint(0, population - 3, size, generator=generator, device=device)
    lo, hi = torch.minimum(a, b), torch.maximum(a, b)
    c = c + (c >= lo).long()
    c = c + (c >= hi).long()
    own = torch.arange(population, device=device).view(1, population, 1)
    return (own + 1 + torch.stack([a, b, c], dim=2)) % population


def paint(x: Tensor, genes: Tensor, bounds: tuple[float, float]) -> Tensor:
    """Images `x` (N, C, H, W) with the k pixels of `genes` (N, k, 2 + C) written in.

    Coordinates are rounded and clipped to the image, values clipped to `bounds`. When a candidate
    names one pixel twice, its first value is written (so the result does not depend on write order).
    """
    n, c, h, w = x.shape
    k = genes.shape[1]
    rows = genes[..., 0].round().clamp(0, h - 1).long()
    cols = genes[..., 1].round().clamp(0, w - 1).long()
    values = genes[..., 2:].clamp(*bounds)
    pos = rows * w + cols
    first = (pos[:, :, None] == pos[:, None, :]).float().argmax(dim=2)
    values = values.gather(1, first[..., None].expand(n, k, c))
    out = x.clone()
    b = torch.arange(n, device=x.device)[:, None].expand(n, k)
    out[b, :, rows, cols] = values
    return out


@register("onepixel")
class OnePixel(EvasionAttack):
    """One-pixel attack: differential evolution (DE/rand/1, no crossover) over k pixels, k = threat.eps.

    Su, Vargas & Sakurai, "One Pixel Attack for Fooling Deep Neural Networks", IEEE Transactions on
    Evolutionary Computation, 2019.

    Each of `population` candidates (the paper: 400) is k (row, column, values) triples; coordinates
    start uniform over the image, values from N(128, 127) on a 0..255 scale of the bounds. Each of
    `iterations` generations (the paper: up to 100) builds one child per member,
    x_r1 + `mutation` (x_r2 - x_r3) with F = 0.5 as in the paper, and the child replaces its parent
    when its fitness, the criterion's signed margin, is no worse. A sample stops as soon as its best
    member reaches the goal (with early stopping). Needs `ThreatModel(norm="l0", eps=k)`.
    """

    knowledge: ClassVar = Knowledge.SCORE
    norms: ClassVar = ("l0",)
    constraints: ClassVar = {
        "population": Interval(int, 4, None),
        "iterations": Interval(int, 0, None),
        "mutation": Interval(float, 0, 2, open_low=True),
    }

    def __init__(self, *, population: int = 400, iterations: int = 100, mutation: float = 0.5) -> None:
        self.population = population
        self.iterations = iterations
        self.mutation = mutation

    def _run(self, ctx: AttackContext) -> None:
        threat = ctx.threat
        pop, k = self.population, int(threat.eps_value)
        idx = ctx.start_indices()
        keep = ctx.affordable(idx, pop)
        idx = idx[keep]
        if len(idx) == 0:
            return
        shape = ctx.x.shape[1:]
        img = ctx.x[idx] if ctx.x.dim() == 4 else ctx.x[idx].reshape(len(idx), 1, 1, -1)
        crit = ctx.criterion[idx]
        genes = self._initial(img, k, threat.bounds, ctx.generator)  # (n, pop, k, 2 + C)
        fitness = self._evaluate(ctx, crit, img, genes, idx, shape)
        for _ in range(self.iterations):
            need = ctx.tracker.margin[idx] >= 0 if ctx.early_stop else torch.ones_like(idx, dtype=torch.bool)
            afford = ctx.affordable(idx, pop, wanted=need)
            keep = need & afford
            if not bool(keep.all()):
                idx, img, crit, genes, fitness = idx[keep], img[keep], crit[keep], genes[keep], fitness[keep]
            if len(idx) == 0:
                break
            children = self._mutate(genes, img.shape, threat.bounds, ctx.generator)
            child_fitness = self._evaluate(ctx, crit, img, children, idx, shape)
            better = child_fitness <= fitness
            genes = torch.where(better[..., None, None], children, genes)
            fitness = torch.where(better, child_fitness, fitness)

    def _initial(self, img: Tensor, k: int, bounds: tuple[float, float], gen: torch.Generator) -> Tensor:
        """The paper's start: coordinates uniform over the image, values N(128, 127) on 0..255."""
        n, c, h, w = img.shape
        size = (n, self.population, k)
        lo, hi = bounds
        dev, dt = img.device, img.dtype
        rows = torch.rand(size, generator=gen, device=dev, dtype=dt) * h - 0.5
        cols = torch.rand(size, generator=gen, device=dev, dtype=dt) * w - 0.5
        noise = torch.randn((*size, c), generator=gen, device=dev, dtype=dt)
        values = lo + (hi - lo) * (_VALUE_MEAN + _VALUE_STD * noise)
        return _clip_genes(torch.cat([rows[..., None], cols[..., None], values], dim=-1), img.shape, bounds)

    def _mutate(
        self, genes: Tensor, img_shape: torch.Size, bounds: tuple[float, float], gen: torch.Generator
    ) -> Tensor:
        """DE/rand/1: x_r1 + F (x_r2 - x_r3) for every member, coordinates and values clipped."""
        n, pop = genes.shape[:2]
        r = donors(n, pop, gen, genes.device)  # (n, pop, 3)
        flat = genes.flatten(2)
        pick = [flat.gather(1, r[..., j, None].expand_as(flat)) for j in range(3)]
        child = (pick[0] + self.mutation * (pick[1] - pick[2])).view_as(genes)
        return _clip_genes(child, img_shape, bounds)

    @staticmethod
    def _evaluate(
        ctx: AttackContext, crit: Criterion, img: Tensor, genes: Tensor, idx: Tensor, shape: torch.Size
    ) -> Tensor:
        """Fitness (signed margin, lower is better) of every member of every sample: one query.

        The best member of each sample is offered to the tracker.
        """
        n, pop = genes.shape[:2]
        per_row = torch.arange(n, device=img.device).repeat_interleave(pop)
        cand = paint(img[per_row], genes.flatten(0, 1), ctx.threat.bounds)
        log_probs = cast(ScoreBox, ctx.box).log_probs(cand.view(n * pop, *shape), idx[per_row])
        fitness = crit[per_row].margin(log_probs).view(n, pop)
        best = fitness.argmin(dim=1)
        winners = cand.view(n, pop, *shape)[torch.arange(n, device=img.device), best]
        ctx.tracker.offer(idx, winners, fitness.gather(1, best[:, None])[:, 0])
        return fitness


def _clip_genes(genes: Tensor, img_shape: torch.Size, bounds: tuple[float, float]) -> Tensor:
    _, _, h, w = img_shape
    return torch.cat(
        [
            genes[..., :1].clamp(0, h - 1),
            genes[..., 1:2].clamp(0, w - 1),
            genes[..., 2:].clamp(*bounds),
        ],
        dim=-1,
    )
