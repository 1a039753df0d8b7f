"""Prometheus metrics and a health endpoint for workers (and the small HTTP server the bot reuses).

What an operator needs to answer "is it healthy, is it keeping up, where does time go":
* queue depth and jobs in flight (keeping up?), dead letters (giving up?), retries (workers dying?);
* job latency, time to first token and queue wait histograms, tokens/s (where does time go?);
* errors by job kind and error code.

Each `WorkerMetrics` has its own `CollectorRegistry`, so several workers in one process (tests, the
embedded worker next to the bot) never collide.  Values that live in Redis (queue depth, the dead-letter
backlog) are read when Prometheus scrapes, not polled.  The worker calls this module at a handful of
points only (accept, every emitted event via `MeteredContext`, dead letter); the `done` event already
carries the timings and token counts, so nothing is timed twice.  What the metrics read of a worker at
scrape time (jobs in flight, shutting down) they get as callables from `watch`, so this module does not
know the worker (models/worker.py imports it, not the other way round).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from .context import JobContext
from .logs import log_context
from .protocol import Bus, Job

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30)
TPS_BUCKETS = (1, 2, 5, 10, 20, 40, 80, 160, 320, 640)
HEALTH_TIMEOUT = 1.0  # a Redis that does not answer PING within this is "down" for /healthz


class WorkerMetrics:
    """The worker's instruments.  Methods are cheap and never raise into the job path."""

    def __init__(self, worker_id: str = "", registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.worker_id = worker_id
        self.engine_loaded = False
        self.bus: Bus | None = None
        self._in_flight: Callable[[], int] = lambda: 0
        self._stopping: Callable[[], bool] = lambda: False
        r = self.registry
        self.jobs_started = Counter("ilm_worker_jobs_started", "Jobs (attempts) a worker started", ["kind"], registry=r)
        self.jobs_finished = Counter(
            "ilm_worker_jobs_finished",
            "Jobs finished, by outcome (done, stopped, error)",
            ["kind", "outcome"],
            registry=r,
        )
        self.errors = Counter(
            "ilm_worker_errors", "Error events sent to users, by job kind and error code", ["kind", "code"], registry=r
        )
        self.retries = Counter(
            "ilm_worker_retries", "Jobs taken over after a worker died or handed them back", ["kind"], registry=r
        )
        self.dead_letters = Counter(
            "ilm_worker_dead_letters", "Jobs this worker dead-lettered, by reason", ["reason"], registry=r
        )
        self.redis_errors = Counter(
            "ilm_worker_redis_errors", "Failed Redis calls in the claim loop (reconnects)", registry=r
        )
        self.job_seconds = Histogram(
            "ilm_worker_job_seconds",
            "Run time of a job attempt, start to final event",
            ["kind"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft_seconds = Histogram(
            "ilm_worker_ttft_seconds",
            "Time from job start to the first token",
            ["kind"],
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.queue_seconds = Histogram(
            "ilm_worker_queue_wait_seconds",
            "Time a job waited before a worker ran it",
            ["kind"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens_per_s = Histogram(
            "ilm_worker_tokens_per_second",
            "Generation speed of finished jobs",
            ["kind"],
            buckets=TPS_BUCKETS,
            registry=r,
        )
        self.completion_tokens = Counter(
            "ilm_worker_completion_tokens", "Tokens generated (rate() = tokens/s)", ["kind"], registry=r
        )
        self.prompt_tokens = Counter("ilm_worker_prompt_tokens", "Prompt tokens processed", ["kind"], registry=r)
        self.in_flight = Gauge("ilm_worker_jobs_in_flight", "Jobs this worker is running now", registry=r)
        self.concurrency = Gauge("ilm_worker_concurrency", "Jobs this worker may run at once", registry=r)
        self.up = Gauge("ilm_worker_engine_loaded", "1 when the engine is loaded and the worker serves", registry=r)
        self.queue_depth = Gauge(
            "ilm_queue_depth", "Jobs waiting for any worker (read from Redis at scrape)", registry=r
        )
        self.dead_backlog = Gauge(
            "ilm_dead_letter_backlog", "Entries in the dead-letter stream (all workers)", registry=r
        )
        self.in_flight.set_function(lambda: self._in_flight())
        self.up.set_function(lambda: 1.0 if self.engine_loaded else 0.0)

    def watch(self, *, bus: Bus, concurrency: int, in_flight: Callable[[], int], stopping: Callable[[], bool]) -> None:
        """What to read at scrape time: the worker's bus, and callables for its jobs in flight and whether it
        is shutting down."""
        self.bus = bus
        self.concurrency.set(concurrency)
        self._in_flight = in_flight
        self._stopping = stopping

    # ---------------------------------------------------------------- hooks called by the worker
    def accepted(self, job: Job, attempt: int) -> None:
        with log_context(job=job.id, attempt=attempt, kind=job.kind, conversation=job.conversation or None):
            log.debug("job accepted")
        self.jobs_started.labels(job.kind).inc()
        if attempt > 1:
            self.retries.labels(job.kind).inc()

    def dead_lettered(self, reason: str) -> None:
        self.dead_letters.labels(reason).inc()

    def redis_error(self) -> None:
        self.redis_errors.inc()

    def event(self, job: Job, type_: str, data: dict[str, Any] | None) -> None:
        """Called for every event a job emits; only final events carry numbers worth recording."""
        if type_ == "done":
            data = data or {}
            outcome = "stopped" if data.get("stopped") else "done"
            self.jobs_finished.labels(job.kind, outcome).inc()
            timings = data.get("timings") or {}
            usage = data.get("usage") or {}
            log.info(
                "job %s: %s ms total, %s ms to first token, %s tokens",
                outcome,
                timings.get("total_ms"),
                timings.get("ttft_ms"),
                usage.get("completion_tokens"),
            )
            with contextlib.suppress(TypeError, ValueError):
                self.job_seconds.labels(job.kind).observe(float(timings.get("total_ms", 0)) / 1000)
                self.queue_seconds.labels(job.kind).observe(float(timings.get("queue_ms", 0)) / 1000)
                completion = int(usage.get("completion_tokens") or 0)
                if completion:
                    self.ttft_seconds.labels(job.kind).observe(float(timings.get("ttft_ms", 0)) / 1000)
                    self.completion_tokens.labels(job.kind).inc(completion)
                    tps = float(timings.get("tokens_per_s") or 0)
                    if tps > 0:
                        self.tokens_per_s.labels(job.kind).observe(tps)
                self.prompt_tokens.labels(job.kind).inc(int(usage.get("prompt_tokens") or 0))
        elif type_ == "error":
            code = str((data or {}).get("code") or "error")[:40]
            self.jobs_finished.labels(job.kind, "error").inc()
            self.errors.labels(job.kind, code).inc()
            log.info("job error: %s", code)

    # ---------------------------------------------------------------- scrape time
    async def refresh(self) -> None:
        """Read the shared numbers (queue depth, dead-letter backlog) from Redis."""
        bus = self.bus
        if bus is None:
            return
        with contextlib.suppress(Exception):
            self.queue_depth.set(await asyncio.wait_for(bus.queue_depth(), HEALTH_TIMEOUT))
            self.dead_backlog.set(await asyncio.wait_for(bus.dead_letter_count(), HEALTH_TIMEOUT))

    async def health(self) -> tuple[bool, dict[str, Any]]:
        """Healthy = engine loaded, not shutting down, and Redis answers PING within a second."""
        redis_ok = False
        if self.bus is not None:
            try:
                redis_ok = bool(await asyncio.wait_for(self.bus.redis.ping(), HEALTH_TIMEOUT))
            except Exception:
                redis_ok = False
        stopping = bool(self._stopping())
        body = {
            "engine_loaded": self.engine_loaded,
            "redis": redis_ok,
            "stopping": stopping,
            "worker": self.worker_id,
            "in_flight": self._in_flight(),
        }
        return self.engine_loaded and redis_ok and not stopping, body


@dataclass
class MeteredContext(JobContext):
    """A `JobContext` that reports each event it emits to the worker's metrics before sending it."""

    metrics: WorkerMetrics | None = None

    async def emit(self, type_: str, data: dict[str, Any] | None = None) -> None:
        if self.metrics is not None:
            try:
                self.metrics.event(self.job, type_, data)
            except Exception:  # metrics must never break a reply
                log.debug("metrics hook failed", exc_info=True)
        await super().emit(type_, data)


class MetricsServer:
    """`/metrics` (Prometheus text format) and `/healthz` on one port, served from the event loop."""

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        refresh: Callable[[], Awaitable[None]] | None = None,
        health: Callable[[], Awaitable[tuple[bool, dict[str, Any]]]] | None = None,
    ) -> None:
        self.registry = registry
        self.refresh = refresh
        self.health = health
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def _metrics(self, _request: web.Request) -> web.Response:
        if self.refresh is not None:
            with contextlib.suppress(Exception):
                await self.refresh()
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, _request: web.Request) -> web.Response:
        if self.health is None:
            return web.json_response({"ok": True})
        ok, body = await self.health()
        body["ok"] = ok
        return web.json_response(body, status=200 if ok else 503)

    async def start(self, host: str, port: int) -> int:
        """Listen on host:port; returns the port (useful when 0 asked the OS for a free one)."""
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else port
        log.info("metrics on http://%s:%d/metrics", host, self.port)
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


async def start_worker_metrics(metrics: WorkerMetrics, host: str, port: int) -> MetricsServer | None:
    """The worker's server, or None when the port setting is 0 (off) or the port is taken."""
    if not port:
        return None
    server = MetricsServer(metrics.registry, refresh=metrics.refresh, health=metrics.health)
    try:
        await server.start(host, port)
    except OSError as exc:  # a taken port must not stop the worker from serving jobs
        log.error("cannot serve metrics on %s:%d (%s); continuing without", host, port, exc)
        return None
    return server
