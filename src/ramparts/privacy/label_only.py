"""Label-only membership inference by data augmentation: Choquette-Choo, Tramèr, Carlini & Papernot,
"Label-Only Membership Inference Attacks", ICML 2021.

A model's predicted label is more robust around its training points: the score is the fraction of
augmented views of the record (shifts, the mirror, optional Gaussian noise) that the target still
labels correctly. Only labels are read.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from ramparts.oracles.base import Knowledge
from ramparts.params import Interval
from ramparts.privacy.base import MembershipAttack, MembershipContext, register
from ramparts.privacy.signals import check_views

__all__ = ["LabelOnly"]

DEFAULT_VIEWS: tuple[str, ...] = (
    "id",
    "shift:1,0",
    "shift:-1,0",
    "shift:0,1",
    "shift:0,-1",
    "shift:1,1",
    "shift:-1,-1",
)


@register("label_only")
class LabelOnly(MembershipAttack):
    """`views` (augmentations, each one label query) plus `n_noise` Gaussian-noise views of std `noise`."""

    knowledge: ClassVar[Knowledge] = Knowledge.LABEL
    constraints: ClassVar = {
        "noise": Interval(float, low=0.0),
        "n_noise": Interval(int, low=0),
    }

    def __init__(
        self, *, views: tuple[str, ...] = DEFAULT_VIEWS, noise: float = 0.0, n_noise: int = 0
    ) -> None:
        self.views = views
        self.noise = noise
        self.n_noise = n_noise

    def get_params(self) -> dict[str, Any]:
        return {**super().get_params(), "views": list(self.views)}

    def _scores(self, ctx: MembershipContext) -> Tensor:
        correct = (ctx.target_labels(check_views(self.views)) == ctx.y).float().sum(0)
        x = ctx.x
        for _ in range(self.n_noise if self.noise > 0 else 0):
            eps = torch.randn(x.shape, generator=ctx.generator).to(x.device) * self.noise
            noisy = (x + eps).clamp(0.0, 1.0)
            idx = torch.arange(len(x), device=x.device)
            labels = torch.cat(
                [
                    ctx.box.labels(xb, ib)
                    for xb, ib in zip(noisy.split(ctx.batch_size), idx.split(ctx.batch_size), strict=True)
                ]
            )
            correct += (labels == ctx.y).float()
        return correct / (len(self.views) + (self.n_noise if self.noise > 0 else 0))
