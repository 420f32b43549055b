"""The pure core: aggregates (deciders) and the vocabulary they share. No I/O."""

from streams.domain.agents import AGENT
from streams.domain.core import Aggregate, Command, Event, Rejection, RejectionCode, replay
from streams.domain.tenants import TENANT

#: Every aggregate the command handler knows.
AGGREGATES: tuple[Aggregate, ...] = (AGENT, TENANT)


def aggregate_for(command_type: str) -> Aggregate | None:
    """The aggregate that owns ``command_type`` (None when no aggregate handles it)."""
    for aggregate in AGGREGATES:
        if command_type in aggregate.commands:
            return aggregate
    return None


__all__ = ["AGGREGATES", "Aggregate", "Command", "Event", "Rejection", "RejectionCode", "aggregate_for", "replay"]
