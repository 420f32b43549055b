"""The contracts every layer shares: Avro files for every command and event, their models and wire format,
the envelopes (``messages``), the topology model (``topology``, ``exports``) and the settings.

This package is the bottom layer: it imports nothing from ``connectors``, ``sinks`` or ``streams``.

A process binds the schema ids once at start (``schemas.wire.bind(default_registry(), settings)``;
in-memory ids here):

>>> from schemas import default_registry
>>> from schemas.wire import MemoryIds
>>> default_registry().attach(MemoryIds(), "memory:")
>>> value, headers = default_registry().encode("StartAgent", {"agent_id": "a-1"})
>>> default_registry().decode(value, headers)[0]
'StartAgent'
"""

from __future__ import annotations

from functools import lru_cache

from .errors import SchemaDecodeError, SchemaError, SchemaLoadError, SchemaValidationError, UnknownSchema
from .registry import (
    SCHEMA_HEADER,
    SCHEMA_ROOT,
    VERSION_HEADER,
    CompatibilityProblem,
    SchemaRegistry,
    SchemaVersion,
)

__all__ = [
    "SCHEMA_HEADER",
    "VERSION_HEADER",
    "SCHEMA_ROOT",
    "SchemaRegistry",
    "SchemaVersion",
    "CompatibilityProblem",
    "SchemaError",
    "UnknownSchema",
    "SchemaValidationError",
    "SchemaDecodeError",
    "SchemaLoadError",
    "default_registry",
]


@lru_cache(maxsize=1)
def default_registry() -> SchemaRegistry:
    """The registry of the packaged schema files (SCHEMA_ROOT), loaded once per process."""
    return SchemaRegistry.load(SCHEMA_ROOT)
