"""A reply resumed after a bot restart keeps its job's chat model (handlers/active_replies.py), through a real
Redis and in-process workers that serve only their models (`CHAT_MODELS`, `WORKER_MODELS`).

Why it matters: a routed job waits in its model's own queue (`KEYS.jobs_for(model)`).  A record without the
model made the new bot process look for a still-queued job in the default queue, find nothing and report the
answer lost, and check whether the *default* model is served."""

from __future__ import annotations

import asyncio
import json

from test_model_routing import CHANNEL, GUILD, MODELS, running, who_answered

from handlers.active_replies import ActiveRecord, ActiveReplies
from handlers.chat import ChatHandler, Request
from handlers.history import HistoryStore
from handlers.overrides import ConfStore
from models.protocol import Bus
from models.settings import Settings


async def test_a_resumed_reply_keeps_its_model(settings: Settings, bus: Bus) -> None:
    routed = settings.model_copy(update={"chat_models": MODELS})
    history = HistoryStore(bus.redis)
    chat = ChatHandler(bus, history, ConfStore(bus.redis, routed), routed)
    await chat.conf.set_model(ConfStore.scope(channel=CHANNEL), "beta")
    # The old bot process: asks while no worker serves beta yet, starts showing the reply, dies.
    reply = await chat.ask(Request(conversation="resume:model", text="[[say:from beta]]", guild=GUILD, channel=CHANNEL))
    assert reply.job.model == "beta"
    await ActiveReplies(bus, history, routed).begin(reply, channel_id=CHANNEL, message_id=5)
    # The new process: the record says which model, so the job is found in beta's queue, not declared lost
    # (it is older than `lost_after`, so only its queue position can show it is still coming).
    active = ActiveReplies(bus, history, routed)
    [rec] = await active.pending()
    assert rec.model == "beta"
    active.lost_after = 0
    again = await active.reopen(rec)
    assert again is not None and again.job.model == "beta"
    async with running(routed, bus, "w-alpha", "alpha"), running(routed, bus, "w-beta", "beta"):
        async with asyncio.timeout(20):
            final = [u async for u in chat.follow(again)][-1]
        assert final.kind == "done" and final.text == "from beta"
        assert await who_answered(bus, reply.job.id) == {"w-beta"}
        await active.end(again)
        # Regenerate on the resumed answer asks the same model again (the channel's choice, as for any reply).
        regen = await chat.regenerate(Request(conversation="resume:model", text="", guild=GUILD, channel=CHANNEL))
        assert regen is not None and regen.job.model == "beta"
        async with asyncio.timeout(20):
            assert [u async for u in chat.follow(regen)][-1].text == "from beta"
        assert await who_answered(bus, regen.job.id) == {"w-beta"}


def test_a_record_written_before_the_model_field_decodes_as_the_default_model() -> None:
    old = {
        "job_id": "a" * 32,
        "kind": "chat",
        "conversation": "c",
        "record": True,
        "where": {"channel_id": 1},
        "started": 1.0,
        "generation": 0,
    }
    rec = ActiveRecord.decode(json.dumps(old))
    assert rec is not None and rec.model == ""
    assert (
        json.loads(ActiveRecord(job_id="b" * 32, kind="chat", conversation="c", record=True, model="beta").encode())[
            "model"
        ]
        == "beta"
    )
