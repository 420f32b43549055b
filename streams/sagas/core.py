"""The vocabulary of sagas: what a saga sees, what it sends, when it wants to be woken, and its shape.

A saga type is a pure state machine over one piece of work that spans aggregates (a task's life,
a tenant's onboarding). It sees ``SagaEvent``s (an event with where and when it happened),
sends ``SagaCommand``s (to the command handler, like any producer) and asks for ``Deadline``s
(woken by ``on_deadline`` when one falls due). It reads no clock: event times and the firing time
come in as arguments. Its state is a pydantic model that round-trips through JSON.

**Deterministic command ids.** Every command a saga sends has the id
``saga:<type>:<saga id>:<step>:<attempt>`` (``command_id``): a replay or a redo of the same
input builds the same command with the same id, and the command handler answers a repeated id
with its first outcome. A step that is tried again gets a new attempt number, never a reused id.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, Mapping, NamedTuple, Protocol, TypeVar

from pydantic import BaseModel

from schemas.messages import CommandMeta, EventMeta
from streams.domain.quotas import to_ms

S = TypeVar("S", bound=BaseModel)
#: Command ids are at most this long (``schemas.messages.CommandMeta.command_id``).
MAX_COMMAND_ID = 128


@dataclass(frozen=True)
class SagaEvent:
    """An event of the store as a saga sees it: payload, stream position and time.

    ``command_id`` is the command that caused it (``EventMeta.command_id``): a saga recognises
    the answer to its own step by it.
    """

    type: str
    data: Mapping[str, Any]
    tenant_id: str
    stream_id: str
    version: int
    at: datetime
    command_id: str = ""

    @property
    def at_ms(self) -> int:
        """``at`` in epoch milliseconds."""
        return to_ms(self.at)

    @classmethod
    def of(cls, event_type: str, data: Mapping[str, Any], meta: EventMeta) -> "SagaEvent":
        """A decoded event of ``events.platform`` and its envelope, as a saga sees it."""
        return cls(event_type, data, meta.tenant_id, meta.stream_id, meta.version, meta.occurred_at, meta.command_id)


@dataclass(frozen=True)
class SagaCommand:
    """A command a saga sends: type, payload, and the deterministic id of its step and attempt."""

    command_id: str
    type: str
    tenant_id: str
    data: Mapping[str, Any]
    saga_id: str
    step: str
    attempt: int

    def meta(self, issued_at: datetime) -> CommandMeta:
        """The envelope to send it with: its own id, its tenant, the saga as principal (no expected version)."""
        return CommandMeta(command_id=self.command_id, tenant_id=self.tenant_id, issued_at=issued_at, principal=f"saga:{self.saga_id}")


@dataclass(frozen=True, order=True)
class Deadline:
    """Wake saga ``saga_id`` at ``due_ms`` (epoch ms) for its step ``name``, attempt ``attempt``.

    A saga has at most one pending deadline per name: scheduling one again replaces it.
    """

    due_ms: int
    saga_id: str
    name: str
    attempt: int = 0


class Step(NamedTuple):
    """What a saga does with one input: its new state, the commands it sends, the deadlines it
    schedules (each replacing a pending one of the same name) and the names it cancels."""

    state: Any
    commands: tuple[SagaCommand, ...] = ()
    deadlines: tuple[Deadline, ...] = ()
    cancel: tuple[str, ...] = ()


def command_id(saga_type: str, saga_id: str, step: str, attempt: int) -> str:
    """The id of the command a saga sends for ``step`` at ``attempt``: the same inputs, the same id.

    Ids longer than ``MAX_COMMAND_ID`` keep a readable prefix and end with a hash of the whole.
    """
    plain = f"saga:{saga_type}:{saga_id}:{step}:{attempt}"
    if len(plain) <= MAX_COMMAND_ID:
        return plain
    digest = hashlib.sha256(plain.encode()).hexdigest()[:40]
    return f"{plain[: MAX_COMMAND_ID - 41]}~{digest}"


def make_command(saga_type: str, saga_id: str, tenant_id: str, step: str, attempt: int, kind: str, data: Mapping[str, Any]) -> SagaCommand:
    """A ``SagaCommand`` with its deterministic id."""
    return SagaCommand(command_id(saga_type, saga_id, step, attempt), kind, tenant_id, dict(data), saga_id, step, attempt)


class SagaType(Protocol, Generic[S]):
    """One kind of saga. Every method is pure; ``shared`` is the type's tenant-wide knowledge
    (``observe`` folds every event of the tenant into it, before the event is routed)."""

    name: str
    state_model: type[S]

    def observe(self, shared: dict[str, Any], event: SagaEvent) -> dict[str, Any]:
        """The type's tenant-wide knowledge after ``event`` (returned unchanged when it does not care)."""
        ...

    def saga_id(self, event: SagaEvent) -> str | None:
        """The saga that ``event`` would start, or None when it starts none of this type."""
        ...

    def start(self, saga_id: str, event: SagaEvent, shared: Mapping[str, Any]) -> Step | None:
        """The first step of a new saga started by ``event``, or None when it starts nothing."""
        ...

    def follows(self, state: S) -> frozenset[str]:
        """The streams whose events go to this saga now (``react``)."""
        ...

    def react(self, state: S, event: SagaEvent, shared: Mapping[str, Any]) -> Step:
        """The step an event of a followed stream causes."""
        ...

    def on_deadline(self, state: S, deadline: Deadline, at: datetime, shared: Mapping[str, Any]) -> Step:
        """The step a due deadline causes (``at`` is the firing time, at or after ``deadline.due_ms``)."""
        ...

    def is_terminal(self, state: S) -> bool:
        """Whether the saga has ended (it then sees nothing more and its deadlines are dropped)."""
        ...


@dataclass(frozen=True)
class Backoff:
    """Delays that grow by ``factor`` from ``base_s`` up to ``max_s``: ``delay_ms(n)`` for the n-th retry (0-based)."""

    base_s: float = 5.0
    factor: float = 2.0
    max_s: float = 300.0

    def delay_ms(self, n: int) -> int:
        """Milliseconds to wait before retry ``n``."""
        return int(min(self.max_s, self.base_s * self.factor ** max(0, n)) * 1000)


@dataclass(frozen=True)
class History:
    """Helpers for the short history a saga keeps for people (``sagas show``)."""

    limit: int = 32

    def add(self, history: list[tuple[int, str]], at_ms: int, what: str) -> list[tuple[int, str]]:
        """``history`` with ``(at_ms, what)`` appended, the oldest dropped past ``limit``."""
        return [*history, (at_ms, what)][-self.limit :]


HISTORY = History()
