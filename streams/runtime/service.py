"""The Faust service that runs a worker's runtime agents: one loop thread per agent.

The worker stays a Faust application (its lifecycle, signals, logging and web server are
Faust's); the hot path runs beside Faust's stream machinery because that machinery is what
held it back (per-event consume path, per-record sends, a global commit that stops every
agent; see docs/architecture.md). Each loop owns its consumer and transactional producer
(confluent-kafka) and runs in a thread of its own, so a blocking commit in one agent never
stalls another or the web server.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any, Sequence

from confluent_kafka.admin import NewTopic
from mode import Service

from connectors.kafka_admin import AdminError, admin_client
from schemas.settings import Settings
from schemas.topology import Topology
from streams.runtime.agent import AgentContext, RuntimeAgent
from streams.runtime.loop import ExactlyOnceLoop
from streams.runtime.tables import changelog_topic

log = logging.getLogger(__name__)


def internal_topics(agents: Sequence[RuntimeAgent], settings: Settings, topology: Topology) -> list[NewTopic]:
    """The changelog and repartition topics the agents need, sized like the topics they follow."""
    wanted: list[NewTopic] = []
    for agent in agents:
        partitions = topology.topic(agent.inputs[0]).partitions
        for table in agent.tables:
            wanted.append(
                NewTopic(
                    changelog_topic(settings.app_id, table),
                    num_partitions=partitions,
                    replication_factor=settings.kafka_replication_factor,
                    config={"cleanup.policy": "compact"},
                )
            )
        for name, source in agent.internal_topics.items():
            wanted.append(
                NewTopic(
                    name,
                    num_partitions=topology.topic(source).partitions,
                    replication_factor=settings.kafka_replication_factor,
                    config={"retention.ms": str(7 * 24 * 3600 * 1000)},
                )
            )
    return wanted


def ensure_internal_topics(agents: Sequence[RuntimeAgent], settings: Settings, topology: Topology) -> list[str]:
    """Create the agents' internal topics that do not exist yet; returns the names created."""
    admin = admin_client(settings)
    try:
        live = admin.list_topics(timeout=30).topics
    except Exception as exc:
        raise AdminError(f"cannot reach Kafka: {exc}") from exc
    missing = [topic for topic in internal_topics(agents, settings, topology) if topic.topic not in live]
    if not missing:
        return []
    created = []
    for name, future in admin.create_topics(missing).items():
        try:
            future.result(timeout=30)
            created.append(name)
        except Exception as exc:  # another worker created it first
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise AdminError(f"cannot create {name}: {exc}") from exc
    return created


class RuntimeService(Service):
    """Starts the loops of ``agents`` when the Faust worker starts; stops them (each commits or aborts its batch) when it stops."""

    agents: Sequence[RuntimeAgent] = ()
    context: AgentContext | None = None
    #: The service running in this process, once started (for the status page).
    running: "RuntimeService | None" = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.loops: list[ExactlyOnceLoop] = []
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()

    async def on_start(self) -> None:
        """Create missing internal topics, then start one thread per agent."""
        assert self.context is not None
        settings, topology = self.context.settings, self.context.topology
        created = await asyncio.to_thread(ensure_internal_topics, self.agents, settings, topology)
        if created:
            log.info("created internal topics: %s", ", ".join(created))
        for agent in self.agents:
            loop = ExactlyOnceLoop(agent, self.context, settings.worker_id, self._stop, max_batch=settings.runtime_max_batch)
            thread = threading.Thread(target=loop.run, name=f"runtime-{agent.name}", daemon=True)
            self.loops.append(loop)
            self._threads.append(thread)
            thread.start()
        RuntimeService.running = self
        log.info("runtime agents running: %s (worker id %s)", ", ".join(a.name for a in self.agents), settings.worker_id)

    async def on_stop(self) -> None:
        """Ask every loop to stop after its current batch and wait for them to leave their groups."""
        self._stop.set()
        for thread in self._threads:
            await asyncio.to_thread(thread.join, 30)

    def status(self) -> list[dict[str, Any]]:
        """Per agent: partitions owned, batches and records committed, aborts, rows restored, first and last batch times."""
        return [{"agent": loop.agent.name, **loop.stats.as_dict()} for loop in self.loops]


def runtime_service(agents: Sequence[RuntimeAgent], context: AgentContext) -> type[RuntimeService]:
    """A ``RuntimeService`` class bound to ``agents`` (Faust's ``app.service`` takes a class)."""
    return type("BoundRuntimeService", (RuntimeService,), {"agents": tuple(agents), "context": context})
