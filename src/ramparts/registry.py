"""Name registries: attacks (and later defences, thefts...) register by decorator and are found by name."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from ramparts.errors import invalid, unknown

T = TypeVar("T", bound=type)


class Registry(Generic[T]):
    """A name -> class map; the CLI, the audit and error messages read it, so names are never retyped."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Class decorator: `@ATTACKS.register("pgd")`; sets `cls.name`."""

        def deco(cls: T) -> T:
            if name in self._items:
                raise invalid(f"{self.kind} name", name, "a name not yet registered", "choose another name.")
            cls.name = name  # type: ignore[attr-defined]
            self._items[name] = cls
            return cls

        return deco

    def get(self, name: str) -> T:
        """The class registered as `name`; an error listing every registered name otherwise."""
        try:
            return self._items[name]
        except KeyError:
            raise unknown(self.kind, name, self._items) from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)
