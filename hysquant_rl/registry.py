"""One registry pattern for everything chosen by name (timm's ``create_model`` registry is the model): data sets
(``data.name``), runtimes (``hardware.backend``), search methods (``search.method``), agents (``agent.name``) and the
attention modules whose operands become units.

An entry is registered with the :meth:`Registry.register` decorator where it is defined, or, for a plug-in that the
registry's own layer may not import (a runtime's module, the agents above the library), named lazily as
``"module:attribute"`` and imported on first use. :meth:`Registry.get` answers an unknown name with one line naming
the setting and the known names. Torch-free.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from importlib import import_module
from typing import Any, Generic, TypeVar

from hysquant_rl.errors import HySquantError

T = TypeVar("T")


class Registry(Generic[T]):
    """Names -> entries of one kind (``what``, e.g. "data set"), chosen by the setting ``setting`` (e.g. ``data``)."""

    def __init__(self, what: str, setting: str) -> None:
        self.what, self.setting = what, setting
        self._entries: dict[str, T | str] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: ``@REGISTRY.register("name")`` over a class or function."""

        def deco(entry: T) -> T:
            self._entries[name] = entry
            return entry

        return deco

    def lazy(self, name: str, target: str) -> None:
        """Register ``target`` (``"package.module:attribute"``), imported when ``name`` is first asked for."""
        self._entries.setdefault(name, target)

    def get(self, name: str) -> T:
        """The entry named ``name``; a one-line error naming the known ones when there is none."""
        if name not in self._entries:
            raise HySquantError(f"unknown {self.setting}={name!r}: use one of {', '.join(self.names())}")
        entry = self._entries[name]
        if isinstance(entry, str):
            module, _, attribute = entry.partition(":")
            entry = getattr(import_module(module), attribute)
            self._entries[name] = entry
        return entry  # type: ignore[return-value]

    def names(self) -> list[str]:
        """The registered names, in registration order."""
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.what!r}: {', '.join(self._entries)})"

    def items(self) -> Iterator[tuple[str, Any]]:
        """(name, entry) pairs, importing lazy entries."""
        return ((name, self.get(name)) for name in self.names())
