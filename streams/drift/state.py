"""Versioned bytes of one key's detector state, for a changelog-backed table.

The bytes are one JSON header line, then a pickle of the channel (river objects included)::

    {"format": 1, "river": "0.26.1", "params": "<sha256 of the declaration>"}\\n<pickle>

Pickles of river objects are only safe to read back with the same river and the same declared
parameters, so ``decode`` compares the header first and, on any difference (or bytes it cannot
read), returns the reason instead of the state: the caller starts that key afresh and logs the
reason. Nothing is unpickled from a header that does not match.
"""

from __future__ import annotations

import hashlib
import json
import pickle
from typing import Any

import river
from pydantic import BaseModel

#: Bump when the pickled channel classes change shape.
STATE_FORMAT = 1
PICKLE_PROTOCOL = 5


def fingerprint(spec: BaseModel) -> str:
    """A short hash of a declaration: a changed parameter, transform or rule changes it."""
    return hashlib.sha256(spec.model_dump_json().encode()).hexdigest()[:16]


def encode(channel: Any, params: str) -> bytes:
    """The bytes of ``channel`` under the current format and river version and the ``params`` fingerprint."""
    header = json.dumps({"format": STATE_FORMAT, "river": river.__version__, "params": params}, separators=(",", ":"))
    return header.encode() + b"\n" + pickle.dumps(channel, protocol=PICKLE_PROTOCOL)


def decode(data: bytes, params: str) -> tuple[Any, None] | tuple[None, str]:
    """``(channel, None)`` when ``data`` was written by this format, river version and declaration, else ``(None, reason)``."""
    head, sep, body = data.partition(b"\n")
    try:
        header = json.loads(head) if sep else None
    except ValueError:
        header = None
    if not isinstance(header, dict):
        return None, "unreadable state header"
    if header.get("format") != STATE_FORMAT:
        return None, f"state format {header.get('format')} is not {STATE_FORMAT}"
    if header.get("river") != river.__version__:
        return None, f"river changed from {header.get('river')} to {river.__version__}"
    if header.get("params") != params:
        return None, "the declared detector or its parameters changed"
    try:
        return pickle.loads(body), None
    except Exception as exc:  # any unpickling failure means: start this key afresh
        return None, f"unreadable state ({type(exc).__name__}: {exc})"
