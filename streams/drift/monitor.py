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
from streams.drift.channel import AnomalyChannel, MetricChannel, number, transformed
from streams.drift.state import decode, encode, fingerprint

log = logging.getLogger(__name__)

#: Where each metric is read from a task fact.
FACT_FIELDS: dict[str, str] = {"response_time": "response_time_ms", "cost": "cost", "failure": "outcome"}
ANOMALY = "anomaly"
OUTCOMES = {"completed": 0.0, "failed": 1.0}


def metric_number(fact: Mapping[str, Any], metric: str) -> float | str:
    """The raw value of ``metric`` in a task fact as a finite float, or the reason to skip it.

    ``failure`` is 1.0 for a failed task and 0.0 for a completed one; any other outcome is
    skipped as ``unknown outcome``.
    """
    value = fact.get(FACT_FIELDS[metric])
    if metric == "failure" and value is not None:
        outcome = OUTCOMES.get(value) if isinstance(value, str) else None
        return "unknown outcome" if outcome is None else outcome
    return number(value)


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
        #: Every metric a fact is read for (the detectors' and the anomaly features').
        self._read = list(dict.fromkeys([m.metric for m in spec.metrics] + [f.metric for f in (spec.anomaly.features if spec.anomaly else [])]))
        self._channels: dict[str, Any] = {}  # state key -> channel: the truth
        #: (tenant, agent_type) -> channels in the order of ``_metrics``, anomaly last (None until
        #: first fed): a cache of ``_channels`` for the hot path, dropped when a key is loaded or evicted.
        self._groups: dict[tuple[str, str], list[Any]] = {}
        self._dirty: set[str] = set()
        self._dirty_groups: set[tuple[str, str]] = set()
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
        group = self._groups.get((tenant, agent_type))
        if group is None:
            group = self._groups[(tenant, agent_type)] = [None] * (len(self._metrics) + 1)
        self._dirty_groups.add((tenant, agent_type))
        alerts: list[Alert] = []
        raws = {metric: metric_number(fact, metric) for metric in self._read}
        event_time = fact.get("event_time")
        fed = self.fed
        for slot, (metric, spec, _) in enumerate(self._metrics):
            raw = raws[metric]
            y = raw if isinstance(raw, str) else transformed(raw, spec.transform)
            if isinstance(y, str):
                self.skipped[(metric, y)] += 1
                continue
            channel = group[slot]
            if channel is None:
                channel = group[slot] = self._open(f"{tenant}/{agent_type}/{metric}", metric)
            fed[metric] += 1
            change = channel.feed(y, raw)
            if change is not None:
                alerts.append(DriftDetected(tenant, agent_type, metric, change.detector, change.before, change.after, event_time, partition, offset, change.index))
        anomaly = self.spec.anomaly
        if anomaly is not None:
            features: dict[str, float] = {}
            for feature in anomaly.features:
                raw = raws[feature.metric]
                y = raw if isinstance(raw, str) else transformed(raw, feature.transform)
                if isinstance(y, str):
                    self.skipped[(ANOMALY, f"{feature.metric}: {y}")] += 1
                    return alerts
                features[feature.metric] = y
            channel = group[-1]
            if channel is None:
                channel = group[-1] = self._open(f"{tenant}/{agent_type}/{ANOMALY}", ANOMALY)
            fed[ANOMALY] += 1
            index = channel.seen
            score = channel.feed(features)
            if score is not None:
                alerts.append(
                    AnomalyDetected(tenant, agent_type, anomaly.detector, score, anomaly.threshold, features, fact.get("task_id"), event_time, partition, offset, index)
                )
        return alerts

    def _open(self, key: str, metric: str) -> Any:
        """The channel of ``key``: the one held, else restored from its stored bytes when they are usable, else new."""
        channel = self._channels.get(key)
        if channel is None:
            stored = self.restore(key) if self.restore is not None else None
            if stored is None or not self._load(key, stored):
                self._channels[key] = self._new(metric)
            channel = self._channels[key]
        return channel

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
        """The keys whose state may have changed since the last call (write them), and forget them.

        Marked per (tenant, agent_type): every channel of a fact's group is listed, also one whose
        value was skipped (writing unchanged state again is harmless).
        """
        dirty, self._dirty = self._dirty, set()
        suffixes = [m for m, _, _ in self._metrics] + ([ANOMALY] if self.spec.anomaly is not None else [])
        for tenant, agent_type in self._dirty_groups:
            dirty.update(key for key in (f"{tenant}/{agent_type}/{s}" for s in suffixes) if key in self._channels)
        self._dirty_groups = set()
        return dirty

    def dump_state(self, key: str) -> bytes:
        """The versioned bytes of ``key``'s channel (KeyError if the monitor has none)."""
        return encode(self._channels[key], self._params[key.rsplit("/", 1)[1]])

    def load_state(self, key: str, data: bytes) -> bool:
        """Put ``key``'s channel back from ``data``; False (and a log line saying why) if it starts afresh instead.

        A key whose bytes were written by another river version, another state format or other
        declared parameters is reset, as are bytes that cannot be read.
        """
        self._groups.clear()
        return self._load(key, data)

    def _load(self, key: str, data: bytes) -> bool:
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
        self._groups.clear()
