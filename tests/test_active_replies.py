"""handlers/active_replies.py against a real Redis: what `begin`, `update` and `end` leave behind.

The writes are Lua scripts in the bus's shared pipeline and `update` adds to the record this process wrote
(no read back); these tests pin what that must not change: an update keeps what `begin` recorded, an
ended record stays gone (a late `update` must not bring it back, nor its conversation in the index), and a
process that did not begin a reply can still add to its record."""

from __future__ import annotations

import asyncio
import dataclasses
import json

from handlers.active_replies import ActiveRecord, ActiveReplies
from handlers.history import HistoryStore, Turn
from handlers.overrides import ConfStore
from handlers.types import Reply, Request
from models.protocol import KEYS, Bus, Job
from models.settings import Settings


def _reply(conversation: str) -> Reply:
    job = Job(kind="chat", payload={}, conversation=conversation)
    return Reply(job, Request(conversation=conversation, text="hi", guild=1, channel=2), generation=3)


async def _stored(bus: Bus, reply: Reply) -> ActiveRecord | None:
    raw = await bus.redis.hget(KEYS.active_reply(reply.request.conversation), reply.job.id)
    return ActiveRecord.decode(raw) if raw else None


async def test_update_adds_to_the_record_and_end_removes_it_for_good(settings: Settings, bus: Bus) -> None:
    active = ActiveReplies(bus, HistoryStore(bus.redis), settings)
    reply = _reply("active:one")
    await active.begin(reply, channel_id=2, reference_id=11, lang="en")
    await active.update(reply, message_id=12)
    stored = await _stored(bus, reply)
    assert stored is not None
    assert stored.where == {"channel_id": 2, "reference_id": 11, "lang": "en", "message_id": 12}
    assert stored.generation == 3 and stored.guild == 1 and stored.channel == 2
    assert [r.job_id for r in await active.pending()] == [reply.job.id]
    assert await bus.active_reply_count() == 1

    await active.end(reply)
    assert await _stored(bus, reply) is None
    assert await bus.active_reply_count() == 0  # the conversation left the index with its last record
    await active.update(reply, message_id=13)  # late (a send that finished after the end): stays gone
    assert await _stored(bus, reply) is None and await active.pending() == []
    assert await bus.active_reply_count() == 0


async def test_a_record_ended_elsewhere_is_not_brought_back(settings: Settings, bus: Bus) -> None:
    mine = ActiveReplies(bus, HistoryStore(bus.redis), settings)
    other = ActiveReplies(bus, HistoryStore(bus.redis), settings)  # e.g. a new process finishing the reply
    reply = _reply("active:two")
    await mine.begin(reply, channel_id=2)
    await other.end(reply)
    await mine.update(reply, message_id=14)
    assert await _stored(bus, reply) is None and await bus.active_reply_count() == 0


async def test_an_update_by_a_process_that_did_not_begin_the_reply(settings: Settings, bus: Bus) -> None:
    reply = _reply("active:three")
    await ActiveReplies(bus, HistoryStore(bus.redis), settings).begin(reply, channel_id=2)
    other = ActiveReplies(bus, HistoryStore(bus.redis), settings)
    await other.update(reply, message_id=15)
    stored = await _stored(bus, reply)
    assert stored is not None and stored.where == {"channel_id": 2, "message_id": 15}


async def test_a_burst_of_replies_and_their_ends(settings: Settings, bus: Bus) -> None:
    """32 at once share pipelines; each record is written, updated and removed as if alone."""
    active = ActiveReplies(bus, HistoryStore(bus.redis), settings)
    replies = [_reply(f"active:burst:{i % 8}") for i in range(32)]  # 4 replies per conversation
    await asyncio.gather(*(active.begin(r, channel_id=i) for i, r in enumerate(replies)))
    await asyncio.gather(*(active.update(r, message_id=100 + i) for i, r in enumerate(replies)))
    pending = {r.job_id: r for r in await active.pending()}
    assert len(pending) == 32 and await bus.active_reply_count() == 8
    assert all(pending[r.job.id].where == {"channel_id": i, "message_id": 100 + i} for i, r in enumerate(replies))
    await asyncio.gather(*(active.end(r) for r in replies[:31]))
    assert [r.job_id for r in await active.pending()] == [replies[31].job.id]
    assert await bus.active_reply_count() == 1


