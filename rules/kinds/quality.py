"""data_quality: `stuck` (a sensor repeating one value over event time) and `out_of_range` (a
sensor's ingest rejections counted over receive time).
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from typing import Any

from pantau.domain import Sensor
from pantau.rulepack.durations import format_seconds
from pantau.rulepack.model import OutOfRangeRule, StuckRule
from rules.kinds.base import BaseEvaluator, Context, Series, state_of, transition
from rules.signals import Signal, SignalKind, Skip, Why
from rules.state import RejectionState, StuckState

__all__ = ["OutOfRangeEvaluator", "StuckEvaluator"]


# -- stuck -----------------------------------------------------------------------------------------


class StuckEvaluator(BaseEvaluator):
    """data_quality/stuck: a sensor repeating one value (within `tolerance`) for `window` of event time.

    A *run* is a stretch of consecutive in-order readings whose values span at most the tolerance
    (max - min ≤ tolerance). A run that has lasted at least `window` (first to last reading) and
    holds at least `min_readings` readings raises (`stuck`). A reading that takes the span above
    the tolerance ends the run (a change: clears with `value_changed`) and starts the next one. A
    data gap (as for every kind: see rules.state) restarts the run at the reading after it: nothing
    is known about the value in between; an active alert stays raised unless that reading changed.
    """

    def __init__(self, rule: StuckRule, ctx: Context) -> None:
        self.rule = rule
        self._r = rule
        self.tag = f"{rule.kind.value}/{rule.check}"
        self._ctx = ctx
        self._window_s = rule.window.total_seconds()
        self.states: dict[str, StuckState] = {}
        self.wanted = None

    def feed(self, sensor: Sensor, series: Mapping[str, Series], out: list[Signal]) -> None:
        s = series.get(self._r.metric)
        if s is None:
            return
        r = self._r
        st = state_of(self.states, sensor.id, StuckState)
        tolerance, window_s, min_readings = r.tolerance, self._window_s, r.min_readings
        for ts, v, gap in zip(s.ts, s.values, s.gaps, strict=True):
            if st.count:
                low, high = min(st.low, v), max(st.high, v)
                changed = high - low > tolerance
                if not gap and not changed:
                    st.low, st.high = low, high
                    st.count += 1
                    assert st.start is not None
                    if not st.active and st.count >= min_readings and ts - st.start >= window_s:
                        st.active = True
                        out.append(self._stuck(sensor, st, ts, v))
                    continue
                if changed and st.active:
                    st.active = False
                    out.append(self._changed(sensor, st, ts, v))
            st.start, st.low, st.high, st.count = ts, v, v, 1

    def _stuck(self, sensor: Sensor, st: StuckState, ts: float, v: float) -> Signal:
        r = self._r
        assert st.start is not None
        spread = f" (spanning {st.high - st.low:g} ≤ {r.tolerance:g})" if r.tolerance > 0 else ""
        reason = f"{r.metric} unchanged at {v:g} for {format_seconds(ts - st.start)}, {st.count} readings{spread}"
        return transition(r, sensor, SignalKind.RAISE, Why.STUCK, ts, v, r.severity, reason)

    def _changed(self, sensor: Sensor, st: StuckState, ts: float, v: float) -> Signal:
        r = self._r
        assert st.start is not None
        was = f"{st.low:g}" if st.low == st.high else f"{st.low:g}..{st.high:g}"
        reason = f"{r.metric} changed to {v:g} (was {was} for {format_seconds(ts - st.start)})"
        return transition(r, sensor, SignalKind.CLEAR, Why.VALUE_CHANGED, ts, v, None, reason)

    def export(self) -> dict[str, Any]:
        return {sid: st.export() for sid, st in self.states.items()}

    def load(self, data: Mapping[str, Any]) -> None:
        self.states = {sid: StuckState.load(d) for sid, d in data.items()}


# -- out of range ----------------------------------------------------------------------------------


class OutOfRangeEvaluator(BaseEvaluator):
    """data_quality/out_of_range: at least `count` of a sensor's ingest rejections (of `reasons`)
    within `window`, in the rejections' receive time.

    The count at time t is the number of rejections received in (t - window, t]; it is taken at
    each counted rejection (RAISE `rejections_reached` at the one that brings it to `count`). It
    falls below `count` at a computable instant (the `count`-th newest rejection + window): the
    alert clears (`rejections_subsided`, event time that instant) once the rule's clock has passed
    it. The clock is the latest of the rejections' receive times, the batches' `arrived` and
    `tick(now)`: receive times are ingest's wall clock, so in production `tick` runs on it too. A
    rejection received at or before clock - window is outside the window already (`expired`).
    """

    def __init__(self, rule: OutOfRangeRule, ctx: Context, sensors: Mapping[str, Sensor]) -> None:
        self.rule = rule
        self._r = rule
        self.tag = f"{rule.kind.value}/{rule.check}"
        self._ctx = ctx
        self._sensors = sensors
        self._window_s = rule.window.total_seconds()
        self.clock: float | None = None
        self.states: dict[str, RejectionState] = {}
        self.wanted = ()  # reads rejections, not readings

    def counts(self, reason: str, metric: str | None) -> bool:
        """Whether a rejection of this reason (about this metric, if a value's) counts for the rule."""
        return reason in self._r.reasons and (self._r.metric is None or metric == self._r.metric)

    def reject(self, sensor: Sensor, received: Sequence[float], out: list[Signal]) -> None:
        """Count this sensor's rejections of the batch (receive times, ascending)."""
        r, w = self._r, self._window_s
        st = self.states.get(sensor.id)
        for t in received:
            if self.clock is not None and t <= self.clock - w:
                self._ctx.stats.rejections_skipped[Skip.EXPIRED] += 1
                continue
            if st is None:
                st = self.states[sensor.id] = RejectionState()
            times = st.times
            if not times or t >= times[-1]:
                self._lapse(sensor, st, t, out, strict=True)
                times.append(t)
            else:  # out of order, still inside the window: counts from the newest
                bisect.insort(times, t)
            newest = times[-1]
            cut = bisect.bisect_right(times, newest - w)
            if cut:
                del times[:cut]
            if self.clock is None or newest > self.clock:
                self.clock = newest
            if not st.active and len(times) >= r.count:
                st.active = True
                reasons = ", ".join(sorted(x.value for x in r.reasons))
                reason = f"{len(times)} rejections ({reasons}) within {format_seconds(w)}: limit {r.count}"
                out.append(
                    transition(
                        r,
                        sensor,
                        SignalKind.RAISE,
                        Why.REJECTIONS_REACHED,
                        newest,
                        float(len(times)),
                        r.severity,
                        reason,
                    )
                )

    def _lapse(self, sensor: Sensor, st: RejectionState, now: float, out: list[Signal], *, strict: bool) -> None:
        """Clear when the count had fallen below the limit by `now` (strictly before `now` when a new
        rejection at `now` is about to be counted: it would keep the count up at that instant)."""
        r, w = self._r, self._window_s
        if not st.active:
            return
        times = st.times
        ends = times[-r.count] + w if len(times) >= r.count else now
        if now > ends or (not strict and now >= ends):
            st.active = False
            left = len(times) - bisect.bisect_right(times, ends - w)
            reason = f"{left} rejections within {format_seconds(w)}: below {r.count}"
            out.append(
                transition(r, sensor, SignalKind.CLEAR, Why.REJECTIONS_SUBSIDED, ends, float(left), None, reason)
            )

    def tick(self, now: float, out: list[Signal]) -> None:
        """The clock has reached `now` (a batch's arrival or a tick): clear lapsed counts, forget old ones."""
        if self.clock is None or now > self.clock:
            self.clock = now
        now = self.clock
        horizon = now - self._window_s
        for sid in list(self.states):
            st = self.states[sid]
            sensor = self._sensors.get(sid)
            if sensor is not None:  # a sensor gone from the registry keeps its state until it returns
                self._lapse(sensor, st, now, out, strict=False)
            cut = bisect.bisect_right(st.times, horizon)
            if cut:
                del st.times[:cut]
            if not st.times and not st.active:
                del self.states[sid]

    def registry_changed(self, sensors: Mapping[str, Sensor]) -> None:
        self._sensors = sensors

    def export(self) -> dict[str, Any]:
        return {"clock": self.clock, "sensors": {sid: st.export() for sid, st in self.states.items()}}

    def load(self, data: Mapping[str, Any]) -> None:
        self.clock = data["clock"]
        self.states = {sid: RejectionState.load(d) for sid, d in data["sensors"].items()}
