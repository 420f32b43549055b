"""Drift and anomaly detection core (pure): declarations, re-arm rule, isolation, state, bad values, replay CLI."""

from __future__ import annotations

import json
import logging
import math
import random
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from river import drift as river_drift
from typer.testing import CliRunner

from schemas.settings import REPO_ROOT
from schemas.topology import DriftSpec, TopologyError, load_topology, validate
from streams.drift import DriftDetected, DriftMonitor, state_key
from streams.drift.catalog import DetectorConfigError, build, check
from streams.drift.evaluation import evaluate

REAL = REPO_ROOT / "topology.yaml"


def declared() -> DriftSpec:
    spec = load_topology(REAL).drift
    assert spec is not None
    return spec


def fact(tenant: str = "t1", agent_type: str = "coder", response_time_ms: object = 700.0, cost: object = 0.03, outcome: object = "completed", i: int = 0) -> dict:
    return {"tenant": tenant, "agent_type": agent_type, "response_time_ms": response_time_ms, "cost": cost, "outcome": outcome, "task_id": f"task-{i}", "event_time": f"2026-01-01T00:00:{i % 60:02d}+00:00"}


def stream(rng: random.Random, n: int, slow_from: int | None = None, tenant: str = "t1", agent_type: str = "coder") -> list[dict]:
    """Lognormal latencies (2x slower from ``slow_from``), lognormal costs, 5 % failures."""
    return [
        fact(tenant, agent_type, rng.lognormvariate(6.5, 0.5) * (2.0 if slow_from is not None and i >= slow_from else 1.0), rng.lognormvariate(-3.5, 1.0), "failed" if rng.random() < 0.05 else "completed", i)
        for i in range(n)
    ]


# --- declarations ----------------------------------------------------------------------


def test_the_declared_detectors_are_known_to_river():
    from streams.worker import code_view

    topology = load_topology(REAL)
    assert topology.drift is not None and {m.metric for m in topology.drift.metrics} == {"response_time", "cost", "failure"}
    assert validate(topology, replace(code_view(), drift_checker=check)) == []


@pytest.mark.parametrize(
    "metric, detector, params, words",
    [
        ("response_time", "ADWINN", {}, "unknown detector 'ADWINN' for response_time; known: ADWIN, KSWIN, PageHinkley"),
        ("response_time", "ADWIN", {"dleta": 0.1}, "ADWIN: unknown parameter(s) dleta; known: clock, delta"),
        ("cost", "DDM", {}, "binary detectors watch only the failure indicator"),
        ("response_time", "PageHinkley", {"mode": "sideways"}, "river refuses"),
        ("response_time", "PageHinkley", {"threshold": "high"}, "threshold must be a number"),
        ("response_time", "ADWIN", {"clock": 2.5}, "clock must be a whole number"),
        ("anomaly", "HalfSpaceTrees", {"limits": {}}, "unknown parameter(s) limits"),
    ],
)
def test_validate_names_an_unknown_detector_or_parameter(metric, detector, params, words):
    problems = check(metric, detector, params)
    assert len(problems) == 1 and words in problems[0]
    with pytest.raises(DetectorConfigError, match="known|refuses|must be"):
        build(metric, detector, params)


def test_validate_reports_drift_problems_per_metric(tmp_path: Path):
    from streams.worker import code_view

    data = yaml.safe_load(REAL.read_text())
    data["drift"]["metrics"][0]["params"] = {"treshold": 5}
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(data))
    problems = [str(p) for p in validate(load_topology(path), replace(code_view(), drift_checker=check))]
    assert problems == [p for p in problems if p.startswith("drift response_time: PageHinkley: unknown parameter(s) treshold")] and problems


@pytest.mark.parametrize(
    "mutate, words",
    [
        (lambda d: d["drift"]["metrics"].append(dict(d["drift"]["metrics"][0])), "declared twice"),
        (lambda d: d["drift"]["metrics"][0].__setitem__("metric", "latency"), "metric"),
        (lambda d: d["drift"]["metrics"][0].__setitem__("transform", "sqrt"), "transform"),
        (lambda d: d["drift"].__setitem__("alerts_topic", "alerts.nowhere"), "unknown alerts topic 'alerts.nowhere'"),
        (lambda d: d["drift"]["anomaly"]["features"][0].__setitem__("limits", [5, 1]), "low < high"),
        (lambda d: d["drift"]["anomaly"].__setitem__("threshold", 1.5), "threshold"),
    ],
)
def test_bad_drift_sections_fail_to_load(tmp_path: Path, mutate, words):
    data = yaml.safe_load(REAL.read_text())
    mutate(data)
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(TopologyError, match=words):
        load_topology(path)


