"""One detector on one metric of one key: transform, scale, re-arm rule and the before/after summary.

A ``MetricChannel`` is what ``DriftMonitor`` keeps per (tenant, agent_type, metric), and what
``agentstream drift replay`` and ``bench/drift_quality.py`` drive through the monitor, so the three
agree by construction. The re-arm rule is the reason one change gives one alert: river's ADWIN
keeps detecting while its window still straddles the change, so after an alert the channel
throws the detector and its scale away, starts fresh ones on what follows, and stays silent for
``cooldown`` values. The summary is computed only when an alert is raised: the change point is
estimated inside a short buffer of recent values (the split that maximises the two-sample mean
statistic), and the means and counts on each side are reported in the metric's own units.
"""

from __future__ import annotations

import math
from array import array
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

from river import stats
from river.anomaly import HalfSpaceTrees
from river.tree.padded import make_padded_tree

from schemas.topology import AnomalySpec, DriftMetricSpec
from streams.drift.catalog import BINARY, build

#: How many recent values a channel keeps to place the change point when it alerts.
SUMMARY_BUFFER = 256

TRANSFORMS: dict[str, Callable[[float], float]] = {"none": float, "log": math.log, "log1p": math.log1p}


def number(value: Any) -> float | str:
    """``value`` as a finite float, or the reason it is not one: ``missing``, ``not a number``, ``non-finite``.

    Returns a str for a reason so the hot path allocates no tuple per value.
    """
    kind = type(value)
    if kind is float or kind is int or kind is bool:
        x = float(value)
    elif value is None:
        return "missing"
    elif isinstance(value, (int, float)):  # numpy scalars and other number subclasses
        x = float(value)
    else:
        return "not a number"
    return x if x - x == 0.0 else "non-finite"  # inf - inf and nan - nan are nan


def transformed(x: float, transform: str) -> float | str:
    """``transform`` applied to a finite ``x``, or the reason it cannot be: ``not positive (log)``, ``not above -1 (log1p)``."""
    if transform == "none":
        return x
    if transform == "log1p":
        return math.log1p(x) if x > -1.0 else "not above -1 (log1p)"
    return math.log(x) if x > 0.0 else "not positive (log)"


def clean(value: Any, transform: str) -> tuple[float, None] | tuple[None, str]:
    """``(transformed value, None)`` or ``(None, reason)`` for a value the detector must not see (``number`` then ``transformed``)."""
    x = number(value)
    if isinstance(x, str):
        return None, x
    y = transformed(x, transform)
    if isinstance(y, str):
        return None, y
    return y, None


@dataclass(frozen=True)
class Side:
    """Mean and count of the raw values on one side of a change."""

    mean: float
    count: int

    def to_dict(self) -> dict[str, float | int]:
        """JSON-ready form."""
        return {"mean": self.mean, "count": self.count}


@dataclass(frozen=True)
class Change:
    """A change a channel reports: where it was detected and what the values did around it."""

    detector: str
    before: Side
    after: Side
    index: int  # 0-based index of the value that raised it, among the values this channel accepted


