"""The pure core: aggregates (deciders) and the vocabulary they share. No I/O.

What a decider needs beyond its stream (another stream's state, the declared cubes) comes in its
``related`` argument, filled by the command processor.
"""

from streams.domain.agents import AGENT
from streams.domain.core import Aggregate, Command, Event, Rejection, RejectionCode, replay
from streams.domain.dashboards import dashboard_aggregate
from streams.domain.tasks import TASK
from streams.domain.tenants import TENANT


DASHBOARD = dashboard_aggregate()

#: Every aggregate the command handler knows.
AGGREGATES: tuple[Aggregate, ...] = (AGENT, TENANT, TASK, DASHBOARD)


def aggregate_for(command_type: str) -> Aggregate | None:
    """The aggregate that owns ``command_type`` (None when no aggregate handles it)."""
    for aggregate in AGGREGATES:
        if command_type in aggregate.commands:
            return aggregate
    return None


def aggregate_for_stream(stream_id: str) -> Aggregate | None:
    """The aggregate whose streams include ``stream_id`` (None when none does).

    A ``stream_prefix`` ending in ``-`` matches ids that start with it and name something
    (``agent-a1``, ``task-t1``); any other prefix must equal the id (``tenant``).
    """
    for aggregate in AGGREGATES:
        prefix = aggregate.stream_prefix
        if not prefix:
            continue
        if prefix.endswith("-") and stream_id.startswith(prefix) and len(stream_id) > len(prefix):
            return aggregate
        if not prefix.endswith("-") and stream_id == prefix:
            return aggregate
    return None


__all__ = ["AGENT", "AGGREGATES", "DASHBOARD", "TASK", "TENANT", "Aggregate", "Command", "Event", "Rejection", "RejectionCode", "aggregate_for", "aggregate_for_stream", "replay"]
