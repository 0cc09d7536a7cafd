"""Per-(rule, series) evaluation state: plain dataclasses that export to JSON and load back.

The rule kinds (rules.kinds) keep one of these per rule and sensor (per rule and scope for
composites). Everything a restart needs to neither lose a pending `for` nor fire a duplicate is
here: whether the alert is active (and at which index level), since when a pending condition has
held, the trailing windows, a stuck sensor's current run of unchanged readings, the rejections
counted in a window, and a composite scope's latest satisfaction of each condition. A series'
cadence (for data gaps) is the engine's, one per sensor and metric (`interval_step`); only index
alerts, which merge several metrics into steps, keep their own (`Cadence`). Each exports as a
short list, and an idle threshold (neither pending nor active) keeps no state at all.

Data gaps: a pending `for` (or clear `for`) is interrupted when two consecutive readings of the
series are further apart than `gap_tolerance_s`: max(min_gap_s, 3 × the series' typical interval),
the typical interval being a moving average of the intervals seen (each clipped to the tolerance so
that one long outage does not teach the series that outages are normal).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from rules.windows import Window

__all__ = [
    "GAP_INTERVALS",
    "AbsenceState",
    "Cadence",
    "ConditionState",
    "HoldState",
    "IndexState",
    "RejectionState",
    "Satisfied",
    "ScopeState",
    "StuckState",
    "WindowedState",
    "gap_tolerance_s",
    "interval_step",
]

# Three missed reports in a row: one lost message is noise, three mean we do not know what happened.
GAP_INTERVALS = 3.0
# Weight of the newest interval in the typical interval: slow enough to ignore jitter, fast enough
# to follow a sensor reconfigured from 5 to 1 minute within a dozen readings.
_INTERVAL_ALPHA = 0.2


def gap_tolerance_s(interval_s: float | None, min_gap_s: float) -> float:
    """The longest step between two readings that still counts as continuous."""
    if interval_s is None:
        return min_gap_s
    return max(min_gap_s, GAP_INTERVALS * interval_s)


@dataclass(slots=True)
class Cadence:
    """When a series last reported and how often it usually does."""

    last_ts: float | None = None
    interval_s: float | None = None

    def step(self, ts: float, min_gap_s: float) -> bool:
        """Record a reading at ts (not older than the last); True when the step to it is a data gap."""
        gap, self.interval_s = interval_step(self.last_ts, self.interval_s, ts, min_gap_s)
        self.last_ts = ts
        return gap


def interval_step(
    last_ts: float | None, interval_s: float | None, ts: float, min_gap_s: float
) -> tuple[bool, float | None]:
    """A series' next reading at ts (after last_ts): whether the step is a data gap, and the new
    typical interval. `Cadence.step` without the object, for the engine's per-series cadences."""
    if last_ts is None:
        return False, interval_s
    dt = ts - last_ts
    if dt <= 0:
        return False, interval_s
    tolerance = min_gap_s if interval_s is None else max(min_gap_s, GAP_INTERVALS * interval_s)
    sample = dt if dt < tolerance else tolerance
    return dt > tolerance, sample if interval_s is None else interval_s + _INTERVAL_ALPHA * (sample - interval_s)


@dataclass(slots=True)
class HoldState:
    """A two-state alert (threshold, rate of change): active or not, and since when the pending
    condition (the trigger while inactive, the clear while active) has held. Idle (neither) is the
    state of a series that never met its trigger: the engine keeps none for it."""

    active: bool = False
    since: float | None = None

    @property
    def idle(self) -> bool:
        """Inactive with nothing pending: the same as no state at all."""
        return not self.active and self.since is None

    def step(self, ts: float, *, gap: bool, trigger: bool, clear: bool, for_s: float, clear_for_s: float) -> bool:
        """Advance by one reading; True when the alert flips (raise or clear) at this reading."""
        if gap:
            self.since = None
        holds = clear if self.active else trigger
        if not holds:
            self.since = None
            return False
        if self.since is None:
            self.since = ts
        if ts - self.since >= (clear_for_s if self.active else for_s):
            self.active = not self.active
            self.since = None
            return True
        return False

    def export(self) -> list[Any]:
        """JSON-serialisable form: [active, since]."""
        return [self.active, self.since]

    @classmethod
    def load(cls, data: Sequence[Any]) -> HoldState:
        """The state `export` wrote."""
        active, since = data
        return cls(active=bool(active), since=None if since is None else float(since))


@dataclass(slots=True)
class WindowedState:
    """A HoldState plus the trailing window of its series (aggregated thresholds, rate of change)."""

    hold: HoldState = field(default_factory=HoldState)
    window: Window = field(default_factory=Window)

    def export(self) -> list[Any]:
        """JSON-serialisable form: [active, since, window]."""
        return [self.hold.active, self.hold.since, self.window.export()]

    @classmethod
    def load(cls, data: Sequence[Any], width_s: float) -> WindowedState:
        """The state `export` wrote, for a window `width_s` wide."""
        active, since, window = data
        return cls(HoldState.load([active, since]), Window.load(window, width_s))


