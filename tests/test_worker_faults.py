"""Worker faults with real processes and a real Redis: kill -9, poison jobs, SIGTERM, malformed jobs,
cancellation, a Redis restart.  Nothing may be lost, and every reader gets a final event."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from conftest import RedisServer
from worker_procs import WorkerProc, pid_of, repeat_text, wait_alive

from handlers.chat import ChatHandler, InputError, Reply, Request, Update
from handlers.history import HistoryStore
from handlers.overrides import ConfStore
from models.context import JobContext
from models.engines.testing import TestEngine
from models.protocol import KEYS, Bus, Job
from models.redis_server import connect
from models.settings import Settings
from models.worker import Worker

# Fast takeovers for the tests; production uses 30 s.  1.5 s keeps clear of heartbeat jitter on a busy box.
VISIBILITY = "1.5"


@pytest.fixture
def chat(settings: Settings, bus: Bus) -> ChatHandler:
    return ChatHandler(bus, HistoryStore(bus.redis), ConfStore(bus.redis, settings), settings)


def spawn(procs: list[WorkerProc], settings: Settings, tmp_path: Path, n: int, **env: str) -> list[WorkerProc]:
    env = {"JOB_VISIBILITY_TIMEOUT": VISIBILITY, "TEST_ENGINE_TOKEN_DELAY": "0.03", **env}
    new = [WorkerProc(settings, tmp_path, f"{len(procs) + i}", **env) for i in range(n)]
    procs.extend(new)
    return new


def by_pid(procs: list[WorkerProc], worker_id: str) -> WorkerProc:
    return next(p for p in procs if p.pid == pid_of(worker_id))


async def kill_owners(bus: Bus, job_id: str, workers: list[WorkerProc], on: str, attempts: set[int]) -> None:
    """Watch the job's raw events; kill -9 the worker that runs attempt N at its first `on` event."""
    owner: dict[int, str] = {}
    async for event in bus.events(job_id, block_ms=100):
        if event is None:
            continue
        if event.type == "status":
            owner[event.attempt] = event.data["worker"]
        if event.type == on and event.attempt in attempts:
            attempts.discard(event.attempt)
            by_pid(workers, owner[event.attempt]).kill()
        if event.final or not attempts:
            return


async def pending_count(bus: Bus, settle: float = 3.0) -> int:
    """Entries delivered but not acked, once the count stops changing (the XACK follows the final event)."""
    deadline = time.monotonic() + settle
    while True:
        pending = int((await bus.redis.xpending(KEYS.jobs, KEYS.group))["pending"])
        if pending == 0 or time.monotonic() > deadline:
            return pending
        await asyncio.sleep(0.02)


# ---------------------------------------------------------------------------------------- crashes
async def test_kill9_mid_job_is_taken_over(
    settings: Settings, bus: Bus, chat: ChatHandler, tmp_path: Path, procs: list[WorkerProc]
) -> None:
    """A worker killed mid-answer: another takes the job over with attempt 2; the reader sees a restart
    and one complete answer, and history gets exactly one assistant turn."""
    workers = spawn(procs, settings, tmp_path, 2)
    await wait_alive(bus, workers)
    reply = await chat.ask(Request(conversation="c:kill", text="[[repeat:30]]"))
    killer = asyncio.create_task(kill_owners(bus, reply.job.id, workers, "delta", {1}))
    async with asyncio.timeout(30):
        updates = [u async for u in chat.follow(reply)]
    await killer
    [killed] = [p for p in workers if p.proc.poll() is not None]
    final = updates[-1]
    assert final.kind == "done", (final, [p.log() for p in workers])
    assert final.attempt == 2
    assert final.text == repeat_text(30)
    assert any(u.kind == "restart" and u.attempt == 2 for u in updates)
    survivor = next(p for p in workers if p is not killed)
    assert survivor.proc.poll() is None
    turns = await chat.history.recent("c:kill")
    assert [t.role for t in turns] == ["user", "assistant"]
    assert turns[1].content == repeat_text(30)
    assert await pending_count(bus) == 0  # acked
    events = await bus.read_events(reply.job.id)
    assert {e.attempt for e in events} == {1, 2}
    assert [e.type for e in events if e.final] == ["done"]


