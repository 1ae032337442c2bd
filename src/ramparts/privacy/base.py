"""The membership-inference attack contract: `MembershipAttack.__call__` is defined once here.

It validates the records, builds the view of exactly the attack's knowledge over the target (every
record's queries counted), hands the subclass a `MembershipContext`, takes back one score per record
(higher = member) and, when the true membership is given (members are label 1), computes the metrics
itself, so a subclass cannot report its own success.
"""

from __future__ import annotations

import time
from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, cast, final

import torch
from torch import Tensor

from ramparts.data import Dataset
from ramparts.errors import RampartsTypeError, invalid
from ramparts.oracles import Oracle, as_oracle
from ramparts.oracles.base import Knowledge
from ramparts.params import HasParams
from ramparts.privacy.metrics import DEFAULT_FPRS, check_members, membership_metrics
from ramparts.privacy.shadow import ShadowPool
from ramparts.privacy.signals import augment
from ramparts.registry import Registry
from ramparts.results import MembershipResult
from ramparts.targets import LabelBox, ScoreBox, view_for

__all__ = ["MEMBERSHIP", "MembershipAttack", "MembershipContext", "register"]

MEMBERSHIP: Registry[type[MembershipAttack]] = Registry("membership attack")
register = MEMBERSHIP.register


@dataclass
class MembershipContext:
    """What an attack's `_scores` works with.

    `box`: the view of the declared knowledge over the target (per-record query counting). `shadows`:
    the reference models, with `pool_index[i]` the position of record i in `shadows.data` (None: the
    records are in no shadow's training set, so every shadow is OUT). `population`: other records from
    the same distribution (RMIA's z).
    """

    oracle: Oracle
    box: LabelBox
    x: Tensor
    y: Tensor
    shadows: ShadowPool | None
    pool_index: Tensor | None
    population: Dataset | None
    generator: torch.Generator
    batch_size: int
    knowledge: Knowledge
    extra_boxes: list[LabelBox] = field(default_factory=list)

    @property
    def queries(self) -> int:
        return int(sum(int(b.queries.sum()) for b in [self.box, *self.extra_boxes]))

    def target_log_probs(self, views: Sequence[str] = ("id",)) -> Tensor:
        """[V, N, C]: the target's log-probabilities for every view of every record (one query each)."""
        box = cast(ScoreBox, self.box)
        xs = augment(self.x, views)
        idx = torch.arange(len(self.x), device=self.x.device)
        return torch.stack([self._batched(box.log_probs, xv, idx) for xv in xs])

    def population_log_probs(self, views: Sequence[str] = ("id",)) -> Tensor:
        """[V, M, C]: the target's log-probabilities for the population records (counted queries too)."""
        if self.population is None:
            raise invalid("population", None, "a Dataset of records from the same distribution (RMIA's z)")
        z = self.population.x.to(self.x.device)
        box = cast(ScoreBox, view_for(self.oracle, self.knowledge, len(z)))
        self.extra_boxes.append(box)
        idx = torch.arange(len(z), device=z.device)
        return torch.stack([self._batched(box.log_probs, zv, idx) for zv in augment(z, views)])

    def target_labels(self, views: Sequence[str] = ("id",)) -> Tensor:
        """[V, N]: the target's labels for every view of every record (one query each)."""
        xs = augment(self.x, views)
        idx = torch.arange(len(self.x), device=self.x.device)
        return torch.stack([self._batched(self.box.labels, xv, idx) for xv in xs])

    def in_mask(self) -> Tensor:
        """[K, N] bool: record i was in shadow k's training set (all False without `pool_index`)."""
        pool = self.require_shadows()
        if self.pool_index is None:
            return torch.zeros(len(pool), len(self.x), dtype=torch.bool)
        return pool.masks[:, self.pool_index.cpu()]

    def require_shadows(self) -> ShadowPool:
        if self.shadows is None:
            raise invalid("shadows", None, "a ShadowPool (ramparts.privacy.shadow.train_shadows)")
        return self.shadows

    def _batched(self, ask: Any, x: Tensor, idx: Tensor) -> Tensor:
        return torch.cat(
            [ask(xb, ib) for xb, ib in zip(x.split(self.batch_size), idx.split(self.batch_size), strict=True)]
        )


