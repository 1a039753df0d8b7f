"""Per-conversation history in a real Redis: order, bounds, TTL, reset, atomic regenerate, speaker names,
persistence of the embedded Redis across a restart; and fitting history into the context window."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from handlers.chat import ChatHandler, Reply, Request, Update
from handlers.history import HistoryStore, Turn, conversation_id
from handlers.overrides import ConfStore
from models.engines.base import ChatMessage
from models.engines.testing import TestEngine
from models.prompting import fit_messages
from models.protocol import KEYS, Bus
from models.redis_server import EmbeddedRedis, connect
from models.settings import Settings
from models.worker import Worker


def turns(n: int) -> list[Turn]:
    return [Turn("user" if i % 2 == 0 else "assistant", f"turn {i}") for i in range(n)]


async def test_order_and_bound(bus: Bus) -> None:
    store = HistoryStore(bus.redis, max_turns=4)
    for turn in turns(3):
        await store.append("h:order", turn)
    assert [t.content for t in await store.recent("h:order")] == ["turn 0", "turn 1", "turn 2"]
    await store.append("h:order", *turns(10)[3:])  # several at once, still atomic and trimmed
    assert [t.content for t in await store.recent("h:order")] == ["turn 6", "turn 7", "turn 8", "turn 9"]
    assert await bus.redis.llen(KEYS.history("h:order")) == 4
    assert [t.content for t in await store.recent("h:order", limit=2)] == ["turn 8", "turn 9"]
    assert await store.recent("h:other") == []


async def test_settings_bound_is_used_by_the_handler(settings: Settings, bus: Bus) -> None:
    settings = settings.model_copy(update={"history_max_turns": 6})
    store = HistoryStore(bus.redis, max_turns=settings.history_max_turns)
    chat = ChatHandler(bus, store, ConfStore(bus.redis, settings), settings)
    for i in range(5):
        reply = await chat.ask(Request(conversation="h:handler", text=f"q{i}"))
        await store.append("h:handler", Turn("assistant", f"a{i}"))
    assert len(reply.job.payload["messages"]) == 6  # the job carries at most the bound
    assert [t.content for t in await store.recent("h:handler")] == ["q2", "a2", "q3", "a3", "q4", "a4"]


async def test_ttl(bus: Bus) -> None:
    forever = HistoryStore(bus.redis, ttl=0)
    await forever.append("h:forever", Turn("user", "x"))
    assert await bus.redis.ttl(KEYS.history("h:forever")) == -1
    week = HistoryStore(bus.redis, ttl=7 * 24 * 3600)
    await week.append("h:week", Turn("user", "x"))
    assert 7 * 24 * 3600 - 5 <= await bus.redis.ttl(KEYS.history("h:week")) <= 7 * 24 * 3600
    short = HistoryStore(bus.redis, ttl=1)
    await short.append("h:short", Turn("user", "x"))
    await asyncio.sleep(1.2)
    assert await short.recent("h:short") == []


async def test_reset(bus: Bus) -> None:
    store = HistoryStore(bus.redis)
    await store.append("h:reset", *turns(5))
    await store.append("h:keep", *turns(2))
    assert await store.reset("h:reset") == 5
    assert await store.recent("h:reset") == []
    assert await store.reset("h:reset") == 0
    assert len(await store.recent("h:keep")) == 2


async def test_pop_last_assistant_is_atomic(bus: Bus) -> None:
    store = HistoryStore(bus.redis)
    await store.append("h:pop", *turns(4))  # user, assistant, user, assistant
    popped = await asyncio.gather(*(store.pop_last_assistant("h:pop") for _ in range(5)))
    assert [p.content for p in popped if p is not None] == ["turn 3"]
    assert [t.content for t in await store.recent("h:pop")] == ["turn 0", "turn 1", "turn 2"]
    assert await store.pop_last_assistant("h:pop") is None  # the last turn is a user turn
    assert await store.pop_last_assistant("h:empty") is None


async def test_two_concurrent_regenerates_remove_one_answer(settings: Settings, bus: Bus) -> None:
    store = HistoryStore(bus.redis)
    chat = ChatHandler(bus, store, ConfStore(bus.redis, settings), settings)
    await store.append(
        "h:regen", Turn("user", "q1"), Turn("assistant", "a1"), Turn("user", "q2"), Turn("assistant", "a2")
    )
    replies = await asyncio.gather(*(chat.regenerate(Request(conversation="h:regen", text="")) for _ in range(2)))
    assert [t.content for t in await store.recent("h:regen")] == ["q1", "a1", "q2"]
    for reply in replies:  # both answer the same last question, from the same history
        assert reply is not None
        assert [m["content"] for m in reply.job.payload["messages"]] == ["q1", "a1", "q2"]
    assert await chat.regenerate(Request(conversation="h:nothing", text="")) is None


async def test_speaker_names_in_shared_channels(settings: Settings, bus: Bus) -> None:
    store = HistoryStore(bus.redis)
    chat = ChatHandler(bus, store, ConfStore(bus.redis, settings), settings)
    conv = conversation_id(guild=1, channel=2)
    await chat.ask(Request(conversation=conv, text="hi all", user_name="Alice"))
    await store.append(conv, Turn("assistant", "hello Alice"))
    reply = await chat.ask(Request(conversation=conv, text="and me?", user_name="Bob"))
    assert [m["content"] for m in reply.job.payload["messages"]] == ["Alice: hi all", "hello Alice", "Bob: and me?"]
    dm = await chat.ask(Request(conversation=conversation_id(dm_user=5), text="private"))
    assert dm.job.payload["messages"][-1]["content"] == "private"  # no name where there is one speaker
    stored = await store.recent(conv)
    assert stored[0].content == "hi all" and stored[0].name == "Alice"  # the raw text is kept


def test_conversation_ids_are_distinct() -> None:
    ids = {
        conversation_id(guild=1, channel=2),
        conversation_id(guild=1, channel=3),
        conversation_id(dm_user=2),
        conversation_id(console="2"),
        conversation_id(guild=None, channel=2),
    }
    assert len(ids) == 5


async def test_undecodable_turns_are_skipped(bus: Bus) -> None:
    store = HistoryStore(bus.redis)
    await store.append("h:junk", Turn("user", "ok"))
    await bus.redis.rpush(KEYS.history("h:junk"), "{not json", '{"content": "no role"}')
    assert [t.content for t in await store.recent("h:junk")] == ["ok"]


async def test_history_survives_an_embedded_redis_restart(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first, second = EmbeddedRedis(data), EmbeddedRedis(data)
    try:
        client = connect(first.start())
        await HistoryStore(client).append("h:disk", Turn("user", "remember me"), Turn("assistant", "I will"))
        await client.aclose()
        first.stop()
        assert list(data.glob("appendonly*")), "no AOF written"
        client = connect(second.start())
        assert second.process is not None  # a new server, not the old one reused
        assert [t.content for t in await HistoryStore(client).recent("h:disk")] == ["remember me", "I will"]
        await client.aclose()
    finally:
        first.stop()
        second.stop()


# ------------------------------------------------------------------------------ recording answers
def make_chat(bus: Bus, settings: Settings) -> ChatHandler:
    """A handler as one bot process holds it (two of them = two processes sharing Redis)."""
    return ChatHandler(bus, HistoryStore(bus.redis), ConfStore(bus.redis, settings), settings)


async def final_of(chat: ChatHandler, reply: Reply) -> Update:
    async with asyncio.timeout(20):
        return [u async for u in chat.follow(reply)][-1]


async def test_record_answer_is_once_per_job_and_generation_checked(bus: Bus) -> None:
    store = HistoryStore(bus.redis, ttl=600)
    await store.append("h:rec", Turn("user", "q"))
    _turns, gen = await store.snapshot("h:rec")
    assert gen == 0
    answer = Turn("assistant", "a", meta={"job": "j1"})
    outcomes = await asyncio.gather(
        *(store.record_answer("h:rec", answer, job_id="j1", generation=gen, marker_ttl=60) for _ in range(5))
    )
    assert sorted(outcomes) == ["duplicate"] * 4 + ["recorded"]
    assert [t.content for t in await store.recent("h:rec")] == ["q", "a"]
    assert await store.answer_recorded("j1") and not await store.answer_recorded("j2")
    assert 50 <= await bus.redis.ttl(KEYS.answer_recorded("j1")) <= 60
    assert await bus.redis.ttl(KEYS.history("h:rec")) > 500  # the history TTL is refreshed as by append
    # A reset starts a new generation: an answer asked for before it is not recorded after it.
    assert await store.reset("h:rec") == 2
    assert (await store.snapshot("h:rec"))[1] == await store.generation("h:rec") == 1
    stale = await store.record_answer("h:rec", Turn("assistant", "late"), job_id="j2", generation=gen, marker_ttl=60)
    assert stale == "stale" and await store.recent("h:rec") == []
    assert not await store.answer_recorded("j2")  # not marked: nothing was written
    assert (
        await store.record_answer("h:rec", Turn("assistant", "new"), job_id="j3", generation=1, marker_ttl=60)
        == "recorded"
    )
    # No generation (a resume record of an older version): no check, still once per job.
    assert (
        await store.record_answer("h:rec", Turn("assistant", "old"), job_id="j4", generation=None, marker_ttl=60)
        == "recorded"
    )
    assert [t.content for t in await store.recent("h:rec")] == ["new", "old"]


async def test_two_followers_of_one_job_record_one_answer(
    settings: Settings, bus: Bus, engine: TestEngine, worker: Worker
) -> None:
    """Two bot processes following the same reply (a deploy overlap, a resume racing the old process): both
    show the answer, history gets it once."""
    engine.token_delay = 0.01
    first, second = make_chat(bus, settings), make_chat(bus, settings)
    reply = await first.ask(Request(conversation="h:twice", text="[[repeat:20]]"))
    twin = Reply(reply.job, Request(conversation="h:twice", text=""), generation=reply.generation)
    finals = await asyncio.gather(final_of(first, reply), final_of(second, twin))
    assert [f.kind for f in finals] == ["done", "done"] and finals[0].text == finals[1].text
    turns = await first.history.recent("h:twice")
    assert [t.role for t in turns] == ["user", "assistant"]
    assert turns[1].meta["job"] == reply.job.id
    assert (await final_of(second, twin)).kind == "done"  # a third reading later: still once
    assert len(await first.history.recent("h:twice")) == 2


async def test_reset_while_an_answer_streams_is_not_recorded(
    settings: Settings, bus: Bus, engine: TestEngine, worker: Worker
) -> None:
    """`/reset` mid-answer, from any process: the answer still completes for the reader, but the cleared
    history does not start with an answer to a question it no longer holds."""
    engine.token_delay = 0.02
    chat, other = make_chat(bus, settings), make_chat(bus, settings)
    await chat.history.append("h:mid", Turn("user", "old q"), Turn("assistant", "old a"))
    reply = await chat.ask(Request(conversation="h:mid", text="[[repeat:30]]"))
    assert reply.generation == 0
    updates: list[Update] = []
    async with asyncio.timeout(20):
        async for update in chat.follow(reply):
            updates.append(update)
            if update.kind == "text" and len(updates) == 3:
                assert await other.reset("h:mid") == 3  # another process (e.g. the console) resets it
    assert updates[-1].kind == "done" and updates[-1].text.split() == [f"w{i}" for i in range(30)]
    assert await chat.history.recent("h:mid") == []
    again = await chat.ask(Request(conversation="h:mid", text="hello"))
    assert again.generation == 1
    assert (await final_of(chat, again)).text.startswith("echo: hello (turns=1")
    assert [t.role for t in await chat.history.recent("h:mid")] == ["user", "assistant"]


async def test_the_history_write_finishes_when_the_reader_stops_at_done(
    settings: Settings, bus: Bus, worker: Worker
) -> None:
    """The answer is written while the front end shows `done`: a reader that stops there and closes the
    generator (as the Discord streamer does) still finds it in history at once; one that is cancelled
    while closing, or never closes, does not lose it."""
    chat = make_chat(bus, settings)

    async def until_done(reply: Reply) -> Update:
        updates = chat.follow(reply)
        async for update in updates:
            if update.final:
                await updates.aclose()  # type: ignore[attr-defined]
                return update
        raise AssertionError("no final update")

    reply = await chat.ask(Request(conversation="h:close", text="[[say:one]]"))
    async with asyncio.timeout(20):
        assert (await until_done(reply)).kind == "done"
    assert [t.content for t in await chat.history.recent("h:close")] == ["[[say:one]]", "one"]

    # A slow write (held at a gate) while the reader closing the generator is cancelled (the bot shutting
    # down at that moment): the write is not cancelled with it.
    gate = asyncio.Event()

    class SlowHistory(HistoryStore):
        async def record_answer(self, *args: Any, **kwargs: Any) -> Any:
            await gate.wait()
            return await super().record_answer(*args, **kwargs)

    chat = ChatHandler(bus, SlowHistory(bus.redis), chat.conf, settings)
    reply = await chat.ask(Request(conversation="h:lost", text="[[say:kept]]"))
    async with asyncio.timeout(20):
        updates = chat.follow(reply)
        async for update in updates:
            if update.final:
                break
        closing = asyncio.ensure_future(updates.aclose())  # type: ignore[attr-defined]
        await asyncio.sleep(0.05)
        assert not closing.done()  # waiting for the write
        closing.cancel()
        await asyncio.gather(closing, return_exceptions=True)
        gate.set()
        await chat.drain()
    assert [t.content for t in await chat.history.recent("h:lost")][-1] == "kept"
    # A reader that stops at done and drops the generator without closing it does not lose the write.
    reply = await chat.ask(Request(conversation="h:dropped", text="[[say:kept too]]"))
    async with asyncio.timeout(20):
        async for update in chat.follow(reply):
            if update.final:
                break
        await chat.drain()
    assert [t.content for t in await chat.history.recent("h:dropped")][-1] == "kept too"
    assert not chat._recording


async def test_ask_reads_settings_and_history_with_its_write(settings: Settings, bus: Bus) -> None:
    """`ask` builds the job from the guild/channel settings and the history including the new turn, read
    in the same transaction as the turn's append."""
    chat = make_chat(bus, settings)
    await chat.conf.set(ConfStore.scope(guild=3), "temperature", "0.3")
    await chat.conf.set(ConfStore.scope(channel=4), "system_prompt", "be brief")
    await chat.history.append("h:ask", Turn("user", "q0"), Turn("assistant", "a0"))
    reply = await chat.ask(Request(conversation="h:ask", text="q1", guild=3, channel=4))
    payload = reply.job.payload
    assert payload["system"] == "be brief" and payload["params"]["temperature"] == 0.3
    assert [m["content"] for m in payload["messages"]] == ["q0", "a0", "q1"]
    assert reply.generation == 0
    loose = await chat.submit(Request(conversation="h:ask", text="alone", record=False))
    assert [m["content"] for m in loose.job.payload["messages"]] == ["alone"] and loose.generation is None
    assert "top_p" not in payload["params"]  # nobody set it: the worker fills in the loaded model's default
    assert len(await chat.history.recent("h:ask")) == 3  # the unrecorded request left history alone


