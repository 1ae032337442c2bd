"""The likelihood-ratio attack (LiRA): Carlini, Chien, Nasr, Song, Terzis & Tramèr, "Membership Inference
Attacks From First Principles", IEEE S&P 2022.

For every record, the shadow models that trained on it (IN) and those that did not (OUT) give two
distributions of the record's logit-scaled confidence, each fitted by a Gaussian (per record and per
query view). Online: score = log N(phi; mu_in, s_in) - log N(phi; mu_out, s_out), summed over views.
Offline (OUT models only): the one-sided test log P[Z <= phi], Z ~ N(mu_out, s_out), summed over views
(a record that is IN every shadow model borrows mu_out from the IN mean minus the average shift).
`global_variance` pools one variance over all records (the paper's fix for few shadow models). A record
with no IN (or no OUT) model takes the average IN-OUT shift of the other records (rare with K >= 16).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor

from ramparts.params import Options
from ramparts.privacy.base import MembershipAttack, MembershipContext, register
from ramparts.privacy.signals import SIGNALS, check_views, signal

__all__ = ["LiRA"]

_MIN_STD = 1e-4


@register("lira")
class LiRA(MembershipAttack):
    """LiRA, online (IN and OUT shadows) or offline (OUT only); see the module docstring.

    `signal`: "logit" (logit-scaled confidence, the paper's) or "hinge" (logit margin); `views`: query
    augmentations ("id", "mirror", "shift:DX,DY"), each one more query per record.
    """

    needs_shadows: ClassVar[bool] = True
    constraints: ClassVar = {
        "online": Options((True, False)),
        "signal": Options(tuple(s for s in SIGNALS if s != "loss")),
        "global_variance": Options((True, False)),
    }

    def __init__(
        self,
        *,
        online: bool = True,
        signal: str = "logit",
        global_variance: bool = False,
        views: tuple[str, ...] = ("id",),
    ) -> None:
        self.online = online
        self.signal = signal
        self.global_variance = global_variance
        self.views = views

    def _scores(self, ctx: MembershipContext) -> Tensor:
        views = check_views(self.views)
        pool = ctx.require_shadows()
        target = signal(ctx.target_log_probs(views), ctx.y, self.signal)  # [V, N]
        shadow = signal(pool.log_probs(ctx.x, views, ctx.x.device), ctx.y, self.signal)  # [K, V, N]
        inside = ctx.in_mask().to(shadow.device)[:, None, :].expand_as(shadow)  # [K, V, N]
        mu_out, sd_out = _gaussian(shadow, ~inside, self.global_variance)
        mu_in, sd_in = _gaussian(shadow, inside, self.global_variance)
        mu_in, mu_out = _fill(mu_in, mu_out)
        if not self.online:
            return torch.special.log_ndtr((target - mu_out) / sd_out).sum(0)
        return (_log_normal(target, mu_in, sd_in) - _log_normal(target, mu_out, sd_out)).sum(0)

    def get_params(self) -> dict[str, Any]:
        return {**super().get_params(), "views": list(self.views)}


def _gaussian(values: Tensor, mask: Tensor, pooled: bool) -> tuple[Tensor, Tensor]:
    """Per-(view, record) mean and std of `values` [K, V, N] over the models where `mask`; NaN mean
    where no model qualifies. `pooled`: one std per view over all records' residuals."""
    w = mask.to(values.dtype)
    count = w.sum(0)
    mean = (values * w).sum(0) / count
    resid = (values - mean) * w
    if pooled:
        dof = (count - 1).clamp_min(0).sum(-1, keepdim=True)
        var = (resid**2).nan_to_num().sum((0, -1), keepdim=False)[:, None] / dof.clamp_min(1)
        std = var.sqrt().expand_as(mean)
    else:
        std = ((resid**2).nan_to_num().sum(0) / (count - 1).clamp_min(1)).sqrt()
        fallback = std[count >= 2].mean() if bool((count >= 2).any()) else torch.tensor(1.0)
        std = torch.where(count >= 2, std, fallback)
    return mean, std.clamp_min(_MIN_STD)


def _fill(mu_in: Tensor, mu_out: Tensor) -> tuple[Tensor, Tensor]:
    """Records missing IN (or OUT) models take the other mean plus the average shift of the rest."""
    both = ~(mu_in.isnan() | mu_out.isnan())
    shift = (mu_in - mu_out)[both].mean() if bool(both.any()) else torch.tensor(0.0)
    return torch.where(mu_in.isnan(), mu_out + shift, mu_in), torch.where(
        mu_out.isnan(), mu_in - shift, mu_out
    )


def _log_normal(x: Tensor, mu: Tensor, sd: Tensor) -> Tensor:
    return -0.5 * ((x - mu) / sd) ** 2 - sd.log() - 0.5 * math.log(2 * math.pi)
