"""A registry maps names to the things they stand for (methods, backbones, fine-tuning modes, samplers).

Each kind has one :class:`Registry`. The module that defines a thing registers it when it is imported, a user's
plugin file registers its own the same way, and lookups of an unknown name answer with the known names and the
closest ones.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from ltcl.errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    """Names -> entries of one kind.

    Args:
        kind: what the entries are ("objective", "backbone family"), for messages.
        key: the config key whose values name the entries ("loss.objective"), for messages.
    """

    def __init__(self, kind: str, key: str) -> None:
        self.kind, self.key = kind, key
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T) -> T:
        """Adds ``entry`` under ``name``; registering the same entry again is a no-op (a module imported twice).

        Raises:
            ValueError: ``name`` is empty, or already names another entry.
        """
        if not isinstance(name, str) or not name or name != name.strip():
            raise ValueError(f"A {self.kind} needs a non-empty name without surrounding spaces, got {name!r}.")
        known = self._entries.get(name)
        if known is not None and known is not entry and _origin(known) != _origin(entry):
            raise ValueError(f"The {self.kind} name '{name}' is taken (by {_origin(known)}); choose another name.")
        self._entries[name] = entry
        return entry

    def get(self, name: str) -> T:
        """The entry of ``name``; an unknown name raises :class:`UserError` listing the known ones."""
        if name in self._entries:
            return self._entries[name]
        raise UserError(self.unknown(name))

    def unknown(self, name: str) -> str:
        """The sentence for an unknown name: the known names and the closest ones."""
        close = difflib.get_close_matches(str(name), list(self._entries), n=3)
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        return f"{self.key} '{name}' is not a registered {self.kind}; known: {', '.join(self._entries)}.{hint}"

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def items(self) -> list[tuple[str, T]]:
        return list(self._entries.items())

    def decorator(self, name_of: Callable[[T], str]) -> Callable[[T], T]:
        """A decorator that registers its argument under ``name_of(argument)``."""
        return lambda entry: self.register(name_of(entry), entry)


def _origin(entry: object) -> str:
    """Where an entry was defined: a class or function re-defined by re-importing its module is the same entry."""
    return f"{getattr(entry, '__module__', '?')}.{getattr(entry, '__qualname__', type(entry).__qualname__)}"
