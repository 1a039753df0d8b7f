"""RENDER_MODE per server/channel and across restarts, end to end (real discord.py against the fake Discord,
which refuses content on an IS_COMPONENTS_V2 message and a flag dropped or added by an edit).

* components is the default; `/settings set render_mode plain` for one channel makes that channel's replies
  plain while the rest of the server keeps layouts, and `/settings clear` brings layouts back;
* a bad value gets a friendly, private refusal naming the choices;
* a reply left streaming by a stopped bot is finished by the next one in the shape its message was created in
  (read from the message's flags), even though RENDER_MODE changed in between — both ways round.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from test_discord_agent import start as start_agent
from test_discord_reasoning import thinking_of

from handlers.active_replies import ActiveRecord, ActiveReplies
from handlers.overrides import ConfError, ConfStore, validate
from models.settings import Settings
from models.worker import make_bus
from tests.fakediscord import Harness, Message
from tests.fakediscord.fixtures import BotRunner, reply_finished
from tests.fakediscord.harness import text_displays, visible_text
from tests.fakediscord.rules import IS_COMPONENTS_V2
from tests.fakediscord.state import LOADING

pytestmark = pytest.mark.timeout(120)


def v2(message: Message) -> bool:
    return bool(message.flags & IS_COMPONENTS_V2)


def written(message: Message) -> list[Any]:
    """The message's stored versions, less an interaction's deferred "thinking" response (neither shape)."""
    return [v for v in message.versions if not int(v.payload.get("flags") or 0) & LOADING]


def every_version_v2(message: Message) -> bool:
    """Every write of the message had the flag and no content (as Discord requires)."""
    return bool(written(message)) and all(
        int(v.payload.get("flags") or 0) & IS_COMPONENTS_V2 and not v.payload.get("content") for v in written(message)
    )


def no_version_v2(message: Message) -> bool:
    return bool(written(message)) and not any(
        int(v.payload.get("flags") or 0) & IS_COMPONENTS_V2 for v in written(message)
    )


def test_render_mode_is_checked_and_read_with_the_other_overrides() -> None:
    assert validate("render_mode", " Plain ") == "plain" and validate("render_mode", "components") == "components"
    with pytest.raises(ConfError, match="components, plain"):
        validate("render_mode", "fancy")
    store = ConfStore(None, Settings(_env_file=None))  # type: ignore[arg-type]  # effective_from reads no Redis
    assert store.effective_from([]).render_mode == "components"  # the default
    assert store.effective_from([{"render_mode": "plain"}, {}]).render_mode == "plain"  # the server's choice
    assert store.effective_from([{"render_mode": "plain"}, {"render_mode": "components"}]).render_mode == "components"
    plain = ConfStore(None, Settings(_env_file=None, render_mode="plain"))  # type: ignore[arg-type]
    assert plain.effective_from([]).render_mode == "plain"  # RENDER_MODE=plain


async def test_components_by_default_and_plain_per_channel(discord_harness: Harness, discord_bot: BotRunner) -> None:
    h = discord_harness
    await discord_bot.start(admin_role=h.admin_role.name)
    assert discord_bot.settings.render_mode == "components"
    msg = await h.send(h.general, h.alice, f"{h.bot.mention} default shape")
    [reply] = await discord_bot.reply(msg)
    assert v2(reply) and not reply.content and "default shape" in visible_text(reply)

    bad = await h.slash(
        "settings set",
        {"name": "render_mode", "value": "fancy", "scope": "channel"},
        user=h.carol,
        check_permissions=False,
    )
    await h.response(bad)
    assert bad.original is not None and bad.original.ephemeral
    assert "components" in visible_text(bad.original) and "plain" in visible_text(bad.original)

    plain = await h.slash(
        "settings set",
        {"name": "render_mode", "value": "Plain", "scope": "channel"},
        user=h.carol,
        check_permissions=False,
    )
    await h.response(plain)
    assert plain.original is not None and plain.original.ephemeral and "render_mode" in visible_text(plain.original)
    shown = [f for e in plain.original.embeds for f in e.get("fields", []) if f.get("name") == "render_mode"]
    assert len(shown) == 1 and "`plain`" in shown[0]["value"]  # the embed shows the effective value

    msg = await h.send(h.general, h.alice, f"{h.bot.mention} this channel is plain")
    [reply] = await discord_bot.reply(msg)
    assert not v2(reply) and no_version_v2(reply) and "this channel is plain" in reply.content
    other = await h.send(h.random, h.alice, f"{h.bot.mention} the rest of the server is not")
    [elsewhere] = await discord_bot.reply(other)
    assert v2(elsewhere) and every_version_v2(elsewhere) and "the rest of the server" in visible_text(elsewhere)

    cleared = await h.slash(
        "settings clear", {"name": "render_mode", "scope": "channel"}, user=h.carol, check_permissions=False
    )
    await h.response(cleared)
    msg = await h.send(h.general, h.alice, f"{h.bot.mention} back to layouts")
    [reply] = await discord_bot.reply(msg)
    assert v2(reply) and text_displays(reply) and "back to layouts" in visible_text(reply)
    assert not h.errors()


@pytest.mark.parametrize(("before", "after"), [("components", "plain"), ("plain", "components")])
async def test_a_resumed_reply_keeps_the_shape_it_was_started_in(
    discord_harness: Harness, discord_bot: BotRunner, before: str, after: str
) -> None:
    h = discord_harness
    await discord_bot.start(render_mode=before, test_engine_token_delay=0.05, job_visibility_timeout=2)
    msg = await h.send(h.general, h.alice, f"{h.bot.mention} [[repeat:100]]")
    first = await h.wait_for(
        lambda: next((m for m in h.bot_messages(h.general, after=msg) if "w5" in visible_text(m)), None),
        timeout=20,
        message="a partial reply",
    )
    assert "w99" not in visible_text(first) and v2(first) == (before == "components")
    await discord_bot.restart(render_mode=after, test_engine_token_delay=0.01, job_visibility_timeout=2)
    replies = await h.reply_to(
        msg, until=lambda ms: reply_finished(ms) and "w99" in visible_text(ms[-1]), quiet=0.3, timeout=60
    )
    assert replies[0] is first  # the same message was finished, not a second answer posted
    text = " ".join(visible_text(m) for m in replies)
    assert [w for w in text.split() if w.startswith("w")] == [f"w{i}" for i in range(100)]
    for message in replies:  # every write, before and after the restart, in the message's first shape
        assert every_version_v2(message) if before == "components" else no_version_v2(message)
    assert not h.errors()  # no edit Discord would refuse (content on a V2 message, the flag dropped)

    # New replies take the new setting.
    fresh = await h.send(h.general, h.alice, f"{h.bot.mention} after the restart")
    [reply] = await discord_bot.reply(fresh)
    assert v2(reply) == (after == "components") and "after the restart" in visible_text(reply)


async def test_thinking_is_its_own_text_display_above_the_answer(
    discord_harness: Harness, discord_bot: BotRunner
) -> None:
    """The components counterpart of test_discord_reasoning's spoiler test: the spoilered thinking line and the
    answer are separate parts of the layout (a separator between), history holds the answer alone."""
    h = discord_harness
    await discord_bot.start()
    thought = "The user asks which planet is largest. Jupiter; answer in one sentence."
    msg = await h.send(h.general, h.alice, f"{h.bot.mention} [[think:{thought}|Jupiter is the largest planet.]]")
    [reply] = await discord_bot.reply(msg)
    assert v2(reply) and every_version_v2(reply)
    line, *rest = text_displays(reply)
    assert thinking_of(line) == thought and rest == ["Jupiter is the largest planet."]
    turns = await discord_bot.history(h.general)
    assert [t.role for t in turns] == ["user", "assistant"] and turns[1].content == "Jupiter is the largest planet."
    assert not h.errors()


async def test_long_agent_runs_stay_within_the_layout_limits(discord_harness: Harness, discord_bot: BotRunner) -> None:
    """test_discord_agent's long run in components mode: messages of up to 4,000 characters, every body a
    valid V2 layout (the fake checks 40 components and 4,000 characters), the steps shortened as in plain."""
    h = discord_harness
    engine = await start_agent(discord_bot, agent_max_turns=5)
    engine.script = ["Printing a lot.<|action_start|><|interpreter|>\nprint('line\\n' * 400)\n<|action_end|>"]
    interaction = await h.slash("agent", {"task": "print a lot, five times"})
    messages = await discord_bot.answer(interaction, until=lambda ms: "AGENT_MAX_TURNS" in h.text(ms), timeout=60)
    assert messages and all(v2(m) and every_version_v2(m) for m in messages)
    assert all(0 < len(visible_text(m)) <= 4000 for m in messages)
    text = h.text(messages)
    assert "earlier step(s), shortened" in text and "(output truncated)" in text
    assert len(messages) <= 3
    assert h.errors() == []


async def test_a_lost_reply_with_no_message_yet_follows_its_channel_setting(
    discord_harness: Harness, discord_bot: BotRunner
) -> None:
    """A reply left before its first message was posted has no flags to read: the notice a restarted bot
    posts for it takes the request's server/channel choice (plain here in #general, the default elsewhere)."""
    h = discord_harness
    settings = discord_bot.make_settings()
    bus = make_bus(settings)
    try:
        await ConfStore(bus.redis, settings).set(ConfStore.scope(channel=h.general.id), "render_mode", "plain")
        active = ActiveReplies(bus, None, settings)  # type: ignore[arg-type]
        old = time.time() - 120  # long enough ago that the answers count as lost
        for job, channel in (("a" * 32, h.general), ("b" * 32, h.random)):
            await active._write(
                ActiveRecord(
                    job_id=job,
                    kind="chat",
                    conversation=f"c{channel.id}",
                    record=False,
                    guild=h.guild.id,
                    channel=channel.id,
                    started=old,
                    where={"channel_id": channel.id, "instance": "earlier"},
                )
            )
        await discord_bot.start()
        [plain] = await h.wait_for(
            lambda: [m for m in h.bot_messages(h.general) if "⚠️" in visible_text(m)],
            timeout=15,
            message="the lost-answer notice in #general",
        )
        [layout] = await h.wait_for(
            lambda: [m for m in h.bot_messages(h.random) if "⚠️" in visible_text(m)],
            timeout=15,
            message="the lost-answer notice in #random",
        )
        assert not v2(plain) and "⚠️" in plain.content
        assert v2(layout) and every_version_v2(layout)
        assert not h.errors()
    finally:
        await bus.close()
