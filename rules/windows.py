"""Trailing event-time windows of one series: the readings in (t - width, t], with mean/sum/min/max.

A window holds *entries* in event-time order, each the count, sum, min and max of the readings of
one time slot of `resolution_s(width)` (the width / 64, at most 60 s), stamped with the slot's
first reading. A reading joins the newest entry when it falls into the same slot, else it starts
a new entry: so a series reporting no faster than the resolution keeps one entry per reading and
every aggregate is exact (a 5-minute sensor in a 24 h window: 288 single readings), while one
reporting faster keeps at most width / resolution + 1 entries (a 1 Hz sensor in a 24 h window:
1,441 entries, not 86,400 readings). An entry leaves the window with its first reading, so for a
fast series the window's far edge is exact to within one resolution: the readings that shared a
slot with the oldest leave with it, up to one resolution early.

Entries live in flat `array('d')` columns with a moving head (no float object per reading, one
`del` now and then) and export as plain float lists (msgpack and JSON). The sum is kept running
(O(1) per reading for ISPU's 24 h means) and recomputed exactly now and then so float error cannot
build up over months; min and max are cached and recomputed only when the entry holding them
leaves.
"""

from __future__ import annotations

import math
from array import array
from bisect import bisect_right
from collections.abc import Sequence
from typing import Any, NamedTuple

__all__ = [
    "MAX_RESOLUTION_S",
    "SLOTS_PER_WINDOW",
    "History",
    "Summary",
    "Window",
    "history_resolution",
    "resolution_s",
]

# A running sum drifts by about one ulp per add/subtract; recomputing it every 512 pushes keeps the
# error far below any threshold's resolution at the cost of one pass over the window.
_RESUM_EVERY = 512
# Slots per window width: 64 keeps the edge error of a fast series under 2 % of the width (23 s of
# a 10-minute window) while bounding the entries of any window of up to an hour to 65.
SLOTS_PER_WINDOW = 64
# No slot longer than a minute: a series reporting every minute or slower (the default cadence is
# 5 minutes) stays exact in windows of any width, ISPU's 24 h included (at most 1,441 entries).
MAX_RESOLUTION_S = 60.0
# Dead head entries tolerated before the columns are compacted: amortises `del` over many pops.
_COMPACT_AT = 64


def resolution_s(width_s: float) -> float:
    """The slot width of a window `width_s` wide: readings closer than this may share an entry."""
    return min(width_s / SLOTS_PER_WINDOW, MAX_RESOLUTION_S) if width_s > 0 else MAX_RESOLUTION_S


def history_resolution(width_s: float) -> float:
    """The slot width of the shared `History` a window `width_s` wide reads: its own resolution
    rounded down to a power of two (so windows of nearby widths share one history, each within
    its own resolution), or the cap for windows so wide that their resolution is the cap."""
    res = resolution_s(width_s)
    return res if res >= MAX_RESOLUTION_S else 2.0 ** math.floor(math.log2(res))


class Summary(NamedTuple):
    """Readings, sum, min and max of part of a window (min/max are ±inf when not asked for or empty)."""

    readings: int
    total: float
    low: float
    high: float


