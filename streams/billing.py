"""Metering and invoices (pure): which usage records an event causes, and a month's invoice from them.

``meter`` turns one event of ``events.platform`` into its usage records (``schemas.billing``):

- every event: ``storage``, the bytes of its encoded payload (what the storage quota counts);
- ``TaskCompleted``: ``task_cost`` (its cost in micro-units, as the quota settles it), and
  ``tokens`` when the task's output reports them (``output["tokens"]``, a whole number);
- ``TaskFailed``: ``failed_task_cost`` (a failed task's cost is spent too);
- ``AgentStopped``: ``agent_runtime``, milliseconds from the ``AgentStarted`` before it.

The start times live in a context table keyed within the tenant (``<tenant>/agent/<id>``), which
``meter`` reads and updates; the runtime agent in ``streams.billing_agent`` keeps it and commits
the records, the table and the offsets together. Each record's key is the causing event's id and
the metric, so the records of an event are the same whenever it is metered.

``invoice`` sums a month's usage per metric: charged metrics (money) are lines with an amount,
the others are lines with a quantity and no charge. Integers throughout: the total is exact.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from pydantic import BaseModel

from schemas.billing import CHARGED, UNITS, UsageRecord
from schemas.messages import EventMeta
from streams.domain.quotas import micros, month_of, to_ms

#: The events whose payload ``meter`` reads (others meter storage from their size alone).
DECODED_EVENTS = frozenset({"TaskCompleted", "TaskFailed", "AgentStarted", "AgentStopped"})


def agent_key(tenant: str, agent_id: str) -> str:
    """Context key of a running agent's start time."""
    return f"{tenant}/agent/{agent_id}"


def _record(meta: EventMeta, event_type: str, metric: str, quantity: int) -> UsageRecord:
    return UsageRecord(
        key=UsageRecord.key_of(meta.event_id, metric), tenant=meta.tenant_id, metric=metric, unit=UNITS[metric],  # type: ignore[arg-type]
        quantity=quantity, month=month_of(to_ms(meta.occurred_at)), event_id=meta.event_id, event_type=event_type,
        stream_id=meta.stream_id, occurred_at=meta.occurred_at,
    )


def reported_tokens(output: Mapping[str, Any] | None) -> int | None:
    """The tokens a task's output reports (``"tokens"``, a whole number >= 0), else None."""
    raw = (output or {}).get("tokens")
    try:
        value = int(str(raw).strip())
    except ValueError:
        return None
    return value if value >= 0 else None


def meter(
    event_type: str, data: Mapping[str, Any] | None, meta: EventMeta, size: int, context: Mapping[str, Any]
) -> tuple[dict[str, Any | None], list[UsageRecord]]:
    """(context changes, usage records) of one event of ``size`` payload bytes; a change to None deletes.

    ``data`` is the decoded payload for the events of ``DECODED_EVENTS`` (None for others).
    """
    records = [_record(meta, event_type, "storage", size)]
    changes: dict[str, Any | None] = {}
    if data is None:
        return changes, records
    if event_type == "TaskCompleted":
        records.append(_record(meta, event_type, "task_cost", micros(float(data.get("cost") or 0.0))))
        tokens = reported_tokens(data.get("output"))
        if tokens is not None:
            records.append(_record(meta, event_type, "tokens", tokens))
    elif event_type == "TaskFailed":
        records.append(_record(meta, event_type, "failed_task_cost", micros(float(data.get("cost") or 0.0))))
    elif event_type == "AgentStarted":
        changes[agent_key(meta.tenant_id, data["agent_id"])] = to_ms(meta.occurred_at)
    elif event_type == "AgentStopped":
        key = agent_key(meta.tenant_id, data["agent_id"])
        started = context.get(key)
        if started is not None:
            records.append(_record(meta, event_type, "agent_runtime", max(0, to_ms(meta.occurred_at) - int(started))))
            changes[key] = None
    return changes, records


class InvoiceLine(BaseModel):
    """One metric of a month: how much was used and what it costs (0 for uncharged metrics)."""

    metric: str
    unit: str
    quantity: int
    records: int
    amount_micros: int


class Invoice(BaseModel):
    """A tenant's month: its lines and their total, in integer micro-units."""

    tenant: str
    month: str
    lines: list[InvoiceLine]
    total_micros: int


def invoice(tenant: str, month: str, usage: Iterable[tuple[str, str, int, int]]) -> Invoice:
    """The invoice from ``(metric, unit, quantity, records)`` sums of the month's usage (any order)."""
    lines = [
        InvoiceLine(metric=metric, unit=unit, quantity=int(quantity), records=int(count), amount_micros=int(quantity) if metric in CHARGED else 0)
        for metric, unit, quantity, count in sorted(usage)
    ]
    return Invoice(tenant=tenant, month=month, lines=lines, total_micros=sum(line.amount_micros for line in lines))
