"""rate_of_change: a rise or fall of at least `delta` within a trailing window."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pantau.domain import Sensor
from pantau.rulepack.durations import format_seconds
from pantau.rulepack.model import Direction, RateOfChangeRule
from rules.kinds.base import BaseEvaluator, Context, Series, state_of, transition
from rules.signals import Signal, SignalKind, Why
from rules.state import WindowedState

__all__ = ["RateEvaluator"]


class RateEvaluator(BaseEvaluator):
    """A rise (fall) of at least `delta` within `window`: the reading minus the window's lowest
    (the window's highest minus the reading), over the closed window [ts - window, ts]."""

    def __init__(self, rule: RateOfChangeRule, ctx: Context) -> None:
        self.rule = rule
        self._r = rule
        self.tag = rule.kind.value
        self._ctx = ctx
        self._window_s = rule.window.total_seconds()
        self._clear_for_s = rule.clear_for.total_seconds()
        self.states: dict[str, WindowedState] = {}
        self.wanted = None

    def feed(self, sensor: Sensor, series: Mapping[str, Series], out: list[Signal]) -> None:
        s = series.get(self._r.metric)
        if s is None:
            return
        r = self._r
        st = state_of(self.states, sensor.id, WindowedState)
        rise = r.direction is Direction.RISE
        for ts, v, gap in zip(s.ts, s.values, s.gaps, strict=True):
            st.window.push(ts, v, self._window_s, closed=True)
            change = v - st.window.low if rise else st.window.high - v
            if st.hold.step(
                ts,
                gap=gap,
                trigger=change >= r.delta,
                clear=change < r.clear_delta,
                for_s=0.0,
                clear_for_s=self._clear_for_s,
            ):
                sign = "+" if rise else "-"
                window = format_seconds(self._window_s)
                if st.hold.active:
                    reason = f"{r.metric} {sign}{change:g} within {window} (≥ {r.delta:g})"
                    out.append(
                        transition(r, sensor, SignalKind.RAISE, Why.RATE_EXCEEDED, ts, change, r.severity, reason)
                    )
                else:
                    held = f" for {format_seconds(self._clear_for_s)}" if self._clear_for_s > 0 else ""
                    reason = f"{r.metric} {sign}{change:g} within {window}: below {r.clear_delta:g}{held}"
                    clear = transition(r, sensor, SignalKind.CLEAR, Why.RATE_SUBSIDED, ts, change, None, reason)
                    out.append(clear)

    def export(self) -> dict[str, Any]:
        return {sid: st.export() for sid, st in self.states.items()}

    def load(self, data: Mapping[str, Any]) -> None:
        self.states = {sid: WindowedState.load(d, self._window_s) for sid, d in data.items()}
