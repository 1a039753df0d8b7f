"""Prometheus metrics of the Discord bot: messages, replies, reply latency, Discord 429s, gateway health.

Served on `BOT_METRICS_PORT` (0 = off) with `/healthz` (gateway connected and Redis reachable), by the
same small server as the workers' (`models.metrics.MetricsServer`).  Names start with `ilm_bot_`.

Discord 429s: discord.py handles rate limits itself (it waits and retries), and says so in a WARNING on
`discord.http` / `discord.webhook.async_` for every 429 it receives.  Counting those records is robust to
*when* the counter is installed (after login, from a cog) and covers interaction follow-ups (webhooks)
too; an aiohttp trace would need to be in place before the HTTP session exists.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from models.metrics import HEALTH_TIMEOUT, LATENCY_BUCKETS, MetricsServer

if TYPE_CHECKING:
    from handlers.types import Reply
    from models.protocol import Bus

log = logging.getLogger(__name__)

REPLY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320)
RATE_LIMIT_LOGGERS = ("discord.http", "discord.webhook.async_")


class RateLimitCounter(logging.Handler):
    """Counts discord.py's "being rate limited" records (one per 429 received)."""

    def __init__(self, counter: Counter) -> None:
        super().__init__(level=logging.WARNING)
        self.counter = counter

    def emit(self, record: logging.LogRecord) -> None:
        msg = str(record.msg)
        if record.name == "discord.http":
            if msg.startswith("We are being rate limited.") and "responded with 429" in msg:
                self.counter.labels("rest").inc()
            elif msg.startswith("Global rate limit has been hit"):
                self.counter.labels("global").inc()
        elif "is rate limited" in msg and "Webhook" in msg:
            self.counter.labels("webhook").inc()


