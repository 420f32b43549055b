"""The worker entry point: the runtime agents, which of them this process runs, and ``run``."""

from __future__ import annotations

import gc
import sys
from typing import Iterable, Sequence

from faust.web import Request, Response, View

from schemas import default_registry, topics
from schemas.wire import bind
from schemas.topology import CodeView
from streams import billing_agent, drift_agent, facts_agent, handlers, projection_agent, provisioner_agent, saga_agent
from streams import web_views  # noqa: F401  (registers /cubes/{name} on the web server)
from streams.app import app, settings, topology
from streams.drift.catalog import check as drift_check
from streams.runtime import AgentContext, RuntimeAgent
from streams.runtime.service import RuntimeService, runtime_service

#: Every agent of the platform, by name (``topology.yaml`` declares the same set).
AGENTS: dict[str, RuntimeAgent] = {
    agent.name: agent
    for agent in (handlers.AGENT, facts_agent.AGENT, projection_agent.AGENT, saga_agent.AGENT, provisioner_agent.AGENT, billing_agent.AGENT, drift_agent.AGENT)
}


class UnknownAgent(ValueError):
    """A name given to ``agentstream worker --agents`` that is no agent of the platform."""


def select(names: Iterable[str] | None) -> list[RuntimeAgent]:
    """The agents called ``names`` (all of them for None or empty); UnknownAgent names the wrong ones."""
    wanted = [n.strip() for n in names or [] if n.strip()]
    unknown = [n for n in wanted if n not in AGENTS]
    if unknown:
        raise UnknownAgent(f"no such agent: {', '.join(unknown)} (agents: {', '.join(AGENTS)})")
    return [AGENTS[n] for n in wanted] if wanted else list(AGENTS.values())


def code_view() -> CodeView:
    """The agents, tables, schemas and drift detector checks that the code defines, for ``topology validate``."""
    partitions = {table: topology.topic(agent.inputs[0]).partitions for agent in AGENTS.values() for table in agent.tables}
    return CodeView(
        agents={agent.name: (list(agent.inputs), list(agent.tables)) for agent in AGENTS.values()},
        tables=partitions,
        schemas=set(default_registry().names()),
        topics=frozenset(topics.ALL),
        drift_checker=drift_check,
    )


@app.page("/runtime")
class RuntimeView(View):
    """``GET /runtime``: per runtime agent, the partitions it owns here and what it has committed."""

    async def get(self, request: Request) -> Response:
        running = RuntimeService.running
        return self.json({"worker_id": settings.worker_id, "agents": running.status() if running else []})


def run(agents: Sequence[str] | None = None) -> None:
    """Run a worker with ``agents`` (all by default) until it is stopped (SIGINT/SIGTERM).

    Each agent's loop restores its tables from their changelog topics when it is given
    partitions, so a worker keeps no local state between runs and any worker can take any
    partition.
    """
    chosen = select(agents)
    bind(default_registry(), settings)  # schema ids from the registry, cached before the first record
    # The runtime allocates many short-lived objects per record and keeps long-lived tables: fewer
    # young collections, and the start-up objects out of the old generation's scans (~10% CPU).
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)
    app.conf.datadir.mkdir(parents=True, exist_ok=True)
    app.service(runtime_service(chosen, AgentContext(settings, topology)))
    sys.argv = ["agentstream-worker", "worker", "--loglevel", settings.log_level]
    app.main()
