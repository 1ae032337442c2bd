"""Robust membership inference (RMIA): Zarifzadeh, Liu, Cheng & Shokri, "Low-Cost High-Power Membership
Inference Attacks", ICML 2024.

The likelihood ratio of a record x against population records z: LR(x, z) = (p(x|target) / p(x)) /
(p(z|target) / p(z)), where p(.|model) is the probability of the true label and p(.) its average over
reference models. Score(x) = the fraction of population records z with LR(x, z) > gamma (ties broken by
p(x|target) / p(x), which orders records the same way). Offline (OUT
reference models only), p(x) = ((1 + a) * p_OUT(x) + (1 - a)) / 2 approximates the average over IN and
OUT models (the paper's linear fit, `a` a per-dataset constant); online uses every reference model.
Works with a single reference model.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from ramparts.errors import invalid
from ramparts.params import Interval, Options
from ramparts.privacy.base import MembershipAttack, MembershipContext, register
from ramparts.privacy.signals import check_views, signal

__all__ = ["RMIA"]


@register("rmia")
class RMIA(MembershipAttack):
    """RMIA with `a` (offline scaling), `gamma` (the LR threshold), the population from `population=`."""

    needs_shadows: ClassVar[bool] = True
    constraints: ClassVar = {
        "offline": Options((True, False)),
        "a": Interval(float, low=0.0, high=1.0),
        "gamma": Interval(float, low=0.0, open_low=True),
    }

    def __init__(
        self, *, offline: bool = True, a: float = 0.3, gamma: float = 1.0, views: tuple[str, ...] = ("id",)
    ) -> None:
        self.offline = offline
        self.a = a
        self.gamma = gamma
        self.views = views

    def get_params(self) -> dict[str, Any]:
        return {**super().get_params(), "views": list(self.views)}

    def _scores(self, ctx: MembershipContext) -> Tensor:
        views = check_views(self.views)
        pool = ctx.require_shadows()
        population = ctx.population
        if population is None:
            raise invalid(
                "population",
                None,
                "a Dataset of records from the same distribution, not under test",
                "pass population=... (RMIA compares each record with these z).",
            )
        device = ctx.x.device
        z_y = population.y.to(device)
        p_x = _true_prob(ctx.target_log_probs(views), ctx.y)  # [N]
        p_z = _true_prob(ctx.population_log_probs(views), z_y)  # [M]
        ref_x = _true_prob(pool.log_probs(ctx.x, views, device), ctx.y)  # [K, N]
        ref_z = _true_prob(pool.log_probs(population.x, views, device), z_y)  # [K, M]
        out = ~ctx.in_mask().to(device)
        ratio_x = p_x / self._marginal(ref_x, out)
        ratio_z = p_z / self._marginal(ref_z, torch.ones_like(ref_z, dtype=torch.bool))
        # LR(x, z) > gamma  <=>  ratio_z < ratio_x / gamma: count with one sort instead of an N x M matrix.
        sorted_z = ratio_z.sort().values
        count = torch.searchsorted(sorted_z, ratio_x / self.gamma, side="left").double()
        # The count is a step function of ratio_x: records beyond every z all tie at M, which flattens the
        # low-FPR end of the ROC. r / (1 + r) in (0, 1) breaks ties in the same order without changing it.
        tie = (ratio_x / (1 + ratio_x)).double()
        return (count + tie) / (len(sorted_z) + 1)

    def _marginal(self, ref: Tensor, out: Tensor) -> Tensor:
        """p(.) over the reference models: offline from the OUT ones with the `a` correction."""
        if not self.offline:
            return ref.mean(0)
        w = out.to(ref.dtype)
        have = w.sum(0) > 0
        p_out = torch.where(have, (ref * w).sum(0) / w.sum(0).clamp_min(1), ref.mean(0))
        return ((1 + self.a) * p_out + (1 - self.a)) / 2


def _true_prob(log_probs: Tensor, y: Tensor) -> Tensor:
    """The true label's probability averaged over the views: [..., V, N, C] -> [..., N]."""
    return (-signal(log_probs, y, "loss")).exp().mean(-2)
