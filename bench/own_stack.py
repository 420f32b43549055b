"""The local services a benchmark runs on: its own ports and data directory, stopped after."""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:
    from schemas.settings import Settings


@contextmanager
def own_stack(prefix: str, kafka_port: int, redis_port: int, registry_port: int | None = None, **env: str) -> Iterator["Settings"]:
    """Kafka (KRaft), redis-server and the schema registry on 127.0.0.1 at the given ports (the
    registry's defaults to ``kafka_port - 1011``) with the topology applied and this process's
    schema ids bound, as a worker binds them.

    The settings come from ``AGENTSTREAM_*`` variables set here (plus ``env``, e.g.
    ``AGENTSTREAM_SINK_PORT``), so child processes (workers, sinks) inherit them. On exit the
    services are stopped and the temporary data directory deleted.
    """
    data_dir = Path(tempfile.mkdtemp(prefix=prefix))
    os.environ.update(
        {
            "AGENTSTREAM_KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{kafka_port}",
            "AGENTSTREAM_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
            "AGENTSTREAM_DATA_DIR": str(data_dir),
            "AGENTSTREAM_LOG_LEVEL": "warn",
            "AGENTSTREAM_SCHEMA_REGISTRY_URL": f"http://127.0.0.1:{registry_port or kafka_port - 1011}/apis/ccompat/v7",
            **env,
        }
    )
    from connectors.kafka_admin import apply
    from connectors.local_stack import LocalStack
    from schemas import default_registry
    from schemas.settings import get_settings
    from schemas.wire import bind
    from schemas.topology import load_topology

    get_settings.cache_clear()
    settings = get_settings()
    stack = LocalStack(settings)
    stack.up(echo=lambda line: None)
    try:
        apply(load_topology(settings.topology_path), settings, echo=lambda line: None)
        bind(default_registry(), settings)
        yield settings
    finally:
        stack.down(echo=lambda line: None)
        shutil.rmtree(data_dir, ignore_errors=True)
