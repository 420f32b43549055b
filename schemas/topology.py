"""The declared topology (``topology.yaml``): topics, tables, agents, sinks, cubes and drift detectors.

This module only reads and checks the declaration; ``connectors.kafka_admin`` compares it
with a live cluster and applies it, and ``streams.cli.topology`` draws it. The drift section's
detector names and parameters are checked against river by ``validate`` through the code's
view (``CodeView.drift_checker``, given by ``streams.drift.catalog``), so this bottom layer does
not import river.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, ClassVar, Iterable, Literal, Sequence

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from schemas.dashboards import DashboardSpec, check_dashboards
from schemas.exports import ExportSpec


class TopologyError(ValueError):
    """The topology file is missing, is not YAML, or does not match the declared shape."""


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TopicSpec(_Spec):
    """A Kafka topic: its partitions, retention, cleanup policy, key and value schemas."""

    name: str
    partitions: int = Field(ge=1)
    retention_ms: int = Field(default=7 * 24 * 3600 * 1000, ge=-1, description="-1 keeps records forever")
    cleanup_policy: Literal["delete", "compact", "compact,delete"] = "delete"
    key: str = Field(description="what the record key is, e.g. tenant_id")
    schemas: list[str] = Field(default_factory=list, description="Avro schemas the values may carry")
    value_format: Literal["avro", "json", "bytes"] = "avro"
    compatibility: Literal[
        "BACKWARD", "BACKWARD_TRANSITIVE", "FORWARD", "FORWARD_TRANSITIVE", "FULL", "FULL_TRANSITIVE", "NONE"
    ] = Field(default="BACKWARD_TRANSITIVE", description="schema registry compatibility level of the schemas it carries")
    config: dict[str, str] = Field(default_factory=dict, description="further topic configs")
    description: str = ""

    def kafka_config(self) -> dict[str, str]:
        """The topic configs that ``apply`` sets and ``diff`` compares."""
        return {"cleanup.policy": self.cleanup_policy, "retention.ms": str(self.retention_ms), **self.config}


class QuotaLimits(_Spec):
    """What a tenant may use: the five quotas of the command path plus two task defaults.

    Money is in integer micro-units of the billing currency (1 unit = 1,000,000 micros), so
    budgets add up exactly. ``task_max_cost_micros`` and ``task_start_within_s`` fill an
    ``AssignTask`` that does not say its own ``max_cost`` / ``start_within_s``.
    """

    FIELDS: ClassVar[tuple[str, ...]] = (
        "max_agents", "max_concurrent_tasks", "api_rate_per_hour", "storage_limit_bytes",
        "monthly_budget_micros", "task_max_cost_micros", "task_start_within_s",
    )

    max_agents: int = Field(ge=0, description="agents a tenant may create")
    max_concurrent_tasks: int = Field(ge=0, description="tasks holding a slot at once (from TaskAssigned to its end or its agent's stop)")
    api_rate_per_hour: int = Field(ge=0, description="accepted commands in any interval of one hour")
    storage_limit_bytes: int = Field(ge=0, description="bytes of the tenant's events (encoded payloads)")
    monthly_budget_micros: int = Field(ge=0, description="spent + reserved task cost per UTC month, micro-units")
    task_max_cost_micros: int = Field(ge=0, description="the reservation of an AssignTask without max_cost")
    task_start_within_s: int = Field(ge=1, description="how long an agent has to start a task when AssignTask does not say")


class QuotaPlans(_Spec):
    """Default limits per commercial plan (``TenantCreated.plan``); ``SetTenantQuota`` overrides them per tenant."""

    plans: dict[str, QuotaLimits] = Field(min_length=1)

    @model_validator(mode="after")
    def _has_free(self) -> "QuotaPlans":
        if "free" not in self.plans:
            raise ValueError("quotas: plan 'free' is required (tenants of an unknown plan get its limits)")
        return self

    def limits(self, plan: str) -> QuotaLimits:
        """The defaults of ``plan`` (KeyError naming the known plans if it has none)."""
        try:
            return self.plans[plan]
        except KeyError:
            raise KeyError(f"no quota plan '{plan}' (declared: {', '.join(sorted(self.plans))})") from None


class TableSpec(_Spec):
    """A changelog-backed Faust table, updated from the stream of the agent that owns it."""

    name: str
    key: str
    description: str = ""


class AgentSpec(_Spec):
    """A stream agent: the topics it consumes and produces and the tables it updates."""

    name: str
    inputs: list[str] = Field(min_length=1)
    outputs: list[str] = Field(default_factory=list)
    tables: list[str] = Field(default_factory=list)
    description: str = ""


class SinkSpec(_Spec):
    """A sink that moves a topic into a store (ClickHouse or Redis)."""

    name: str
    kind: Literal["clickhouse", "redis"]
    inputs: list[str] = Field(min_length=1)
    target: str
    description: str = ""


class CubeSpec(_Spec):
    """An analytics cube built in ClickHouse from a sink's facts.

    Dimensions are a subset of ``ALLOWED_DIMENSIONS`` and must include ``tenant`` and ``time``;
    measures a subset of ``ALLOWED_MEASURES``; roll-ups a subset of minute/hour/day that
    includes ``minute`` (fed from the facts, the coarser ones from it); ``all_tenant_rollups``
    names roll-ups also kept without the tenant dimension (queries across all tenants merge far
    fewer aggregate states there). A TTL of 0 days keeps
    rows forever.
    """

    ALLOWED_DIMENSIONS: ClassVar[tuple[str, ...]] = ("tenant", "agent_type", "region", "agent_id", "time")
    ALLOWED_MEASURES: ClassVar[tuple[str, ...]] = (
        "task_count", "success_rate", "response_time_p50", "response_time_p95",
        "response_time_p99", "response_time_mean", "cost",
    )
    ALLOWED_ROLLUPS: ClassVar[tuple[str, ...]] = ("minute", "hour", "day")

    name: str
    source: str
    dimensions: list[str]
    measures: list[str]
    description: str = ""
    database: str = Field(default="agentstream", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    facts_table: str = Field(default="task_facts", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    ttl_days_raw: int = Field(default=90, ge=0, description="0 keeps rows forever")
    ttl_days_minute: int = Field(default=30, ge=0)
    ttl_days_hour: int = Field(default=365, ge=0)
    ttl_days_day: int = Field(default=0, ge=0)
    rollups: list[str] = Field(default_factory=lambda: ["minute", "hour", "day"])
    all_tenant_rollups: list[str] = Field(
        default_factory=list, description="roll-ups also kept without the tenant dimension, for all-tenant views (a subset of rollups)"
    )

    @model_validator(mode="after")
    def _known_names(self) -> "CubeSpec":
        problems: list[str] = []
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.name):
            problems.append(f"cube name '{self.name}' must be an identifier (letters, digits, _)")
        problems += [f"unknown dimension '{d}' (allowed: {', '.join(self.ALLOWED_DIMENSIONS)})" for d in self.dimensions if d not in self.ALLOWED_DIMENSIONS]
        problems += [f"dimension '{d}' is required" for d in ("tenant", "time") if d not in self.dimensions]
        problems += [f"unknown measure '{m}' (allowed: {', '.join(self.ALLOWED_MEASURES)})" for m in self.measures if m not in self.ALLOWED_MEASURES]
        problems += [f"unknown roll-up '{r}' (allowed: {', '.join(self.ALLOWED_ROLLUPS)})" for r in self.rollups if r not in self.ALLOWED_ROLLUPS]
        if "minute" not in self.rollups:
            problems.append("roll-up 'minute' is required (it is fed from the facts)")
        problems += [f"all-tenant roll-up '{r}' is not one of the roll-ups ({', '.join(self.rollups)})" for r in self.all_tenant_rollups if r not in self.rollups]
        for kind, values in (("dimension", self.dimensions), ("measure", self.measures), ("roll-up", self.rollups), ("all-tenant roll-up", self.all_tenant_rollups)):
            problems += [f"{kind} '{v}' is listed twice" for v in sorted({v for v in values if values.count(v) > 1})]
        if problems:
            raise ValueError(f"cube '{self.name}': " + "; ".join(problems))
        return self


#: The task-fact metrics a drift detector can watch (``streams.drift`` reads them from a fact).
DRIFT_METRICS: tuple[str, ...] = ("response_time", "cost", "failure")
#: Transforms applied to a value before its detector sees it (``log`` needs values > 0).
DRIFT_TRANSFORMS: tuple[str, ...] = ("none", "log", "log1p")

ParamValue = bool | int | float | str | None


class DriftMetricSpec(_Spec):
    """One drift detector on one metric of the task facts, per (tenant, agent_type).

    ``detector`` is a river detector class name (``ADWIN``, ``PageHinkley``, ``KSWIN``, ``DDM``,
    ``EDDM``, ``FHDDM``, ``HDDM_A``, ``HDDM_W``) and ``params`` its constructor arguments; names and
    values are checked against river by ``topology validate``. Each value goes through
    ``transform``; the first ``warmup`` values after a (re)start are not fed to the detector, and
    with ``standardize`` they fix a location and spread (their mean and standard deviation) by
    which every later value is centred and divided, so thresholds are in units of the metric's own
    spread. Re-arm rule: after an alert the key's detector and
    scale restart from nothing and no alert is raised for the next ``cooldown`` values of that key,
    so one change gives one alert; a change that starts within those values is taken as part of
    the same episode (the detector learns it without an alert).
    """

    metric: Literal["response_time", "cost", "failure"]
    detector: str
    params: dict[str, ParamValue] = Field(default_factory=dict)
    transform: Literal["none", "log", "log1p"] = "none"
    standardize: bool = False
    warmup: int = Field(default=0, ge=0, description="values after a (re)start that only fix the location and spread")
    cooldown: int = Field(default=500, ge=0, description="values after an alert during which no alert is raised")
    description: str = ""


class AnomalyFeatureSpec(_Spec):
    """One feature of a task's vector for the anomaly detector: a metric, its transform and its range."""

    metric: Literal["response_time", "cost", "failure"]
    transform: Literal["none", "log", "log1p"] = "none"
    limits: tuple[float, float] = Field(description="range of the transformed value (HalfSpaceTrees splits within it)")

    @model_validator(mode="after")
    def _ordered(self) -> "AnomalyFeatureSpec":
        if not self.limits[0] < self.limits[1]:
            raise ValueError(f"feature '{self.metric}': limits {list(self.limits)} must be [low, high] with low < high")
        return self


