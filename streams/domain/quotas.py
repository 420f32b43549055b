"""Per-tenant quotas: the pure rules that guard the command path (no I/O, no clock).

A tenant's quota row (``QuotaState``) holds its plan, the limits it set with ``SetTenantQuota``
and its usage; it serialises to JSON (``dump``/``load``). Limits are ``QuotaLimits`` from the
topology (plan defaults) overlaid by the tenant's own (``limits_of``). The functions:

- ``with_defaults(command, limits)`` fills ``AssignTask.max_cost`` / ``start_within_s`` from the
  limits, so the event records what was reserved and promised;
- ``check(command, state, limits, at, append_bytes)`` -> ``QuotaExceeded | None`` for a command
  whose decision was accepted and whose events take ``append_bytes``;
- ``accept(state, at, events, append_bytes)`` -> the row after an accepted command: the command
  is counted in the hourly rate, its bytes stored, and every event applied (``apply``).

``admit`` does check-then-accept in one call: what the command processor runs between deciding
and writing, so the check and the decision it guards commit in one transaction.

The rules are written once, on ``QuotaLedger``: a tenant's row as a mutable working copy, which
the command processor keeps for a whole batch (one row built per tenant and batch, not per
command). The functions above run the same ledger methods on a copy of an immutable row.

**Hourly rate rule (sliding window in minute buckets).** Accepted command times are counted per
UTC minute; a command at time t is admitted when the commands counted in the 61 minute buckets
ending with t's minute number fewer than ``api_rate_per_hour``. Those buckets cover every instant
of (t - 1 h, t], so **no interval of one hour ever holds more than the limit** - no 2x burst at a
window edge, unlike fixed hourly windows; and unlike a token bucket with a full-hour burst (which
admits 2x the limit in a sliding hour) a tenant may still use its whole hour at once. It is at
most one minute stricter than an exact log of every command time, and keeps at most 61 numbers.
Times are command times (``Command.at``); a time earlier than the latest one seen counts as the
latest, so the rule depends only on the sequence of command times and a replay decides the same.

**Slots and budget.** ``TaskAssigned`` takes a slot and reserves its ``max_cost``;
``TaskCompleted``/``TaskFailed`` free the slot, drop the reservation and add the cost to the
month's spend (the task decider caps the cost at the reservation, so reserved + spent never
passes the budget); ``AgentStopped`` frees the slots of its unfinished tasks but keeps their
reservations (a late completion may still be billed); ``TaskReassigned`` takes the slot back if it
was freed (``ReassignTask`` is checked for a slot then). Spend belongs to the UTC month of the
event; reservations carry over a month change.

``SetTenantQuota`` is never refused by a quota: it is how an operator lifts a limit that blocks;
nor are the platform's onboarding steps (``EXEMPT``).
"""

from __future__ import annotations

import calendar
import json
import time
from dataclasses import dataclass, replace
from functools import lru_cache
from datetime import UTC, datetime
from typing import Any, Iterable, Mapping

from pydantic import BaseModel, ConfigDict, Field

from schemas.topology import QuotaLimits, QuotaPlans
from streams.domain.core import Command, Event

#: The stream id of a tenant's quota row in the aggregates table (``<tenant>/quota``): no aggregate
#: owns it, so no command or AppendEvents can address it.
QUOTA_ROW = "quota"
#: The quotas a command can exceed (names of QuotaLimits fields).
QUOTAS = ("max_agents", "max_concurrent_tasks", "api_rate_per_hour", "storage_limit_bytes", "monthly_budget_micros")
#: Commands no quota refuses and the rate does not count: an operator must be able to lift a limit
#: that blocks everything, and the platform's own onboarding steps are no usage of the tenant (an
#: onboarding that failed sets every limit to 0 before it records the failure).
EXEMPT = frozenset({"SetTenantQuota", "RecordTenantPreparation", "CompleteTenantOnboarding", "FailTenantOnboarding"})
#: Width of one rate bucket and how many buckets a decision counts (61: see the module docstring).
BUCKET_MS = 60_000
WINDOW_BUCKETS = 61
HOUR_MS = 3_600_000
#: The events ``apply`` does something with beside moving the row's clock.
QUOTA_EVENTS = frozenset(
    {"TenantCreated", "TenantQuotaSet", "AgentCreated", "TaskAssigned", "TaskReassigned", "TaskCompleted", "TaskFailed", "AgentStopped"}
)
MICROS = 1_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_ms(at: datetime) -> int:
    """``at`` as integer epoch milliseconds (naive times are taken as UTC); exact, no float."""
    since = (at if at.tzinfo is not None else at.replace(tzinfo=UTC)) - _EPOCH
    # Whole fields, not ``since // timedelta(milliseconds=1)``: the same floor, a third of the time.
    return since.days * 86_400_000 + since.seconds * 1000 + since.microseconds // 1000


