"""End to end: the project's bot (real discord.py) chatting in the fake Discord, with Redis and a worker.

Where people talk to the bot and who it ignores; history across turns, threads, DMs and restarts.
ENGINE=test answers `echo: <last message> (turns=N, images=M)`, so the turn count shows what the model
was given.
"""

from __future__ import annotations

import asyncio
import re

import pytest

from tests.fakediscord import Harness
from tests.fakediscord.fixtures import REGEN_PREFIX, STOP_PREFIX, BotRunner
from tests.fakediscord.harness import visible_text

pytestmark = pytest.mark.timeout(60)


async def test_mention_typing_streamed_reply_referencing_the_message(
    discord_harness: Harness, discord_bot: BotRunner
) -> None:
    h = discord_harness
    # A slow first token (0.3 s, like a model still reading the prompt): the typing indicator shows while
    # nothing is visible (an answer there within 0.2 s needs none; tests/test_streamer.py pins that).
    await discord_bot.start(test_engine_token_delay=0.3)
    msg = await h.send(h.general, h.alice, f"{h.bot.mention} [[repeat:10]]")
    [reply] = await discord_bot.reply(msg)
    assert h.typing_calls(h.general), "the typing indicator was not shown"
    assert h.typing_calls(h.general)[0].at < reply.versions[0].at
    assert reply.reference is not None and reply.reference["message_id"] == str(msg.id)
    assert visible_text(reply).split() == [f"w{i}" for i in range(10)]
    # It grew by edits: the first version was partial, and there were several.
    assert len(reply.versions) >= 3
    assert len(visible_text(reply.versions[0])) < len(visible_text(reply))
    lengths = [len(visible_text(v)) for v in reply.versions]
    assert lengths == sorted(lengths)
    # Streaming carried Stop; the final message carries Regenerate instead.
    assert any(
        c.startswith(STOP_PREFIX)
        for v in reply.versions[:-1]
        for c in re.findall(r"'custom_id': '([^']+)'", str(v.payload.get("components")))
    )
    assert [c.split(":")[0:2] for c in reply.custom_ids] == [REGEN_PREFIX.rstrip(":").split(":")]
    assert not h.errors()


async def test_reply_to_bot_continues_the_conversation(discord_harness: Harness, discord_bot: BotRunner) -> None:
    h = discord_harness
    await discord_bot.start()
    first = await h.send(h.general, h.alice, f"{h.bot.mention} hello there")
    [answer] = await discord_bot.reply(first)
    assert "turns=1" in visible_text(answer)
    # A reply to the bot's message without mentioning it (ping off): still addressed to the bot.
    second = await h.send(h.general, h.bob, "and what about this?", reference=answer, mention_author=False)
    [answer2] = await discord_bot.reply(second)
    assert "turns=2" in visible_text(answer2) and "what about this" in visible_text(answer2)
    turns = await discord_bot.history(h.general)
    assert [t.role for t in turns] == ["user", "assistant", "user", "assistant"]
    assert [t.name for t in turns if t.role == "user"] == ["Alice", "Bob"]  # speakers told apart
    assert turns[-1].content == visible_text(answer2)


async def test_dm_conversation(discord_harness: Harness, discord_bot: BotRunner) -> None:
    h = discord_harness
    await discord_bot.start()
    dm = h.dm(h.alice)
    msg = await h.send(dm, h.alice, "hi in private")
    [reply] = await discord_bot.reply(msg)
    assert visible_text(reply).startswith("echo: hi in private") and "turns=1" in visible_text(reply)
    msg2 = await h.send(dm, h.alice, "again")
    [reply2] = await discord_bot.reply(msg2)
    assert "turns=2" in visible_text(reply2)
    turns = await discord_bot.history(dm, h.alice)
    assert len(turns) == 4 and turns[0].name is None  # no speaker names in a DM


async def test_dms_off_are_ignored(discord_harness: Harness, discord_bot: BotRunner) -> None:
    h = discord_harness
    await discord_bot.start(allow_dms=False)
    dm = h.dm(h.bob)
    await h.send(dm, h.bob, "hello?")
    probe = await h.send(h.general, h.bob, f"{h.bot.mention} ping")
    await discord_bot.reply(probe)
    assert h.bot_messages(dm) == [] and not h.typing_calls(dm)


