"""Ramparts' exceptions: every message names the parameter, what was given, what is allowed and the fix."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


class RampartsError(Exception):
    """Base of every exception Ramparts raises on purpose."""


class ValidationError(RampartsError, ValueError):
    """A value given by the user is not acceptable."""


class RampartsTypeError(RampartsError, TypeError):
    """A value given by the user has the wrong type."""


class UnknownNameError(ValidationError):
    """A name (norm, goal, attack, dataset, architecture...) that no registry knows."""


class AccessError(RampartsError, TypeError):
    """An attack asked for more knowledge of the model than the target offers."""


class QueryBudgetExceeded(RampartsError, RuntimeError):  # noqa: N818 (the name DESIGN.md uses)
    """A view reached its query budget; the attack stops and keeps its best result so far."""


def invalid(
    param: str,
    given: Any,
    expected: str,
    fix: str | None = None,
    *,
    cls: type[RampartsError] = ValidationError,
) -> RampartsError:
    """Build an error whose message names the parameter, the value given, what is allowed and the fix."""
    msg = f"{param}: expected {expected}, got {_short(given)}."
    if fix:
        msg += f" Fix: {fix}"
    return cls(msg)


def check_int(param: str, value: object, minimum: int) -> int:
    """`value` if it is an integer (not a bool) >= `minimum`; a type error or a validation error naming `param`."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid(param, value, f"an integer >= {minimum}", cls=RampartsTypeError)
    if value < minimum:
        raise invalid(param, value, f"an integer >= {minimum}")
    return value


def unknown(param: str, given: Any, allowed: Iterable[str]) -> UnknownNameError:
    """Build an error for a name outside a registry, listing the names the registry holds."""
    names = sorted(allowed)
    return UnknownNameError(
        f"{param}: unknown name {given!r}. Allowed: {', '.join(names)}. Fix: pass one of the allowed names."
    )


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
