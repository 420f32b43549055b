"""The tenant onboarding saga: quotas, then read models and analytics, then ready - or undone (pure).

One saga per tenant (id ``onboarding:<tenant>``), started by ``TenantCreated``; it follows the
tenant's stream. Each step waits for its own answer (recognised by the command id that caused
it) and has a deadline::

    TenantCreated ─► SetTenantQuota (the plan's defaults, recorded as the tenant's own limits)
      TenantQuotaSet ─► PrepareTenant (the provisioner creates read models and analytics objects)
        TenantPrepared ─► CompleteTenantOnboarding ─► TenantReady ─► ready
    a step's deadline, or TenantPreparationFailed ─► undo what was done, newest first:
        TeardownTenant (if PrepareTenant was sent: it may have half-run), SetTenantQuota with
        every limit 0 (if the quota step was sent), then FailTenantOnboarding(reason)
        ─► TenantOnboardingFailed ─► failed

Undo commands go out in one step, in that order, on the tenant's partition, so the provisioner
tears down after any preparation it was still doing. Once the tenant is prepared the saga never
undoes: a late ``TenantReady`` is waited for (``CompleteTenantOnboarding`` is resent with
backoff), and so is a late ``TenantOnboardingFailed``. The tenant aggregate decides ready or
failed once, whichever comes first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field

from schemas.topology import QuotaLimits, QuotaPlans
from streams.domain.quotas import to_ms
from streams.sagas.core import HISTORY, Backoff, Deadline, SagaCommand, SagaEvent, Step, make_command

OnboardingStatus = Literal["setting_quota", "preparing", "completing", "failing", "ready", "failed"]
TERMINAL = frozenset({"ready", "failed"})
NAME = "onboarding"
#: The provisioner's commands (executed by the shell, not decided by an aggregate).
PROVISIONER_COMMANDS = frozenset({"PrepareTenant", "TeardownTenant"})


@dataclass(frozen=True)
class OnboardingPolicy:
    """The plans' default limits, how long each step may take, and how answers are chased."""

    plans: QuotaPlans
    step_timeout_s: int = 60
    resend_backoff: Backoff = field(default_factory=lambda: Backoff(5.0, 2.0, 300.0))


class OnboardingState(BaseModel):
    """One tenant's onboarding: plan, the steps sent and done, the current step's attempt, status."""

    model_config = ConfigDict(frozen=True)

    saga_id: str
    tenant_id: str
    plan: str
    status: OnboardingStatus = "setting_quota"
    sent: list[str] = Field(default_factory=list)
    done: list[str] = Field(default_factory=list)
    #: The id of the command whose answer the current step waits for.
    waiting_for: str = ""
    attempt: int = 0
    reason: str | None = None
    history: list[tuple[int, str]] = Field(default_factory=list)


