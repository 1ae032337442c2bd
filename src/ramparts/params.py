"""Hyperparameter constraints declared as data (the scikit-learn way) and checked before an attack runs."""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from ramparts.errors import RampartsTypeError, invalid


@dataclass(frozen=True)
class Interval:
    """A number of type `kind` in [low, high]; `open_low`/`open_high` exclude the ends; `none_ok` admits None."""

    kind: type
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False
    none_ok: bool = False

    def describe(self) -> str:
        left = "(" if self.open_low else "["
        right = ")" if self.open_high else "]"
        lo = "-inf" if self.low is None else f"{self.low:g}"
        hi = "inf" if self.high is None else f"{self.high:g}"
        text = f"{'an integer' if self.kind is int else 'a number'} in {left}{lo}, {hi}{right}"
        return text + (" or None" if self.none_ok else "")

    def check(self, name: str, value: Any) -> None:
        if value is None and self.none_ok:
            return
        numeric = isinstance(value, int | float) and not isinstance(value, bool)
        if not numeric or (self.kind is int and not isinstance(value, int)):
            raise invalid(name, value, self.describe(), cls=RampartsTypeError)
        bad = not math.isfinite(value)
        if self.low is not None:
            bad |= value < self.low or (self.open_low and value == self.low)
        if self.high is not None:
            bad |= value > self.high or (self.open_high and value == self.high)
        if bad:
            raise invalid(name, value, self.describe(), f"choose {name} in the allowed range.")


@dataclass(frozen=True)
class Options:
    """One of a fixed set of values."""

    values: tuple[Any, ...]

    def check(self, name: str, value: Any) -> None:
        if value not in self.values:
            allowed = ", ".join(repr(v) for v in self.values)
            raise invalid(name, value, f"one of {allowed}", f"pass one of {allowed}.")


Constraint = Interval | Options


class HasParams:
    """sklearn-style parameters: `__init__` only stores keyword arguments; `get_params` reads them back."""

    constraints: ClassVar[Mapping[str, Constraint]] = {}

    @classmethod
    def param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return [p.name for p in sig.parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY]

    def get_params(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.param_names()}

    def validate_params(self) -> None:
        """Check every declared constraint; raises our ValidationError naming the parameter."""
        for name, constraint in self.constraints.items():
            constraint.check(f"{type(self).__name__}.{name}", getattr(self, name))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"
