"""The alerts the drift monitor emits: ``DriftDetected`` and ``AnomalyDetected`` (JSON on ``alerts.drift``).

Each alert names its source fact (partition and offset of ``facts.tasks``) and has an id derived
from it, so an alert recomputed after a crash is the same record and a sink can deduplicate it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from streams.drift.channel import Side


@dataclass(frozen=True)
class DriftDetected:
    """The distribution of ``metric`` changed for (tenant, agent_type); ``before``/``after`` summarise it."""

    tenant: str
    agent_type: str
    metric: str
    detector: str
    before: Side
    after: Side
    event_time: str | None
    source_partition: int | None
    source_offset: int | None
    index: int  # 0-based index of the value that raised it, among the key's accepted values of this metric

    @property
    def alert_id(self) -> str:
        """Deterministic id: the same fact and metric give the same id on a replay."""
        return f"drift/{self.tenant}/{self.agent_type}/{self.metric}/{self.source_partition}/{self.source_offset}/{self.index}"

    def to_dict(self) -> dict[str, Any]:
        """The JSON value written to the alerts topic."""
        return {
            "type": "DriftDetected",
            "alert_id": self.alert_id,
            "tenant": self.tenant,
            "agent_type": self.agent_type,
            "metric": self.metric,
            "detector": self.detector,
            "before": self.before.to_dict(),
            "after": self.after.to_dict(),
            "event_time": self.event_time,
            "source": {"partition": self.source_partition, "offset": self.source_offset},
            "index": self.index,
        }


@dataclass(frozen=True)
class AnomalyDetected:
    """One task of (tenant, agent_type) looked unlike the recent ones: its anomaly score and features."""

    tenant: str
    agent_type: str
    detector: str
    score: float
    threshold: float
    features: dict[str, float]
    task_id: str | None
    event_time: str | None
    source_partition: int | None
    source_offset: int | None
    index: int  # 0-based index of the task among the key's scored tasks

    @property
    def alert_id(self) -> str:
        """Deterministic id: the same fact gives the same id on a replay."""
        return f"anomaly/{self.tenant}/{self.agent_type}/{self.source_partition}/{self.source_offset}/{self.index}"

    def to_dict(self) -> dict[str, Any]:
        """The JSON value written to the alerts topic."""
        return {
            "type": "AnomalyDetected",
            "alert_id": self.alert_id,
            "tenant": self.tenant,
            "agent_type": self.agent_type,
            "detector": self.detector,
            "score": self.score,
            "threshold": self.threshold,
            "features": self.features,
            "task_id": self.task_id,
            "event_time": self.event_time,
            "source": {"partition": self.source_partition, "offset": self.source_offset},
            "index": self.index,
        }


Alert = DriftDetected | AnomalyDetected
