"""Chat models routed to the workers that serve them (`CHAT_MODELS`, `WORKER_MODELS`, models/routing.py), through
a real Redis with in-process workers and real worker processes: a job lands only on a worker serving its model,
a takeover after kill -9 stays with that model, a model nobody serves gets a friendly reply at once, and one
worker serving two models never runs more than its concurrency."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from conftest import ROOT, subprocess_env
from worker_procs import WorkerProc, pid_of, repeat_text, wait_alive

from handlers.chat import ChatHandler, Request, Update
from handlers.history import HistoryStore
from handlers.overrides import ConfError, ConfStore
from models import routing
from models.engines import build_engines
from models.protocol import KEYS, Bus, Job
from models.settings import Settings
from models.worker import Worker, build_worker

MODELS = "alpha=test,beta=test"
GUILD, CHANNEL = 10, 20


@pytest.fixture
def routed(settings: Settings) -> Settings:
    return settings.model_copy(update={"chat_models": MODELS})


@pytest.fixture
def chat(routed: Settings, bus: Bus) -> ChatHandler:
    return ChatHandler(bus, HistoryStore(bus.redis), ConfStore(bus.redis, routed), routed)


@contextlib.asynccontextmanager
async def running(settings: Settings, bus: Bus, worker_id: str, models: str) -> AsyncIterator[Worker]:
    worker = build_worker(settings.model_copy(update={"worker_models": models.split(",")}), bus)
    worker.worker_id = worker_id
    task = asyncio.create_task(worker.run())
    try:
        async with asyncio.timeout(10):
            while worker_id not in {w.worker_id for w in await bus.alive_workers()}:  # noqa: ASYNC110 (Redis)
                await asyncio.sleep(0.02)
        yield worker
    finally:
        worker.stop()
        await asyncio.wait_for(task, 30)


async def answer(chat: ChatHandler, conversation: str, text: str, channel: int = CHANNEL) -> list[Update]:
    reply = await chat.ask(Request(conversation=conversation, text=text, guild=GUILD, channel=channel))
    async with asyncio.timeout(20):
        return [u async for u in chat.follow(reply)]


async def who_answered(bus: Bus, job_id: str) -> set[str]:
    return {e.data.get("worker", "") for e in await bus.read_events(job_id) if e.type == "status"}


# ------------------------------------------------------------------------------------------ the list
def test_chat_models_are_read_as_deployers_write_them() -> None:
    specs = routing.parse_chat_models(
        " internlm3=openai:http://gpu1:23333/v1 , qwen2.5:7b=openai ,"
        "s1=lmdeploy:internlm/Intern-S1-mini, tiny=llamacpp:/m/x.gguf, plain,"
    )
    assert [(s.name, s.engine, s.target) for s in specs] == [
        ("internlm3", "openai", "http://gpu1:23333/v1"),
        ("qwen2.5:7b", "openai", ""),
        ("s1", "lmdeploy", "internlm/Intern-S1-mini"),
        ("tiny", "llamacpp", "/m/x.gguf"),
        ("plain", "", ""),
    ]
    assert routing.public_target("http://user:key@gpu1:23333/v1") == "http://gpu1:23333"
    for bad in ("a=b", "x y", "a,a", "a=llamacpp", "@x", "a" * 101):
        with pytest.raises(routing.ModelListError):
            routing.parse_chat_models(bad)
    with pytest.raises(ValueError, match=r"chat_models(.|\n)*bad name"):  # fails at startup, naming the entry
        Settings(_env_file=None, chat_models="good,bad name")


def test_one_model_changes_nothing_and_workers_serve_what_they_say(settings: Settings) -> None:
    for one in ("", "internlm3=openai:http://h:1/v1"):
        single = settings.model_copy(update={"chat_models": one})
        assert not routing.routed(single) and routing.job_model(single, "anything") == ""
        assert [routing.route(single, s) for s in routing.worker_models(single)] == [""]
    assert routing.single_model_name(settings.model_copy(update={"engine": "openai", "chat_model": "m7"})) == "m7"
    two = settings.model_copy(update={"chat_models": "first,second=test,third"})
    assert routing.job_model(two, None) == "first" and routing.job_model(two, "second") == "second"
    assert routing.job_model(two, "removed-since") == "first"  # an old choice falls back, it does not fail
    assert [s.name for s in routing.worker_models(two)] == ["first", "second"]  # bare default + specified
    assert [s.name for s in routing.worker_models(two.model_copy(update={"worker_models": ["third"]}))] == ["third"]
    with pytest.raises(routing.ModelListError, match="nope"):
        routing.worker_models(two.model_copy(update={"worker_models": ["nope"]}))
    engines = build_engines(two.model_copy(update={"worker_models": ["first", "second"]}))
    assert list(engines) == ["first", "second"] and [e.model for e in engines.values()] == ["first", "second"]


async def test_a_job_goes_on_its_models_stream(routed: Settings, bus: Bus, chat: ChatHandler) -> None:
    await chat.conf.set_model(ConfStore.scope(guild=GUILD), "beta")
    with pytest.raises(ConfError, match="alpha, beta"):
        await chat.conf.set_model(ConfStore.scope(guild=GUILD), "gamma")
    reply = await chat.ask(Request(conversation="r:stream", text="hi", guild=GUILD, channel=CHANNEL))
    assert reply.job.model == "beta"
    assert await bus.redis.xlen(KEYS.jobs_for("beta")) == 1
    assert await bus.redis.xlen(KEYS.jobs) == 0  # nothing on the default stream nor alpha's
    assert await bus.redis.xlen(KEYS.jobs_for("alpha")) == 0
    [(_id, fields)] = await bus.redis.xrange(KEYS.jobs_for("beta"))
    assert Job.decode(fields).model == "beta"
    assert "model" not in Job(kind="chat", payload={}).encode()  # single-model envelopes are unchanged


# ------------------------------------------------------------------------------------------ routing
async def test_each_job_lands_only_on_a_worker_serving_its_model(routed: Settings, bus: Bus, chat: ChatHandler) -> None:
    """Two workers, two models; the channel override beats the server's; each answer comes from the right
    worker and says so (the test engine names its model)."""
    await chat.conf.set_model(ConfStore.scope(guild=GUILD), "alpha")
    await chat.conf.set_model(ConfStore.scope(channel=CHANNEL + 1), "beta")
    async with running(routed, bus, "wa", "alpha"), running(routed, bus, "wb", "beta"):
        infos = {w.worker_id: w.models for w in await bus.alive_workers()}
        assert infos == {"wa": ["alpha"], "wb": ["beta"]}
        results = await asyncio.gather(*[answer(chat, f"r:{i}", f"q{i}", channel=CHANNEL + (i % 2)) for i in range(8)])
        for i, updates in enumerate(results):
            model, worker = ("beta", "wb") if i % 2 else ("alpha", "wa")
            final = updates[-1]
            assert final.kind == "done", final
            assert final.text.strip().endswith(f"model={model})"), final.text
        jobs = [await bus.redis.xrange(KEYS.jobs_for(m)) for m in ("alpha", "beta")]
        assert [len(j) for j in jobs] == [4, 4]
        for worker, entries in (("wa", jobs[0]), ("wb", jobs[1])):
            for _id, fields in entries:
                assert await who_answered(bus, fields["id"]) == {worker}
        assert await bus.running_count("alpha") == 0 and await bus.running_count("beta") == 0  # all acked


async def test_a_model_nobody_serves_gets_a_friendly_reply_at_once(
    routed: Settings, bus: Bus, chat: ChatHandler
) -> None:
    chat.notice_after = 0.2
    await chat.conf.set_model(ConfStore.scope(channel=CHANNEL), "beta")
    async with running(routed, bus, "only-alpha", "alpha"):
        loop = asyncio.get_running_loop()
        started = loop.time()
        updates = await answer(chat, "r:unserved", "anyone?")
        assert loop.time() - started < 5  # not the 30 s no-worker wait, and no hang
        final = updates[-1]
        assert final.kind == "error" and final.data["code"] == "model_unserved" and final.data["model"] == "beta"
        assert "beta" in final.data["message"] and "/model" in final.data["message"]
        [(_id, fields)] = await bus.redis.xrange(KEYS.jobs_for("beta"))
        assert await bus.is_cancelled(fields["id"])  # a beta worker starting later will not run it
        assert not await who_answered(bus, fields["id"])  # the alpha worker never touched it
        # The other model still answers in the same deployment.
        await chat.conf.set_model(ConfStore.scope(channel=CHANNEL), "alpha")
        assert (await answer(chat, "r:unserved", "and now?"))[-1].kind == "done"


async def test_one_worker_serving_two_models_keeps_its_concurrency(routed: Settings, bus: Bus) -> None:
    for model in ("alpha", "beta"):
        for i in range(3):
            await bus.submit(Job(kind="chat", model=model, payload={"messages": [{"role": "user", "content": f"{i}"}]}))
    await bus.ensure_group(["alpha", "beta"])
    claimed = await bus.claim_new("c1", 2, block_ms=10, models=["alpha", "beta"])
    assert len(claimed) == 2 and await bus.running_count() == 0  # bus.models is empty: the default only
    assert await bus.running_count("alpha") + await bus.running_count("beta") == 2
    assert all(c.job is not None and c.job.model == c.model for c in claimed)
    # Entry references tell the streams apart (two streams can hold the same entry id); acks reach the right one.
    for item in claimed:
        assert item.entry_id.startswith(item.model + "@")
        await bus.ack(item.entry_id)
    assert await bus.running_count("alpha") + await bus.running_count("beta") == 0
    # Round robin: the next claim starts with the other stream.
    assert claimed[0].model == claimed[1].model  # the first stream asked had enough for both slots
    nxt = await bus.claim_new("c1", 1, block_ms=10, models=["alpha", "beta"])
    assert len(nxt) == 1 and nxt[0].model != claimed[0].model


async def test_entries_beyond_the_free_slots_are_handed_back_not_lost(routed: Settings, bus: Bus) -> None:
    """A blocking read on two streams can return one entry of each; a worker with one free slot keeps one and
    hands the other back, which the next takeover scan (any worker serving it) picks up at once."""
    await bus.ensure_group(["alpha", "beta"])
    waiting = asyncio.create_task(bus.claim_new("c1", 1, block_ms=3000, models=["alpha", "beta"]))
    await asyncio.sleep(0.3)  # the XREADGROUP is blocked on both streams
    jobs = [Job(kind="chat", model=m, payload={}) for m in ("alpha", "beta")]
    async with bus.redis.pipeline(transaction=True) as pipe:  # both arrive before the blocked read is served
        for job in jobs:
            pipe.xadd(KEYS.jobs_for(job.model), job.encode())
        await pipe.execute()
    got = await waiting
    assert len(got) == 1
    other = next(j for j in jobs if j.model != got[0].model)
    # Redis may have served the blocked read with one stream's entry only (the other is still new) or with
    # both (the extra one was handed back): either way c1 holds one, and the other goes to the next worker.
    assert await bus.running_count(got[0].model) == 1
    retaken = await bus.claim_stale("c2", 1000, 5, models=[other.model])
    retaken += await bus.claim_new("c2", 5, block_ms=10, models=[other.model])
    assert [c.job.id for c in retaken if c.job] == [other.id]


async def test_a_job_on_the_wrong_stream_is_refused_not_run(routed: Settings, bus: Bus) -> None:
    job = Job(kind="chat", model="beta", payload={"messages": [{"role": "user", "content": "x"}]})
    await bus.redis.xadd(KEYS.jobs_for("alpha"), job.encode())  # by hand, past `submit`
    async with running(routed, bus, "wa", "alpha"):
        async with asyncio.timeout(10):
            while not [e for e in await bus.read_events(job.id) if e.final]:  # noqa: ASYNC110 (Redis)
                await asyncio.sleep(0.05)
    [event] = await bus.read_events(job.id)
    assert event.type == "error" and event.data["code"] == "bad_job" and "beta" in event.data["message"]


async def test_dead_letters_on_a_models_stream(routed: Settings, bus: Bus) -> None:
    """A job on beta's stream that already failed JOB_MAX_ATTEMPTS times (its workers died) is dead-lettered by
    the beta worker, acknowledged on beta's stream, and its reader told — as on the single job stream."""
    job = Job(kind="chat", model="beta", payload={"messages": [{"role": "user", "content": "x"}]})
    await bus.submit(job)
    await bus.redis.set(KEYS.attempts(job.id), routed.job_max_attempts)  # three earlier attempts died
    async with running(routed, bus, "wb", "beta"):
        async with asyncio.timeout(10):
            while not [e for e in await bus.read_events(job.id) if e.final]:  # noqa: ASYNC110 (Redis)
                await asyncio.sleep(0.05)
        [event] = [e for e in await bus.read_events(job.id) if e.final]
        assert event.type == "error" and event.data["code"] == "dead_letter"
        [dead] = await bus.dead_letters()
        assert dead["id"] == job.id and dead["model"] == "beta"
        assert await bus.running_count("beta") == 0  # acked on its own stream


