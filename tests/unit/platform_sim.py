"""A pure command side for unit tests: the real deciders and quota rules, decided the way the
command processor is to decide them once it runs the quota check (no Kafka, no clock).

Per command: schema defaults filled in, ``quotas.with_defaults`` from the tenant's limits, the
aggregate's ``decide`` with its related state, the events encoded with the real Avro schemas to
count their bytes, ``quotas.admit``, then the stream row and the quota row written (through
JSON, as a changelog would). A repeated command id is answered with its first outcome and
changes nothing, as the processor does.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

from schemas import default_registry
from schemas.topology import QuotaPlans, load_topology
from streams.domain import Command, Event, Rejection, aggregate_for
from streams.domain import quotas
from streams.domain.quotas import QuotaExceeded, QuotaState

REG = default_registry()
PLANS: QuotaPlans = load_topology(Path(__file__).resolve().parents[2] / "topology.yaml").quotas  # type: ignore[assignment]

Decision = list[Event] | Rejection | QuotaExceeded


class Platform:
    """Tenants' aggregate rows and quota rows in dicts; every accepted command in ``accepted``."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], dict[str, Any]] = {}
        self.quota: dict[str, dict[str, Any]] = {}
        #: Accepted commands: (tenant, command type, at, events, bytes).
        self.accepted: list[tuple[str, str, datetime, list[Event], int]] = []
        #: Appended events: (tenant, stream id, version, event, at, command id).
        self.appended: list[tuple[str, str, int, Event, datetime, str]] = []
        self.outcomes: dict[tuple[str, str], Decision] = {}

    def row(self, tenant: str) -> QuotaState:
        """The tenant's quota row."""
        return quotas.load(self.quota.get(tenant))

    def state(self, tenant: str, stream: str) -> Any:
        """The stored state of a stream (None if never written)."""
        found = self.rows.get((tenant, stream))
        return None if found is None else found["loaded"]

    def handle(self, kind: str, data: dict[str, Any], tenant: str, at: datetime, command_id: str | None = None) -> Decision:
        """Decide one command at ``at``; a repeated ``command_id`` gets its first outcome."""
        if command_id is not None and (tenant, command_id) in self.outcomes:
            return self.outcomes[(tenant, command_id)]
        decision = self._decide(kind, data, tenant, at, command_id or f"c{len(self.outcomes)}")
        if command_id is not None:
            self.outcomes[(tenant, command_id)] = decision
        return decision

    def _decide(self, kind: str, data: dict[str, Any], tenant: str, at: datetime, command_id: str) -> Decision:
        command = Command(kind, REG.validate(kind, data).model_dump(), tenant, at=at)
        row = self.row(tenant)
        lim = quotas.limits_of(row, PLANS)
        command = quotas.with_defaults(command, lim)
        aggregate = aggregate_for(kind)
        assert aggregate is not None, kind
        stream = aggregate.stream_id(command)
        stored = self.rows.get((tenant, stream))
        state = aggregate.initial() if stored is None else aggregate.load(stored["state"])
        related = {}
        for name, (other, other_stream) in aggregate.related(command, state).items():
            found = self.rows.get((tenant, other_stream))
            related[name] = other.initial() if found is None else other.load(found["state"])
        decision = aggregate.decide(command, state, related)
        if isinstance(decision, Rejection):
            return decision
        size = sum(len(REG.encode(e.type, e.data)[0]) for e in decision)
        verdict = quotas.admit(command, decision, row, lim, at, size)
        if isinstance(verdict, QuotaExceeded):
            return verdict
        version = 0 if stored is None else stored["version"]
        for event in decision:
            state = aggregate.evolve(state, event)
            version += 1
            self.appended.append((tenant, stream, version, event, at, command_id))
        dumped = json.loads(json.dumps(aggregate.dump(state)))
        self.rows[(tenant, stream)] = {"version": version, "state": dumped, "loaded": aggregate.load(dumped)}
        self.quota[tenant] = json.loads(json.dumps(quotas.dump(verdict)))
        self.accepted.append((tenant, kind, at, decision, size))
        return decision
