"""The declared topics against a live cluster: ``diff`` what differs, ``apply`` to make it so.

Built on confluent-kafka's AdminClient. Topics that Faust manages itself (changelogs and the
assignor topic, all prefixed by the app id), the schema registry's storage (``_schemas*``) and
Kafka's internal topics are not reported as extra.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

from confluent_kafka import KafkaException
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewPartitions,
    NewTopic,
    ResourceType,
)

from connectors.kafka_config import confluent_config
from schemas.settings import Settings
from schemas.topology import TopicSpec, Topology

DriftKind = Literal["missing", "extra", "partitions", "config"]


class AdminError(RuntimeError):
    """The cluster refused or could not be reached for an admin operation."""


@dataclass(frozen=True)
class Drift:
    """One difference between the declaration and the cluster."""

    topic: str
    kind: DriftKind
    expected: str
    actual: str

    def __str__(self) -> str:
        return f"{self.topic}: {self.kind} (declared {self.expected}, cluster {self.actual})"


def admin_client(settings: Settings) -> AdminClient:
    """An AdminClient for the configured cluster."""
    return AdminClient({**confluent_config(settings), "log_level": 3})


def _wait(futures: dict, what: str, timeout: float = 30.0) -> dict:
    results = {}
    for key, future in futures.items():
        try:
            results[key] = future.result(timeout=timeout)
        except KafkaException as exc:
            raise AdminError(f"{what} {key}: {exc.args[0].str() if exc.args else exc}") from exc
    return results


def _live_topics(admin: AdminClient, timeout: float) -> dict[str, int]:
    try:
        metadata = admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        raise AdminError(f"cannot reach Kafka: {exc}") from exc
    return {name: len(t.partitions) for name, t in metadata.topics.items()}


def _live_configs(admin: AdminClient, names: list[str]) -> dict[str, dict[str, str]]:
    if not names:
        return {}
    resources = [ConfigResource(ResourceType.TOPIC, name) for name in names]
    described = _wait(admin.describe_configs(resources), "describe configs of")
    return {res.name: {k: (v.value or "") for k, v in entries.items()} for res, entries in described.items()}


def diff(topology: Topology, settings: Settings, timeout: float = 10.0) -> list[Drift]:
    """Every difference between the declared topics and the cluster; empty means no drift."""
    admin = admin_client(settings)
    live = _live_topics(admin, timeout)
    drift: list[Drift] = []
    declared = {t.name for t in topology.topics}
    present = [t for t in topology.topics if t.name in live]
    configs = _live_configs(admin, [t.name for t in present])
    for topic in topology.topics:
        if topic.name not in live:
            drift.append(Drift(topic.name, "missing", f"{topic.partitions} partitions", "absent"))
            continue
        if live[topic.name] != topic.partitions:
            drift.append(Drift(topic.name, "partitions", str(topic.partitions), str(live[topic.name])))
        for key, want in topic.kafka_config().items():
            have = configs[topic.name].get(key, "")
            if have != want:
                drift.append(Drift(topic.name, "config", f"{key}={want}", f"{key}={have}"))
    managed = (f"{settings.app_id}-", "__", "_schemas")
    for name in sorted(set(live) - declared):
        if not name.startswith(managed):
            drift.append(Drift(name, "extra", "absent", f"{live[name]} partitions"))
    return drift


def apply(topology: Topology, settings: Settings, echo: Callable[[str], None] = print) -> list[str]:
    """Create missing topics, add partitions, set configs; idempotent. Returns the actions taken.

    Never deletes a topic and never lowers a partition count (Kafka cannot): those are
    reported as an AdminError for a person to decide.
    """
    admin = admin_client(settings)
    actions: list[str] = []
    drift = diff(topology, settings)
    shrink = [d for d in drift if d.kind == "partitions" and int(d.actual) > int(d.expected)]
    if shrink:
        raise AdminError("; ".join(f"{d.topic} has {d.actual} partitions, more than the {d.expected} declared: Kafka cannot remove partitions" for d in shrink))
    missing = [topology.topic(d.topic) for d in drift if d.kind == "missing"]
    if missing:
        _wait(admin.create_topics([_new_topic(t, settings) for t in missing]), "create topic")
        actions += [f"created {t.name} ({t.partitions} partitions)" for t in missing]
    grow = [d for d in drift if d.kind == "partitions"]
    if grow:
        _wait(admin.create_partitions([NewPartitions(d.topic, int(d.expected)) for d in grow]), "add partitions to")
        actions += [f"{d.topic}: partitions {d.actual} -> {d.expected}" for d in grow]
    retune = sorted({d.topic for d in drift if d.kind == "config"})
    if retune:
        resources = []
        for name in retune:
            entries = [ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET) for k, v in topology.topic(name).kafka_config().items()]
            resources.append(ConfigResource(ResourceType.TOPIC, name, incremental_configs=entries))
        _wait(admin.incremental_alter_configs(resources), "alter configs of")
        actions += [f"{d.topic}: set {d.expected} (was {d.actual})" for d in drift if d.kind == "config"]
    for action in actions:
        echo(action)
    return actions


def _new_topic(topic: TopicSpec, settings: Settings) -> NewTopic:
    return NewTopic(topic.name, num_partitions=topic.partitions, replication_factor=settings.kafka_replication_factor, config=topic.kafka_config())