# ------------------------------------------------------------------------------ fitting into the context
def msg(role: str, words: int, tag: str = "w") -> ChatMessage:
    return ChatMessage(role, " ".join(f"{tag}{i}" for i in range(words)))


def test_fit_keeps_the_newest_turns_that_fit() -> None:
    engine = TestEngine(context_window=200)  # tokens = words; a message costs words + 4, a list + 2
    history = [msg("user" if i % 2 == 0 else "assistant", 10, f"t{i}-") for i in range(9)]
    fitted = fit_messages(engine, "sys", history, reply_budget=100)
    assert fitted[0] == ChatMessage("system", "sys")
    assert fitted[1:] == history[-5:]  # 7 + 5 x 16 = 87 <= 100; a sixth would not fit
    assert engine.count_message_tokens(fitted) <= 200 - 100


def test_fit_drops_a_leading_assistant_turn() -> None:
    engine = TestEngine(context_window=200)
    history = [msg("user" if i % 2 == 0 else "assistant", 10, f"t{i}-") for i in range(9)]
    fitted = fit_messages(engine, "sys", history, reply_budget=120)  # room for 4: a, u, a, u
    assert [m.role for m in fitted] == ["system", "user", "assistant", "user"]
    assert fitted[1:] == history[-3:]


def test_fit_truncates_a_huge_last_turn_from_the_front() -> None:
    engine = TestEngine(context_window=300)
    huge = msg("user", 1000)
    fitted = fit_messages(engine, "sys", [msg("user", 5), msg("assistant", 5), huge], reply_budget=200)
    assert [m.role for m in fitted] == ["system", "user"]
    kept = fitted[1].content
    assert kept.startswith("…") and kept.endswith("w999")  # the end (usually the question) is kept
    assert engine.count_message_tokens(fitted) <= 300 - 200
    assert len(kept.split()) > 50  # and it uses the room it has


def test_fit_always_keeps_the_last_user_turn() -> None:
    engine = TestEngine(context_window=100)
    fitted = fit_messages(engine, "a long system prompt " * 20, [msg("user", 30)], reply_budget=90)
    assert fitted[-1].role == "user" and fitted[-1].content.endswith("w29")
    assert len(fitted[-1].content.split()) >= 10  # the question got real room, not just "…"
    assert fitted[0].role == "system" and fitted[0].content.startswith("a long system prompt")
    assert engine.count_message_tokens(fitted) <= 64  # the budget's floor


def test_fit_a_reply_budget_larger_than_the_window_keeps_half_for_the_prompt() -> None:
    engine = TestEngine(context_window=400)
    history = [msg("user" if i % 2 == 0 else "assistant", 10, f"t{i}-") for i in range(9)]
    fitted = fit_messages(engine, "sys", history, reply_budget=8192)
    assert len(fitted) > 5  # not just the last turn
    assert engine.count_message_tokens(fitted) <= 200
