"""The worker entry point: the app with every agent registered, and ``run`` to start it."""

from __future__ import annotations

import sys

from schemas import default_registry
from streams import handlers  # noqa: F401  (registers the command handler agent)
from streams import facts_agent  # noqa: F401  (registers the facts builder agent)
from streams import projection_agent  # noqa: F401  (registers the projector agent)
from streams import web_views  # noqa: F401  (registers /cubes/{name} on the web server)
from streams.app import agent_tables, app, settings
from streams.topology import CodeView


def code_view() -> CodeView:
    """The agents, tables and schemas that the code defines, for ``topology validate``."""
    return CodeView(
        agents={agent.name: (list(agent.channel.topics), agent_tables.get(agent.name, [])) for agent in app.agents.values()},
        tables={table.name: table.partitions for table in app.tables.values()},
        schemas=set(default_registry().names()),
    )


def run() -> None:
    """Run a Faust worker in this process until it is stopped (SIGINT/SIGTERM)."""
    sys.argv = ["agentstream-worker", "worker", "--loglevel", settings.log_level]
    app.main()