class Window:
    """The readings of one series within a trailing event-time width, as slot entries."""

    __slots__ = (
        "_fixed_res",
        "_head",
        "_hi",
        "_lo",
        "_pushes",
        "_readings",
        "_res",
        "_slot_end",
        "_total",
        "_width",
        "hi",
        "lo",
        "n",
        "sums",
        "ts",
    )

    def __init__(self, resolution: float | None = None) -> None:
        self.ts = array("d")  # each entry's first reading
        self.sums = array("d")
        # Readings, min and max per entry: empty while every entry is a single reading (its sum),
        # so a series at normal cadence costs two columns.
        self.n = array("d")
        self.lo = array("d")
        self.hi = array("d")
        self._head = 0  # entries before it have left the window
        self._slot_end = -math.inf  # where the newest entry's slot ends: a later reading starts another
        self._total = 0.0
        self._readings = 0
        self._lo: float | None = None  # cached min/max over the live entries; None: recompute
        self._hi: float | None = None
        self._pushes = 0
        self._width = math.nan  # the width last pushed with, and its resolution
        self._res = MAX_RESOLUTION_S if resolution is None else resolution
        self._fixed_res = resolution  # given: the slot width whatever the width (a `History`)

    def push(self, ts: float, value: float, width_s: float, *, closed: bool = False) -> None:
        """Add a reading (ts not older than the last) and trim to `width_s` before ts (see `trim`)."""
        if ts >= self._slot_end or width_s != self._width:
            if width_s != self._width:
                self._width = width_s
                self._res = resolution_s(width_s) if self._fixed_res is None else self._fixed_res
            res = self._res
            self._slot_end = (ts // res + 1.0) * res
            self.ts.append(ts)
            self.sums.append(value)
            if self.n:  # some slot has held several readings: every entry keeps count, min, max
                self.n.append(1.0)
                self.lo.append(value)
                self.hi.append(value)
        else:
            if not self.n:
                self._split()
            self.n[-1] += 1.0
            self.sums[-1] += value
            if value < self.lo[-1]:
                self.lo[-1] = value
            elif value > self.hi[-1]:
                self.hi[-1] = value
        self._total += value
        self._readings += 1
        if self._lo is not None and value < self._lo:
            self._lo = value
        if self._hi is not None and value > self._hi:
            self._hi = value
        if self.ts[self._head] < ts - width_s or (not closed and self.ts[self._head] == ts - width_s):
            self.trim(ts, width_s, closed=closed)
        self._pushes += 1
        if self._pushes >= _RESUM_EVERY:
            self._pushes = 0
            self._total = math.fsum(self.sums[self._head :])

    def _split(self) -> None:
        """From single readings (count 1, min = max = sum) to full entries."""
        self.n.extend(1.0 for _ in self.ts)
        self.lo.extend(self.sums)
        self.hi.extend(self.sums)

    def trim(self, now: float, width_s: float, *, closed: bool = False) -> None:
        """Keep the entries whose first reading is in (now - width_s, now], or [now - width_s, now]
        when `closed`."""
        horizon = now - width_s
        ts, head, end = self.ts, self._head, len(self.ts)
        if head == end or (ts[head] >= horizon if closed else ts[head] > horizon):
            return
        single = not self.n
        lo, hi = (self.sums, self.sums) if single else (self.lo, self.hi)
        while head < end and (ts[head] < horizon if closed else ts[head] <= horizon):
            self._total -= self.sums[head]
            self._readings -= 1 if single else int(self.n[head])
            if self._lo is not None and lo[head] <= self._lo:
                self._lo = None
            if self._hi is not None and hi[head] >= self._hi:
                self._hi = None
            head += 1
        if head == end:
            self._clear()
        elif head >= _COMPACT_AT and head * 2 >= end:
            for col in (self.ts, self.n, self.sums, self.lo, self.hi):
                if col:
                    del col[:head]
            self._head = 0
        else:
            self._head = head

    def _clear(self) -> None:
        for col in (self.ts, self.n, self.sums, self.lo, self.hi):
            del col[:]
        self._head = 0
        self._slot_end = -math.inf
        self._total = 0.0
        self._readings = 0
        self._lo = self._hi = None

    def __len__(self) -> int:
        """Readings in the window."""
        return self._readings

    @property
    def entries(self) -> int:
        """Entries (slots with readings) held: the window's memory, bounded by width / resolution + 1."""
        return len(self.ts) - self._head

    @property
    def total(self) -> float:
        """Sum of the values in the window (0 when empty)."""
        return self._total if self._readings else 0.0

    @property
    def mean(self) -> float:
        """Mean of the values; NaN when empty."""
        return self._total / self._readings if self._readings else math.nan

    @property
    def low(self) -> float:
        """Smallest value; NaN when empty."""
        if not self._readings:
            return math.nan
        if self._lo is None:
            self._lo = min((self.lo if self.n else self.sums)[self._head :])
        return self._lo

    @property
    def high(self) -> float:
        """Largest value; NaN when empty."""
        if not self._readings:
            return math.nan
        if self._hi is None:
            self._hi = max((self.hi if self.n else self.sums)[self._head :])
        return self._hi

    def summary(self, horizon: float, *, extremes: bool = False) -> Summary:
        """The entries whose first reading is after `horizon`: readings, sum, and (with `extremes`)
        min and max. A window wider than the one asked about answers for the narrower one."""
        ts, head = self.ts, self._head
        j = bisect_right(ts, horizon, head)
        if j == len(ts):
            return Summary(0, 0.0, math.inf, -math.inf)
        if j == head and not extremes:
            return Summary(self._readings, self.total, math.inf, -math.inf)
        single = not self.n
        count = len(ts) - j if single else int(sum(self.n[j:]))
        total = math.fsum(self.sums[j:])
        if not extremes:
            return Summary(count, total, math.inf, -math.inf)
        lo, hi = (self.sums, self.sums) if single else (self.lo, self.hi)
        return Summary(count, total, min(lo[j:]), max(hi[j:]))

    def export(self) -> list[list[float]]:
        """JSON-serialisable form: [first ts, sum] per entry, plus [count, min, max] once any entry
        holds more than one reading."""
        h = self._head
        out = [self.ts[h:].tolist(), self.sums[h:].tolist()]
        if self._readings != len(self.ts) - h:
            out += [self.n[h:].tolist(), self.lo[h:].tolist(), self.hi[h:].tolist()]
        return out

    @classmethod
    def load(cls, data: Sequence[Any], width_s: float, resolution: float | None = None) -> Window:
        """The window `export` wrote (for a window `width_s` wide; `resolution` as for `Window`)."""
        if len(data) not in (2, 5) or len({len(col) for col in data}) != 1:
            raise ValueError("window: expected 2 or 5 columns of equal length")
        w = cls(resolution)
        w.ts.extend(float(t) for t in data[0])
        w.sums.extend(float(v) for v in data[1])
        if len(data) == 5:
            w.n.extend(float(c) for c in data[2])
            w.lo.extend(float(v) for v in data[3])
            w.hi.extend(float(v) for v in data[4])
        w._width, w._res = width_s, resolution_s(width_s) if resolution is None else resolution
        if w.ts:
            w._slot_end = (w.ts[-1] // w._res + 1.0) * w._res
        w._readings = int(sum(w.n)) if w.n else len(w.ts)
        w._total = math.fsum(w.sums)
        return w


class History:
    """One metric's trailing window per sensor, shared by every aggregated threshold that reads
    the metric over a window of about the same width (the same `history_resolution`).

    It holds the widest of its readers' windows; a reader asks for its own width with
    `Window.summary`. Each reader's far edge is exact to within the history's resolution, which is
    no coarser than the reader's own (`resolution_s`). Readings are pushed once per reading, not
    once per rule, and a rule that cannot fire need not look at them at all (ThresholdEvaluator,
    rules.kinds.threshold): the history is what lets it skip a sensor without losing the window.
    """

    __slots__ = ("metric", "resolution", "width_s", "windows")

    def __init__(self, metric: str, resolution: float) -> None:
        self.metric = metric
        self.resolution = resolution
        self.width_s = 0.0  # the widest reader's window
        self.windows: dict[str, Window] = {}  # sensor id → its window

    @property
    def key(self) -> str:
        """The name the engine's state keeps this history under."""
        return f"{self.metric}@{self.resolution:g}"

    def push(self, sid: str, ts: Sequence[float], values: Sequence[float]) -> None:
        """Add a sensor's in-order readings (newer than any it holds)."""
        w = self.windows.get(sid)
        if w is None:
            w = self.windows[sid] = Window(self.resolution)
        width = self.width_s
        for t, v in zip(ts, values, strict=True):
            w.push(t, v, width)

    def export(self) -> dict[str, list[list[float]]]:
        return {sid: w.export() for sid, w in self.windows.items()}

    def load(self, data: dict[str, Any]) -> None:
        self.windows = {sid: Window.load(d, self.width_s, self.resolution) for sid, d in data.items()}
