"""topology.yaml: loading, internal references, validation against the code, drawing (pure)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from schemas.settings import REPO_ROOT
from schemas.topology import CodeView, Topology, TopologyError, load_topology, render_graph, validate

REAL = REPO_ROOT / "topology.yaml"


def code(**changes) -> CodeView:
    """The real code's view, with some parts replaced."""
    from streams.worker import code_view

    real = code_view()
    base = dict(agents=real.agents, tables=real.tables, schemas=real.schemas)
    return CodeView(**{**base, **changes})


def test_the_real_topology_loads_and_matches_the_code():
    from streams.worker import code_view

    topology = load_topology(REAL)
    assert validate(topology, code_view()) == []
    assert topology.table_partitions("aggregates") == topology.topic("commands.platform").partitions


def test_problems_name_what_is_wrong():
    topology = load_topology(REAL)
    problems = [str(p) for p in validate(topology, code(schemas={"CreateAgent"}, agents={}, tables={"aggregates": 3, "stray": 1}))]
    text = "\n".join(problems)
    assert "schema 'StartAgent' does not exist" in text
    assert "agent command_handler: declared in the topology but the code has no such agent" in text
    assert "table stray: exists in the code but is not declared" in text


def test_every_topic_the_code_names_is_declared():
    problems = validate(load_topology(REAL), code(topics=frozenset({"events.platform", "facts.taks"})))
    assert [str(p) for p in problems] == ["topic facts.taks: the code uses it but the topology does not declare it"]


def test_tables_must_be_copartitioned_with_their_source():
    problems = validate(load_topology(REAL), code(tables={**code().tables, "aggregates": 3}))
    assert [p.where for p in problems] == ["table aggregates"]
    assert "not co-partitioned" in problems[0].message


def test_agent_inputs_must_match_the_code():
    agents = {**code().agents, "command_handler": (["commands.other"], ["aggregates"])}
    problems = validate(load_topology(REAL), code(agents=agents))
    assert "consumes ['commands.other']" in str(problems[0])


@pytest.mark.parametrize(
    "mutate, words",
    [
        (lambda d: d["agents"][0]["inputs"].append("nope"), "unknown topic 'nope'"),
        (lambda d: d["agents"][0]["tables"].append("ghost"), "unknown table 'ghost'"),
        (lambda d: d["topics"].append(dict(d["topics"][0])), "declared twice"),
        (lambda d: d["topics"][0].__setitem__("partitions", 0), "greater than or equal to 1"),
        (lambda d: d["topics"][0].__setitem__("cleanup_policy", "shred"), "cleanup_policy"),
        (lambda d: d["quotas"]["plans"]["pro"].__setitem__("max_agents", -1), "quotas.plans.pro.max_agents: Input should be greater than or equal to 0"),
        (lambda d: d["quotas"]["plans"]["pro"].pop("monthly_budget_micros"), "quotas.plans.pro.monthly_budget_micros: Field required"),
        (lambda d: d["quotas"]["plans"]["pro"].__setitem__("max_tokens", 5), "quotas.plans.pro.max_tokens: Extra inputs"),
        (lambda d: d["quotas"]["plans"].pop("free"), "plan 'free' is required"),
    ],
)
def test_bad_declarations_fail_to_load_with_the_reason(tmp_path: Path, mutate, words):
    data = yaml.safe_load(REAL.read_text())
    mutate(data)
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(TopologyError, match=words):
        load_topology(path)


def test_missing_and_malformed_files(tmp_path: Path):
    with pytest.raises(TopologyError, match="no such topology file"):
        load_topology(tmp_path / "absent.yaml")
    (tmp_path / "bad.yaml").write_text("topics: [unclosed")
    with pytest.raises(TopologyError, match="not valid YAML"):
        load_topology(tmp_path / "bad.yaml")


def test_kafka_config_of_a_topic():
    topic = load_topology(REAL).topic("events.platform")
    assert topic.kafka_config() == {"cleanup.policy": "delete", "retention.ms": "-1"}


def test_graphs():
    topology: Topology = load_topology(REAL)
    mermaid = render_graph(topology, "mermaid")
    assert "agent_command_handler --> topic_events_platform" in mermaid
    assert "agent_command_handler --> table_aggregates" in mermaid
    dot = render_graph(topology, "dot")
    assert dot.startswith("digraph agentstream {") and dot.rstrip().endswith("}")
