"""Unit tests frame records with ids handed out in memory (``schemas.wire.MemoryIds``): no registry."""

from __future__ import annotations

import pytest

from schemas import default_registry
from schemas.wire import MemoryIds


@pytest.fixture(autouse=True, scope="session")
def _memory_ids() -> None:
    """The packaged schemas get ids without a registry for every unit test."""
    default_registry().attach(MemoryIds(), "memory:")