@lru_cache(maxsize=4096)
def _month_of_day(day: int) -> tuple[str, int]:
    """The UTC month of an epoch day and the epoch ms its next month starts at."""
    when = time.gmtime(day * 86_400)
    year, month = (when.tm_year, when.tm_mon + 1) if when.tm_mon < 12 else (when.tm_year + 1, 1)
    return f"{when.tm_year:04d}-{when.tm_mon:02d}", calendar.timegm((year, month, 1, 0, 0, 0)) * 1000


def month_of(at_ms: int) -> str:
    """The UTC month ``YYYY-MM`` of an epoch-millisecond time."""
    return _month_of_day(at_ms // 86_400_000)[0]


def micros(cost: float) -> int:
    """A cost in units of the billing currency as integer micro-units (rounded half to even)."""
    return round(cost * MICROS)


@dataclass(frozen=True)
class QuotaExceeded:
    """A command refused by a quota: which one, its limit, the usage before the command, and
    what the command would have added."""

    quota: str
    limit: int
    usage: int
    requested: int = 1

    @property
    def message(self) -> str:
        """A sentence for a person."""
        return f"quota {self.quota} exceeded: usage {self.usage} + {self.requested} would pass the limit {self.limit}"


@dataclass(frozen=True, slots=True)
class TaskHold:
    """An unfinished task as the quota sees it: its agent, its reservation, whether it holds a slot."""

    agent_id: str
    reserved_micros: int = 0
    slot: bool = True


class QuotaState(BaseModel):
    """One tenant's quota row: plan, own limits, usage. Plain data; ``dump``/``load`` go through JSON."""

    model_config = ConfigDict(frozen=True)

    plan: str = "free"
    #: Limits the tenant set with SetTenantQuota (name -> value); the plan gives the rest.
    overrides: dict[str, int] = Field(default_factory=dict)
    agents: int = 0
    tasks: dict[str, TaskHold] = Field(default_factory=dict)
    #: Totals over ``tasks`` (slots held, micros reserved), kept with them so a check is O(1).
    slots: int = 0
    reserved: int = 0
    #: Accepted commands per minute bucket: [[bucket, count], ...], oldest first, at most 61.
    rate: list[tuple[int, int]] = Field(default_factory=list)
    #: The latest command time seen (ms); earlier times count as this one.
    last_at_ms: int = 0
    stored_bytes: int = 0
    #: The UTC month ``spent_micros`` belongs to.
    month: str = ""
    spent_micros: int = 0

    @property
    def concurrent_tasks(self) -> int:
        """Tasks holding a slot."""
        return self.slots

    @property
    def reserved_micros(self) -> int:
        """Cost reserved by unfinished tasks."""
        return self.reserved

    def spent_in(self, at_ms: int) -> int:
        """Spend of the month of ``at_ms`` (0 when the row's month is an earlier one)."""
        return _spent_in(self.month, self.spent_micros, at_ms)

    def rate_count(self, at_ms: int) -> int:
        """Accepted commands counted for a decision at ``at_ms`` (the 61 buckets ending with its minute)."""
        return _rate_count(self.rate, self.last_at_ms, at_ms)

    def usage(self, at: datetime) -> dict[str, int]:
        """Usage of every quota at ``at``, by quota name (for reports and the CLI)."""
        at_ms = to_ms(at)
        return {
            "max_agents": self.agents,
            "max_concurrent_tasks": self.concurrent_tasks,
            "api_rate_per_hour": self.rate_count(at_ms),
            "storage_limit_bytes": self.stored_bytes,
            "monthly_budget_micros": self.spent_in(at_ms) + self.reserved_micros,
        }


def dump(state: QuotaState) -> dict[str, Any]:
    """The row as JSON-ready data."""
    return state.model_dump(mode="json")


def row_data(state: QuotaState) -> Mapping[str, Any]:
    """The row as the table keeps it, without a copy: the state's own fields (never mutate them).

    The row is copied per command, so it is not dumped per command: orjson, which writes table
    rows, writes these fields as ``dump`` does (``TaskHold`` dataclasses as objects, rate pairs as
    arrays), and ``load`` reads either form. A unit test holds the two equal.
    """
    return state.__dict__


def load(data: Mapping[str, Any] | None) -> QuotaState:
    """The row from ``dump``'s data (a fresh row for None)."""
    return QuotaState() if data is None else QuotaState.model_validate(data)


def limits_of(state: QuotaState | QuotaLedger, plans: QuotaPlans) -> QuotaLimits:
    """The tenant's effective limits: its plan's defaults overlaid by its own."""
    base = plans.plans.get(state.plan) or plans.limits("free")
    return base.model_copy(update=state.overrides) if state.overrides else base


def with_defaults(command: Command, limits: QuotaLimits) -> Command:
    """``command`` with ``AssignTask``'s missing ``max_cost`` and ``start_within_s`` taken from ``limits``."""
    if command.type != "AssignTask":
        return command
    data = command.data
    if data.get("max_cost") is not None and data.get("start_within_s") is not None:
        return command
    data = dict(data)
    if data.get("max_cost") is None:
        data["max_cost"] = limits.task_max_cost_micros
    if data.get("start_within_s") is None:
        data["start_within_s"] = limits.task_start_within_s
    return Command(command.type, data, command.tenant_id, command.at)


def _rate_count(rate: list[tuple[int, int]], last_at_ms: int, at_ms: int) -> int:
    oldest = max(at_ms, last_at_ms) // BUCKET_MS - WINDOW_BUCKETS
    return sum(count for bucket, count in rate if bucket > oldest)


def _spent_in(month: str, spent_micros: int, at_ms: int) -> int:
    return spent_micros if month == month_of(at_ms) else 0


class QuotaLedger:
    """One tenant's quota row while commands change it: mutable, kept for a batch of commands.

    The rules live here, once: ``check`` reads the ledger, ``count`` and ``apply`` change it in
    place, ``admit`` does check-then-account. The module functions on an immutable
    ``QuotaState`` (``check``, ``count_command``, ``apply``, ``accept``, ``admit``) run the same
    methods on a ledger of that state and return ``state()``, so a shell that keeps one ledger
    per tenant for a batch decides exactly what command-by-command calls decide, without
    building a new row per command. A kept ledger also keeps what makes the common command O(1)
    (a property test holds a kept ledger to a fresh one per command).
    """

    __slots__ = (
        "plan", "overrides", "agents", "tasks", "slots", "reserved", "rate", "last_at_ms", "stored_bytes", "month", "spent_micros",
        "_own_tasks", "_bucket_end_ms", "_in_window", "_month_end_ms", "_limits", "_limits_plans",
    )

    def __init__(self, state: QuotaState) -> None:
        d = state.__dict__
        self.plan: str = d["plan"]
        self.overrides: dict[str, int] = d["overrides"]  # replaced, never changed in place
        self.agents: int = d["agents"]
        self.tasks: dict[str, TaskHold] = d["tasks"]  # copied before the first change (_own_tasks)
        self.slots: int = d["slots"]
        self.reserved: int = d["reserved"]
        self.rate: list[tuple[int, int]] = list(d["rate"])
        self.last_at_ms: int = d["last_at_ms"]
        self.stored_bytes: int = d["stored_bytes"]
        self.month: str = d["month"]
        self.spent_micros: int = d["spent_micros"]
        self._own_tasks = False
        # Kept so a command in the same minute as the last one counted is decided in O(1): while
        # last_at_ms and the command's time are both before _bucket_end_ms, the rate count is
        # _in_window (the list was pruned for that minute and only grew since); 0: not known.
        self._bucket_end_ms = 0
        self._in_window = 0
        # The month of last_at_ms ends here (0: not known), so the month is looked up once a month.
        self._month_end_ms = 0
        # limits_of(self, _limits_plans), until the plan or the tenant's own limits change (None: not known).
        self._limits: QuotaLimits | None = None
        self._limits_plans: QuotaPlans | None = None

    def state(self) -> QuotaState:
        """The ledger as an immutable row (the ledger may go on changing afterwards)."""
        self._own_tasks = False  # the row shares the tasks dict from now on
        fields = {
            "plan": self.plan, "overrides": self.overrides, "agents": self.agents, "tasks": self.tasks,
            "slots": self.slots, "reserved": self.reserved, "rate": list(self.rate), "last_at_ms": self.last_at_ms,
            "stored_bytes": self.stored_bytes, "month": self.month, "spent_micros": self.spent_micros,
        }
        new = QuotaState.__new__(QuotaState)
        object.__setattr__(new, "__dict__", fields)
        object.__setattr__(new, "__pydantic_fields_set__", set(fields))
        object.__setattr__(new, "__pydantic_extra__", None)
        object.__setattr__(new, "__pydantic_private__", None)
        return new

    def limits(self, plans: QuotaPlans) -> QuotaLimits:
        """The tenant's effective limits (``limits_of``), worked out again only when its plan or own limits change."""
        if self._limits_plans is not plans:
            self._limits, self._limits_plans = limits_of(self, plans), plans
        return self._limits  # type: ignore[return-value]

    def check(self, command: Command, limits: QuotaLimits, at_ms: int, append_bytes: int = 0) -> QuotaExceeded | None:
        """Why the quotas refuse ``command`` (see the module function ``check``), or None."""
        kind = command.type
        if kind in EXEMPT:
            return None
        end = self._bucket_end_ms
        count = self._in_window if at_ms < end and self.last_at_ms < end else _rate_count(self.rate, self.last_at_ms, at_ms)
        if count + 1 > limits.api_rate_per_hour:
            return QuotaExceeded("api_rate_per_hour", limits.api_rate_per_hour, count)
        if self.stored_bytes + append_bytes > limits.storage_limit_bytes:
            return QuotaExceeded("storage_limit_bytes", limits.storage_limit_bytes, self.stored_bytes, append_bytes)
        if kind == "CreateAgent" and self.agents + 1 > limits.max_agents:
            return QuotaExceeded("max_agents", limits.max_agents, self.agents)
        if kind == "AssignTask":
            if self.slots + 1 > limits.max_concurrent_tasks:
                return QuotaExceeded("max_concurrent_tasks", limits.max_concurrent_tasks, self.slots)
            max_cost = command.data.get("max_cost")
            cost = limits.task_max_cost_micros if max_cost is None else int(max_cost)
            committed = _spent_in(self.month, self.spent_micros, at_ms) + self.reserved
            if committed + cost > limits.monthly_budget_micros:
                return QuotaExceeded("monthly_budget_micros", limits.monthly_budget_micros, committed, cost)
        if kind == "ReassignTask":
            hold = self.tasks.get(command.data["task_id"])
            if hold is not None and not hold.slot and self.slots + 1 > limits.max_concurrent_tasks:
                return QuotaExceeded("max_concurrent_tasks", limits.max_concurrent_tasks, self.slots)
        return None

    def roll(self, at_ms: int) -> None:
        """Move the row's clock to ``at_ms`` (later only) and start a new month's spend."""
        if at_ms > self.last_at_ms:
            self.last_at_ms = at_ms
        if self.last_at_ms >= self._month_end_ms:
            month, self._month_end_ms = _month_of_day(self.last_at_ms // 86_400_000)
            if month > self.month:
                self.month, self.spent_micros = month, 0

    def count(self, at_ms: int, append_bytes: int = 0, rated: bool = True) -> None:
        """Count one accepted command at ``at_ms`` in the rate (unless not ``rated``); store its bytes."""
        self.roll(at_ms)
        rate = self.rate
        if rated and self.last_at_ms < self._bucket_end_ms:  # the minute of the last count: nothing left the window
            rate[-1] = (rate[-1][0], rate[-1][1] + 1)
            self._in_window += 1
        else:
            now = self.last_at_ms // BUCKET_MS
            if rate and rate[0][0] <= now - WINDOW_BUCKETS:
                rate[:] = [(bucket, count) for bucket, count in rate if bucket > now - WINDOW_BUCKETS]
            if rated:
                if rate and rate[-1][0] == now:
                    rate[-1] = (now, rate[-1][1] + 1)
                else:
                    rate.append((now, 1))
                self._in_window = sum(count for _, count in rate)
                self._bucket_end_ms = (now + 1) * BUCKET_MS
        self.stored_bytes += append_bytes

    def _hold(self, task_id: str, hold: TaskHold | None) -> None:
        """Put ``hold`` (None: remove) for ``task_id``, keeping the slot and reservation totals."""
        if not self._own_tasks:
            self.tasks, self._own_tasks = dict(self.tasks), True
        old = self.tasks.pop(task_id, None)
        if old is not None:
            self.slots -= old.slot
            self.reserved -= old.reserved_micros
        if hold is not None:
            self.tasks[task_id] = hold
            self.slots += hold.slot
            self.reserved += hold.reserved_micros

    def apply(self, event: Event, at_ms: int) -> None:
        """Account an accepted ``event`` that happened at ``at_ms`` (other event types: the clock only)."""
        self.roll(at_ms)
        if event.type in QUOTA_EVENTS:
            self._apply(event)

    def _apply(self, event: Event) -> None:
        data, kind = event.data, event.type
        if kind == "TenantCreated":
            self.plan, self._limits_plans = data.get("plan", "free"), None
        elif kind == "TenantQuotaSet":
            self.overrides = {**self.overrides, **{k: int(v) for k, v in data.items() if v is not None and k in QuotaLimits.FIELDS}}
            self._limits_plans = None
        elif kind == "AgentCreated":
            self.agents += 1
        elif kind == "TaskAssigned":
            self._hold(data["task_id"], TaskHold(data["agent_id"], int(data.get("max_cost") or 0)))
        elif kind == "TaskReassigned":
            held = self.tasks.get(data["task_id"])
            if held is not None:
                self._hold(data["task_id"], replace(held, agent_id=data["agent_id"], slot=True))
        elif kind in ("TaskCompleted", "TaskFailed"):
            self._hold(data["task_id"], None)
            self.spent_micros += micros(float(data.get("cost") or 0.0))
        elif kind == "AgentStopped":
            agent = data["agent_id"]
            for task_id, hold in list(self.tasks.items()):
                if hold.agent_id == agent and hold.slot:
                    self._hold(task_id, replace(hold, slot=False))

    def admit(self, command: Command, events: Iterable[Event], limits: QuotaLimits, at_ms: int, append_bytes: int = 0) -> QuotaExceeded | None:
        """Check, then account the command and its events: the refusal (nothing changed), or None."""
        refused = self.check(command, limits, at_ms, append_bytes)
        if refused is not None:
            return refused
        self.count(at_ms, append_bytes, command.type not in EXEMPT)  # rolls the clock to at_ms
        for event in events:
            if event.type in QUOTA_EVENTS:  # the others change nothing once the clock has rolled
                self._apply(event)
        return None


def check(command: Command, state: QuotaState, limits: QuotaLimits, at: datetime, append_bytes: int = 0) -> QuotaExceeded | None:
    """Why the quotas refuse ``command`` (its events taking ``append_bytes``) at ``at``, or None.

    Checked in this order, the first that fails is reported: the hourly rate, storage, then the
    quota of the command's own kind (``CreateAgent``: agents; ``AssignTask``: slots, then
    budget with its ``max_cost``; ``ReassignTask`` of a task whose slot was freed: slots).
    """
    return QuotaLedger(state).check(command, limits, to_ms(at), append_bytes)


def count_command(state: QuotaState, at: datetime, append_bytes: int = 0, rated: bool = True) -> QuotaState:
    """The row with one accepted command at ``at``: counted in the rate (unless not ``rated``) and its bytes stored."""
    ledger = QuotaLedger(state)
    ledger.count(to_ms(at), append_bytes, rated)
    return ledger.state()


def apply(state: QuotaState, event: Event, at: datetime) -> QuotaState:
    """The row after an accepted ``event`` that happened at ``at`` (other event types: the clock only)."""
    ledger = QuotaLedger(state)
    ledger.apply(event, to_ms(at))
    return ledger.state()


def accept(state: QuotaState, at: datetime, events: Iterable[Event], append_bytes: int = 0, rated: bool = True) -> QuotaState:
    """The row after a command accepted at ``at`` that appended ``events`` (``append_bytes`` in all).

    ``rated=False`` for commands outside the rate (``EXEMPT``): their bytes still count.
    """
    ledger = QuotaLedger(state)
    at_ms = to_ms(at)
    ledger.count(at_ms, append_bytes, rated)
    for event in events:
        ledger.apply(event, at_ms)
    return ledger.state()


def admit(
    command: Command, events: list[Event], state: QuotaState, limits: QuotaLimits, at: datetime, append_bytes: int = 0
) -> QuotaExceeded | QuotaState:
    """Check, then account: the refusal, or the row after the accepted command and its events."""
    ledger = QuotaLedger(state)
    refused = ledger.admit(command, events, limits, to_ms(at), append_bytes)
    return refused if refused is not None else ledger.state()


def roundtrip(state: QuotaState) -> QuotaState:
    """``state`` through JSON text and back (what a changelog does to it); for tests and the shell."""
    return load(json.loads(json.dumps(dump(state))))
