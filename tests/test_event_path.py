"""The worker's event-write path: coalesced deltas, one-round-trip attempt start, final event + XACK together.

Real Redis (the session fixture), a real in-process worker with the test engine; no mocks.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from redis.exceptions import ResponseError

from models.engines.testing import TestEngine
from models.protocol import KEYS, Bus, Event, Job
from models.settings import Settings
from models.worker import Worker


def chat(text: str) -> Job:
    return Job(kind="chat", payload={"messages": [{"role": "user", "content": text}]})


async def follow(bus: Bus, job: Job, limit_s: float = 10) -> list[tuple[float, Event]]:
    """(arrival time, event) until the final event."""
    out: list[tuple[float, Event]] = []
    async with asyncio.timeout(limit_s):
        async for event in bus.events(job.id, block_ms=100):
            if event is None:
                continue
            out.append((time.monotonic(), event))
            if event.final:
                return out
    raise AssertionError("no final event")


async def pending(bus: Bus) -> int:
    return int((await bus.redis.xpending(KEYS.jobs, KEYS.group))["pending"])


@pytest.fixture
async def slow_window_worker(settings: Settings, bus: Bus):
    """A worker whose delta window (2 s) is far longer than the answer takes, so what is sent when is
    decided by the rules (first piece at once, the rest with the final event), not by the window."""
    engine = TestEngine(token_delay=0.01)
    w = Worker(settings.model_copy(update={"delta_window_ms": 2000.0}), bus, engine, worker_id="w-window")
    task = asyncio.create_task(w.run())
    yield w
    w.stop()
    await asyncio.wait_for(task, 30)


async def test_first_piece_at_once_rest_with_the_final_event(bus: Bus, slow_window_worker: Worker) -> None:
    job = chat("[[repeat:5]]")
    started = time.monotonic()
    await bus.submit(job)
    events = [e for _t, e in await follow(bus, job)]
    elapsed = time.monotonic() - started
    assert [e.type for e in events] == ["status", "delta", "delta", "done"]
    assert events[1].data["text"] == "w0 "  # the first token is not held back
    assert events[2].data["text"] == "w1 w2 w3 w4 "  # the rest, coalesced, written with `done`
    assert "".join(e.data["text"] for e in events[1:3]) == events[3].data["text"]
    assert elapsed < 1.5  # the final event did not wait out the 2 s window
    assert await pending(bus) == 0  # acked together with the final event


async def test_deltas_coalesce_and_concatenate_to_the_answer(settings: Settings, bus: Bus) -> None:
    """Tokens every 5 ms with a 60 ms window: far fewer events than tokens, nothing lost or reordered."""
    engine = TestEngine(token_delay=0.005)
    w = Worker(settings.model_copy(update={"delta_window_ms": 60.0}), bus, engine, worker_id="w-coalesce")
    task = asyncio.create_task(w.run())
    try:
        job = chat("[[repeat:80]]")
        await bus.submit(job)
        events = [e for _t, e in await follow(bus, job)]
    finally:
        w.stop()
        await asyncio.wait_for(task, 30)
    deltas = [e for e in events if e.type == "delta"]
    assert events[-1].type == "done"
    assert "".join(d.data["text"] for d in deltas) == events[-1].data["text"] == "".join(f"w{i} " for i in range(80))
    assert 2 <= len(deltas) < 40, len(deltas)  # ~0.4 s of tokens in 60 ms windows, with generous slack
    assert {e.attempt for e in events} == {1}


async def test_window_zero_sends_every_piece_it_can(settings: Settings, bus: Bus) -> None:
    """DELTA_WINDOW_MS=0: coalescing only while a write is in flight; a slow stream gets one event a piece."""
    engine = TestEngine(token_delay=0.03)
    w = Worker(settings.model_copy(update={"delta_window_ms": 0.0}), bus, engine, worker_id="w-zero")
    task = asyncio.create_task(w.run())
    try:
        job = chat("[[repeat:6]]")
        await bus.submit(job)
        events = [e for _t, e in await follow(bus, job)]
    finally:
        w.stop()
        await asyncio.wait_for(task, 30)
    assert [e.type for e in events].count("delta") >= 5  # the last piece may ride with `done`


async def test_start_attempt_counts_announces_and_sees_cancels(bus: Bus) -> None:
    job = chat("x")
    assert await bus.start_attempt(job.id, {"state": "started", "worker": "a"}) == (1, False, True)
    [status] = await bus.read_events(job.id)
    assert (status.type, status.attempt, status.data) == ("status", 1, {"state": "started", "worker": "a"})
    assert await bus.redis.ttl(KEYS.events(job.id)) > 0
    await bus.cancel(job.id)
    # a later attempt is counted but not announced (the worker checks for a finished or poison job first)
    assert await bus.start_attempt(job.id, {"state": "started", "worker": "b"}) == (2, True, False)
    assert len(await bus.read_events(job.id)) == 1
    assert await bus.redis.ttl(KEYS.attempts(job.id)) > 0


async def test_scripts_survive_a_script_flush(bus: Bus) -> None:
    """Redis restarted without its script cache (or SCRIPT FLUSH): EVALSHA fails with NOSCRIPT and the
    bus loads the script again instead of failing the job."""
    await bus.redis.script_flush()
    job = chat("x")
    assert (await bus.start_attempt(job.id, {"state": "started"}))[0] == 1
    await bus.redis.script_flush()
    assert len(await bus.finish(job.id, 1, [("done", {"text": ""})])) == 1


async def test_finish_acks_only_after_the_final_event_is_written(bus: Bus) -> None:
    """The final event and the XACK go in one script, XACK last: when the write fails, the job stays pending
    (another worker will take it over), never acked without its answer."""
    job = chat("x")
    await bus.submit(job)
    [claimed] = await bus.claim_new("w", 1, block_ms=100)
    await bus.redis.set(KEYS.events(job.id), "not a stream")  # every XADD to it now fails (WRONGTYPE)
    with pytest.raises(ResponseError):
        await bus.finish(job.id, 1, [("delta", {"text": "a"}), ("done", {"text": "a"})], claimed.entry_id)
    assert await pending(bus) == 1
    await bus.redis.delete(KEYS.events(job.id))
    ids = await bus.finish(job.id, 1, [("delta", {"text": "a"}), ("done", {"text": "a"})], claimed.entry_id)
    assert len(ids) == 2
    assert [e.type for e in await bus.read_events(job.id)] == ["delta", "done"]
    assert await pending(bus) == 0


async def test_a_cancel_before_start_still_stops_at_once(bus: Bus, worker: Worker) -> None:
    """Cancelled while queued: the attempt start sees it in the same round trip and answers `stopped`."""
    job = chat("[[repeat:50]]")
    await bus.cancel(job.id)
    await bus.submit(job)
    events = [e for _t, e in await follow(bus, job)]
    assert [e.type for e in events] == ["status", "done"]
    assert events[-1].data["stopped"] is True
    assert await pending(bus) == 0


async def test_concurrent_submits_and_events_share_round_trips(bus: Bus, worker: Worker) -> None:
    """Many jobs at once: every answer complete and in order per job (the shared pipeline keeps order)."""
    jobs = [chat(f"[[repeat:{5 + i}]]") for i in range(12)]
    await asyncio.gather(*(bus.submit(job) for job in jobs))
    results = await asyncio.gather(*(follow(bus, job) for job in jobs))
    for i, events in enumerate(results):
        types = [e.type for _t, e in events]
        assert types[0] == "status" and types[-1] == "done"
        text = "".join(e.data["text"] for _t, e in events if e.type == "delta")
        assert text == events[-1][1].data["text"] == "".join(f"w{n} " for n in range(5 + i))
    assert await pending(bus) == 0


async def test_answered_jobs_never_look_taken_over(
    settings: Settings, bus: Bus, caplog: pytest.LogCaptureFixture
) -> None:
    """The XACK goes out with the final event, before the job's task ends: a heartbeat in between must not
    mistake the acked entry for one another worker took over (and cancel a finished job)."""
    fast = settings.model_copy(update={"job_visibility_timeout": 0.8, "worker_concurrency": 64})  # beat / 0.2 s
    w = Worker(fast, bus, TestEngine(token_delay=0.001), worker_id="w-beat")
    task = asyncio.create_task(w.run())
    try:
        for _round in range(3):
            jobs = [chat("[[repeat:3]]") for _ in range(40)]
            await asyncio.gather(*(bus.submit(job) for job in jobs))
            await asyncio.gather(*(follow(bus, job) for job in jobs))
    finally:
        w.stop()
        await asyncio.wait_for(task, 30)
    assert w.jobs_done == 120
    assert not [r for r in caplog.records if "taken over" in r.getMessage()]


async def test_the_window_between_the_final_event_and_the_task_end_is_safe(
    settings: Settings, bus: Bus, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The same guard, made deterministic: the final event (with its XACK) is held open for three heartbeats,
    so every heartbeat in that window sees an acked entry whose task still runs."""
    fast = settings.model_copy(update={"job_visibility_timeout": 0.8})  # a heartbeat every 0.2 s
    finish = bus.finish

    async def slow_finish(*args: object, **kwargs: object) -> object:
        result = await finish(*args, **kwargs)  # type: ignore[arg-type]
        await asyncio.sleep(0.6)
        return result

    monkeypatch.setattr(bus, "finish", slow_finish)
    w = Worker(fast, bus, TestEngine(), worker_id="w-window")
    task = asyncio.create_task(w.run())
    try:
        job = chat("[[repeat:3]]")
        await bus.submit(job)
        events = await follow(bus, job)
        assert events[-1][1].type == "done"
        for _ in range(100):  # the job's task ends once slow_finish returns
            if w.jobs_done:
                break
            await asyncio.sleep(0.02)
    finally:
        w.stop()
        await asyncio.wait_for(task, 30)
    assert w.jobs_done == 1
    assert not [r for r in caplog.records if "taken over" in r.getMessage()]
