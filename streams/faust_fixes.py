"""A correction to faust-streaming 0.15.3 that exactly-once recovery depends on.

With ``processing_guarantee="exactly_once"`` Faust reads changelog highwaters from
``consumer.last_stable_offset(tp)``, which aiokafka only knows after it has fetched from that
partition. Right after a rebalance a newly assigned changelog partition has not been fetched, so
the highwater reads as None, Faust turns it into -1, and recovery crashes the worker with
``ConsistencyError: The persisted offset ... is higher than the last offset in that topic
(highwater) (N > -1)``. Asking the broker (``end_offsets``, which honours the consumer's
``read_committed`` isolation and so returns the last stable offset) gives the right answer.
"""

from __future__ import annotations

from typing import Any, Mapping

from faust.transport.drivers import aiokafka as faust_aiokafka


async def _highwaters_from_broker(self: Any, partitions: list) -> Mapping[Any, int]:
    consumer = self._ensure_consumer()
    return await consumer.end_offsets(partitions)


def apply() -> None:
    """Install the correction (idempotent)."""
    faust_aiokafka.AIOKafkaConsumerThread._highwaters = _highwaters_from_broker
