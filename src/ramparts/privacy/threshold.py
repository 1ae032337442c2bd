"""Attacks that read the target alone: the loss threshold and the gap attack.

Yeom, Giacomelli, Fredrikson & Jha, "Privacy Risk in Machine Learning: Analyzing the Connection to
Overfitting", CSF 2018: members have lower loss (`loss`: score = -loss), and a model that is right is
more often right on its training data (`gap`: score = 1 if correctly classified, label-only).
The metrics are computed over every threshold, so no threshold is chosen here.
"""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor

from ramparts.oracles.base import Knowledge
from ramparts.privacy.base import MembershipAttack, MembershipContext, register
from ramparts.privacy.signals import signal

__all__ = ["GapAttack", "LossThreshold"]


@register("loss")
class LossThreshold(MembershipAttack):
    """Score = minus the target's cross-entropy on the record (Yeom et al. 2018)."""

    knowledge: ClassVar[Knowledge] = Knowledge.SCORE

    def _scores(self, ctx: MembershipContext) -> Tensor:
        return -signal(ctx.target_log_probs()[0], ctx.y, "loss")


@register("gap")
class GapAttack(MembershipAttack):
    """Score = 1 when the target classifies the record correctly, else 0 (label-only; Yeom et al. 2018)."""

    knowledge: ClassVar[Knowledge] = Knowledge.LABEL

    def _scores(self, ctx: MembershipContext) -> Tensor:
        return (ctx.target_labels()[0] == ctx.y).float()
