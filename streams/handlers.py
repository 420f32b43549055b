"""The command handler agent: the thin Faust shell around ``CommandProcessor``.

For each command it reads the aggregate from the ``aggregates`` table, lets the pure core
decide, then appends the events and updates the table (both commit with the command's offset in
the worker's Kafka transaction: exactly once; see ``streams.faust_fixes``), writes a snapshot
every ``SNAPSHOT_EVERY`` versions, answers on the results topic and, for malformed input, keeps
the original bytes on the dead-letter topic with the reason. Faust sends those last three
outside the transaction (the worker does not consume their topics), so after a crash they may
appear twice (see docs/architecture.md). A retried command id gets its first answer again and
writes nothing else.
"""

from __future__ import annotations

import logging

import faust

from schemas import default_registry
from streams.app import agent_tables, app, settings, topology
from streams.command_processor import CommandProcessor, Outcome
from streams.domain import AGGREGATES
from streams.faust_fixes import exactly_once, transactional_table
from schemas.messages import ERROR_HEADER, REASON_HEADER, Snapshot

log = logging.getLogger(__name__)

COMMANDS = "commands.platform"
EVENTS = "events.platform"
RESULTS = "results.commands"
DEADLETTER = "deadletter.commands"


def _topic(name: str) -> faust.TopicT:
    spec = topology.topic(name)
    return app.topic(name, partitions=spec.partitions, key_serializer="raw", value_serializer="raw")


commands_topic = _topic(COMMANDS)
events_topic = _topic(EVENTS)
results_topic = _topic(RESULTS)
deadletter_topic = _topic(DEADLETTER)
snapshot_topics = {aggregate.name: _topic(Snapshot.topic_for(aggregate.name)) for aggregate in AGGREGATES}

aggregates = transactional_table(
    app,
    "aggregates",
    default=None,
    partitions=topology.table_partitions("aggregates"),
    key_type=str,  # JSON keys: the changelog is read back with the same serializer on recovery
    help="Aggregate state and version per tenant/stream.",
)

processor = CommandProcessor(default_registry(), max_bytes=settings.max_command_bytes)


async def _write(outcome: Outcome, key: bytes | None, value: bytes | None, headers: list) -> None:
    tenant_key = outcome.result.tenant_id.encode() if outcome.result else key
    # Sends first, table last: if a send fails, the local table has not moved ahead of what the
    # abandoned transaction would have committed.
    for event in outcome.events:
        await events_topic.send(key=tenant_key, value=event.value, headers=event.headers)
    if outcome.snapshot is not None:
        snapshot = outcome.snapshot
        await snapshot_topics[snapshot.aggregate].send(key=snapshot.key, value=snapshot.model_dump_json().encode())
    if outcome.dead_letter is not None:
        reasons = [(REASON_HEADER, outcome.dead_letter.encode()), (ERROR_HEADER, (outcome.error or "").encode()[:4000])]
        await deadletter_topic.send(key=key, value=value, headers=list(headers) + reasons)
        log.warning("command dead-lettered (%s): %s", outcome.dead_letter, outcome.error)
    if outcome.result is not None:
        await results_topic.send(key=outcome.result.command_id.encode(), value=outcome.result.model_dump_json().encode())
    if outcome.state_key is not None:
        await aggregates.write(outcome.state_key, outcome.new_state)


agent_tables["command_handler"] = [aggregates.name]


@app.agent(commands_topic, name="command_handler")
async def command_handler(stream: faust.StreamT) -> None:
    """Decide every command of the partitions this worker owns; never stop on bad input."""
    async for event in stream.events():
        message = event.message
        headers = list(message.headers or [])
        async with exactly_once(event) as current:
            if not current:
                continue
            outcome = processor.process(message.key, message.value, headers, aggregates.get, position=(message.partition, message.offset))
            await _write(outcome, message.key, message.value, headers)
