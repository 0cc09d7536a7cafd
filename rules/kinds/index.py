"""index_band: a sensor's index level (ISPU, Siaga, LOS, BMKG rain class; pantau.indices) mapped to
a severity, one alert per sensor that escalates and de-escalates with the level.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

from pantau.domain import Sensor
from pantau.errors import SensorMetadataError
from pantau.indices import (
    IspuCategories,
    SiagaLevel,
    SiagaThresholds,
    capacity_pcu_h,
    degree_of_saturation,
    flow_pcu_h,
    ispu_station,
    level_of_service,
    rain_class,
    siaga_level,
    siaga_thresholds,
)
from pantau.rulepack.model import IndexBandRule, IndexLevel, IspuParams, LosParams, RainParams, SiagaParams, level_order
from rules.kinds.base import BaseEvaluator, Context, Series, state_of, transition
from rules.signals import Signal, SignalKind, Skip, Why
from rules.state import IndexState
from rules.windows import Window

__all__ = ["IndexEvaluator"]


# An index evaluated at one event time: (level, describe). `describe()` gives its value and reason
# text, asked for only when the alert moves (an ISPU station's index and critical pollutant cost far
# more than its category, which is all a reading that moves nothing needs). A plain tuple because
# one is made per reading, and a NamedTuple's constructor costs several times a tuple's.
_Level = tuple[IndexLevel, Callable[[], tuple[float, str]]]


class IndexEvaluator(BaseEvaluator):
    """An index level (ISPU, Siaga, LOS, rain class) mapped to a severity; one alert per sensor that
    escalates and de-escalates. A worse level must hold for `for`, a milder one for `clear.for`."""

    def __init__(self, rule: IndexBandRule, ctx: Context) -> None:
        self.rule = rule
        self._r = rule
        self.tag = f"{rule.kind.value}/{rule.index.value}"
        self._ctx = ctx
        self._for_s = rule.for_.total_seconds()
        self._clear_for_s = rule.clear_for.total_seconds()
        self._order = level_order(rule.index)
        # Effective rank per level: its place in the order if it raises a severity, else -1 (none).
        self._eff = {lv: (i if rule.severity_of(lv) is not None else -1) for i, lv in enumerate(self._order)}
        self.states: dict[str, IndexState] = {}
        self.wanted = None
        self._siaga: dict[str, SiagaThresholds] = {}
        self._capacity: dict[str, float] = {}
        params = rule.params
        self._widths: dict[str, float] = {}  # the windows' widths by name
        self._categories: IspuCategories | None = None
        if isinstance(params, IspuParams):
            self._metrics: tuple[str, ...] = params.pollutants
            self._widths = {p: w.total_seconds() for p, w in params.table.windows.items()}
            self._categories = IspuCategories(params.table)
            self._levels = self._ispu
        elif isinstance(params, SiagaParams):
            self._metrics = ("water_level_cm",)
            self._levels = self._siaga_levels
        elif isinstance(params, LosParams):
            self._metrics = ("interval_s", "vehicle_count")
            self._levels = self._los
        else:
            self._metrics = ("rain_mm",)
            self._levels = self._rain
            self._widths = {"rain_mm": 3600.0 if params.period.value == "hourly" else 86400.0}
        self._metric_set = frozenset(self._metrics)

    def feed(self, sensor: Sensor, series: Mapping[str, Series], out: list[Signal]) -> None:
        mine = [(m, s) for m, s in series.items() if m in self._metric_set]
        if not mine:
            return
        st = state_of(self.states, sensor.id, IndexState)
        # The metrics this index reads, as event-time steps {metric: value} in time order. One
        # metric (the usual batch of an air station) is already in order: no list of steps to build.
        if len(mine) == 1:
            m, s = mine[0]
            for ts, v in zip(s.ts, s.values, strict=True):
                if not self._step(sensor, st, ts, {m: v}, out):
                    return
            return
        merged: dict[float, dict[str, float]] = {}
        for m, s in mine:
            for ts, v in zip(s.ts, s.values, strict=True):
                merged.setdefault(ts, {})[m] = v
        for ts, values in sorted(merged.items()):
            if not self._step(sensor, st, ts, values, out):
                return

    def _step(self, sensor: Sensor, st: IndexState, ts: float, values: dict[str, float], out: list[Signal]) -> bool:
        """Score one event time; False when the sensor's metadata stops this rule for it."""
        gap = st.cadence.step(ts, self._ctx.min_gap_s)
        try:
            got = self._levels(sensor, st, ts, values)
        except SensorMetadataError as exc:
            self._ctx.metadata_errors[(self._r.id, sensor.id)] = str(exc)
            self._ctx.stats.skipped[Skip.BAD_METADATA] += 1
            return False
        if got is not None:
            previous = st.rank
            if _index_step(st, ts, gap, self._eff[got[0]], self._for_s, self._clear_for_s):
                out.append(self._moved(sensor, previous, st.rank, ts, got))
        return True

    def _moved(self, sensor: Sensor, previous: int, rank: int, ts: float, got: _Level) -> Signal:
        r = self._r
        now, describe = got
        value, text = describe()
        if rank < 0:
            return transition(
                r, sensor, SignalKind.CLEAR, Why.INDEX_LEVEL_CLEARED, ts, value, None, f"{text}: no alert"
            )
        level = self._order[rank]
        severity = r.severity_of(level)
        assert severity is not None
        why = Why.INDEX_LEVEL_REACHED if previous < 0 else Why.INDEX_LEVEL_CHANGED
        label = _level_label(level)
        reason = text if level == now else f"{label} held ({text} now)"
        return transition(r, sensor, SignalKind.RAISE, why, ts, value, severity, reason)

    # Level functions: the index at one event time, or None when this step has nothing to score.

    def _siaga_levels(self, sensor: Sensor, st: IndexState, ts: float, values: dict[str, float]) -> _Level | None:
        v = values["water_level_cm"]
        th = self._siaga.get(sensor.id)
        if th is None:
            th = self._siaga[sensor.id] = siaga_thresholds(sensor)
        params = self._r.params
        assert isinstance(params, SiagaParams)
        level = siaga_level(v, th, at_threshold=params.at_threshold)
        return level, lambda: (v, f"water level {v:g} cm: {level.label}")

    def _los(self, sensor: Sensor, st: IndexState, ts: float, values: dict[str, float]) -> _Level | None:
        interval = values.get("interval_s")
        if interval is not None:
            st.interval_s = interval
        count = values.get("vehicle_count")
        if count is None:
            return None
        if st.interval_s is None:
            self._ctx.stats.skipped[Skip.NO_INTERVAL] += 1
            return None
        capacity = self._capacity.get(sensor.id)
        if capacity is None:
            capacity = self._capacity[sensor.id] = capacity_pcu_h(sensor)
        params = self._r.params
        assert isinstance(params, LosParams)
        ds = degree_of_saturation(flow_pcu_h(count, st.interval_s, pcu_factor=params.pcu_factor), capacity)
        los = level_of_service(ds)
        return los, lambda: (ds, f"LOS {los.value}: degree of saturation {ds:.2f}")

    def _ispu(self, sensor: Sensor, st: IndexState, ts: float, values: dict[str, float]) -> _Level | None:
        # The station's category from each pollutant's window mean (pantau.indices.IspuCategories);
        # the index and critical pollutant only if the alert moves (`_ispu_detail`).
        widths, categories = self._widths, self._categories
        assert categories is not None
        for p, v in values.items():
            w = st.windows.get(p)
            if w is None:
                w = st.windows[p] = Window()
            w.push(ts, v, widths[p])
        rank = -1
        for p, w in st.windows.items():
            w.trim(ts, widths[p])
            if len(w):
                mean = w.mean
                if mean == mean:  # a NaN mean (a NaN reading in the window) is skipped, as ispu_station does
                    r = categories.rank(p, mean)
                    if r > rank:
                        rank = r
        if rank < 0:
            return None
        return categories.order[rank], partial(self._ispu_detail, st)

    def _ispu_detail(self, st: IndexState) -> tuple[float, str]:
        params = self._r.params
        assert isinstance(params, IspuParams)
        # A running mean of readings ≥ 0 may dip a hair below zero after evictions.
        concentrations: dict[str, float | None] = {p: max(w.mean, 0.0) for p, w in st.windows.items() if len(w)}
        station = ispu_station(concentrations, table=params.table)
        assert station is not None
        return float(station.index), (
            f"ISPU {station.index} ({station.category.label}), critical pollutant {station.critical}"
        )

    def _rain(self, sensor: Sensor, st: IndexState, ts: float, values: dict[str, float]) -> _Level | None:
        params = self._r.params
        assert isinstance(params, RainParams)
        width = self._widths["rain_mm"]
        w = st.windows.get("rain_mm")
        if w is None:
            w = st.windows["rain_mm"] = Window()
        w.push(ts, values["rain_mm"], width)
        total = max(w.total, 0.0)  # a running sum may dip a hair below zero after evictions
        cls = rain_class(total, params.period, at_threshold=params.at_threshold)
        return cls, lambda: (total, f"rain {total:g} mm {params.period.value}: {cls.value}")

    def registry_changed(self, sensors: Mapping[str, Sensor]) -> None:
        self._siaga.clear()  # thresholds and capacities are read again from the new metadata
        self._capacity.clear()

    def export(self) -> dict[str, Any]:
        return {sid: st.export() for sid, st in self.states.items()}

    def load(self, data: Mapping[str, Any]) -> None:
        self.states = {sid: IndexState.load(d, self._widths) for sid, d in data.items()}


def _level_label(level: IndexLevel) -> str:
    if isinstance(level, SiagaLevel):
        return level.label
    label = getattr(level, "label", None)
    return label if isinstance(label, str) else str(level.value)


def _index_step(st: IndexState, ts: float, gap: bool, eff: int, for_s: float, clear_for_s: float) -> bool:
    """Advance an index alert by one scored step; True when its level moved (to st.rank)."""
    if gap:
        st.since = st.bound = None
    if eff == st.rank:
        st.since = st.bound = None
        return False
    up = eff > st.rank
    if st.since is not None and st.bound is not None and (st.bound > st.rank) == up:
        # Same direction as the pending move: the level held throughout is the milder of the two
        # when worsening, the worse of the two when improving.
        st.bound = min(st.bound, eff) if up else max(st.bound, eff)
    else:
        st.since, st.bound = ts, eff
    if ts - st.since >= (for_s if up else clear_for_s):
        st.rank = st.bound
        # The reading that completed the move may already be beyond it: it starts the next one.
        st.since, st.bound = (None, None) if eff == st.rank else (ts, eff)
        return True
    return False
