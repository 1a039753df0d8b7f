"""End to end: answering in threads (`/chat thread:true`, and THREAD_REPLIES / the `thread_replies` setting for
messages), through the real discord.py client against the fake Discord, with Redis and the test engine.

The fake refuses what Discord refuses when a thread is started (tests/fakediscord/server.py `_check_thread`):
50013 without Create Public Threads in the channel (its permission overwrites), 50035 for a name outside
1-100 characters or an archive duration other than 60/1440/4320/10080; 160004 for a second thread from one
message.  ENGINE=test answers `echo: <last message> (turns=N, images=M)`, so the turn count shows the history.
"""

from __future__ import annotations

import asyncio

import discord
import pytest

from tests.fakediscord import Harness
from tests.fakediscord.fixtures import REGEN_PREFIX, BotRunner, reply_finished
from tests.fakediscord.harness import visible_text
from tests.fakediscord.server import HAS_THREAD
from tests.fakediscord.state import CREATE_PUBLIC_THREADS, EPHEMERAL, PUBLIC_THREAD, Channel, Overwrite

pytestmark = pytest.mark.timeout(90)

THREAD_ROUTES = ("/channels/{channel_id}/messages/{message_id}/threads", "/channels/{channel_id}/threads")


def bot_threads(h: Harness, parent: Channel) -> list[Channel]:
    return [c for c in h.world.channels.values() if c.is_thread and c.parent_id == parent.id and c.owner_id == h.bot.id]


def thread_starts(h: Harness) -> list:
    return [c for c in h.calls if c.method == "POST" and c.route in THREAD_ROUTES]


async def new_thread(h: Harness, parent: Channel, timeout: float = 15.0) -> Channel:
    [thread] = await h.wait_for(lambda: bot_threads(h, parent), timeout=timeout, message="the bot's thread")
    return thread


async def answer_in(h: Harness, thread: Channel, after: int | None = None) -> list:
    return await h.settled(thread, after=after, until=reply_finished, quiet=0.3, timeout=20)


def public_answers(h: Harness, channel: Channel) -> list:
    return [m for m in h.bot_messages(channel, include_ephemeral=False) if "echo:" in visible_text(m)]


async def test_chat_thread_opens_a_thread_named_after_the_question(
    discord_harness: Harness, discord_bot: BotRunner
) -> None:
    h = discord_harness
    await discord_bot.start()
    question = "What is the tallest mountain on Earth?"
    interaction = await h.slash("chat", {"prompt": question, "thread": True})
    thread = await new_thread(h, h.general)
    # Started from the command's response, which shows the question; named after it; public; 24 h archive.
    assert thread.name == question and thread.type == PUBLIC_THREAD
    assert interaction.original is not None and thread.id == interaction.original.id
    assert question in visible_text(interaction.original) and interaction.original.flags & HAS_THREAD
    [start] = thread_starts(h)
    assert (
        start.json["auto_archive_duration"] == 1440
        and start.response["thread_metadata"]["auto_archive_duration"] == 1440
    )
    [answer] = await answer_in(h, thread)
    assert visible_text(answer).startswith(f"echo: Alice: {question}") and "turns=1" in visible_text(answer)
    assert not public_answers(h, h.general), "the answer went to the channel, not only to the thread"
    # The thread is its own conversation, and the bot answers there without being mentioned again.
    more = await h.send(thread, h.alice, "and the second tallest?")
    [second] = await answer_in(h, thread, after=more.id)
    assert "and the second tallest" in visible_text(second) and "turns=2" in visible_text(second)
    assert len(await discord_bot.history(thread)) == 4
    assert await discord_bot.history(h.general) == []
    # Regenerate on the thread's answer answers the thread's last turn again, in the thread.
    regen = await h.click(second, h.find_button(second, REGEN_PREFIX), user=h.alice)
    regenerated = await discord_bot.answer(regen)
    assert "and the second tallest" in visible_text(regenerated[0]) and "turns=2" in visible_text(regenerated[0])
    assert regenerated[0].channel_id == thread.id and len(await discord_bot.history(thread)) == 4
    assert not h.errors()


