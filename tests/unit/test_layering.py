"""Imports run one way: schemas (contracts, settings) < connectors < sinks < streams; the core is pure.

Read from the source with ``ast`` (imports inside functions count too), so a lazy upward import
cannot hide from it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAYERS = ["schemas", "connectors", "sinks", "streams"]
#: Modules of the functional core: no I/O libraries, no shell.
CORE = ["streams/domain", "streams/sagas", "streams/drift", "streams/projections.py", "streams/facts.py", "streams/command_processor.py"]
IO_LIBRARIES = {"faust", "mode", "aiokafka", "confluent_kafka", "redis", "clickhouse_connect", "chdb", "aiohttp"}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _files(where: str) -> list[Path]:
    target = ROOT / where
    return [target] if target.is_file() else sorted(target.rglob("*.py"))


@pytest.mark.parametrize("layer", LAYERS)
def test_no_layer_imports_a_higher_one(layer):
    higher = LAYERS[LAYERS.index(layer) + 1 :]
    wrong = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in _files(layer)
        for name in sorted(_imports(path))
        if name.split(".")[0] in higher
    ]
    assert wrong == []


@pytest.mark.parametrize("where", CORE)
def test_the_core_does_no_io(where):
    wrong = [f"{path.relative_to(ROOT)} imports {name}" for path in _files(where) for name in sorted(_imports(path)) if name.split(".")[0] in IO_LIBRARIES]
    assert wrong == []


def test_no_two_modules_import_each_other():
    graph: dict[str, set[str]] = {}
    for layer in LAYERS:
        for path in _files(layer):
            module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            graph[module] = {name for name in _imports(path) if name.split(".")[0] in LAYERS}
    cycles = sorted({tuple(sorted((a, b))) for a, deps in graph.items() for b in deps if a != b and a in graph.get(b, set())})
    assert cycles == []
