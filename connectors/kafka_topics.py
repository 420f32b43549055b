"""What a Kafka consumer knows of a topic's partitions, refreshed when it does not know yet."""

from __future__ import annotations

from aiokafka import AIOKafkaConsumer


async def topic_partitions(consumer: AIOKafkaConsumer, topic: str) -> list[int]:
    """The topic's partition numbers, sorted; empty when the topic does not exist.

    A freshly started consumer may not have the topic's metadata yet: it is refreshed once
    (aiokafka has no public call for that).
    """
    partitions = consumer.partitions_for_topic(topic)
    if not partitions:
        await consumer._client.force_metadata_update()
        partitions = consumer.partitions_for_topic(topic)
    return sorted(partitions or ())