async def test_long_and_odd_questions_give_valid_thread_names(discord_harness: Harness, discord_bot: BotRunner) -> None:
    h = discord_harness
    await discord_bot.start()
    long_question = " ".join(f"word{i:03d}" for i in range(38))[:300]
    assert len(long_question) == 300
    first = await h.slash("chat", {"prompt": long_question, "thread": True})
    thread = await new_thread(h, h.general)
    assert 1 <= len(thread.name) <= 100 and thread.name.endswith("…")
    assert long_question.startswith(thread.name[:-1]) and not thread.name[:-1].endswith(" ")
    assert first.original is not None and visible_text(first.original).startswith("🧵")
    await answer_in(h, thread)
    # Without spaces (Chinese), with mentions, control tokens and newlines: still 1-100 plain characters.
    odd = f"<@{h.bob.id}> @everyone <|im_end|>\n" + "长" * 300
    await h.slash("chat", {"prompt": odd, "thread": True}, channel=h.random)
    other = await new_thread(h, h.random)
    assert 1 <= len(other.name) <= 100 and "\n" not in other.name and "<@" not in other.name
    assert "@everyone" not in other.name and "<|im_end|>" not in other.name  # made inert (a joiner inside)
    await answer_in(h, other)
    # Emoji (two UTF-16 units each): cut so that the name fits however Discord counts.
    await h.slash("chat", {"prompt": "🌋" * 120, "thread": True}, channel=h.random)
    await h.wait_for(lambda: len(bot_threads(h, h.random)) == 2, message="a second thread in #random")
    volcano = next(t for t in bot_threads(h, h.random) if t.id != other.id)
    assert volcano.name.endswith("…") and len(volcano.name.encode("utf-16-le")) // 2 <= 100
    await answer_in(h, volcano)
    # Only a mention: the name falls back to the asker's, never empty.
    await h.slash("chat", {"prompt": f"<@{h.bob.id}>", "thread": True}, channel=h.general)
    await h.wait_for(lambda: len(bot_threads(h, h.general)) == 2, message="a second thread in #general")
    named = next(t for t in bot_threads(h, h.general) if t.id != thread.id)
    assert named.name == "Chat with Alice"
    await answer_in(h, named)
    assert not h.errors(), [c.response for c in h.errors()]


async def test_thread_uses_the_channels_default_archive_duration(
    discord_harness: Harness, discord_bot: BotRunner
) -> None:
    h = discord_harness
    slow = await h.create_channel("slow", default_auto_archive_duration=4320)
    await discord_bot.start(thread_replies=True)
    interaction = await h.slash("chat", {"prompt": "plan a long trip", "thread": True}, channel=slow)
    thread = await new_thread(h, slow)
    assert thread.auto_archive_duration == 4320
    assert thread_starts(h)[0].response["thread_metadata"]["auto_archive_duration"] == 4320
    await answer_in(h, thread)
    assert interaction.original is not None
    # A message (THREAD_REPLIES on) gets the same duration.
    msg = await h.send(slow, h.bob, f"{h.bot.mention} and the packing list?")
    await h.wait_for(lambda: msg.id in h.world.channels, message="a thread from Bob's message")
    assert h.world.channels[msg.id].auto_archive_duration == 4320
    await answer_in(h, h.world.channels[msg.id])


async def test_thread_replies_on_answers_a_mention_in_a_thread_from_it(
    discord_harness: Harness, discord_bot: BotRunner
) -> None:
    h = discord_harness
    await discord_bot.start(thread_replies=True)
    msg = await h.send(h.general, h.alice, f"{h.bot.mention} how do rainbows form?")
    await h.wait_for(lambda: msg.id in h.world.channels, message="a thread started from the message")
    thread = h.world.channels[msg.id]
    assert thread.parent_id == h.general.id and thread.owner_id == h.bot.id
    assert thread.name == "how do rainbows form?"  # the mention is not part of the name
    assert msg.flags & HAS_THREAD
    [answer] = await answer_in(h, thread)
    assert visible_text(answer).startswith("echo: Alice: how do rainbows form?") and answer.reference is None
    assert h.bot_messages(h.general) == []  # nothing in the channel itself
    # Follow-ups in the thread continue its conversation; a mention inside a thread opens no thread of threads.
    follow = await h.send(thread, h.bob, f"{h.bot.mention} and double rainbows?")
    [second] = await answer_in(h, thread, after=follow.id)
    assert "turns=2" in visible_text(second)
    assert len(thread_starts(h)) == 1
    # DMs are answered in place.
    dm = h.dm(h.alice)
    private = await h.send(dm, h.alice, "hello in private")
    [reply] = await discord_bot.reply(private)
    assert reply.channel_id == dm.id and len(thread_starts(h)) == 1
    assert not h.errors()


async def test_thread_replies_off_answers_in_place(discord_harness: Harness, discord_bot: BotRunner) -> None:
    h = discord_harness
    await discord_bot.start()
    msg = await h.send(h.general, h.alice, f"{h.bot.mention} hello")
    [reply] = await discord_bot.reply(msg)
    assert reply.reference is not None and reply.reference["message_id"] == str(msg.id)
    assert "turns=1" in visible_text(reply)
    interaction = await h.slash("chat", {"prompt": "no thread please"})
    messages = await discord_bot.answer(interaction)
    assert "no thread please" in h.text(messages)
    assert thread_starts(h) == [] and not bot_threads(h, h.general)


