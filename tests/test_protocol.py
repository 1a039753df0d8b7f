"""The job protocol against a real Redis: envelopes, events, blobs, TTLs and caps, queue position and the
worker registry, takeover bookkeeping."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

import models.protocol.bus as protocol  # where the Bus reads its limits
from handlers.chat import ChatHandler, Request
from handlers.history import HistoryStore
from handlers.overrides import ConfStore
from models.engines.testing import TestEngine
from models.protocol import KEYS, Bus, Event, Job, PayloadTooLarge, ProtocolError
from models.settings import Settings
from models.worker import Worker


# ------------------------------------------------------------------------------------ envelopes
def test_job_roundtrip() -> None:
    job = Job(
        kind="vision",
        payload={"messages": [{"role": "user", "content": "图里是什么？"}], "n": 1.5},
        conversation="g1:c2",
    )
    back = Job.decode(job.encode())
    assert back == job
    assert all(isinstance(v, str) for v in job.encode().values())  # a valid stream entry


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"kind": "chat", "payload": "{}"}, "no valid id"),
        ({"id": "", "kind": "chat", "payload": "{}"}, "no valid id"),
        ({"id": "x" * 65, "kind": "chat", "payload": "{}"}, "no valid id"),
        ({"id": "a:b", "kind": "chat", "payload": "{}"}, "no valid id"),
        ({"id": "j1", "payload": "{}"}, "unknown job kind"),
        ({"id": "j1", "kind": "teleport", "payload": "{}"}, "unknown job kind 'teleport'"),
        ({"id": "j1", "kind": "chat"}, "not valid JSON"),
        ({"id": "j1", "kind": "chat", "payload": "{oops"}, "not valid JSON"),
        ({"id": "j1", "kind": "chat", "payload": "[]"}, "must be an object"),
        ({"id": "j1", "kind": "chat", "payload": "null"}, "must be an object"),
        ({"id": "j1", "kind": "chat", "payload": '"text"'}, "must be an object"),
    ],
)
def test_malformed_envelopes(fields: dict[str, str], message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        Job.decode(fields)


def test_bad_created_is_tolerated() -> None:
    job = Job.decode({"id": "j1", "kind": "chat", "payload": "{}", "created": "yesterday"})
    assert abs(job.created - time.time()) < 5


def test_event_decode_is_defensive() -> None:
    assert Event.decode("1-0", {"type": "delta", "attempt": "x", "data": "{bad"}) == Event("delta", 1, {}, "1-0")
    assert Event.decode("1-0", {"type": "done", "attempt": "3", "data": "[1]"}).data == {}
    assert Event.decode("1-0", {"type": "done", "attempt": "3", "data": "{}"}).final


async def test_submit_refuses_oversized_jobs(bus: Bus) -> None:
    bus.max_job_bytes = 1000
    with pytest.raises(PayloadTooLarge, match="too large"):
        await bus.submit(Job(kind="chat", payload={"messages": [{"role": "user", "content": "x" * 2000}]}))
    assert await bus.redis.xlen(KEYS.jobs) == 0
    await bus.submit(Job(kind="chat", payload={"messages": [{"role": "user", "content": "x" * 100}]}))
    assert await bus.redis.xlen(KEYS.jobs) == 1


# ------------------------------------------------------------------------------------ blobs
async def test_blobs_are_content_addressed_with_ttl(bus: Bus) -> None:
    data = bytes(range(256)) * 100
    ref = await bus.put_blob(data, "image/png")
    assert await bus.put_blob(data, "image/png") == ref  # same bytes, same reference, stored once
    other = await bus.put_blob(data + b"!", "image/png")
    assert other != ref
    assert len([k async for k in bus.redis.scan_iter(match=KEYS.blob("*"))]) == 2
    assert await bus.get_blob(ref) == (data, "image/png")
    assert 0 < await bus.redis.ttl(KEYS.blob(ref)) <= bus.blob_ttl
    await bus.redis.expire(KEYS.blob(ref), 5)
    assert await bus.touch_blob(ref)
    assert await bus.redis.ttl(KEYS.blob(ref)) > 5
    for bad in ("", "zz", "../" + "a" * 61, ref.upper(), "0" * 64):
        assert await bus.get_blob(bad) is None


# ------------------------------------------------------------------------------------ reply streams
async def test_reply_streams_expire_and_are_capped(bus: Bus, monkeypatch: pytest.MonkeyPatch) -> None:
    bus.reply_ttl = 120
    await bus.emit("r1", 1, "status", {"state": "started"})
    assert 0 < await bus.redis.ttl(KEYS.events("r1")) <= 120  # a job whose worker dies still expires
    await bus.emit("r1", 1, "delta", {"text": "a"})
    await bus.emit("r1", 1, "done", {"text": "a"})
    assert 0 < await bus.redis.ttl(KEYS.events("r1")) <= 120
    monkeypatch.setattr(protocol, "REPLY_MAXLEN", 50)
    for i in range(600):
        await bus.emit("r2", 1, "delta", {"text": str(i)})
    assert await bus.redis.xlen(KEYS.events("r2")) < 300  # approximate trimming, but bounded


async def test_every_event_carries_the_attempt(settings: Settings, bus: Bus, worker: Worker) -> None:
    job = Job(kind="chat", payload={"messages": [{"role": "user", "content": "hello"}]})
    await bus.submit(job)
    events = await _final(bus, job.id)
    assert events[-1].type == "done"
    assert {e.attempt for e in events} == {1}
    assert [e.type for e in events][:2] == ["status", "delta"]
    await bus.emit("other", 7, "delta", {"text": "x"})
    assert (await bus.read_events("other"))[0].attempt == 7
    done = events[-1].data
    assert done["usage"]["prompt_tokens"] > 0 and done["usage"]["completion_tokens"] > 0
    assert set(done["timings"]) >= {"queue_ms", "ttft_ms", "total_ms", "tokens_per_s"}
    assert (await bus.final_event(job.id)).type == "done"
    assert await bus.final_event("nothing") is None


async def _final(bus: Bus, job_id: str, limit_s: float = 10) -> list[Event]:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        events = await bus.read_events(job_id)
        if events and events[-1].final:
            return events
        await asyncio.sleep(0.02)
    raise AssertionError(f"no final event for {job_id}")


# ------------------------------------------------------------------------------------ queue and workers
async def test_no_worker_alive(settings: Settings, bus: Bus) -> None:
    assert await bus.alive_workers() == []
    job = Job(kind="chat", payload={"messages": [{"role": "user", "content": "hi"}]})
    await bus.submit(job)
    assert await bus.queue_position(job.id) == 1
    assert await bus.queue_depth() == 1

    chat = ChatHandler(bus, HistoryStore(bus.redis), ConfStore(bus.redis, settings), settings)
    chat.notice_after, chat.no_worker_timeout = 0.1, 0.6
    reply = await chat.ask(Request(conversation="p:none", text="anyone?"))
    async with asyncio.timeout(10):
        updates = [u async for u in chat.follow(reply)]
    assert "no_worker" in [u.kind for u in updates]
    assert updates[-1].kind == "error" and updates[-1].data["code"] == "no_worker"
    assert await bus.is_cancelled(reply.job.id)  # a worker that starts later will not run it
    assert [t.role for t in await chat.history.recent("p:none")] == ["user"]


async def test_queued_behind_a_busy_worker(settings: Settings, bus: Bus) -> None:
    engine = TestEngine(token_delay=0.05)
    w = Worker(settings.model_copy(update={"worker_concurrency": 1}), bus, engine, worker_id="busy")
    task = asyncio.create_task(w.run())
    try:
        long = Job(kind="chat", payload={"messages": [{"role": "user", "content": "[[repeat:400]]"}]})
        await bus.submit(long)
        async with asyncio.timeout(10):
            async for event in bus.events(long.id, block_ms=50):
                if event is not None:
                    break
        [info] = await bus.alive_workers()
        assert (info.worker_id, info.engine, info.concurrency) == ("busy", "test", 1)

        chat = ChatHandler(bus, HistoryStore(bus.redis), ConfStore(bus.redis, settings), settings)
        chat.notice_after = 0.1
        reply = await chat.ask(Request(conversation="p:busy", text="me next"))
        positions = []
        async with asyncio.timeout(10):
            async for update in chat.follow(reply):
                if update.kind == "queued":
                    positions.append(update.position)
                    if len(positions) == 2:
                        await bus.cancel(long.id)  # frees the worker
                if update.final:
                    break
        assert positions and positions[0] >= 1
        assert update.kind == "done" and update.text.startswith("echo: me next")
        assert await bus.queue_position(reply.job.id) is None  # delivered
    finally:
        w.stop()
        await asyncio.wait_for(task, 10)
    assert await bus.alive_workers() == []  # unregistered on stop


# ------------------------------------------------------------------------------------ takeover bookkeeping
async def test_claims_heartbeats_and_takeover(bus: Bus) -> None:
    job = Job(kind="chat", payload={})
    await bus.submit(job)
    [claimed] = await bus.claim_new("a", 10, block_ms=10)
    assert claimed.job == job
    assert await bus.claim_stale("b", 10_000, 10) == []  # not stale yet
    await asyncio.sleep(0.4)
    assert await bus.heartbeat_jobs("a", [claimed.entry_id]) == []  # a still owns it; idle reset
    assert await bus.claim_stale("b", 300, 10) == []
    await asyncio.sleep(0.4)
    [taken] = await bus.claim_stale("b", 300, 10)  # a stopped heartbeating: b takes over
    assert taken.job == job
    # a comes back to life: its heartbeat must not steal the job back; it learns it lost it.
    assert await bus.heartbeat_jobs("a", [claimed.entry_id]) == [claimed.entry_id]
    [pending] = await bus.redis.xpending_range(KEYS.jobs, KEYS.group, "-", "+", 10)
    assert pending["consumer"] == "b"
    assert await bus.next_attempt(job.id) == 1
    assert await bus.next_attempt(job.id) == 2


async def test_release_hands_back_at_once_and_counts(bus: Bus) -> None:
    job = Job(kind="chat", payload={})
    await bus.submit(job)
    [claimed] = await bus.claim_new("a", 10, block_ms=10)
    await bus.release("a", [claimed.entry_id], idle_ms=60_000, job_ids=[job.id])
    [taken] = await bus.claim_stale("b", 60_000, 10)  # no need to wait for the visibility timeout
    assert taken.job == job
    assert await bus.handbacks(job.id) == 1
    assert await bus.handbacks("other") == 0


async def test_stale_entries_deleted_from_the_stream_are_cleared(bus: Bus) -> None:
    """Redis 6.2 keeps a trimmed entry pending forever and XAUTOCLAIM returns it as nil; the bus acks it
    instead of choking on it, and still finds the stale job behind it."""
    gone = await bus.redis.xadd(KEYS.jobs, Job(kind="chat", payload={}).encode())
    job = Job(kind="chat", payload={})
    await bus.submit(job)
    assert len(await bus.claim_new("dead", 10, block_ms=10)) == 2
    await bus.redis.xdel(KEYS.jobs, gone)
    await asyncio.sleep(0.03)
    [taken] = await bus.claim_stale("b", 10, 10)
    assert taken.job == job
    [pending] = await bus.redis.xpending_range(KEYS.jobs, KEYS.group, "-", "+", 10)
    assert pending["message_id"] == taken.entry_id


async def test_stale_scan_reaches_past_many_healthy_jobs(bus: Bus) -> None:
    for _ in range(40):
        await bus.submit(Job(kind="chat", payload={}))
    healthy = await bus.claim_new("alive", 40, block_ms=10)
    stale = Job(kind="chat", payload={})
    await bus.submit(stale)
    await bus.claim_new("dead", 1, block_ms=10)
    await asyncio.sleep(0.06)
    found = []
    for _ in range(10):  # a worker checks every second or so; the cursor moves on between checks
        await bus.heartbeat_jobs("alive", [c.entry_id for c in healthy])
        found += await bus.claim_stale("taker", 50, 1)
        if found:
            break
    assert [c.job.id for c in found] == [stale.id]


async def test_oversized_raw_entries_are_refused_by_the_worker_side(bus: Bus) -> None:
    bus.max_job_bytes = 1000
    await bus.redis.xadd(KEYS.jobs, {"id": "big", "kind": "chat", "payload": json.dumps({"x": "y" * 5000})})
    [claimed] = await bus.claim_new("a", 10, block_ms=10)
    assert claimed.job is None and isinstance(claimed.error, PayloadTooLarge)
    assert "payload" not in claimed.raw and claimed.raw["id"] == "big"


# ------------------------------------------------------------------------------------ following a reply
async def test_follow_restarts_and_ignores_stale_attempts(settings: Settings, bus: Bus) -> None:
    """A stalled worker's late events (attempt 1) must not mix into the answer of the worker that took the
    job over (attempt 2), nor end the reply with its `done`."""
    chat = ChatHandler(bus, HistoryStore(bus.redis), ConfStore(bus.redis, settings), settings)
    reply = await chat.ask(Request(conversation="p:stale", text="q"))
    job = reply.job.id
    for attempt, type_, data in [
        (1, "status", {"state": "started"}),
        (1, "delta", {"text": "a"}),
        (1, "delta", {"text": "b"}),
        (2, "status", {"state": "started"}),
        (2, "delta", {"text": "x"}),
        (1, "delta", {"text": "c"}),
        (1, "done", {"text": "abc"}),
        (2, "delta", {"text": "y"}),
        (2, "done", {"text": "xy"}),
    ]:
        await bus.emit(job, attempt, type_, data)
    async with asyncio.timeout(5):
        updates = [(u.kind, u.text, u.attempt) async for u in chat.follow(reply)]
    assert updates == [
        ("started", "", 1),
        ("text", "a", 1),
        ("text", "ab", 1),
        ("restart", "", 2),
        ("text", "x", 2),
        ("text", "xy", 2),
        ("done", "xy", 2),
    ]
    assert [(t.role, t.content) for t in await chat.history.recent("p:stale")] == [("user", "q"), ("assistant", "xy")]


async def test_follow_dead_letter_error_has_no_restart(settings: Settings, bus: Bus) -> None:
    chat = ChatHandler(bus, HistoryStore(bus.redis), ConfStore(bus.redis, settings), settings)
    reply = await chat.ask(Request(conversation="p:dead", text="q"))
    await bus.emit(reply.job.id, 1, "status", {})
    await bus.emit(reply.job.id, 4, "error", {"message": "gave up", "code": "dead_letter"})
    async with asyncio.timeout(5):
        updates = [u async for u in chat.follow(reply)]
    assert [u.kind for u in updates] == ["started", "error"]
    assert [t.role for t in await chat.history.recent("p:dead")] == ["user"]


async def test_shared_reader_serves_new_and_duplicate_followers_at_once(
    bus: Bus, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Many replies of a process share one blocking read; a reply followed while that read blocks is
    served at once (the wake stream), and two readers of one reply both get every event."""
    monkeypatch.setattr(protocol, "SHARED_READ_FROM", 0)  # share from the first reply on

    async def collect(job_id: str, into: list[Event]) -> None:
        async for event in bus.events(job_id, block_ms=100):
            if event is not None:
                into.append(event)
                if event.final:
                    return

    first: list[Event] = []
    task1 = asyncio.create_task(collect("j1", first))
    await asyncio.sleep(0.3)  # the shared read now blocks on j1 alone
    second: list[Event] = []
    twin: list[Event] = []
    task2 = asyncio.create_task(collect("j2", second))
    task3 = asyncio.create_task(collect("j2", twin))
    await asyncio.sleep(0.05)
    began = time.monotonic()
    await bus.emit("j2", 1, "delta", {"text": "a"})
    await bus.emit("j2", 1, "done", {"text": "a"})
    async with asyncio.timeout(5):
        await asyncio.gather(task2, task3)
    assert time.monotonic() - began < 1.0  # not after the 5 s block of the shared read
    assert [e.type for e in second] == [e.type for e in twin] == ["delta", "done"]
    await bus.emit("j1", 1, "done", {})
    async with asyncio.timeout(5):
        await task1
    assert [e.type for e in first] == ["done"]


