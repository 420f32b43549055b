"""The ``facts_builder`` agent: one task fact per finished task, from the events, exactly once.

The joins it needs (agent type and region from AgentCreated, start time from TaskAssigned) live
in the ``task_context`` table, co-partitioned with ``events.platform`` (both keyed by tenant).
The runtime commits the facts, the table's changed rows and the events' offsets in one Kafka
transaction, so ``facts.tasks`` holds each fact once, even across crashes; the ClickHouse sink
(``agentstream sink``) loads it. The join itself is pure (``streams.facts``).
"""

from __future__ import annotations

import logging

import orjson

from schemas import SCHEMA_HEADER, SchemaError, default_registry
from schemas.messages import EnvelopeError, EventMeta
from schemas.topics import EVENTS, FACTS
from streams.facts import FOLDED_EVENTS, fold
from streams.runtime import AgentContext, Batch, Outputs, ProcessorBase, RuntimeAgent

log = logging.getLogger(__name__)
_FOLDED = {name.encode() for name in FOLDED_EVENTS}


class FactsBuilder(ProcessorBase):
    """Folds each event into the context table; sends a fact when a task finishes."""

    def __init__(self, context: AgentContext) -> None:
        self.registry = default_registry()

    def process(self, batch: Batch, out: Outputs) -> None:
        """Fold the batch's events in order."""
        context = batch.tables["task_context"]
        for message in batch.messages:
            headers = message.headers() or []
            schema = next((v for k, v in headers if k == SCHEMA_HEADER), None)
            if schema is not None and schema not in _FOLDED:
                continue  # an event no fact needs: skip decoding it
            try:
                name, data = self.registry.decode_record(message.value(), headers)
                meta = EventMeta.from_headers(headers)
            except (SchemaError, EnvelopeError) as exc:
                log.warning("facts_builder: skipping unreadable event at %s:%s: %s", message.partition(), message.offset(), exc)
                continue
            changes, fact = fold(name, data, meta, context)
            for key, value in changes.items():
                context.put(key, value)
            if fact is not None:
                out.send(FACTS, meta.tenant_id.encode(), orjson.dumps(fact))


AGENT = RuntimeAgent(
    name="facts_builder",
    inputs=(EVENTS,),
    tables=("task_context",),
    build=FactsBuilder,
    description="Joins agent, assignment and end events into one task fact per finished task, exactly once.",
)
