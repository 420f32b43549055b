"""The ``facts_builder`` agent: one task fact per finished task, from the events, exactly once.

The joins it needs (agent type and region from AgentCreated, start time from TaskAssigned) live
in the ``task_context`` table, co-partitioned with ``events.platform`` (both keyed by tenant).
The facts and the table changelog commit in one Kafka transaction with the event's offset
(``streams.faust_fixes``) or before it (the projector shares the partition, and the offset moves
when both agents are done); a checkpoint per partition in the table skips events folded already.
So ``facts.tasks`` holds each fact once, even across crashes; the ClickHouse sink
(``agentstream sink``) loads it.
"""

from __future__ import annotations

import json
import logging

import faust

from schemas import SchemaError, default_registry
from streams.app import agent_tables, app, topology
from streams.facts import already_folded, checkpoint_key, fold
from streams.faust_fixes import exactly_once, send_in_event_transaction, transactional_table
from streams.handlers import events_topic
from schemas.messages import EnvelopeError, EventMeta

log = logging.getLogger(__name__)

FACTS = "facts.tasks"

# Declared so the worker creates the topic; facts are sent with send_in_event_transaction.
facts_topic = app.topic(FACTS, partitions=topology.topic(FACTS).partitions, key_serializer="raw", value_serializer="raw")
task_context = transactional_table(
    app,
    "task_context",
    default=None,
    partitions=topology.table_partitions("task_context"),
    key_type=str,
    help="Agents (type, region) and open tasks (agent, start) per tenant, for the task facts.",
)
agent_tables["facts_builder"] = [task_context.name]
registry = default_registry()


@app.agent(events_topic, name="facts_builder")
async def facts_builder(stream: faust.StreamT) -> None:
    """Fold each event into the context table; emit a fact when a task finishes."""
    async for event in stream.events():
        message = event.message
        try:
            name, payload = registry.decode(message.value, message.headers)
            meta = EventMeta.from_headers(message.headers)
        except (SchemaError, EnvelopeError) as exc:
            log.warning("facts_builder: skipping unreadable event at %s:%s: %s", message.partition, message.offset, exc)
            continue
        async with exactly_once(event) as current:
            if not current:
                continue
            if already_folded(task_context, message.partition, message.offset):
                continue  # folded before a crash; its offset had not committed yet
            changes, fact = fold(name, payload.model_dump(), meta, task_context)
            if fact is not None:
                await send_in_event_transaction(app, FACTS, meta.tenant_id.encode(), json.dumps(fact).encode())
            if changes or fact is not None:
                for key, value in changes.items():
                    await task_context.write(key, value)
                await task_context.write(checkpoint_key(message.partition), message.offset)
