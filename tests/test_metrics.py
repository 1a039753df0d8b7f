"""Worker metrics and health over real HTTP: run jobs (and failing ones) on a real worker, scrape, compare."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from handlers.chat import ChatHandler, Request
from handlers.history import HistoryStore
from handlers.overrides import ConfStore
from models.engines.testing import TestEngine
from models.protocol import KEYS, Bus
from models.redis_server import connect
from models.settings import Settings
from models.worker import Worker
from tests.conftest import RedisServer, free_port
from tests.fakediscord.harness import visible_text


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Prometheus text → {(sample name, sorted labels): value}."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(data: dict, name: str, **labels: str) -> float:
    return data.get((name, tuple(sorted(labels.items()))), 0.0)


async def scrape(session: aiohttp.ClientSession, port: int) -> dict:
    async with session.get(f"http://127.0.0.1:{port}/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        return samples(await resp.text())


async def health(session: aiohttp.ClientSession, port: int) -> tuple[int, dict]:
    async with session.get(f"http://127.0.0.1:{port}/healthz", timeout=aiohttp.ClientTimeout(total=10)) as resp:
        return resp.status, await resp.json()


@pytest.fixture
async def metered(settings: Settings, bus: Bus) -> AsyncIterator[tuple[Worker, int]]:
    port = free_port()
    s = settings.model_copy(update={"worker_metrics_port": port})
    w = Worker(s, bus, TestEngine(token_delay=0.001), worker_id="metered")
    task = asyncio.create_task(w.run())
    async with aiohttp.ClientSession() as session:
        for _ in range(200):  # the server is up once the engine has started
            try:
                await health(session, port)
                break
            except aiohttp.ClientError:
                await asyncio.sleep(0.02)
    yield w, port
    w.stop()
    await asyncio.wait_for(task, 30)


async def test_counters_and_histograms_move(settings: Settings, bus: Bus, metered: tuple[Worker, int]) -> None:
    _worker, port = metered
    chat = ChatHandler(bus, HistoryStore(bus.redis), ConfStore(bus.redis, settings), settings)
    async with aiohttp.ClientSession() as session:
        before = await scrape(session, port)
        assert value(before, "ilm_worker_engine_loaded") == 1
        assert value(before, "ilm_worker_concurrency") == settings.worker_concurrency
        replies = [await chat.ask(Request(conversation=f"m:{i}", text=f"hello {i}")) for i in range(3)]
        replies.append(await chat.ask(Request(conversation="m:fail", text="[[fail]]")))
        finals = []
        for r in replies:
            finals.append([u async for u in chat.follow(r)][-1])
        assert [f.kind for f in finals] == ["done", "done", "done", "error"]
        # A malformed job: rejected, dead-lettered, counted.
        await bus.redis.xadd(KEYS.jobs, {"id": "bad1", "kind": "nonsense", "payload": "{}"})
        for _ in range(100):
            if await bus.redis.xlen(KEYS.dead):
                break
            await asyncio.sleep(0.05)
        after = await scrape(session, port)

    done = value(after, "ilm_worker_jobs_finished_total", kind="chat", outcome="done")
    assert done - value(before, "ilm_worker_jobs_finished_total", kind="chat", outcome="done") == 3
    assert value(after, "ilm_worker_jobs_finished_total", kind="chat", outcome="error") == 1
    assert value(after, "ilm_worker_errors_total", kind="chat", code="EngineError") == 1
    assert value(after, "ilm_worker_jobs_started_total", kind="chat") == 4
    assert value(after, "ilm_worker_retries_total", kind="chat") == 0
    assert value(after, "ilm_worker_job_seconds_count", kind="chat") == 3
    assert value(after, "ilm_worker_job_seconds_sum", kind="chat") > 0
    assert value(after, "ilm_worker_ttft_seconds_count", kind="chat") == 3
    assert value(after, "ilm_worker_queue_wait_seconds_count", kind="chat") == 3
    assert value(after, "ilm_worker_tokens_per_second_count", kind="chat") == 3
    assert value(after, "ilm_worker_completion_tokens_total", kind="chat") >= 3 * 4  # "echo: hello i (turns..."
    assert value(after, "ilm_worker_dead_letters_total", reason="bad_job") == 1
    assert value(after, "ilm_dead_letter_backlog") == 1
    assert value(after, "ilm_queue_depth") == 0
    assert value(after, "ilm_worker_jobs_in_flight") == 0


async def test_queue_depth_and_in_flight_are_live(settings: Settings, bus: Bus) -> None:
    """With one slot busy on a slow job, the next jobs wait: the gauges say so at scrape time."""
    port = free_port()
    s = settings.model_copy(update={"worker_metrics_port": port, "worker_concurrency": 1})
    w = Worker(s, bus, TestEngine(token_delay=0.05), worker_id="busy")
    task = asyncio.create_task(w.run())
    chat = ChatHandler(bus, HistoryStore(bus.redis), ConfStore(bus.redis, s), s)
    try:
        replies = [await chat.ask(Request(conversation=f"q:{i}", text="[[repeat:40]]")) for i in range(3)]
        async with aiohttp.ClientSession() as session:
            deadline = time.monotonic() + 10
            data: dict = {}
            while time.monotonic() < deadline:
                try:
                    data = await scrape(session, port)
                except aiohttp.ClientError:
                    data = {}
                if value(data, "ilm_worker_jobs_in_flight") == 1 and value(data, "ilm_queue_depth") >= 1:
                    break
                await asyncio.sleep(0.05)
            assert value(data, "ilm_worker_jobs_in_flight") == 1
            assert value(data, "ilm_queue_depth") >= 1
        for r in replies:
            await chat.stop(r)
    finally:
        w.stop()
        await asyncio.wait_for(task, 30)


async def test_healthz_follows_redis(tmp_path: Path) -> None:
    """200 while the engine is loaded and Redis answers; 503 while Redis is down; 200 again after."""
    server = RedisServer(tmp_path / "redis").start()
    client = connect(server.url)
    bus = Bus(client)
    port = free_port()
    s = Settings(
        _env_file=None,
        redis_url=server.url,
        engine="test",
        data_dir=tmp_path / "data",
        job_visibility_timeout=2.0,
        worker_metrics_port=port,
    )
    w = Worker(s, bus, TestEngine(), worker_id="health")
    task = asyncio.create_task(w.run())
    try:
        async with aiohttp.ClientSession() as session:
            status = body = None
            for _ in range(200):
                try:
                    status, body = await health(session, port)
                    break
                except aiohttp.ClientError:
                    await asyncio.sleep(0.02)
            assert status == 200 and body and body["engine_loaded"] and body["redis"]
            server.stop()
            status, body = await health(session, port)
            assert status == 503
            assert body["redis"] is False and body["engine_loaded"] is True
            server.start()
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                status, body = await health(session, port)
                if status == 200:
                    break
                await asyncio.sleep(0.2)
            assert status == 200
    finally:
        w.stop()
        await asyncio.wait_for(task, 30)
        server.stop()
        await bus.close()
        await client.aclose()
    # Once stopped, the port is released (no server left behind).
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientError):
            await health(session, port)


# ------------------------------------------------------------------------------------------------ the bot
async def test_bot_metrics_through_fake_discord(discord_harness, discord_bot) -> None:  # type: ignore[no-untyped-def]
    """The real bot on the fake Discord: messages, replies, reply latency, a Discord 429, gateway gauges."""
    h = discord_harness
    port = free_port()
    await discord_bot.start(bot_metrics_port=port)
    async with aiohttp.ClientSession() as session:
        for _ in range(100):  # /healthz turns 200 once the gateway is ready
            status, body = await health(session, port)
            if status == 200:
                break
            await asyncio.sleep(0.05)
        assert status == 200 and body["discord"] and body["redis"]
        before = await scrape(session, port)
        h.server.force_429(1, retry_after=0.2, method="POST", route="/channels/{channel_id}/messages")
        for i in range(3):
            msg = await h.send(h.general, h.alice, f"{h.bot.mention} metric {i}")
            [reply] = await discord_bot.reply(msg)
            assert f"metric {i}" in visible_text(reply)
        await h.send(h.general, h.bob, "just chatting, not to the bot")
        after = await scrape(session, port)
    assert (
        value(after, "ilm_bot_messages_total", where="guild") - value(before, "ilm_bot_messages_total", where="guild")
        == 4
    )
    assert value(after, "ilm_bot_requests_total", kind="chat") == 3
    assert value(after, "ilm_bot_replies_total", kind="chat", outcome="done") == 3
    assert value(after, "ilm_bot_reply_seconds_count", kind="chat") == 3
    assert 0 < value(after, "ilm_bot_reply_seconds_sum", kind="chat") < 30
    assert value(after, "ilm_bot_discord_429_total", source="rest") == 1  # discord.py waited and retried
    assert value(after, "ilm_bot_discord_writes_total") >= 3
    assert value(after, "ilm_bot_guilds") == 1
    assert value(after, "ilm_workers_alive") == 1  # the embedded worker
    assert value(after, "ilm_queue_depth") == 0
