"""One generic registry for architectures, losses, augmentations, metrics and tasks.

Example:
    >>> LOSSES = Registry[Callable]("loss")
    >>> @LOSSES.register("dice")
    ... def dice(num_classes: int): ...
    >>> LOSSES.get("dise")  # raises UnknownNameError: unknown loss 'dise'; did you mean 'dice'?
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator, Sequence
from typing import Generic, TypeVar

from medseg_bench.errors import UnknownNameError

T = TypeVar("T")


def choice_hint(name: str, choices: Sequence[str], listed: Sequence[str] | None = None) -> str:
    """"did you mean 'X'?" for a `name` not among `choices`, else "choose from A, B" (`listed`, else
    `choices`): the words for every unknown name, a registry's and a command's fixed choices alike. The same
    name in other case ("UNet" for unet), then a unique prefix of a listed one ("Task04" for
    Task04_Hippocampus), beat spelling similarity (which offered 'vnet' for "UNet")."""
    shown = list(listed if listed is not None else choices)
    same = [c for c in choices if c.lower() == name.lower()]
    prefixed = [c for c in shown if name and c.lower().startswith(name.lower())]
    close = same[:1] or (prefixed if len(prefixed) == 1 else
                         difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5))
    return f"did you mean '{close[0]}'?" if close else f"choose from {', '.join(shown)}"


class Registry(Generic[T]):
    """Name -> object mapping with aliases and did-you-mean errors."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._aliases: dict[str, str] = {}

    def add(self, name: str, obj: T, aliases: tuple[str, ...] = ()) -> T:
        """Register `obj` under `name` (and `aliases`); a duplicate name is a programming error."""
        for key in (name, *aliases):
            if key in self._items or key in self._aliases:
                raise ValueError(f"{self.kind} '{key}' registered twice")
        self._items[name] = obj
        for alias in aliases:
            self._aliases[alias] = name
        return obj

    def register(self, name: str, aliases: tuple[str, ...] = ()) -> Callable[[T], T]:
        """Decorator form of `add`."""

        def deco(obj: T) -> T:
            return self.add(name, obj, aliases)

        return deco

    def canonical(self, name: str) -> str:
        """The registered name for `name` or one of its aliases; raises UnknownNameError."""
        if name in self._items:
            return name
        if name in self._aliases:
            return self._aliases[name]
        hint = choice_hint(name, [*self._items, *self._aliases], sorted(self._items))
        raise UnknownNameError(f"unknown {self.kind} '{name}'; {hint}")

    def get(self, name: str) -> T:
        return self._items[self.canonical(name)]

    def __contains__(self, name: object) -> bool:
        return name in self._items or name in self._aliases

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def items(self) -> list[tuple[str, T]]:
        return sorted(self._items.items())

    def aliases_of(self, name: str) -> list[str]:
        return sorted(a for a, target in self._aliases.items() if target == name)
