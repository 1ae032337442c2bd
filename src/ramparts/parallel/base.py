"""What every executor shares: the protocol, the in-process executor, the errors, the checks on a task
and its items, and the walk over the tensors inside an item."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol, TypeVar

import torch
from torch import Tensor

from ramparts.errors import RampartsError, RampartsTypeError, invalid

T = TypeVar("T")
R = TypeVar("R")


class ClusterError(RampartsError, ConnectionError):
    """The Ray cluster named by ``--ray`` cannot be reached."""


class RayUnavailableError(RampartsError, ImportError):
    """``--ray`` was given but Ray is not installed."""


class TaskError(RampartsError, RuntimeError):
    """A task failed in a :class:`DeviceExecutor` worker, or its worker died; names the task and device.

    The worker's traceback is in the message; ``__cause__`` is the original exception where it could be
    sent back.
    """


class Executor(Protocol):
    """Runs ``fn`` over items; yields ``(index, result)`` as each task finishes."""

    name: str

    def map(
        self, fn: Callable[[T], R], items: Sequence[T], *, num_cpus: float = 1, num_gpus: float = 0
    ) -> Iterator[tuple[int, R]]:
        """Yield ``(index into items, fn(item))`` in completion order; a failed task re-raises its error."""
        ...

    def close(self) -> None:
        """Release the executor's resources."""
        ...


class InProcessExecutor:
    """Runs the tasks in order in this process; ``num_cpus`` and ``num_gpus`` are only checked."""

    name = "in-process"

    def map(
        self, fn: Callable[[T], R], items: Sequence[T], *, num_cpus: float = 1, num_gpus: float = 0
    ) -> Iterator[tuple[int, R]]:
        """Yield ``(i, fn(items[i]))`` for each item in order; an exception gets a note naming the item."""
        check_resources(num_cpus, num_gpus)
        return self._run(fn, list(items))

    def _run(self, fn: Callable[[T], R], items: list[T]) -> Iterator[tuple[int, R]]:
        for index, item in enumerate(items):
            try:
                result = fn(item)
            except Exception as exc:
                exc.add_note(failed_note(index, item))
                raise
            yield index, result

    def close(self) -> None:
        """Nothing to release."""


def check_module_level(fn: Callable[..., Any], param: str = "fn", who: str = "Ray imports") -> None:
    """Refuse lambdas and nested functions: Ray would pickle them by value, with whatever they capture,
    and spawned workers cannot import them at all."""
    qualname = getattr(fn, "__qualname__", "")
    if "<lambda>" in qualname or "<locals>" in qualname:
        raise invalid(
            param,
            f"{fn.__module__}.{qualname}",
            f"a function defined at module level in an importable module ({who} it by name)",
            "move the function to the top level of a module installed on every node.",
            cls=RampartsTypeError,
        )


def check_resources(num_cpus: float, num_gpus: float) -> None:
    for param, value in (("num_cpus", num_cpus), ("num_gpus", num_gpus)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
            raise invalid(param, value, "a number >= 0 (resources one task reserves)")


def failed_note(index: int, item: object) -> str:
    return f"parallel task {index} failed on item {short_repr(item)}"


def map_tensors(obj: Any, fn: Callable[[Tensor], Tensor]) -> Any:
    """``obj`` with ``fn`` applied to every tensor inside dicts, lists, tuples and dataclasses."""
    if isinstance(obj, Tensor):
        return fn(obj)
    if isinstance(obj, dict):
        out = copy.copy(obj)  # keeps the type and attributes (a state dict's _metadata)
        for key, value in obj.items():
            out[key] = map_tensors(value, fn)
        return out
    if isinstance(obj, list):
        return [map_tensors(v, fn) for v in obj]
    if isinstance(obj, tuple):
        values = [map_tensors(v, fn) for v in obj]
        return type(obj)(*values) if hasattr(obj, "_fields") else type(obj)(values)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        changes = {f.name: map_tensors(getattr(obj, f.name), fn) for f in dataclasses.fields(obj) if f.init}
        return dataclasses.replace(obj, **changes)
    return obj


def outbound(t: Tensor) -> Tensor:
    """A tensor as it goes to a worker: on the CPU (a worker cannot open another GPU's memory), detached,
    and a view of a larger storage copied out (the whole storage would travel otherwise)."""
    t = t.detach().cpu()
    if t.untyped_storage().nbytes() > t.numel() * t.element_size():
        t = t.clone(memory_format=torch.contiguous_format)
    return t


def short_repr(item: object) -> str:
    text = repr(item)
    return text if len(text) <= 200 else text[:197] + "..."
