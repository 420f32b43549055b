"""Pending deadlines of a tenant's sagas: a pure, sorted, JSON-friendly queue.

Deadlines are state, not timers: they live in the saga row of the tenant (changelog-backed in the
shell), so a restart or a new partition owner sees every deadline that was pending, and fires
those that fell due while nobody owned the partition (``due(at)`` returns everything at or before
``at``, however late). The shell asks ``next_due_ms()`` to know when to wake up.

A saga has at most one pending deadline per name: ``schedule`` replaces it. ``due`` and
``cancel`` remove. Operations return a new queue and leave the old one unchanged.
"""

from __future__ import annotations

from bisect import insort
from dataclasses import dataclass, field
from typing import Any, Iterable

from streams.sagas.core import Deadline


@dataclass(frozen=True)
class DeadlineQueue:
    """Deadlines sorted by due time (then saga id, name, attempt: a total, deterministic order)."""

    items: tuple[Deadline, ...] = field(default_factory=tuple)

    def __len__(self) -> int:
        return len(self.items)

    def schedule(self, deadlines: Iterable[Deadline]) -> "DeadlineQueue":
        """The queue with ``deadlines`` added, each replacing a pending one of the same saga and name."""
        new = list(deadlines)
        if not new:
            return self
        replaced = {(d.saga_id, d.name) for d in new}
        items = [d for d in self.items if (d.saga_id, d.name) not in replaced]
        for deadline in new:
            insort(items, deadline)
        return DeadlineQueue(tuple(items))

    def cancel(self, saga_id: str, names: Iterable[str] | None = None) -> "DeadlineQueue":
        """The queue without ``saga_id``'s deadlines named ``names`` (all of them when None)."""
        wanted = None if names is None else set(names)
        if wanted is not None and not wanted:
            return self
        items = tuple(d for d in self.items if not (d.saga_id == saga_id and (wanted is None or d.name in wanted)))
        return self if len(items) == len(self.items) else DeadlineQueue(items)

    def due(self, at_ms: int) -> tuple["DeadlineQueue", list[Deadline]]:
        """The deadlines due at ``at_ms`` (due time <= at_ms, earliest first) and the queue without them."""
        cut = 0
        while cut < len(self.items) and self.items[cut].due_ms <= at_ms:
            cut += 1
        return DeadlineQueue(self.items[cut:]), list(self.items[:cut])

    def next_due_ms(self) -> int | None:
        """When the earliest deadline falls due (None when nothing is pending)."""
        return self.items[0].due_ms if self.items else None

    def pending(self, saga_id: str) -> list[Deadline]:
        """``saga_id``'s pending deadlines, earliest first."""
        return [d for d in self.items if d.saga_id == saga_id]

    def dump(self) -> list[list[Any]]:
        """JSON-ready: ``[[due_ms, saga_id, name, attempt], ...]``."""
        return [[d.due_ms, d.saga_id, d.name, d.attempt] for d in self.items]

    @classmethod
    def load(cls, data: Iterable[Iterable[Any]] | None) -> "DeadlineQueue":
        """The queue ``dump`` wrote."""
        return cls(tuple(sorted(Deadline(int(due), str(saga), str(name), int(attempt)) for due, saga, name, attempt in (data or []))))