# --- one change, one alert ---------------------------------------------------------------


def only(metric: str, **changes) -> DriftSpec:
    spec = declared().metric(metric)
    return DriftSpec(metrics=[spec.model_copy(update=changes)])


def test_one_change_gives_exactly_one_alert_even_with_adwin():
    rng = random.Random(12)  # heavy-tailed values, 1.5 times higher from index 3000
    values = [rng.lognormvariate(0, 1.5) for _ in range(3000)] + [1.5 * rng.lognormvariate(0, 1.5) for _ in range(5000)]
    adwin = river_drift.ADWIN()
    raw = 0
    for x in values:
        adwin.update(x)
        raw += adwin.drift_detected
    assert raw >= 2  # river's ADWIN alone fires more than once for this one change (its tail keeps tripping it)
    monitor = DriftMonitor(only("response_time", detector="ADWIN", params={}, transform="none", standardize=False, warmup=0, cooldown=2000))
    alerts = [a for i, x in enumerate(values) for a in monitor.observe(fact(response_time_ms=x), offset=i)]
    assert len(alerts) == 1
    assert alerts[0].index >= 3000 and alerts[0].after.mean > alerts[0].before.mean


def test_declared_defaults_alert_once_for_a_2x_slowdown_with_a_summary():
    monitor = DriftMonitor(declared())
    alerts = [a for i, f in enumerate(stream(random.Random(3), 5000, slow_from=3000)) for a in monitor.observe(f, partition=2, offset=100 + i)]
    drifts = [a for a in alerts if isinstance(a, DriftDetected)]
    assert [a.metric for a in drifts] == ["response_time"]
    alert = drifts[0]
    assert 3000 <= alert.index <= 3100
    assert alert.source_partition == 2 and alert.source_offset == 100 + alert.index
    assert alert.before.count > 2500 and 1.7 < alert.after.mean / alert.before.mean < 2.4
    record = alert.to_dict()
    assert record["type"] == "DriftDetected" and record["before"]["count"] == alert.before.count and json.dumps(record)


# --- isolation -------------------------------------------------------------------------


def test_a_shift_in_one_tenant_never_alerts_another_tenant_or_agent_type():
    monitor = DriftMonitor(declared())
    rng = random.Random(11)
    a = stream(rng, 5000, slow_from=3000, tenant="A", agent_type="coder")
    b = stream(rng, 5000, tenant="B", agent_type="coder")
    c = stream(rng, 5000, tenant="A", agent_type="planner")
    alerts = [x for triple in zip(a, b, c) for f in triple for x in monitor.observe(f) if isinstance(x, DriftDetected)]
    assert {(x.tenant, x.agent_type, x.metric) for x in alerts} == {("A", "coder", "response_time")}
    assert state_key("B", "coder", "response_time") in monitor.keys()


# --- state -----------------------------------------------------------------------------


def test_state_round_trip_continues_where_it_was():
    facts = stream(random.Random(5), 5000, slow_from=3500)
    straight = DriftMonitor(declared())
    expected = [a.to_dict() for i, f in enumerate(facts) for a in straight.observe(f, offset=i)]
    first = DriftMonitor(declared())
    for i, f in enumerate(facts[:3000]):
        first.observe(f, offset=i)
    stored = {key: first.dump_state(key) for key in first.take_dirty()}
    assert set(stored) == {state_key("t1", "coder", m) for m in ("response_time", "cost", "failure", "anomaly")}
    second = DriftMonitor(declared(), restore=stored.get)  # a restarted process
    got = [a.to_dict() for i, f in enumerate(facts[3000:], start=3000) for a in second.observe(f, offset=i)]
    assert got == [a for a in expected if a["source"]["offset"] >= 3000] and got


