"""``GET /metrics``: the daemon in Prometheus' text format, through prometheus_client.

Two kinds of numbers.  Calls are counted as they finish (an observer of
wrennd.rpc.dispatch): RPC calls, errors and latency by method, and lifecycle
durations by operation and stage (the stages a call's progress reports name,
plus ``total``).  State is read when scraped, from what the daemon already
holds in memory: sandboxes by state, the running UFFD engines' fault latency
buckets and pages, event-loop lag.  Template and image counts and disk use
need the disk: they are gathered in a thread at most every ``CATALOG_MAX_AGE``
seconds, before a scrape renders, so a scrape never blocks the loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from wrennd.metrics import LoopLag
from wrennd.rpc.observe import CallRecord
from wrennd.rpc.server import RpcServer
from wrennd.sandbox import SandboxService
from wrennd.sandbox.usage import allocated

CATALOG_MAX_AGE = 15.0
LAG_WINDOW_S = 60.0
# RPC calls run from well under a millisecond (queries) to minutes (a template of a big VM).
RPC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
STAGE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


@dataclass(frozen=True)
class CatalogFacts:
    images: int = 0
    image_bytes: int = 0
    templates: int = 0
    template_bytes: int = 0


class ConsoleMetrics:
    def __init__(
        self, server: RpcServer, service: SandboxService, lag: LoopLag, templates_dir: Path
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.calls = Counter(
            "wrennd_rpc_calls", "RPC calls answered, by method", ["method"], registry=self.registry
        )
        self.errors = Counter(
            "wrennd_rpc_errors",
            "RPC calls answered with an error, by method and error code",
            ["method", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "wrennd_rpc_duration_seconds",
            "RPC call latency, by method",
            ["method"],
            buckets=RPC_BUCKETS,
            registry=self.registry,
        )
        self.lifecycle = Histogram(
            "wrennd_lifecycle_duration_seconds",
            "Lifecycle operations that succeeded: each stage's duration, and the total",
            ["operation", "stage"],
            buckets=STAGE_BUCKETS,
            registry=self.registry,
        )
        self.state = _StateCollector(service, lag)
        self.registry.register(self.state)
        self.service = service
        self.templates_dir = templates_dir
        self._refreshed = float("-inf")
        self._refreshing: asyncio.Future[None] | None = None
        server.observers.append(self.observe)

    def observe(self, record: CallRecord) -> None:
        self.calls.labels(record.method).inc()
        if record.error_code is not None:
            self.errors.labels(record.method, str(record.error_code)).inc()
            return
        self.latency.labels(record.method).observe(record.seconds)
        if record.lifecycle:
            for stage, seconds in record.stages:
                self.lifecycle.labels(record.method, stage).observe(seconds)
            self.lifecycle.labels(record.method, "total").observe(record.seconds)

    async def refresh_catalogs(self) -> None:
        """Count images and templates and their disk use (in threads); one refresh at a time."""
        if self._refreshing is None:
            self._refreshing = asyncio.ensure_future(self._refresh())
        try:
            await asyncio.shield(self._refreshing)
        finally:
            if self._refreshing.done():
                self._refreshing = None

    async def _refresh(self) -> None:
        images = await self.service.images.all()
        templates = await self.service.templates.all()
        used = await asyncio.to_thread(allocated, self.templates_dir)
        self.state.catalogs = CatalogFacts(
            images=len(images),
            image_bytes=sum(i.allocated_bytes for i in images),
            templates=len(templates),
            template_bytes=used,
        )
        self._refreshed = time.monotonic()

    async def render(self) -> bytes:
        if time.monotonic() - self._refreshed > CATALOG_MAX_AGE:
            await self.refresh_catalogs()
        # In the loop: what it reads changes only on the loop, and costs microseconds.
        return generate_latest(self.registry)


class _StateCollector(Collector):
    """What the daemon holds now, read at scrape time."""

    def __init__(self, service: SandboxService, lag: LoopLag) -> None:
        self.service = service
        self.lag = lag
        self.catalogs = CatalogFacts()

    def describe(self) -> Iterator[Metric]:
        return iter(())  # families are made at collect time; nothing to check up front

    def collect(self) -> Iterator[Metric]:
        sandboxes = GaugeMetricFamily("wrennd_sandboxes", "Sandboxes by state", labels=["state"])
        for state, n in self.service.registry.counts_by_state().items():
            sandboxes.add_metric([state], n)
        yield sandboxes
        yield from self._engines()
        yield from self._lag()
        yield from self._catalogs()

    def _engines(self) -> Iterator[Metric]:
        hist: list[int] = []
        total_ns = faults = 0
        pages = {"copied": 0, "zeroed": 0, "prefetched": 0}
        for sb in self.service.registry:
            engine = sb.live.uffd if sb.live is not None else None
            stats = engine.stats() if engine is not None else None
            if stats is None:
                continue
            hist = (
                [a + b for a, b in zip(hist, stats.lat_hist, strict=True)]
                if hist
                else list(stats.lat_hist)
            )
            total_ns += stats.lat_sum_ns
            faults += stats.faults
            pages["copied"] += stats.copy_pages
            pages["zeroed"] += stats.zero_pages
            pages["prefetched"] += stats.prefetch_pages
        latency = HistogramMetricFamily(
            "wrennd_uffd_fault_latency_seconds",
            "Page fault service latency of the running sandboxes' UFFD engines "
            "(the engines' log2 buckets; an engine's counts go when its sandbox pauses)",
        )
        buckets, seen = [], 0
        for i, n in enumerate(hist):
            seen += n
            buckets.append((repr(2 ** (i + 1) / 1e9), seen))
        buckets.append(("+Inf", seen))
        latency.add_metric([], buckets, total_ns / 1e9)
        yield latency
        family = GaugeMetricFamily(
            "wrennd_uffd_pages",
            "Pages the running sandboxes' UFFD engines installed, by class",
            labels=["class"],
        )
        for cls, n in pages.items():
            family.add_metric([cls], n)
        yield family
        yield GaugeMetricFamily(
            "wrennd_uffd_faults", "Faults the running engines served", value=faults
        )

    def _lag(self) -> Iterator[Metric]:
        p = self.lag.percentiles(LAG_WINDOW_S)
        family = GaugeMetricFamily(
            "wrennd_event_loop_lag_seconds",
            f"How late the event loop wakes a sleeper, over the last {LAG_WINDOW_S:g} s",
            labels=["quantile"],
        )
        for key, q in (("p50_ms", "0.5"), ("p90_ms", "0.9"), ("p99_ms", "0.99"), ("max_ms", "1")):
            if key in p:
                family.add_metric([q], p[key] / 1e3)
        yield family

    def _catalogs(self) -> Iterator[Metric]:
        c = self.catalogs
        yield GaugeMetricFamily("wrennd_images", "Registered images", value=c.images)
        yield GaugeMetricFamily(
            "wrennd_image_disk_bytes", "Allocated bytes of the images", value=c.image_bytes
        )
        yield GaugeMetricFamily("wrennd_templates", "Templates", value=c.templates)
        yield GaugeMetricFamily(
            "wrennd_template_disk_bytes",
            "Allocated bytes under the templates directory",
            value=c.template_bytes,
        )
