"""The ``billing`` agent: every metered unit of the events as one usage record on ``billing.usage``, exactly once.

It reads ``events.platform`` in its own consumer group and keeps the ``billing_context`` table
(running agents' start times), co-partitioned with the events (both keyed by tenant). The
runtime commits the usage records, the table's changed rows and the events' offsets in one
Kafka transaction, so a crashed worker's redone events meter nothing twice; each record also
carries an idempotency key (causing event id + metric) for anyone downstream. The ClickHouse
sink loads the topic into the usage table that invoices are read from. What is metered is
pure (``streams.billing``); only the four events it needs are decoded, the others are metered
from their size and envelope.
"""

from __future__ import annotations

import logging

from schemas import SCHEMA_HEADER, SchemaError, default_registry
from schemas.messages import EnvelopeError, EventMeta
from schemas.topics import BILLING, EVENTS
from streams.billing import DECODED_EVENTS, meter
from streams.runtime import AgentContext, Batch, Outputs, ProcessorBase, RuntimeAgent

log = logging.getLogger(__name__)
_DECODED = {name.encode() for name in DECODED_EVENTS}


class BillingMeter(ProcessorBase):
    """Meters each event of a batch into usage records; keeps agents' start times in the table."""

    def __init__(self, context: AgentContext) -> None:
        self.registry = default_registry()

    def process(self, batch: Batch, out: Outputs) -> None:
        """Meter the batch's events in order."""
        context = batch.tables["billing_context"]
        for message in batch.messages:
            headers = message.headers() or []
            value = message.value() or b""
            schema = next((v for k, v in headers if k == SCHEMA_HEADER), None)
            try:
                meta = EventMeta.from_headers(headers)
                if schema in _DECODED:
                    name, data = self.registry.decode_record(value, headers)
                else:
                    name, data = (schema or b"").decode(errors="replace"), None
            except (SchemaError, EnvelopeError) as exc:
                log.warning("billing: skipping unreadable event at %s:%s: %s", message.partition(), message.offset(), exc)
                continue
            changes, records = meter(name, data, meta, len(value), context)
            for key, row in changes.items():
                context.put(key, row)
            tenant = meta.tenant_id.encode()
            for record in records:
                out.send(BILLING, tenant, record.model_dump_json().encode())


AGENT = RuntimeAgent(
    name="billing",
    inputs=(EVENTS,),
    tables=("billing_context",),
    build=BillingMeter,
    description="Meters task cost, tokens, agent running time and stored bytes into usage records on billing.usage, exactly once.",
)
