"""Faults: the ways real sensors misbehave, each switched on with a rate, each written to a side log.

Rates mean (tolerance in the tests: the count stays within 4 binomial standard deviations):
- episode faults, per sensor per tick, the chance that an episode starts while none is running:
  `dropout` (silent for a while), `stuck` (repeats one set of values), `drift` (the primary metric
  creeps away), `clock_skew` (timestamps off by minutes to hours), `burst` (store-and-forward: the
  sensor buffers while offline and sends one SenML pack of everything on reconnect);
- message faults, per message sent: `spike` (one wild but plausible value), `duplicate` (sent
  twice), `out_of_order` (held back 1-3 ticks), `malformed` (a payload ingest must reject);
- `unregistered`, per message sent: an extra message from a sensor id nobody registered.

Side log lines are JSON: {"time": RFC 3339 event time, "sensor": id, "fault": name, ...details}.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TextIO

import numpy as np

from pantau.errors import ConfigError

EPISODE_FAULTS = ("dropout", "stuck", "drift", "clock_skew", "burst")
MESSAGE_FAULTS = ("spike", "duplicate", "out_of_order", "malformed")
FAULTS = (*EPISODE_FAULTS, *MESSAGE_FAULTS, "unregistered")
# Episode lengths in ticks (5-minute ticks: 15 min to 3 h; drift lasts half a day to a day).
EPISODE_TICKS = {"dropout": (3, 36), "stuck": (6, 36), "drift": (144, 288), "clock_skew": (12, 144), "burst": (3, 12)}


def parse_faults(text: str | None, base: Mapping[str, float] | None = None) -> dict[str, float]:
    """Fault rates from "dropout=0.01,malformed=0.002" on top of `base` (a scenario's rates)."""
    rates = dict(base or {})
    if not text:
        return rates
    for item in text.split(","):
        name, sep, value = item.strip().partition("=")
        if not sep:
            raise ConfigError("--faults", f"expected NAME=RATE, got {item!r}")
        if name not in FAULTS:
            raise ConfigError("--faults", f"unknown fault {name!r} (known: {', '.join(FAULTS)})")
        try:
            rate = float(value)
        except ValueError:
            raise ConfigError("--faults", f"{name}: rate {value!r} is not a number") from None
        if not 0.0 <= rate <= 1.0:
            raise ConfigError("--faults", f"{name}: rate must be between 0 and 1, got {rate}")
        rates[name] = rate
    return rates


@dataclass
class FaultStats:
    """How often each fault had the chance to happen and how often it did."""

    opportunities: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FAULTS, 0))
    injected: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FAULTS, 0))


class FaultLog:
    """The JSONL side log of injected faults (or nowhere, with `out=None`)."""

    def __init__(self, out: TextIO | None) -> None:
        self.out = out

    def write(self, t: float, sensor: str, fault: str, **details: object) -> None:
        if self.out is None:
            return
        when = datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")
        self.out.write(json.dumps({"time": when, "sensor": sensor, "fault": fault, **details}) + "\n")


class EpisodeState:
    """Per-sensor episode bookkeeping for the episode faults, as arrays over the fleet."""

    def __init__(self, n: int) -> None:
        self.until = {name: np.zeros(n, dtype=np.int64) for name in EPISODE_FAULTS}
        self.skew_s = np.zeros(n)
        self.drift_per_tick = np.zeros(n)
        self.drift_ticks = np.zeros(n)

    def active(self, name: str, tick: int) -> np.ndarray:
        return self.until[name] > tick


class FaultInjector:
    """Decides which faults happen this tick; the engine applies them to values and messages."""

    def __init__(self, rates: Mapping[str, float], ids: list[str], rng: np.random.Generator, log: FaultLog) -> None:
        self.rates = {name: float(rates.get(name, 0.0)) for name in FAULTS}
        self.ids = ids
        self.rng = rng
        self.log = log
        self.stats = FaultStats()
        self.state = EpisodeState(len(ids))

    def start_episodes(self, tick: int, t: float, reporting: np.ndarray) -> dict[str, np.ndarray]:
        """Start new episodes among the sensors reporting this tick; returns the new starts."""
        started: dict[str, np.ndarray] = {}
        for name in EPISODE_FAULTS:
            rate = self.rates[name]
            if rate <= 0.0:
                continue
            eligible = reporting & ~self.state.active(name, tick)
            draw = self.rng.random(len(self.ids))
            new = eligible & (draw < rate)
            self.stats.opportunities[name] += int(eligible.sum())
            if not new.any():
                continue
            lo, hi = EPISODE_TICKS[name]
            idx = np.flatnonzero(new)
            lengths = self.rng.integers(lo, hi + 1, len(idx))
            self.state.until[name][idx] = tick + lengths
            if name == "clock_skew":
                sign = np.where(self.rng.random(len(idx)) < 0.5, -1.0, 1.0)
                self.state.skew_s[idx] = sign * np.round(self.rng.uniform(120.0, 7200.0, len(idx)))
            if name == "drift":
                # 1-4% of the reading's scale per hour, either way; applied by the engine.
                self.state.drift_per_tick[idx] = self.rng.choice([-1.0, 1.0], len(idx)) * self.rng.uniform(
                    0.0008, 0.0035, len(idx)
                )
                self.state.drift_ticks[idx] = 0
            self.stats.injected[name] += len(idx)
            for i, n_ticks in zip(idx.tolist(), lengths.tolist(), strict=True):
                details: dict[str, object] = {"ticks": n_ticks}
                if name == "clock_skew":
                    details["skew_s"] = float(self.state.skew_s[i])
                if name == "drift":
                    details["per_tick"] = round(float(self.state.drift_per_tick[i]), 5)
                self.log.write(t, self.ids[i], name, **details)
            started[name] = new
        return started

    def message_draw(self, name: str, n: int) -> np.ndarray:
        """Which of n messages get a message fault."""
        rate = self.rates[name]
        self.stats.opportunities[name] += n
        if rate <= 0.0 or n == 0:
            return np.zeros(n, dtype=bool)
        hit = self.rng.random(n) < rate
        self.stats.injected[name] += int(hit.sum())
        return hit
