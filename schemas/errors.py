"""Typed errors of the schema contracts package.

Every error raised by :mod:`schemas` is a :class:`SchemaError`; each message names
the schema (or the file) it is about, so a log line alone says what went wrong.
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "SchemaError",
    "UnknownSchema",
    "SchemaValidationError",
    "SchemaDecodeError",
    "SchemaLoadError",
    "SchemaNotBound",
    "SchemaRegistryUnavailable",
    "SchemaRejected",
]


class SchemaError(Exception):
    """Base class of every error raised by the schema registry."""


class UnknownSchema(SchemaError, LookupError):
    """No schema (or no such version of it) is registered.

    ``name`` is ``None`` when a message carried no usable schema header at all;
    ``detail`` then says what was missing.
    """

    def __init__(self, name: str | None, version: int | None = None, *, detail: str | None = None) -> None:
        self.name = name
        self.version = version
        self.detail = detail
        if name is None:
            msg = "unknown schema"
        elif version is None:
            msg = f"unknown schema {name!r}"
        else:
            msg = f"unknown schema {name!r} version {version}"
        if detail:
            msg = f"{msg}: {detail}"
        super().__init__(msg)


class SchemaValidationError(SchemaError, ValueError):
    """A payload does not satisfy a schema; ``problems`` lists every problem as ``"field: message"``."""

    def __init__(self, name: str, problems: list[str]) -> None:
        self.name = name
        self.problems = list(problems)
        super().__init__(f"invalid {name} payload: " + "; ".join(self.problems))


class SchemaDecodeError(SchemaError, ValueError):
    """Bytes could not be decoded as ``name`` version ``version`` (garbage, truncated, unresolvable)."""

    def __init__(self, name: str, version: int | None, reason: str) -> None:
        self.name = name
        self.version = version
        self.reason = reason
        where = name if version is None else f"{name} v{version}"
        super().__init__(f"cannot decode {where}: {reason}")


class SchemaLoadError(SchemaError):
    """A schema file is unreadable, not valid JSON/Avro, or disagrees with its filename."""

    def __init__(self, path: Path | str, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"cannot load schema file {self.path}: {reason}")


class SchemaNotBound(SchemaError, RuntimeError):
    """A record cannot be framed: no schema registry gave this process its schema ids.

    A process that writes commands or events calls :func:`schemas.wire.bind` at start.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"no schema id for {name}: call schemas.wire.bind(registry, settings) when the process starts")


class SchemaRegistryUnavailable(SchemaError, ConnectionError):
    """The schema registry did not answer within the configured wait (``schema_registry_wait_s``)."""

    def __init__(self, url: str, what: str, reason: str) -> None:
        self.url = url
        self.what = what
        self.reason = reason
        super().__init__(f"schema registry {url} unreachable while {what}: {reason}")


class SchemaRejected(SchemaError, ValueError):
    """The schema registry refused a schema version; ``reason`` is the registry's own message."""

    def __init__(self, subject: str, version: int, reason: str) -> None:
        self.subject = subject
        self.version = version
        self.reason = reason
        super().__init__(f"the schema registry refused {subject} v{version}: {reason}")
