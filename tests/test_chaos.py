"""Chaos and load with real processes and a real Redis (issue 6).  Each test is bounded in time.

* kill -9 a worker mid-reply while the other one runs: every reply restarts or continues and completes,
  nothing accepted is lost, each conversation gets exactly one assistant turn;
* Redis restarted (AOF on) mid-traffic: workers and handlers reconnect; every request ends with an
  answer or an error (never silence) and every accepted job is completed;
* the bot process killed with replies in flight: a new process finds them (handlers/resume.py) and
  finishes them, recording each answer once; a lost answer is reported as such;
* load: 50 channels × 5 messages with 2 worker processes: every message answered exactly once, in order
  per channel, no cross-talk.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from conftest import ROOT, RedisServer, free_port, subprocess_env
from prometheus_client.parser import text_string_to_metric_families
from worker_procs import WorkerProc, pid_of, repeat_text, wait_alive

from handlers.active_replies import ActiveReplies
from handlers.chat import ChatHandler, Reply, Request, Update
from handlers.history import HistoryStore, Turn
from handlers.overrides import ConfStore
from models.protocol import Bus, Job
from models.redis_server import connect
from models.settings import Settings
from models.worker import Worker
from tests.fakediscord.harness import visible_text

VISIBILITY = "1.5"  # fast takeovers for tests; production uses 30 s


def spawn(procs: list[WorkerProc], settings: Settings, tmp_path: Path, n: int, **env: str) -> list[WorkerProc]:
    env = {"JOB_VISIBILITY_TIMEOUT": VISIBILITY, "TEST_ENGINE_TOKEN_DELAY": "0.02", **env}
    new = [WorkerProc(settings, tmp_path, f"{len(procs) + i}", **env) for i in range(n)]
    procs.extend(new)
    return new


def make_chat(bus: Bus, settings: Settings) -> ChatHandler:
    return ChatHandler(bus, HistoryStore(bus.redis), ConfStore(bus.redis, settings), settings)


async def follow_all(chat: ChatHandler, reply, sink: list[Update]) -> Update:  # type: ignore[no-untyped-def]
    async for update in chat.follow(reply):
        sink.append(update)
    return sink[-1]


# ------------------------------------------------------------------------------------------ kill -9
async def test_kill9_one_of_two_busy_workers(
    settings: Settings, bus: Bus, tmp_path: Path, procs: list[WorkerProc]
) -> None:
    ports = [free_port(), free_port()]
    workers = [
        spawn(procs, settings, tmp_path, 1, WORKER_METRICS_PORT=str(port), WORKER_CONCURRENCY="3")[0] for port in ports
    ]
    await wait_alive(bus, workers)
    chat = make_chat(bus, settings)
    n = 6
    replies = [await chat.ask(Request(conversation=f"kill:{i}", text="[[repeat:60]]")) for i in range(n)]
    sinks: list[list[Update]] = [[] for _ in range(n)]
    tasks = [asyncio.create_task(follow_all(chat, r, s)) for r, s in zip(replies, sinks, strict=True)]
    # Wait until both workers stream, then kill -9 the one running the first job.
    victim: WorkerProc | None = None
    async with asyncio.timeout(20):
        while victim is None:
            owners = {u.data.get("worker") for s in sinks for u in s if u.kind == "started"}
            texts = [s for s in sinks if any(u.kind == "text" for u in s)]
            if len(owners) == 2 and texts:
                first = next(u for u in texts[0] if u.kind == "started").data["worker"]
                victim = next(p for p in workers if p.pid == pid_of(first))
            await asyncio.sleep(0.02)
    victim.kill()
    survivor = next(p for p in workers if p is not victim)
    async with asyncio.timeout(60):
        finals = await asyncio.gather(*tasks)
    assert all(f.kind == "done" and f.text == repeat_text(60) for f in finals), [p.log() for p in workers]
    restarted = [s for s in sinks if any(u.kind == "restart" for u in s)]
    assert restarted  # the victim's replies restarted on the survivor
    for i in range(n):
        turns = await chat.history.recent(f"kill:{i}")
        assert [t.role for t in turns] == ["user", "assistant"], turns
        assert turns[1].content == repeat_text(60)
    # The survivor's metrics show the takeovers.
    survivor_port = ports[workers.index(survivor)]
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{survivor_port}/metrics") as r:
        text = await r.text()
    retries = sum(
        s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == "ilm_worker_retries_total"
    )
    assert retries >= len(restarted)
    assert survivor.proc.poll() is None


# ------------------------------------------------------------------------------------------ Redis restart
@pytest.fixture
def aof_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "aof", appendonly=True).start()
    yield server
    server.stop()


async def test_redis_restart_mid_traffic(aof_redis: RedisServer, tmp_path: Path, procs: list[WorkerProc]) -> None:
    settings = Settings(
        _env_file=None,
        redis_url=aof_redis.url,
        engine="test",
        data_dir=tmp_path / "d",
        job_visibility_timeout=float(VISIBILITY),
    )
    client = connect(aof_redis.url)
    bus = Bus(client)
    chat = make_chat(bus, settings)
    workers = spawn(procs, settings, tmp_path, 2, TEST_ENGINE_TOKEN_DELAY="0.01")
    await wait_alive(bus, workers)
    accepted: list[str] = []
    outcomes: dict[int, str] = {}

    async def user(i: int) -> None:
        await asyncio.sleep(i * 0.1)  # 30 requests over 3 s; Redis goes away at ~1 s for ~1 s
        try:
            reply = await chat.ask(Request(conversation=f"rr:{i}", text=f"[[say:answer {i}]]"))
        except Exception as exc:  # not accepted: the front end shows an error
            outcomes[i] = f"refused:{type(exc).__name__}"
            return
        accepted.append(reply.job.id)
        try:
            final = [u async for u in chat.follow(reply)][-1]
            outcomes[i] = "done" if final.kind == "done" and final.text == f"answer {i}" else f"error:{final.data}"
        except Exception as exc:  # the follower lost Redis for too long: the front end shows an error
            outcomes[i] = f"follow-error:{type(exc).__name__}"

    users = [asyncio.create_task(user(i)) for i in range(30)]
    await asyncio.sleep(1.0)
    aof_redis.stop()  # SIGTERM: Redis fsyncs its AOF and exits
    await asyncio.sleep(1.0)
    aof_redis.start()  # same port and directory: the AOF is replayed
    async with asyncio.timeout(90):  # never silence: every user hears back within the bound
        await asyncio.gather(*users)
    assert len(outcomes) == 30
    assert all(o == "done" or o.startswith(("refused", "error", "follow-error")) for o in outcomes.values())
    print("redis restart outcomes:", sorted(outcomes.values()))
    assert sum(o == "done" for o in outcomes.values()) >= 20, outcomes  # most are merely delayed
    # Nothing accepted is lost: every accepted job has a final event (the worker finished it).
    async with asyncio.timeout(30):
        for job_id in accepted:
            for _ in range(300):
                if await bus.final_event(job_id) is not None:
                    break
                await asyncio.sleep(0.1)
    # And the system still works.
    reply = await chat.ask(Request(conversation="rr:after", text="[[say:still here]]"))
    async with asyncio.timeout(20):
        assert [u async for u in chat.follow(reply)][-1].text == "still here"
    assert all(p.proc.poll() is None for p in workers)
    await bus.close()
    await client.aclose()


# ------------------------------------------------------------------------------------------ bot restart
OLD_BOT = """
import asyncio, sys
sys.path.insert(0, {root!r})
from handlers.chat import ChatHandler, Request
from handlers.overrides import ConfStore
from handlers.history import HistoryStore
from handlers.active_replies import ActiveReplies
from models.protocol import Bus, Job
from models.redis_server import connect
from models.settings import Settings
from models.worker import Worker

