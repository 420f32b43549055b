"""Alerts against labelled change points: detection delay, false alarms, precision and recall.

The rule, shared by ``agentstream drift evaluate`` and ``bench/drift_quality.py``: the first
alert at or after a change point and before the next one (and within ``max_delay`` values, if
given) detects that change, with a delay of its index minus the change's; every other alert is a
false alarm, including a second alert for the same change. Precision is detections over alerts,
recall detections over change points.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Sequence


@dataclass(frozen=True)
class Evaluation:
    """How a run's alerts compare with the labelled change points of a series of ``length`` values."""

    length: int
    changes: list[int]
    alerts: list[int]
    delays: list[int | None] = field(default_factory=list)  # per change: delay, or None if missed
    false_alarms: int = 0

    @property
    def detected(self) -> int:
        """Changes detected."""
        return sum(d is not None for d in self.delays)

    @property
    def missed(self) -> int:
        """Changes not detected."""
        return len(self.changes) - self.detected

    @property
    def precision(self) -> float | None:
        """Detections over alerts (None without alerts)."""
        return self.detected / len(self.alerts) if self.alerts else None

    @property
    def recall(self) -> float | None:
        """Detections over change points (None without change points)."""
        return self.detected / len(self.changes) if self.changes else None

    @property
    def median_delay(self) -> float | None:
        """Median delay of the detected changes."""
        found = [d for d in self.delays if d is not None]
        return float(statistics.median(found)) if found else None

    @property
    def false_alarms_per_100k(self) -> float:
        """False alarms per 100,000 values of the series."""
        return self.false_alarms * 100_000 / self.length if self.length else 0.0

    def to_dict(self) -> dict[str, object]:
        """JSON-ready summary."""
        return {
            "length": self.length,
            "changes": self.changes,
            "alerts": self.alerts,
            "delays": self.delays,
            "detected": self.detected,
            "missed": self.missed,
            "false_alarms": self.false_alarms,
            "false_alarms_per_100k": self.false_alarms_per_100k,
            "median_delay": self.median_delay,
            "precision": self.precision,
            "recall": self.recall,
        }


def evaluate(alerts: Sequence[int], changes: Sequence[int], length: int, max_delay: int | None = None) -> Evaluation:
    """Match 0-based alert indices to 0-based change points of a series of ``length`` values (see the module rule)."""
    if any(c < 0 or c >= length for c in changes):
        raise ValueError(f"change points must lie in [0, {length}): {sorted(changes)}")
    points = sorted(set(changes))
    found = sorted(alerts)
    delays: list[int | None] = []
    used: set[int] = set()
    for j, start in enumerate(points):
        end = points[j + 1] if j + 1 < len(points) else length
        if max_delay is not None:
            end = min(end, start + max_delay + 1)
        hit = next((i for i, a in enumerate(found) if start <= a < end and i not in used), None)
        if hit is None:
            delays.append(None)
        else:
            used.add(hit)
            delays.append(found[hit] - start)
    return Evaluation(length, points, found, delays, len(found) - len(used))
