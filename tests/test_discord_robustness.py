"""End to end: the bot under pressure — many replies in one channel, a queue, deleted replies, 429 storms."""

from __future__ import annotations

import asyncio

import pytest

from tests.fakediscord import Harness
from tests.fakediscord.fixtures import BotRunner, reply_finished
from tests.fakediscord.harness import visible_text

pytestmark = pytest.mark.timeout(60)


async def test_ten_replies_in_one_channel_stay_under_the_rate_limit(
    discord_harness: Harness, discord_bot: BotRunner
) -> None:
    h = discord_harness
    h.server.rate_limits = True
    users = [h.add_user(f"user{i}") for i in range(10)]
    await discord_bot.start(test_engine_token_delay=0.04, worker_concurrency=10)
    sent = [await h.send(h.general, u, f"{h.bot.mention} q{i} [[repeat:30]]") for i, u in enumerate(users)]
    words = [f"w{k}" for k in range(30)]

    def all_done() -> bool:
        msgs = h.bot_messages(h.general)
        by_ref = {m.reference["message_id"]: m for m in msgs if m.reference}
        return len(by_ref) == 10 and all(
            reply_finished([m]) and visible_text(m).split() == words for m in by_ref.values()
        )

    def state() -> str:
        return (
            "\n".join(
                f"{m.reference and m.reference['message_id']}: {m.custom_ids} {visible_text(m)[-40:]!r}"
                for m in h.bot_messages(h.general)
            )
            + f"\nstatuses: {[c.status for c in h.calls]}"
        )

    await h.wait_for(all_done, timeout=45, message="ten complete replies", describe=state)
    assert {m.reference["message_id"] for m in h.bot_messages(h.general)} == {str(m.id) for m in sent}
    assert not [c for c in h.calls if c.status == 429], "the per-channel budget should prevent 429s"
    assert not h.errors()


async def test_queue_notice_while_the_worker_is_busy(discord_harness: Harness, discord_bot: BotRunner) -> None:
    h = discord_harness
    await discord_bot.start(test_engine_token_delay=0.1, worker_concurrency=1)
    busy = await h.send(h.general, h.alice, f"{h.bot.mention} [[repeat:20]]")
    await h.wait_for(lambda: h.bot_messages(h.general, after=busy), message="the first reply")
    waiting = await h.send(h.random, h.bob, f"{h.bot.mention} me too")

    def queued() -> bool:
        msgs = h.bot_messages(h.random, after=waiting)
        return bool(msgs) and "1" in visible_text(msgs[0]) and "me too" not in visible_text(msgs[0])

    await h.wait_for(queued, timeout=10, message="a queue notice with the position")
    [reply] = await discord_bot.reply(waiting, until=lambda ms: "me too" in visible_text(ms[0]))
    assert "turns=1" in visible_text(reply) and reply.reference["message_id"] == str(waiting.id)
    assert any("1" in visible_text(v) and "me too" not in visible_text(v) for v in reply.versions)  # it was the notice


async def test_reply_deleted_mid_stream_is_written_anew(discord_harness: Harness, discord_bot: BotRunner) -> None:
    h = discord_harness
    await discord_bot.start(test_engine_token_delay=0.04)
    msg = await h.send(h.general, h.alice, f"{h.bot.mention} [[repeat:60]]")
    first = await h.wait_for(lambda: next(iter(h.bot_messages(h.general, after=msg)), None))
    await h.delete(first)  # a moderator deletes the reply while it streams
    replies = await discord_bot.reply(msg, until=lambda ms: "w59" in visible_text(ms[-1]))
    assert visible_text(replies[-1]).split() == [f"w{k}" for k in range(60)]
    assert first.deleted and first not in replies


async def test_a_storm_of_429s_still_ends_with_the_whole_answer(
    discord_harness: Harness, discord_bot: BotRunner
) -> None:
    h = discord_harness
    await discord_bot.start(test_engine_token_delay=0.03)
    msg = await h.send(h.general, h.alice, f"{h.bot.mention} [[repeat:60]]")
    await h.wait_for(lambda: h.bot_messages(h.general, after=msg))
    # More 429s in a row than discord.py retries (5): some edits fail outright.
    h.server.force_429(8, retry_after=0.1, method="PATCH", route="/messages/")
    [reply] = await discord_bot.reply(msg, until=lambda ms: "w59" in visible_text(ms[0]), timeout=30)
    assert visible_text(reply).split() == [f"w{k}" for k in range(60)]
    assert len([c for c in h.calls if c.status == 429]) == 8


async def test_guild_locale_chooses_the_language_of_notices(discord_harness: Harness, discord_bot: BotRunner) -> None:
    h = discord_harness
    h.guild.preferred_locale = "zh-CN"
    await discord_bot.start(max_input_chars=10)
    msg = await h.send(h.general, h.alice, f"{h.bot.mention} this is far too long")
    [reply] = await discord_bot.reply(msg)
    assert any("\u4e00" <= ch <= "\u9fff" for ch in visible_text(reply))
    inter = await h.slash("chat", {"prompt": "this is far too long"}, user=h.alice, locale="en-US")
    await h.response(inter)
    assert inter.original.ephemeral and not any("\u4e00" <= ch <= "\u9fff" for ch in visible_text(inter.original))


async def test_no_permission_to_send_is_survived(discord_harness: Harness, discord_bot: BotRunner) -> None:
    from tests.fakediscord.state import SEND_MESSAGES, Overwrite

    h = discord_harness
    bot_role = next(r for r in h.guild.roles.values() if r.managed)
    muted = await h.create_channel("read-only", overwrites=[Overwrite(bot_role.id, 0, deny=SEND_MESSAGES)])
    await discord_bot.start()
    await h.send(muted, h.alice, f"{h.bot.mention} can you hear me?")
    await asyncio.sleep(1.0)
    assert h.bot_messages(muted) == []
    probe = await h.send(h.general, h.alice, f"{h.bot.mention} still alive?")
    [reply] = await discord_bot.reply(probe)
    assert "still alive" in visible_text(reply)


async def test_gateway_resume_mid_stream(discord_harness: Harness, discord_bot: BotRunner) -> None:
    """Discord asks the bot to reconnect (op 7) while a reply streams: it resumes, nothing is lost or doubled."""
    h = discord_harness
    await discord_bot.start(test_engine_token_delay=0.03)
    msg = await h.send(h.general, h.alice, f"{h.bot.mention} [[repeat:50]]")
    await h.wait_for(lambda: h.bot_messages(h.general, after=msg))
    await h.server.reconnect_gateway()
    missed = await h.send(h.random, h.bob, f"{h.bot.mention} sent while reconnecting")
    [reply] = await discord_bot.reply(msg)
    [other] = await discord_bot.reply(missed)
    assert visible_text(reply).split() == [f"w{k}" for k in range(50)]
    assert "sent while reconnecting" in visible_text(other)
    assert len(h.server.identifies) == 1 and any(p.get("op") == 6 for _, p in h.server.gateway_log)
    assert len(h.bot_messages(h.random)) == 1
