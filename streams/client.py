"""``CommandClient``: send a command to Kafka and await its result (async, with a sync wrapper).

The payload is validated against its Avro schema before anything is produced, so a bad
command fails here, with the schema's own words, and nothing reaches the topic.
"""

from __future__ import annotations

import asyncio
from typing import Any, Mapping

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from connectors.kafka_config import aiokafka_config
from connectors.kafka_topics import topic_partitions
from schemas import SchemaRegistry, UnknownSchema, default_registry
from schemas.messages import CommandAccepted, CommandMeta, CommandRejected, new_id, parse_result
from schemas.settings import Settings
from schemas.wire import bind

COMMANDS_TOPIC = "commands.platform"
RESULTS_TOPIC = "results.commands"

CommandOutcome = CommandAccepted | CommandRejected


class CommandTimeout(TimeoutError):
    """No result arrived for a sent command within the timeout (is a worker running?)."""


class CommandClient:
    """Produces commands keyed by tenant and awaits their results by command id.

    Use as ``async with CommandClient(settings) as client: await client.send(...)``. Results are
    read with ``read_committed`` from every partition of the results topic, from the moment the
    client starts.
    """

    def __init__(self, settings: Settings, registry: SchemaRegistry | None = None) -> None:
        self.settings = settings
        self.registry = registry or default_registry()
        self._producer: AIOKafkaProducer | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._reader: asyncio.Task | None = None
        self._waiting: dict[str, asyncio.Future] = {}

    async def __aenter__(self) -> "CommandClient":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Bind the schema registry (ids fetched on first use), connect the producer and the results reader."""
        await asyncio.to_thread(bind, self.registry, self.settings, eager=False)
        conf = aiokafka_config(self.settings)
        self._producer = AIOKafkaProducer(**conf, acks="all", enable_idempotence=True)
        await self._producer.start()
        self._consumer = AIOKafkaConsumer(**conf, isolation_level="read_committed", enable_auto_commit=False)
        await self._consumer.start()
        partitions = await topic_partitions(self._consumer, RESULTS_TOPIC)
        if not partitions:
            raise RuntimeError(f"topic '{RESULTS_TOPIC}' does not exist: run `agentstream topology apply`")
        assignment = [TopicPartition(RESULTS_TOPIC, p) for p in partitions]
        self._consumer.assign(assignment)
        await self._consumer.seek_to_end(*assignment)
        for tp in assignment:  # resolve the end offsets now, before any command is sent
            await self._consumer.position(tp)
        self._reader = asyncio.create_task(self._read_results())

    async def stop(self) -> None:
        """Disconnect; pending waits fail with CommandTimeout."""
        if self._reader:
            self._reader.cancel()
        for client in (self._producer, self._consumer):
            if client is not None:
                await client.stop()
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(CommandTimeout("client stopped"))

    async def _read_results(self) -> None:
        assert self._consumer is not None
        async for record in self._consumer:
            future = self._waiting.pop(record.key.decode(), None) if record.key else None
            if future is not None and not future.done():
                future.set_result(parse_result(record.value))

    def encode(self, command_type: str, data: Mapping[str, Any]) -> tuple[bytes, list[tuple[str, bytes]]]:
        """Validate and encode a command payload; raises UnknownSchema or SchemaValidationError."""
        if command_type not in self.registry.names("command"):
            raise UnknownSchema(command_type, detail=f"known commands: {', '.join(self.registry.names('command'))}")
        return self.registry.encode(command_type, data)

    async def send(
        self,
        command_type: str,
        tenant_id: str,
        data: Mapping[str, Any],
        *,
        command_id: str | None = None,
        expected_version: int | None = None,
        wait: bool = True,
        timeout: float = 30.0,
    ) -> CommandOutcome | str:
        """Send one command. With ``wait``, return its result; otherwise its command id."""
        meta = CommandMeta(command_id=command_id or new_id(), tenant_id=tenant_id, expected_version=expected_version)
        value, headers = self.encode(command_type, data)
        return await self._produce(meta, value, headers, wait, timeout)

    async def send_raw(
        self, tenant_id: str, value: bytes, headers: list[tuple[str, bytes]], *, command_id: str | None = None, timeout: float = 30.0
    ) -> CommandOutcome:
        """Send bytes as they are, unvalidated, in a valid envelope (to exercise the worker's defences)."""
        meta = CommandMeta(command_id=command_id or new_id(), tenant_id=tenant_id)
        outcome = await self._produce(meta, value, headers, True, timeout)
        assert not isinstance(outcome, str)
        return outcome

    async def _produce(self, meta: CommandMeta, value: bytes, headers: list[tuple[str, bytes]], wait: bool, timeout: float) -> CommandOutcome | str:
        assert self._producer is not None, "call start() first"
        future = asyncio.get_running_loop().create_future() if wait else None
        if future is not None:
            self._waiting[meta.command_id] = future
        await self._producer.send_and_wait(COMMANDS_TOPIC, key=meta.tenant_id.encode(), value=value, headers=headers + meta.to_headers())
        if future is None:
            return meta.command_id
        try:
            return await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError as exc:
            self._waiting.pop(meta.command_id, None)
            raise CommandTimeout(f"no result for command {meta.command_id} within {timeout:.0f}s: is a worker running?") from exc


def send_command(settings: Settings, command_type: str, tenant_id: str, data: Mapping[str, Any], **kwargs: Any) -> CommandOutcome | str:
    """Synchronous ``CommandClient.send`` for scripts and the CLI (one connection per call)."""

    async def once() -> CommandOutcome | str:
        async with CommandClient(settings) as client:
            return await client.send(command_type, tenant_id, data, **kwargs)

    return asyncio.run(once())
