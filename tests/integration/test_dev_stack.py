"""`agentstream dev up|down` on its own ports and data directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import TEST_REGISTRY_PORT
from tests.helpers import run_cli

pytestmark = pytest.mark.integration


def _processes_in(directory: Path) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if Path(os.readlink(entry / "cwd")).is_relative_to(directory):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def test_dev_up_twice_then_down_leaves_nothing_running(tmp_path: Path):
    # A stack of its own, on ports below Linux's ephemeral range (32768-60999): a port in that
    # range can be held at any moment by some connection's local end (a CI run failed so).
    env = {
        "AGENTSTREAM_DATA_DIR": str(tmp_path),
        "AGENTSTREAM_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:31092",
        "AGENTSTREAM_REDIS_URL": "redis://127.0.0.1:31379/0",
        "AGENTSTREAM_SCHEMA_REGISTRY_URL": f"http://127.0.0.1:{TEST_REGISTRY_PORT + 1}/apis/ccompat/v7",
    }
    try:
        first = run_cli("dev", "up", env=env, timeout=180)
        assert first.returncode == 0, first.stdout + first.stderr
        assert "started kafka, redis, registry" in first.stdout
        pids = _processes_in(tmp_path)
        assert len(pids) == 3

        second = run_cli("dev", "up", env=env)
        assert second.returncode == 0, second.stdout + second.stderr
        assert "already running" in second.stdout
        assert sorted(_processes_in(tmp_path)) == sorted(pids)  # nothing new started

        status = run_cli("dev", "status", env=env)
        assert status.returncode == 0 and status.stdout.count("running") == 3
    finally:
        down = run_cli("dev", "down", env=env)
    assert down.returncode == 0, down.stdout + down.stderr
    assert "stopped registry, redis, kafka" in down.stdout
    assert _processes_in(tmp_path) == []
    assert run_cli("dev", "status", env=env).returncode == 1
    assert "nothing was running" in run_cli("dev", "down", env=env).stdout
