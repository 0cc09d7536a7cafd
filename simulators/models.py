"""Physical models of a city, vectorised with numpy over all sensors of a kind per tick.

- Weather: convective storm cells (more in the tropical afternoon) plus scenario storms; rain at
  a point is the sum of the cells' Gaussian footprints. Temperature and humidity follow the day.
- Traffic: a weekday double-peak or weekend profile times each corridor's capacity and peak
  ratio; speed falls with the degree of saturation (a BPR curve), occupancy follows flow and
  speed; incidents cut a corridor's capacity.
- Air: PM2.5/PM10, CO, NO2 from nearby traffic, trapped by the night inversion, washed out by
  rain; O3 peaks in the afternoon; haze episodes add smoke for days.
- Rivers: each gauge is a linear reservoir fed by rain on its own sub-catchment and by the gauge
  upstream with a travel-time lag; level comes from a power-law rating curve calibrated so that
  the design storm reaches Awas. Floods therefore cross Siaga levels upstream first.

Every random draw comes from the generator passed in, so a seed fixes the output.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pantau.metrics import METRICS, SensorKind
from simulators.fleet import KM_PER_DEG, Fleet
from simulators.scenarios import Scenario

# Metrics each kind reports, in payload order, with the decimals they are rounded to.
KIND_METRICS: dict[SensorKind, tuple[str, ...]] = {
    SensorKind.AIR: ("pm25", "pm10", "co", "no2", "o3", "so2", "hc", "temperature_c", "humidity_pct"),
    SensorKind.TRAFFIC: ("vehicle_count", "interval_s", "avg_speed_kmh", "occupancy"),
    SensorKind.FLOOD: ("water_level_cm",),
    SensorKind.RAIN: ("rain_mm",),
}
DECIMALS = {
    "pm25": 1, "pm10": 1, "co": 0, "no2": 1, "o3": 1, "so2": 1, "hc": 1, "temperature_c": 1,
    "humidity_pct": 1, "vehicle_count": 0, "interval_s": 0, "avg_speed_kmh": 1, "occupancy": 3,
    "water_level_cm": 1, "rain_mm": 1,
}  # fmt: skip
# The metric a spike or drift fault acts on.
PRIMARY = {SensorKind.AIR: "pm25", SensorKind.TRAFFIC: "vehicle_count", SensorKind.FLOOD: "water_level_cm",
           SensorKind.RAIN: "rain_mm"}  # fmt: skip

# Traffic: vehicles per passenger-car unit. Motorcycles count 0.25-0.5 pcu (PKJI), so a mixed
# Indonesian stream has more vehicles than pcu.
VEH_PER_PCU = 1.6
# Effective length of a vehicle plus the detection zone, km; sets occupancy = flow * L / speed.
VEHICLE_LENGTH_KM = 0.005
# Background convective cells per hour over the city area: rare at night, many in the afternoon.
CELL_RATE_NIGHT_PER_H = 0.05
CELL_RATE_AFTERNOON_PER_H = 0.35
# Wet deposition: fraction of PM removed per mm of rain (about half in an hour of 10 mm/h).
WASHOUT_PER_MM = 0.07
# Runoff coefficient of the catchments (peat, farmland and town) and the design storm the rating
# curves are calibrated to: 3 h of 25 mm/h over every upstream sub-catchment reaches Awas.
RUNOFF_COEFF = 0.5
DESIGN_STORM_MMH = 25.0
DESIGN_STORM_H = 3.0
BASEFLOW_M3S_PER_KM2 = 0.03
RATING_EXPONENT = 0.6


def _gauss(x: np.ndarray | float, mu: float, sigma: float) -> np.ndarray | float:
    return np.exp(-0.5 * ((x - mu) / sigma) ** 2)


def _sigmoid(x: np.ndarray | float) -> np.ndarray | float:
    return 1.0 / (1.0 + np.exp(-x))


def traffic_profile(hour: float, weekend: bool) -> float:
    """Demand relative to the daily peak (0..1) at a local hour: AM/PM peaks on weekdays."""
    if weekend:
        day = 0.55 * _sigmoid((hour - 7.5) / 0.9) * _sigmoid((22.0 - hour) / 1.0)
        value = 0.05 + day + 0.12 * _gauss(hour, 11.0, 2.0) + 0.15 * _gauss(hour, 19.0, 1.5)
    else:
        day = 0.5 * _sigmoid((hour - 6.0) / 0.6) * _sigmoid((21.0 - hour) / 1.0)
        value = 0.05 + day + 0.45 * _gauss(hour, 7.25, 0.75) + 0.42 * _gauss(hour, 17.25, 1.0)
    return float(min(value, 1.0))


def inversion_factor(hour: float) -> float:
    """How strongly the boundary layer traps emissions: about 1.6 before dawn, 0.6 mid-afternoon."""
    return 0.6 + 1.0 * (0.5 + 0.5 * math.cos(2 * math.pi * (hour - 4.0) / 24.0))


def sunlight(hour: float) -> float:
    return max(0.0, math.sin(math.pi * (hour - 6.0) / 12.0))


@dataclass
class Cells:
    """Storm cells: centre (deg), radius (km), peak (mm/h), start and duration (s), drift (deg/s)."""

    lat: np.ndarray
    lon: np.ndarray
    radius_km: np.ndarray
    peak: np.ndarray
    t0: np.ndarray
    dur: np.ndarray
    vlat: np.ndarray
    vlon: np.ndarray

    @classmethod
    def empty(cls) -> Cells:
        z = np.zeros(0)
        return cls(z, z, z, z, z, z, z, z)

    def extend(self, other: Cells) -> Cells:
        return Cells(*(np.concatenate((a, b)) for a, b in zip(self.astuple(), other.astuple(), strict=True)))

    def astuple(self) -> tuple[np.ndarray, ...]:
        return (self.lat, self.lon, self.radius_km, self.peak, self.t0, self.dur, self.vlat, self.vlon)

    def keep(self, mask: np.ndarray) -> Cells:
        return Cells(*(a[mask] for a in self.astuple()))

    def intensity(self, t: float, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
        """Rain intensity (mm/h) at the points at time t."""
        if not len(self.peak) or not len(lat):
            return np.zeros(len(lat))
        age = t - self.t0
        frac = age / self.dur
        # Quick rise (first quarter), slow decay: the shape of a convective cell.
        env = np.where(frac < 0.25, frac / 0.25, (1.0 - frac) / 0.75)
        env = np.clip(env, 0.0, 1.0)
        clat = self.lat + self.vlat * age
        clon = self.lon + self.vlon * age
        coslat = math.cos(math.radians(float(np.mean(lat))))
        dy = (lat[:, None] - clat[None, :]) * KM_PER_DEG
        dx = (lon[:, None] - clon[None, :]) * KM_PER_DEG * coslat
        d2 = dx * dx + dy * dy
        foot = np.exp(-0.5 * d2 / (self.radius_km[None, :] ** 2))
        return (foot * (self.peak * env)[None, :]).sum(axis=1)


@dataclass
class KindValues:
    """One tick's values for the sensors of one kind: positions in the fleet and metric arrays."""

    positions: np.ndarray
    values: dict[str, np.ndarray]


