"""Per-conversation history in a real Redis: order, bounds, TTL, reset, atomic regenerate, speaker names,
persistence of the embedded Redis across a restart; and fitting history into the context window."""

from __future__ import annotations

import asyncio
from pathlib import Path

from handlers.chat import ChatHandler, Request
from handlers.conf import ConfStore
from handlers.history import HistoryStore, Turn, conversation_id
from models.engines.base import ChatMessage
from models.engines.testing import TestEngine
from models.prompting import fit_messages
from models.protocol import KEYS, Bus
from models.redis_server import EmbeddedRedis, connect
from models.settings import Settings


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
    await store.append("h:regen", Turn("user", "q1"), Turn("assistant", "a1"), Turn("user", "q2"),
                       Turn("assistant", "a2"))
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
    assert [m["content"] for m in reply.job.payload["messages"]] == ["Alice: hi all", "hello Alice",
                                                                    "Bob: and me?"]
    dm = await chat.ask(Request(conversation=conversation_id(dm_user=5), text="private"))
    assert dm.job.payload["messages"][-1]["content"] == "private"  # no name where there is one speaker
    stored = await store.recent(conv)
    assert stored[0].content == "hi all" and stored[0].name == "Alice"  # the raw text is kept


def test_conversation_ids_are_distinct() -> None:
    ids = {conversation_id(guild=1, channel=2), conversation_id(guild=1, channel=3),
           conversation_id(dm_user=2), conversation_id(console="2"), conversation_id(guild=None, channel=2)}
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
