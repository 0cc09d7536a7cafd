"""What evaluation reports: the alert transitions (`Signal`: a `SignalKind` and a named `Why`) and
the counters (`EngineStats`, with every reading or rejection not evaluated counted by a named
`Skip`). The engine, the rule kinds (rules.kinds) and the worker share these, so they sit apart.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum

from pantau.alerts import Severity

__all__ = ["EngineStats", "Signal", "SignalKind", "Skip", "Why"]


class SignalKind(StrEnum):
    """What the alert store should do: open/escalate/de-escalate (RAISE) or resolve (CLEAR)."""

    RAISE = "raise"
    CLEAR = "clear"


class Why(StrEnum):
    """Why a transition happened."""

    THRESHOLD_CROSSED = "threshold_crossed"  # trigger holds; the rule has no `for`
    THRESHOLD_HELD_FOR = "threshold_held_for"  # trigger held continuously for `for`
    CLEAR_CROSSED = "clear_crossed"  # clear condition holds; no clear `for`
    CLEAR_HELD_FOR = "clear_held_for"  # clear condition held continuously for its `for`
    RATE_EXCEEDED = "rate_exceeded"  # change within the window reached `delta`
    RATE_SUBSIDED = "rate_subsided"  # change stayed below `clear.delta` (for its `for`)
    INDEX_LEVEL_REACHED = "index_level_reached"  # an alerting level, from none
    INDEX_LEVEL_CHANGED = "index_level_changed"  # another alerting level: escalation or de-escalation
    INDEX_LEVEL_CLEARED = "index_level_cleared"  # back to a level that maps to no severity
    ABSENT = "absent"  # no reading for the absence rule's `for` (on tick)
    READING_RETURNED = "reading_returned"  # the next reading after an absence
    STUCK = "stuck"  # data_quality/stuck: the value has not changed (within tolerance) for `window`
    VALUE_CHANGED = "value_changed"  # a stuck sensor's value changed beyond the tolerance
    REJECTIONS_REACHED = "rejections_reached"  # data_quality/out_of_range: `count` rejections in `window`
    REJECTIONS_SUBSIDED = "rejections_subsided"  # fewer than `count` rejections left in `window`
    COMPOSITE_MATCHED = "composite_matched"  # all/any conditions held in one scope within `window`
    COMPOSITE_LAPSED = "composite_lapsed"  # the combination no longer holds within `window`


class Skip(StrEnum):
    """Why a reading (or one rule's use of it) was not evaluated; counted in `EngineStats.skipped`."""

    UNKNOWN_SENSOR = "unknown_sensor"  # not in the registry the engine was given
    LATE = "late"  # older than the last reading processed for its sensor and metric
    DUPLICATE = "duplicate"  # same timestamp as one already processed for its sensor and metric
    BAD_METADATA = "bad_metadata"  # the sensor lacks metadata the rule needs (index thresholds, scope)
    NO_INTERVAL = "no_interval"  # a vehicle_count before any interval_s from that counter
    EXPIRED = "expired"  # a rejection already outside an out_of_range rule's window when it came in


@dataclass(frozen=True, slots=True, kw_only=True)
class Signal:
    """One alert transition for the alert store: raise (with severity) or clear, and why."""

    rule_id: str
    scope: str  # the sensor id for per-sensor rules; "river:{city}/{river}" or "district:{city}/{district}"
    sensor_id: str | None  # None for a composite's scope
    city: str
    district: str  # "" for a river scope
    kind: SignalKind
    why: Why
    event_ts: float  # epoch seconds: the reading (or tick) behind the transition
    value: float | None
    severity: Severity | None  # set for RAISE, None for CLEAR
    reason: str

    def __post_init__(self) -> None:
        if (self.kind is SignalKind.RAISE) != (self.severity is not None):
            raise ValueError(f"{self.rule_id}/{self.scope}: a raise needs a severity and a clear has none")

    @property
    def event_time(self) -> datetime:
        """`event_ts` as an aware UTC datetime (what the alert store takes)."""
        return datetime.fromtimestamp(self.event_ts, UTC)


@dataclass(slots=True)
class EngineStats:
    """Counters since the engine started (not part of the exported state)."""

    readings: int = 0
    evaluated: int = 0  # in-order readings of known sensors
    skipped: Counter[Skip] = field(default_factory=Counter)
    rejections: int = 0  # rejections given to `evaluate`
    # Rejections not counted: unknown_sensor (once), expired (once per out_of_range rule).
    rejections_skipped: Counter[Skip] = field(default_factory=Counter)
