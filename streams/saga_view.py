"""The Redis read model of sagas: one JSON document per saga, for ``agentstream sagas list|show``.

The saga shell (``streams.saga_agent``) builds the documents of the sagas a call changed from the
book before and after it (``documents``, pure) and writes them once the call's transaction has
committed (``write``). A saga that ended keeps its last live state, its terminal status and an
"ended" line in its history. The view is for people: the books in the ``saga_books`` changelog
are the truth, and a worker that takes a partition writes its live sagas again.

Keyspace::

    saga:{tenant}:{saga id}     the saga's document (JSON)
    sagas:all                   sorted set of "{tenant}|{saga id}", scored by last change (epoch s)
    sagas:tenant:{tenant}       set of the tenant's saga ids
"""

from __future__ import annotations

import json
from typing import Any, Iterable

import redis

from streams.sagas import SagaBook

ALL_KEY = "sagas:all"
TERMINAL = frozenset({"completed", "failed", "compensated", "ready", "ended"})
#: State fields shown as a saga's attempts.
ATTEMPT_FIELDS = ("reassignments", "retries", "compensations", "attempt")


class SagaNotFound(LookupError):
    """No saga of that id (in that tenant) is in the view."""


class AmbiguousSagaId(LookupError):
    """Several tenants have a saga of that id: give ``--tenant``."""


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def doc_key(tenant: str, saga_id: str) -> str:
    """The key of one saga's document."""
    return f"saga:{tenant}:{saga_id}"


def tenant_key(tenant: str) -> str:
    """The set of a tenant's saga ids."""
    return f"sagas:tenant:{tenant}"


def _document(tenant: str, saga_id: str, kind: str, state: dict[str, Any], status: str, deadlines: list[Any], now: float) -> dict[str, Any]:
    return {
        "tenant_id": tenant,
        "saga_id": saga_id,
        "type": kind,
        "status": status,
        "terminal": status in TERMINAL,
        "history": [list(h) for h in state.get("history", [])],
        "deadlines": [{"name": d.name, "due_ms": d.due_ms, "attempt": d.attempt} for d in deadlines],
        "attempts": {name: state[name] for name in ATTEMPT_FIELDS if name in state},
        "reason": state.get("reason"),
        "state": {k: v for k, v in state.items() if k != "history"},
        "updated_at": now,
    }


def documents(tenant: str, old: SagaBook, new: SagaBook, now: float) -> list[dict[str, Any]]:
    """The documents of the sagas that changed from ``old`` to ``new`` (pure).

    A saga that ended in between keeps ``old``'s state; one that was not in ``old`` either (it
    started and ended in one call, or the book was just restored) is marked ``_nx``: ``write``
    then only ends the document the view has, or writes this one if it has none.
    """
    out = []
    for saga_id, entry in new.sagas.items():
        if old.sagas.get(saga_id) is not entry:
            kind, state = entry
            out.append(_document(tenant, saga_id, kind, state, str(state.get("status", "running")), new.deadlines.pending(saga_id), now))
    known = {sid for sid, _ in old.finished}
    for saga_id, status in new.finished:
        if saga_id in known:
            continue
        kind, state = old.sagas.get(saga_id, (saga_id.split(":", 1)[0], {}))
        doc = _document(tenant, saga_id, kind, dict(state), status, [], now)
        doc["history"].append([int(now * 1000), f"ended: {status}"])
        if saga_id not in old.sagas:
            doc["_nx"] = True
        out.append(doc)
    return out


def write(r: redis.Redis, docs: Iterable[dict[str, Any]]) -> None:
    """Store ``docs`` (in order: a later document of a saga replaces an earlier one).

    A document marked ``_nx`` (an ended saga whose last state is unknown here) is written only
    if the view has none of that saga, or ends the one it has: status, terminal, no deadline,
    and the "ended" line added to its history.
    """
    docs = list(docs)
    partial = [d for d in docs if d.get("_nx")]
    existing = dict(zip((doc_key(d["tenant_id"], d["saga_id"]) for d in partial), r.mget([doc_key(d["tenant_id"], d["saga_id"]) for d in partial]))) if partial else {}
    pipe = r.pipeline(transaction=False)
    for doc in docs:
        tenant, saga_id = doc["tenant_id"], doc["saga_id"]
        key = doc_key(tenant, saga_id)
        if doc.get("_nx"):
            raw = existing.get(key)
            if raw is not None:
                known = json.loads(raw)
                if known["terminal"]:
                    continue
                doc = {**known, "status": doc["status"], "terminal": True, "deadlines": [], "history": known["history"] + doc["history"][-1:], "updated_at": doc["updated_at"]}
        body = json.dumps({k: v for k, v in doc.items() if k != "_nx"})
        pipe.set(key, body)
        pipe.zadd(ALL_KEY, {f"{tenant}|{saga_id}": doc["updated_at"]})
        pipe.sadd(tenant_key(tenant), saga_id)
    pipe.execute()


def list_sagas(r: redis.Redis, tenant: str | None = None, state: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
    """The newest ``limit`` sagas (of ``tenant``; in status ``state``), newest change first."""
    if tenant is not None:
        keys = [doc_key(tenant, sid) for sid in sorted(map(_text, r.smembers(tenant_key(tenant))))]
    else:
        members = r.zrevrange(ALL_KEY, 0, -1)
        keys = [doc_key(*_text(m).split("|", 1)) for m in members]
    found: list[dict[str, Any]] = []
    for start in range(0, len(keys), 500):
        for raw in r.mget(keys[start : start + 500]):
            if raw is None:
                continue
            doc = json.loads(raw)
            if state is None or doc["status"] == state:
                found.append(doc)
    found.sort(key=lambda d: d["updated_at"], reverse=True)
    return found[:limit]


def get_saga(r: redis.Redis, saga_id: str, tenant: str | None = None) -> dict[str, Any]:
    """One saga's document; SagaNotFound, or AmbiguousSagaId when several tenants have that id and none is given."""
    if tenant is None:
        pattern = "*|" + "".join("\\" + c if c in "*?[]\\" else c for c in saga_id)  # the id taken literally
        members = (_text(m).split("|", 1) for m, _ in r.zscan_iter(ALL_KEY, match=pattern, count=1000))
        tenants = [t for t, sid in members if sid == saga_id]
        if len(tenants) > 1:
            raise AmbiguousSagaId(f"saga {saga_id} exists in tenants {', '.join(sorted(tenants))}: give --tenant")
        if not tenants:
            raise SagaNotFound(f"no saga {saga_id}")
        tenant = tenants[0]
    raw = r.get(doc_key(tenant, saga_id))
    if raw is None:
        raise SagaNotFound(f"no saga {saga_id} in tenant {tenant}")
    return dict(json.loads(raw))
