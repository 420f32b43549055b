"""The ``command_handler`` agent: the thin runtime shell around ``CommandProcessor``.

For each command of a batch it lets the pure processor decide against the ``aggregates`` table,
then sends the events (to the command's own partition of the event store), the result, a
snapshot every ``SNAPSHOT_EVERY`` versions and, for malformed input, the original bytes with the
reason to the dead-letter topic, and changes the table. The runtime commits all of that with
the command's offset in one Kafka transaction: every command is decided once and answered once,
even across crashes. A retried command id gets its first answer again and writes nothing else.
With quotas on (``AGENTSTREAM_QUOTAS_ENABLED``, plans from ``topology.yaml``) an accepted command
also changes the tenant's quota row ``<tenant>/quota`` in the same table and partition, so the
check and the decision it guards commit together (counted into one ledger per tenant for the
batch, written once at its end).

**One writer per tenant, whatever the producer's partitioner.** Commands are keyed by tenant and
the tenant's partition is murmur2(tenant) (Java clients and aiokafka). A command that another
partitioner (librdkafka's CRC32 default) put elsewhere is not decided where it landed: it is
forwarded, in the same transaction as that partition's offset, to the tenant's own partition of
an internal repartition topic, which this agent also consumes, co-partitioned with the commands
(as Kafka Streams repartitions). So one partition owner decides for a tenant.
"""

from __future__ import annotations

import logging

from schemas import default_registry
from schemas.messages import ERROR_HEADER, REASON_HEADER, CommandRejected, Snapshot
from schemas.topics import COMMANDS, DEADLETTER, EVENTS, RESULTS
from streams.command_processor import CommandProcessor, Outcome
from streams.domain import RejectionCode
from streams.runtime import AgentContext, Batch, KeyPartitioner, Outputs, ProcessorBase, RuntimeAgent

log = logging.getLogger(__name__)

#: The internal topic that carries commands to their tenant's partition (created by the worker).
REPARTITION = "agentstream-command_handler-repartition"


class CommandHandler(ProcessorBase):
    """Decides the commands of a partition batch and sends what they cause."""

    def __init__(self, context: AgentContext) -> None:
        settings = context.settings
        cubes = {cube.name: cube for cube in context.topology.cubes}
        plans = context.topology.quotas if settings.quotas_enabled else None
        self.processor = CommandProcessor(default_registry(), max_bytes=settings.max_command_bytes, declarations={"cubes": cubes}, plans=plans)
        self.owner = KeyPartitioner(context.topology.topic(COMMANDS).partitions)
        self.max_record = settings.kafka_max_record_bytes - 16 * 1024  # room for the key and the envelope headers

    def process(self, batch: Batch, out: Outputs) -> None:
        """Decide each command in offset order against the batch's view of the aggregates."""
        aggregates = batch.tables["aggregates"]
        partition = batch.partition
        source = f"{batch.topic}[{partition}]"
        self.processor.begin_batch()
        for message in batch.messages:
            key = message.key()
            value = message.value()
            headers = message.headers() or []
            if key is not None and batch.topic == COMMANDS:
                owner = self.owner(key)
                if owner != partition:
                    out.send(REPARTITION, key, value, headers, partition=owner)
                    continue
            outcome = self.processor.process(key, value, headers, aggregates.get, position=(source, message.offset()))
            if outcome.redelivered:
                continue
            self._write(outcome, key, value, headers, partition, out, aggregates)
        for row_key, row in self.processor.finish_batch().items():  # quota rows: once per tenant and batch
            aggregates.put(row_key, row)

    def _write(self, outcome: Outcome, key: bytes | None, value: bytes | None, headers: list, partition: int, out: Outputs, aggregates) -> None:
        result = outcome.result
        result_json = result.model_dump_json().encode() if result is not None else None
        snapshot_json = outcome.snapshot.model_dump_json().encode() if outcome.snapshot is not None else None
        too_big = max([len(e.value) for e in outcome.events] + [len(result_json or b""), len(snapshot_json or b"")])
        if too_big > self.max_record and result is not None:
            # The broker would refuse it: reject the command instead, keep it as a dead letter, change nothing.
            message = f"handling the command would write a record of {too_big} bytes, over the limit of {self.max_record}"
            result = CommandRejected(
                command_id=result.command_id, tenant_id=result.tenant_id, code=RejectionCode.VALIDATION_FAILED.value, message=message, current_version=None
            )
            outcome = Outcome(result=result, dead_letter="oversize-output", error=message)
            result_json, snapshot_json = result.model_dump_json().encode(), None
        tenant_key = result.tenant_id.encode() if result is not None else key
        for event in outcome.events:
            out.send(EVENTS, tenant_key, event.value, event.headers, partition=partition)
        if snapshot_json is not None:
            snapshot: Snapshot = outcome.snapshot  # type: ignore[assignment]
            out.send(Snapshot.topic_for(snapshot.aggregate), snapshot.key, snapshot_json)
        if outcome.dead_letter is not None:
            reasons = [(REASON_HEADER, outcome.dead_letter.encode()), (ERROR_HEADER, (outcome.error or "").encode()[:4000])]
            out.send(DEADLETTER, key, value, list(headers) + reasons)
            log.warning("command dead-lettered (%s): %s", outcome.dead_letter, outcome.error)
        if result_json is not None:
            out.send(RESULTS, result.command_id.encode(), result_json)  # type: ignore[union-attr]
        if outcome.state_key is not None:
            aggregates.put(outcome.state_key, outcome.new_state)


AGENT = RuntimeAgent(
    name="command_handler",
    inputs=(COMMANDS,),
    tables=("aggregates",),
    build=CommandHandler,
    internal_topics={REPARTITION: COMMANDS},
    deadletter=DEADLETTER,
    description="Decides commands against aggregate state; emits events and one result per command, exactly once.",
)
