"""Pending deadlines of a tenant's sagas: a pure, sorted, JSON-friendly queue.

Deadlines are state, not timers: they live in the saga row of the tenant (changelog-backed in the
shell), so a restart or a new partition owner sees every deadline that was pending, and fires
those that fell due while nobody owned the partition (``due(at)`` returns everything at or before
``at``, however late). The shell asks ``next_due_ms()`` to know when to wake up.

A saga has at most one pending deadline per name: ``schedule`` replaces it. ``due`` and
``cancel`` remove. Operations return a new queue and leave the old one unchanged; inside, a
sorted list and an index by saga are copied (a C-level copy) and changed by bisection, so an
operation costs O(log n) comparisons, not a Python loop over every pending deadline.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort
from typing import Any, Iterable

from streams.sagas.core import Deadline


class DeadlineQueue:
    """Deadlines sorted by due time (then saga id, name, attempt: a total, deterministic order)."""

    __slots__ = ("_items", "_by_saga")

    def __init__(self, items: Iterable[Deadline] = ()) -> None:
        self._items: list[Deadline] = []
        self._by_saga: dict[str, dict[str, Deadline]] = {}
        for deadline in items:
            self._put(deadline)

    @property
    def items(self) -> tuple[Deadline, ...]:
        """Every pending deadline, earliest first."""
        return tuple(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DeadlineQueue) and self._items == other._items

    def __repr__(self) -> str:
        return f"DeadlineQueue({self._items!r})"

    def copy(self) -> "DeadlineQueue":
        """A working copy for a batch: ``put``, ``discard`` and ``pop_due`` change it in place; the
        original stays as it was. (The other operations return new queues and change nothing.)"""
        return self._copy()

    def put(self, deadline: Deadline) -> None:
        """In place (a working copy only): add ``deadline``, replacing its saga's one of the same name."""
        self._put(deadline)

    def discard(self, saga_id: str, names: Iterable[str] | None = None) -> None:
        """In place (a working copy only): drop ``saga_id``'s deadlines named ``names`` (all when None)."""
        pending = self._by_saga.get(saga_id, {})
        wanted = None if names is None else set(names)
        for deadline in [d for name, d in pending.items() if wanted is None or name in wanted]:
            self._remove(deadline)

    def pop_due(self, at_ms: int) -> list[Deadline]:
        """In place (a working copy only): remove and return the deadlines due at ``at_ms``, earliest first."""
        rest, fired = self.due(at_ms)
        self._items, self._by_saga = rest._items, rest._by_saga
        return fired

    def _copy(self) -> "DeadlineQueue":
        new = DeadlineQueue.__new__(DeadlineQueue)
        new._items = self._items.copy()
        new._by_saga = self._by_saga.copy()  # inner dicts are replaced, never changed in place
        return new

    def _remove(self, deadline: Deadline) -> None:
        del self._items[bisect_left(self._items, deadline)]
        names = {k: v for k, v in self._by_saga[deadline.saga_id].items() if k != deadline.name}
        if names:
            self._by_saga[deadline.saga_id] = names
        else:
            del self._by_saga[deadline.saga_id]

    def _put(self, deadline: Deadline) -> None:
        old = self._by_saga.get(deadline.saga_id, {}).get(deadline.name)
        if old is not None:
            self._remove(old)
        insort(self._items, deadline)
        self._by_saga[deadline.saga_id] = {**self._by_saga.get(deadline.saga_id, {}), deadline.name: deadline}

    def schedule(self, deadlines: Iterable[Deadline]) -> "DeadlineQueue":
        """The queue with ``deadlines`` added, each replacing a pending one of the same saga and name."""
        new_ones = list(deadlines)
        if not new_ones:
            return self
        new = self._copy()
        for deadline in new_ones:
            new._put(deadline)
        return new

    def cancel(self, saga_id: str, names: Iterable[str] | None = None) -> "DeadlineQueue":
        """The queue without ``saga_id``'s deadlines named ``names`` (all of them when None)."""
        pending = self._by_saga.get(saga_id, {})
        wanted = None if names is None else set(names)
        doomed = [d for name, d in pending.items() if wanted is None or name in wanted]
        if not doomed:
            return self
        new = self._copy()
        for deadline in doomed:
            new._remove(deadline)
        return new

    def due(self, at_ms: int) -> tuple["DeadlineQueue", list[Deadline]]:
        """The deadlines due at ``at_ms`` (due time <= at_ms, earliest first) and the queue without them."""
        cut = bisect_right(self._items, at_ms, key=lambda d: d.due_ms)
        if cut == 0:
            return self, []
        fired = self._items[:cut]
        new = DeadlineQueue.__new__(DeadlineQueue)
        new._items = self._items[cut:]
        new._by_saga = self._by_saga.copy()
        for deadline in fired:
            names = {k: v for k, v in new._by_saga[deadline.saga_id].items() if k != deadline.name}
            if names:
                new._by_saga[deadline.saga_id] = names
            else:
                del new._by_saga[deadline.saga_id]
        return new, fired

    def next_due_ms(self) -> int | None:
        """When the earliest deadline falls due (None when nothing is pending)."""
        return self._items[0].due_ms if self._items else None

    def pending(self, saga_id: str) -> list[Deadline]:
        """``saga_id``'s pending deadlines, earliest first."""
        return sorted(self._by_saga.get(saga_id, {}).values())

    def dump(self) -> list[list[Any]]:
        """JSON-ready: ``[[due_ms, saga_id, name, attempt], ...]``."""
        return [[d.due_ms, d.saga_id, d.name, d.attempt] for d in self._items]

    @classmethod
    def load(cls, data: Iterable[Iterable[Any]] | None) -> "DeadlineQueue":
        """The queue ``dump`` wrote."""
        return cls(Deadline(int(due), str(saga), str(name), int(attempt)) for due, saga, name, attempt in (data or []))
