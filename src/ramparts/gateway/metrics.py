"""Prometheus metrics of one gateway, in its own registry (several gateways can live in one process)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    """Requests by route/status/decision, rows, latency, PRADA alarms, blocked keys and log rows written."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, blocked_keys: Callable[[], float]) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "ramparts_gateway_requests",
            "Requests answered, by route, HTTP status and decision.",
            ("route", "status", "decision"),
            registry=self.registry,
        )
        self.rows = Counter(
            "ramparts_gateway_rows",
            "Input rows the model answered, by route.",
            ("route",),
            registry=self.registry,
        )
        self.latency = Histogram(
            "ramparts_gateway_request_seconds",
            "Time from the request's arrival to its commit, by route.",
            ("route",),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.alarms = Counter(
            "ramparts_gateway_prada_alarms", "Requests that raised a PRADA alarm.", registry=self.registry
        )
        self.log_rows = Counter(
            "ramparts_gateway_log_rows", "Rows written to the request log.", registry=self.registry
        )
        self.blocked = Gauge(
            "ramparts_gateway_blocked_keys", "Keys currently blocked.", registry=self.registry
        )
        self.blocked.set_function(blocked_keys)

    def request(
        self, route: str, status: int, decision: str | None, rows: int, seconds: float | None
    ) -> None:
        self.requests.labels(route, str(status), decision or "none").inc()
        self.log_rows.inc()
        if rows:
            self.rows.labels(route).inc(rows)
        if seconds is not None:
            self.latency.labels(route).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


__all__ = ["Metrics"]
