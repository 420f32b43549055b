"""Turns one raw command message into an outcome: events to append, a state change, a result.

No I/O: the runtime agent in ``streams.handlers`` gives it the message and a way to read the
aggregate table, then writes what the outcome says (all inside one Kafka transaction).
Every failure becomes a typed rejection (and, for malformed input, a dead letter); nothing
here raises.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable, Iterable, Mapping

from schemas import SchemaDecodeError, SchemaError, SchemaRegistry, SchemaValidationError, UnknownSchema
from schemas.topology import QuotaPlans
from streams.domain import Aggregate, Command, Event, Rejection, RejectionCode, aggregate_for, aggregate_for_stream
from streams.domain import quotas
from schemas.messages import (
    CommandAccepted,
    CommandMeta,
    CommandRejected,
    EnvelopeError,
    EventMeta,
    EventRef,
    Snapshot,
    new_id,
    compact_result,
    expand_result,
    utcnow,
)

#: How many recent command ids each stream remembers to answer retries with the first outcome.
DEDUP_PER_STREAM = 32
#: A snapshot of a stream is emitted each time its version crosses a multiple of this.
SNAPSHOT_EVERY = 50
#: The event store's append command (events given, not decided; version-checked like any write).
APPEND_EVENTS = "AppendEvents"

Headers = Iterable[tuple[str, bytes]] | Mapping[str, bytes] | None


@dataclass(frozen=True)
class AppendedEvent:
    """An encoded event, ready for the events topic."""

    value: bytes
    headers: list[tuple[str, bytes]]


@dataclass
class Outcome:
    """What handling one command message produced."""

    result: CommandAccepted | CommandRejected | None = None
    events: list[AppendedEvent] = field(default_factory=list)
    state_key: str | None = None
    new_state: dict[str, Any] | None = None
    dead_letter: str | None = None  # the reason, when the input goes to the dead-letter topic
    error: str | None = None
    replayed: bool = False  # a repeated command id, answered with its first outcome
    redelivered: bool = False  # this very message was handled already: nothing to write
    snapshot: "Snapshot | None" = None
    #: Other rows the command changed, written in the same transaction (the tenant's quota row).
    extra_rows: dict[str, dict[str, Any]] = field(default_factory=dict)


def _recent(stored: Mapping[str, Any]) -> dict[str, list]:
    """The stream's recent command ids and their first outcomes, oldest first (a JSON object;
    rows written before it was one hold a list of pairs)."""
    recent = stored.get("recent") or {}
    return dict(recent) if isinstance(recent, list) else recent


def _remember(recent: dict[str, list], command_id: str, result: CommandAccepted | CommandRejected) -> dict[str, list]:
    """The stream's recent command ids with this one added, oldest dropped past DEDUP_PER_STREAM."""
    kept = dict(recent)
    kept[command_id] = compact_result(result)
    while len(kept) > DEDUP_PER_STREAM:
        del kept[next(iter(kept))]
    return kept


def _handled_already(last: list | None, position: tuple[str | int, int]) -> bool:
    """Whether the message at ``position`` is at or before ``last`` in the same source partition."""
    return last is not None and last[0] == position[0] and position[1] <= last[1]


def state_key(tenant_id: str, stream_id: str) -> str:
    """Key of an aggregate in the aggregates table (tenant first: no tenant sees another's)."""
    return f"{tenant_id}/{stream_id}"


