"""The simulation: models → faults → payloads, one tick of event time at a time.

`Simulation.ticks()` yields, for each reporting interval, the MQTT messages (topic, payload) the
fleet sends at the end of it, exactly as ingest expects them: a JSON object `{"ts": …, metric: …}`
or a SenML pack with base name "SENSOR:" and units from the metric registry. Nothing here does
I/O except the fault side log; sinks and pacing live in `simulators.output`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from pantau.metrics import METRICS
from pantau.topics import sensor_topic
from simulators.faults import FaultInjector, FaultLog
from simulators.fleet import Fleet
from simulators.models import DECIMALS, KIND_METRICS, PRIMARY, CityModel
from simulators.scenarios import Scenario

# SenML unit per metric; each is one the registry accepts (see pantau.metrics senml_units).
SENML_UNITS = {
    "pm25": "ug/m3", "pm10": "ug/m3", "co": "ug/m3", "no2": "ug/m3", "o3": "ug/m3", "so2": "ug/m3",
    "hc": "ug/m3", "temperature_c": "Cel", "humidity_pct": "%RH", "vehicle_count": "count",
    "interval_s": "s", "avg_speed_kmh": "km/h", "occupancy": "/", "water_level_cm": "cm", "rain_mm": "mm",
}  # fmt: skip
FORMATS = ("json", "senml")


@dataclass(frozen=True, slots=True, kw_only=True)
class SimConfig:
    """Event time and encoding of one run."""

    start: float  # epoch seconds
    duration_s: float
    step_s: float = 300.0
    seed: int = 0
    fmt: str = "json"


@dataclass(slots=True)
class Tick:
    """The messages sent at the end of one interval."""

    index: int
    t: float
    messages: list[tuple[str, bytes]]
    readings: int  # readings in these messages that ingest should store


@dataclass
class SimStats:
    """Totals of a run so far."""

    ticks: int = 0
    messages: int = 0
    readings: int = 0  # readings ingest should store (duplicates and rejects not counted)
    malformed: int = 0
    unregistered: int = 0
    skewed_readings: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)


def _fmt_column(name: str, arr: np.ndarray) -> list[str]:
    d = DECIMALS[name]
    # `+ 0.0` turns a -0.0 into 0.0 so that the text is the same whatever the sign of zero.
    return [f"{x:.{d}f}" for x in (np.round(arr, d) + 0.0).tolist()]


def encode_json(ts: int, names: tuple[str, ...], values: list[str]) -> bytes:
    """`{"ts": <epoch s>, "<metric>": <number>, ...}`."""
    body = ",".join(f'"{n}":{v}' for n, v in zip(names, values, strict=True))
    return f'{{"ts":{ts},{body}}}'.encode()


def encode_senml(sensor_id: str, rows: list[tuple[int, tuple[str, ...], list[str]]]) -> bytes:
    """A SenML pack of one or more timestamped rows; later rows use times relative to the first."""
    bt = rows[0][0]
    records = []
    for r, (ts, names, values) in enumerate(rows):
        for i, (n, v) in enumerate(zip(names, values, strict=True)):
            if r == 0 and i == 0:
                records.append(f'{{"bn":"{sensor_id}:","bt":{bt},"n":"{n}","u":"{SENML_UNITS[n]}","v":{v}}}')
            elif ts != bt:
                records.append(f'{{"n":"{n}","u":"{SENML_UNITS[n]}","t":{ts - bt},"v":{v}}}')
            else:
                records.append(f'{{"n":"{n}","u":"{SENML_UNITS[n]}","v":{v}}}')
    return ("[" + ",".join(records) + "]").encode()


class Simulation:
    """A city fleet under a scenario with faults, as a deterministic stream of ticks."""

    def __init__(
        self,
        fleet: Fleet,
        scenario: Scenario,
        config: SimConfig,
        *,
        faults: dict[str, float] | None = None,
        fault_log: FaultLog | None = None,
    ) -> None:
        if config.fmt not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}")
        self.fleet = fleet
        self.scenario = scenario
        self.config = config
        seeds = np.random.SeedSequence(config.seed).spawn(2)
        self.model = CityModel(
            fleet, scenario, start=config.start, step_s=config.step_s, rng=np.random.default_rng(seeds[0])
        )
        self.ids = [s.id for s in fleet.sensors]
        self.topics = [s.topic for s in fleet.sensors]
        self.kinds = [s.kind for s in fleet.sensors]
        self.districts = np.array([s.district for s in fleet.sensors], dtype=object)
        self.faults = FaultInjector(
            faults if faults is not None else dict(scenario.faults),
            self.ids,
            np.random.default_rng(seeds[1]),
            fault_log or FaultLog(None),
        )
        self.stats = SimStats()
        self.n_ticks = int(config.duration_s // config.step_s)
        self._stuck: dict[int, list[str]] = {}
        self._buffer: dict[int, list[tuple[int, tuple[str, ...], list[str]]]] = {}
        self._held: list[tuple[int, str, bytes]] = []  # (release tick, topic, payload)
        self._outages = self._resolve_outages()
        self._outage_logged: set[float] = set()

    def _resolve_outages(self) -> list[tuple[float, float, np.ndarray]]:
        out = []
        rng = np.random.default_rng(np.random.SeedSequence([self.config.seed, 0x0FF]))
        for o in self.scenario.outages:
            t0 = o.at.resolve(self.config.start, self.fleet.utc_offset_h)
            district = o.district or (self.fleet.districts[0].name if self.fleet.districts else "")
            mask = np.array(
                [(not district or s.district == district) and (not o.kind or s.kind.value == o.kind)
                 for s in self.fleet.sensors]
            )  # fmt: skip
            if o.fraction < 1.0:
                mask &= rng.random(len(mask)) < o.fraction
            out.append((t0, t0 + o.duration_h * 3600.0, mask))
        return out

    def ticks(self) -> Iterator[Tick]:
        """Every tick of the run, in event-time order."""
        for k in range(1, self.n_ticks + 1):
            yield self.tick(k)
        # Whatever is still held back (out of order) goes out after the last tick.
        if self._held:
            msgs = [(topic, payload) for _, topic, payload in self._held]
            self._held.clear()
            self.stats.messages += len(msgs)
            yield Tick(self.n_ticks + 1, self.config.start + self.n_ticks * self.config.step_s, msgs, 0)

    def tick(self, k: int) -> Tick:
        cfg = self.config
        t = cfg.start + k * cfg.step_s
        n = len(self.ids)
        values = self.model.step(t)
        state = self.faults.state
        outage = np.zeros(n, dtype=bool)
        for t0, t1, mask in self._outages:
            if t0 <= t - cfg.step_s / 2 < t1:
                if t0 not in self._outage_logged:
                    self._outage_logged.add(t0)
                    for i in np.flatnonzero(mask).tolist():
                        self.faults.log.write(t, self.ids[i], "outage", until=t1)
                outage |= mask
        silent = outage | state.active("dropout", k) | state.active("burst", k)
        # A sensor about to flush its store-and-forward buffer starts no new episode this tick.
        flushing = np.zeros(n, dtype=bool)
        flushing[list(self._buffer)] = True
        started = self.faults.start_episodes(k, t, ~silent & ~flushing)
        silent = outage | state.active("dropout", k) | state.active("burst", k)
        buffering = state.active("burst", k) & ~outage
        skew = np.where(state.active("clock_skew", k), state.skew_s, 0.0)
        stuck_new = started.get("stuck")
        drifting = state.active("drift", k)
        state.drift_ticks = np.where(drifting, state.drift_ticks + 1, 0)
        spike = np.zeros(n, dtype=bool)
        reporting = ~silent
        spike_hit = self.faults.message_draw("spike", int(reporting.sum()))
        spike[np.flatnonzero(reporting)[spike_hit]] = True
        # Per-sensor formatted values, with value faults applied on the arrays first.
        rows: dict[int, list[str]] = {}
        for kind, kv in values.items():
            if not len(kv.positions):
                continue
            names = KIND_METRICS[kind]
            primary = PRIMARY[kind]
            pos = kv.positions
            arr = kv.values[primary]
            d = drifting[pos]
            if d.any():
                arr = arr * np.where(d, 1.0 + state.drift_per_tick[pos] * state.drift_ticks[pos], 1.0)
            s = spike[pos]
            if s.any():
                metric = METRICS[primary]
                scale = {"water_level_cm": 150.0, "rain_mm": 25.0}.get(primary)
                bump = arr + scale if scale is not None else arr * 6.0 + 50.0
                arr = np.where(s, np.minimum(bump, metric.high), arr)
                for i in pos[s].tolist():
                    self.faults.log.write(t, self.ids[i], "spike", metric=primary)
            metric = METRICS[primary]
            kv.values[primary] = np.clip(arr, metric.low, metric.high)
            cols = [_fmt_column(name, kv.values[name]) for name in names]
            for j, i in enumerate(pos.tolist()):
                rows[i] = [c[j] for c in cols]
        if stuck_new is not None:
            for i in np.flatnonzero(stuck_new).tolist():
                self._stuck[i] = rows[i]
        messages: list[tuple[str, bytes]] = []
        sources: list[int] = []
        counts: list[int] = []
        readings = 0
        stuck_active = state.active("stuck", k)
        for i in range(n):
            kind = self.kinds[i]
            names = KIND_METRICS[kind]
            row = self._stuck[i] if stuck_active[i] and i in self._stuck else rows[i]
            ts = int(t + skew[i])
            if buffering[i]:
                self._buffer.setdefault(i, []).append((ts, names, row))
                continue
            if silent[i]:
                continue
            pending = self._buffer.pop(i, None)
            if pending:
                payload = encode_senml(self.ids[i], [*pending, (ts, names, row)])
                count = (len(pending) + 1) * len(names)
            elif cfg.fmt == "json":
                payload = encode_json(ts, names, row)
                count = len(names)
            else:
                payload = encode_senml(self.ids[i], [(ts, names, row)])
                count = len(names)
            if skew[i]:
                # A skewed clock may land on an earlier reading's timestamp or in the future:
                # such readings are not counted as expected to be stored.
                self.stats.skewed_readings += count
                count = 0
            messages.append((self.topics[i], payload))
            sources.append(i)
            counts.append(count)
            readings += count
            self.stats.by_kind[kind.value] = self.stats.by_kind.get(kind.value, 0) + count
        readings -= self._message_faults(k, t, messages, sources, counts)
        # Released late: out-of-order messages held back in earlier ticks.
        due = [h for h in self._held if h[0] <= k]
        if due:
            self._held = [h for h in self._held if h[0] > k]
            messages.extend((topic, payload) for _, topic, payload in due)
        self.stats.ticks += 1
        self.stats.messages += len(messages)
        self.stats.readings += readings
        return Tick(k, t, messages, readings)

    def _message_faults(
        self, k: int, t: float, messages: list[tuple[str, bytes]], sources: list[int], counts: list[int]
    ) -> int:
        """Apply malformed, duplicate, out-of-order and unregistered in place; returns readings lost."""
        inj = self.faults
        rng = inj.rng
        lost = 0
        n = len(messages)
        malformed = inj.message_draw("malformed", n)
        duplicate = inj.message_draw("duplicate", n)
        # A malformed message is not also duplicated: one rejection per malformed fault.
        inj.stats.injected["duplicate"] -= int((duplicate & malformed).sum())
        duplicate &= ~malformed
        late = inj.message_draw("out_of_order", n)
        ghosts = inj.message_draw("unregistered", n)
        out: list[tuple[str, bytes]] = []
        for j, (topic, payload) in enumerate(messages):
            i = sources[j]
            if malformed[j]:
                variant = int(rng.integers(0, 4))
                if variant == 0:
                    payload = payload[: max(1, len(payload) // 2)]
                elif variant == 1:
                    payload = b"ERR sensor reboot\r\n"
                elif variant == 2:
                    payload = f'{{"ts":{int(t)},"{PRIMARY[self.kinds[i]]}":NaN}}'.encode()
                else:
                    payload = b"\xff\xfe\x00\x01garbage"
                lost += counts[j]
                inj.log.write(t, self.ids[i], "malformed", variant=("truncated", "text", "nan", "binary")[variant])
                self.stats.malformed += 1
            if late[j]:
                delay = int(rng.integers(1, 4))
                self._held.append((k + delay, topic, payload))
                inj.log.write(t, self.ids[i], "out_of_order", delay_ticks=delay)
            else:
                out.append((topic, payload))
            if duplicate[j]:
                out.append((topic, payload))
                inj.log.write(t, self.ids[i], "duplicate")
            if ghosts[j]:
                kind = self.kinds[i]
                ghost = f"{self.fleet.city[:3].upper()}-UNREG-{int(rng.integers(1, 100)):02d}"
                row_payload = messages[j][1] if not malformed[j] else encode_json(int(t), (PRIMARY[kind],), ["1.0"])
                out.append((sensor_topic(self.fleet.city, kind, ghost), row_payload))
                inj.log.write(t, ghost, "unregistered", kind=kind.value)
                self.stats.unregistered += 1
        messages[:] = out
        return lost
