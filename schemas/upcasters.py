"""Upcasters: semantic migrations of old payloads that Avro schema resolution cannot express.

Avro resolution handles additive changes (new field with a default, promotions). When the
*meaning* of a field changes (e.g. milliseconds -> seconds under a new name), resolution would
silently drop the old value and default the new one. An :class:`Upcaster` instead converts a
record read with its *writer* schema (``from_version`` shape) into the ``to_version`` shape.

:meth:`SchemaRegistry.decode <schemas.registry.SchemaRegistry.decode>` applies the chain
registered in :data:`UPCASTERS` when one starts at the writer version, and lets Avro
resolution do any remaining additive steps up to the latest version.

Upcaster functions are pure: they receive a dict and return a new dict (never mutate input).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Upcaster", "Upcasters", "UPCASTERS", "upcast"]


@dataclass(frozen=True)
class Upcaster:
    """Converts a ``name`` payload from the ``from_version`` shape to the ``to_version`` shape.

    ``to_version`` must be greater than ``from_version``; ``fn`` must not mutate its input.
    """

    name: str
    from_version: int
    to_version: int
    fn: Callable[[dict[str, Any]], dict[str, Any]]

    def __post_init__(self) -> None:
        if self.to_version <= self.from_version:
            raise ValueError(f"upcaster {self.name} v{self.from_version}->v{self.to_version} must go to a newer version")


class Upcasters:
    """A set of upcasters, at most one per (name, from_version); chains follow ``to_version``."""

    def __init__(self, upcasters: Iterable[Upcaster] = ()) -> None:
        self._by_start: dict[tuple[str, int], Upcaster] = {}
        for upcaster in upcasters:
            self.register(upcaster)

    def register(self, upcaster: Upcaster) -> Upcaster:
        """Add ``upcaster``; raises ValueError if one already starts at the same (name, from_version)."""
        key = (upcaster.name, upcaster.from_version)
        if key in self._by_start:
            raise ValueError(f"an upcaster for {upcaster.name} v{upcaster.from_version} is already registered")
        self._by_start[key] = upcaster
        return upcaster

    def has(self, name: str, from_version: int) -> bool:
        """True when an upcaster starts at ``from_version`` of ``name``."""
        return (name, from_version) in self._by_start

    def chain(self, name: str, from_version: int, to_version: int | None = None) -> list[Upcaster]:
        """The upcasters that lead from ``from_version`` as far as possible without passing ``to_version``.

        Empty when none starts at ``from_version``. The last element's ``to_version`` is the
        version whose shape :meth:`apply` produces.
        """
        steps: list[Upcaster] = []
        current = from_version
        while (step := self._by_start.get((name, current))) is not None:
            if to_version is not None and step.to_version > to_version:
                break
            steps.append(step)
            current = step.to_version
        return steps

    def apply(self, name: str, from_version: int, data: Mapping[str, Any], to_version: int | None = None) -> tuple[int, dict[str, Any]]:
        """Run the chain on a copy of ``data``; returns ``(version reached, upcast payload)``."""
        version, current = from_version, dict(data)
        for step in self.chain(name, from_version, to_version):
            current = dict(step.fn(current))
            version = step.to_version
        return version, current


def _task_completed_v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    """TaskCompleted v1 ``duration_ms`` (long, ms) -> v2 ``duration_s`` (double, s)."""
    out = {k: v for k, v in data.items() if k != "duration_ms"}
    out["duration_s"] = float(data.get("duration_ms", 0) or 0) / 1000.0
    return out


#: The upcasters of the packaged schemas; ``SchemaRegistry.decode`` uses this one by default.
UPCASTERS = Upcasters([Upcaster("TaskCompleted", 1, 2, _task_completed_v1_to_v2)])


def upcast(name: str, writer_version: int, data: Mapping[str, Any], to_version: int | None = None) -> dict[str, Any]:
    """``data`` written as ``writer_version`` of ``name``, upcast along :data:`UPCASTERS`.

    Returns a new dict in the shape of the last version the chain reaches (not beyond
    ``to_version``); an unchanged copy when no upcaster starts at ``writer_version``.
    """
    return UPCASTERS.apply(name, writer_version, data, to_version)[1]
