"""The usage record of ``billing.usage``: one metered unit, as the billing agent emits it and the sink loads it.

It is the platform's ``BillingEvent`` as it travels to billing: JSON (like ``facts.tasks``), not the
Avro ``BillingEvent`` v1 of the event store, because billing needs what that record lacks - the
tenant, an idempotency key and an exact integer quantity (v1's ``quantity`` is a double) - and
``billing.usage`` is a derived topic the ClickHouse sink loads, not part of the store of record.

``key`` is ``<causing event id>:<metric>``: the same event always yields the same keys, so a
record is identified by what caused it, whoever meters it and however often.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Metric = Literal["task_cost", "failed_task_cost", "tokens", "agent_runtime", "storage"]

#: The unit of each metric; quantities are integers in it.
UNITS: dict[str, str] = {
    "task_cost": "micros",
    "failed_task_cost": "micros",
    "tokens": "tokens",
    "agent_runtime": "ms",
    "storage": "bytes",
}
#: Metrics whose quantity is money (micro-units of the billing currency): an invoice charges them.
CHARGED = frozenset({"task_cost", "failed_task_cost"})


class UsageRecord(BaseModel):
    """One metered unit of one tenant, caused by one event (``key`` = event id + metric)."""

    model_config = ConfigDict(frozen=True)

    key: str
    tenant: str
    metric: Metric
    unit: str
    quantity: int = Field(ge=0)
    #: UTC month ``YYYY-MM`` of the causing event: the invoice it belongs to.
    month: str
    event_id: str
    event_type: str
    stream_id: str
    occurred_at: datetime

    @staticmethod
    def key_of(event_id: str, metric: str) -> str:
        """The idempotency key of ``metric`` metered from the event ``event_id``."""
        return f"{event_id}:{metric}"
