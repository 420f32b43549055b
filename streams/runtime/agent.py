"""What an agent on the runtime is: its inputs, its tables and a batch processor.

An agent is a consumer group of its own (``<app id>-<agent name>``): workers that run it share
its input partitions, and each agent scales on its own. A processor sees one input partition's
records at a time, in offset order, with that partition's tables, and says what to write by
calling ``Outputs.send``; the runtime writes it all, the changed table rows and the input
offsets in one Kafka transaction. A processor does no Kafka I/O of its own and must not raise
for bad input (turn it into an output, e.g. a dead letter); an exception aborts the batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol, Sequence

from confluent_kafka import Message

from schemas.settings import Settings
from schemas.topology import Topology
from streams.runtime.tables import PartitionTable

Headers = list[tuple[str, bytes]] | None


class Outputs:
    """The records a batch writes, in the order they were sent."""

    __slots__ = ("records",)

    def __init__(self) -> None:
        self.records: list[tuple[str, bytes | None, bytes | None, Headers, int | None]] = []

    def send(self, topic: str, key: bytes | None, value: bytes | None, headers: Headers = None, partition: int | None = None) -> None:
        """Write a record in this batch's transaction; ``partition`` None: by key (murmur2, as Java and aiokafka)."""
        self.records.append((topic, key, value, headers, partition))


@dataclass
class Batch:
    """The records of one input partition that a batch handles, with that partition's tables."""

    topic: str
    partition: int
    messages: list[Message]
    tables: Mapping[str, PartitionTable]


class BatchProcessor(Protocol):
    """The agent's logic: called by the runtime's loop thread, never concurrently."""

    def process(self, batch: Batch, out: Outputs) -> None:
        """Handle ``batch.messages`` in order; change ``batch.tables``; send what they cause to ``out``."""

    def assigned(self, partitions: Sequence[int], tables: Mapping[int, Mapping[str, PartitionTable]]) -> None:
        """Partitions were given to this worker, their tables restored (before any batch of them)."""

    def revoked(self, partitions: Sequence[int]) -> None:
        """Partitions were taken away (nothing of theirs is in flight)."""

    def tick(self, partition: int, tables: Mapping[str, PartitionTable], out: Outputs, now: float) -> None:
        """Act on wall-clock time ``now`` (epoch seconds) for an owned partition (agents with ``tick_interval_s``)."""


class ProcessorBase:
    """A processor with no-op partition hooks."""

    def assigned(self, partitions: Sequence[int], tables: Mapping[int, Mapping[str, PartitionTable]]) -> None:
        """Nothing to do."""

    def revoked(self, partitions: Sequence[int]) -> None:
        """Nothing to do."""

    def tick(self, partition: int, tables: Mapping[str, PartitionTable], out: Outputs, now: float) -> None:
        """Nothing to do."""


@dataclass(frozen=True)
class AgentContext:
    """What a processor factory gets: the settings and the declared topology."""

    settings: Settings
    topology: Topology


@dataclass(frozen=True)
class RuntimeAgent:
    """An agent run by the exactly-once runtime.

    ``inputs`` are consumed, ``tables`` live in memory per input partition and in a compacted
    changelog topic each, ``internal_topics`` (name -> the topic whose partition count it copies)
    are created by the worker when missing, like the changelogs. ``deadletter`` receives what the
    broker would refuse (a record over its size limit). With ``tick_interval_s`` the processor's
    ``tick`` runs that often on wall-clock time, records or not. ``build`` makes the processor.
    """

    name: str
    inputs: tuple[str, ...]
    tables: tuple[str, ...]
    build: Callable[[AgentContext], BatchProcessor]
    internal_topics: Mapping[str, str] = field(default_factory=dict)
    deadletter: str | None = None
    tick_interval_s: float | None = None
    description: str = ""

    def group_id(self, app_id: str) -> str:
        """The consumer group of this agent."""
        return f"{app_id}-{self.name}"

    def extras(self) -> dict[str, Any]:
        """For listings: what the agent reads and keeps."""
        return {"inputs": list(self.inputs), "tables": list(self.tables)}
