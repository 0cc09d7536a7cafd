"""Trailing event-time windows of one series: the readings in (t - width, t], with mean/sum/min/max.

A window is plain data (two deques) so the engine can export and restore it as JSON lists. The sum
is kept running (O(1) per reading for ISPU's 24 h means) and recomputed exactly now and then so
float error cannot build up over months.
"""

from __future__ import annotations

from collections import deque
from typing import Any

__all__ = ["Window"]

# A running sum drifts by about one ulp per add/subtract; recomputing it every 512 pushes keeps the
# error far below any threshold's resolution at the cost of one pass over the window.
_RESUM_EVERY = 512


class Window:
    """The (ts, value) readings of one series within a trailing event-time width."""

    __slots__ = ("_pushes", "_total", "ts", "values")

    def __init__(self, ts: list[float] | None = None, values: list[float] | None = None) -> None:
        self.ts: deque[float] = deque(ts or ())
        self.values: deque[float] = deque(values or ())
        if len(self.ts) != len(self.values):
            raise ValueError("window: ts and values differ in length")
        self._total = sum(self.values)
        self._pushes = 0

    def push(self, ts: float, value: float, width_s: float, *, closed: bool = False) -> None:
        """Add a reading (ts not older than the last) and trim to `width_s` before ts (see `trim`)."""
        self.ts.append(ts)
        self.values.append(value)
        self._total += value
        self.trim(ts, width_s, closed=closed)
        self._pushes += 1
        if self._pushes >= _RESUM_EVERY:
            self._pushes = 0
            self._total = sum(self.values)

    def trim(self, now: float, width_s: float, *, closed: bool = False) -> None:
        """Keep the readings in (now - width_s, now], or [now - width_s, now] when `closed`."""
        horizon = now - width_s
        while self.ts and (self.ts[0] < horizon if closed else self.ts[0] <= horizon):
            self.ts.popleft()
            self._total -= self.values.popleft()

    def __len__(self) -> int:
        return len(self.values)

    @property
    def total(self) -> float:
        """Sum of the values in the window (0 when empty)."""
        return self._total if self.values else 0.0

    @property
    def mean(self) -> float:
        """Mean of the values; NaN when empty."""
        return self._total / len(self.values) if self.values else float("nan")

    @property
    def low(self) -> float:
        """Smallest value; NaN when empty."""
        return min(self.values) if self.values else float("nan")

    @property
    def high(self) -> float:
        """Largest value; NaN when empty."""
        return max(self.values) if self.values else float("nan")

    def export(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return {"ts": list(self.ts), "values": list(self.values)}

    @classmethod
    def load(cls, data: dict[str, Any]) -> Window:
        """The window `export` wrote."""
        return cls([float(t) for t in data["ts"]], [float(v) for v in data["values"]])
