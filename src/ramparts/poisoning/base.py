"""Poisoning attacks: the base class, the registry and the poisoned training set they return.

An attack receives a clean training set and a poison budget (a fraction of the set) and returns the set
the victim will train on, with a mask of the records it altered or added. The public ``__call__`` is
defined once here (``@final``): it validates the inputs, seeds the generator and re-checks what the
subclass returned, so a faulty subclass cannot misreport its budget.
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, final

import torch
from torch import Tensor

from ramparts.data import Dataset
from ramparts.errors import RampartsTypeError, invalid
from ramparts.params import HasParams
from ramparts.registry import Registry

__all__ = ["POISONING", "PoisonedSet", "PoisoningAttack", "check_fraction"]

POISONING: Registry[type[PoisoningAttack]] = Registry("poisoning attack")

_FRACTION = "a poison fraction in [0, 1)"


def check_fraction(fraction: object, param: str = "fraction") -> float:
    """``fraction`` as a float in [0, 1); a type or validation error naming ``param`` otherwise."""
    if isinstance(fraction, bool) or not isinstance(fraction, int | float):
        raise invalid(param, fraction, _FRACTION, "pass a number such as 0.05", cls=RampartsTypeError)
    value = float(fraction)
    if not math.isfinite(value) or not 0.0 <= value < 1.0:
        raise invalid(param, fraction, _FRACTION, "pass e.g. 0.05 for 5% of the training set")
    return value


@dataclass(frozen=True)
class PoisonedSet:
    """The training set the victim trains on (poisons included) and which records the attack touched.

    ``poison``: bool [len(data)], True where a record was altered or added by the attack.
    """

    data: Dataset
    poison: Tensor
    attack: str
    config: dict[str, Any]
    seed: int
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def fraction(self) -> float:
        """Poisons / size of the poisoned training set."""
        return self.n_poison / len(self.data)

    @property
    def n_poison(self) -> int:
        """Number of records the attack altered or added."""
        return int(self.poison.sum())


class PoisoningAttack(HasParams, ABC):
    """Base of every poisoning attack: keyword-only hyperparameters in ``__init__``, the work in ``_run``."""

    name: ClassVar[str] = "poisoning"

    def config(self) -> dict[str, Any]:
        """The hyperparameters as a JSON-ready dict (the instance's public attributes)."""
        return {k: _jsonable(v) for k, v in vars(self).items() if not k.startswith("_")}

    @final
    def __call__(self, train: Dataset, *, fraction: float, seed: int = 0) -> PoisonedSet:
        """Poison ``round(fraction * len(train))`` records of ``train``; same seed, same poisoned set."""
        if not isinstance(train, Dataset):
            raise invalid("train", type(train).__name__, "a ramparts.data.Dataset", cls=RampartsTypeError)
        frac = check_fraction(fraction)
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise invalid("seed", seed, "an integer >= 0")
        n_poison = round(frac * len(train))
        start = time.perf_counter()
        data, mask = self._run(train, n_poison, torch.Generator().manual_seed(seed))
        elapsed = time.perf_counter() - start
        self._check_output(train, data, mask, n_poison)
        return PoisonedSet(
            data=data,
            poison=mask.cpu(),
            attack=self.name,
            config=self.config(),
            seed=seed,
            extra={"elapsed_s": elapsed},
        )

    @abstractmethod
    def _run(self, train: Dataset, n_poison: int, gen: torch.Generator) -> tuple[Dataset, Tensor]:
        """Return the poisoned training set and its bool poison mask, with exactly ``n_poison`` True."""

    def _check_output(self, train: Dataset, data: object, mask: object, n_poison: int) -> None:
        """Refuse a subclass result that is not a Dataset with a bool mask of exactly ``n_poison`` poisons."""
        where = f"{type(self).__name__}._run"
        if not isinstance(data, Dataset) or data.classes != train.classes:
            raise RuntimeError(f"{where} must return a Dataset with the classes of the training set")
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool or mask.shape != (len(data),):
            raise RuntimeError(f"{where} must return a bool mask of shape [{len(data)}]")
        if int(mask.sum()) != n_poison:
            raise RuntimeError(f"{where} poisoned {int(mask.sum())} records, the budget is {n_poison}")


def choose(candidates: Tensor, n: int, gen: torch.Generator) -> Tensor:
    """``n`` distinct entries of the 1-D index tensor ``candidates``, uniformly at random (sorted)."""
    order = torch.randperm(candidates.numel(), generator=gen)[:n]
    return candidates[order].sort().values


def relabel(train: Dataset, idx: Tensor, labels: Tensor, x: Tensor | None = None) -> tuple[Dataset, Tensor]:
    """A copy of ``train`` whose records ``idx`` get ``labels`` (and inputs ``x``), with their poison mask."""
    y = train.y.clone()
    y[idx] = labels.to(y.device)
    inputs = train.x
    if x is not None:
        inputs = train.x.clone()
        inputs[idx] = x.to(inputs.device)
    mask = torch.zeros(len(train), dtype=torch.bool)
    mask[idx.cpu()] = True
    return Dataset(inputs, y, train.classes, train.name), mask


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, Tensor):
        return value.tolist()
    return value
