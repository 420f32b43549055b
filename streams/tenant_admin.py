"""What the platform knows of its tenants, read from the command side's committed state (for the CLI).

The command handler keeps each tenant's stream row (``<tenant>/tenant``) and quota row
(``<tenant>/quota``) in the ``aggregates`` table, whose compacted changelog topic holds every
committed row. ``read_tenants`` reads that topic ``read_committed`` to its end (only the tenant's
own partition when one tenant is asked for: rows are partitioned like the commands, by tenant),
so what it reports is what the next command of the tenant is decided against - exact, not a
projection. Usage against limits is computed by the pure quota core (``streams.domain.quotas``).
``read_invoice`` sums a tenant's month from the ClickHouse usage table (``streams.billing.invoice``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from connectors.kafka_config import confluent_config
from schemas.settings import Settings
from schemas.topology import QuotaLimits, QuotaPlans, Topology
from schemas.topics import COMMANDS
from streams.domain import quotas
from streams.domain.tenants import TenantState
from streams.runtime import KeyPartitioner
from streams.runtime.tables import changelog_topic
from sinks.billing_usage import month_usage_sql, usage_table
from streams.billing import Invoice, invoice

if TYPE_CHECKING:
    from sinks.query_client import QueryClient

AGGREGATES = "aggregates"


@dataclass
class TenantInfo:
    """A tenant's stream state (None if it never sent CreateTenant) and its quota row."""

    tenant_id: str
    state: TenantState | None = None
    version: int = 0
    quota: quotas.QuotaState = field(default_factory=quotas.QuotaState)

    def limits(self, plans: QuotaPlans) -> QuotaLimits:
        """The tenant's effective limits under ``plans``."""
        return quotas.limits_of(self.quota, plans)

    def usage(self, plans: QuotaPlans, at: datetime) -> list[dict[str, Any]]:
        """Per quota: name, usage at ``at``, limit and the share of the limit used (percent)."""
        limits, used = self.limits(plans), self.quota.usage(at)
        rows = []
        for name in quotas.QUOTAS:
            limit = getattr(limits, name)
            rows.append({"quota": name, "usage": used[name], "limit": limit, "percent": round(100 * used[name] / limit, 1) if limit else None})
        return rows


def read_tenants(settings: Settings, topology: Topology, tenant: str | None = None, timeout_s: float = 60.0) -> dict[str, TenantInfo]:
    """Every tenant with a tenant or quota row (or just ``tenant``), read from the aggregates changelog."""
    topic = changelog_topic(settings.app_id, AGGREGATES)
    partitions = topology.topic(COMMANDS).partitions
    wanted = [KeyPartitioner(partitions)(tenant.encode())] if tenant is not None else list(range(partitions))
    consumer = Consumer(
        {
            **confluent_config(settings),
            "group.id": f"{topic}-admin-read",  # never joins: partitions are assigned, nothing committed
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
        }
    )
    rows: dict[str, Any] = {}
    try:
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in wanted])
        waiting = set(wanted)
        deadline = datetime.now().timestamp() + timeout_s
        while waiting and datetime.now().timestamp() < deadline:
            for message in consumer.consume(10_000, timeout=0.5):
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        waiting.discard(message.partition())
                    elif error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                        return {}  # no worker has run yet: no tenant has state
                    elif error.fatal():
                        raise KafkaException(error)
                    continue
                key = message.key().decode()
                if not key.endswith(("/tenant", f"/{quotas.QUOTA_ROW}")) or (tenant is not None and not key.startswith(f"{tenant}/")):
                    continue
                value = message.value()
                if value is None:
                    rows.pop(key, None)
                else:
                    rows[key] = orjson.loads(value)
        if waiting:
            raise TimeoutError(f"could not read {topic} partitions {sorted(waiting)} to their end within {timeout_s:.0f}s")
    finally:
        consumer.close()
    found: dict[str, TenantInfo] = {}
    for key, row in rows.items():
        tenant_id, _, stream = key.rpartition("/")
        info = found.setdefault(tenant_id, TenantInfo(tenant_id))
        if stream == "tenant":
            info.version = int(row.get("version") or 0)
            info.state = TenantState.model_validate(row["state"]) if row.get("state") else None
        else:
            info.quota = quotas.load(row.get("state"))
    return dict(sorted(found.items()))


def read_invoice(queries: "QueryClient", topology: Topology, tenant: str, month: str) -> Invoice:
    """The invoice of ``tenant`` for ``month`` from the ClickHouse usage table (LookupError if none is declared)."""
    table = usage_table(topology)
    if table is None:
        raise LookupError("topology.yaml declares no ClickHouse sink of billing.usage")
    result = queries.sql_table(month_usage_sql(table, tenant, month))
    return invoice(tenant, month, zip(*(result.column(n).to_pylist() for n in ("metric", "unit", "quantity", "records"))))
