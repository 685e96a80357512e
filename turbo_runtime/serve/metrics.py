"""Prometheus metrics of one server, in a registry of its own (two apps in one process do not collide)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest
from prometheus_client.metrics_core import Metric

STAGES = ("queue", "text_encoder", "vae_encoder", "unet", "vae_decoder", "total")
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class Metrics:
    """`labels` go on every sample (a replica's name: each replica of a cluster counts on its own); `appended`
    functions return exposition text added after ours (the cluster's own metrics)."""

    def __init__(self, labels: dict[str, str] | None = None):
        self.labels = dict(labels or {})
        self.appended: list[Callable[[], bytes]] = []
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "turbo_requests", "HTTP requests and WebSocket frames, by route and status", ["route", "status"], registry=r
        )
        self.queue_depth = Gauge("turbo_queue_depth", "Requests waiting for the worker", registry=r)
        self.stage_seconds = Histogram(
            "turbo_stage_seconds", "Seconds per request and stage", ["stage"], buckets=_BUCKETS, registry=r
        )
        self.images = Counter("turbo_images_generated", "Images generated", registry=r)
        self.skipped = Counter(
            "turbo_requests_skipped",
            "Queued requests dropped before they started: client gone, timed out, or superseded (realtime)",
            ["reason"],
            registry=r,
        )
        self.ready = Gauge("turbo_ready", "1 once the pipeline is compiled and serving", registry=r)
        ProcessCollector(registry=r)  # resident memory, CPU seconds, open file descriptors

    def observe(self, timings: dict[str, float], images: int) -> None:
        for stage, seconds in timings.items():
            if stage in STAGES:
                self.stage_seconds.labels(stage).observe(seconds)
        self.images.inc(images)

    def render(self) -> bytes:
        ours = generate_latest(_Labelled(self.registry, self.labels) if self.labels else self.registry)
        return b"".join([ours, *(text() for text in self.appended)])


class _Labelled:
    """A registry's metrics with constant labels added to every sample."""

    def __init__(self, registry: CollectorRegistry, labels: dict[str, str]):
        self.registry, self.labels = registry, labels

    def collect(self) -> Iterator[Metric]:
        for metric in self.registry.collect():
            metric.samples = [s._replace(labels={**self.labels, **s.labels}) for s in metric.samples]
            yield metric