class BotMetrics:
    """The bot's instruments; `watch` says what to read at scrape time, `install` wires the 429 counter,
    `start_server` serves them.  What they read of the bot (gateway latency, guilds, ready) comes as
    callables, so this module does not know the client."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.bus: Bus | None = None
        self._latency: Callable[[], float] = lambda: float("nan")
        self._guilds: Callable[[], int] = lambda: 0
        self._ready: Callable[[], bool] = lambda: False
        r = self.registry
        self.messages = Counter(
            "ilm_bot_messages", "Messages from people the bot received over the gateway", ["where"], registry=r
        )
        self.requests = Counter(
            "ilm_bot_requests", "Requests whose answer the bot started streaming", ["kind"], registry=r
        )
        self.replies = Counter(
            "ilm_bot_replies",
            "Replies finished in Discord, by outcome (done, stopped, error)",
            ["kind", "outcome"],
            registry=r,
        )
        self.reply_seconds = Histogram(
            "ilm_bot_reply_seconds",
            "Request submitted → final reply edit written to Discord",
            ["kind"],
            buckets=REPLY_BUCKETS,
            registry=r,
        )
        self.discord_writes = Counter(
            "ilm_bot_discord_writes", "Message sends/edits/deletes made for replies", registry=r
        )
        self.rate_limits = Counter(
            "ilm_bot_discord_429",
            "429 answers from Discord, by source (rest, webhook, global); discord.py waits and retries them",
            ["source"],
            registry=r,
        )
        self.resumed = Counter(
            "ilm_bot_resumed_replies", "Replies picked up after a bot restart, by outcome", ["outcome"], registry=r
        )
        self.latency = Gauge(
            "ilm_bot_gateway_latency_seconds", "Heartbeat latency of the gateway connection", registry=r
        )
        self.guilds = Gauge("ilm_bot_guilds", "Guilds the bot is in", registry=r)
        self.queue_depth = Gauge(
            "ilm_queue_depth", "Jobs waiting for any worker (read from Redis at scrape)", registry=r
        )
        self.workers = Gauge(
            "ilm_workers_alive", "Workers with a recent heartbeat (read from Redis at scrape)", registry=r
        )
        self.active = Gauge(
            "ilm_bot_active_reply_conversations",
            "Conversations with a reply being streamed (resume index, at scrape)",
            registry=r,
        )
        self.latency.set_function(self._gateway_latency)
        self.guilds.set_function(lambda: self._guilds())
        self._handler: RateLimitCounter | None = None
        self._server: MetricsServer | None = None

    def _gateway_latency(self) -> float:
        value = self._latency()
        return value if isinstance(value, float) and value == value and value != float("inf") else 0.0

    # ---------------------------------------------------------------- wiring
    def watch(
        self, *, bus: Bus, latency: Callable[[], float], guilds: Callable[[], int], ready: Callable[[], bool]
    ) -> None:
        """What to read at scrape time: the bus (queue, workers, active replies, Redis health), the gateway
        latency, the number of guilds, and whether the bot is logged in and not closed."""
        self.bus = bus
        self._latency, self._guilds, self._ready = latency, guilds, ready

    def install(self) -> None:
        """Start counting 429s (idempotent)."""
        if self._handler is not None:
            return
        self._handler = RateLimitCounter(self.rate_limits)
        for name in RATE_LIMIT_LOGGERS:
            logger = logging.getLogger(name)
            logger.addHandler(self._handler)
            if logger.getEffectiveLevel() > logging.WARNING:  # LOG_LEVEL=ERROR must not hide 429s from us
                logger.setLevel(logging.WARNING)

    def uninstall(self) -> None:
        if self._handler is not None:
            for name in RATE_LIMIT_LOGGERS:
                logging.getLogger(name).removeHandler(self._handler)
            self._handler = None

    async def start_server(self, host: str, port: int) -> int | None:
        """Serve /metrics and /healthz; None when the port setting is 0 or the port is taken."""
        if not port:
            return None
        self._server = MetricsServer(self.registry, refresh=self.refresh, health=self.health)
        try:
            return await self._server.start(host, port)
        except OSError as exc:
            log.error("cannot serve bot metrics on %s:%d (%s); continuing without", host, port, exc)
            self._server = None
            return None

    async def stop_server(self) -> None:
        if self._server is not None:
            await self._server.stop()
            self._server = None

    # ---------------------------------------------------------------- observations
    def message(self, dm: bool) -> None:
        self.messages.labels("dm" if dm else "guild").inc()

    def reply_started(self, reply: Reply) -> None:
        self.requests.labels(reply.request.kind).inc()

    def reply_finished(self, reply: Reply, result: Any, synced_at: float | None = None) -> None:
        """After `ReplyStreamer.run`: the outcome, and the latency from the submit to the final write
        (`synced_at`, monotonic, like `reply.submitted`)."""
        kind = reply.request.kind
        final = getattr(result, "final", None)
        if final is None or final.kind == "error":
            outcome = "error"
        else:
            outcome = "stopped" if final.data.get("stopped") else "done"
        self.replies.labels(kind, outcome).inc()
        self.discord_writes.inc(int(getattr(result, "writes", 0) or 0))
        synced = synced_at if synced_at is not None else getattr(result, "synced_at", None)
        if synced is not None:
            self.reply_seconds.labels(kind).observe(max(0.0, synced - reply.submitted))

    # ---------------------------------------------------------------- scrape time
    async def refresh(self) -> None:
        bus = self.bus
        if bus is None:
            return
        with contextlib.suppress(Exception):
            self.queue_depth.set(await asyncio.wait_for(bus.queue_depth(), HEALTH_TIMEOUT))
            self.workers.set(len(await asyncio.wait_for(bus.alive_workers(), HEALTH_TIMEOUT)))
            self.active.set(await asyncio.wait_for(bus.active_reply_count(), HEALTH_TIMEOUT))

    async def health(self) -> tuple[bool, dict[str, Any]]:
        """Healthy = logged in to the gateway (ready, not closed) and Redis answers PING."""
        ready = bool(self._ready())
        redis_ok = False
        bus = self.bus
        if bus is not None:
            try:
                redis_ok = bool(await asyncio.wait_for(bus.redis.ping(), HEALTH_TIMEOUT))
            except Exception:
                redis_ok = False
        return ready and redis_ok, {"discord": ready, "redis": redis_ok, "guilds": self._guilds()}


__all__ = ["LATENCY_BUCKETS", "BotMetrics", "RateLimitCounter"]
