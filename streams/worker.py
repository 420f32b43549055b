"""The worker entry point: the app with every agent registered, and ``run`` to start it."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from schemas import default_registry
from schemas.wire import bind
from streams import handlers  # noqa: F401  (registers the command handler agent)
from streams import facts_agent  # noqa: F401  (registers the facts builder agent)
from streams import projection_agent  # noqa: F401  (registers the projector agent)
from streams import web_views  # noqa: F401  (registers /cubes/{name} on the web server)
from streams.app import agent_tables, app, settings
from schemas.topology import CodeView


def code_view() -> CodeView:
    """The agents, tables and schemas that the code defines, for ``topology validate``."""
    return CodeView(
        agents={agent.name: (list(agent.channel.topics), agent_tables.get(agent.name, [])) for agent in app.agents.values()},
        tables={table.name: table.partitions for table in app.tables.values()},
        schemas=set(default_registry().names()),
    )


def run() -> None:
    """Run a Faust worker in this process until it is stopped (SIGINT/SIGTERM).

    Faust writes table changes to the local RocksDB store before the transaction that carries
    their changelog commits, and its final commit can fail during shutdown; after such a stop,
    or a crash, the store may hold changes of an aborted transaction, which would then decide
    commands (a retried command answered as done while its events were rolled back). So a worker
    always starts with empty local tables and restores them from the changelog topics, which
    under ``read_committed`` hold only committed changes. Start-up takes time proportional to the
    compacted changelogs; correctness does not depend on how the last run ended.
    """
    bind(default_registry(), settings)  # schema ids from the registry, cached before the first record
    datadir = Path(app.conf.datadir)
    shutil.rmtree(datadir, ignore_errors=True)
    datadir.mkdir(parents=True, exist_ok=True)
    sys.argv = ["agentstream-worker", "worker", "--loglevel", settings.log_level]
    app.main()
