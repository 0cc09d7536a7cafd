"""threshold: `metric OP value`, on the reading or on its aggregate over a trailing window, held for
`for`, with hysteresis on the clear; the aggregated thresholds read the engine's shared histories
(rules.windows, docs/decisions.md D12).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from pantau.domain import Sensor
from pantau.rulepack.durations import format_seconds
from pantau.rulepack.model import Aggregate, Op, ThresholdRule
from rules.kinds.base import PY_OPS, BaseEvaluator, Batch, Context, Series, transition
from rules.signals import Signal, SignalKind, Why
from rules.state import HoldState
from rules.windows import Summary, Window

__all__ = ["ThresholdEvaluator"]


class ThresholdEvaluator(BaseEvaluator):
    """`metric OP value` (optionally over a trailing aggregate) held for `for`; clear with hysteresis.

    Only series that are pending or active keep a `HoldState` (an idle one is the same as none).
    A plain threshold (no aggregate) is only fed the sensors whose readings meet the trigger
    somewhere in the batch (one numpy comparison in `prepare`) or that are pending or active: for
    every other sensor its readings can change nothing.

    An aggregated threshold reads its window from the metric's shared `History` (pushed once per
    reading by the engine, after the rules have seen the batch) plus the batch's own readings. A
    mean, min or max compared with <, ≤, > or ≥ can only meet the trigger when some reading in
    the window does (a mean lies between the window's min and max): such a rule keeps, per sensor,
    the event time of the last reading that met the trigger (`recent`, found by the same numpy
    comparison) and is fed only the sensors with one inside the window, or pending or active. A
    sum, or == / !=, has no such bound: it is fed every reading.
    """

    def __init__(self, rule: ThresholdRule, ctx: Context) -> None:
        self.rule = rule
        self._r = rule
        self.tag = rule.kind.value
        self._ctx = ctx
        self._for_s = rule.for_.total_seconds()
        self._clear_for_s = rule.clear_for.total_seconds()
        self._window_s = rule.window.total_seconds() if rule.window is not None else 0.0
        self._trigger_op, self._trigger_at = PY_OPS[rule.trigger.op], rule.trigger.value
        self._clear_op, self._clear_at = PY_OPS[rule.clear.op], rule.clear.value
        self.holds: dict[str, HoldState] = {}  # pending or active series only
        aggregate = rule.aggregate
        self.history = None if aggregate is None else ctx.history(rule.metric, self._window_s)
        self._extremes = aggregate in (Aggregate.MIN, Aggregate.MAX)
        # Whether a reading meeting the trigger must lie in the window for the aggregate to meet it.
        self._bounded = aggregate is None or (aggregate is not Aggregate.SUM and rule.trigger.op in _ORDERING)
        # Aggregated and bounded: sensor → event time of its last reading that met the trigger,
        # kept while inside the window or while the series is pending or active (holds ⊆ recent).
        self.recent: dict[str, float] = {}
        self.wanted = set() if self._bounded else None

    def prepare(self, batch: Batch) -> None:
        if not self._bounded:
            return
        pos = batch.positions(self._r.metric)
        if not len(pos):
            self.wanted = ()
            return
        values = batch.values if len(pos) == len(batch.values) else batch.values[pos]
        hits = pos[self._r.trigger.holds_array(values)].tolist()
        sids = batch.sids
        if self.history is None:
            wanted = {sids[i] for i in hits}
            if self.holds:
                wanted.update(self.holds)
            self.wanted = wanted
            return
        recent, ts = self.recent, batch.ts
        for i in hits:
            sid, t = sids[i], ts[i]
            if t > recent.get(sid, -math.inf):
                recent[sid] = t
        self.wanted = recent

    def feed(self, sensor: Sensor, series: Mapping[str, Series], out: list[Signal]) -> None:
        s = series.get(self._r.metric)
        if s is None:
            return
        sid = sensor.id
        hold = self.holds.get(sid)
        trigger_op, trigger_at, clear_op, clear_at = self._trigger_op, self._trigger_at, self._clear_op, self._clear_at
        history, width = self.history, self._window_s
        if history is not None:
            window = history.windows.get(sid)  # the readings before this batch
            own = Window() if len(s.ts) > 1 else None  # this batch's, as the rule's own window holds them
            last_hit = self.recent.get(sid, -math.inf) if self._bounded else math.inf
        for ts, x, gap in zip(s.ts, s.values, s.gaps, strict=True):
            if history is not None:
                if own is not None:
                    own.push(ts, x, width)
                if hold is None and last_hit <= ts - width:
                    continue  # idle, and no reading in the window meets the trigger: nor can the aggregate
                x = self._aggregate_at(window, own, ts, x)
            if hold is None:
                if not trigger_op(x, trigger_at):
                    continue  # idle and stays idle: what `HoldState.step` would do, without the state
                hold = HoldState()
            flipped = hold.step(
                ts,
                gap=gap,
                trigger=trigger_op(x, trigger_at),
                clear=clear_op(x, clear_at),
                for_s=self._for_s,
                clear_for_s=self._clear_for_s,
            )
            if flipped:
                out.append(self._flip(sensor, hold.active, ts, x))
            if hold.idle:
                hold = None
        if hold is None:
            self.holds.pop(sid, None)
            last = self.recent.get(sid)
            if last is not None and last <= s.ts[-1] - width:
                del self.recent[sid]  # its last trigger-meeting reading has left the window
        else:
            self.holds[sid] = hold

    def _aggregate_at(self, window: Window | None, own: Window | None, ts: float, value: float) -> float:
        """The aggregate as of the reading (ts, value): the history's entries inside the window (all
        older than this batch) together with the batch's readings so far (`own`, or just this one)."""
        aggregate, extremes = self._r.aggregate, self._extremes
        assert aggregate is not None
        old = window.summary(ts - self._window_s, extremes=extremes) if window is not None else _EMPTY
        if own is None:
            return _combine(aggregate, old.readings + 1, old.total + value, min(old.low, value), max(old.high, value))
        low, high = (min(old.low, own.low), max(old.high, own.high)) if extremes else (math.inf, -math.inf)
        return _combine(aggregate, old.readings + len(own), old.total + own.total, low, high)

    def _flip(self, sensor: Sensor, raised: bool, ts: float, x: float) -> Signal:
        r = self._r
        what = (
            r.metric if r.aggregate is None else f"{r.aggregate.value} {r.metric} over {format_seconds(self._window_s)}"
        )
        if raised:
            why = Why.THRESHOLD_HELD_FOR if self._for_s > 0 else Why.THRESHOLD_CROSSED
            held = f" for {format_seconds(self._for_s)}" if self._for_s > 0 else ""
            return transition(r, sensor, SignalKind.RAISE, why, ts, x, r.severity, f"{what} {x:g} {r.trigger}{held}")
        why = Why.CLEAR_HELD_FOR if self._clear_for_s > 0 else Why.CLEAR_CROSSED
        held = f" for {format_seconds(self._clear_for_s)}" if self._clear_for_s > 0 else ""
        return transition(r, sensor, SignalKind.CLEAR, why, ts, x, None, f"{what} {x:g} {r.clear}{held}")

    def export(self) -> dict[str, Any]:
        """Per sensor [active, since] (pending or active only); an aggregated rule adds `recent`
        (its window is in the engine's histories)."""
        holds = {sid: st.export() for sid, st in self.holds.items()}
        if self.history is None:
            return holds
        return {"holds": holds, "recent": dict(self.recent)}

    def load(self, data: Mapping[str, Any]) -> None:
        self.holds, self.recent = {}, {}
        if self.history is not None:
            self.recent = {sid: float(t) for sid, t in data["recent"].items()}
            data = data["holds"]
        for sid, d in data.items():
            hold = HoldState.load(d)
            if not hold.idle:
                self.holds[sid] = hold
                self.recent.setdefault(sid, -math.inf)  # fed while pending or active


_ORDERING = frozenset({Op.GT, Op.GE, Op.LT, Op.LE})
_EMPTY = Summary(0, 0.0, math.inf, -math.inf)


def _combine(aggregate: Aggregate, count: int, total: float, low: float, high: float) -> float:
    if aggregate is Aggregate.MEAN:
        return total / count
    if aggregate is Aggregate.SUM:
        return total
    if aggregate is Aggregate.MIN:
        return low
    return high
