"""Shilling attacks: fake user profiles that push (or nuke) a target item in a collaborative recommender.

Profile models of Lam & Riedl 2004 ("Shilling recommender systems for fun and profit") and Mobasher,
Burke, Bhaumik & Williams 2007 ("Toward trustworthy recommender systems: an analysis of attack models and
algorithm robustness"): a profile = the target item(s) rated max (push) or min (nuke) + selected items
(attack-specific) + `filler_size * n_items` filler items drawn uniformly at random, with attack-specific
filler ratings. Ratings are rounded to the integer grid of the scale and clipped into it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, final

import torch
from torch import Tensor

from ramparts.errors import invalid, unknown
from ramparts.recsys.data import Ratings, as_index_tensor
from ramparts.registry import Registry

__all__ = [
    "SHILLING",
    "AttackedRatings",
    "AverageAttack",
    "BandwagonAttack",
    "RandomAttack",
    "SegmentAttack",
    "ShillingAttack",
]

SHILLING: Registry[type[ShillingAttack]] = Registry("shilling attack")
INTENTS = ("push", "nuke")


@dataclass(frozen=True)
class AttackedRatings:
    """The ratings with the fake users appended (indices `n_real ...`), and which users are fake."""

    ratings: Ratings
    fake_mask: Tensor
    target_items: tuple[int, ...]
    attack: str
    config: dict[str, Any]
    seed: int

    @property
    def n_fake(self) -> int:
        return int(self.fake_mask.sum())

    @property
    def n_real(self) -> int:
        return self.ratings.n_users - self.n_fake

    def summary(self) -> dict[str, Any]:
        return {
            "attack": self.attack,
            "config": self.config,
            "seed": self.seed,
            "target_items": list(self.target_items),
            "n_fake": self.n_fake,
            "n_real": self.n_real,
            "fake_ratings": int(self.fake_mask[self.ratings.users].sum()),
        }


class ShillingAttack:
    """Base of the profile-injection attacks; subclasses choose selected items and filler ratings.

    `attack_size`: fake users as a fraction of real users (in [0, 1)); `filler_size`: fraction of all
    items each fake user rates as filler (in [0, 1]); `intent`: "push" (target rated max) or "nuke" (min).
    """

    name: ClassVar[str]

    def __init__(self, *, attack_size: float = 0.05, filler_size: float = 0.05, intent: str = "push") -> None:
        self.attack_size = attack_size
        self.filler_size = filler_size
        self.intent = intent

    def get_params(self) -> dict[str, Any]:
        """The hyperparameters as given (JSON-ready)."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(self).items()}

    def _validate(self, ratings: Ratings) -> None:
        if not 0.0 <= self.attack_size < 1.0:
            raise invalid("attack_size", self.attack_size, "a fraction of real users in [0, 1)", "e.g. 0.05.")
        if not 0.0 <= self.filler_size <= 1.0:
            raise invalid("filler_size", self.filler_size, "a fraction of items in [0, 1]", "e.g. 0.05.")
        if self.intent not in INTENTS:
            raise unknown("intent", self.intent, INTENTS)

    def _selected(self, ratings: Ratings, targets: Tensor) -> tuple[Tensor, Tensor]:
        """(items, ratings) every fake profile gives besides target and filler; none by default."""
        return torch.empty(0, dtype=torch.long), torch.empty(0)

    def _filler(self, ratings: Ratings, items: Tensor, gen: torch.Generator) -> Tensor:
        """Filler ratings for an n_fake x n_filler matrix of item indices."""
        raise NotImplementedError

    @final
    def __call__(
        self, ratings: Ratings, *, target_item: int | Sequence[int] | Tensor, seed: int = 0
    ) -> AttackedRatings:
        """Append `round(attack_size * n_users)` fake profiles attacking `target_item` (one item or several)."""
        self._validate(ratings)
        targets = torch.unique(as_index_tensor(target_item, "target_item", ratings.n_items))
        sel_items, sel_ratings = self._selected(ratings, targets)
        if bool(torch.isin(sel_items, targets).any()):
            raise invalid("target_item", targets.tolist(), "items outside the attack's selected items")
        n_fake = round(self.attack_size * ratings.n_users)
        n_filler = round(self.filler_size * ratings.n_items)
        free = ratings.n_items - targets.numel() - sel_items.numel()
        if n_filler > free:
            raise invalid(
                "filler_size",
                self.filler_size,
                f"at most {free / ratings.n_items:.4f} ({free} items left besides targets and selected items)",
                "lower filler_size.",
            )
        gen = torch.Generator().manual_seed(seed)
        low, high = ratings.scale
        # Filler items: uniform without replacement among the free items (random keys, top-k).
        keys = torch.rand(n_fake, ratings.n_items, generator=gen)
        keys[:, torch.cat([targets, sel_items])] = -1.0
        filler_items = (
            keys.topk(n_filler, dim=1).indices if n_filler else torch.empty(n_fake, 0, dtype=torch.long)
        )
        filler_ratings = self._filler(ratings, filler_items, gen).round().clamp(low, high)
        target_value = high if self.intent == "push" else low
        profile_items = torch.cat(
            [targets.expand(n_fake, -1), sel_items.expand(n_fake, -1), filler_items], dim=1
        )
        profile_ratings = torch.cat(
            [
                torch.full((n_fake, targets.numel()), target_value),
                sel_ratings.float().expand(n_fake, -1),
                filler_ratings.float(),
            ],
            dim=1,
        )
        fake_users = torch.arange(ratings.n_users, ratings.n_users + n_fake)[:, None].expand_as(profile_items)
        user_ids = None
        if ratings.user_ids is not None:
            user_ids = ratings.user_ids + tuple(f"fake-{j}" for j in range(n_fake))
        attacked = Ratings(
            torch.cat([ratings.users, fake_users.reshape(-1)]),
            torch.cat([ratings.items, profile_items.reshape(-1)]),
            torch.cat([ratings.ratings.float(), profile_ratings.reshape(-1)]),
            ratings.n_users + n_fake,
            ratings.n_items,
            ratings.scale,
            f"{ratings.name}+{self.name}",
            user_ids,
            ratings.item_ids,
        )
        fake_mask = torch.arange(attacked.n_users) >= ratings.n_users
        return AttackedRatings(
            attacked, fake_mask, tuple(targets.tolist()), self.name, self.get_params(), seed
        )


