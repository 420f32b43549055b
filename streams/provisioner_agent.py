"""The ``provisioner`` agent: carries out the onboarding saga's ``PrepareTenant`` / ``TeardownTenant``.

The saga sends them to ``provisioning.requests`` (keyed by tenant) in the transaction of its
step. Preparing a tenant here means its Redis objects: the provisioning record
``prov:tenant:{tenant}`` (plan, what was prepared, when) and membership of ``prov:tenants``,
the set the read side lists prepared tenants from. Both operations are idempotent (set and
delete of fixed keys), so a batch that is redone after a crash does them again harmlessly.

ClickHouse objects are not prepared here: the ClickHouse sink process owns the embedded chdb
database (one process may open it), and its tables are shared by all tenants, partitioned by
tenant, so a new tenant needs no object of its own there.

``PrepareTenant`` is answered with ``RecordTenantPreparation`` to ``commands.platform``, whose
id is derived from the request's (``answer_id``): a redo answers with the same id, and the
command handler answers a repeated id with its first outcome. Teardown has no answer (the saga
ends on the tenant's ``TenantOnboardingFailed``).
"""

from __future__ import annotations

import hashlib
import logging
import time
from datetime import UTC, datetime
from typing import Callable

import redis
from redis.exceptions import RedisError

from connectors.redis_store import redis_client
from schemas import SchemaError, default_registry
from schemas.messages import CommandMeta, EnvelopeError
from schemas.topics import COMMANDS, PROVISIONING
from streams.runtime import AgentContext, Batch, Outputs, ProcessorBase, RuntimeAgent

log = logging.getLogger(__name__)

TENANTS_KEY = "prov:tenants"
#: Tries of a Redis step before the preparation is reported as failed (the saga then undoes it).
ATTEMPTS = 5


def record_key(tenant: str) -> str:
    """The provisioning record of a tenant."""
    return f"prov:tenant:{tenant}"


def answer_id(request_id: str) -> str:
    """The id of the answer to request ``request_id``: the same request, the same answer id (at most 128 chars)."""
    plain = f"prov:{request_id}"
    return plain if len(plain) <= 128 else f"prov:{hashlib.sha256(request_id.encode()).hexdigest()}"


def prepare(r: redis.Redis, tenant: str, plan: str, at: datetime) -> None:
    """Create the tenant's Redis objects (idempotent)."""
    pipe = r.pipeline(transaction=True)
    pipe.hset(record_key(tenant), mapping={"plan": plan, "objects": "read_models", "prepared_at": at.isoformat()})
    pipe.sadd(TENANTS_KEY, tenant)
    pipe.execute()


def teardown(r: redis.Redis, tenant: str) -> None:
    """Remove what ``prepare`` created (idempotent)."""
    pipe = r.pipeline(transaction=True)
    pipe.delete(record_key(tenant))
    pipe.srem(TENANTS_KEY, tenant)
    pipe.execute()


class Provisioner(ProcessorBase):
    """Runs each request of the batch against Redis and answers the preparations."""

    def __init__(self, context: AgentContext) -> None:
        self.registry = default_registry()
        self.redis = redis_client(context.settings)

    def process(self, batch: Batch, out: Outputs) -> None:
        """Prepare or tear down, in order; answer every ``PrepareTenant``."""
        for message in batch.messages:
            headers = message.headers() or []
            try:
                name, payload = self.registry.decode(message.value(), headers)
                meta = CommandMeta.from_headers(headers)
            except (SchemaError, EnvelopeError) as exc:
                log.warning("provisioner: skipping unreadable request at %s:%s: %s", message.partition(), message.offset(), exc)
                continue
            tenant, now = meta.tenant_id, datetime.now(UTC)
            if name == "PrepareTenant":
                error = self._try(lambda: prepare(self.redis, tenant, payload.plan, now))
                data = {"succeeded": error is None, "reason": error}
                value, schema_headers = self.registry.encode("RecordTenantPreparation", data)
                answer = CommandMeta(command_id=answer_id(meta.command_id), tenant_id=tenant, issued_at=now, principal="provisioner")
                out.send(COMMANDS, tenant.encode(), value, schema_headers + answer.to_headers())
            elif name == "TeardownTenant":
                error = self._try(lambda: teardown(self.redis, tenant))
                if error is not None:
                    log.error("provisioner: teardown of %s failed: %s", tenant, error)
            else:
                log.warning("provisioner: %s is not a provisioning request; skipped", name)

    @staticmethod
    def _try(step: Callable[[], None]) -> str | None:
        delay = 0.2
        for attempt in range(ATTEMPTS):
            try:
                step()
                return None
            except (RedisError, OSError) as exc:
                if attempt == ATTEMPTS - 1:
                    return f"Redis: {exc}"
                time.sleep(delay)
                delay *= 2
        return None


AGENT = RuntimeAgent(
    name="provisioner",
    inputs=(PROVISIONING,),
    tables=(),
    build=Provisioner,
    description="Prepares and tears down a tenant's Redis objects for the onboarding saga; answers with RecordTenantPreparation.",
)
