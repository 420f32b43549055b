"""What travels beside the Avro payloads: envelope metadata in headers, and command results.

Commands and events carry their payload as Avro (see ``schemas``) and their metadata as Kafka
headers named ``agentstream.<field>`` (the binary mode of CloudEvents, in spirit). Results and
dead letters are JSON so that any consumer can read them.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Annotated, Any, Iterable, Literal, Mapping, TypeVar, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

HEADER_PREFIX = "agentstream."
REASON_HEADER = "agentstream.dlq_reason"
ERROR_HEADER = "agentstream.dlq_error"

M = TypeVar("M", bound="HeaderModel")
_DATETIME: TypeAdapter[datetime] = TypeAdapter(datetime)


class EnvelopeError(ValueError):
    """Headers that do not form a valid envelope (missing id, bad version...)."""


class HeaderModel(BaseModel):
    """A flat model that round-trips through Kafka headers ``agentstream.<field>``."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    def to_headers(self) -> list[tuple[str, bytes]]:
        """One header per set field, values as UTF-8 text."""
        out = []
        for name, value in self.model_dump(mode="json", exclude_none=True).items():
            out.append((HEADER_PREFIX + name, str(value).encode()))
        return out

    @classmethod
    def from_headers(cls: type[M], headers: Iterable[tuple[str, bytes]] | Mapping[str, bytes] | None) -> M:
        """Parse the envelope out of message headers; EnvelopeError names what is wrong."""
        # A list first: what Kafka clients give, and typing's isinstance(_, Mapping) costs ~1 us a record.
        items = headers if isinstance(headers, list) else headers.items() if isinstance(headers, Mapping) else (headers or [])
        fields: dict[str, Any] = {}
        for key, value in items:
            if key.startswith(HEADER_PREFIX) and value is not None:
                fields[key[len(HEADER_PREFIX) :]] = value.decode("utf-8", errors="replace")
        try:
            return cls.model_validate(fields)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise EnvelopeError(f"bad {cls.__name__} headers: {problems}") from exc


def new_id() -> str:
    """A fresh unique id for a command or an event (128 random bits as 32 hex digits, like ``uuid4().hex``)."""
    return os.urandom(16).hex()


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


#: A tenant id as every message carries it (the Kafka key of commands and events).
TenantId = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]
_TENANT_ID = TypeAdapter(TenantId)


def check_tenant_id(value: str) -> str:
    """``value`` if it is a valid tenant id, else EnvelopeError saying why."""
    try:
        return _TENANT_ID.validate_python(value)
    except ValidationError as exc:
        raise EnvelopeError(f"bad tenant id {value!r}: {exc.errors()[0]['msg']}") from exc


class CommandMeta(HeaderModel):
    """Who sends which command for which tenant, and what version they expect."""

    command_id: str = Field(min_length=1, max_length=128)
    tenant_id: TenantId
    expected_version: int | None = Field(default=None, ge=0)
    issued_at: datetime = Field(default_factory=utcnow)
    principal: str | None = None


class EventMeta(HeaderModel):
    """Where an event belongs: tenant, stream, version, and the command that caused it."""

    event_id: str
    tenant_id: str
    stream_id: str
    version: int = Field(ge=1)
    occurred_at: datetime
    command_id: str

    @staticmethod
    def time_text(moment: datetime) -> bytes:
        """``occurred_at`` as its header carries it (the JSON form of the datetime)."""
        return str(_DATETIME.dump_python(moment, mode="json")).encode()

    @staticmethod
    def headers_for(event_id: str, tenant_id: str, stream_id: str, version: int, occurred_at: bytes, command_id: str) -> list[tuple[str, bytes]]:
        """The same headers as ``EventMeta(...).to_headers()``, built without validation.

        For the command handler's hot path, whose values are its own (ids it minted, a version
        it counted, ``time_text`` of its clock): a unit test holds the two forms equal.
        """
        return [
            ("agentstream.event_id", event_id.encode()),
            ("agentstream.tenant_id", tenant_id.encode()),
            ("agentstream.stream_id", stream_id.encode()),
            ("agentstream.version", str(version).encode()),
            ("agentstream.occurred_at", occurred_at),
            ("agentstream.command_id", command_id.encode()),
        ]


class EventRef(BaseModel):
    """An appended event, as reported in CommandAccepted."""

    type: str
    version: int
    event_id: str


class CommandAccepted(BaseModel):
    """The command was decided and its events appended at ``new_version``."""

    status: Literal["accepted"] = "accepted"
    command_id: str
    tenant_id: str
    stream_id: str
    new_version: int
    events: list[EventRef]


class CommandRejected(BaseModel):
    """The command was refused; nothing was appended.

    A ``QuotaExceeded`` rejection also says which ``quota`` (a ``QuotaLimits`` field name), its
    ``limit`` and the tenant's ``usage`` before the command; other codes leave them None.
    """

    status: Literal["rejected"] = "rejected"
    command_id: str
    tenant_id: str
    code: str
    message: str
    current_version: int | None = None
    quota: str | None = None
    limit: int | None = None
    usage: int | None = None


CommandResult = Annotated[Union[CommandAccepted, CommandRejected], Field(discriminator="status")]
_RESULT = TypeAdapter(CommandResult)


def parse_result(raw: bytes) -> CommandAccepted | CommandRejected:
    """Read a result from the results topic."""
    return _RESULT.validate_json(raw)


def compact_result(result: CommandAccepted | CommandRejected) -> list[Any]:
    """A result in a few bytes, for the per-stream retry memory (ids and stream are known there)."""
    if isinstance(result, CommandAccepted):
        return ["a", result.new_version, [[e.type, e.version, e.event_id] for e in result.events]]
    if result.quota is not None:
        return ["r", result.code, result.message, result.current_version, [result.quota, result.limit, result.usage]]
    return ["r", result.code, result.message, result.current_version]


def expand_result(compact: list[Any], command_id: str, tenant_id: str, stream_id: str) -> CommandAccepted | CommandRejected:
    """The result that ``compact_result`` shrank, whole again."""
    if compact[0] == "a":
        events = [EventRef(type=t, version=v, event_id=i) for t, v, i in compact[2]]
        return CommandAccepted(command_id=command_id, tenant_id=tenant_id, stream_id=stream_id, new_version=compact[1], events=events)
    quota, limit, usage = compact[4] if len(compact) > 4 else (None, None, None)
    return CommandRejected(
        command_id=command_id, tenant_id=tenant_id, code=compact[1], message=compact[2], current_version=compact[3], quota=quota, limit=limit, usage=usage
    )


class Snapshot(BaseModel):
    """A stream's state at ``version``, kept (compacted) in the snapshots topic of its aggregate."""

    tenant_id: str
    stream_id: str
    aggregate: str
    version: int
    state: dict[str, Any]
    taken_at: datetime

    @property
    def key(self) -> bytes:
        """The compaction key: one snapshot per tenant and stream survives."""
        return f"{self.tenant_id}/{self.stream_id}".encode()

    @staticmethod
    def topic_for(aggregate: str) -> str:
        """The snapshots topic of an aggregate type (``snapshots.agent``...)."""
        return f"snapshots.{aggregate.lower()}"
