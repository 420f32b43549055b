"""The drift monitor: task facts in, alerts out, one set of detectors per (tenant, agent_type).

``DriftMonitor.observe(fact, partition=, offset=)`` is the whole contract the runtime needs: it
reads the metrics of one task fact (``streams.facts``), feeds each to the channel of its
(tenant, agent_type, metric) and the feature vector to the anomaly channel of
(tenant, agent_type), and returns the alerts that fact raised. It does no I/O and never raises on
bad input: a missing or non-finite value is counted in ``skipped`` under its reason and not fed
to any detector. Keys never share a detector, so one tenant's shift cannot alert for another.

State is per key, as bytes (``streams.drift.state``): the runtime writes ``dump_state(key)`` for
every key in ``take_dirty()`` into its changelog-backed table with the batch, and gives stored
bytes back through ``restore`` (called the first time a key is seen) or ``load_state``. Whatever
is restored, ``observe`` is deterministic, so a batch redone after a crash gives the same alerts.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any, Callable, Mapping

from schemas.topology import DriftSpec
from streams.drift.alerts import Alert, AnomalyDetected, DriftDetected
from streams.drift.channel import AnomalyChannel, MetricChannel, clean
from streams.drift.state import decode, encode, fingerprint

log = logging.getLogger(__name__)

#: Where each metric is read from a task fact.
FACT_FIELDS: dict[str, str] = {"response_time": "response_time_ms", "cost": "cost", "failure": "outcome"}
ANOMALY = "anomaly"
OUTCOMES = {"completed": 0.0, "failed": 1.0}


def read_metric(fact: Mapping[str, Any], metric: str, transform: str) -> tuple[float, float, None] | tuple[None, None, str]:
    """``(raw, transformed, None)`` for ``metric`` of a task fact, or ``(None, None, reason)`` when it must be skipped.

    ``failure`` is 1.0 for a failed task and 0.0 for a completed one; any other outcome is
    skipped as ``unknown outcome``.
    """
    value = fact.get(FACT_FIELDS[metric])
    if metric == "failure" and value is not None:
        if value not in OUTCOMES:
            return None, None, "unknown outcome"
        value = OUTCOMES[value]
    raw, reason = clean(value, "none")
    if raw is None:
        return None, None, reason
    y, reason = clean(raw, transform)
    if y is None:
        return None, None, reason
    return raw, y, None


def state_key(tenant: str, agent_type: str, metric: str) -> str:
    """The state-table key of one channel: ``tenant/agent_type/metric`` (``metric`` may be ``anomaly``)."""
    return f"{tenant}/{agent_type}/{metric}"


class DriftMonitor:
    """All channels of one process (or partition set), built from the topology's ``drift`` section."""

    def __init__(self, spec: DriftSpec, *, restore: Callable[[str], bytes | None] | None = None) -> None:
        self.spec = spec
        self.restore = restore
        self._metrics = [(m.metric, m, fingerprint(m)) for m in spec.metrics]
        self._params = {m.metric: fp for _, m, fp in self._metrics}
        if spec.anomaly is not None:
            self._params[ANOMALY] = fingerprint(spec.anomaly)
        self._channels: dict[str, Any] = {}
        self._dirty: set[str] = set()
        #: (metric or "fact", reason) -> how many values were skipped for it.
        self.skipped: Counter[tuple[str, str]] = Counter()
        #: values fed to a detector, per metric (and "anomaly" for vectors scored).
        self.fed: Counter[str] = Counter()

    # --- the hot path ------------------------------------------------------------------

    def observe(self, fact: Mapping[str, Any], *, partition: int | None = None, offset: int | None = None) -> list[Alert]:
        """The alerts one task fact raises (usually none). Never raises on bad input."""
        tenant, agent_type = fact.get("tenant"), fact.get("agent_type")
        if not isinstance(tenant, str) or not tenant or not isinstance(agent_type, str) or not agent_type:
            self.skipped[("fact", "missing tenant or agent_type")] += 1
            return []
        alerts: list[Alert] = []
        values: dict[str, float] = {}
        event_time = fact.get("event_time")
        for metric, spec, _ in self._metrics:
            raw, y, reason = read_metric(fact, metric, spec.transform)
            if reason is not None or raw is None or y is None:
                self.skipped[(metric, reason or "missing")] += 1
                continue
            key = f"{tenant}/{agent_type}/{metric}"
            channel = self._channels.get(key) or self._open(key, metric)
            self._dirty.add(key)
            self.fed[metric] += 1
            change = channel.feed(y, raw)
            if change is not None:
                alerts.append(DriftDetected(tenant, agent_type, metric, change.detector, change.before, change.after, event_time, partition, offset, change.index))
        anomaly = self.spec.anomaly
        if anomaly is not None:
            features: dict[str, float] = {}
            for feature in anomaly.features:
                _, y, reason = read_metric(fact, feature.metric, feature.transform)
                if reason is not None or y is None:
                    self.skipped[(ANOMALY, f"{feature.metric}: {reason}")] += 1
                    return alerts
                features[feature.metric] = y
            key = f"{tenant}/{agent_type}/{ANOMALY}"
            channel = self._channels.get(key) or self._open(key, ANOMALY)
            self._dirty.add(key)
            self.fed[ANOMALY] += 1
            index = channel.seen
            score = channel.feed(features)
            if score is not None:
                alerts.append(
                    AnomalyDetected(tenant, agent_type, anomaly.detector, score, anomaly.threshold, features, fact.get("task_id"), event_time, partition, offset, index)
                )
        return alerts

    def _open(self, key: str, metric: str) -> Any:
        """The channel of ``key``: restored from its stored bytes when there are usable ones, else new."""
        stored = self.restore(key) if self.restore is not None else None
        if stored is None or not self.load_state(key, stored):
            self._channels[key] = self._new(metric)
        return self._channels[key]

    def _new(self, metric: str) -> Any:
        if metric == ANOMALY:
            assert self.spec.anomaly is not None
            return AnomalyChannel(self.spec.anomaly)
        return MetricChannel(self.spec.metric(metric))

    # --- state -------------------------------------------------------------------------

    def keys(self) -> list[str]:
        """The keys that have a channel in this monitor."""
        return list(self._channels)

    def take_dirty(self) -> set[str]:
        """The keys changed since the last call (their state must be written), and forget them."""
        dirty, self._dirty = self._dirty, set()
        return dirty

    def dump_state(self, key: str) -> bytes:
        """The versioned bytes of ``key``'s channel (KeyError if the monitor has none)."""
        return encode(self._channels[key], self._params[key.rsplit("/", 1)[1]])

    def load_state(self, key: str, data: bytes) -> bool:
        """Put ``key``'s channel back from ``data``; False (and a log line saying why) if it starts afresh instead.

        A key whose bytes were written by another river version, another state format or other
        declared parameters is reset, as are bytes that cannot be read.
        """
        metric = key.rsplit("/", 1)[-1]
        if metric not in self._params:
            log.warning("drift state for %s dropped: metric %r is no longer declared", key, metric)
            return False
        channel, reason = decode(data, self._params[metric])
        if channel is None:
            log.warning("drift state for %s reset: %s", key, reason)
            self._channels[key] = self._new(metric)
            self._dirty.add(key)
            return False
        channel.spec = self.spec.anomaly if metric == ANOMALY else self.spec.metric(metric)
        self._channels[key] = channel
        return True

    def evict(self, key: str) -> None:
        """Forget ``key``'s channel (its partition moved to another process)."""
        self._channels.pop(key, None)
        self._dirty.discard(key)
