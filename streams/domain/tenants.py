"""The Tenant aggregate: a tenant's creation, configuration and security policy (pure)."""

from __future__ import annotations

from typing import Any, Mapping

from pydantic import BaseModel, ConfigDict, Field

from streams.domain.core import Aggregate, Command, Event, Rejection, RejectionCode


class TenantState(BaseModel):
    """What the command side knows of one tenant."""

    model_config = ConfigDict(frozen=True)

    exists: bool = False
    name: str = ""
    region: str = ""
    plan: str = "free"
    settings: dict[str, str] = Field(default_factory=dict)
    policies: dict[str, dict[str, str]] = Field(default_factory=dict)
    grants: list[tuple[str, str]] = Field(default_factory=list)  # (principal, role)


def stream_id(command: Command) -> str:
    """Each tenant has one stream, ``tenant``, inside its own keyspace."""
    return "tenant"


def decide(command: Command, state: TenantState, related: Mapping[str, Any] | None = None) -> list[Event] | Rejection:
    """The events that ``command`` causes for this tenant, or why it is refused."""
    data = command.data
    if command.type == "CreateTenant":
        if state.exists:
            return Rejection(RejectionCode.INVARIANT_VIOLATED, f"tenant '{command.tenant_id}' already exists")
        return [Event("TenantCreated", {"name": data["name"], "region": data["region"], "plan": data["plan"]})]
    if not state.exists:
        return Rejection(RejectionCode.NOT_FOUND, f"tenant '{command.tenant_id}' does not exist")
    if command.type == "ConfigureTenant":
        return [Event("TenantConfigured", {"settings": dict(data["settings"])})]
    if command.type == "UpdateSecurityPolicy":
        return [Event("SecurityPolicyUpdated", {"policy_id": data["policy_id"], "rules": dict(data["rules"])})]
    grant = (data.get("principal"), data.get("role"))
    if command.type == "GrantAccess":
        if grant in state.grants:
            return Rejection(RejectionCode.INVARIANT_VIOLATED, f"{grant[0]} already has role {grant[1]}")
        return [Event("AccessGranted", {"principal": grant[0], "role": grant[1]})]
    if command.type == "RevokeAccess":
        if grant not in state.grants:
            return Rejection(RejectionCode.NOT_FOUND, f"{grant[0]} does not have role {grant[1]}")
        return [Event("AccessRevoked", {"principal": grant[0], "role": grant[1]})]
    return Rejection(RejectionCode.UNKNOWN_COMMAND, f"the Tenant aggregate does not handle {command.type}")


def evolve(state: TenantState, event: Event) -> TenantState:
    """The tenant after ``event``."""
    data = event.data
    if event.type == "TenantCreated":
        return TenantState(exists=True, name=data["name"], region=data["region"], plan=data["plan"])
    if event.type == "TenantConfigured":
        return state.model_copy(update={"settings": {**state.settings, **data["settings"]}})
    if event.type == "SecurityPolicyUpdated":
        return state.model_copy(update={"policies": {**state.policies, data["policy_id"]: dict(data["rules"])}})
    if event.type == "AccessGranted":
        return state.model_copy(update={"grants": [*state.grants, (data["principal"], data["role"])]})
    if event.type == "AccessRevoked":
        revoked = (data["principal"], data["role"])
        return state.model_copy(update={"grants": [g for g in state.grants if tuple(g) != revoked]})
    return state


TENANT = Aggregate[TenantState](
    name="Tenant",
    commands=frozenset({"CreateTenant", "ConfigureTenant", "UpdateSecurityPolicy", "GrantAccess", "RevokeAccess"}),
    events=frozenset({"TenantCreated", "TenantConfigured", "SecurityPolicyUpdated", "AccessGranted", "AccessRevoked"}),
    stream_prefix="tenant",
    stream_id=stream_id,
    initial=TenantState,
    decide=decide,
    evolve=evolve,
    dump=lambda s: s.model_dump(mode="json"),
    load=TenantState.model_validate,
)
