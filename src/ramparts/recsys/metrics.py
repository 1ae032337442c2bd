"""How far a shilling attack moved a recommender: prediction shift and hit ratio (Mobasher et al. 2007,
"Toward trustworthy recommender systems: an analysis of attack models and algorithm robustness").

Both are measured over the real users who had not rated the target in the clean data, comparing the model
trained on the attacked data with the model trained on the clean data; with several targets, the per-target
values are averaged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ramparts.errors import check_int, invalid
from ramparts.recsys.data import Ratings, as_index_tensor
from ramparts.recsys.model import MatrixFactorization

__all__ = ["ShiftReport", "hit_ratio", "prediction_shift"]


@dataclass(frozen=True)
class ShiftReport:
    """Prediction shift (attacked - clean predicted rating of the target; > 0 = pushed) and HR@k before/after.

    `per_target`: one dict per target item with the same fields, JSON-ready.
    """

    prediction_shift: float
    hit_ratio_before: float
    hit_ratio_after: float
    k: int
    n_users: float
    target_items: tuple[int, ...]
    per_target: list[dict[str, float]]

    def summary(self) -> dict[str, Any]:
        return {
            "prediction_shift": self.prediction_shift,
            f"hr@{self.k}_before": self.hit_ratio_before,
            f"hr@{self.k}_after": self.hit_ratio_after,
            "n_users": self.n_users,
            "target_items": list(self.target_items),
            "per_target": self.per_target,
        }


def _audience(clean: Ratings, target: int, users: Tensor) -> Tensor:
    """The given users who had not rated `target` in the clean data."""
    rated = torch.zeros(clean.n_users, dtype=torch.bool)
    rated[clean.users[clean.items == target]] = True
    return users[~rated[users]]


@torch.no_grad()
def hit_ratio(model: MatrixFactorization, users: Tensor, target: int, *, k: int = 10) -> float:
    """Share of `users` with `target` in their top-k recommendations (rated items excluded)."""
    check_int("k", k, 1)
    if users.numel() == 0:
        return float("nan")
    top = model.recommend(users, k)
    return float((top == target).any(dim=1).float().mean())


@torch.no_grad()
def prediction_shift(
    clean_model: MatrixFactorization,
    attacked_model: MatrixFactorization,
    clean: Ratings,
    target_items: int | Sequence[int] | Tensor,
    *,
    k: int = 10,
    users: Tensor | None = None,
) -> ShiftReport:
    """Mean change of the target's predicted rating, and HR@k before/after, over the real users of `clean`
    (indices `0 .. clean.n_users - 1`, which the attacked model shares) who had not rated the target.

    `users`: restrict to these real users (e.g. the in-segment users of a segment attack); default all.
    """
    check_int("k", k, 1)
    if attacked_model.n_users < clean.n_users or attacked_model.n_items != clean.n_items:
        raise invalid(
            "attacked_model",
            (attacked_model.n_users, attacked_model.n_items),
            f"a model over at least {clean.n_users} users and exactly {clean.n_items} items",
            "fit it on the attacked ratings of this clean set.",
        )
    if clean_model.n_users != clean.n_users or clean_model.n_items != clean.n_items:
        raise invalid("clean_model", (clean_model.n_users, clean_model.n_items), "a model fitted on `clean`")
    targets = as_index_tensor(target_items, "target_items", clean.n_items).tolist()
    everyone = (
        torch.arange(clean.n_users) if users is None else as_index_tensor(users, "users", clean.n_users)
    )
    rows: list[dict[str, float]] = []
    for target in targets:
        audience = _audience(clean, target, everyone)
        if audience.numel() == 0:
            raise invalid("target_items", target, "an item some of the users have not rated")
        items = torch.full_like(audience, target)
        shift = (attacked_model.predict(audience, items) - clean_model.predict(audience, items)).mean()
        rows.append(
            {
                "target": float(target),
                "prediction_shift": float(shift),
                "hit_ratio_before": hit_ratio(clean_model, audience, target, k=k),
                "hit_ratio_after": hit_ratio(attacked_model, audience, target, k=k),
                "n_users": float(audience.numel()),
            }
        )

    def mean(key: str) -> float:
        return sum(row[key] for row in rows) / len(rows)

    return ShiftReport(
        mean("prediction_shift"),
        mean("hit_ratio_before"),
        mean("hit_ratio_after"),
        k,
        mean("n_users"),
        tuple(targets),
        rows,
    )