def test_encodings_match_the_dataclass_fields() -> None:
    """`encode` writes the fields without `asdict`; the JSON is the same (history's assistant-turn check
    reads the first key)."""
    rec = ActiveRecord(
        job_id="j" * 32,
        kind="chat",
        conversation="c",
        record=True,
        guild=1,
        channel=2,
        where={"channel_id": 2, "nested": {"a": [1, 2]}},
        generation=4,
    )
    assert rec.encode() == json.dumps(dataclasses.asdict(rec), separators=(",", ":"))
    assert ActiveRecord.decode(rec.encode()) == rec
    turn = Turn("assistant", "答え", images=["b" * 64], meta={"job": "x", "stopped": True})
    assert turn.encode() == json.dumps(dataclasses.asdict(turn), ensure_ascii=False, separators=(",", ":"))
    assert turn.encode().startswith('{"role":"assistant",')


async def test_claims_and_answers_through_the_shared_pipeline(bus: Bus) -> None:
    """The other writes of a reply that share the bus's pipeline: an event claimed once by a burst of
    claimers, an answer recorded once per job and only into its generation — also after Redis lost its
    scripts (restarted or flushed: the script is loaded again)."""
    claims = await asyncio.gather(*(bus.claim_event("message:42") for _ in range(16)))
    assert sorted(claims) == [False] * 15 + [True]
    assert 0 < await bus.redis.ttl(KEYS.event_claimed("message:42")) <= 900

    store = HistoryStore(bus.redis)
    await store.append("h:shared", Turn("user", "q"))
    answer = Turn("assistant", "a", meta={"job": "s1"})
    outcomes = await asyncio.gather(
        *(
            store.record_answer("h:shared", answer, job_id="s1", generation=0, marker_ttl=60, run_script=bus.run_script)
            for _ in range(5)
        )
    )
    assert sorted(outcomes) == ["duplicate"] * 4 + ["recorded"]
    await bus.redis.script_flush()
    assert (
        await store.record_answer(
            "h:shared", Turn("assistant", "b"), job_id="s2", generation=1, marker_ttl=60, run_script=bus.run_script
        )
        == "stale"
    )
    assert (
        await store.record_answer(
            "h:shared", Turn("assistant", "c"), job_id="s3", generation=0, marker_ttl=60, run_script=bus.run_script
        )
        == "recorded"
    )
    assert [t.content for t in await store.recent("h:shared")] == ["q", "a", "c"]


async def test_a_request_is_one_script_as_the_transaction_was(settings: Settings, bus: Bus) -> None:
    """`HistoryStore.request_round_trip` (what `ChatHandler.ask` sends): the appended turn is among the
    turns read, the generation comes with them, the override hashes are read in order, the history keeps
    its bound and TTL; and the settings read through the bus are the same as without it."""
    store = HistoryStore(bus.redis, max_turns=3, ttl=600)
    conf, batched = ConfStore(bus.redis, settings), ConfStore(bus.redis, settings, bus=bus)
    await conf.set(ConfStore.scope(guild=7), "temperature", "0.3")
    await conf.set(ConfStore.scope(channel=8), "system_prompt", "be brief")
    await store.append("h:req", Turn("user", "one"), Turn("assistant", "two"), Turn("user", "three"))
    await store.reset("h:req")
    await store.append("h:req", Turn("user", "a"), Turn("assistant", "b"), Turn("user", "c"))
    hashes = conf.scope_keys(guild=7, channel=8)
    for run_script in (None, bus.run_script):
        read, turns, generation = await store.request_round_trip(
            "h:req", append=Turn("user", "new", name="ann"), snapshot=True, hashes=hashes, run_script=run_script
        )
        assert read == [{"temperature": "0.3"}, {"system_prompt": "be brief"}]
        assert [t.content for t in turns][-1] == "new" and turns[-1].name == "ann" and len(turns) == 3
        assert generation == 1
    assert [t.content for t in await store.recent("h:req")] == ["c", "new", "new"]  # bounded to 3
    assert 500 < await bus.redis.ttl(KEYS.history("h:req")) <= 600
    read, turns, generation = await store.request_round_trip(
        "h:req", append=None, snapshot=False, hashes=[], run_script=bus.run_script
    )
    assert (read, turns, generation) == ([], [], None)
    assert len(await store.recent("h:req")) == 3  # nothing appended
    assert await batched.effective(guild=7, channel=8) == await conf.effective(guild=7, channel=8)
    eff = await batched.effective(guild=7, channel=8)
    assert eff.temperature == 0.3 and eff.system_prompt == "be brief"
