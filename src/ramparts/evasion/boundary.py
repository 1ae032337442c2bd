"""Decision-based attacks see only the predicted label of each query: the Boundary attack, and the
searches it shares with HopSkipJump (`hopskipjump.py`): a starting point, and the binary search to the
decision boundary.

Both attacks are minimum-norm attacks, batched across samples: every query of a step, for all the samples still
in play, goes to the view in one call (rows name their samples; a gradient estimate repeats each
sample's index once per probe). Per-sample state lives in tensors on the model's device.

- Start: a point that already reaches the goal, per sample. `init="noise"` draws uniform noise over the
  bounds (1, 2, 4, ... draws per sample and round, `init_trials` in all); `init="batch"` tries the
  nearest other samples of the batch whose true label makes them plausible (another class, or the
  target class); `"auto"` (default) starts with noise when untargeted and with the batch when targeted,
  and falls back to the other source for samples still without a start. A sample without a start is not
  attacked.
- Early stopping (`early_stop=True`, the default): a sample leaves once an adversarial example within
  `threat.eps` is held. With `early_stop=False` every sample runs to the end of its iterations or its
  query budget, and the result is the closest adversarial found within eps: for the plain minimum
  distance, pass `early_stop=False` and eps as large as the domain (e.g. its l2 diameter).
- Budgets (`max_queries`): a sample that cannot pay for its next query leaves with its best so far; the
  others go on, and the result reports `budget_exhausted`.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor

from ramparts.evasion.base import AttackContext, EvasionAttack, register
from ramparts.oracles.base import Knowledge
from ramparts.params import Interval, Options

INITS = ("auto", "noise", "batch")
_BATCH_CANDIDATES = 3  # nearest batch samples tried per sample by the batch start
_BLEND_TOL = 1e-3  # Boundary's start: blend factor precision of the binary search (HSJ's paper value)
_CONVERGED = 1e-7  # Boundary: a sample whose step towards the original is this small is done
_SPHERICAL_WINDOW, _STEP_WINDOW = 100, 30  # Boundary's success-rate windows, in statistics updates


def col(v: Tensor, like: Tensor) -> Tensor:
    """Per-sample values shaped to broadcast over the rows of `like`."""
    return v.view(-1, *([1] * (like.dim() - 1)))


def ask(ctx: AttackContext, x_rows: Tensor, rows: Tensor) -> Tensor:
    """Whether each row reaches the goal of its sample `rows`: one counted query per row."""
    if len(rows) == 0:
        return torch.zeros(0, dtype=torch.bool, device=x_rows.device)
    return ctx.criterion[rows].reached_labels(ctx.box.labels(x_rows, rows))


def offer(ctx: AttackContext, rows: Tensor, x_rows: Tensor, adversarial: Tensor) -> None:
    """Hand points to the tracker (rows distinct), which keeps the closest success within eps."""
    ctx.tracker.offer(rows, x_rows, 1.0 - 2.0 * adversarial.float())


def queries_left(ctx: AttackContext, idx: Tensor) -> Tensor:
    """Queries each sample may still spend (a huge number without a budget)."""
    left = ctx.box.remaining(idx)
    return torch.full_like(idx, 1 << 62) if left is None else left


def samples_to_attack(ctx: AttackContext) -> Tensor:
    """The samples to attack: `start_indices`, less clean mistakes (already adversarial at distance 0)."""
    idx = ctx.start_indices()
    done = ctx.tracker.success[idx] & (ctx.tracker.distance[idx] == 0)
    return idx[~done]


def _from_batch(ctx: AttackContext, idx: Tensor) -> tuple[Tensor, Tensor]:
    """Per sample, the nearest of its `_BATCH_CANDIDATES` nearest plausible batch samples that reaches its goal."""
    crit, x = ctx.criterion, ctx.x
    found = torch.zeros(len(idx), dtype=torch.bool, device=x.device)
    k = min(_BATCH_CANDIDATES, len(x) - 1)
    if k < 1:
        return x[idx].clone(), found
    gap = torch.cdist(x[idx].flatten(1), x.flatten(1))
    mine = crit.labels[idx] if crit.targets is None else crit.targets[idx]
    plausible = crit.labels[None, :] != mine[:, None]
    if crit.targets is not None:
        plausible = ~plausible
    near, cand = gap.masked_fill(~plausible, math.inf).topk(k, dim=1, largest=False)
    valid = near.isfinite() & (torch.arange(k, device=x.device)[None, :] < queries_left(ctx, idx)[:, None])
    adv = torch.zeros_like(valid)
    adv[valid] = ask(ctx, x[cand[valid]], idx[:, None].expand(-1, k)[valid])
    first = adv.int().argmax(dim=1)  # candidates are sorted by distance
    found = adv.any(dim=1)
    start = torch.where(col(found, x), x[cand.gather(1, first[:, None])[:, 0]], x[idx])
    return start, found


def _from_noise(ctx: AttackContext, idx: Tensor, trials: int) -> tuple[Tensor, Tensor]:
    """Uniform noise over the bounds, 1, 2, 4, ... draws per still-unstarted sample and round; the closest success."""
    lo, hi = ctx.threat.bounds
    x0 = ctx.x[idx]
    start, found = x0.clone(), torch.zeros(len(idx), dtype=torch.bool, device=x0.device)
    used, draws = 0, 1
    while used < trials and not bool(found.all()):
        draws = min(draws, trials - used)
        sub = (~found).nonzero()[:, 0]
        count = queries_left(ctx, idx[sub]).clamp(max=draws)
        valid = torch.arange(draws, device=x0.device)[None, :] < count[:, None]
        if not bool(valid.any()):
            break
        shape = (len(sub), draws, *x0.shape[1:])
        noise = torch.rand(shape, generator=ctx.generator, device=x0.device).mul_(hi - lo).add_(lo)
        adv = torch.zeros_like(valid)
        adv[valid] = ask(ctx, noise[valid], idx[sub][:, None].expand(-1, draws)[valid])
        gap = (noise - x0[sub][:, None]).flatten(2).norm(dim=2).masked_fill(~adv, math.inf)
        closest = gap.argmin(dim=1)
        hit = adv.any(dim=1)
        start[sub[hit]] = noise[hit, closest[hit]]
        found[sub[hit]] = True
        used, draws = used + draws, draws * 2
    return start, found


def initial_points(ctx: AttackContext, idx: Tensor, init: str, trials: int) -> tuple[Tensor, Tensor]:
    """A starting point that reaches the goal for each sample of `idx`: (points, found)."""
    batch_first = init == "batch" or (init == "auto" and ctx.criterion.targets is not None)
    start, found = ctx.x[idx].clone(), torch.zeros(len(idx), dtype=torch.bool, device=ctx.x.device)
    for source in ("batch", "noise") if batch_first else ("noise", "batch"):
        sub = (~found).nonzero()[:, 0]
        if len(sub) == 0:
            break
        got, hit = _from_batch(ctx, idx[sub]) if source == "batch" else _from_noise(ctx, idx[sub], trials)
        start[sub[hit]] = got[hit]
        found[sub[hit]] = True
    return start, found


def binary_search(
    ctx: AttackContext, idx: Tensor, x0: Tensor, x_adv: Tensor, linf: bool, tol: Tensor
) -> tuple[Tensor, bool]:
    """Per sample, the point closest to `x0` that still reaches the goal, between `x0` and `x_adv`.

    l2: on the segment (blend factor in [0, 1]); linf: `x_adv` clipped to a box of shrinking radius
    around `x0` (HopSkipJump's projection). Stops when the interval is below `tol` per sample. `x_adv`
    must reach the goal. Returns the points and whether the budget stopped any sample.
    """
    high = (x_adv - x0).flatten(1).abs().amax(dim=1) if linf else torch.ones(len(idx), device=x0.device)
    low, tol = torch.zeros_like(high), tol.clone()

    def at(alpha: Tensor, origin: Tensor, end: Tensor) -> Tensor:
        a = col(alpha, end)
        return (
            torch.minimum(torch.maximum(end, origin - a), origin + a) if linf else torch.lerp(origin, end, a)
        )

    starved = False
    while True:
        act = (high - low > tol).nonzero()[:, 0]
        if len(act) == 0:
            break
        pay = ctx.affordable(idx[act], 1)
        if not bool(pay.all()):
            starved = True
            tol[act[~pay]] = math.inf
            act = act[pay]
        mid = (high[act] + low[act]) / 2
        adv = ask(ctx, at(mid, x0[act], x_adv[act]), idx[act])
        high[act] = torch.where(adv, mid, high[act])
        low[act] = torch.where(adv, low[act], mid)
    return at(high, x0, x_adv), starved


@register("boundary")
class Boundary(EvasionAttack):
    """Boundary attack (L2): a random walk along the decision boundary towards the original input.

    Brendel, Rauber & Bethge, "Decision-Based Adversarial Attacks: Reliable Attacks Against Black-Box
    Machine Learning Models", ICLR 2018.

    From an adversarial start (see `init` in the module docstring), blended towards the original by
    binary search, each step draws a Gaussian direction orthogonal to the line to the original, moves on
    the sphere around the original by `spherical_step` (relative to the distance), then steps towards it
    by `source_step`; the candidate is kept if it still reaches the goal and is closer. Every
    `update_stats_every` steps the spherical candidate is queried too, and the step sizes adapt per
    sample from success rates: over the last 100 such checks both grow by `step_adaptation` when more
    than 50% of spherical candidates were adversarial and shrink below 20%; over the last 30 the source
    step grows above 25% and shrinks below 10% of successful steps (Foolbox 3's rule and defaults). A
    sample stops when its source step falls below 1e-7. One query per step and sample, two on check
    steps. On small inputs larger steps converge much faster (8x8 digits, 1k queries: median l2 0.75
    with source_step=0.05, spherical_step=0.1, update_stats_every=1 against 1.72 with the defaults; both
    about 0.67 at 5k).
    """

    knowledge: ClassVar = Knowledge.LABEL
    norms: ClassVar = ("l2",)
    goals: ClassVar = ("untargeted", "targeted")
    tracking: ClassVar = "distance"
    minimizes_norm: ClassVar = True
    constraints: ClassVar = {
        "steps": Interval(int, 1, None),
        "spherical_step": Interval(float, 0, None, open_low=True),
        "source_step": Interval(float, 0, 1, open_low=True, open_high=True),
        "step_adaptation": Interval(float, 1, None, open_low=True),
        "update_stats_every": Interval(int, 1, None),
        "init": Options(INITS),
        "init_trials": Interval(int, 1, None),
    }

    def __init__(
        self,
        *,
        steps: int = 25_000,
        spherical_step: float = 1e-2,
        source_step: float = 1e-2,
        step_adaptation: float = 1.5,
        update_stats_every: int = 10,
        init: str = "auto",
        init_trials: int = 100,
    ) -> None:
        self.steps = steps
        self.spherical_step = spherical_step
        self.source_step = source_step
        self.step_adaptation = step_adaptation
        self.update_stats_every = update_stats_every
        self.init = init
        self.init_trials = init_trials

    def _run(self, ctx: AttackContext) -> None:
        idx = samples_to_attack(ctx)
        start, found = initial_points(ctx, idx, self.init, self.init_trials)
        starved = bool((~found & (queries_left(ctx, idx) < 1)).any())
        idx, start = idx[found], start[found]
        x0 = ctx.x[idx]
        best, hungry = binary_search(
            ctx, idx, x0, start, False, torch.full_like(idx, _BLEND_TOL, dtype=x0.dtype)
        )
        offer(ctx, idx, best, torch.ones_like(idx, dtype=torch.bool))
        m, dev = len(idx), x0.device
        best_norm = (best - x0).flatten(1).norm(dim=1)
        sph = torch.full((m,), self.spherical_step, device=dev)
        src = torch.full((m,), self.source_step, device=dev)
        sph_hist = torch.zeros(m, _SPHERICAL_WINDOW, device=dev)
        step_hist = torch.zeros(m, _STEP_WINDOW, device=dev)
        sph_n = torch.zeros(m, dtype=torch.int64, device=dev)
        step_n = torch.zeros_like(sph_n)
        a, checks = self.step_adaptation, 0
        for step in range(1, self.steps + 1):
            check = step % self.update_stats_every == 0
            keep = src >= _CONVERGED
            if ctx.early_stop:
                keep &= ~ctx.tracker.success[idx]
            pay = ctx.affordable(idx, 2 if check else 1, wanted=keep)
            starved |= bool((keep & ~pay).any())
            keep &= pay
            if not bool(keep.all()):
                idx, x0, best, best_norm, sph, src = (t[keep] for t in (idx, x0, best, best_norm, sph, src))
                sph_hist, step_hist, sph_n, step_n = (t[keep] for t in (sph_hist, step_hist, sph_n, step_n))
                m = len(idx)
                if m == 0:
                    break
            cand, spherical = self._proposals(ctx, x0, best, sph, src)
            if check:
                both = ask(ctx, torch.cat([cand, spherical]), torch.cat([idx, idx]))
                adv, sph_adv = both[:m], both[m:]
            else:
                adv = ask(ctx, cand, idx)
            dist = (cand - x0).flatten(1).norm(dim=1)
            better = adv & (dist < best_norm)
            best = torch.where(col(better, best), cand, best)
            best_norm = torch.where(better, dist, best_norm)
            offer(ctx, idx, cand, adv)
            if not check:
                continue
            sph_hist[:, checks % _SPHERICAL_WINDOW] = sph_adv.float()
            step_hist[:, checks % _STEP_WINDOW] = adv.float()
            checks += 1
            sph_n, step_n = (sph_n + 1).clamp(max=_SPHERICAL_WINDOW), (step_n + 1).clamp(max=_STEP_WINDOW)
            rate, full = sph_hist.mean(dim=1), sph_n == _SPHERICAL_WINDOW
            up, down = full & (rate > 0.5), full & (rate < 0.2)
            factor = torch.where(up, a, torch.where(down, 1 / a, 1.0))
            sph, src = sph * factor, src * factor
            sph_n = torch.where(up | down, 0, sph_n)
            rate, full = step_hist.mean(dim=1), step_n == _STEP_WINDOW
            up, down = full & (rate > 0.25), full & (rate < 0.1)
            src = src * torch.where(up, a, torch.where(down, 1 / a, 1.0))
            step_n = torch.where(up | down, 0, step_n)
        ctx.budget_exhausted |= starved or hungry

    @staticmethod
    def _proposals(
        ctx: AttackContext, x0: Tensor, best: Tensor, sph: Tensor, src: Tensor
    ) -> tuple[Tensor, Tensor]:
        """The candidate (orthogonal step, then towards the original) and the spherical point alone."""
        lo, hi = ctx.threat.bounds
        o, p = x0.flatten(1), best.flatten(1)
        to_orig = o - p
        norm = to_orig.norm(dim=1, keepdim=True).clamp_min(1e-12)
        unit = to_orig / norm
        eta = torch.randn(o.shape, generator=ctx.generator, device=o.device, dtype=o.dtype)
        eta = eta - (eta * unit).sum(dim=1, keepdim=True) * unit
        eta = eta * (sph[:, None] * norm / eta.norm(dim=1, keepdim=True).clamp_min(1e-12))
        # On the sphere of radius `norm` around the original (Pythagoras), then clipped to the bounds.
        spherical = (o + (eta - to_orig) / (sph[:, None] ** 2 + 1).sqrt()).clamp(lo, hi)
        new_dir = o - spherical
        new_norm = new_dir.norm(dim=1, keepdim=True).clamp_min(1e-12)
        length = (src[:, None] * norm + new_norm - norm).clamp_min(0) / new_norm
        cand = (spherical + length * new_dir).clamp(lo, hi)
        return cand.view_as(x0), spherical.view_as(x0)