async def main():
    settings = Settings(_env_file=None, redis_url={url!r}, engine="test", job_visibility_timeout=1.5)
    bus = Bus(connect(settings.redis_url))
    history = HistoryStore(bus.redis)
    chat = ChatHandler(bus, history, ConfStore(bus.redis, settings), settings)
    active = ActiveReplies(bus, history, settings)
    reply = await chat.ask(Request(conversation="restart:1", text="[[repeat:80]]", guild=7, channel=70))
    await active.begin(reply, channel_id=70, reference_id=700)
    async for update in chat.follow(reply):
        if update.kind == "text":
            await active.update(reply, message_id=701)
            print(reply.job.id, flush=True)
            await asyncio.sleep(3600)  # killed here, mid-reply

asyncio.run(main())
"""


async def run_old_bot(settings: Settings) -> str:
    """Run OLD_BOT until it shows the first text of its reply, then kill -9 it; returns the job id."""
    old = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        OLD_BOT.format(root=str(ROOT), url=settings.redis_url),
        cwd=ROOT,
        env=subprocess_env(settings),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        async with asyncio.timeout(30):
            job_id = (await old.stdout.readline()).decode().strip()  # type: ignore[union-attr]
        assert len(job_id) == 32, job_id
    finally:
        with contextlib.suppress(ProcessLookupError):
            old.kill()  # kill -9 the old bot with the reply half-posted
        await old.wait()
    return job_id


async def test_bot_restart_resumes_replies(
    settings: Settings, bus: Bus, tmp_path: Path, procs: list[WorkerProc]
) -> None:
    workers = spawn(procs, settings, tmp_path, 1, TEST_ENGINE_TOKEN_DELAY="0.03")
    await wait_alive(bus, workers)
    job_id = await run_old_bot(settings)
    # The new bot process starts: it finds the reply, where it was shown, and finishes it.
    history = HistoryStore(bus.redis)
    chat = ChatHandler(bus, history, ConfStore(bus.redis, settings), settings)
    active = ActiveReplies(bus, history, settings)
    [rec] = await active.pending()
    assert rec.job_id == job_id and rec.where == {"channel_id": 70, "reference_id": 700, "message_id": 701}
    assert await active.pending(owns=lambda r: r.guild == 8) == []  # another shard's process skips it
    reply = await active.reopen(rec)
    assert reply is not None and reply.request.record
    async with asyncio.timeout(30):
        final = [u async for u in chat.follow(reply)][-1]
    assert final.kind == "done" and final.text == repeat_text(80)
    await active.end(reply)
    assert await active.pending() == []
    turns = await history.recent("restart:1")
    assert [t.role for t in turns] == ["user", "assistant"] and turns[1].content == repeat_text(80)


async def test_reset_while_the_bot_was_down_is_kept_after_the_restart(
    settings: Settings, bus: Bus, tmp_path: Path, procs: list[WorkerProc]
) -> None:
    """The bot dies mid-reply and the conversation is reset before the new process resumes the reply (from
    the console, another shard, or the new bot itself): the resumed answer is finished for the person but
    not recorded into the cleared history — the resume record carries the generation it was asked in."""
    workers = spawn(procs, settings, tmp_path, 1, TEST_ENGINE_TOKEN_DELAY="0.03")
    await wait_alive(bus, workers)
    await run_old_bot(settings)
    history = HistoryStore(bus.redis)
    chat = ChatHandler(bus, history, ConfStore(bus.redis, settings), settings)
    active = ActiveReplies(bus, history, settings)
    [rec] = await active.pending()
    assert rec.generation == 0
    assert await chat.reset("restart:1") == 1  # the question
    reply = await active.reopen(rec)
    assert reply is not None and reply.request.record and reply.generation == 0
    async with asyncio.timeout(30):
        final = [u async for u in chat.follow(reply)][-1]
    assert final.kind == "done" and final.text == repeat_text(80)
    await active.end(reply)
    assert await history.recent("restart:1") == []


async def test_resume_records_the_answer_once_and_reports_lost_ones(
    settings: Settings, bus: Bus, worker: Worker
) -> None:
    history = HistoryStore(bus.redis)
    chat = ChatHandler(bus, history, ConfStore(bus.redis, settings), settings)
    active = ActiveReplies(bus, history, settings)
    # The old process got as far as recording the answer, then died before `end`.
    reply = await chat.ask(Request(conversation="once:1", text="[[say:hello]]"))
    await active.begin(reply, channel_id=1)
    assert [u async for u in chat.follow(reply)][-1].kind == "done"
    [rec] = await active.pending()
    assert await active.answer_recorded(rec)
    again = await active.reopen(rec)
    assert again is not None and again.request.record  # recording is once per job: no need to turn it off
    final = [u async for u in chat.follow(again)][-1]
    assert final.kind == "done" and final.text == "hello"  # the message gets the answer…
    await active.end(rec)
    assert [t.role for t in await history.recent("once:1")] == ["user", "assistant"]  # …history gets it once
    # An answer an older version recorded without the per-job marker is found in history and marked.
    legacy = await chat.ask(Request(conversation="once:3", text="[[say:legacy]]"))
    await history.append("once:3", Turn("assistant", "legacy", meta={"job": legacy.job.id}))
    await active.begin(legacy, channel_id=3)
    [rec3] = [r for r in await active.pending() if r.job_id == legacy.job.id]
    rec3.generation = None  # a record written before generations existed
    again = await active.reopen(rec3)
    assert again is not None and again.generation is None
    assert [u async for u in chat.follow(again)][-1].text == "legacy"
    await active.end(rec3)
    assert [t.role for t in await history.recent("once:3")] == ["user", "assistant"]
    # A reply whose job is nowhere any more (stream expired, not queued) is reported lost, not followed.
    ghost = Reply(Job(kind="chat", payload={}, conversation="once:2"), Request(conversation="once:2", text="x"))
    await active.begin(ghost, channel_id=2)
    [rec] = await active.pending()
    active.lost_after = 0
    assert await active.reopen(rec) is None


# ------------------------------------------------------------------------------------------ load
async def test_load_50_channels_x_5_messages(
    settings: Settings, bus: Bus, tmp_path: Path, procs: list[WorkerProc]
) -> None:
    workers = spawn(procs, settings, tmp_path, 2, TEST_ENGINE_TOKEN_DELAY="0.002", WORKER_CONCURRENCY="16")
    await wait_alive(bus, workers)
    chat = make_chat(bus, settings)
    answers: dict[int, list[str]] = {c: [] for c in range(50)}

    async def channel(c: int) -> None:
        for m in range(1, 6):  # a person waits for the answer before writing again
            reply = await chat.ask(Request(conversation=f"load:{c}", text=f"c{c} m{m}", user_name=f"u{c}"))
            final = [u async for u in chat.follow(reply)][-1]
            assert final.kind == "done", final
            answers[c].append(final.text)

    started = time.monotonic()
    async with asyncio.timeout(60):
        await asyncio.gather(*(channel(c) for c in range(50)))
    elapsed = time.monotonic() - started
    for c in range(50):
        assert len(answers[c]) == 5
        for m, text in enumerate(answers[c], start=1):
            assert text.startswith(f"echo: u{c}: c{c} m{m} (turns={m},"), text  # its own message, in order
        turns = await chat.history.recent(f"load:{c}")
        assert [t.role for t in turns] == ["user", "assistant"] * 5  # each answered exactly once
        assert [t.content for t in turns[1::2]] == answers[c]
    print(f"load: 250 messages in {elapsed:.1f}s with 2 workers")


async def test_bot_restart_through_fake_discord(
    settings: Settings, bus: Bus, tmp_path: Path, procs: list[WorkerProc], discord_harness, discord_bot
) -> None:  # type: ignore[no-untyped-def]
    """The real bot restarted while a reply streams (the worker runs on in its own process): the new bot
    process edits the same Discord message to the complete answer; history gets it once."""
    from tests.fakediscord.fixtures import reply_finished, streaming

    h = discord_harness
    workers = spawn(procs, settings, tmp_path, 1, TEST_ENGINE_TOKEN_DELAY="0.05")
    await wait_alive(bus, workers)
    await discord_bot.start(embedded_worker=False)
    msg = await h.send(h.general, h.alice, f"{h.bot.mention} [[repeat:60]]")
    partial = await h.reply_to(msg, until=lambda m: streaming(m) and "w3" in h.text(m), quiet=0.0, timeout=20)
    first_id = partial[0].id
    await discord_bot.stop()  # the bot goes away mid-answer (a deploy, a crash) …
    for task in asyncio.all_tasks():  # … and with it the tasks it was answering in (a process would exit)
        if task.get_name().startswith(("discord.py:", "reply-writer-")):
            task.cancel()
    await asyncio.sleep(0.1)
    assert "w59" not in h.text(h.replies_to(msg))
    await discord_bot.start(embedded_worker=False)  # the new process finds the reply on ready
    final = await h.reply_to(msg, until=reply_finished, quiet=0.3, timeout=30)
    assert [m.id for m in final] == [first_id]  # the same message, edited — not a second answer
    assert visible_text(final[0]).strip() == repeat_text(60).strip()
    turns = await discord_bot.history(h.general)
    assert [t.role for t in turns] == ["user", "assistant"] and turns[1].content == repeat_text(60)
    assert await ActiveReplies(bus, HistoryStore(bus.redis), settings).pending() == []


async def test_load_through_fake_discord(
    settings: Settings, bus: Bus, tmp_path: Path, procs: list[WorkerProc], discord_harness, discord_bot
) -> None:  # type: ignore[no-untyped-def]
    """50 channels × 5 messages through the real bot and the fake Discord, 2 worker processes: each message
    gets exactly one reply, to itself, in order, with nothing from another channel."""
    from tests.fakediscord.fixtures import reply_finished

    h = discord_harness
    channels = [h.world.add_channel(h.guild, f"load-{c}") for c in range(50)]
    workers = spawn(procs, settings, tmp_path, 2, TEST_ENGINE_TOKEN_DELAY="0", WORKER_CONCURRENCY="16")
    await wait_alive(bus, workers)
    await discord_bot.start(embedded_worker=False, user_rate_limit="0/60")

    async def converse(c: int) -> None:
        for m in range(1, 6):  # a person waits for the answer before writing again
            msg = await h.send(channels[c], h.alice, f"{h.bot.mention} c{c} m{m}")
            replies = await h.reply_to(msg, until=reply_finished, quiet=0.0, timeout=50)
            assert len(replies) == 1 and replies[0].reference["message_id"] == str(msg.id)
            assert visible_text(replies[0]).startswith(f"echo: Alice: c{c} m{m} (turns={m},"), visible_text(replies[0])

    started = time.monotonic()
    async with asyncio.timeout(60):
        await asyncio.gather(*(converse(c) for c in range(50)))
    await asyncio.sleep(0.5)  # nothing more may arrive: exactly one reply per message
    for c, channel in enumerate(channels):
        bot_msgs = h.bot_messages(channel)
        assert len(bot_msgs) == 5, [visible_text(m) for m in bot_msgs]
        assert [visible_text(m).split(" (")[0] for m in bot_msgs] == [f"echo: Alice: c{c} m{m}" for m in range(1, 6)]
    print(f"load through Discord: 250 messages in {time.monotonic() - started:.1f}s")
