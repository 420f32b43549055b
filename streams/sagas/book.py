"""A tenant's sagas in one row: instances, tenant-wide knowledge, pending deadlines, and routing (pure).

The shell keeps one ``SagaBook`` per tenant in changelog-backed state co-partitioned with
``events.platform`` (keyed by tenant, like everything else). For each event of the tenant it
calls ``handle`` (or ``handle_batch`` for a batch of them: the same result, with one copy of the
book), and on a timer ``fire``; both return the new book and the commands to send,
which the shell commits in one transaction with the book and the input offsets. Neither reads a
clock nor does I/O; the book serialises to JSON (``dump``/``load``).

What ``handle`` does with one event, in order:

1. **Drop duplicates.** Events of one stream arrive in version order (one partition per tenant);
   an event at or below the last version seen of a stream that a live saga follows is a
   duplicate and changes nothing. A start event of a saga that already ended (the last
   ``FINISHED_MEMORY`` ended ids are remembered) starts nothing.
2. **Observe.** Each saga type folds the event into its tenant-wide knowledge (the task saga's
   agents: id, type, status), so a saga started later knows what happened before it.
3. **React, then start.** Live sagas that follow the event's stream react (in saga id order);
   then each type may start a new saga from it.

A step's commands are returned in order; its deadlines replace pending ones of the same name; a
saga that reaches a terminal state is removed with its deadlines and remembered as ended, so it
reaches exactly one terminal state and sends nothing afterwards.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Iterable, Mapping, Sequence

from streams.domain.quotas import to_ms
from streams.sagas.core import SagaCommand, SagaEvent, SagaType, Step
from streams.sagas.deadlines import DeadlineQueue

AnySaga = SagaType[Any]

#: How many ended saga ids a book remembers (to refuse restarting them on a duplicate start event).
FINISHED_MEMORY = 1000


class SagaRoutingError(ValueError):
    """The book names a saga type that the given types do not include."""


@dataclass(frozen=True)
class SagaBook:
    """One tenant's sagas: ``sagas`` saga id -> (type name, dumped state); ``shared`` type name ->
    tenant-wide knowledge; ``deadlines``; ``positions`` stream -> last version seen (streams that
    live sagas follow); ``follows`` stream -> saga ids following it; ``finished`` (saga id,
    terminal status), oldest first."""

    sagas: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)
    shared: dict[str, dict[str, Any]] = field(default_factory=dict)
    deadlines: DeadlineQueue = field(default_factory=DeadlineQueue)
    positions: dict[str, int] = field(default_factory=dict)
    follows: dict[str, tuple[str, ...]] = field(default_factory=dict)
    finished: tuple[tuple[str, str], ...] = ()

    def dump(self) -> dict[str, Any]:
        """JSON-ready data (``load`` reads it back)."""
        return {
            "sagas": {sid: [kind, state] for sid, (kind, state) in self.sagas.items()},
            "shared": self.shared,
            "deadlines": self.deadlines.dump(),
            "positions": self.positions,
            "follows": {stream: list(ids) for stream, ids in self.follows.items()},
            "finished": [list(f) for f in self.finished],
        }

    @classmethod
    def load(cls, data: Mapping[str, Any] | None) -> "SagaBook":
        """The book ``dump`` wrote (an empty book for None)."""
        if not data:
            return cls()
        return cls(
            sagas={sid: (kind, dict(state)) for sid, (kind, state) in data["sagas"].items()},
            shared={k: dict(v) for k, v in data["shared"].items()},
            deadlines=DeadlineQueue.load(data["deadlines"]),
            positions={k: int(v) for k, v in data["positions"].items()},
            follows={stream: tuple(ids) for stream, ids in data["follows"].items()},
            finished=tuple((sid, status) for sid, status in data["finished"]),
        )

    def ended(self, saga_id: str) -> str | None:
        """The terminal status of a remembered ended saga, or None."""
        for sid, status in reversed(self.finished):
            if sid == saga_id:
                return status
        return None


def _types(types: Sequence[AnySaga]) -> dict[str, AnySaga]:
    return {t.name: t for t in types}


class _Run:
    """One call's mutable working copy of a book (the book itself stays unchanged)."""

    def __init__(self, book: SagaBook, types: Sequence[AnySaga]) -> None:
        self.types = _types(types)
        self.sagas = dict(book.sagas)
        self.shared = dict(book.shared)
        self.deadlines = book.deadlines.copy()  # changed in place below; the book's own stays as it was
        self.positions = dict(book.positions)
        self.follows = dict(book.follows)
        self.finished = list(book.finished)
        self.ended = {sid for sid, _ in book.finished}
        self.commands: list[SagaCommand] = []

    def type_of(self, saga_id: str) -> AnySaga:
        kind = self.sagas[saga_id][0]
        if kind not in self.types:
            raise SagaRoutingError(f"saga {saga_id} is of type '{kind}', which is not among {sorted(self.types)}")
        return self.types[kind]

    def state_of(self, saga_id: str) -> Any:
        kind, dumped = self.sagas[saga_id]
        return self.type_of(saga_id).state_model.model_validate(dumped)

    def _set_follows(self, saga_id: str, old: frozenset[str], new: frozenset[str], version_of: Mapping[str, int]) -> None:
        for stream in old - new:
            rest = tuple(i for i in self.follows.get(stream, ()) if i != saga_id)
            if rest:
                self.follows[stream] = rest
            else:
                self.follows.pop(stream, None)
                self.positions.pop(stream, None)
        for stream in new - old:
            ids = list(self.follows.get(stream, ()))
            at = bisect_left(ids, saga_id)
            if at == len(ids) or ids[at] != saga_id:
                ids.insert(at, saga_id)
            self.follows[stream] = tuple(ids)
            if stream in version_of and stream not in self.positions:
                self.positions[stream] = version_of[stream]

    def apply(self, saga_type: AnySaga, saga_id: str, old_follows: frozenset[str], step: Step, version_of: Mapping[str, int]) -> None:
        """Record ``step`` of ``saga_id``: state, commands, deadlines, following, the end."""
        self.commands.extend(step.commands)
        if saga_type.is_terminal(step.state):
            self.sagas.pop(saga_id, None)
            self.deadlines.discard(saga_id)
            self._set_follows(saga_id, old_follows, frozenset(), version_of)
            status = getattr(step.state, "status", "ended")
            self.finished.append((saga_id, status))
            self.ended.add(saga_id)
            if len(self.finished) > FINISHED_MEMORY:
                self.ended.discard(self.finished.pop(0)[0])
            return
        self.sagas[saga_id] = (saga_type.name, step.state.model_dump(mode="json"))
        if step.cancel:
            self.deadlines.discard(saga_id, step.cancel)
        for deadline in step.deadlines:
            self.deadlines.put(deadline)
        self._set_follows(saga_id, old_follows, saga_type.follows(step.state), version_of)

    def book(self) -> SagaBook:
        return SagaBook(self.sagas, self.shared, self.deadlines.copy(), self.positions, self.follows, tuple(self.finished))


