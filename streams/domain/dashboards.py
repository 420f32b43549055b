"""The Dashboard aggregate: a tenant's custom dashboards, saved and deleted by command (pure).

Stream id ``dashboard-<dashboard_id>`` within the tenant. ``SaveDashboard`` creates or replaces
the whole dashboard (``DashboardSaved`` carries all of it, so a reader needs only the last
event of a stream); ``DeleteDashboard`` removes it (``DashboardDeleted``).

A dashboard is only as good as its queries, so ``SaveDashboard`` is refused (ValidationFailed)
when its shape is wrong or a widget names a cube, measure, dimension or granularity that the
declared cubes do not have. The decider does not read ``topology.yaml``: the cube declarations
(name -> a ``CubeSpec`` or ``schemas.dashboards.CubeShape``) come in ``related["cubes"]``, which the
command processor fills from what the shell gave it (the topology the worker was started with).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from pydantic import BaseModel, ConfigDict

from schemas.dashboards import DashboardError, check_dashboard, parse_dashboard, saved_payload
from streams.domain.core import Aggregate, Command, Event, Rejection, RejectionCode

#: name -> cube declaration (measures, dimensions, rollups), asked for at each decision.


class DashboardState(BaseModel):
    """What the command side knows of one dashboard: whether it exists, and its saved payload."""

    model_config = ConfigDict(frozen=True)

    exists: bool = False
    dashboard: dict[str, Any] | None = None


def stream_id(command: Command) -> str:
    """Dashboards are streams ``dashboard-<dashboard_id>`` within their tenant."""
    return f"dashboard-{command.data['dashboard_id']}"


def save_dashboard(command: Command, state: DashboardState, cubes: Mapping[str, Any]) -> list[Event] | Rejection:
    """``DashboardSaved`` with the whole dashboard, or ValidationFailed naming every problem."""
    try:
        spec = parse_dashboard(command.data)
    except DashboardError as exc:
        return Rejection(RejectionCode.VALIDATION_FAILED, str(exc))
    problems = check_dashboard(spec, cubes)
    if problems:
        return Rejection(RejectionCode.VALIDATION_FAILED, "; ".join(problems))
    return [Event("DashboardSaved", saved_payload(spec))]


def delete_dashboard(command: Command, state: DashboardState, cubes: Mapping[str, Any]) -> list[Event] | Rejection:
    """``DashboardDeleted``, or NotFound when there is no such dashboard."""
    if not state.exists:
        return Rejection(RejectionCode.NOT_FOUND, f"dashboard '{command.data['dashboard_id']}' does not exist")
    return [Event("DashboardDeleted", {"dashboard_id": command.data["dashboard_id"]})]


DECIDE: dict[str, Callable[[Command, DashboardState, Mapping[str, Any]], "list[Event] | Rejection"]] = {
    "SaveDashboard": save_dashboard,
    "DeleteDashboard": delete_dashboard,
}


def evolve(state: DashboardState, event: Event) -> DashboardState:
    """The dashboard after ``event`` (unknown event types leave it unchanged)."""
    if event.type == "DashboardSaved":
        return DashboardState(exists=True, dashboard=dict(event.data))
    if event.type == "DashboardDeleted":
        return DashboardState()
    return state


EVOLVE = frozenset({"DashboardSaved", "DashboardDeleted"})


def dashboard_aggregate() -> Aggregate[DashboardState]:
    """The Dashboard aggregate, deciding against the cube declarations in ``related["cubes"]`` (none: every widget is refused)."""

    def decide(command: Command, state: DashboardState, related: Mapping[str, Any] | None = None) -> list[Event] | Rejection:
        handler = DECIDE.get(command.type)
        if handler is None:
            return Rejection(RejectionCode.UNKNOWN_COMMAND, f"the Dashboard aggregate does not handle {command.type}")
        return handler(command, state, (related or {}).get("cubes") or {})

    return Aggregate[DashboardState](
        name="Dashboard",
        commands=frozenset(DECIDE),
        events=EVOLVE,
        stream_prefix="dashboard-",
        stream_id=stream_id,
        initial=DashboardState,
        decide=decide,
        evolve=evolve,
        dump=lambda s: s.model_dump(mode="json"),
        load=DashboardState.model_validate,
    )
