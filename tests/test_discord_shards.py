"""Sharding: DISCORD_SHARD_COUNT / DISCORD_SHARD_IDS reach discord.py's AutoShardedBot, the gateway sees the
shard in IDENTIFY, and after a restart a bot resumes only the replies of its own shards.

The fake Discord sends every guild to every session (it does not route by shard), so one process with one
shard of two is enough to check what the bot asks for and what it resumes.
"""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import pytest

from bot.client import ShardingError, shard_options
from bot.resume import owns
from handlers.active_replies import ActiveRecord, ActiveReplies
from models.settings import Settings
from models.worker import make_bus
from tests.fakediscord import Harness
from tests.fakediscord.fixtures import BotRunner
from tests.fakediscord.harness import visible_text

pytestmark = pytest.mark.timeout(60)


def _settings(**values: object) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[arg-type]


def test_shard_settings() -> None:
    assert shard_options(_settings()) == {}  # Discord's recommendation (one shard for small bots)
    assert shard_options(_settings(discord_shard_count=4)) == {"shard_count": 4}
    assert shard_options(_settings(discord_shard_count=4, discord_shard_ids="3, 1,1")) == {
        "shard_count": 4,
        "shard_ids": [1, 3],
    }
    with pytest.raises(ShardingError, match="DISCORD_SHARD_COUNT"):
        shard_options(_settings(discord_shard_ids="1"))
    with pytest.raises(ShardingError, match=r"\[4\]"):
        shard_options(_settings(discord_shard_count=4, discord_shard_ids="0,4"))


def owned(bot: SimpleNamespace, record: ActiveRecord) -> bool:
    return owns(record, instance_id=bot.instance_id, shard_count=bot.shard_count, shard_ids=bot.shard_ids)


def test_resume_takes_only_its_own_shards() -> None:
    guild = 1 << 22  # shard (guild >> 22) % count
    record = ActiveRecord(
        job_id="j", kind="chat", conversation="c", record=True, guild=guild, where={"instance": "earlier"}
    )
    dm = ActiveRecord(job_id="k", kind="chat", conversation="d", record=True, guild=None, where={"instance": "earlier"})
    bot = SimpleNamespace(instance_id="now", shard_count=2, shard_ids=[1])
    assert owned(bot, record) and not owned(bot, dm)  # DMs arrive on shard 0
    bot = SimpleNamespace(instance_id="now", shard_count=2, shard_ids=[0])
    assert not owned(bot, record) and owned(bot, dm)
    bot = SimpleNamespace(instance_id="now", shard_count=2, shard_ids=None)  # all shards in this process
    assert owned(bot, record) and owned(bot, dm)
    bot = SimpleNamespace(instance_id="earlier", shard_count=1, shard_ids=None)
    assert not owned(bot, record)  # streaming right now, in this process


async def test_one_shard_of_two_identifies_answers_and_resumes_only_its_own(
    discord_harness: Harness, discord_bot: BotRunner
) -> None:
    h = discord_harness
    settings = discord_bot.make_settings()
    guild_shard = (h.guild.id >> 22) % 2
    mine = 1  # DMs (shard 0) are never this process's
    # Replies left behind by an earlier bot process, long enough ago that their answers count as lost.
    bus = make_bus(settings)
    try:
        active = ActiveReplies(bus, None, settings)  # type: ignore[arg-type]
        old = time.time() - 120
        for rec in (
            ActiveRecord(
                job_id="a" * 32,
                kind="chat",
                conversation="g",
                record=False,
                guild=h.guild.id,
                where={"channel_id": h.general.id, "instance": "earlier"},
                started=old,
            ),
            ActiveRecord(
                job_id="b" * 32,
                kind="chat",
                conversation="dm",
                record=False,
                guild=None,
                where={"channel_id": h.dm(h.alice).id, "instance": "earlier"},
                started=old,
            ),
        ):
            await active._write(rec)
        bot = await discord_bot.start(discord_shard_count=2, discord_shard_ids=str(mine))
        assert bot.shard_count == 2 and bot.shard_ids == [mine]
        assert [i.get("shard") for i in h.server.identifies] == [[mine, 2]]
        msg = await h.send(h.general, h.alice, f"{h.bot.mention} hello shard")
        [answer] = await discord_bot.reply(msg)
        assert "hello shard" in visible_text(answer)
        # On ready the bot resumed what its shard owns (the guild's reply, if the guild is on shard 1: its
        # answer is lost, so a notice), and left the DM's reply (shard 0) to the process running shard 0.
        await h.wait_for(lambda: bot.resumed_replies, timeout=15)
        pending = {r.job_id for r in await active.pending()}
        if guild_shard == mine:
            notice = await h.wait_for(
                lambda: [m for m in h.bot_messages(h.general) if "⚠️" in visible_text(m)], timeout=15
            )
            # The notice and the removal of the resumed record are two writes; read the records once both are done.
            for _ in range(50):
                pending = {r.job_id for r in await active.pending()}
                if pending == {"b" * 32}:
                    break
                await asyncio.sleep(0.1)
            assert notice and pending == {"b" * 32}
        else:
            assert pending == {"a" * 32, "b" * 32}
            assert not [m for m in h.bot_messages(h.general) if "⚠️" in visible_text(m)]
        assert h.bot_messages(h.dm(h.alice)) == []
    finally:
        await bus.close()