async def test_job_that_kills_every_worker_is_dead_lettered(
    settings: Settings, bus: Bus, chat: ChatHandler, tmp_path: Path, procs: list[WorkerProc]
) -> None:
    """Poison job: every worker running it dies.  After JOB_MAX_ATTEMPTS attempts it is dead-lettered, the
    reader gets an error event, and the last worker keeps serving."""
    workers = spawn(procs, settings, tmp_path, 3, JOB_MAX_ATTEMPTS="2")
    await wait_alive(bus, workers)
    reply = await chat.ask(Request(conversation="c:poison", text="[[repeat:200]]"))
    killer = asyncio.create_task(kill_owners(bus, reply.job.id, workers, "status", {1, 2}))
    async with asyncio.timeout(40):
        updates = [u async for u in chat.follow(reply)]
    await killer
    final = updates[-1]
    assert final.kind == "error", final
    assert final.data["code"] == "dead_letter"
    assert final.data["message"]
    events = await bus.read_events(reply.job.id)
    assert [e.attempt for e in events if e.type == "status"] == [1, 2]
    assert [u.attempt for u in updates if u.kind == "restart"] == [2]
    dead = await bus.dead_letters()
    assert [d["id"] for d in dead] == [reply.job.id]
    assert "attempts" in dead[0]["reason"]
    assert await pending_count(bus) == 0
    # No answer was recorded, and the remaining worker still answers.
    assert [t.role for t in await chat.history.recent("c:poison")] == ["user"]
    survivors = [p for p in workers if p.proc.poll() is None]
    assert len(survivors) == 1
    reply = await chat.ask(Request(conversation="c:poison2", text="[[say:still here]]"))
    async with asyncio.timeout(20):
        final = [u async for u in chat.follow(reply)][-1]
    assert (final.kind, final.text) == ("done", "still here")


async def test_engine_failure_is_reported_not_retried(
    settings: Settings, bus: Bus, chat: ChatHandler, worker: Worker
) -> None:
    """An `EngineError` (user-safe, e.g. the server refused) is the answer: error event, acked, no retry."""
    reply = await chat.ask(Request(conversation="c:fail", text="[[fail]]"))
    async with asyncio.timeout(10):
        updates = [u async for u in chat.follow(reply)]
    assert updates[-1].kind == "error"
    assert "asked to fail" in updates[-1].data["message"]
    assert {u.attempt for u in updates} == {1}
    assert await pending_count(bus) == 0
    assert await bus.dead_letters() == []


# ---------------------------------------------------------------------------------------- SIGTERM
async def test_sigterm_finishes_the_running_job_and_exits_0(
    settings: Settings, bus: Bus, chat: ChatHandler, tmp_path: Path, procs: list[WorkerProc]
) -> None:
    [proc] = spawn(procs, settings, tmp_path, 1, WORKER_SHUTDOWN_GRACE="20")
    await wait_alive(bus, [proc])
    reply = await chat.ask(Request(conversation="c:term", text="[[repeat:30]]"))
    updates: list[Update] = []
    async with asyncio.timeout(30):
        async for update in chat.follow(reply):
            updates.append(update)
            if update.kind == "text" and len(updates) < 4:
                proc.terminate()
    assert updates[-1].kind == "done"
    assert updates[-1].text == repeat_text(30)
    assert {u.attempt for u in updates} == {1}
    # It exits as soon as the job is done — not after the whole grace period.
    assert await proc.wait_exit(10) == 0, proc.log()
    assert await pending_count(bus) == 0
    assert await bus.alive_workers() == []  # it unregistered