class MetricChannel:
    """The detector of one metric for one key, with its transform, scale and re-arm rule.

    ``feed`` takes a value already cleaned and transformed by ``clean`` (``raw`` is the value in
    the metric's units, for the summary) and returns a ``Change`` when the detector alerts
    outside the cool-down.
    """

    __slots__ = ("spec", "binary", "detector", "scale", "center", "spread", "armed_for", "cooldown_left", "seen", "raw_sum", "y_sum", "recent")

    def __init__(self, spec: DriftMetricSpec) -> None:
        self.spec = spec
        self.binary = spec.detector in BINARY
        self.seen = 0  # values accepted since the key started
        self.cooldown_left = 0
        self._arm()

    def _arm(self) -> None:
        self.detector: Any = build(self.spec.metric, self.spec.detector, self.spec.params)
        self.scale = stats.Var()  # learns location and spread during the warm-up
        self.center = 0.0
        self.spread = 1.0
        self.armed_for = 0  # values since the last (re)start
        self.raw_sum = 0.0
        self.y_sum = 0.0
        self.recent: deque[tuple[float, float]] = deque(maxlen=SUMMARY_BUFFER)

    def feed(self, y: float, raw: float) -> Change | None:
        """Update the detector with one transformed value ``y``; a Change if that raised an alert."""
        index = self.seen
        self.seen += 1
        self.armed_for += 1
        self.raw_sum += raw
        self.y_sum += y
        self.recent.append((y, raw))
        spec = self.spec
        if self.armed_for <= spec.warmup:
            if spec.standardize:
                self.scale.update(y)
                if self.armed_for == spec.warmup:
                    self.center = self.scale.mean.get()
                    self.spread = math.sqrt(self.scale.get()) or 1.0
            return None
        if self.binary:
            self.detector.update(y >= 0.5)
        elif spec.standardize:
            self.detector.update((y - self.center) / self.spread)
        else:
            self.detector.update(y)
        if self.cooldown_left > 0:
            self.cooldown_left -= 1
            return None
        if not self.detector.drift_detected:
            return None
        before, after = self._summary()
        self._arm()
        self.cooldown_left = spec.cooldown
        return Change(spec.detector, before, after, index)

    def _summary(self) -> tuple[Side, Side]:
        """Split the values since the last (re)start where the mean changed most (within the recent buffer)."""
        ys = [y for y, _ in self.recent]
        raws = [r for _, r in self.recent]
        n_old = self.armed_for - len(ys)
        total_y = self.y_sum
        n = self.armed_for
        best, split = -1.0, len(ys) - 1
        left_y = total_y - sum(ys)
        for k in range(len(ys)):
            left_y += ys[k]
            n_left = n_old + k + 1
            n_right = n - n_left
            if n_right <= 0:
                break
            diff = abs(left_y / n_left - (total_y - left_y) / n_right)
            score = diff * math.sqrt(n_left * n_right / n)
            if score > best:
                best, split = score, k + 1
        after_raw = raws[split:]
        after = Side(sum(after_raw) / len(after_raw), len(after_raw)) if after_raw else Side(math.nan, 0)
        n_before = n - after.count
        before_sum = self.raw_sum - sum(after_raw)
        before = Side(before_sum / n_before if n_before else math.nan, n_before)
        return before, after


class AnomalyChannel:
    """The anomaly detector of one key: scores each task's feature vector, then learns from it.

    Pickled compactly when the declaration seeds the model: a seeded HalfSpaceTrees grows the same
    trees again, so only the node masses and the window counter are kept (a few kB, dumped ~50x
    faster than pickling the node objects); an unseeded model is pickled whole. The state bytes
    carry river's version (``streams.drift.state``), which is what makes relying on the model's
    internals safe: another river version resets the key instead of reading them.
    """

    __slots__ = ("spec", "model", "seen", "cooldown_left")

    def __init__(self, spec: AnomalySpec) -> None:
        self.spec = spec
        self.model: Any = self._build(spec)
        self.seen = 0
        self.cooldown_left = 0

    @staticmethod
    def _build(spec: AnomalySpec) -> Any:
        limits = {f.metric: (f.limits[0], f.limits[1]) for f in spec.features}
        return build("anomaly", spec.detector, spec.params, limits=limits)

    def __getstate__(self) -> dict[str, Any]:
        state: dict[str, Any] = {"spec": self.spec, "seen": self.seen, "cooldown_left": self.cooldown_left}
        model = self.model
        if isinstance(model, HalfSpaceTrees) and model.seed is not None and model.trees:
            masses = array("q", [m for nodes in model._tree_nodes for node in nodes for m in (node.l_mass, node.r_mass)])
            state["hst"] = (model.counter, model._first_window, masses.tobytes())
        else:
            state["model"] = model
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.spec = state["spec"]
        self.seen = state["seen"]
        self.cooldown_left = state["cooldown_left"]
        if "model" in state:
            self.model = state["model"]
            return
        counter, first_window, raw = state["hst"]
        model = self._build(self.spec)
        features = sorted(f.metric for f in self.spec.features)
        model.trees = [
            make_padded_tree(limits={i: model.limits[i] for i in features}, height=model.height, padding=0.15, rng=model.rng, r_mass=0, l_mass=0)
            for _ in range(model.n_trees)
        ]  # as HalfSpaceTrees.learn_one grows them on its first call: the same seed, the same trees
        model._tree_nodes = [list(t.iter_dfs()) for t in model.trees]
        masses = array("q")
        masses.frombytes(raw)
        it = iter(masses)
        for nodes in model._tree_nodes:
            for node in nodes:
                node.l_mass, node.r_mass = next(it), next(it)
        model.counter, model._first_window = counter, first_window
        self.model = model

    def feed(self, features: dict[str, float]) -> float | None:
        """The score of ``features`` when it is an alert (at least the threshold, after warm-up, outside cool-down), else None."""
        score = self.model.score_one(features)
        self.model.learn_one(features)
        self.seen += 1
        if self.cooldown_left > 0:
            self.cooldown_left -= 1
            return None
        if self.seen <= self.spec.warmup or score < self.spec.threshold:
            return None
        self.cooldown_left = self.spec.cooldown
        return float(score)