class CommandProcessor:
    """Decides raw command messages against aggregate state loaded by the caller."""

    def __init__(
        self,
        registry: SchemaRegistry,
        max_bytes: int,
        clock: Callable[[], datetime] = utcnow,
        ids: Callable[[], str] = new_id,
        plans: QuotaPlans | None = None,
        declarations: Mapping[str, Any] | None = None,
    ) -> None:
        """``declarations`` are what deciders may read beside the streams (e.g. ``{"cubes": ...}``
        from the topology); they reach every decider in ``related``."""
        self.registry = registry
        self.declarations = dict(declarations or {})
        self.max_bytes = max_bytes
        self.clock = clock
        self.ids = ids
        # The loaded state of the rows this processor wrote last, by row identity: a row is never
        # changed in place, so the same object means the same state (a memo, not a second store).
        self._loaded: dict[str, tuple[Mapping[str, Any], Any]] = {}
        #: Default limits per plan (``load_topology(...).quotas``); None turns quotas off.
        self.plans = plans
        # Per quota key, the last row object read or written and its parsed state: the table
        # returns the very object this processor put (in the batch and after its commit), so a
        # row is parsed once.
        self._quota_rows: dict[str, tuple[Any, quotas.QuotaState]] = {}
        # Between begin_batch and finish_batch: the batch's quota ledgers by tenant, and the tenants
        # whose ledger an accepted command changed (None: command by command).
        self._ledgers: dict[str, quotas.QuotaLedger] | None = None
        self._changed: set[str] = set()

    def begin_batch(self) -> None:
        """Keep each tenant's quota row as one mutable ledger until ``finish_batch`` (one row
        written per tenant and batch instead of one per command). Call it at the start of every
        batch, a redone one too: it forgets what an unfinished batch had counted."""
        self._ledgers, self._changed = {}, set()

    def finish_batch(self) -> dict[str, dict[str, Any]]:
        """The quota rows the batch's accepted commands changed (key -> row), to write in the
        batch's transaction; back to command by command (rows in ``Outcome.extra_rows``)."""
        ledgers, changed = self._ledgers or {}, self._changed
        self._ledgers, self._changed = None, set()
        keys = {state_key(tenant_id, quotas.QUOTA_ROW): tenant_id for tenant_id in changed}
        return {qkey: self._quota_row(qkey, ledgers[keys[qkey]]) for qkey in sorted(keys)}

    def process(
        self,
        key: bytes | None,
        value: bytes | None,
        headers: Headers,
        load_state: Callable[[str], dict | None],
        position: tuple[str | int, int] | None = None,
    ) -> Outcome:
        """The outcome of one message; never raises.

        ``position`` is the message's (source partition, offset), the source naming the topic
        and partition (e.g. ``"commands.platform[3]"``). The stream's row remembers the position
        of the last message that changed it, so a message delivered again after its outcome was
        stored gets an empty outcome: ``Outcome.redelivered``, nothing to write. (The runtime
        commits rows and offsets together, so this is a second line of defence.) Positions in
        another source are not compared.
        """
        try:
            meta = CommandMeta.from_headers(headers)
        except EnvelopeError as exc:
            return Outcome(dead_letter="bad-envelope", error=str(exc))
        try:
            return self._process(meta, key, value or b"", headers, load_state, position)
        except Exception as exc:  # a bug in a decider must not stop the partition
            return self._reject(meta, RejectionCode.HANDLER_FAILED, f"{type(exc).__name__}: {exc}", dead_letter="handler-error")

    def _process(
        self, meta: CommandMeta, key: bytes | None, value: bytes, headers: Headers, load_state: Callable[[str], dict | None], position: tuple[str | int, int] | None
    ) -> Outcome:
        if len(value) > self.max_bytes:
            return self._reject(meta, RejectionCode.VALIDATION_FAILED, f"payload of {len(value)} bytes exceeds the limit of {self.max_bytes}", "oversize")
        if key is not None and key.decode(errors="replace") != meta.tenant_id:
            return self._reject(meta, RejectionCode.VALIDATION_FAILED, f"message key '{key.decode(errors='replace')}' is not the tenant id '{meta.tenant_id}'", "key-mismatch")
        try:
            name, data = self.registry.decode_record(value, headers)
        except UnknownSchema as exc:
            return self._reject(meta, RejectionCode.UNKNOWN_COMMAND, str(exc), "unknown-schema")
        except (SchemaDecodeError, SchemaValidationError, SchemaError) as exc:
            return self._reject(meta, RejectionCode.VALIDATION_FAILED, str(exc), "undecodable")
        now = self.clock()
        command = Command(name, data, meta.tenant_id, at=now)
        if name == APPEND_EVENTS:
            aggregate = aggregate_for_stream(command.data["stream_id"])
            if aggregate is None:
                return self._reject(meta, RejectionCode.VALIDATION_FAILED, f"no aggregate owns stream '{command.data['stream_id']}'", "unknown-stream")
            stream_id = command.data["stream_id"]
        else:
            aggregate = aggregate_for(name) if self.registry.kind(name) == "command" else None
            if aggregate is None:
                return self._reject(meta, RejectionCode.UNKNOWN_COMMAND, f"'{name}' is not a command that any aggregate handles", "unknown-command")
            stream_id = aggregate.stream_id(command)

        skey = state_key(meta.tenant_id, stream_id)
        stored = load_state(skey) or {"version": 0, "state": None}
        if position is not None and _handled_already(stored.get("position"), position):
            return Outcome(redelivered=True)
        moved = {} if position is None else {"position": list(position)}
        recent = _recent(stored)
        first = recent.get(meta.command_id)
        if first is not None:  # a retry: answer as the first time, change nothing
            return Outcome(result=expand_result(first, meta.command_id, meta.tenant_id, stream_id), replayed=True)

        version = stored["version"]
        state = self._load(aggregate, skey, stored)
        ledger: quotas.QuotaLedger | None = None
        if self.plans is not None:
            ledger = self._quota(meta.tenant_id, load_state)
            limits = ledger.limits(self.plans)
            if name != APPEND_EVENTS:
                command = quotas.with_defaults(command, limits)
        if name == APPEND_EVENTS:
            decision = self._appended_events(aggregate, command, meta, version)
        elif meta.expected_version is not None and meta.expected_version != version:
            decision = Rejection(
                RejectionCode.WRONG_EXPECTED_VERSION, f"stream '{stream_id}' is at version {version}, the command expected {meta.expected_version}"
            )
        else:
            related = dict(self.declarations)
            for label, (other, other_stream) in aggregate.related(command, state).items():
                found = load_state(state_key(meta.tenant_id, other_stream))
                related[label] = other.initial() if not found or found["state"] is None else other.load(found["state"])
            decision = aggregate.decide(command, state, related)
        if isinstance(decision, Rejection):
            outcome = self._reject(meta, decision.code, decision.message, current_version=version)
            outcome.state_key, outcome.new_state = skey, {**stored, "recent": _remember(recent, meta.command_id, outcome.result), **moved}
            self._loaded[skey] = (outcome.new_state, state)
            return outcome

        appended, refs, append_bytes = [], [], 0
        occurred_at = EventMeta.time_text(now)
        for event in decision:
            version += 1
            state = aggregate.evolve(state, event)
            body, schema_headers = self.registry.encode_record(event.type, event.data)
            append_bytes += len(body)
            event_id = self.ids()
            headers_out = EventMeta.headers_for(event_id, meta.tenant_id, stream_id, version, occurred_at, meta.command_id)
            appended.append(AppendedEvent(body, schema_headers + headers_out))
            refs.append(EventRef.model_construct(type=event.type, version=version, event_id=event_id))
        # Our own, already checked values: built without validating them again (the hot path).
        result = CommandAccepted.model_construct(command_id=meta.command_id, tenant_id=meta.tenant_id, stream_id=stream_id, new_version=version, events=refs)
        dumped = aggregate.dump(state)  # before the quota counts the command: nothing after it may raise
        extra_rows: dict[str, dict[str, Any]] = {}
        if ledger is not None:
            refused = ledger.admit(command, decision, limits, quotas.to_ms(now), append_bytes)
            if refused is not None:  # the ledger is as it was
                outcome = self._reject(meta, RejectionCode.QUOTA_EXCEEDED, refused.message, current_version=stored["version"], exceeded=refused)
                outcome.state_key, outcome.new_state = skey, {**stored, "recent": _remember(recent, meta.command_id, outcome.result), **moved}
                return outcome
            if self._ledgers is None:
                qkey = state_key(meta.tenant_id, quotas.QUOTA_ROW)
                extra_rows[qkey] = self._quota_row(qkey, ledger)
            else:
                self._changed.add(meta.tenant_id)
        snapshot = None
        if version // SNAPSHOT_EVERY > stored["version"] // SNAPSHOT_EVERY:
            snapshot = Snapshot(tenant_id=meta.tenant_id, stream_id=stream_id, aggregate=aggregate.name, version=version, state=dumped, taken_at=now)
        new_state = {"version": version, "state": dumped, "recent": _remember(recent, meta.command_id, result), **moved}
        if len(self._loaded) > 100_000:
            self._loaded.clear()
        self._loaded[skey] = (new_state, state)
        return Outcome(result=result, events=appended, state_key=skey, new_state=new_state, snapshot=snapshot, extra_rows=extra_rows)

    def _load(self, aggregate: Aggregate, skey: str, stored: Mapping[str, Any]) -> Any:
        """The aggregate state of row ``stored`` (from the memo when it is the row written last)."""
        memo = self._loaded.get(skey)
        if memo is not None and memo[0] is stored:
            return memo[1]
        return aggregate.initial() if stored["state"] is None else aggregate.load(stored["state"])

    def _quota(self, tenant_id: str, load_state: Callable[[str], dict | None]) -> quotas.QuotaLedger:
        """The tenant's quota ledger as the batch sees it."""
        assert self.plans is not None
        ledger = self._ledgers.get(tenant_id) if self._ledgers is not None else None
        if ledger is None:
            qkey = state_key(tenant_id, quotas.QUOTA_ROW)
            stored = load_state(qkey)
            cached = self._quota_rows.get(qkey)
            ledger = quotas.QuotaLedger(cached[1] if cached is not None and cached[0] is stored else quotas.load((stored or {}).get("state")))
            if self._ledgers is not None:
                self._ledgers[tenant_id] = ledger
        return ledger

    def _quota_row(self, qkey: str, ledger: quotas.QuotaLedger) -> dict[str, Any]:
        """The table row of ``ledger`` (remembered, so reading it back costs no parse)."""
        state = ledger.state()
        row = {"state": quotas.row_data(state)}
        if len(self._quota_rows) > 100_000:
            self._quota_rows.clear()
        self._quota_rows[qkey] = (row, state)
        return row

    def _appended_events(self, aggregate: Aggregate, command: Command, meta: CommandMeta, version: int) -> list[Event] | Rejection:
        """The events of an AppendEvents command, checked like any other write."""
        if meta.expected_version is None:
            return Rejection(RejectionCode.VALIDATION_FAILED, "AppendEvents needs an expected_version")
        if meta.expected_version != version:
            return Rejection(
                RejectionCode.WRONG_EXPECTED_VERSION, f"stream '{command.data['stream_id']}' is at version {version}, the append expected {meta.expected_version}"
            )
        events = []
        for item in command.data["events"]:
            if item["type"] not in aggregate.events:
                return Rejection(RejectionCode.VALIDATION_FAILED, f"{item['type']} is not an event of the {aggregate.name} aggregate")
            try:
                data = json.loads(item["data_json"])
                events.append(Event(item["type"], self.registry.validate(item["type"], data).model_dump()))
            except (ValueError, SchemaError) as exc:
                return Rejection(RejectionCode.VALIDATION_FAILED, f"{item['type']}: {exc}")
        return events

    @staticmethod
    def _reject(
        meta: CommandMeta,
        code: RejectionCode,
        message: str,
        dead_letter: str | None = None,
        current_version: int | None = None,
        exceeded: quotas.QuotaExceeded | None = None,
    ) -> Outcome:
        quota = {} if exceeded is None else {"quota": exceeded.quota, "limit": exceeded.limit, "usage": exceeded.usage}
        result = CommandRejected(
            command_id=meta.command_id, tenant_id=meta.tenant_id, code=code.value, message=message, current_version=current_version, **quota
        )
        return Outcome(result=result, dead_letter=dead_letter, error=message if dead_letter else None)