async def test_sigterm_hands_back_a_job_longer_than_the_grace(
    settings: Settings, bus: Bus, chat: ChatHandler, tmp_path: Path, procs: list[WorkerProc]
) -> None:
    workers = spawn(procs, settings, tmp_path, 2, WORKER_SHUTDOWN_GRACE="0.3")
    await wait_alive(bus, workers)
    reply = await chat.ask(Request(conversation="c:handback", text="[[repeat:40]]"))
    updates: list[Update] = []
    stopped: WorkerProc | None = None
    async with asyncio.timeout(30):
        async for update in chat.follow(reply):
            updates.append(update)
            if update.kind == "started" and stopped is None:
                stopped = by_pid(workers, update.data["worker"])
                stopped.terminate()
    assert stopped is not None
    assert await stopped.wait_exit(10) == 0, stopped.log()
    assert "handed back 1" in stopped.log()
    final = updates[-1]
    assert final.kind == "done", final
    assert final.text == repeat_text(40)
    assert final.attempt == 2
    assert any(u.kind == "restart" for u in updates)
    assert await bus.handbacks(reply.job.id) == 1
    assert await pending_count(bus) == 0
    assert [t.role for t in await chat.history.recent("c:handback")] == ["user", "assistant"]


async def test_sigterm_while_redis_is_down_exits_promptly(tmp_path: Path) -> None:
    """With Redis gone the client's reconnect retries used to hold a SIGTERM for over a minute."""
    server = RedisServer(tmp_path / "own-redis").start()
    own = Settings(
        _env_file=None,
        redis_url=server.url,
        engine="test",
        data_dir=tmp_path / "data",
        job_visibility_timeout=float(VISIBILITY),
    )
    worker = WorkerProc(own, tmp_path, "redis-down")
    client = connect(server.url)
    try:
        await wait_alive(Bus(client), [worker])
        server.kill()
        await asyncio.sleep(0.5)
        started = time.monotonic()
        worker.terminate()
        assert await worker.wait_exit(15) == 0, worker.log()
        assert time.monotonic() - started < 10, worker.log()
    finally:
        worker.close()
        server.stop()
        await client.aclose()


# ---------------------------------------------------------------------------------------- malformed jobs
MALFORMED: dict[str, dict[str, str]] = {
    "unknown_kind": {"id": "bad1", "kind": "teleport", "payload": "{}"},
    "missing_kind": {"id": "bad2", "payload": "{}"},
    "bad_json": {"id": "bad3", "kind": "chat", "payload": "{not json"},
    "non_object": {"id": "bad4", "kind": "chat", "payload": "[1, 2]"},
    "missing_payload": {"id": "bad5", "kind": "chat"},
    "missing_messages": {"id": "bad6", "kind": "chat", "payload": "{}"},
    "bad_messages": {"id": "bad7", "kind": "chat", "payload": json.dumps({"messages": [{"role": "x"}]})},
}


async def test_malformed_jobs_get_error_events_and_the_worker_keeps_serving(
    settings: Settings, bus: Bus, chat: ChatHandler, worker: Worker
) -> None:
    for fields in MALFORMED.values():
        await bus.redis.xadd(KEYS.jobs, fields)
    await bus.redis.xadd(KEYS.jobs, {"kind": "chat", "payload": "{}"})  # no id: no reply stream to name
    await bus.redis.xadd(KEYS.jobs, {"id": "../../etc", "kind": "chat", "payload": "{}"})  # invalid id
    oversized = {
        "id": "bad8",
        "kind": "chat",
        "payload": json.dumps({"messages": [{"role": "user", "content": "x" * settings.max_job_bytes}]}),
    }
    await bus.redis.xadd(KEYS.jobs, oversized)
    good = await chat.ask(Request(conversation="c:good", text="[[say:fine]]"))
    async with asyncio.timeout(15):
        final = [u async for u in chat.follow(good)][-1]
    assert (final.kind, final.text) == ("done", "fine")

    for name, fields in [*MALFORMED.items(), ("oversized", oversized)]:
        async with asyncio.timeout(5):
            events = [e async for e in _until_final(bus, fields["id"])]
        assert events[-1].type == "error", name
        assert events[-1].data["code"] == "bad_job", name
        assert events[-1].data["message"].startswith("Invalid request"), name
    assert "too large" in (await bus.read_events("bad8"))[-1].data["message"]
    dead = await bus.dead_letters()
    assert len(dead) == len(MALFORMED) + 3
    assert all(d["reason"] for d in dead)
    assert not any("x" * 1000 in d.get("payload", "") for d in dead)  # oversized bodies are not copied
    assert await pending_count(bus) == 0
    assert worker.stopped.is_set() is False


async def _until_final(bus: Bus, job_id: str) -> AsyncIterator:
    async for event in bus.events(job_id, block_ms=100):
        if event is not None:
            yield event
            if event.final:
                return


