"""Sagas: pure process managers over the event store (no I/O, no clock).

``core`` (events in, commands out, deadlines, deterministic command ids, the saga type shape),
``deadlines`` (the pending-deadline queue), ``book`` (a tenant's sagas in one row: routing,
duplicates, firing), and the saga types: ``task_lifecycle`` and ``onboarding``. The shell that
feeds events and fires deadlines on wall-clock time lives elsewhere (the batched runtime).
"""

from streams.sagas.book import SagaBook, fire, handle, handle_batch, next_due_ms
from streams.sagas.core import Backoff, Deadline, SagaCommand, SagaEvent, SagaType, Step, command_id
from streams.sagas.deadlines import DeadlineQueue
from streams.sagas.onboarding import OnboardingPolicy, TenantOnboarding
from streams.sagas.task_lifecycle import TaskLifecycle, TaskPolicy

__all__ = [
    "Backoff", "Deadline", "DeadlineQueue", "OnboardingPolicy", "SagaBook", "SagaCommand", "SagaEvent", "SagaType",
    "Step", "TaskLifecycle", "TaskPolicy", "TenantOnboarding", "command_id", "fire", "handle", "handle_batch", "next_due_ms",
]