class CityModel:
    """The state of a simulated city; `step(t)` advances it to event time t and returns readings."""

    def __init__(self, fleet: Fleet, scenario: Scenario, *, start: float, step_s: float, rng: np.random.Generator):
        self.fleet = fleet
        self.scenario = scenario
        self.start = start
        self.step_s = step_s
        self.rng = rng
        self.offset_s = fleet.utc_offset_h * 3600.0
        sensors = fleet.sensors
        self.pos = {k: np.array([i for i, s in enumerate(sensors) if s.kind is k], dtype=np.int64) for k in SensorKind}
        lat = np.array([s.lat for s in sensors], dtype=float)
        lon = np.array([s.lon for s in sensors], dtype=float)
        self.lat, self.lon = lat, lon
        # The area storms are born over: the sensors' box plus the river headwaters, with a margin.
        lats = np.concatenate((lat, [r.headwater_lat for r in fleet.rivers]))
        lons = np.concatenate((lon, [r.headwater_lon for r in fleet.rivers]))
        margin = 5.0 / KM_PER_DEG
        self.box = (lats.min() - margin, lats.max() + margin, lons.min() - margin, lons.max() + margin)
        self.cells = Cells.empty()
        self._init_traffic()
        self._init_air()
        self._init_rivers()
        self._scripted_storms_done: set[int] = set()

    # -- helpers ----------------------------------------------------------------------------------

    def local_hour(self, t: float) -> float:
        return ((t + self.offset_s) % 86400.0) / 3600.0

    def is_weekend(self, t: float) -> bool:
        # 1970-01-01 was a Thursday: (days + 3) % 7 gives Monday = 0.
        return (int((t + self.offset_s) // 86400) + 3) % 7 >= 5

    def _meta(self, kind: SensorKind, key: str, default: float) -> np.ndarray:
        return np.array([float(self.fleet.sensors[i].metadata.get(key, default)) for i in self.pos[kind]], dtype=float)

    # -- traffic ----------------------------------------------------------------------------------

    def _init_traffic(self) -> None:
        k = SensorKind.TRAFFIC
        self.cap = self._meta(k, "capacity_pcu_h", 2000.0)
        self.lanes = self._meta(k, "lanes", 2.0)
        self.vfree = self._meta(k, "free_speed_kmh", 50.0)
        self.peak_ratio = self._meta(k, "peak_ratio", 0.8)
        self.traffic_noise = np.zeros(len(self.cap))
        self.incident_until = np.zeros(len(self.cap))
        self.incident_factor = np.ones(len(self.cap))
        self.last_ds = np.zeros(len(self.cap))
        self.corridors = [str(self.fleet.sensors[i].metadata.get("corridor", "")) for i in self.pos[k]]
        self.ids_traffic = [self.fleet.sensors[i].id for i in self.pos[k]]
        # Scripted incidents: (start, end, factor, counter indices), expanded over the run below.
        self.scripted: list[tuple[float, float, float, np.ndarray]] = []
        busiest = np.argsort(-(self.cap * self.peak_ratio), kind="stable")
        for inc in self.scenario.incidents:
            if inc.corridor:
                idx = np.array(
                    [j for j, (c, s) in enumerate(zip(self.corridors, self.ids_traffic, strict=True))
                     if inc.corridor in c or inc.corridor in s],
                    dtype=np.int64,
                )  # fmt: skip
            else:
                idx = busiest[: inc.count]
            first = inc.at.resolve(self.start, self.fleet.utc_offset_h)
            repeats = 60 if inc.daily else 1
            for day in range(repeats):
                t0 = first + day * 86400.0
                self.scripted.append((t0, t0 + inc.duration_h * 3600.0, inc.capacity_factor, idx))

    def _traffic(self, t: float, rain_city: float) -> dict[str, np.ndarray]:
        n = len(self.cap)
        dt_h = self.step_s / 3600.0
        rng = self.rng
        hour = self.local_hour(t - self.step_s / 2)
        profile = traffic_profile(hour, self.is_weekend(t))
        # Demand noise: AR(1) in log space, 10% spread, correlated over about an hour.
        rho = math.exp(-dt_h / 1.0)
        self.traffic_noise = rho * self.traffic_noise + math.sqrt(1 - rho * rho) * 0.10 * rng.standard_normal(n)
        demand = self.cap * self.peak_ratio * profile * self.scenario.traffic_factor * np.exp(self.traffic_noise)
        # Random incidents (crashes, breakdowns): 20-90 min at 40-70% capacity.
        p = 1.0 - math.exp(-self.scenario.incident_rate_per_h * dt_h)
        new = (rng.random(n) < p) & (self.incident_until <= t)
        dur = rng.uniform(1200, 5400, n)
        factor = rng.uniform(0.4, 0.7, n)
        self.incident_until = np.where(new, t + dur, self.incident_until)
        self.incident_factor = np.where(new, factor, np.where(self.incident_until > t, self.incident_factor, 1.0))
        cap = self.cap * self.incident_factor
        for t0, t1, f, idx in self.scripted:
            if t0 <= t - self.step_s / 2 < t1 and len(idx):
                cap[idx] = np.minimum(cap[idx], self.cap[idx] * f)
        # Heavy rain slows everything and lowers capacity (up to 20% at 20 mm/h and more).
        cap = cap * (1.0 - 0.2 * min(rain_city / 20.0, 1.0))
        ds = demand / cap
        self.last_ds = ds
        speed = self.vfree / (1.0 + 0.15 * ds**4) * (1.0 - 0.15 * min(rain_city / 20.0, 1.0))
        speed = np.clip(speed + rng.normal(0.0, 1.5, n), 3.0, None)
        # Oversaturated: the queue discharges a little below capacity (capacity drop).
        served = np.where(ds <= 1.0, demand, cap * (1.0 - 0.1 * np.minimum(ds - 1.0, 1.0)))
        veh_h = served * VEH_PER_PCU
        count = rng.poisson(veh_h * self.step_s / 3600.0).astype(float)
        occupancy = np.clip(veh_h / self.lanes * VEHICLE_LENGTH_KM / speed, 0.0, 0.98)
        return {
            "vehicle_count": count,
            "interval_s": np.full(n, self.step_s),
            "avg_speed_kmh": speed,
            "occupancy": occupancy,
        }

    # -- air --------------------------------------------------------------------------------------

    def _init_air(self) -> None:
        k = SensorKind.AIR
        idx = self.pos[k]
        self.traffic_weight = self._meta(k, "traffic_weight", 0.6)
        tidx = self.pos[SensorKind.TRAFFIC]
        n = len(idx)
        if len(tidx):
            coslat = math.cos(math.radians(float(np.mean(self.lat))))
            dy = (self.lat[idx][:, None] - self.lat[tidx][None, :]) * KM_PER_DEG
            dx = (self.lon[idx][:, None] - self.lon[tidx][None, :]) * KM_PER_DEG * coslat
            w = np.exp(-np.hypot(dx, dy) / 1.5) + 1e-6
            self.air_w = w / w.sum(axis=1, keepdims=True)
        else:
            self.air_w = np.zeros((n, 0))
        self.pm_local = np.full(n, 12.0)
        self.pm_haze = np.zeros(n)
        self.air_noise = np.zeros(n)
        # Each station's own bias (siting, calibration): a few percent.
        self.air_bias = np.exp(self.rng.normal(0.0, 0.05, n))

    def haze_level(self, t: float) -> float:
        """Extra smoke PM2.5 (µg/m³) at time t from the scenario's haze episodes."""
        total = 0.0
        for h in self.scenario.haze:
            t0 = h.at.resolve(self.start, self.fleet.utc_offset_h)
            t1 = t0 + h.duration_h * 3600.0
            ramp = max(h.ramp_h * 3600.0, 1.0)
            if t0 <= t <= t1:
                total += h.peak_pm25 * min(1.0, (t - t0) / ramp, (t1 - t) / ramp)
        return total

    def _air(self, t: float, rain: np.ndarray) -> dict[str, np.ndarray]:
        n = len(self.pm_local)
        rng = self.rng
        dt_h = self.step_s / 3600.0
        hour = self.local_hour(t - self.step_s / 2)
        inv = inversion_factor(hour)
        traffic = self.air_w @ self.last_ds if self.air_w.shape[1] else np.zeros(n)
        exposure = traffic * self.traffic_weight
        # PM relaxes towards what sources and mixing sustain (1 h time scale), rain removes it.
        target = 9.0 * math.sqrt(inv) + 38.0 * exposure * inv
        # Wet roads raise no dust and showers come with mixing: less is sustained while it rains.
        target = target / (1.0 + 0.05 * rain)
        relax = 1.0 - math.exp(-dt_h / 1.0)
        haze_target = self.haze_level(t) * (0.75 + 0.35 * (inv - 0.6))
        self.pm_local += (target - self.pm_local) * relax
        self.pm_haze += (haze_target - self.pm_haze) * (1.0 - math.exp(-dt_h / 3.0))
        wash = np.exp(-WASHOUT_PER_MM * rain * dt_h)
        self.pm_local *= wash
        self.pm_haze *= wash
        rho = math.exp(-dt_h / 2.0)
        self.air_noise = rho * self.air_noise + math.sqrt(1 - rho * rho) * 0.12 * rng.standard_normal(n)
        noise = np.exp(self.air_noise) * self.air_bias
        pm25 = (self.pm_local + self.pm_haze) * noise
        pm10 = (1.8 * self.pm_local + 1.15 * self.pm_haze + 8.0 * exposure) * noise
        co = (350.0 + 2600.0 * exposure * inv + 9.0 * self.pm_haze) * noise
        no2 = (8.0 + 55.0 * exposure * inv) * noise
        sun = sunlight(hour - 1.0)
        o3 = np.clip((18.0 + 105.0 * sun**1.5) * np.where(rain > 1.0, 0.6, 1.0) - 0.25 * no2, 2.0, None) * noise
        so2 = (5.0 + 9.0 * exposure * inv) * noise
        hc = (18.0 + 35.0 * exposure * inv + 0.08 * self.pm_haze) * noise
        diurnal = 0.5 - 0.5 * math.cos(2 * math.pi * (hour - 3.0) / 24.0)  # 0 at 03:00, 1 at 15:00
        wet = np.minimum(rain / 10.0, 1.0)
        temp = 24.0 + 8.0 * diurnal - 3.0 * wet + rng.normal(0.0, 0.3, n)
        humidity = np.clip(94.0 - 30.0 * diurnal + 20.0 * wet + rng.normal(0.0, 1.5, n), 30.0, 100.0)
        return {
            "pm25": pm25, "pm10": pm10, "co": co, "no2": no2, "o3": o3, "so2": so2, "hc": hc,
            "temperature_c": temp, "humidity_pct": humidity,
        }  # fmt: skip

    # -- rain and rivers ----------------------------------------------------------------------------

    def _init_rivers(self) -> None:
        k = SensorKind.FLOOD
        sensors = self.fleet.sensors
        gauges = [sensors[i] for i in self.pos[k]]
        # Hydrology runs on nodes (river, order); scaled copies of a gauge share its node.
        keys = sorted({(str(g.metadata["river"]), int(g.metadata["order"])) for g in gauges})
        self.node_of = np.array(
            [keys.index((str(g.metadata["river"]), int(g.metadata["order"]))) for g in gauges], dtype=np.int64
        )
        rivers = {r.name: r for r in self.fleet.rivers}
        nn = len(keys)
        first = {key: next(g for g in gauges if (g.metadata["river"], g.metadata["order"]) == key) for key in keys}
        self.node_area = np.array([float(first[key].metadata.get("catchment_km2", 100.0)) for key in keys])
        self.node_k_s = np.array([float(first[key].metadata.get("recession_h", 3.0)) * 3600.0 for key in keys])
        self.node_up = np.full(nn, -1, dtype=np.int64)
        self.node_lag = np.zeros(nn, dtype=np.int64)
        # Catchment rain is sampled at three points between the upstream end and the gauge.
        self.node_pts_lat = np.zeros((nn, 3))
        self.node_pts_lon = np.zeros((nn, 3))
        for j, (river, order) in enumerate(keys):
            g = first[(river, order)]
            ups = [i for i, kk in enumerate(keys) if kk[0] == river and kk[1] < order]
            if ups:
                up = max(ups, key=lambda i: keys[i][1])
                self.node_up[j] = up
                self.node_lag[j] = max(1, round(float(g.metadata.get("lag_h", 2.0)) * 3600.0 / self.step_s))
                ulat, ulon = first[keys[up]].lat, first[keys[up]].lon
            else:
                ulat, ulon = rivers[river].headwater_lat, rivers[river].headwater_lon
            assert g.lat is not None and g.lon is not None and ulat is not None and ulon is not None
            self.node_pts_lat[j] = np.linspace(ulat, g.lat, 3)
            self.node_pts_lon[j] = np.linspace(ulon, g.lon, 3)
        self.node_keys = keys
        self.node_order = sorted(range(nn), key=lambda j: keys[j][1])
        # Baseflow per node (accumulated down the river).
        self.node_qbase = np.zeros(nn)
        for j in self.node_order:
            up = self.node_up[j]
            self.node_qbase[j] = BASEFLOW_M3S_PER_KM2 * self.node_area[j] + (self.node_qbase[up] if up >= 0 else 0.0)
        self.node_qdesign = self._design_peaks()
        self.q = self.node_qbase.copy()
        max_lag = int(self.node_lag.max()) if nn else 1
        self.q_hist = np.tile(self.q, (max_lag + 1, 1))  # ring buffer of past outflows
        self.hist_i = 0
        # Rating per gauge: level = base + a * (Q^b - Qbase^b), with a so that Q_design sits 15%
        # of the Siaga-to-Awas step above Awas.
        base = np.array([float(g.metadata.get("base_cm", float(g.metadata["siaga3_cm"]) / 2)) for g in gauges])
        s2 = np.array([float(g.metadata["siaga2_cm"]) for g in gauges])
        s1 = np.array([float(g.metadata["siaga1_cm"]) for g in gauges])
        qb = self.node_qbase[self.node_of] ** RATING_EXPONENT
        qd = (self.node_qbase + self.node_qdesign)[self.node_of] ** RATING_EXPONENT
        self.rating_base = base
        self.rating_a = (s1 + 0.15 * (s1 - s2) - base) / np.maximum(qd - qb, 1e-9)
        self.rating_qb = qb

    def _route(self, q: np.ndarray, hist: np.ndarray, hist_i: int, local: np.ndarray) -> np.ndarray:
        """One step of the reservoir cascade; `hist[hist_i]` holds the previous step's outflows."""
        hist_len = hist.shape[0]
        new_q = q.copy()
        for j in self.node_order:
            inflow = local[j]
            up = self.node_up[j]
            if up >= 0:
                # The upstream gauge's outflow `lag` steps ago.
                inflow += hist[(hist_i - int(self.node_lag[j]) + 1) % hist_len, up]
            decay = math.exp(-self.step_s / self.node_k_s[j])
            new_q[j] = inflow + (q[j] - inflow) * decay
        return new_q

    def _design_peaks(self) -> np.ndarray:
        """Peak flow per node for the design storm: DESIGN_STORM_MMH on the top catchments, 40%
        of it further down, for DESIGN_STORM_H hours (run through the same cascade)."""
        nn = len(self.node_keys)
        if not nn:
            return np.zeros(0)
        top = np.array([self.node_up[j] < 0 for j in range(nn)])
        rain = np.where(top, DESIGN_STORM_MMH, 0.4 * DESIGN_STORM_MMH)
        base = BASEFLOW_M3S_PER_KM2 * self.node_area
        q = self.node_qbase.copy()
        hist = np.tile(q, (int(self.node_lag.max()) + 1, 1))
        hist_i = 0
        peak = q.copy()
        storm_steps = round(DESIGN_STORM_H * 3600.0 / self.step_s)
        for k in range(storm_steps + int(96 * 3600 / self.step_s)):
            local = base + (RUNOFF_COEFF * rain * self.node_area / 3.6 if k < storm_steps else 0.0)
            q = self._route(q, hist, hist_i, local)
            hist_i = (hist_i + 1) % hist.shape[0]
            hist[hist_i] = q
            peak = np.maximum(peak, q)
        return peak - self.node_qbase

    def _spawn_cells(self, t: float) -> None:
        rng = self.rng
        dt_h = self.step_s / 3600.0
        hour = self.local_hour(t)
        afternoon = _gauss(hour, 16.0, 2.5)
        rate = (CELL_RATE_NIGHT_PER_H + CELL_RATE_AFTERNOON_PER_H * afternoon) * self.scenario.rain_factor
        n = int(rng.poisson(rate * dt_h))
        if n:
            lat0, lat1, lon0, lon1 = self.box
            # Peaks: mostly light to moderate, a tail into BMKG "lebat" and "sangat lebat".
            new = Cells(
                lat=rng.uniform(lat0, lat1, n),
                lon=rng.uniform(lon0, lon1, n),
                radius_km=rng.uniform(2.0, 6.0, n),
                peak=np.minimum(rng.lognormal(math.log(6.0), 0.8, n), 80.0),
                t0=np.full(n, t),
                dur=rng.uniform(1800.0, 7200.0, n),
                vlat=rng.normal(0.0, 3.0, n) / KM_PER_DEG / 3600.0,
                vlon=rng.normal(0.0, 3.0, n) / KM_PER_DEG / 3600.0,
            )
            self.cells = self.cells.extend(new)
        for j, storm in enumerate(self.scenario.storms):
            t0 = storm.at.resolve(self.start, self.fleet.utc_offset_h)
            if j in self._scripted_storms_done or t < t0:
                continue
            self._scripted_storms_done.add(j)
            self.cells = self.cells.extend(self._storm_cells(storm.over, storm, t0))
        self.cells = self.cells.keep(self.cells.t0 + self.cells.dur > t - self.step_s)

    def _storm_cells(self, over: str, storm: object, t0: float) -> Cells:
        from simulators.scenarios import Storm

        assert isinstance(storm, Storm)
        centres: list[tuple[float, float, float]] = []
        if over == "city":
            lat0, lat1, lon0, lon1 = self.box
            centres.append(((lat0 + lat1) / 2, (lon0 + lon1) / 2, storm.radius_km or 8.0))
        else:
            for river in self.fleet.rivers:
                if over not in ("upstream", river.name):
                    continue
                nodes = [j for j, kk in enumerate(self.node_keys) if kk[0] == river.name]
                if not nodes:
                    continue
                top = min(nodes, key=lambda j: self.node_keys[j][1])
                # Centred on the upper catchment (headwater to the first gauge).
                lat = float(self.node_pts_lat[top].mean())
                lon = float(self.node_pts_lon[top].mean())
                span = float(
                    np.hypot(
                        (self.node_pts_lat[top, 0] - self.node_pts_lat[top, 2]) * KM_PER_DEG,
                        (self.node_pts_lon[top, 0] - self.node_pts_lon[top, 2]) * KM_PER_DEG,
                    )
                )
                centres.append((lat, lon, storm.radius_km or max(3.0, 0.5 * span)))
        n = len(centres)
        # Plateau shape: the cell envelope rises over the first quarter, so stretch the duration.
        return Cells(
            lat=np.array([c[0] for c in centres]),
            lon=np.array([c[1] for c in centres]),
            radius_km=np.array([c[2] for c in centres]),
            peak=np.full(n, storm.peak_mmh * 1.6),
            t0=np.full(n, t0),
            dur=np.full(n, storm.duration_h * 3600.0 * 1.25),
            vlat=np.zeros(n),
            vlon=np.zeros(n),
        )

    def _rivers(self, t: float) -> np.ndarray:
        nn = len(self.node_keys)
        if not nn:
            return np.zeros(0)
        mid = t - self.step_s / 2
        rain = self.cells.intensity(mid, self.node_pts_lat.ravel(), self.node_pts_lon.ravel()).reshape(nn, 3)
        local = RUNOFF_COEFF * rain.mean(axis=1) * self.node_area / 3.6 + BASEFLOW_M3S_PER_KM2 * self.node_area
        new_q = self._route(self.q, self.q_hist, self.hist_i, local)
        self.q = new_q
        self.hist_i = (self.hist_i + 1) % self.q_hist.shape[0]
        self.q_hist[self.hist_i] = new_q
        q = self.q[self.node_of]
        level = self.rating_base + self.rating_a * (q**RATING_EXPONENT - self.rating_qb)
        return level + self.rng.normal(0.0, 0.8, len(level))

    # -- one tick ---------------------------------------------------------------------------------

    def step(self, t: float) -> dict[SensorKind, KindValues]:
        """Advance to event time t (the end of a reporting interval) and return every kind's values."""
        self._spawn_cells(t)
        mid = t - self.step_s / 2
        all_rain = self.cells.intensity(mid, self.lat, self.lon)
        rain_city = float(all_rain.mean()) if len(all_rain) else 0.0
        out: dict[SensorKind, KindValues] = {}
        out[SensorKind.TRAFFIC] = KindValues(self.pos[SensorKind.TRAFFIC], self._traffic(t, rain_city))
        out[SensorKind.AIR] = KindValues(self.pos[SensorKind.AIR], self._air(t, all_rain[self.pos[SensorKind.AIR]]))
        out[SensorKind.FLOOD] = KindValues(self.pos[SensorKind.FLOOD], {"water_level_cm": self._rivers(t)})
        rain_mm = all_rain[self.pos[SensorKind.RAIN]] * self.step_s / 3600.0
        # Tipping buckets count in steps of 0.2 mm.
        out[SensorKind.RAIN] = KindValues(self.pos[SensorKind.RAIN], {"rain_mm": np.floor(rain_mm / 0.2) * 0.2})
        for kv in out.values():
            for name, arr in kv.values.items():
                metric = METRICS[name]
                kv.values[name] = np.clip(arr, metric.low, metric.high)
        return out