class AnomalySpec(_Spec):
    """An anomaly detector (river ``HalfSpaceTrees``) on each task's feature vector, per (tenant, agent_type).

    A task whose score is at least ``threshold`` raises ``AnomalyDetected``, once the model has seen
    ``warmup`` tasks, and at most once per ``cooldown`` tasks of that key.
    """

    detector: str = "HalfSpaceTrees"
    params: dict[str, ParamValue] = Field(default_factory=dict)
    features: list[AnomalyFeatureSpec] = Field(min_length=1)
    threshold: float = Field(gt=0.0, le=1.0)
    warmup: int = Field(default=250, ge=0)
    cooldown: int = Field(default=100, ge=0)
    description: str = ""

    @model_validator(mode="after")
    def _features_once(self) -> "AnomalySpec":
        names = [f.metric for f in self.features]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"anomaly: feature(s) {', '.join(twice)} listed twice")
        return self


class DriftSpec(_Spec):
    """The drift section: the detectors per metric, the anomaly detector and the alerts topic."""

    alerts_topic: str = "alerts.drift"
    metrics: list[DriftMetricSpec] = Field(default_factory=list)
    anomaly: AnomalySpec | None = None

    @model_validator(mode="after")
    def _metrics_once(self) -> "DriftSpec":
        names = [m.metric for m in self.metrics]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"drift: metric(s) {', '.join(twice)} declared twice (one detector per metric)")
        return self

    def metric(self, name: str) -> DriftMetricSpec:
        """The declaration of metric ``name`` (KeyError if none)."""
        for spec in self.metrics:
            if spec.metric == name:
                return spec
        raise KeyError(f"metric '{name}' has no drift detector in the topology (declared: {', '.join(m.metric for m in self.metrics) or 'none'})")