async def test_chat_channel_answers_every_message(discord_harness: Harness, discord_bot: BotRunner) -> None:
    h = discord_harness
    await discord_bot.start(chat_channels=[h.random.id])
    msg = await h.send(h.random, h.alice, "no mention needed here")
    [reply] = await discord_bot.reply(msg)
    assert "no mention needed here" in visible_text(reply)
    # Elsewhere a plain message is not for the bot.
    await h.send(h.general, h.alice, "just talking")
    probe = await h.send(h.general, h.alice, f"{h.bot.mention} probe")
    replies = await discord_bot.reply(probe)
    assert len(replies) == 1 and "probe" in visible_text(replies[0])
    assert len(h.bot_messages(h.general)) == 1


async def test_thread_has_its_own_history(discord_harness: Harness, discord_bot: BotRunner) -> None:
    h = discord_harness
    await discord_bot.start()
    msg = await h.send(h.general, h.alice, f"{h.bot.mention} in the channel")
    await discord_bot.reply(msg)
    thread = await h.create_thread(h.general, "side topic", from_message=msg)
    tmsg = await h.send(thread, h.alice, f"{h.bot.mention} in the thread")
    [treply] = await discord_bot.reply(tmsg)
    assert treply.channel_id == thread.id and "turns=1" in visible_text(treply)
    assert len(await discord_bot.history(thread)) == 2


async def test_non_allowed_channel_and_other_bots_are_ignored(discord_harness: Harness, discord_bot: BotRunner) -> None:
    h = discord_harness
    await discord_bot.start(allowed_channels=[h.general.id])
    await h.send(h.random, h.alice, f"{h.bot.mention} over here")
    await h.send(h.general, h.other_bot, f"{h.bot.mention} bots talking to bots")
    own = await h.send(h.general, h.bot, f"{h.bot.mention} myself")  # as if its own message came back
    probe = await h.send(h.general, h.alice, f"{h.bot.mention} probe")
    replies = await discord_bot.reply(probe)
    await asyncio.sleep(0.5)  # anything the ignored messages would have caused has had its chance
    answers = [m for m in h.bot_messages(h.general) if m is not own]
    assert [m.reference["message_id"] for m in answers if m.reference] == [str(probe.id)] and len(answers) == 1
    assert "probe" in visible_text(replies[0])
    assert h.bot_messages(h.random) == [] and not h.typing_calls(h.random)
    assert len(await discord_bot.history(h.general)) == 2


async def test_over_long_input_gets_a_friendly_refusal(discord_harness: Harness, discord_bot: BotRunner) -> None:
    h = discord_harness
    await discord_bot.start(max_input_chars=50)
    msg = await h.send(h.general, h.alice, f"{h.bot.mention} " + "x" * 120)
    [reply] = await discord_bot.reply(msg)
    assert "120" in visible_text(reply) and "50" in visible_text(reply)  # says how long, and the limit
    assert reply.reference and reply.reference["message_id"] == str(msg.id)
    assert reply.components == []
    assert await discord_bot.history(h.general) == []  # nothing was queued or recorded


async def test_rate_limited_user_gets_a_friendly_reply(discord_harness: Harness, discord_bot: BotRunner) -> None:
    h = discord_harness
    await discord_bot.start(user_rate_limit="2/60")
    for i, channel in enumerate((h.general, h.random)):  # two channels: no waiting for a channel's write budget
        msg = await h.send(channel, h.alice, f"{h.bot.mention} question {i}")
        [reply] = await discord_bot.reply(msg)
        assert f"question {i}" in visible_text(reply)
    msg = await h.send(h.general, h.alice, f"{h.bot.mention} question 2")
    [refusal] = await discord_bot.reply(msg)
    assert "question 2" not in visible_text(refusal)
    seconds = [int(n) for n in re.findall(r"\d+", visible_text(refusal))]
    assert seconds and 0 < seconds[0] <= 60  # when to try again
    # Someone else is not affected.
    msg = await h.send(h.random, h.bob, f"{h.bot.mention} my turn")
    [reply] = await discord_bot.reply(msg)
    assert "my turn" in visible_text(reply)
    assert len(await discord_bot.history(h.general)) == 2 and len(await discord_bot.history(h.random)) == 4