def handle(types: Sequence[AnySaga], book: SagaBook, event: SagaEvent) -> tuple[SagaBook, list[SagaCommand]]:
    """The book after ``event`` and the commands its sagas send (see the module docstring)."""
    return handle_batch(types, book, [event])


def handle_batch(types: Sequence[AnySaga], book: SagaBook, events: Iterable[SagaEvent]) -> tuple[SagaBook, list[SagaCommand]]:
    """``handle`` for each of ``events`` in order (the same result), copying the book once for the batch."""
    run = _Run(book, types)
    for event in events:
        _handle_one(run, event)
    return run.book(), run.commands


def _handle_one(run: _Run, event: SagaEvent) -> None:
    last = run.positions.get(event.stream_id)
    if last is not None and event.version <= last:
        return
    if event.stream_id in run.follows:
        run.positions[event.stream_id] = event.version
    for saga_type in run.types.values():
        shared = run.shared.get(saga_type.name, {})
        observed = saga_type.observe(shared, event)
        if observed is not shared:
            run.shared[saga_type.name] = observed
    here = {event.stream_id: event.version}
    for saga_id in run.follows.get(event.stream_id, ()):
        if saga_id not in run.sagas:
            continue
        saga_type = run.type_of(saga_id)
        state = run.state_of(saga_id)
        run.apply(saga_type, saga_id, saga_type.follows(state), saga_type.react(state, event, run.shared.get(saga_type.name, {})), here)
    for saga_type in run.types.values():
        new_id = saga_type.saga_id(event)
        if new_id is None or new_id in run.sagas or new_id in run.ended:
            continue
        step = saga_type.start(new_id, event, run.shared.get(saga_type.name, {}))
        if step is not None:
            run.apply(saga_type, new_id, frozenset(), step, here)


def fire(types: Sequence[AnySaga], book: SagaBook, at: datetime) -> tuple[SagaBook, list[SagaCommand]]:
    """The book after every deadline due at ``at`` fired (earliest first), and the commands sent.

    Deadlines a step schedules that are already due at ``at`` fire in the same call.
    """
    run = _Run(book, types)
    at_ms = to_ms(at)
    while True:
        due = run.deadlines.pop_due(at_ms)
        if not due:
            return run.book(), run.commands
        for deadline in due:
            if deadline.saga_id not in run.sagas:
                continue
            saga_type = run.type_of(deadline.saga_id)
            state = run.state_of(deadline.saga_id)
            step = saga_type.on_deadline(state, deadline, at, run.shared.get(saga_type.name, {}))
            run.apply(saga_type, deadline.saga_id, saga_type.follows(state), step, {})


def next_due_ms(book: SagaBook) -> int | None:
    """When the shell should next call ``fire`` for this book (None: no deadline pending)."""
    return book.deadlines.next_due_ms()

