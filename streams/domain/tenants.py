"""The Tenant aggregate: a tenant's creation, configuration, security policy, quotas and onboarding (pure).

``SetTenantQuota`` records the limits a tenant sets (any subset, each >= 0) as ``TenantQuotaSet``;
``streams.domain.quotas`` folds that event into the tenant's quota row. Onboarding (driven by
``streams.sagas.onboarding``) ends exactly once: ``CompleteTenantOnboarding`` -> ``TenantReady`` or
``FailTenantOnboarding`` -> ``TenantOnboardingFailed``, whichever is decided first; the
provisioner reports its step with ``RecordTenantPreparation`` -> ``TenantPrepared`` /
``TenantPreparationFailed``.
"""

from __future__ import annotations

from typing import Any, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field

from schemas.topology import QuotaLimits
from streams.domain.core import Aggregate, Command, Event, Rejection, RejectionCode

OnboardingStatus = Literal["pending", "ready", "failed"]


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
    #: Limits the tenant set (name -> value); the plan's defaults give the others.
    quota: dict[str, int] = Field(default_factory=dict)
    onboarding: OnboardingStatus = "pending"
    prepared: bool = False


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
    if command.type in ONBOARDING:
        return ONBOARDING[command.type](command, state)
    if command.type == "SetTenantQuota":
        return set_tenant_quota(command)
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


def set_tenant_quota(command: Command) -> list[Event] | Rejection:
    """``SetTenantQuota``: at least one limit, none negative -> ``TenantQuotaSet`` (nulls stay null)."""
    values = {name: command.data.get(name) for name in QuotaLimits.FIELDS}
    given = {name: value for name, value in values.items() if value is not None}
    if not given:
        return Rejection(RejectionCode.VALIDATION_FAILED, f"SetTenantQuota sets no limit (give one of {', '.join(QuotaLimits.FIELDS)})")
    negative = sorted(name for name, value in given.items() if value < 0)
    if negative:
        return Rejection(RejectionCode.VALIDATION_FAILED, f"limits cannot be negative: {', '.join(negative)}")
    if given.get("task_start_within_s") == 0:
        return Rejection(RejectionCode.VALIDATION_FAILED, "task_start_within_s must be at least 1")
    return [Event("TenantQuotaSet", values)]


def _record_preparation(command: Command, state: TenantState) -> list[Event] | Rejection:
    if state.onboarding != "pending":
        return Rejection(RejectionCode.INVARIANT_VIOLATED, f"tenant '{command.tenant_id}' onboarding is already {state.onboarding}")
    if command.data["succeeded"]:
        return [Event("TenantPrepared", {"detail": {}})]
    return [Event("TenantPreparationFailed", {"reason": command.data.get("reason") or "unknown"})]


def _complete_onboarding(command: Command, state: TenantState) -> list[Event] | Rejection:
    if state.onboarding != "pending":
        return Rejection(RejectionCode.INVARIANT_VIOLATED, f"tenant '{command.tenant_id}' onboarding is already {state.onboarding}")
    if not state.prepared:
        return Rejection(RejectionCode.INVARIANT_VIOLATED, f"tenant '{command.tenant_id}' is not prepared yet")
    return [Event("TenantReady", {"saga_id": command.data.get("saga_id") or "onboarding"})]


def _fail_onboarding(command: Command, state: TenantState) -> list[Event] | Rejection:
    if state.onboarding != "pending":
        return Rejection(RejectionCode.INVARIANT_VIOLATED, f"tenant '{command.tenant_id}' onboarding is already {state.onboarding}")
    return [Event("TenantOnboardingFailed", {"reason": command.data["reason"]})]


#: Onboarding decisions: each ends or advances a ``pending`` onboarding, never a finished one.
ONBOARDING = {
    "RecordTenantPreparation": _record_preparation,
    "CompleteTenantOnboarding": _complete_onboarding,
    "FailTenantOnboarding": _fail_onboarding,
}


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
    if event.type == "TenantQuotaSet":
        return state.model_copy(update={"quota": {**state.quota, **{k: int(v) for k, v in data.items() if v is not None}}})
    if event.type == "TenantPrepared":
        return state.model_copy(update={"prepared": True})
    if event.type == "TenantReady":
        return state.model_copy(update={"onboarding": "ready"})
    if event.type == "TenantOnboardingFailed":
        return state.model_copy(update={"onboarding": "failed"})
    if event.type == "AccessRevoked":
        revoked = (data["principal"], data["role"])
        return state.model_copy(update={"grants": [g for g in state.grants if tuple(g) != revoked]})
    return state


TENANT = Aggregate[TenantState](
    name="Tenant",
    commands=frozenset({"CreateTenant", "ConfigureTenant", "UpdateSecurityPolicy", "GrantAccess", "RevokeAccess", "SetTenantQuota", *ONBOARDING}),
    events=frozenset(
        {
            "TenantCreated", "TenantConfigured", "SecurityPolicyUpdated", "AccessGranted", "AccessRevoked", "TenantQuotaSet",
            "TenantPrepared", "TenantPreparationFailed", "TenantReady", "TenantOnboardingFailed",
        }
    ),
    stream_prefix="tenant",
    stream_id=stream_id,
    initial=TenantState,
    decide=decide,
    evolve=evolve,
    dump=lambda s: s.model_dump(mode="json"),
    load=TenantState.model_validate,
)