async def test_restart_keeps_history_and_buttons(discord_harness: Harness, discord_bot: BotRunner) -> None:
    h = discord_harness
    await discord_bot.start()
    msg = await h.send(h.general, h.alice, f"{h.bot.mention} remember me")
    [answer] = await discord_bot.reply(msg)
    syncs = [c for c in h.calls if c.method == "PUT" and "commands" in c.route]
    await discord_bot.restart()
    # Commands unchanged: not synced again (Discord rate-limits syncs).
    assert [c for c in h.calls if c.method == "PUT" and "commands" in c.route] == syncs
    msg2 = await h.send(h.general, h.alice, "still there?", reference=answer)
    [answer2] = await discord_bot.reply(msg2)
    assert "turns=2" in visible_text(answer2)
    # The Regenerate button of a message sent before the restart still works.
    inter = await h.click(answer2, h.find_button(answer2, REGEN_PREFIX), user=h.alice)
    regenerated = await discord_bot.answer(inter)
    assert "turns=2" in visible_text(regenerated[0])
    assert len(await discord_bot.history(h.general)) == 4


async def test_reply_streaming_when_ready_fires_is_not_duplicated(
    discord_harness: Harness, discord_bot: BotRunner
) -> None:
    """Discord delivers messages before `on_ready` (which waits ~2 s for guilds): a reply that is
    streaming at that moment must not be picked up a second time by start-up work."""
    h = discord_harness
    bot = await discord_bot.start(test_engine_token_delay=0.05)
    assert not bot.is_ready()
    msg = await h.send(h.general, h.alice, f"{h.bot.mention} [[repeat:55]]")
    [reply] = await discord_bot.reply(msg)
    assert bot.is_ready()
    assert visible_text(reply).split() == [f"w{i}" for i in range(55)]
    assert len(h.bot_messages(h.general)) == 1
    assert [t.role for t in await discord_bot.history(h.general)] == ["user", "assistant"]


async def test_allowed_roles_and_the_bots_role_mention(discord_harness: Harness, discord_bot: BotRunner) -> None:
    h = discord_harness
    await discord_bot.start(allowed_roles=[h.admin_role.id])
    await h.send(h.general, h.alice, f"{h.bot.mention} I have no role")  # ignored: not in ALLOWED_ROLES
    bot_role = next(r for r in h.guild.roles.values() if r.managed)
    msg = await h.send(h.general, h.carol, f"{bot_role.mention} via the bot's role")
    [reply] = await discord_bot.reply(msg)
    assert "via the bot's role" in visible_text(reply) and bot_role.mention not in visible_text(reply)
    assert len(h.bot_messages(h.general)) == 1


async def test_image_refusal_on_a_mention_speaks_the_guild_language(
    discord_harness: Harness, discord_bot: BotRunner
) -> None:
    """An image the bot cannot take (an SVG, or any image with a text-only engine) is refused in 中文 in a
    guild whose locale is Chinese, like the bot's other notices."""
    h = discord_harness
    h.guild.preferred_locale = "zh-CN"
    await discord_bot.start()
    svg = b'<svg xmlns="http://www.w3.org/2000/svg"></svg>'
    msg = await h.send(
        h.general, h.alice, f"{h.bot.mention} what is this?", attachments=[("logo.svg", svg, "image/svg+xml")]
    )
    [reply] = await discord_bot.reply(msg)
    assert any("\u4e00" <= ch <= "\u9fff" for ch in visible_text(reply)), visible_text(reply)
    assert not h.errors()


async def test_a_message_delivered_twice_is_answered_once(discord_harness: Harness, discord_bot: BotRunner) -> None:
    """During a deploy two bot processes on one shard both receive every message; the claim in Redis makes one
    of them answer.  Here the same MESSAGE_CREATE reaches the bot twice, as it would reach the two processes."""
    h = discord_harness
    await discord_bot.start()
    msg = await h.send(h.general, h.alice, f"{h.bot.mention} only once please")
    await h.server.dispatch_message(msg)  # the second delivery
    replies = await discord_bot.reply(msg)
    assert len(replies) == 1 and "only once please" in visible_text(replies[0])
    await asyncio.sleep(0.5)  # a second answer would have started by now
    assert len(h.bot_messages(h.general)) == 1
    assert [t.role for t in await discord_bot.history(h.general)] == ["user", "assistant"]