async def test_bad_input_at_the_handler_is_refused_politely(
    settings: Settings, bus: Bus, chat: ChatHandler, worker: Worker
) -> None:
    with pytest.raises(InputError, match="too long"):
        await chat.ask(Request(conversation="c:in", text="x" * (settings.max_input_chars + 1)))
    with pytest.raises(InputError, match="too large"):
        await chat.submit(
            Request(conversation="c:in", text="hi", record=False, payload={"blob": "y" * (settings.max_job_bytes + 10)})
        )
    assert await bus.redis.xlen(KEYS.jobs) == 0  # nothing was queued
    reply = await chat.submit(Request(conversation="c:in", text="hi", kind="teleport", record=False))
    async with asyncio.timeout(10):
        updates = [u async for u in chat.follow(reply)]
    assert updates[-1].kind == "error"
    assert "teleport" in updates[-1].data["message"]


# ---------------------------------------------------------------------------------------- cancellation
async def test_cancel_reaches_a_running_job_within_a_second(
    settings: Settings, bus: Bus, chat: ChatHandler, engine: TestEngine, worker: Worker
) -> None:
    engine.token_delay = 0.05
    reply = await chat.ask(Request(conversation="c:stop", text="[[repeat:400]]"))
    sent: float | None = None
    async with asyncio.timeout(15):
        async for update in chat.follow(reply):
            if update.kind == "text" and sent is None:
                sent = time.monotonic()
                await chat.stop(reply)
            final = update
    elapsed = time.monotonic() - (sent or 0)
    assert final.kind == "done" and final.data["stopped"] is True
    assert elapsed < 1.0
    assert 0 < len(final.text) < len(repeat_text(400))
    [_user, answer] = await chat.history.recent("c:stop")
    assert answer.content == final.text and answer.meta.get("stopped") is True


async def test_cancel_interrupts_a_runner_that_ignores_it(
    settings: Settings, bus: Bus, chat: ChatHandler, worker: Worker
) -> None:
    async def stubborn(ctx: JobContext) -> None:
        await ctx.delta("thinking hard")
        await asyncio.sleep(60)  # e.g. a tool call that does not look at ctx.cancel

    worker.runners["chat"] = stubborn
    reply = await chat.ask(Request(conversation="c:stubborn", text="hi"))
    async with asyncio.timeout(15):
        async for update in chat.follow(reply):
            if update.kind == "text":
                sent = time.monotonic()
                await chat.stop(reply)
            final = update
    assert final.kind == "done" and final.data["stopped"] is True
    assert final.text == "thinking hard"
    assert time.monotonic() - sent < 1.5
    assert await pending_count(bus) == 0


async def test_job_cancelled_while_queued_finishes_at_once(
    settings: Settings, bus: Bus, chat: ChatHandler, engine: TestEngine
) -> None:
    engine.token_delay = 0.05
    reply = await chat.ask(Request(conversation="c:queued", text="[[repeat:400]]"))
    await chat.stop(reply)  # nobody has taken it yet
    w = Worker(settings, bus, engine, worker_id="late-worker")
    task = asyncio.create_task(w.run())
    try:
        began = time.monotonic()
        async with asyncio.timeout(10):
            updates = [u async for u in chat.follow(reply)]
        assert updates[-1].kind == "done"
        assert updates[-1].data["stopped"] is True
        assert updates[-1].text == ""
        assert time.monotonic() - began < 2.0
        assert engine.requests == []  # the engine never saw it
    finally:
        w.stop()
        await asyncio.wait_for(task, 10)


