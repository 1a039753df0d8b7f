"""`python -m bot status`: what an admin at a terminal (or `/stats` in Discord) wants to know at a glance.

Workers alive (engine, jobs in flight / concurrency, the chat models each serves), the routed models (who
serves each, what waits for it), jobs waiting, jobs running, dead letters, replies
being streamed, and Redis memory — read from the same Redis the bot and workers use, through `Bus`.
It never starts anything: with `REDIS_URL` empty it looks for the embedded Redis of a running bot and
says so when there is none.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import redis.asyncio as aioredis

from models import routing
from models.protocol import Bus
from models.redis_server import EmbeddedRedis
from models.sandbox import SandboxLimits, describe_isolation
from models.settings import Settings

STALE_AFTER = 15.0  # seconds without a heartbeat before a worker no longer counts as alive


@dataclass
class Status:
    """A snapshot of the deployment (JSON-serializable)."""

    redis_url: str
    workers: list[dict[str, Any]] = field(default_factory=list)
    # The routed chat models (CHAT_MODELS, two or more): name, workers serving it, jobs waiting for it.
    models: list[dict[str, Any]] = field(default_factory=list)
    queue_depth: int = 0
    running: int = 0  # delivered to a worker, not yet acknowledged
    dead_letters: int = 0
    recent_dead: list[dict[str, str]] = field(default_factory=list)
    active_replies: int = 0
    redis_version: str = ""
    redis_memory: str = ""
    redis_memory_peak: str = ""
    redis_maxmemory: str = ""
    redis_clients: int = 0
    redis_aof: bool = False
    sandbox: str = ""  # the Python sandbox's isolation on the host running `status` (empty in /stats)

    @property
    def capacity(self) -> int:
        return sum(int(w.get("concurrency") or 0) for w in self.workers)

    def to_json(self) -> str:
        data = asdict(self)
        data["capacity"] = self.capacity
        return json.dumps(data, indent=2, ensure_ascii=False)


def _redact_url(url: str) -> str:
    """A Redis URL without its password (status output gets pasted into chats and issues)."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user + ':' if user else ''}***@{host}"
    return url


async def collect(bus: Bus, redis_url: str = "") -> Status:
    """Read everything from Redis.  Raises the client's error if Redis cannot be reached."""
    redis = bus.redis
    status = Status(redis_url=_redact_url(redis_url))
    now = time.time()
    for info in await bus.alive_workers(within=STALE_AFTER):
        status.workers.append(
            {
                "id": info.worker_id,
                "host": info.host,
                "engine": info.engine,
                "in_flight": info.in_flight,
                "concurrency": info.concurrency,
                "vision": info.vision,
                "seen_s_ago": round(max(0.0, now - info.last_seen), 1),
                "models": list(info.models),
            }
        )
    for model in bus.models:
        status.models.append(
            {
                "name": model,
                "workers": sum(model in w["models"] for w in status.workers),
                "waiting": await bus.queue_depth(model),
            }
        )
    status.queue_depth = await bus.queue_depth()
    status.running = await bus.running_count()
    status.dead_letters = await bus.dead_letter_count()
    for entry in await bus.dead_letters(count=3):
        status.recent_dead.append(
            {"id": entry.get("id", ""), "kind": entry.get("kind", ""), "reason": entry.get("reason", "")[:120]}
        )
    status.active_replies = await bus.active_reply_count()
    memory = await redis.info("memory")
    server = await redis.info("server")
    persistence = await redis.info("persistence")
    clients = await redis.info("clients")
    status.redis_version = str(server.get("redis_version", ""))
    status.redis_memory = str(memory.get("used_memory_human", ""))
    status.redis_memory_peak = str(memory.get("used_memory_peak_human", ""))
    status.redis_maxmemory = str(memory.get("maxmemory_human", "0B"))
    status.redis_clients = int(clients.get("connected_clients", 0))
    status.redis_aof = bool(int(persistence.get("aof_enabled", 0)))
    return status


def render(status: Status) -> str:
    """The human-readable report (also what `/stats` shows, inside a code block)."""
    lines = [
        f"Redis {status.redis_version} at {status.redis_url}: {status.redis_memory} used "
        f"(peak {status.redis_memory_peak}, max {status.redis_maxmemory or 'none'}), "
        f"{status.redis_clients} clients, AOF {'on' if status.redis_aof else 'off'}"
    ]
    if status.workers:
        busy = sum(int(w["in_flight"]) for w in status.workers)
        lines.append(f"Workers alive: {len(status.workers)} ({busy}/{status.capacity} slots busy)")
        for w in status.workers:
            lines.append(
                f"  {w['id']}  {w['engine']}  {w['in_flight']}/{w['concurrency']} in flight"
                f"{'  vision' if w['vision'] else ''}  seen {w['seen_s_ago']}s ago"
                f"{'  models ' + ','.join(w['models']) if w.get('models') else ''}"
            )
    else:
        lines.append("Workers alive: 0 — no worker is running; requests wait in the queue")
    if status.models:
        lines.append(
            "Models: "
            + ", ".join(
                f"{m['name']} ({m['workers']} worker{'s' if m['workers'] != 1 else ''}, {m['waiting']} waiting)"
                if m["workers"]
                else f"{m['name']} (NOT SERVED: no live worker; {m['waiting']} waiting)"
                for m in status.models
            )
        )
    lines.append(f"Queue: {status.queue_depth} waiting, {status.running} running")
    lines.append(f"Replies streaming to Discord: {status.active_replies}")
    lines.append(f"Dead letters: {status.dead_letters}")
    for entry in status.recent_dead:
        lines.append(f"  {entry['kind'] or '?'} {entry['id'] or '?'}: {entry['reason']}")
    if status.sandbox:
        lines.append(f"Python sandbox (this host): {status.sandbox}")
    return "\n".join(lines)


def resolve_url(settings: Settings) -> str | None:
    """`REDIS_URL`, or the embedded Redis of a running bot; None when there is nothing to look at."""
    if settings.redis_url:
        return settings.redis_url
    embedded = EmbeddedRedis(settings.data_dir)
    return embedded.url if embedded._answers() else None


async def run_status(settings: Settings, *, as_json: bool = False, timeout: float = 5.0) -> int:
    """Print the status; exit code 0 = Redis reachable and a worker alive, 1 = no worker, 2 = no Redis."""
    url = resolve_url(settings)
    if url is None:
        print(
            f"No Redis: REDIS_URL is empty and no embedded Redis answers under {settings.data_dir} "
            "(is the bot running?)"
        )
        return 2
    # No retries: an admin wants a quick "cannot reach Redis", not a client that keeps backing off.
    client = aioredis.Redis.from_url(url, decode_responses=True, socket_connect_timeout=timeout, socket_timeout=timeout)
    bus = Bus(client, models=routing.names(settings) if routing.routed(settings) else ())
    try:
        status = await asyncio.wait_for(collect(bus, url), timeout)
    except Exception as exc:
        print(f"Cannot reach Redis at {_redact_url(url)}: {type(exc).__name__}: {str(exc)[:200]}")
        return 2
    finally:
        await bus.close()
        await client.aclose()
    status.sandbox = await asyncio.to_thread(describe_isolation, SandboxLimits.from_settings(settings))
    print(status.to_json() if as_json else render(status))
    return 0 if status.workers else 1
