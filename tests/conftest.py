"""Test services: testcontainers when a Docker engine answers, the local stack otherwise.

Ports: ``AGENTSTREAM_TEST_KAFKA_PORT``, ``AGENTSTREAM_TEST_REDIS_PORT``, ``AGENTSTREAM_TEST_WEB_PORT``
(the sink's query API on +11) and ``AGENTSTREAM_TEST_REGISTRY_PORT`` (the schema registry).

The environment is set here, before any agentstream module reads its settings, so that the
code under test, the CLI subprocesses and the workers all talk to the test services (their own
ports and data directory, never the developer's `agentstream dev up` stack). A service that
cannot be started fails the tests that need it; nothing is skipped.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

TEST_KAFKA_PORT = int(os.environ.get("AGENTSTREAM_TEST_KAFKA_PORT", "29092"))
TEST_REDIS_PORT = int(os.environ.get("AGENTSTREAM_TEST_REDIS_PORT", "26379"))
TEST_WEB_PORT = int(os.environ.get("AGENTSTREAM_TEST_WEB_PORT", "6166"))
TEST_REGISTRY_PORT = int(os.environ.get("AGENTSTREAM_TEST_REGISTRY_PORT", "28081"))
TEST_DATA_DIR = Path(tempfile.mkdtemp(prefix="agentstream-test-"))

os.environ.update(
    {
        "AGENTSTREAM_KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{TEST_KAFKA_PORT}",
        "AGENTSTREAM_REDIS_URL": f"redis://127.0.0.1:{TEST_REDIS_PORT}/0",
        "AGENTSTREAM_DATA_DIR": str(TEST_DATA_DIR),
        "AGENTSTREAM_WEB_PORT": str(TEST_WEB_PORT),
        "AGENTSTREAM_SINK_PORT": str(TEST_WEB_PORT + 11),
        "AGENTSTREAM_SCHEMA_REGISTRY_URL": f"http://127.0.0.1:{TEST_REGISTRY_PORT}/apis/ccompat/v7",
        "AGENTSTREAM_LOG_LEVEL": "info",
    }
)
