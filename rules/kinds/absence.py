"""absence: no reading from a sensor (or of one metric) for `for`, raised on tick; the next reading
clears it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from pantau.domain import Sensor
from pantau.rulepack.durations import format_seconds
from pantau.rulepack.model import AbsenceRule
from rules.kinds.base import BaseEvaluator, Context, Series, transition
from rules.signals import Signal, SignalKind, Why
from rules.state import AbsenceState

__all__ = ["AbsenceEvaluator"]


class AbsenceEvaluator(BaseEvaluator):
    """No reading from a sensor (or of one metric) for `for` → RAISE on tick; the next reading clears.

    Silence is measured from the last *arrival* of an in-order reading when the engine was told
    arrivals (`evaluate(..., arrived=)`, wall clock: then call `tick` with the wall clock), else
    from the last reading's event time, else `Sensor.last_seen`, else the first arrival (or event
    time) the engine saw. So a backfill of day-old readings that arrived a minute ago is not silence.
    """

    def __init__(self, rule: AbsenceRule, ctx: Context, sensors: Sequence[Sensor]) -> None:
        self.rule = rule
        self._r = rule
        self.tag = rule.kind.value
        self._ctx = ctx
        self._for_s = rule.for_.total_seconds()
        self._sensors = [s for s in sensors if rule.select.matches(s)]
        self.states: dict[str, AbsenceState] = {}  # absent sensors only
        self.wanted = self.states  # a reading only matters to an absent sensor

    def feed(self, sensor: Sensor, series: Mapping[str, Series], out: list[Signal]) -> None:
        st = self.states.get(sensor.id)
        if st is None or not st.active:
            return
        metric = self._r.metric
        if metric is not None:
            s = series.get(metric)
            if s is None:
                return
            ts, value = s.ts[0], s.values[0]
        else:
            ts, metric = min((s.ts[0], m) for m, s in series.items())
            value = series[metric].values[0]
        del self.states[sensor.id]
        out.append(
            transition(
                self._r, sensor, SignalKind.CLEAR, Why.READING_RETURNED, ts, value, None, f"{metric} reported again"
            )
        )

    def _last_seen(self, sensor: Sensor) -> tuple[float | None, str]:
        """Since when the sensor (metric) has been silent, and what that time is."""
        ctx, metric = self._ctx, self._r.metric
        arrivals = ctx.arrivals.get(sensor.id)
        if arrivals:
            if metric is None:
                return max(arrivals.values()), "last arrived"
            if metric in arrivals:
                return arrivals[metric], "last arrived"
        marks = ctx.watermarks.get(sensor.id)
        if marks:
            if metric is None:
                return max(marks.values()), "last at"
            if metric in marks:
                return marks[metric], "last at"
        if sensor.last_seen is not None:
            return sensor.last_seen.timestamp(), "last seen"
        if ctx.first_arrival is not None:
            return ctx.first_arrival, "not seen since"
        return ctx.origin, "not seen since"

    def tick(self, now: float, out: list[Signal]) -> None:
        r = self._r
        what = f"no {r.metric} reading" if r.metric else "no reading"
        for sensor in self._sensors:
            st = self.states.get(sensor.id)
            if st is not None and st.active:
                continue
            last, since = self._last_seen(sensor)
            if last is None or now - last < self._for_s:
                continue
            if st is None:
                st = self.states[sensor.id] = AbsenceState()
            st.active = True
            silent = now - last
            when = datetime.fromtimestamp(last, UTC).isoformat()
            out.append(
                transition(
                    r,
                    sensor,
                    SignalKind.RAISE,
                    Why.ABSENT,
                    last + self._for_s,
                    silent,
                    r.severity,
                    f"{what} for {format_seconds(silent)} ({since} {when})",
                )
            )

    def registry_changed(self, sensors: Mapping[str, Sensor]) -> None:
        self._sensors = [s for s in sensors.values() if self._r.select.matches(s)]

    def export(self) -> dict[str, Any]:
        return {sid: st.export() for sid, st in self.states.items() if st.active}

    def load(self, data: Mapping[str, Any]) -> None:
        self.states.clear()  # the same dict as `wanted`
        self.states.update((sid, st) for sid, d in data.items() if (st := AbsenceState.load(d)).active)
