"""Membership inference (dataset theft): was this record in the model's training set?

Attacks register in `MEMBERSHIP` by name: `loss` and `gap` (Yeom et al.), `shokri` (shadow models and an
attack classifier), `lira` (online/offline), `rmia`, `label_only`. Shadow models: `shadow.train_shadows`
(trained together with `batched.train_models`, spread by `ramparts.parallel`). Metrics: `metrics`.
Members are label 1 everywhere.
"""

from ramparts.privacy import label_only, lira, rmia, shokri, threshold
from ramparts.privacy.base import MEMBERSHIP, MembershipAttack
from ramparts.privacy.shadow import ShadowPool, ShadowRecipe, train_shadows

__all__ = [
    "MEMBERSHIP",
    "MembershipAttack",
    "ShadowPool",
    "ShadowRecipe",
    "label_only",
    "lira",
    "rmia",
    "shokri",
    "threshold",
    "train_shadows",
]