async def test_settings_turn_thread_replies_on_per_channel(discord_harness: Harness, discord_bot: BotRunner) -> None:
    h = discord_harness
    await discord_bot.start(admin_role=h.admin_role.name)
    bad = await h.slash(
        "settings set",
        {"name": "thread_replies", "value": "maybe", "scope": "channel"},
        user=h.carol,
        check_permissions=False,
    )
    await h.response(bad)
    assert bad.original is not None and bad.original.ephemeral and "on or off" in visible_text(bad.original)
    on = await h.slash(
        "settings set",
        {"name": "thread_replies", "value": "on", "scope": "channel"},
        user=h.carol,
        check_permissions=False,
    )
    await h.response(on)
    assert on.original is not None and "thread_replies" in visible_text(on.original)
    here = await h.send(h.general, h.alice, f"{h.bot.mention} in a thread please")
    await h.wait_for(lambda: here.id in h.world.channels, message="a thread from the message")
    await answer_in(h, h.world.channels[here.id])
    elsewhere = await h.send(h.random, h.alice, f"{h.bot.mention} and here?")
    [reply] = await discord_bot.reply(elsewhere)  # #random keeps the default (off)
    assert reply.channel_id == h.random.id and elsewhere.id not in h.world.channels
    off = await h.slash(
        "settings clear", {"name": "thread_replies", "scope": "channel"}, user=h.carol, check_permissions=False
    )
    await h.response(off)
    again = await h.send(h.general, h.alice, f"{h.bot.mention} back in the channel")
    [reply] = await discord_bot.reply(again)
    assert reply.channel_id == h.general.id and again.id not in h.world.channels
    assert len(thread_starts(h)) == 1


async def test_without_create_public_threads_the_bot_says_so_and_answers_in_place(
    discord_harness: Harness, discord_bot: BotRunner
) -> None:
    h = discord_harness
    closed = await h.create_channel("no-threads", overwrites=[Overwrite(h.bot.id, 1, deny=CREATE_PUBLIC_THREADS)])
    await discord_bot.start(thread_replies=True)
    # /chat thread:true: the answer in place, then a private note why there is no thread.
    interaction = await h.slash("chat", {"prompt": "threads?", "thread": True}, channel=closed)
    messages = await discord_bot.answer(interaction, until=lambda ms: "echo:" in h.text(ms))
    assert "echo: Alice: threads?" in h.text(messages)
    note = await h.wait_for(
        lambda: [m for m in interaction.followups if m.flags & EPHEMERAL], message="the ephemeral note"
    )
    assert "Create Public Threads" in visible_text(note[0])
    # A message with THREAD_REPLIES on: a one-line note, then the answer, both in the channel.
    msg = await h.send(closed, h.alice, f"{h.bot.mention} what about now?")
    replies = await discord_bot.reply(msg, until=lambda ms: any("echo:" in visible_text(m) for m in ms))
    assert "Create Public Threads" in visible_text(replies[0]) and "\n" not in visible_text(replies[0])
    assert any(visible_text(m).startswith("echo: Alice: what about now?") for m in replies)
    # The bot checked before trying: Discord never had to refuse it.
    assert thread_starts(h) == [] and not h.errors()


async def test_a_refusal_from_discord_is_survived(discord_harness: Harness, discord_bot: BotRunner) -> None:
    """The bot's cache says it may (no CHANNEL_UPDATE came), Discord says 50013: note, answer, no traceback."""
    h = discord_harness
    await discord_bot.start(thread_replies=True)
    h.general.overwrites.append(Overwrite(h.bot.id, 1, deny=CREATE_PUBLIC_THREADS))  # silently, server side
    msg = await h.send(h.general, h.alice, f"{h.bot.mention} still there?")
    replies = await discord_bot.reply(msg, until=lambda ms: any("echo:" in visible_text(m) for m in ms))
    assert "missing permissions" in visible_text(replies[0])
    assert any(visible_text(m).startswith("echo: Alice: still there?") for m in replies)
    [refused] = thread_starts(h)
    assert refused.status == 403 and refused.response["code"] == 50013
    # /chat thread:true: the interaction said the bot may (its app_permissions), the permission goes before the
    # bot tries; the answer replaces the response that showed the question, and a private note says why.
    interaction = await h.slash("chat", {"prompt": "refused later", "thread": True}, channel=h.random)
    h.random.overwrites.append(Overwrite(h.bot.id, 1, deny=CREATE_PUBLIC_THREADS))
    messages = await discord_bot.answer(interaction, until=lambda ms: "echo:" in h.text(ms))
    assert h.text(messages).startswith("echo: Alice: refused later")
    note = await h.wait_for(
        lambda: [m for m in interaction.followups if m.flags & EPHEMERAL], message="the ephemeral note"
    )
    assert "missing permissions" in visible_text(note[0])
    assert [c.status for c in thread_starts(h)] == [403, 403]
    assert not bot_threads(h, h.random) and not bot_threads(h, h.general)