class MembershipAttack(HasParams):
    """Base class; subclasses declare `knowledge`, keyword-only hyperparameters and `_scores`."""

    name: ClassVar[str]
    knowledge: ClassVar[Knowledge] = Knowledge.SCORE
    needs_shadows: ClassVar[bool] = False

    @final
    def __call__(
        self,
        target: Any,
        x: Tensor,
        y: Tensor,
        *,
        members: Tensor | None = None,
        shadows: ShadowPool | None = None,
        pool_index: Tensor | None = None,
        population: Dataset | None = None,
        fprs: Sequence[float] = DEFAULT_FPRS,
        seed: int = 0,
        batch_size: int = 512,
    ) -> MembershipResult:
        """Score every record (x[i], y[i]); with `members` (1 = member), measure the attack too."""
        self.validate_params()
        if not isinstance(x, Tensor) or x.dtype != torch.float32 or x.ndim < 2 or len(x) == 0:
            raise invalid(
                "x",
                getattr(x, "shape", type(x).__name__),
                "a non-empty float32 batch [N, ...]",
                cls=RampartsTypeError,
            )
        if not isinstance(y, Tensor) or y.shape != (len(x),) or y.dtype != torch.int64:
            raise invalid(
                "y",
                getattr(y, "shape", type(y).__name__),
                f"int64 labels of shape ({len(x)},)",
                cls=RampartsTypeError,
            )
        truth = check_members(members, len(x)) if members is not None else None
        if self.needs_shadows and shadows is None:
            raise invalid(
                "shadows",
                None,
                f"a ShadowPool: {self.name!r} compares the target with reference models",
                "train them with ramparts.privacy.shadow.train_shadows (or `ramparts membership --shadows K`).",
            )
        if shadows is None:
            pool_index = None  # no reference models: nothing to index
        elif pool_index is not None and (
            pool_index.shape != (len(x),)
            or pool_index.dtype != torch.int64
            or not 0 <= int(pool_index.min()) <= int(pool_index.max()) < len(shadows.data)
        ):
            raise invalid(
                "pool_index",
                tuple(pool_index.shape),
                f"one int64 index in [0, {len(shadows.data)}) into the shadows' records per record, shape ({len(x)},)",
            )
        oracle = as_oracle(target, tuple(x.shape[1:]))
        box = view_for(oracle, self.knowledge, len(x))
        with oracle.evaluating():
            ctx = MembershipContext(
                oracle,
                box,
                x.to(oracle.device),
                y.to(oracle.device),
                shadows,
                pool_index,
                population,
                torch.Generator().manual_seed(seed),
                batch_size,
                self.knowledge,
            )
            t0 = time.perf_counter()
            scores = self._scores(ctx).detach().double().cpu()  # RMIA's tie-breaks need the bits
            elapsed = time.perf_counter() - t0
        if scores.shape != (len(x),) or not bool(torch.isfinite(scores).all()):
            raise RuntimeError(
                f"{type(self).__name__} returned scores of shape {tuple(scores.shape)} or non-finite"
            )
        metrics = membership_metrics(scores, truth, fprs=fprs, seed=seed) if truth is not None else None
        return MembershipResult(
            attack=self.name,
            config=self.get_params(),
            seed=seed,
            scores=scores,
            members=truth,
            metrics=metrics,
            queries=ctx.queries,
            elapsed_s=elapsed,
            extra={"shadow_models": len(shadows) if shadows is not None else 0},
        )

    @abstractmethod
    def _scores(self, ctx: MembershipContext) -> Tensor:
        """One membership score per record, higher = member."""