@dataclass(slots=True)
class IndexState:
    """An index-band alert: the level it is raised at (rank in the index's level order, -1 for none),
    and a pending move towards `bound` (the level held continuously since `since`).

    For a pending escalation `bound` is the least severe level seen since `since` (the level held
    throughout); for a de-escalation, the most severe.
    """

    rank: int = -1
    since: float | None = None
    bound: int | None = None
    cadence: Cadence = field(default_factory=Cadence)
    windows: dict[str, Window] = field(default_factory=dict)  # ISPU per pollutant, rain: "rain_mm"
    interval_s: float | None = None  # LOS: the counting interval last reported

    def export(self) -> list[Any]:
        """JSON-serialisable form: [rank, since, bound, last ts, typical interval, windows, LOS interval]."""
        return [
            self.rank,
            self.since,
            self.bound,
            self.cadence.last_ts,
            self.cadence.interval_s,
            {k: w.export() for k, w in self.windows.items()},
            self.interval_s,
        ]

    @classmethod
    def load(cls, data: Sequence[Any], widths: Mapping[str, float]) -> IndexState:
        """The state `export` wrote; `widths` are the windows' widths by name (unknown names are dropped)."""
        rank, since, bound, last_ts, cadence_s, windows, interval_s = data
        return cls(
            rank=int(rank),
            since=since,
            bound=bound,
            cadence=Cadence(last_ts, cadence_s),
            windows={k: Window.load(w, widths[k]) for k, w in windows.items() if k in widths},
            interval_s=interval_s,
        )


@dataclass(slots=True)
class AbsenceState:
    """Whether a sensor (or one of its metrics) is currently reported absent."""

    active: bool = False

    def export(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return asdict(self)

    @classmethod
    def load(cls, data: dict[str, Any]) -> AbsenceState:
        """The state `export` wrote."""
        return cls(active=bool(data["active"]))


@dataclass(slots=True)
class StuckState:
    """A stuck check: the current run of readings whose values span at most the tolerance.

    The run starts at `start` (event time of its first reading) and holds `count` readings between
    `low` and `high`; `active` while the stuck alert is raised.
    """

    active: bool = False
    start: float | None = None
    low: float = 0.0
    high: float = 0.0
    count: int = 0

    def export(self) -> list[Any]:
        """JSON-serialisable form: [active, start, low, high, count]."""
        return [self.active, self.start, self.low, self.high, self.count]

    @classmethod
    def load(cls, data: Sequence[Any]) -> StuckState:
        """The state `export` wrote."""
        active, start, low, high, count = data
        return cls(active=bool(active), start=start, low=float(low), high=float(high), count=int(count))


@dataclass(slots=True)
class RejectionState:
    """An out-of-range check: the receive times of one sensor's counted rejections still inside the
    window (ascending), and whether the alert is raised."""

    times: list[float] = field(default_factory=list)
    active: bool = False

    def export(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return {"times": list(self.times), "active": self.active}

    @classmethod
    def load(cls, data: dict[str, Any]) -> RejectionState:
        """The state `export` wrote."""
        return cls(times=[float(t) for t in data["times"]], active=bool(data["active"]))


@dataclass(slots=True)
class ConditionState:
    """One composite condition on one sensor: since when a threshold's trigger has held (for its
    `for`; the series' data gaps restart that), and the trailing window (aggregate, rate)."""

    since: float | None = None
    window: Window = field(default_factory=Window)

    def export(self) -> list[Any]:
        """JSON-serialisable form: [since, window]."""
        return [self.since, self.window.export()]

    @classmethod
    def load(cls, data: Sequence[Any], width_s: float) -> ConditionState:
        """The state `export` wrote, for a window `width_s` wide."""
        since, window = data
        return cls(since=since, window=Window.load(window, width_s))


@dataclass(slots=True)
class Satisfied:
    """The latest event time at which some sensor of a scope satisfied a composite condition.

    `value` is what the condition compared (the reading, its aggregate, or the change for a rate);
    `reading` the sensor's reading at that time.
    """

    ts: float
    sensor_id: str
    value: float
    reading: float

    def export(self) -> list[Any]:
        """JSON-serialisable form."""
        return [self.ts, self.sensor_id, self.value, self.reading]

    @classmethod
    def load(cls, data: list[Any]) -> Satisfied:
        """The state `export` wrote."""
        ts, sensor_id, value, reading = data
        return cls(float(ts), str(sensor_id), float(value), float(reading))


@dataclass(slots=True)
class ScopeState:
    """A composite rule in one scope (a district or a river of a city).

    `clock` is the latest event time seen from the scope's sensors and `arrived` the arrival time
    of the batch that carried it (None without arrivals): a wall-clock tick maps to the scope's
    event time as clock + (now - arrived). `last` maps a condition name to its latest satisfaction.
    """

    city: str
    district: str
    clock: float | None = None
    arrived: float | None = None
    active: bool = False
    last: dict[str, Satisfied] = field(default_factory=dict)

    def export(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return {
            "city": self.city,
            "district": self.district,
            "clock": self.clock,
            "arrived": self.arrived,
            "active": self.active,
            "last": {name: s.export() for name, s in self.last.items()},
        }

    @classmethod
    def load(cls, data: dict[str, Any]) -> ScopeState:
        """The state `export` wrote."""
        return cls(
            city=str(data["city"]),
            district=str(data["district"]),
            clock=data["clock"],
            arrived=data["arrived"],
            active=bool(data["active"]),
            last={name: Satisfied.load(s) for name, s in data["last"].items()},
        )