# ---------------------------------------------------------------------------------------- Redis restart
async def test_worker_survives_a_redis_restart(tmp_path: Path) -> None:
    """Redis restarting without its data (no persistence) mid-traffic: the worker loop keeps going,
    recreates its consumer group, and answers the next job."""
    server = RedisServer(tmp_path / "r").start()
    try:
        settings = Settings(
            _env_file=None, redis_url=server.url, engine="test", data_dir=tmp_path / "d", job_visibility_timeout=2.0
        )
        bus = Bus(connect(server.url))
        w = Worker(settings, bus, TestEngine(), worker_id="restart-worker")
        task = asyncio.create_task(w.run())
        chat = ChatHandler(bus, HistoryStore(bus.redis), ConfStore(bus.redis, settings), settings)

        async def ask(text: str) -> Update:
            reply: Reply = await chat.ask(Request(conversation="c:r", text=text))
            async with asyncio.timeout(20):
                return [u async for u in chat.follow(reply)][-1]

        assert (await ask("[[say:one]]")).text == "one"
        server.kill()
        await asyncio.sleep(0.5)  # the worker's loops hit connection errors meanwhile
        server.start()
        assert (await ask("[[say:two]]")).text == "two"
        assert not task.done()
        w.stop()
        await asyncio.wait_for(task, 10)
        await bus.close()
        await bus.redis.aclose()
    finally:
        server.stop()


@pytest.mark.parametrize("kind", ["chat"])
async def test_job_envelope_roundtrip_through_the_worker(kind: str, bus: Bus, worker: Worker) -> None:
    """A job submitted with `Bus.submit` (not through the handler) is answered with attempt 1 events."""
    job = Job(kind=kind, payload={"messages": [{"role": "user", "content": "[[say:raw]]"}]})
    await bus.submit(job)
    async with asyncio.timeout(10):
        events = [e async for e in _until_final(bus, job.id)]
    assert events[0].type == "status"
    assert events[-1].type == "done" and events[-1].data["text"] == "raw"
    assert {e.attempt for e in events} == {1}


async def test_reply_survives_a_redis_restart_mid_stream(tmp_path: Path) -> None:
    """Redis (with its AOF, like the embedded one) restarts while an answer streams: the worker's writes and
    the reader's reads retry, and the answer completes once, whole."""
    server = RedisServer(tmp_path / "r", appendonly=True).start()
    try:
        settings = Settings(
            _env_file=None, redis_url=server.url, engine="test", data_dir=tmp_path / "d", job_visibility_timeout=5.0
        )
        bus = Bus(connect(server.url))
        w = Worker(settings, bus, TestEngine(token_delay=0.02), worker_id="aof-worker")
        task = asyncio.create_task(w.run())
        chat = ChatHandler(bus, HistoryStore(bus.redis), ConfStore(bus.redis, settings), settings)
        reply = await chat.ask(Request(conversation="c:aof", text="[[repeat:60]]"))
        updates: list[Update] = []
        async with asyncio.timeout(30):
            async for update in chat.follow(reply):
                updates.append(update)
                if update.kind == "text" and len(updates) == 5:
                    server.stop()  # graceful: the AOF is flushed
                    server.start()
        assert updates[-1].kind == "done", updates[-1]
        assert updates[-1].text == repeat_text(60)
        assert [t.role for t in await chat.history.recent("c:aof")] == ["user", "assistant"]
        assert not task.done()
        w.stop()
        await asyncio.wait_for(task, 10)
        await bus.close()
        await bus.redis.aclose()
    finally:
        server.stop()


async def test_a_worker_that_lost_its_job_stops_writing(
    settings: Settings, bus: Bus, engine: TestEngine, worker: Worker
) -> None:
    """A worker that stalled past the visibility timeout finds, at its next heartbeat, that another worker
    took its job over: it stops its attempt without writing a final event or acking (the new owner will)."""
    engine.token_delay = 0.05
    job = Job(kind="chat", payload={"messages": [{"role": "user", "content": "[[repeat:200]]"}]})
    await bus.submit(job)
    async with asyncio.timeout(10):
        async for event in bus.events(job.id, block_ms=50):
            if event is not None and event.type == "delta":
                break
    [entry] = list(worker.in_flight)
    await bus.redis.xclaim(KEYS.jobs, KEYS.group, "thief", 0, [entry], justid=True)  # the takeover
    task = worker.in_flight[entry]
    async with asyncio.timeout(5):
        await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled()
    await asyncio.sleep(0.3)
    events = await bus.read_events(job.id)
    assert not any(e.final for e in events)  # no done/error from the stale attempt
    [pending] = await bus.redis.xpending_range(KEYS.jobs, KEYS.group, "-", "+", 10)
    assert pending["consumer"] == "thief"  # not acked, not stolen back
