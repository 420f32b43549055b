"""The schema registry behind the wire format: registering the contracts, binding their ids.

Records on the store's topics are in the Confluent wire format (``schemas.registry``): any Kafka
tool resolves their 4-byte id in a Confluent-compatible schema registry (Confluent, Apicurio's
``/apis/ccompat/v7``, Karapace, Redpanda). This module is the only one that talks to it, through
confluent-kafka's ``SchemaRegistryClient``:

- :func:`register` puts every ``.avsc`` version under its subject (the record's full name:
  several event types share a topic), oldest first, with the compatibility level that
  ``topology.yaml`` declares for the topic carrying it. The registry judges compatibility and
  refuses an incompatible version with its reason (:class:`~schemas.errors.SchemaRejected`).
- :func:`bind` is what a process calls at start: it waits for the registry (a log line per try),
  registers (writers) and fills the registry's id cache, so the hot path never calls the
  registry. Later misses (an id written by a newer producer, a schema added at run time) go to
  the registry once, waiting and retrying the same way while it is down.
- :class:`MemoryIds` gives ids without a registry, for pure tests and micro-benchmarks.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, TypeVar
from urllib.parse import quote

from .errors import SchemaRegistryUnavailable, SchemaRejected, UnknownSchema
from .registry import SchemaRegistry, SchemaVersion, schema_text, subject_of
from .settings import Settings

__all__ = ["COMPATIBILITY_DEFAULT", "RegistryIds", "MemoryIds", "Registration", "bind", "register", "check", "registry_client", "compatibility_levels"]

log = logging.getLogger("agentstream.schemas")

#: The level of a schema no topic declares: every later version reads every earlier one.
COMPATIBILITY_DEFAULT = "BACKWARD_TRANSITIVE"

T = TypeVar("T")


def registry_client(settings: Settings):  # -> confluent_kafka.schema_registry.SchemaRegistryClient
    """A confluent-kafka ``SchemaRegistryClient`` for ``settings.schema_registry_url`` (auth, CA, timeout)."""
    from confluent_kafka.schema_registry import SchemaRegistryClient

    conf: dict[str, object] = {
        "url": settings.schema_registry_url,
        "timeout": settings.schema_registry_timeout_s,
        "max.retries": 0,  # the wait-and-retry loop below owns retries, with a log line each
    }
    if settings.schema_registry_username:
        password = settings.schema_registry_password.get_secret_value() if settings.schema_registry_password else ""
        conf["basic.auth.user.info"] = f"{settings.schema_registry_username}:{password}"
    if settings.schema_registry_ca_file:
        conf["ssl.ca.location"] = str(settings.schema_registry_ca_file)
    for name in ("httpx", "httpx2"):  # the client logs every request at INFO
        logging.getLogger(name).setLevel(logging.WARNING)
    return SchemaRegistryClient(conf)


def _status(exc: BaseException) -> int | None:
    return getattr(exc, "http_status_code", None)


class RegistryIds:
    """An :class:`~schemas.registry.IdSource` over a Confluent-compatible registry.

    Every call waits for an unreachable registry (connection refused, timeout, 5xx), logging
    one line per try, up to ``settings.schema_registry_wait_s`` (0: forever), then raises
    :class:`SchemaRegistryUnavailable`. A 4xx answer is final.
    """

    def __init__(self, settings: Settings, client: object | None = None) -> None:
        self.url = settings.schema_registry_url
        self.wait_s = settings.schema_registry_wait_s
        self.client = client or registry_client(settings)

    def call(self, what: str, fn: Callable[[], T]) -> T:
        """``fn()``, retried while the registry is unreachable (module docstring)."""
        deadline = None if self.wait_s <= 0 else time.monotonic() + self.wait_s
        delay = 0.5
        while True:
            try:
                return fn()
            except Exception as exc:
                status = _status(exc)
                if status is not None and status < 500:
                    raise
                reason = f"{type(exc).__name__}: {exc}"
            if deadline is not None and time.monotonic() + delay > deadline:
                raise SchemaRegistryUnavailable(self.url, what, reason)
            log.warning("schema registry %s unreachable while %s (%s); retrying in %.1fs", self.url, what, reason, delay)
            time.sleep(delay)
            delay = min(delay * 2, 10.0)

    def id_for(self, sv: SchemaVersion) -> int:
        """The id of ``sv`` under its subject, registering it if the registry lacks it (idempotent).

        Raises :class:`SchemaRejected` with the registry's reason when it refuses the version.
        """
        from confluent_kafka.schema_registry import Schema

        subject, schema = subject_of(sv), Schema(schema_text(sv), "AVRO")
        try:
            return int(self.call(f"registering {subject} v{sv.version}", lambda: self.client.register_schema(subject, schema)))
        except Exception as exc:
            if _status(exc) is not None:
                raise SchemaRejected(subject, sv.version, getattr(exc, "error_message", str(exc))) from None
            raise

    def schema_for(self, schema_id: int) -> str:
        """The text of ``schema_id`` in the registry."""
        try:
            return str(self.call(f"fetching schema id {schema_id}", lambda: self.client.get_schema(schema_id)).schema_str)
        except Exception as exc:
            if _status(exc) == 404:
                raise UnknownSchema(None, detail=f"schema id {schema_id} is not in the registry {self.url}") from None
            raise


class MemoryIds:
    """Ids handed out in memory (1, 2, ...), one per schema text: for pure tests and benchmarks only."""

    def __init__(self) -> None:
        self._ids: dict[str, int] = {}
        self._texts: dict[int, str] = {}
        self._lock = threading.Lock()

    def id_for(self, sv: SchemaVersion) -> int:
        """The id of ``sv``'s text, new on first sight."""
        text = schema_text(sv)
        with self._lock:
            if text not in self._ids:
                self._ids[text] = len(self._ids) + 1
                self._texts[self._ids[text]] = text
            return self._ids[text]

    def schema_for(self, schema_id: int) -> str:
        """The text of an id handed out here; UnknownSchema otherwise."""
        try:
            return self._texts[schema_id]
        except KeyError:
            raise UnknownSchema(None, detail=f"schema id {schema_id} is unknown") from None