def _global_stats(ratings: Ratings) -> tuple[float, float]:
    r = ratings.ratings.float()
    return float(r.mean()), float(r.std()) if len(ratings) > 1 else 0.0


@SHILLING.register("random")
class RandomAttack(ShillingAttack):
    """Random attack (Lam & Riedl 2004): filler ratings ~ N(global mean, global std). Little knowledge.

    Lam and Riedl, "Shilling Recommender Systems for Fun and Profit", WWW 2004.
    """

    def _filler(self, ratings: Ratings, items: Tensor, gen: torch.Generator) -> Tensor:
        mean, std = _global_stats(ratings)
        return mean + std * torch.randn(items.shape, generator=gen)


@SHILLING.register("average")
class AverageAttack(ShillingAttack):
    """Average attack (Lam & Riedl 2004): filler ratings ~ N(item mean, item std); needs per-item means.

    Lam and Riedl, "Shilling Recommender Systems for Fun and Profit", WWW 2004.
    """

    def _filler(self, ratings: Ratings, items: Tensor, gen: torch.Generator) -> Tensor:
        mean, std = ratings.item_stats()
        return mean[items] + std[items] * torch.randn(items.shape, generator=gen)


@SHILLING.register("bandwagon")
class BandwagonAttack(ShillingAttack):
    """Bandwagon attack (Mobasher et al. 2007): a few popular items rated max (so fakes look like many real
    users) + random filler. `selected_items` default: the `n_selected` most-rated items besides the targets.

    Mobasher, Burke, Bhaumik and Williams, "Toward Trustworthy Recommender Systems: An Analysis of Attack Models and Algorithm Robustness", ACM TOIT 2007.
    """

    def __init__(
        self,
        *,
        attack_size: float = 0.05,
        filler_size: float = 0.05,
        intent: str = "push",
        n_selected: int = 5,
        selected_items: Sequence[int] | None = None,
    ) -> None:
        super().__init__(attack_size=attack_size, filler_size=filler_size, intent=intent)
        self.n_selected = n_selected
        self.selected_items = None if selected_items is None else tuple(selected_items)

    def _selected(self, ratings: Ratings, targets: Tensor) -> tuple[Tensor, Tensor]:
        if self.selected_items is not None:
            items = torch.unique(
                as_index_tensor(list(self.selected_items), "selected_items", ratings.n_items)
            )
        else:
            if not isinstance(self.n_selected, int) or not 0 <= self.n_selected < ratings.n_items:
                raise invalid("n_selected", self.n_selected, f"an integer in [0, {ratings.n_items})")
            counts = ratings.item_counts().float()
            counts[targets] = -1.0
            items = counts.topk(self.n_selected).indices
        return items, torch.full((items.numel(),), ratings.scale[1])

    def _filler(self, ratings: Ratings, items: Tensor, gen: torch.Generator) -> Tensor:
        mean, std = _global_stats(ratings)
        return mean + std * torch.randn(items.shape, generator=gen)


@SHILLING.register("segment")
class SegmentAttack(ShillingAttack):
    """Segment attack (Mobasher et al. 2007): items liked by the target audience (`segment_items`) rated max,
    filler rated min, so the target is pushed to exactly the users who like the segment.

    Mobasher, Burke, Bhaumik and Williams, "Toward Trustworthy Recommender Systems: An Analysis of Attack Models and Algorithm Robustness", ACM TOIT 2007.
    """

    def __init__(
        self,
        *,
        attack_size: float = 0.05,
        filler_size: float = 0.05,
        intent: str = "push",
        segment_items: Sequence[int] | None = None,
    ) -> None:
        super().__init__(attack_size=attack_size, filler_size=filler_size, intent=intent)
        self.segment_items = None if segment_items is None else tuple(segment_items)

    def _selected(self, ratings: Ratings, targets: Tensor) -> tuple[Tensor, Tensor]:
        if not self.segment_items:
            raise invalid(
                "segment_items",
                self.segment_items,
                "the items the target audience likes (at least one)",
                "pass segment_items=[...], e.g. items similar to the target.",
            )
        items = torch.unique(as_index_tensor(list(self.segment_items), "segment_items", ratings.n_items))
        return items, torch.full((items.numel(),), ratings.scale[1])

    def _filler(self, ratings: Ratings, items: Tensor, gen: torch.Generator) -> Tensor:
        return torch.full(items.shape, ratings.scale[0])
