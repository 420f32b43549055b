"""`agentstream topology` against the real broker: apply, diff, validate."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource, ResourceType

from connectors.kafka_admin import admin_client
from tests.helpers import REPO, run_cli

pytestmark = pytest.mark.integration


def test_apply_then_diff_reports_no_drift(settings):
    first = run_cli("topology", "apply")
    assert first.returncode == 0, first.stderr
    second = run_cli("topology", "apply")
    assert second.returncode == 0, second.stderr
    assert "nothing to change" in second.stdout
    diff = run_cli("topology", "diff")
    assert diff.returncode == 0, diff.stdout + diff.stderr
    assert "no drift" in diff.stdout


def test_diff_sees_config_drift_and_apply_repairs_it(settings):
    assert run_cli("topology", "apply").returncode == 0
    admin = admin_client(settings)
    resource = ConfigResource(
        ResourceType.TOPIC, "results.commands", incremental_configs=[ConfigEntry("retention.ms", "1234", incremental_operation=AlterConfigOpType.SET)]
    )
    for future in admin.incremental_alter_configs([resource]).values():
        future.result(10)
    drift = run_cli("topology", "diff")
    assert drift.returncode == 1
    assert "results.commands" in drift.stdout and "retention.ms=86400000" in drift.stdout and "retention.ms=1234" in drift.stdout
    assert run_cli("topology", "apply").returncode == 0
    assert run_cli("topology", "diff").returncode == 0


def test_diff_reports_missing_topic_for_a_new_declaration(settings, tmp_path: Path):
    data = yaml.safe_load((REPO / "topology.yaml").read_text())
    data["topics"].append({"name": "events.not-yet-created", "partitions": 3, "key": "tenant_id"})
    path = tmp_path / "topology.yaml"
    path.write_text(yaml.safe_dump(data))
    result = run_cli("topology", "diff", "--file", str(path))
    assert result.returncode == 1
    assert "events.not-yet-created" in result.stdout and "missing" in result.stdout


def _variant(tmp_path: Path, change) -> Path:
    data = yaml.safe_load((REPO / "topology.yaml").read_text())
    change(data)
    path = tmp_path / "topology.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_validate_accepts_the_real_topology():
    result = run_cli("topology", "validate")
    assert result.returncode == 0, result.stdout + result.stderr


def test_validate_names_a_missing_schema(tmp_path: Path):
    path = _variant(tmp_path, lambda d: d["topics"][0]["schemas"].append("LaunchRocket"))
    result = run_cli("topology", "validate", "--file", str(path))
    assert result.returncode != 0
    assert "LaunchRocket" in result.stdout


def test_validate_names_an_agent_the_code_lacks(tmp_path: Path):
    def add_agent(d):
        d["agents"].append({"name": "ghost_agent", "inputs": ["commands.platform"]})

    result = run_cli("topology", "validate", "--file", str(_variant(tmp_path, add_agent)))
    assert result.returncode != 0
    assert "ghost_agent" in result.stdout


def test_validate_names_an_undeclared_code_agent(tmp_path: Path):
    result = run_cli("topology", "validate", "--file", str(_variant(tmp_path, lambda d: d.__setitem__("agents", []))))
    assert result.returncode != 0
    assert "command_handler" in result.stdout and "not declared" in result.stdout


def test_validate_rejects_a_reference_to_an_undeclared_topic(tmp_path: Path):
    result = run_cli("topology", "validate", "--file", str(_variant(tmp_path, lambda d: d["agents"][0]["outputs"].append("events.nowhere"))))
    assert result.returncode != 0
    assert "events.nowhere" in result.stderr


def test_graph_draws_topics_agents_and_tables():
    mermaid = run_cli("topology", "graph", "--format", "mermaid")
    assert mermaid.returncode == 0
    assert mermaid.stdout.startswith("flowchart LR")
    assert "topic_commands_platform --> agent_command_handler" in mermaid.stdout
    dot = run_cli("topology", "graph", "--format", "dot")
    assert "topic_commands_platform -> agent_command_handler;" in dot.stdout
    assert run_cli("topology", "graph", "--format", "png").returncode == 2


def test_show_prints_the_tree():
    result = run_cli("topology", "show")
    assert result.returncode == 0
    assert "commands.platform" in result.stdout and "command_handler" in result.stdout