def check_exports(exports: Sequence[ExportSpec], cubes: Sequence[CubeSpec]) -> list[str]:
    """Problems of ``exports`` against the declared ``cubes``: duplicate names, unknown cubes,
    measures or dimensions the cube does not declare. Empty when they agree."""
    problems: list[str] = []
    names = [e.name for e in exports]
    problems += [f"exports: '{n}' is declared twice" for n in sorted({n for n in names if names.count(n) > 1})]
    by_name = {c.name: c for c in cubes}
    for export in exports:
        if export.cube is None:
            continue
        cube = by_name.get(export.cube)
        if cube is None:
            problems.append(f"export '{export.name}': unknown cube '{export.cube}'")
            continue
        problems += [f"export '{export.name}': cube '{cube.name}' has no measure '{m}'" for m in export.measures if m not in cube.measures]
        problems += [f"export '{export.name}': cube '{cube.name}' has no dimension '{d}'" for d in export.dimensions if d not in cube.dimensions]
    return problems


class Topology(_Spec):
    """The whole declaration, with its internal references checked."""

    topics: list[TopicSpec]
    tables: list[TableSpec] = Field(default_factory=list)
    agents: list[AgentSpec] = Field(default_factory=list)
    sinks: list[SinkSpec] = Field(default_factory=list)
    cubes: list[CubeSpec] = Field(default_factory=list)
    exports: list[ExportSpec] = Field(default_factory=list, description="scheduled exports (schemas/exports.py)")
    quotas: QuotaPlans | None = Field(default=None, description="default tenant limits per plan (streams/domain/quotas.py)")
    dashboards: list[DashboardSpec] = Field(default_factory=list, description="default dashboards every tenant gets (schemas/dashboards.py)")
    drift: DriftSpec | None = Field(default=None, description="online drift and anomaly detectors (streams/drift/)")

    @model_validator(mode="after")
    def _references_resolve(self) -> "Topology":
        problems: list[str] = []
        for kind in ("topics", "tables", "agents", "sinks", "cubes"):
            names = [item.name for item in getattr(self, kind)]
            problems += [f"{kind}: '{n}' is declared twice" for n in sorted({n for n in names if names.count(n) > 1})]
        topics = {t.name for t in self.topics}
        tables = {t.name for t in self.tables}
        for agent in self.agents:
            problems += [f"agent '{agent.name}': unknown topic '{t}'" for t in [*agent.inputs, *agent.outputs] if t not in topics]
            problems += [f"agent '{agent.name}': unknown table '{t}'" for t in agent.tables if t not in tables]
        for sink in self.sinks:
            problems += [f"sink '{sink.name}': unknown topic '{t}'" for t in sink.inputs if t not in topics]
        sinks = {s.name for s in self.sinks}
        problems += [f"cube '{c.name}': unknown sink '{c.source}'" for c in self.cubes if c.source not in sinks]
        if self.drift is not None and self.drift.alerts_topic not in topics:
            problems.append(f"drift: unknown alerts topic '{self.drift.alerts_topic}'")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def topic(self, name: str) -> TopicSpec:
        """The topic declared under ``name`` (KeyError if none)."""
        for topic in self.topics:
            if topic.name == name:
                return topic
        raise KeyError(f"topic '{name}' is not declared in the topology")

    def agent(self, name: str) -> AgentSpec:
        """The agent declared under ``name`` (KeyError if none)."""
        for agent in self.agents:
            if agent.name == name:
                return agent
        raise KeyError(f"agent '{name}' is not declared in the topology")

    def table_partitions(self, table: str) -> int:
        """Partitions of a table: those of the input topics of the agent that updates it."""
        for agent in self.agents:
            if table in agent.tables:
                return self.topic(agent.inputs[0]).partitions
        raise KeyError(f"table '{table}' is updated by no declared agent")


