"""Which river detectors a topology may name, and the checks of their parameters.

The catalog is read from river itself: a detector's parameters are the arguments of its class's
constructor (``inspect.signature``), so a river upgrade that renames one is caught by
``topology validate`` instead of failing in the worker. A declaration is also built once during
the check, so values river refuses (``mode: sideways``) are reported with river's own message.
"""

from __future__ import annotations

import inspect
from typing import Any, Mapping

from river import anomaly, base, drift
from river.drift import binary

#: Detectors of a numeric value's distribution (fed floats).
NUMERIC: dict[str, type] = {"ADWIN": drift.ADWIN, "PageHinkley": drift.PageHinkley, "KSWIN": drift.KSWIN}
#: Detectors of a 0/1 indicator's rate (fed booleans): only for the ``failure`` metric.
BINARY: dict[str, type] = {"DDM": binary.DDM, "EDDM": binary.EDDM, "FHDDM": binary.FHDDM, "HDDMA": binary.HDDMA, "HDDMW": binary.HDDMW}
#: Anomaly detectors of a task's feature vector.
ANOMALY: dict[str, type] = {"HalfSpaceTrees": anomaly.HalfSpaceTrees}
#: Metrics whose values are 0/1 indicators.
BINARY_METRICS = frozenset({"failure"})
#: Parameters the project sets itself (the anomaly features decide ``limits``).
MANAGED = {"HalfSpaceTrees": frozenset({"limits"})}


class DetectorConfigError(ValueError):
    """A declared detector is unknown, or river refuses its parameters; the message says which and why."""


def parameters(cls: type) -> dict[str, Any]:
    """The constructor parameters of ``cls`` and their defaults (``inspect.Parameter.empty`` if none)."""
    return {name: p.default for name, p in inspect.signature(cls).parameters.items() if name != "self"}


def detector_class(kind: str, name: str) -> type:
    """The river class declared as ``name`` for ``kind`` (a metric name, or ``"anomaly"``)."""
    if kind == "anomaly":
        table = ANOMALY
    elif kind in BINARY_METRICS:
        table = {**NUMERIC, **BINARY}
    else:
        table = NUMERIC
    if name not in table:
        hint = " (binary detectors watch only the failure indicator)" if name in BINARY else ""
        raise DetectorConfigError(f"unknown detector '{name}' for {kind}{hint}; known: {', '.join(sorted(table))}")
    return table[name]


def build(kind: str, name: str, params: Mapping[str, Any], **managed: Any) -> base.Base:
    """A new river detector for ``kind`` from its declared ``name`` and ``params``.

    Raises DetectorConfigError naming the detector, an unknown parameter and the known ones, or
    river's own complaint about a value.
    """
    cls = detector_class(kind, name)
    known = parameters(cls)
    allowed = set(known) - MANAGED.get(name, frozenset())
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise DetectorConfigError(f"{name}: unknown parameter(s) {', '.join(unknown)}; known: {', '.join(sorted(allowed))}")
    for key, value in params.items():
        default = known[key]
        if isinstance(default, bool) and not isinstance(value, bool):
            raise DetectorConfigError(f"{name}: parameter {key} must be true or false, not {value!r}")
        if isinstance(default, (int, float)) and not isinstance(default, bool) and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise DetectorConfigError(f"{name}: parameter {key} must be a number, not {value!r}")
        if isinstance(default, int) and not isinstance(default, bool) and isinstance(value, float) and not value.is_integer():
            raise DetectorConfigError(f"{name}: parameter {key} must be a whole number, not {value!r}")
    args = {k: (int(v) if isinstance(known[k], int) and not isinstance(known[k], bool) and isinstance(v, float) else v) for k, v in params.items()}
    try:
        return cls(**args, **managed)
    except (TypeError, ValueError) as exc:
        raise DetectorConfigError(f"{name}: river refuses the parameters {dict(params)}: {exc}") from exc


def check(kind: str, name: str, params: Mapping[str, Any]) -> list[str]:
    """Problems of one declared detector (empty when river accepts it): for ``CodeView.drift_checker``."""
    try:
        build(kind, name, params)
    except DetectorConfigError as exc:
        return [str(exc)]
    return []