# ------------------------------------------------------------------------------------------ processes
async def test_takeover_after_kill9_stays_with_the_model(
    routed: Settings, bus: Bus, chat: ChatHandler, tmp_path: Path, procs: list[WorkerProc]
) -> None:
    """Two real alpha workers and one beta worker.  The alpha worker running a job is killed mid-answer: the
    other alpha worker takes it over (attempt 2), the beta worker never touches it, and the answer is whole."""
    env = {"CHAT_MODELS": MODELS, "JOB_VISIBILITY_TIMEOUT": "1.5", "TEST_ENGINE_TOKEN_DELAY": "0.03"}
    alphas = [WorkerProc(routed, tmp_path, f"alpha{i}", WORKER_MODELS="alpha", **env) for i in range(2)]
    beta = WorkerProc(routed, tmp_path, "beta", WORKER_MODELS="beta", **env)
    procs.extend([*alphas, beta])
    await wait_alive(bus, procs)
    await chat.conf.set_model(ConfStore.scope(guild=GUILD), "alpha")
    reply = await chat.ask(Request(conversation="r:kill", text="[[repeat:40]]", guild=GUILD, channel=CHANNEL))
    killed: list[int] = []

    async def kill_first_owner() -> None:
        async for event in bus.events(reply.job.id, block_ms=100):
            if event is not None and event.type == "delta" and event.attempt == 1:
                [owner] = await who_answered(bus, reply.job.id)
                proc = next(p for p in alphas if p.pid == pid_of(owner))
                proc.kill()
                killed.append(proc.pid)
                return

    killer = asyncio.create_task(kill_first_owner())
    async with asyncio.timeout(40):
        updates = [u async for u in chat.follow(reply)]
    await killer
    final = updates[-1]
    assert final.kind == "done" and final.attempt == 2, (final, [p.log() for p in procs])
    assert final.text == repeat_text(40)
    owners = {pid_of(w) for w in await who_answered(bus, reply.job.id)}
    survivor = next(p for p in alphas if p.pid not in killed)
    assert owners == {killed[0], survivor.pid}  # both alpha workers, never the beta one
    assert await bus.running_count("alpha") == 0
    # The beta worker is alive and answers its own model meanwhile.
    await chat.conf.set_model(ConfStore.scope(channel=CHANNEL), "beta")
    updates = await answer(chat, "r:kill-beta", "still there?")
    assert updates[-1].kind == "done" and updates[-1].text.strip().endswith("model=beta)")
    [(_id, fields)] = await bus.redis.xrange(KEYS.jobs_for("beta"))
    assert {pid_of(w) for w in await who_answered(bus, fields["id"])} == {beta.pid}