def load_topology(path: Path) -> Topology:
    """Read and check ``topology.yaml``; raise TopologyError with every problem found."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError as exc:
        raise TopologyError(f"{path}: no such topology file") from exc
    except yaml.YAMLError as exc:
        raise TopologyError(f"{path}: not valid YAML: {exc}") from exc
    try:
        return Topology.model_validate(data or {})
    except ValidationError as exc:
        lines = [f"{'.'.join(map(str, e['loc'])) or 'topology'}: {e['msg']}" for e in exc.errors()]
        raise TopologyError(f"{path}: " + "; ".join(lines)) from exc


@lru_cache(maxsize=8)
def declared_cubes(path: Path) -> dict[str, CubeSpec]:
    """The cubes of the topology file at ``path`` by name, read once per path (TopologyError if unreadable)."""
    return {cube.name: cube for cube in load_topology(path).cubes}


# --- validation against the code -------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """One reason the topology and the code disagree."""

    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


@dataclass(frozen=True)
class CodeView:
    """The agents, tables and schemas that the code defines, and table partition counts."""

    agents: dict[str, tuple[list[str], list[str]]]  # name -> (input topics, tables it updates)
    tables: dict[str, int]  # name -> partitions
    schemas: set[str]
    topics: frozenset[str] = frozenset()  # every topic name the code reads or writes
    #: Problems of one declared detector: (metric or "anomaly", detector name, params) -> messages;
    #: None skips the check.
    drift_checker: Callable[[str, str, dict[str, ParamValue]], list[str]] | None = None


def validate(topology: Topology, code: CodeView) -> list[Problem]:
    """Every way the declaration and the code disagree; empty when they agree.

    Checks: every topic the code names is declared; each topic's schemas exist; each declared agent exists in the code with the same
    inputs and each code agent is declared; each declared table exists and has as many
    partitions as the stream that updates it (co-partitioning); each dashboard widget names a
    measure, dimension and granularity its cube has; each drift detector is one the code knows,
    with parameters its constructor takes (when the view has a ``drift_checker``).
    """
    problems: list[Problem] = []
    declared_topics = {t.name for t in topology.topics}
    problems += [Problem(f"topic {name}", "the code uses it but the topology does not declare it") for name in sorted(code.topics - declared_topics)]
    cubes = {c.name: c for c in topology.cubes}
    problems += [Problem("dashboards", message) for message in check_dashboards(topology.dashboards, cubes)]
    for topic in topology.topics:
        problems += [Problem(f"topic {topic.name}", f"schema '{s}' does not exist in schemas/") for s in topic.schemas if s not in code.schemas]
    declared = {a.name for a in topology.agents}
    for agent in topology.agents:
        if agent.name not in code.agents:
            problems.append(Problem(f"agent {agent.name}", "declared in the topology but the code has no such agent"))
            continue
        inputs, tables = code.agents[agent.name]
        if sorted(inputs) != sorted(agent.inputs):
            problems.append(Problem(f"agent {agent.name}", f"the code consumes {sorted(inputs)}, the topology declares {sorted(agent.inputs)}"))
        if sorted(tables) != sorted(agent.tables):
            problems.append(Problem(f"agent {agent.name}", f"the code updates tables {sorted(tables)}, the topology declares {sorted(agent.tables)}"))
    problems += [Problem(f"agent {name}", "exists in the code but is not declared in the topology") for name in sorted(set(code.agents) - declared)]
    for table in topology.tables:
        if table.name not in code.tables:
            problems.append(Problem(f"table {table.name}", "declared in the topology but the code has no such table"))
            continue
        for agent in topology.agents:
            if table.name in agent.tables:
                for source in agent.inputs:
                    want = topology.topic(source).partitions
                    if code.tables[table.name] != want:
                        problems.append(
                            Problem(f"table {table.name}", f"has {code.tables[table.name]} partitions but its source topic '{source}' has {want}: not co-partitioned")
                        )
    problems += [Problem(f"table {name}", "exists in the code but is not declared in the topology") for name in sorted(set(code.tables) - {t.name for t in topology.tables})]
    if topology.drift is not None and code.drift_checker is not None:
        for spec in topology.drift.metrics:
            problems += [Problem(f"drift {spec.metric}", message) for message in code.drift_checker(spec.metric, spec.detector, spec.params)]
        if topology.drift.anomaly is not None:
            anomaly = topology.drift.anomaly
            problems += [Problem("drift anomaly", message) for message in code.drift_checker("anomaly", anomaly.detector, anomaly.params)]
    return problems


# --- drawing ---------------------------------------------------------------------------


def edges(topology: Topology) -> Iterable[tuple[str, str]]:
    """Data-flow edges: topic -> agent, agent -> topic, agent -> table, topic -> sink, sink -> cube."""
    for agent in topology.agents:
        yield from ((f"topic:{t}", f"agent:{agent.name}") for t in agent.inputs)
        yield from ((f"agent:{agent.name}", f"topic:{t}") for t in agent.outputs)
        yield from ((f"agent:{agent.name}", f"table:{t}") for t in agent.tables)
    for sink in topology.sinks:
        yield from ((f"topic:{t}", f"sink:{sink.name}") for t in sink.inputs)
    for cube in topology.cubes:
        yield (f"sink:{cube.source}", f"cube:{cube.name}")


def _node_id(node: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in node)


_SHAPES: dict[str, tuple[str, str, str]] = {
    # kind: (mermaid open, mermaid close, dot shape)
    "topic": ("[/", "/]", "cds"),
    "agent": ("([", "])", "box"),
    "table": ("[(", ")]", "cylinder"),
    "sink": ("[[", "]]", "component"),
    "cube": ("{{", "}}", "hexagon"),
}


def render_graph(topology: Topology, fmt: Literal["mermaid", "dot"]) -> str:
    """The topology as a Mermaid flowchart or a Graphviz digraph."""
    pairs = list(edges(topology))
    nodes = sorted({n for pair in pairs for n in pair} | {f"topic:{t.name}" for t in topology.topics})
    if fmt == "mermaid":
        lines = ["flowchart LR"]
        for node in nodes:
            kind, label = node.split(":", 1)
            opening, closing, _ = _SHAPES[kind]
            lines.append(f'    {_node_id(node)}{opening}"{label}"{closing}')
        lines += [f"    {_node_id(a)} --> {_node_id(b)}" for a, b in pairs]
        return "\n".join(lines) + "\n"
    lines = ["digraph agentstream {", "    rankdir=LR;"]
    for node in nodes:
        kind, label = node.split(":", 1)
        lines.append(f'    {_node_id(node)} [label="{label}", shape={_SHAPES[kind][2]}];')
    lines += [f"    {_node_id(a)} -> {_node_id(b)};" for a, b in pairs]
    return "\n".join(lines) + "\n}\n"
