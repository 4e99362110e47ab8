"""Prometheus metrics in the text exposition format, with no dependency and one registry per app.

Per endpoint (the route's template, e.g. ``/v1/items/{item_id}``, so ids never become label
values): request counts by method and status, request latency histograms, and the two stages
of a query timed apart, ``encode`` (decode + model, uploads only) and ``search`` (the rest).
"""
from __future__ import annotations

import bisect
import threading
from dataclasses import dataclass, field
from typing import Callable, Iterable

# seconds: from a cached-id search (~0.2 ms) to a slow upload over a congested link
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

Labels = tuple[tuple[str, str], ...]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: Labels, extra: str = "") -> str:
    parts = [f'{k}="{_escape(v)}"' for k, v in labels]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _le(bound: float | None) -> str:
    return 'le="+Inf"' if bound is None else f'le="{bound}"'


def _number(value: float) -> str:
    return repr(float(value)) if value != int(value) or abs(value) >= 1e15 else str(int(value))


@dataclass
class _Series:
    counts: list[int]
    total: float = 0.0
    n: int = 0


@dataclass
class Histogram:
    name: str
    help: str
    buckets: tuple[float, ...] = BUCKETS
    series: dict[Labels, _Series] = field(default_factory=dict)

    def observe(self, labels: Labels, seconds: float) -> None:
        s = self.series.get(labels)
        if s is None:
            s = self.series[labels] = _Series([0] * len(self.buckets))
        i = bisect.bisect_left(self.buckets, seconds)
        if i < len(self.buckets):
            s.counts[i] += 1
        s.total += seconds
        s.n += 1

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} histogram"
        for labels, s in sorted(self.series.items()):
            running = 0
            for bound, count in zip(self.buckets, s.counts):
                running += count
                yield f"{self.name}_bucket{_labels(labels, _le(bound))} {running}"
            yield f"{self.name}_bucket{_labels(labels, _le(None))} {s.n}"
            yield f"{self.name}_sum{_labels(labels)} {repr(s.total)}"
            yield f"{self.name}_count{_labels(labels)} {s.n}"


@dataclass
class Counter:
    name: str
    help: str
    values: dict[Labels, float] = field(default_factory=dict)

    def inc(self, labels: Labels, amount: float = 1.0) -> None:
        self.values[labels] = self.values.get(labels, 0.0) + amount

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} counter"
        for labels, value in sorted(self.values.items()):
            yield f"{self.name}{_labels(labels)} {_number(value)}"


class Metrics:
    """The server's metrics; thread-safe (observed from worker threads and the event loop)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests = Counter("fashsdk_http_requests_total", "HTTP requests by endpoint, method and status.")
        self.latency = Histogram("fashsdk_http_request_duration_seconds",
                                 "Time from the request's arrival to its response, by endpoint.")
        self.stages = Histogram("fashsdk_stage_duration_seconds",
                                "Time in each stage of a query by endpoint: encode (decode + model) and search.")
        self.in_flight = 0
        self.gauges: dict[str, tuple[str, Callable[[], float]]] = {}

    def gauge(self, name: str, help: str, read: Callable[[], float]) -> None:
        """A value read when /metrics is scraped (catalog size, readiness)."""
        self.gauges[name] = (help, read)

    def started(self) -> None:
        with self._lock:
            self.in_flight += 1

    def finished(self, endpoint: str, method: str, status: int, seconds: float) -> None:
        with self._lock:
            self.in_flight -= 1
            self.requests.inc((("endpoint", endpoint), ("method", method), ("status", str(status))))
            self.latency.observe((("endpoint", endpoint),), seconds)

    def stage(self, endpoint: str, stage: str, seconds: float) -> None:
        with self._lock:
            self.stages.observe((("endpoint", endpoint), ("stage", stage)), seconds)

    def render(self) -> str:
        lines: list[str] = []
        with self._lock:
            for metric in (self.requests, self.latency, self.stages):
                lines.extend(metric.render())
            lines += ["# HELP fashsdk_http_requests_in_flight Requests being answered now.",
                      "# TYPE fashsdk_http_requests_in_flight gauge",
                      f"fashsdk_http_requests_in_flight {self.in_flight}"]
        for name, (help, read) in sorted(self.gauges.items()):
            try:
                value = float(read())
            except Exception:  # a gauge that cannot be read is left out, not a failed scrape
                continue
            lines += [f"# HELP {name} {help}", f"# TYPE {name} gauge", f"{name} {_number(value)}"]
        return "\n".join(lines) + "\n"