def test_changed_parameters_or_river_version_reset_the_key_with_a_log_line(caplog):
    monitor = DriftMonitor(declared())
    for f in stream(random.Random(1), 400):
        monitor.observe(f)
    key = state_key("t1", "coder", "response_time")
    data = monitor.dump_state(key)
    changed = declared().model_copy(update={"metrics": [m.model_copy(update={"params": {**m.params, "threshold": 20.0}}) if m.metric == "response_time" else m for m in declared().metrics]})
    caplog.set_level(logging.WARNING, logger="streams.drift.monitor")
    other = DriftMonitor(changed)
    assert other.load_state(key, data) is False
    assert "reset: the declared detector or its parameters changed" in caplog.text
    assert other._channels[key].seen == 0
    assert other.load_state(state_key("t1", "coder", "cost"), monitor.dump_state(state_key("t1", "coder", "cost"))) is True
    head, _, body = data.partition(b"\n")
    older = json.dumps({**json.loads(head), "river": "0.1.0"}).encode() + b"\n" + body
    assert DriftMonitor(declared()).load_state(key, older) is False
    assert "river changed from 0.1.0" in caplog.text
    assert DriftMonitor(declared()).load_state(key, b"garbage") is False
    assert "unreadable state header" in caplog.text
    assert DriftMonitor(declared()).load_state(key, head + b"\nnot a pickle") is False


# --- bad input -------------------------------------------------------------------------


def test_bad_values_are_counted_skipped_and_never_fed():
    monitor = DriftMonitor(declared())
    bad = [
        fact(response_time_ms=None),
        fact(response_time_ms="slow"),
        fact(response_time_ms=math.nan),
        fact(response_time_ms=math.inf),
        fact(response_time_ms=-5.0),
        fact(cost=0.0),
        fact(outcome="cancelled"),
        {"tenant": "t1", "response_time_ms": 1.0},
        {"agent_type": "x"},
    ]
    for f in bad:
        assert monitor.observe(f) == []
    skipped = {f"{metric}: {reason}": n for (metric, reason), n in monitor.skipped.items()}
    assert skipped["response_time: missing"] == 1
    assert skipped["response_time: not a number"] == 1
    assert skipped["response_time: non-finite"] == 2
    assert skipped["response_time: not above -1 (log1p)"] == 1
    assert skipped["cost: not positive (log)"] == 1
    assert skipped["failure: unknown outcome"] == 1
    assert skipped["fact: missing tenant or agent_type"] == 2
    assert monitor.fed["response_time"] == 2  # the cost-0 and the cancelled facts had a good response time


# --- evaluation and the CLI ------------------------------------------------------------


def test_evaluation_counts_delay_false_alarms_and_duplicates():
    e = evaluate([10, 105, 110, 390], [100, 300], 1000)
    assert e.delays == [5, 90] and e.false_alarms == 2 and e.precision == 0.5 and e.recall == 1.0
    late = evaluate([500], [100], 1000, max_delay=100)
    assert late.delays == [None] and late.missed == 1 and late.false_alarms == 1
    with pytest.raises(ValueError, match="change points"):
        evaluate([], [2000], 1000)


@pytest.fixture()
def latency_files(tmp_path: Path) -> tuple[Path, Path]:
    rng = random.Random(2)
    values = [rng.lognormvariate(6.5, 0.5) * (2 if i >= 1500 else 1) for i in range(2500)]
    csv_path = tmp_path / "latency.csv"
    csv_path.write_text("response_time\n" + "\n".join(str(v) for v in values) + "\n-3\n")
    parquet_path = tmp_path / "latency.parquet"
    pq.write_table(pa.table({"ms": values}), parquet_path)
    return csv_path, parquet_path


