"""Prometheus instrumentation and logging set-up shared by pantau's services.

Each service builds its metrics on its own `CollectorRegistry`, so several services (or tests)
can live in one process; `serve_metrics` exposes a registry on a port of its own until the API
serves them.
"""

from __future__ import annotations

import errno
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from pantau.ports import port_in_use

# Latency buckets in seconds, fine around the 200 ms batch delay so p50/p99 can be read off.
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1, 2, 5, 10, 30)
_BATCH_BUCKETS = (1, 10, 50, 100, 250, 500, 1000, 2000, 5000, 10000, 25000, 50000)


@dataclass(frozen=True, slots=True)
class HostCpu:
    """The machine's CPU time so far (`/proc/stat`, all cores), to say how busy a benchmark's host
    was and how much of its time the hypervisor took (steal): on a shared VM a figure taken while
    a neighbour steals a third of the CPU is not the code's."""

    busy: float
    steal: float
    total: float

    @classmethod
    def now(cls) -> HostCpu | None:
        """None where /proc/stat is not there (not Linux)."""
        try:
            fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
        except OSError:
            return None
        # cpu user nice system idle iowait irq softirq steal [guest guest_nice: inside user, nice]
        ticks = [float(x) for x in fields[1:9]]
        idle = ticks[3] + ticks[4]
        return cls(busy=sum(ticks) - idle - ticks[7], steal=ticks[7], total=sum(ticks))

    def since(self, earlier: HostCpu) -> tuple[float, float]:
        """(busy %, steal %) of the machine's CPU time between `earlier` and this."""
        total = self.total - earlier.total
        if total <= 0:
            return 0.0, 0.0
        return 100 * (self.busy - earlier.busy) / total, 100 * (self.steal - earlier.steal) / total

    @classmethod
    def share_since(cls, earlier: HostCpu | None) -> tuple[float, float] | None:
        """(busy %, steal %) from `earlier` (a `now()`) until now; None where either is unknown."""
        now = cls.now()
        return now.since(earlier) if now is not None and earlier is not None else None


@dataclass(frozen=True, slots=True)
class IngestMetrics:
    registry: CollectorRegistry
    messages: Counter
    accepted: Counter
    rejected: Counter
    duplicates: Counter
    batch_rows: Histogram
    commit_seconds: Histogram
    lag_seconds: Histogram
    inflight: Gauge
    connected: Gauge
    write_failures: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry | None = None) -> IngestMetrics:
        reg = registry or CollectorRegistry()
        return cls(
            registry=reg,
            messages=Counter("pantau_ingest_messages", "MQTT messages received", registry=reg),
            accepted=Counter("pantau_ingest_readings_accepted", "Readings committed to the store", registry=reg),
            rejected=Counter(
                "pantau_ingest_rejected", "Messages or records rejected, by reason", ["reason"], registry=reg
            ),
            duplicates=Counter("pantau_ingest_duplicates", "Readings already stored (redeliveries)", registry=reg),
            batch_rows=Histogram(
                "pantau_ingest_batch_rows", "Readings per committed batch", buckets=_BATCH_BUCKETS, registry=reg
            ),
            commit_seconds=Histogram(
                "pantau_ingest_commit_seconds",
                "Time to write and commit one batch",
                buckets=_LATENCY_BUCKETS,
                registry=reg,
            ),
            lag_seconds=Histogram(
                "pantau_ingest_receive_to_commit_seconds",
                "From MQTT receive to commit, per message",
                buckets=_LATENCY_BUCKETS,
                registry=reg,
            ),
            inflight=Gauge(
                "pantau_ingest_inflight_messages", "Messages received but not yet acknowledged", registry=reg
            ),
            connected=Gauge("pantau_ingest_connected", "1 when connected to the peer", ["peer"], registry=reg),
            write_failures=Counter(
                "pantau_ingest_write_failures", "Batch writes that failed and were retried", ["kind"], registry=reg
            ),
        )


def serve_metrics(registry: CollectorRegistry, port: int, *, setting: str, host: str = "127.0.0.1") -> int:
    """Serve `registry` over HTTP on host:port (0 = any free port); returns the port. A port that
    is taken is PortInUse naming `setting`, the key that moves it."""
    try:
        server, _thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise port_in_use(port, host, setting) from None
        raise
    return int(server.server_port)


def setup_logging(level: str = "INFO") -> None:
    """Plain, greppable log lines on stderr."""
    logging.basicConfig(
        level=level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
