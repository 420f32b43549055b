"""Online drift and anomaly detection with river, per (tenant, agent_type): the pure core.

``DriftMonitor`` (``monitor``) takes task facts and returns ``DriftDetected`` /
``AnomalyDetected`` alerts (``alerts``); each key's detector lives in a channel (``channel``)
built from the topology's ``drift`` section through the river catalog (``catalog``), and its
state is versioned bytes (``state``). ``evaluation`` scores alerts against labelled change
points for ``agentstream drift evaluate`` and the quality bench. No Kafka, Redis or ClickHouse.
"""

from streams.drift.alerts import Alert, AnomalyDetected, DriftDetected
from streams.drift.monitor import DriftMonitor, state_key

__all__ = ["Alert", "AnomalyDetected", "DriftDetected", "DriftMonitor", "state_key"]