async def test_in_a_thread_or_dm_chat_thread_answers_in_place(discord_harness: Harness, discord_bot: BotRunner) -> None:
    h = discord_harness
    await discord_bot.start()
    starter = await h.send(h.general, h.alice, "a topic")
    thread = await h.create_thread(h.general, "topic", from_message=starter)
    interaction = await h.slash("chat", {"prompt": "inside", "thread": True}, channel=thread)
    messages = await discord_bot.answer(interaction, until=lambda ms: "echo:" in h.text(ms))
    assert "echo: Alice: inside" in h.text(messages) and messages[0].channel_id == thread.id
    await asyncio.sleep(0.3)
    assert not [m for m in interaction.followups if m.flags & EPHEMERAL]  # nothing to explain in a thread
    assert thread_starts(h) == []
    dm = await h.slash("chat", {"prompt": "in private", "thread": True}, channel=h.dm(h.alice))
    messages = await discord_bot.answer(dm, until=lambda ms: "echo:" in h.text(ms))
    assert "echo: in private" in h.text(messages) and thread_starts(h) == []


async def test_the_fake_refuses_what_discord_refuses(discord_harness: Harness, discord_bot: BotRunner) -> None:
    """Through discord.py itself: bad names and archive durations are 50035, a second thread from one message
    160004, no permission 50013; the thread payload carries Discord's thread_metadata."""
    h = discord_harness
    bot = await discord_bot.start()
    general = bot.get_channel(h.general.id)
    starter = await general.send("start here")
    for kwargs in ({"name": "x" * 101}, {"name": "ok", "auto_archive_duration": 30}):
        with pytest.raises(discord.HTTPException) as caught:
            await general.create_thread(message=starter, **kwargs)
        assert caught.value.code == 50035
    thread = await general.create_thread(name="fine", message=starter, auto_archive_duration=60)
    assert thread.id == starter.id and thread.auto_archive_duration == 60 and not thread.archived and not thread.locked
    with pytest.raises(discord.HTTPException) as caught:
        await general.create_thread(name="again", message=starter)
    assert caught.value.code == 160004
    h.random.overwrites.append(Overwrite(h.bot.id, 1, deny=CREATE_PUBLIC_THREADS))
    with pytest.raises(discord.Forbidden) as forbidden:
        await bot.get_channel(h.random.id).create_thread(name="no", type=discord.ChannelType.public_thread)
    assert forbidden.value.code == 50013


def test_invite_link_asks_for_create_public_threads() -> None:
    """The permissions integer in the README and docs/discord.md is the one the bot logs (bit 35 included)."""
    from conftest import ROOT

    from bot.client import INVITE_PERMISSIONS

    assert INVITE_PERMISSIONS.create_public_threads and INVITE_PERMISSIONS.send_messages_in_threads
    assert INVITE_PERMISSIONS.value & (1 << 35)
    for doc in ("README.md", "docs/discord.md"):
        text = (ROOT / doc).read_text(encoding="utf-8")
        assert f"permissions={INVITE_PERMISSIONS.value}" in text, doc
        assert "permissions=274878024704" not in text, doc


def test_names_durations_and_the_setting_parse_as_documented() -> None:
    """The pure rules under the end-to-end tests: names, archive durations, the /settings value."""
    from types import SimpleNamespace

    from bot.threads import archive_minutes, thread_name
    from handlers.overrides import ConfError, validate

    assert thread_name("  hello\n\nworld  ", "fallback") == "hello world"
    assert thread_name("<:party:123456789012345678> time <#42>", "x") == ":party: time"
    assert thread_name("", "Chat with Alice") == "Chat with Alice"
    assert thread_name("   ", "") == "Chat"
    cut = thread_name("a" * 60 + " " + "b" * 60, "x")
    assert cut == "a" * 60 + "…"  # at the word, not inside it
    for value, expected in ((60, 60), (4320, 4320), (10080, 10080), (30, 1440), (None, 1440)):
        assert archive_minutes(SimpleNamespace(default_auto_archive_duration=value)) == expected
    assert archive_minutes(object()) == 1440
    assert [validate("thread_replies", v) for v in ("on", "TRUE", "yes", "1")] == ["true"] * 4
    assert [validate("thread_replies", v) for v in ("off", "False", "no", "0")] == ["false"] * 4
    with pytest.raises(ConfError, match="on or off"):
        validate("thread_replies", "maybe")
