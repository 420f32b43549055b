"""Fixtures that start the real services (Kafka, Redis, the schema registry) and a worker for integration tests."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import pytest

from schemas.settings import Settings, get_settings

if TYPE_CHECKING:
    from streams.supervisor import WorkerProcess


def _docker_engine() -> bool:
    try:
        import docker

        return bool(docker.from_env(timeout=3).ping())
    except Exception:
        return False


def _bound(settings: Settings) -> Settings:
    """The test process registers the schemas and caches their ids, as a worker does at start."""
    from schemas import default_registry
    from schemas.wire import bind

    bind(default_registry(), settings)
    return settings


@pytest.fixture(scope="session")
def settings(request: pytest.FixtureRequest) -> Iterator[Settings]:
    """Settings pointing at running Kafka and Redis for the whole session (started here)."""
    if _docker_engine():
        from testcontainers.kafka import KafkaContainer
        from testcontainers.redis import RedisContainer

        from testcontainers.core.container import DockerContainer
        from testcontainers.core.waiting_utils import wait_for_logs

        with KafkaContainer("apache/kafka:4.4.0").with_kraft() as kafka, RedisContainer("redis:7.4-alpine") as redis_c:
            # In-memory storage: the container lives as long as the session's topics.
            registry_c = DockerContainer("apicurio/apicurio-registry:3.0.9").with_exposed_ports(8080)
            with registry_c:
                wait_for_logs(registry_c, "Installed features", timeout=120)
                os.environ["AGENTSTREAM_KAFKA_BOOTSTRAP_SERVERS"] = kafka.get_bootstrap_server()
                os.environ["AGENTSTREAM_REDIS_URL"] = f"redis://{redis_c.get_container_host_ip()}:{redis_c.get_exposed_port(6379)}/0"
                os.environ["AGENTSTREAM_SCHEMA_REGISTRY_URL"] = (
                    f"http://{registry_c.get_container_host_ip()}:{registry_c.get_exposed_port(8080)}/apis/ccompat/v7"
                )
                get_settings.cache_clear()
                yield _bound(get_settings())
            return

    from connectors.local_stack import LocalStack, StackError

    current = get_settings()
    stack = LocalStack(current)
    try:
        stack.up(echo=lambda line: print(line, file=sys.stderr), timeout=120)
    except StackError as exc:  # a missing service fails the run, it never skips
        pytest.fail(f"cannot start the test services: {exc}", pytrace=False)
    try:
        yield _bound(current)
    finally:
        stack.down(echo=lambda line: print(line, file=sys.stderr))
        for artifacts in ("logs", "screenshots"):  # the workers' logs and the browser's screenshots outlive a failed run
            found = current.data_dir / artifacts
            if request.session.testsfailed and found.is_dir():
                kept = Path(tempfile.mkdtemp(prefix=f"agentstream-test-{artifacts}-"))
                shutil.copytree(found, kept, dirs_exist_ok=True)
                print(f"{artifacts} of the failed run kept in {kept}", file=sys.stderr)
        shutil.rmtree(current.data_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def applied(settings: Settings) -> Settings:
    """The topology applied to the test cluster."""
    from connectors.kafka_admin import apply
    from schemas.topology import load_topology

    apply(load_topology(settings.topology_path), settings, echo=lambda line: None)
    return settings


@pytest.fixture(scope="session")
def worker(applied: Settings) -> Iterator["WorkerProcess"]:
    """One worker for the session; it has answered a first command before tests use it."""
    from streams.client import send_command
    from streams.supervisor import WorkerProcess

    proc = WorkerProcess(applied.data_dir / "logs" / "worker-session.log").start()
    try:
        outcome = send_command(applied, "CreateTenant", f"warmup-{uuid.uuid4().hex[:6]}", {"name": "Warmup"}, timeout=120)
        assert not isinstance(outcome, str)
    except Exception as exc:
        proc.stop()
        pytest.fail(f"the worker did not answer: {exc}\n{proc.log_tail()}", pytrace=False)
    yield proc
    proc.stop()