class TenantOnboarding:
    """The onboarding saga type (see the module docstring)."""

    name = NAME
    state_model = OnboardingState

    def __init__(self, policy: OnboardingPolicy) -> None:
        self.policy = policy

    def observe(self, shared: dict[str, Any], event: SagaEvent) -> dict[str, Any]:
        """Onboarding needs no tenant-wide knowledge."""
        return shared

    def saga_id(self, event: SagaEvent) -> str | None:
        """``onboarding:<tenant>`` for a ``TenantCreated``."""
        return f"{NAME}:{event.tenant_id}" if event.type == "TenantCreated" else None

    def follows(self, state: OnboardingState) -> frozenset[str]:
        """The tenant's stream."""
        return frozenset({"tenant"})

    def is_terminal(self, state: OnboardingState) -> bool:
        """ready or failed."""
        return state.status in TERMINAL

    def defaults(self, plan: str) -> dict[str, int]:
        """The limits a new tenant of ``plan`` gets (the free plan's for an unknown plan)."""
        limits = self.policy.plans.plans.get(plan) or self.policy.plans.limits("free")
        return limits.model_dump()

    def start(self, saga_id: str, event: SagaEvent, shared: Mapping[str, Any]) -> Step | None:
        """Set the plan's default quotas."""
        plan = str(event.data.get("plan") or "free")
        state = OnboardingState(saga_id=saga_id, tenant_id=event.tenant_id, plan=plan, history=HISTORY.add([], event.at_ms, f"created on plan {plan}"))
        return self._send(state, event.at_ms, "quota", "SetTenantQuota", self.defaults(plan), status="setting_quota")

    def react(self, state: OnboardingState, event: SagaEvent, shared: Mapping[str, Any]) -> Step:
        """Answers to the current step advance it; a failed preparation undoes."""
        kind, at_ms = event.type, event.at_ms
        mine = event.command_id == state.waiting_for
        if kind == "TenantQuotaSet" and state.status == "setting_quota" and mine:
            done = self._done(state, at_ms, "quota")
            return self._send(done, at_ms, "prepare", "PrepareTenant", {"plan": state.plan}, status="preparing")
        if kind == "TenantPrepared" and state.status == "preparing":
            done = self._done(state, at_ms, "prepare")
            return self._send(done, at_ms, "ready", "CompleteTenantOnboarding", {"saga_id": state.saga_id}, status="completing")
        if kind == "TenantPreparationFailed" and state.status == "preparing":
            return self._undo(state, at_ms, f"preparation failed: {event.data.get('reason')}")
        if kind == "TenantReady":
            return Step(self._note(state, at_ms, "ready", status="ready"), cancel=("step",))
        if kind == "TenantOnboardingFailed":
            return Step(self._note(state, at_ms, f"failed: {event.data.get('reason')}", status="failed", reason=event.data.get("reason")), cancel=("step",))
        return Step(state)

    def on_deadline(self, state: OnboardingState, deadline: Deadline, at: datetime, shared: Mapping[str, Any]) -> Step:
        """A step that took too long: undo before the tenant is prepared, resend after."""
        at_ms = to_ms(at)
        if deadline.name != "step" or deadline.attempt != state.attempt:
            return Step(state)
        if state.status in ("setting_quota", "preparing"):
            step = "quota" if state.status == "setting_quota" else "prepare"
            return self._undo(state, at_ms, f"step {step} got no answer within {self.policy.step_timeout_s} s")
        if state.status == "completing":
            return self._resend(state, at_ms, "ready", "CompleteTenantOnboarding", {"saga_id": state.saga_id})
        if state.status == "failing":
            return self._resend(state, at_ms, "fail", "FailTenantOnboarding", {"reason": state.reason or "unknown"})
        return Step(state)

    # --- steps -------------------------------------------------------------------------
    def _undo(self, state: OnboardingState, at_ms: int, reason: str) -> Step:
        commands: list[SagaCommand] = []
        if "prepare" in state.sent:
            commands.append(self._command(state, "undo-prepare", 0, "TeardownTenant", {"reason": reason}))
        if "quota" in state.sent:
            commands.append(self._command(state, "undo-quota", 0, "SetTenantQuota", {name: 0 for name in QuotaLimits.FIELDS if name != "task_start_within_s"}))
        fail = self._command(state, "fail", 0, "FailTenantOnboarding", {"reason": reason})
        commands.append(fail)
        new = self._note(state, at_ms, f"undoing {', '.join(reversed(state.sent)) or 'nothing'}: {reason}", status="failing", reason=reason, attempt=0, waiting_for=fail.command_id)
        return Step(new, tuple(commands), (self._deadline(new, at_ms),))

    def _send(self, state: OnboardingState, at_ms: int, step: str, kind: str, data: Mapping[str, Any], status: OnboardingStatus) -> Step:
        command = self._command(state, step, 0, kind, data)
        new = self._note(state, at_ms, f"{step}: {kind} sent", status=status, sent=[*state.sent, step], attempt=0, waiting_for=command.command_id)
        return Step(new, (command,), (self._deadline(new, at_ms),))

    def _resend(self, state: OnboardingState, at_ms: int, step: str, kind: str, data: Mapping[str, Any]) -> Step:
        attempt = state.attempt + 1
        command = self._command(state, step, attempt, kind, data)
        new = self._note(state, at_ms, f"{step}: {kind} sent again (attempt {attempt})", attempt=attempt, waiting_for=command.command_id)
        return Step(new, (command,), (Deadline(at_ms + self.policy.resend_backoff.delay_ms(attempt), state.saga_id, "step", attempt),))

    def _deadline(self, state: OnboardingState, at_ms: int) -> Deadline:
        return Deadline(at_ms + self.policy.step_timeout_s * 1000, state.saga_id, "step", state.attempt)

    def _done(self, state: OnboardingState, at_ms: int, step: str) -> OnboardingState:
        return self._note(state, at_ms, f"{step}: done", done=[*state.done, step])

    def _command(self, state: OnboardingState, step: str, attempt: int, kind: str, data: Mapping[str, Any]) -> SagaCommand:
        return make_command(NAME, state.saga_id, state.tenant_id, step, attempt, kind, data)

    @staticmethod
    def _note(state: OnboardingState, at_ms: int, what: str, **update: Any) -> OnboardingState:
        return state.model_copy(update={**update, "history": HISTORY.add(state.history, at_ms, what)})