@dataclass(frozen=True)
class Registration:
    """One schema version in the registry: its subject, id and the subject's compatibility level."""

    name: str
    version: int
    subject: str
    schema_id: int
    compatibility: str


def compatibility_levels(settings: Settings, registry: SchemaRegistry) -> dict[str, str]:
    """Schema name -> compatibility level: the level of the topic that carries it in ``topology.yaml``."""
    from .topology import load_topology

    levels = {name: COMPATIBILITY_DEFAULT for name in registry.names()}
    for topic in load_topology(settings.topology_path).topics:
        for name in topic.schemas:
            if name in levels:
                levels[name] = topic.compatibility
    return levels


def register(registry: SchemaRegistry, settings: Settings, source: RegistryIds | None = None) -> list[Registration]:
    """Register every version of every schema, oldest first, with its declared compatibility level.

    Idempotent: a version already registered keeps its id. Raises :class:`SchemaRejected` with
    the registry's reason when it refuses a version (incompatible with what it holds).
    """
    source = source or RegistryIds(settings)
    levels = compatibility_levels(settings, registry)

    def one_subject(name: str) -> list[Registration]:
        subject, level, done = subject_of(registry.get(name)), levels[name], []
        for sv in registry.versions(name):
            schema_id = source.id_for(sv)
            if not done:  # the subject exists from its first version on
                source.call(f"setting {subject} to {level}", lambda: source.client.set_compatibility(subject, level))
            done.append(Registration(name, sv.version, subject, schema_id, level))
        return done

    # Subjects are independent (versions within one stay in order): a worker's start waits for
    # the slowest subject, not for the sum of a round trip per version.
    with ThreadPoolExecutor(max_workers=8, thread_name_prefix="schema-register") as pool:
        return [reg for regs in pool.map(one_subject, registry.names()) for reg in regs]


def check(registry: SchemaRegistry, settings: Settings, source: RegistryIds | None = None) -> list[str]:
    """Ask the registry whether each local version not yet registered is compatible with its subject.

    Returns the registry's reasons for every refusal (empty: the registry would accept them all).
    Registers nothing.
    """
    from confluent_kafka.schema_registry import Schema

    source = source or RegistryIds(settings)
    levels = compatibility_levels(settings, registry)
    problems: list[str] = []
    for name in registry.names():
        subject = subject_of(registry.get(name))
        try:
            registered = source.call(f"listing {subject}", lambda: source.client.get_versions(subject))
        except Exception as exc:
            if _status(exc) == 404:
                continue  # a new subject: anything is compatible with nothing
            raise
        held = set()
        for version in registered:
            held.add(json.dumps(json.loads(source.call(f"reading {subject}", lambda: source.client.get_version(subject, version)).schema.schema_str), separators=(",", ":"), ensure_ascii=False))
        for sv in registry.versions(name):
            if schema_text(sv) in held:
                continue
            schema = Schema(schema_text(sv), "AVRO")
            # The client's test_compatibility drops the registry's reasons; ask its REST client for them.
            answer = source.call(
                f"checking {subject} v{sv.version}",
                lambda: source.client._rest_client.post(f"compatibility/subjects/{quote(subject, safe='')}/versions?verbose=true", body=schema.to_dict()),
            )
            if not answer.get("is_compatible", False):
                reasons = "; ".join(str(m) for m in answer.get("messages") or []) or "incompatible"
                problems.append(f"{name} v{sv.version} ({subject}, {levels[name]}): {reasons}")
    return problems


def bind(registry: SchemaRegistry, settings: Settings, *, eager: bool = True) -> list[Registration]:
    """Give ``registry`` its schema ids from the configured registry; call once when a process starts.

    ``eager`` (the worker): wait for the registry (a log line per try, ``schema_registry_wait_s``,
    then :class:`SchemaRegistryUnavailable`), register every schema with its declared level
    (:func:`register`) and fill the id cache, so the hot path never calls the registry.
    ``eager=False`` (the client, the CLI, readers): attach the registry only; the first record of
    a type registers (idempotently) or fetches its one id, so a short-lived command costs one
    round trip instead of one per schema. Binding again is free (returns ``[]``). From now on the
    registry writes ``settings.wire_format``.
    """
    url = settings.schema_registry_url
    registry.write_format = settings.wire_format
    with _binding:
        if registry.bound_to == url and (registry.bound_eagerly or not eager):
            return []
        source = RegistryIds(settings)
        registrations: list[Registration] = []
        if eager:
            source.call("connecting", lambda: source.client.get_subjects())
            registrations = register(registry, settings, source)
            log.info("schema registry %s: %d schema versions registered", url, len(registrations))
        registry.attach(source, url)
        registry.bound_eagerly = eager
        for reg in registrations:  # fill the cache from what register returned: no second round trip
            registry.remember(reg.name, reg.version, reg.schema_id)
        return registrations


_binding = threading.Lock()
