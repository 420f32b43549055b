"""Drift detection quality: the project's declared defaults against river's detectors with default parameters.

Seeded synthetic streams, a change after 3,000 stationary values (issue 10, item 6):

- ``latency_2x``: response times lognormal (median e^6.5 ms, sigma 0.5), then twice as slow;
- ``mean_0.5s``, ``mean_1s``, ``mean_2s``: Gaussian N(0, 1) whose mean moves by 0.5, 1 and 2 sigma
  (fed to the response-time detector with transform ``none``: the values are already Gaussian);
- ``failure_5_20``: a failure indicator, rate 5 % then 20 %;
- ``cost_1.5x``: costs lognormal (sigma 1.5, heavy-tailed), then 1.5 times higher;

and long stationary streams (``--stationary`` values each, 10^6 by default) for false alarms.
Each scenario reports the median and p90 detection delay, missed changes, false alarms per
100,000 values before the change, the share of runs with exactly one alert after the change and
the runs with more than one (a missed change has none, so it lowers the share, not the count). The project's
detectors run through ``DriftMonitor`` (the code path of the worker and of ``drift replay``);
river's run on the raw values, as a user would start. Then river's annotated change-point
series (``river.drift.datasets``) with the rule of ``streams.drift.evaluation``.

Prints one JSON line at the end; ``--runs`` and ``--stationary`` trade time for precision.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
from river import drift
from river.drift import binary
from river.drift import datasets as river_datasets

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from schemas.settings import REPO_ROOT  # noqa: E402
from schemas.topology import DriftMetricSpec, DriftSpec, load_topology  # noqa: E402
from streams.drift.monitor import FACT_FIELDS, DriftMonitor  # noqa: E402

PRE = 3000
Gen = Callable[[np.random.Generator, int, int], np.ndarray]


def lognormal(mu: float, sigma: float, factor: float) -> Gen:
    def make(rng: np.random.Generator, pre: int, post: int) -> np.ndarray:
        return np.concatenate([rng.lognormal(mu, sigma, pre), factor * rng.lognormal(mu, sigma, post)])
    return make


def gaussian(shift: float) -> Gen:
    def make(rng: np.random.Generator, pre: int, post: int) -> np.ndarray:
        return np.concatenate([rng.normal(0.0, 1.0, pre), rng.normal(shift, 1.0, post)])
    return make


def bernoulli(p0: float, p1: float) -> Gen:
    def make(rng: np.random.Generator, pre: int, post: int) -> np.ndarray:
        return np.concatenate([(rng.random(pre) < p0), (rng.random(post) < p1)]).astype(float)
    return make


# scenario: (metric whose default runs, generator, values after the change, target median delay)
SCENARIOS: dict[str, tuple[str, Gen, int, float | None]] = {
    "latency_2x": ("response_time", lognormal(6.5, 0.5, 2.0), 2000, 30),
    "mean_0.5s": ("gaussian", gaussian(0.5), 3000, None),
    "mean_1s": ("gaussian", gaussian(1.0), 2000, 40),
    "mean_2s": ("gaussian", gaussian(2.0), 2000, None),
    "failure_5_20": ("failure", bernoulli(0.05, 0.20), 2000, 100),
    "cost_1.5x": ("cost", lognormal(-3.5, 1.5, 1.5), 5000, 300),
}
STATIONARY: dict[str, tuple[str, Gen]] = {
    "latency": ("response_time", lognormal(6.5, 0.5, 1.0)),
    "latency_heavy_sigma1": ("response_time", lognormal(6.5, 1.0, 1.0)),
    "gaussian": ("gaussian", gaussian(0.0)),
    "failure_5": ("failure", bernoulli(0.05, 0.05)),
    "failure_30": ("failure", bernoulli(0.30, 0.30)),
    "cost": ("cost", lognormal(-3.5, 1.5, 1.0)),
}
RIVER_NUMERIC = {"ADWIN": drift.ADWIN, "PageHinkley": drift.PageHinkley, "KSWIN": drift.KSWIN}
RIVER_BINARY = {"ADWIN": drift.ADWIN, "DDM": binary.DDM, "EDDM": binary.EDDM, "HDDMA": binary.HDDMA, "FHDDM": binary.FHDDM}
SLOW = {"KSWIN"}  # a Kolmogorov-Smirnov test per value: run on fewer values


def project_spec(metric: str, drift_spec: DriftSpec) -> DriftMetricSpec:
    """The declared default of ``metric``; the Gaussian streams use the response-time detector without its log."""
    if metric == "gaussian":
        return drift_spec.metric("response_time").model_copy(update={"transform": "none"})
    return drift_spec.metric(metric)


def project_alerts(spec: DriftMetricSpec, values: Iterable[float]) -> list[int]:
    """Indices at which the monitor alerts on ``values`` (as facts of one key)."""
    monitor = DriftMonitor(DriftSpec(alerts_topic="alerts.drift", metrics=[spec]))
    field = FACT_FIELDS[spec.metric]
    alerts: list[int] = []
    for i, x in enumerate(values):
        value: object = ("failed" if x >= 0.5 else "completed") if spec.metric == "failure" else x
        if monitor.observe({"tenant": "bench", "agent_type": "bench", field: value}):
            alerts.append(i)
    return alerts


def river_alerts(cls: type, values: Iterable[float], is_binary: bool) -> list[int]:
    """Indices at which a river detector with default parameters detects drift on the raw values."""
    detector = cls()
    alerts: list[int] = []
    for i, x in enumerate(values):
        detector.update(bool(x >= 0.5) if is_binary else x)
        if detector.drift_detected:
            alerts.append(i)
    return alerts


def score_runs(runs: list[list[int]], post: int) -> dict[str, object]:
    """Delay (median, p90; a miss counts as infinite), misses, pre-change false alarms, runs with
    more than one alert after the change (a change alerted twice, or a false alarm after it)."""
    delays: list[float] = []
    false_alarms = 0
    exactly_one = 0
    repeated = 0
    for alerts in runs:
        false_alarms += sum(a < PRE for a in alerts)
        after = [a - PRE for a in alerts if a >= PRE]
        delays.append(after[0] if after else math.inf)
        exactly_one += len(after) == 1
        repeated += len(after) > 1
    finite = sorted(delays)
    median = statistics.median(finite)
    p90 = finite[min(len(finite) - 1, int(math.ceil(0.9 * len(finite))) - 1)]
    return {
        "median_delay": None if math.isinf(median) else median,
        "p90_delay": None if math.isinf(p90) else p90,
        "missed": sum(math.isinf(d) for d in delays),
        "runs": len(runs),
        "false_alarms_per_100k_pre": round(false_alarms * 100_000 / (PRE * len(runs)), 2),
        "exactly_one_alert_share": round(exactly_one / len(runs), 3),
        "runs_with_more_than_one_alert": repeated,
    }


def run_scenarios(drift_spec: DriftSpec, runs: int, slow_runs: int) -> dict[str, dict[str, dict[str, object]]]:
    results: dict[str, dict[str, dict[str, object]]] = {}
    for name, (metric, gen, post, target) in SCENARIOS.items():
        streams = [gen(np.random.default_rng(seed), PRE, post).tolist() for seed in range(runs)]
        row: dict[str, dict[str, object]] = {}
        started = time.perf_counter()
        row["project"] = {**score_runs([project_alerts(project_spec(metric, drift_spec), s) for s in streams], post), "target_median": target}
        detectors = RIVER_BINARY if metric == "failure" else RIVER_NUMERIC
        for label, cls in detectors.items():
            use = streams[:slow_runs] if label in SLOW else streams
            row[f"river {label}"] = score_runs([river_alerts(cls, s, metric == "failure" and label != "ADWIN") for s in use], post)
        results[name] = row
        print(f"{name}: {time.perf_counter() - started:.1f}s " + json.dumps(row), file=sys.stderr, flush=True)
    return results


def run_stationary(drift_spec: DriftSpec, length: int, slow_length: int) -> dict[str, dict[str, float]]:
    results: dict[str, dict[str, float]] = {}
    for name, (metric, gen) in STATIONARY.items():
        values = gen(np.random.default_rng(10_000 + len(name)), length, 0).tolist()
        started = time.perf_counter()
        row = {"project": round(len(project_alerts(project_spec(metric, drift_spec), values)) * 100_000 / length, 2)}
        detectors = RIVER_BINARY if metric == "failure" else RIVER_NUMERIC
        for label, cls in detectors.items():
            use = values[:slow_length] if label in SLOW else values
            row[f"river {label}"] = round(len(river_alerts(cls, use, metric == "failure" and label != "ADWIN")) * 100_000 / len(use), 2)
        results[name] = row
        print(f"stationary {name}: {time.perf_counter() - started:.1f}s " + json.dumps(row), file=sys.stderr, flush=True)
    return results


def run_river_datasets(drift_spec: DriftSpec) -> dict[str, dict[str, object]]:
    """River's annotated series: recall/precision (matching rule of streams.drift.evaluation, 5 % of the length as the delay limit)."""
    from streams.drift.evaluation import evaluate

    picks = {
        "AirlinePassengers": None, "Bitcoin": None, "BrentSpotPrice": None, "UKCoalEmploy": None,
        "RunLog": "Pace", "Occupancy": "V1", "Apple": "Close",
    }
    results: dict[str, dict[str, object]] = {}
    for name, column in picks.items():
        dataset = getattr(river_datasets, name)()
        values = [float(y if column is None else y[column]) for _, y in dataset]
        changes = sorted({c for points in dataset.annotations.values() for c in points if c < len(values)})
        limit = max(5, len(values) // 20)
        spec = drift_spec.metric("cost").model_copy(update={"transform": "none" if min(values) <= 0 else "log"})
        row: dict[str, object] = {"length": len(values), "changes": len(changes)}
        for label, alerts in [("project", project_alerts(spec, values)), *[(f"river {k}", river_alerts(c, values, False)) for k, c in RIVER_NUMERIC.items()]]:
            e = evaluate(alerts, changes, len(values), max_delay=limit)
            row[label] = {"alerts": len(alerts), "detected": e.detected, "precision": e.precision, "recall": e.recall, "median_delay": e.median_delay}
        results[name] = row
        print(f"river dataset {name}: " + json.dumps(row), file=sys.stderr, flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=100, help="seeded runs per scenario")
    parser.add_argument("--stationary", type=int, default=1_000_000, help="values per stationary stream")
    parser.add_argument("--topology", type=Path, default=REPO_ROOT / "topology.yaml")
    args = parser.parse_args()
    spec = load_topology(args.topology).drift
    if spec is None:
        raise SystemExit("the topology has no drift section")
    started = time.perf_counter()
    scenarios = run_scenarios(spec, args.runs, max(5, args.runs // 10))
    stationary = run_stationary(spec, args.stationary, min(args.stationary, 50_000))
    datasets = run_river_datasets(spec)
    targets = {
        "latency_2x_median_le_30": (scenarios["latency_2x"]["project"]["median_delay"] or math.inf) <= 30,
        "mean_1s_median_le_40": (scenarios["mean_1s"]["project"]["median_delay"] or math.inf) <= 40,
        "failure_median_le_100": (scenarios["failure_5_20"]["project"]["median_delay"] or math.inf) <= 100,
        "cost_median_le_300": (scenarios["cost_1.5x"]["project"]["median_delay"] or math.inf) <= 300,
        "false_alarms_le_1_per_100k": all(row["project"] <= 1.0 for row in stationary.values()),
        "never_more_than_one_alert_per_change": all(row["project"]["runs_with_more_than_one_alert"] == 0 for row in scenarios.values()),
    }
    print(json.dumps({
        "bench": "drift_quality",
        "machine": f"{platform.machine()} {platform.processor() or ''} python {platform.python_version()}".strip(),
        "runs": args.runs,
        "stationary_values": args.stationary,
        "seconds": round(time.perf_counter() - started, 1),
        "targets_met": targets,
        "scenarios": scenarios,
        "stationary_false_alarms_per_100k": stationary,
        "river_datasets": datasets,
    }))


if __name__ == "__main__":
    main()