@pytest.mark.slow  # a worker process
def test_a_worker_asked_for_an_unknown_model_says_so_and_exits(settings: Settings) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "models.worker"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=subprocess_env(settings, CHAT_MODELS=MODELS, WORKER_MODELS="zeta"),
        timeout=60,
    )
    assert done.returncode == 1
    assert "WORKER_MODELS" in done.stderr and "zeta" in done.stderr and "Traceback" not in done.stderr


# ------------------------------------------------------------------------------------------ status
@pytest.mark.slow  # `python -m bot status` processes
async def test_bot_status_lists_the_models_and_who_serves_them(routed: Settings, bus: Bus) -> None:
    """`python -m bot status` as a real process: each routed model, the workers serving it, what waits for it."""
    await bus.submit(Job(kind="chat", model="beta", payload={"messages": [{"role": "user", "content": "x"}]}))
    env = subprocess_env(routed, CHAT_MODELS=MODELS)
    async with running(routed, bus, "st-alpha", "alpha"):
        for args in ((), ("--json",)):
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bot",
                "status",
                *args,
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            out = (await asyncio.wait_for(proc.communicate(), 60))[0].decode()
            assert proc.returncode == 0, out
            if args:
                data = json.loads(out)
                assert data["models"] == [
                    {"name": "alpha", "workers": 1, "waiting": 0},
                    {"name": "beta", "workers": 0, "waiting": 1},
                ]
                assert data["workers"][0]["models"] == ["alpha"] and data["queue_depth"] == 1
            else:
                assert "Models: alpha (1 worker, 0 waiting), beta (NOT SERVED" in out, out
                assert "models alpha" in out
