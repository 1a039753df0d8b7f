"""Reasoning models end to end: the real discord.py client against the fake Discord, a real Redis and the
embedded worker with the test engine scripted as a `<think>` model (`[[think:THOUGHT|ANSWER]]`, the shape
InternLM3 / Intern-S1 write in thinking mode).  The reply shows the thinking as a clipped `-# 💭 ||…||`
subtext spoiler above the answer (Discord's subtext and spoiler markdown), history holds the answer alone,
and a model that never closes `<think>` gets a clear note instead of an empty reply."""

from __future__ import annotations

import re

import pytest

from bot.renderer import NO_ANSWER, THINKING_SHOWN
from tests.fakediscord import Harness, Message
from tests.fakediscord.fixtures import BotRunner
from tests.fakediscord.harness import visible_text

pytestmark = pytest.mark.timeout(60)

SPOILER_LINE = re.compile(r"^-# 💭 \|\|([^|]*)\|\|$")


def thinking_of(content: str) -> str:
    """The spoilered thinking of a reply (its first line), checked to be one well-formed subtext spoiler."""
    first = content.split("\n", 1)[0]
    match = SPOILER_LINE.match(first)
    assert match, f"no subtext spoiler line: {first!r}"
    return match.group(1)


async def test_thinking_is_spoilered_above_the_answer_and_not_in_history(
    discord_harness: Harness, discord_bot: BotRunner
) -> None:
    h = discord_harness
    await discord_bot.start(render_mode="plain")  # the line above the answer; layouts: test_discord_render_mode.py
    thought = "The user asks which planet is largest. Jupiter; answer in one sentence."
    msg = await h.send(h.general, h.alice, f"{h.bot.mention} [[think:{thought}|Jupiter is the largest planet.]]")
    [reply] = await discord_bot.reply(msg)
    assert thinking_of(visible_text(reply)) == thought
    assert visible_text(reply).split("\n", 1)[1] == "Jupiter is the largest planet."
    assert "<think>" not in visible_text(reply) and "</think>" not in visible_text(reply)
    turns = await discord_bot.history(h.general)
    assert [t.role for t in turns] == ["user", "assistant"]
    assert turns[1].content == "Jupiter is the largest planet."
    assert not h.errors()


async def test_thinking_shows_while_the_model_thinks(discord_harness: Harness, discord_bot: BotRunner) -> None:
    h = discord_harness
    await discord_bot.start(test_engine_token_delay=0.02)
    thought = " ".join(f"step{i}" for i in range(60))
    msg = await h.send(h.general, h.alice, f"{h.bot.mention} [[think:{thought}|Done thinking.]]")

    def thinking_only() -> Message | None:
        msgs = h.bot_messages(h.general, after=msg)
        return msgs[0] if msgs and "step5 " in visible_text(msgs[0]) and "Done" not in visible_text(msgs[0]) else None

    early = await h.wait_for(thinking_only, message="the thinking before the answer")
    assert thinking_of(visible_text(early)).startswith("step0 step1")  # streamed while the answer had not begun
    [reply] = await discord_bot.reply(msg)
    assert visible_text(reply).endswith("Done thinking.")
    assert not h.errors()


async def test_long_thinking_is_clipped_and_cannot_break_its_spoiler(
    discord_harness: Harness, discord_bot: BotRunner
) -> None:
    h = discord_harness
    await discord_bot.start(max_input_chars=6000)
    thought = "Careful || here is ```python\nprint('x')``` and @everyone " + "ponder " * 400 + "the end"
    answer = "A short answer."
    msg = await h.send(h.general, h.alice, f"{h.bot.mention} [[think:{thought}|{answer}]]")
    replies = await discord_bot.reply(msg)
    assert len(replies) == 1, [visible_text(r) for r in replies]
    [reply] = replies
    shown = thinking_of(visible_text(reply))
    assert shown.startswith("…") and shown.endswith("the end") and len(shown) <= THINKING_SHOWN + 1
    assert "`" not in visible_text(reply) and len(visible_text(reply)) <= 2000
    assert visible_text(reply).endswith(answer)
    turns = await discord_bot.history(h.general)
    assert turns[-1].content == answer
    assert not h.errors()


async def test_unclosed_think_shows_the_thinking_and_a_note(discord_harness: Harness, discord_bot: BotRunner) -> None:
    h = discord_harness
    await discord_bot.start()
    msg = await h.send(h.general, h.alice, f"{h.bot.mention} [[think:I must list every prime below a million]]")
    [reply] = await discord_bot.reply(msg)
    assert thinking_of(visible_text(reply)) == "I must list every prime below a million"
    assert NO_ANSWER in visible_text(reply)
    turns = await discord_bot.history(h.general)
    assert turns[-1].role == "assistant" and "prime" not in turns[-1].content
    assert not h.errors()


async def test_hidden_thinking_is_not_shown(discord_harness: Harness, discord_bot: BotRunner) -> None:
    h = discord_harness
    await discord_bot.start(reasoning_display="hidden")
    msg = await h.send(h.general, h.alice, f"{h.bot.mention} [[think:secret musings|Visible answer.]]")
    [reply] = await discord_bot.reply(msg)
    assert visible_text(reply) == "Visible answer."
    msg = await h.send(h.general, h.alice, f"{h.bot.mention} [[think:still musing]]")
    [reply] = await discord_bot.reply(msg)
    assert visible_text(reply).strip() == NO_ANSWER and "musing" not in visible_text(reply)
    assert not h.errors()


async def test_thinking_then_an_empty_answer_gets_the_note(discord_harness: Harness, discord_bot: BotRunner) -> None:
    h = discord_harness
    await discord_bot.start()
    msg = await h.send(h.general, h.alice, f"{h.bot.mention} [[think:nothing to add|]]")
    [reply] = await discord_bot.reply(msg)
    assert thinking_of(visible_text(reply)) == "nothing to add" and NO_ANSWER in visible_text(reply)
    assert not h.errors()
