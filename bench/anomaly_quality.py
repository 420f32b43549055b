"""Anomaly detection quality: the declared HalfSpaceTrees detector on seeded task streams.

Task facts of one key with lognormal response times (median e^6.5 ms, sigma 0.5) and costs
(sigma 1.0); after 5,000 tasks, one task in 1,000 is an injected outlier: response time and/or
cost multiplied by a factor. Reports, per kind of outlier, how many the monitor flags, and the
false anomaly alerts per 100,000 ordinary tasks, at the declared threshold and around it.
Runs through ``DriftMonitor`` (the worker's code path). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from schemas.settings import REPO_ROOT  # noqa: E402
from schemas.topology import DriftSpec, load_topology  # noqa: E402
from streams.drift import AnomalyDetected, DriftMonitor  # noqa: E402

OUTLIERS = {"latency_x10": (10.0, 1.0), "cost_x30": (1.0, 30.0), "both_x30": (30.0, 30.0), "both_x3": (3.0, 3.0)}


def run(spec: DriftSpec, threshold: float, factors: tuple[float, float], tasks: int) -> tuple[int, int, int]:
    """(outliers flagged, outliers injected, false alerts) for one stream."""
    assert spec.anomaly is not None
    monitor = DriftMonitor(DriftSpec(metrics=[], anomaly=spec.anomaly.model_copy(update={"threshold": threshold})))
    rng = random.Random(1)
    flagged = injected = false = 0
    for i in range(tasks):
        outlier = i > 5000 and i % 1000 == 0
        rt = rng.lognormvariate(6.5, 0.5) * (factors[0] if outlier else 1.0)
        cost = rng.lognormvariate(-3.5, 1.0) * (factors[1] if outlier else 1.0)
        alerts = [a for a in monitor.observe({"tenant": "t", "agent_type": "a", "response_time_ms": rt, "cost": cost, "outcome": "completed"}) if isinstance(a, AnomalyDetected)]
        if outlier:
            injected += 1
            flagged += bool(alerts)
        elif alerts:
            false += 1
    return flagged, injected, false


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=60_000)
    args = parser.parse_args()
    spec = load_topology(REPO_ROOT / "topology.yaml").drift
    assert spec is not None and spec.anomaly is not None
    declared = spec.anomaly.threshold
    results: dict[str, dict[str, object]] = {}
    for threshold in sorted({round(declared - 0.05, 2), declared, round(min(declared + 0.05, 1.0), 2)}):
        row: dict[str, object] = {}
        worst = 0.0
        for name, factors in OUTLIERS.items():
            flagged, injected, false = run(spec, threshold, factors, args.tasks)
            row[name] = f"{flagged}/{injected}"
            worst = max(worst, false * 100_000 / (args.tasks - injected))
        row["false_per_100k_worst_stream"] = round(worst, 2)
        results[str(threshold)] = row
        print(threshold, row, file=sys.stderr, flush=True)
    print(json.dumps({"bench": "anomaly_quality", "tasks": args.tasks, "declared_threshold": declared, "params": spec.anomaly.params, "results": results}))


if __name__ == "__main__":
    main()
