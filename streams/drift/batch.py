"""One batch of task facts through the drift monitor: what the detection agent produces and stores.

The batched exactly-once runtime hands an agent the records of one input partition and commits,
in one transaction, what the agent returns with the input offsets. ``detect`` is the whole of
the detection agent's work on a batch, with no I/O: the alerts to produce to ``alerts.drift``
(key: tenant, value: JSON) and the state bytes to write to its changelog-backed table (key: the
state key, which starts with the tenant, so the table is co-partitioned with ``facts.tasks``).
A fact that is not a JSON object is counted in ``monitor.skipped`` and passed over.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Iterable

from streams.drift.monitor import DriftMonitor


@dataclass
class BatchResult:
    """What one batch gives: alert records ``(key, value)`` in fact order, and ``state key -> bytes`` to store."""

    alerts: list[tuple[bytes, bytes]] = field(default_factory=list)
    states: dict[str, bytes] = field(default_factory=dict)


def detect(monitor: DriftMonitor, records: Iterable[tuple[int, int, Any]]) -> BatchResult:
    """Feed ``(partition, offset, fact)`` records in order; return the alerts and the changed states.

    ``fact`` is the decoded JSON of a ``facts.tasks`` record. Deterministic: the same monitor
    state and the same records give the same result, so a batch redone after a crash (state
    restored from the table, input from the committed offsets) repeats exactly what was aborted.
    """
    result = BatchResult()
    for partition, offset, fact in records:
        if not isinstance(fact, dict):
            monitor.skipped[("fact", "not a JSON object")] += 1
            continue
        for alert in monitor.observe(fact, partition=partition, offset=offset):
            result.alerts.append((alert.tenant.encode(), json.dumps(alert.to_dict(), separators=(",", ":")).encode()))
    result.states = {key: monitor.dump_state(key) for key in sorted(monitor.take_dirty())}
    return result
