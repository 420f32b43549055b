"""Which partition a key belongs to: murmur2, the partitioner of Java clients and aiokafka.

librdkafka (confluent-kafka) hashes keys with CRC32 by default, so a command produced by such a
client can land in another partition than the one that owns its tenant. The runtime computes
the owner partition itself and moves a stray command there (see ``streams.handlers``).
"""

from __future__ import annotations

from aiokafka.partitioner import murmur2


class KeyPartitioner:
    """Key -> partition for a topic of ``partitions`` partitions, with the answers cached."""

    def __init__(self, partitions: int, cache_size: int = 100_000) -> None:
        self.partitions = partitions
        self._cache: dict[bytes, int] = {}
        self._cache_size = cache_size

    def __call__(self, key: bytes) -> int:
        """The partition that owns ``key`` (as Kafka's Java DefaultPartitioner computes it)."""
        found = self._cache.get(key)
        if found is None:
            found = (murmur2(key) & 0x7FFFFFFF) % self.partitions
            if len(self._cache) >= self._cache_size:
                self._cache.clear()
            self._cache[key] = found
        return found