def test_replay_prints_one_line_per_alert_with_its_index(latency_files):
    from streams.cli.main import cli

    csv_path, parquet_path = latency_files
    runner = CliRunner()
    result = runner.invoke(cli, ["drift", "replay", str(csv_path), "--metric", "response_time", "--json"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.output.splitlines()]
    assert len(lines) == 1 and 1500 <= lines[0]["index"] < 1600 and lines[0]["detector"] == "PageHinkley"
    same = runner.invoke(cli, ["drift", "replay", str(parquet_path), "-m", "response_time", "-c", "ms", "--json"])
    assert same.output == result.output
    adwin = runner.invoke(cli, ["drift", "replay", str(csv_path), "-m", "response_time", "-d", "ADWIN", "-p", "delta=0.01"])
    assert adwin.exit_code == 0 and "ADWIN" in adwin.output and "not above -1 (log1p)" in " ".join(adwin.output.split())


def test_evaluate_scores_against_labels_and_bad_options_fail_clearly(latency_files, tmp_path: Path):
    from streams.cli.main import cli

    csv_path, _ = latency_files
    labels = tmp_path / "labels.txt"
    labels.write_text("1500\n")
    runner = CliRunner()
    result = runner.invoke(cli, ["drift", "evaluate", str(csv_path), "-m", "response_time", "--labels", str(labels), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["detected"] == 1 and report["false_alarms"] == 0 and report["recall"] == 1.0 and report["delays"][0] < 100
    bad = runner.invoke(cli, ["drift", "replay", str(csv_path), "-m", "response_time", "-d", "PageHinkley", "-p", "treshold=3"])
    assert bad.exit_code == 2 and "unknown parameter(s) treshold" in bad.output
    assert runner.invoke(cli, ["drift", "replay", str(csv_path), "-m", "latency"]).exit_code == 2
    assert runner.invoke(cli, ["drift", "evaluate", str(csv_path), "-m", "cost", "--labels", "x,y"]).exit_code == 2


def test_load_state_replaces_a_live_channel_and_evict_forgets_it():
    facts = stream(random.Random(8), 600)
    monitor = DriftMonitor(declared())
    for f in facts[:300]:
        monitor.observe(f)
    key = state_key("t1", "coder", "response_time")
    snapshot = monitor.dump_state(key)
    for f in facts[300:]:
        monitor.observe(f)
    assert monitor.load_state(key, snapshot) is True
    monitor.observe(facts[0])
    assert monitor._channels[key].seen == 301
    assert key in monitor.take_dirty()
    monitor.evict(key)
    monitor.observe(facts[0])
    assert monitor._channels[key].seen == 1


def test_the_anomaly_state_round_trip_scores_exactly_as_the_original():
    facts = stream(random.Random(9), 1500)
    monitor = DriftMonitor(declared())
    for f in facts[:1000]:
        monitor.observe(f)
    key = state_key("t1", "coder", "anomaly")
    data = monitor.dump_state(key)
    assert len(data) < 15_000
    copy = DriftMonitor(declared(), restore={key: data}.get)
    original = monitor._channels[key].model
    copy.observe(facts[1000])  # opens the channel from the bytes
    original.learn_one({"response_time": math.log1p(facts[1000]["response_time_ms"]), "cost": math.log1p(facts[1000]["cost"])})
    restored = copy._channels[key].model
    for f in facts[1001:]:
        x = {"response_time": math.log1p(f["response_time_ms"]), "cost": math.log1p(f["cost"])}
        assert restored.score_one(x) == original.score_one(x)
        restored.learn_one(x)
        original.learn_one(x)


def test_topology_validate_and_show_name_the_drift_detectors(tmp_path: Path):
    from streams.cli.main import cli

    runner = CliRunner()
    shown = runner.invoke(cli, ["topology", "show", "--file", str(REAL)])
    assert shown.exit_code == 0 and "PageHinkley" in shown.output and "HalfSpaceTrees" in shown.output
    data = yaml.safe_load(REAL.read_text())
    data["drift"]["metrics"][1]["detector"] = "Adwin"
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(data))
    bad = runner.invoke(cli, ["topology", "validate", "--file", str(path)])
    assert bad.exit_code == 1 and "drift cost: unknown detector 'Adwin' for cost; known: ADWIN, KSWIN, PageHinkley" in " ".join(bad.output.split())


def test_a_batch_redone_after_a_crash_gives_the_same_alerts_and_states():
    from streams.drift.batch import detect

    facts = stream(random.Random(13), 4000, slow_from=3500)
    records = [(3, i, f) for i, f in enumerate(facts)]
    table: dict[str, bytes] = {}
    first = DriftMonitor(declared(), restore=table.get)
    table.update(detect(first, records[:3000]).states)  # committed
    aborted = detect(first, [*records[3000:], (3, 4000, "not a fact")])  # the process dies before its commit
    assert [json.loads(v)["metric"] for _, v in aborted.alerts] == ["response_time"] and aborted.alerts[0][0] == b"t1"
    redone = detect(DriftMonitor(declared(), restore=table.get), [*records[3000:], (3, 4000, "not a fact")])
    assert redone.alerts == aborted.alerts
    assert redone.states.keys() == aborted.states.keys()
    # Pickles of equal states may differ in bytes (memo layout); what counts is what they do next.
    # then, after the cool-down, another doubling
    more = [(3, 5000 + i, {**f, "response_time_ms": (2 if i >= 1000 else 1) * f["response_time_ms"]}) for i, f in enumerate(stream(random.Random(14), 3000, slow_from=0))]
    after_aborted = detect(DriftMonitor(declared(), restore=aborted.states.get), more)
    after_redone = detect(DriftMonitor(declared(), restore=redone.states.get), more)
    assert after_redone.alerts == after_aborted.alerts and after_aborted.alerts
