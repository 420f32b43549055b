"""Shared vocabulary of the pure core: commands, events, rejections, and the decider shape.

Nothing here knows Kafka. A decider is ``decide(command, state, related) -> list[Event] | Rejection``
plus ``evolve(state, event) -> state``; the shell (``streams.handlers``) feeds it state from a
table and appends what it returns. ``related`` holds the current state of other streams of the
same tenant that the aggregate asked for (e.g. a task asks for its agent), read-only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Callable, Generic, Mapping, TypeVar

S = TypeVar("S")


class RejectionCode(StrEnum):
    """Why a command was refused; carried on the results topic."""

    VALIDATION_FAILED = "ValidationFailed"
    UNKNOWN_COMMAND = "UnknownCommand"
    WRONG_EXPECTED_VERSION = "WrongExpectedVersion"
    INVARIANT_VIOLATED = "InvariantViolated"
    NOT_FOUND = "NotFound"
    QUOTA_EXCEEDED = "QuotaExceeded"
    UNAUTHORIZED = "Unauthorized"
    HANDLER_FAILED = "HandlerFailed"


@dataclass(frozen=True)
class Rejection:
    """A refused command: a code from RejectionCode and a sentence for a person."""

    code: RejectionCode
    message: str


@dataclass(frozen=True)
class Command:
    """A decoded command: its schema name and its payload fields."""

    type: str
    data: Mapping[str, Any]
    tenant_id: str = ""
    #: When the shell decides the command: an input to the core (which reads no clock).
    at: datetime | None = None


@dataclass(frozen=True)
class Event:
    """An event to append (or read back): its schema name and payload fields."""

    type: str
    data: Mapping[str, Any]


@dataclass(frozen=True)
class Aggregate(Generic[S]):
    """One aggregate type: which commands it owns and how it decides and evolves."""

    name: str
    commands: frozenset[str]
    stream_id: Callable[[Command], str]
    initial: Callable[[], S]
    decide: Callable[[Command, S, Mapping[str, Any]], "list[Event] | Rejection"]
    evolve: Callable[[S, Event], S]
    #: The event types ``evolve`` understands (what the event store may append to its streams).
    events: frozenset[str] = frozenset()
    #: Stream ids of this aggregate start with this (``agent-``, ``task-``; ``tenant`` is exact).
    stream_prefix: str = ""
    #: Other streams whose state ``decide`` reads: name -> (aggregate, stream id).
    related: Callable[[Command, S], Mapping[str, "tuple[Aggregate, str]"]] = field(default=lambda command, state: {})
    dump: Callable[[S], dict] = field(default=lambda s: dict(s))  # type: ignore[arg-type]
    load: Callable[[dict], S] = field(default=lambda d: d)  # type: ignore[assignment,return-value]


def replay(aggregate: Aggregate[S], events: list[Event], state: S | None = None) -> S:
    """Fold events into state with the aggregate's ``evolve``, from ``state`` or the initial one."""
    current = aggregate.initial() if state is None else state
    for event in events:
        current = aggregate.evolve(current, event)
    return current