async def test_queue_positions_move_as_jobs_are_claimed(bus: Bus) -> None:
    assert await bus.queue_position("nothing") is None
    jobs = [Job(kind="chat", payload={"messages": [], "big": "x" * 10_000}) for _ in range(3)]
    for job in jobs:
        await bus.submit(job)
    assert [await bus.queue_position(j.id) for j in jobs] == [1, 2, 3]
    await bus.claim_new("w", 1, block_ms=10)
    assert [await bus.queue_position(j.id) for j in jobs] == [None, 1, 2]
    assert await bus.queue_depth() == 2


async def test_mixed_direct_and_shared_readers(bus: Bus, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(protocol, "SHARED_READ_FROM", 2)  # two read alone, the rest share

    async def collect(job_id: str) -> list[str]:
        texts = []
        async for event in bus.events(job_id, block_ms=100):
            if event is not None:
                texts.append(event.data.get("text", ""))
                if event.final:
                    return texts
        return texts

    tasks = [asyncio.create_task(collect(f"m{i}")) for i in range(6)]
    await asyncio.sleep(0.1)
    assert bus._alone == 2 and len(bus._reader.subs) == 4
    for n in range(3):
        for i in range(6):
            await bus.emit(f"m{i}", 1, "done" if n == 2 else "delta", {"text": f"{i}.{n}"})
    async with asyncio.timeout(5):
        results = await asyncio.gather(*tasks)
    assert results == [[f"{i}.0", f"{i}.1", f"{i}.2"] for i in range(6)]
