"""Typed, frozen results: one per family, each with `summary() -> dict` (JSON-ready)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor


def _mean(t: Tensor) -> float | None:
    return float(t.float().mean()) if t.numel() else None


@dataclass(frozen=True)
class EvasionResult:
    """The outcome of one evasion attack on one batch.

    Tensors are per sample and live on the model's device. `success` was recomputed by the base
    class from the projected `x_adv`, never taken from the attack. `adv_conf`/`clean_conf` are the
    probability of the predicted class (None for a label-only target).
    """

    attack: str
    config: dict[str, Any]
    threat: dict[str, Any]
    seed: int
    x_adv: Tensor
    labels: Tensor
    targets: Tensor | None
    success: Tensor
    distance: Tensor
    clean_pred: Tensor
    adv_pred: Tensor
    clean_conf: Tensor | None
    adv_conf: Tensor | None
    queries: Tensor
    backwards: Tensor
    elapsed_s: float
    budget_exhausted: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.labels)

    @classmethod
    def concat(cls, parts: Sequence[EvasionResult]) -> EvasionResult:
        """One result for the batches of `parts` in order (chunks or shards of one attack run).

        Per-sample tensors are concatenated, time is summed and `budget_exhausted` holds if any part
        ran out; attack, config, threat, seed and extra come from the first part.
        """
        if not parts:
            raise ValueError("EvasionResult.concat needs at least one result")
        first = parts[0]

        def cat(name: str) -> Tensor | None:
            tensors = [getattr(p, name) for p in parts]
            return None if any(t is None for t in tensors) else torch.cat(tensors)

        tensors = {
            name: cat(name)
            for name in (
                "x_adv",
                "labels",
                "targets",
                "success",
                "distance",
                "clean_pred",
                "adv_pred",
                "clean_conf",
                "adv_conf",
                "queries",
                "backwards",
            )
        }
        return cls(
            attack=first.attack,
            config=first.config,
            threat=first.threat,
            seed=first.seed,
            elapsed_s=sum(p.elapsed_s for p in parts),
            budget_exhausted=any(p.budget_exhausted for p in parts),
            extra=first.extra,
            **tensors,  # type: ignore[arg-type]
        )

    @property
    def clean_accuracy(self) -> float:
        return float((self.clean_pred == self.labels).float().mean())

    @property
    def robust_accuracy(self) -> float:
        """Fraction still classified correctly after the attack."""
        return float((self.adv_pred == self.labels).float().mean())

    @property
    def success_rate(self) -> float:
        return float(self.success.float().mean())

    def summary(self) -> dict[str, Any]:
        won = self.success
        return {
            "attack": self.attack,
            "config": self.config,
            "threat": self.threat,
            "seed": self.seed,
            "n": len(self),
            "clean_accuracy": self.clean_accuracy,
            "robust_accuracy": self.robust_accuracy,
            "success_rate": self.success_rate,
            "mean_distance_success": _mean(self.distance[won]),
            "mean_queries": _mean(self.queries),
            "median_queries": float(self.queries.float().median()) if len(self) else None,
            "max_queries": int(self.queries.max()) if len(self) else None,
            "median_distance_success": float(self.distance[won].median()) if bool(won.any()) else None,
            "total_forwards": int(self.queries.sum()),
            "total_backwards": int(self.backwards.sum()),
            "elapsed_s": self.elapsed_s,
            "budget_exhausted": self.budget_exhausted,
            **self.extra,
        }


@dataclass(frozen=True)
class TheftResult:
    """The outcome of one model-extraction attack, measured by the base class on held-out data.

    `fidelity`: agreement of the substitute's labels with the oracle's; `accuracy`: against the true
    labels; `curve`: (queries, fidelity) points recorded along the way.
    """

    attack: str
    config: dict[str, Any]
    seed: int
    substitute: Any
    queries: int
    accuracy: float
    fidelity: float
    oracle_accuracy: float
    curve: list[tuple[int, float]]
    elapsed_s: float
    budget_exhausted: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {
            "attack": self.attack,
            "config": self.config,
            "seed": self.seed,
            "queries": self.queries,
            "accuracy": self.accuracy,
            "fidelity": self.fidelity,
            "oracle_accuracy": self.oracle_accuracy,
            "curve": [list(p) for p in self.curve],
            "elapsed_s": self.elapsed_s,
            "budget_exhausted": self.budget_exhausted,
            **self.extra,
        }


@dataclass(frozen=True)
class MembershipResult:
    """The outcome of one membership-inference attack on a set of records.

    `scores`: one per record, higher = more likely a member (label 1). `metrics` (when the true
    membership was given): AUC, balanced accuracy, TPR at low FPRs with bootstrap intervals, the ROC.
    `queries`: queries to the target model (per record, summed).
    """

    attack: str
    config: dict[str, Any]
    seed: int
    scores: Tensor
    members: Tensor | None
    metrics: dict[str, Any] | None
    queries: int
    elapsed_s: float
    extra: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {
            "attack": self.attack,
            "config": self.config,
            "seed": self.seed,
            "n": len(self.scores),
            "queries": self.queries,
            "metrics": self.metrics,
            "elapsed_s": self.elapsed_s,
            **self.extra,
        }


@dataclass(frozen=True)
class PoisonResult:
    """How far a poisoning attack moved a training pipeline, measured on clean held-out data.

    `fraction`: poisons / size of the poisoned training set. `clean_accuracy`: the model trained on the
    poisoned set, on clean test data; `baseline_accuracy`: the same pipeline on the clean set.
    `attack_success`: for targeted attacks and backdoors, the share of attacked test inputs that get
    the attacker's label (None for indiscriminate attacks). `curve`: one dict per point of a sweep
    (e.g. fraction -> accuracy), JSON-ready.
    """

    attack: str
    config: dict[str, Any]
    seed: int
    fraction: float
    n_poison: int
    clean_accuracy: float
    baseline_accuracy: float
    attack_success: float | None
    elapsed_s: float
    curve: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def accuracy_drop(self) -> float:
        return self.baseline_accuracy - self.clean_accuracy

    def summary(self) -> dict[str, Any]:
        return {
            "attack": self.attack,
            "config": self.config,
            "seed": self.seed,
            "fraction": self.fraction,
            "n_poison": self.n_poison,
            "clean_accuracy": self.clean_accuracy,
            "baseline_accuracy": self.baseline_accuracy,
            "accuracy_drop": self.accuracy_drop,
            "attack_success": self.attack_success,
            "curve": self.curve,
            "elapsed_s": self.elapsed_s,
            **self.extra,
        }
