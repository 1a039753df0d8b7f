"""End to end: how replies stream — splitting long answers, never pinging, surviving 429s, Stop and
Regenerate, slash commands, and many replies at once."""

from __future__ import annotations

import asyncio
import re

import pytest

from tests.fakediscord import Harness, Message
from tests.fakediscord.fixtures import REGEN_PREFIX, STOP_PREFIX, BotRunner, interaction_messages
from tests.fakediscord.harness import visible_text

pytestmark = pytest.mark.timeout(60)

FENCE_OPEN = "```python\n"


def long_answer(target: int = 4500) -> str:
    """Prose, a long ```python block that no single message can hold whole, prose again."""
    prose = "".join(
        f"Paragraph {i}: the quick brown fox jumps over the lazy dog, again and again.\n\n" for i in range(12)
    )
    code = "".join(f"def f{i}(x):\n    return x * {i}  # line {i}\n" for i in range(60))
    text = prose + FENCE_OPEN + code + "```\n\nThat is all." + "\n"
    while len(text) < target:
        text += "More words after the code block, to reach the length we want.\n"
    return text


def reassemble(parts: list[str], answer: str) -> str:
    """Undo the splitter's additions, checking that they are exactly a close/reopen pair per cut."""
    out = ""
    for index, part in enumerate(parts):
        body = part
        if (
            index > 0
            and parts[index - 1].rstrip().endswith("```")
            and body.startswith(FENCE_OPEN)
            and not answer[len(out) :].startswith(FENCE_OPEN)
        ):
            body = body[len(FENCE_OPEN) :]  # a reopened fence
        rest = answer[len(out) :]
        if not rest.startswith(body):
            for closer in ("```", "\n```"):
                if body.endswith(closer) and rest.startswith(body[: -len(closer)]):
                    body = body[: -len(closer)]  # a closing fence the splitter added
                    assert parts[index + 1].startswith(FENCE_OPEN), "a closed fence was not reopened"
                    break
        assert rest.startswith(body), f"part {index} does not continue the answer"
        out += body
    return out


def complete(messages: list[Message], answer: str) -> bool:
    """Every part of the answer has been written (then `reassemble` checks how)."""
    text = "".join(visible_text(m) for m in messages)
    return len(text) >= len(answer) and text.rstrip().endswith(answer.rstrip()[-40:])


async def test_long_answer_is_split_with_code_fences_kept(discord_harness: Harness, discord_bot: BotRunner) -> None:
    h = discord_harness
    # Plain messages by design (2,000 characters each); layouts: tests/test_discord_layout.py (9,000 characters).
    await discord_bot.start(
        max_input_chars=6000,
        max_new_tokens=2000,  # TestEngine: 4 characters a token
        render_mode="plain",
    )
    answer = long_answer()
    assert len(answer) >= 4500 and "]]" not in answer
    # Discord's client lets a slash-command string option hold 6000 characters.
    inter = await h.slash("chat", {"prompt": f"[[say:{answer}]]"}, user=h.alice)
    messages = await discord_bot.answer(inter, until=lambda ms: complete(ms, answer))
    parts = [visible_text(m) for m in messages]
    assert len(parts) >= 3
    assert all(len(p) <= 2000 for p in parts)
    cut_in_code = [
        i for i in range(len(parts) - 1) if parts[i].rstrip().endswith("```") and parts[i + 1].startswith(FENCE_OPEN)
    ]
    assert cut_in_code, "the code block was not cut, or not closed and reopened"
    for part in parts:  # every part renders on its own: fences balanced
        assert len(re.findall(r"^```", part, flags=re.M)) % 2 == 0
    assert reassemble(parts, answer) == answer
    assert not h.errors()


async def test_long_mention_answer_overflows_into_more_messages(
    discord_harness: Harness, discord_bot: BotRunner
) -> None:
    h = discord_harness
    await discord_bot.start(render_mode="plain")  # a layout holds 3,800 (test_discord_layout.py: 3,500 in one)
    answer = long_answer(3500)[:3800]
    msg = await h.send(h.general, h.alice, f"{h.bot.mention} [[say:{answer}]]")
    replies = await discord_bot.reply(msg, until=lambda ms: complete(ms, answer))
    assert len(replies) >= 2 and all(len(visible_text(m)) <= 2000 for m in replies)
    assert reassemble([visible_text(m) for m in replies], answer) == answer
    assert replies[0].reference is not None  # the first part answers the message
    assert not h.errors()


async def test_model_output_pings_nobody(discord_harness: Harness, discord_bot: BotRunner) -> None:
    h = discord_harness
    await discord_bot.start(test_engine_token_delay=0.01)
    nasty = f"@everyone @here look <@{h.bob.id}> and <@&{h.admin_role.id}> and <@!{h.carol.id}>"
    msg = await h.send(h.general, h.alice, f"{h.bot.mention} [[say:{nasty}]]")
    [reply] = await discord_bot.reply(msg)
    assert "@everyone" in visible_text(reply) and f"<@{h.bob.id}>" in visible_text(reply)
    inter = await h.slash("chat", {"prompt": f"[[say:{nasty}]]"}, user=h.alice)
    await discord_bot.answer(inter)
    writes = h.message_writes()
    assert len(writes) >= 3
    for call in writes:
        body = call.json.get("data", call.json) if "callback" in call.route else call.json
        allowed = body.get("allowed_mentions")
        assert allowed is not None, f"{call.method} {call.route} sent no allowed_mentions"
        assert allowed.get("parse") == [] and not allowed.get("users") and not allowed.get("roles")
        assert not allowed.get("replied_user")
    for message in h.bot_messages(h.general):
        for version in message.versions:  # who Discord would have notified, at every edit
            assert not version.payload["mentions"] and not version.payload["mention_roles"]
            assert version.payload["mention_everyone"] is False


async def test_429_mid_stream_loses_no_text(discord_harness: Harness, discord_bot: BotRunner) -> None:
    h = discord_harness
    h.server.rate_limits = True
    await discord_bot.start(test_engine_token_delay=0.03)
    msg = await h.send(h.general, h.alice, f"{h.bot.mention} [[repeat:70]]")
    await h.wait_for(lambda: h.bot_messages(h.general, after=msg), message="the first part")
    h.server.force_429(3, retry_after=0.4, method="PATCH", route="/messages/")
    [reply] = await discord_bot.reply(msg)
    assert visible_text(reply).split() == [f"w{i}" for i in range(70)]
    statuses = [c.status for c in h.channel_calls(h.general, method="PATCH")]
    assert statuses.count(429) == 3 and statuses[-1] == 200
    assert not [c for c in h.errors()]


async def test_stop_keeps_the_partial_answer(discord_harness: Harness, discord_bot: BotRunner) -> None:
    h = discord_harness
    await discord_bot.start(test_engine_token_delay=0.05)
    msg = await h.send(h.general, h.alice, f"{h.bot.mention} [[repeat:200]]")

    def partial() -> Message | None:
        msgs = h.bot_messages(h.general, after=msg)
        return msgs[0] if msgs and "w3" in visible_text(msgs[0]) and msgs[0].custom_ids else None

    first = await h.wait_for(partial, message="a partial answer with a Stop button")
    stop_id = h.find_button(first, STOP_PREFIX)
    await h.click(first, stop_id, user=h.alice)
    [reply] = await discord_bot.reply(msg)
    words = visible_text(reply).split()
    assert "w3" in words and "w199" not in words
    assert "stopped" in visible_text(reply).lower()
    assert not any(c.startswith(STOP_PREFIX) for c in reply.custom_ids)
    turns = await discord_bot.history(h.general)
    assert [t.role for t in turns] == ["user", "assistant"]
    assert turns[1].meta.get("stopped") is True
    assert "w3" in turns[1].content and "w199" not in turns[1].content


async def test_stop_by_someone_else_is_refused(discord_harness: Harness, discord_bot: BotRunner) -> None:
    h = discord_harness
    await discord_bot.start(test_engine_token_delay=0.05)
    msg = await h.send(h.general, h.alice, f"{h.bot.mention} [[repeat:40]]")
    first = await h.wait_for(lambda: next((m for m in h.bot_messages(h.general, after=msg) if m.custom_ids), None))
    inter = await h.click(first, h.find_button(first, STOP_PREFIX), user=h.bob)
    await h.response(inter, until=lambda i: i.original is not None)
    assert inter.original.ephemeral
    [reply] = await discord_bot.reply(msg)
    assert "w39" in visible_text(reply)  # not stopped


async def test_regenerate_replaces_the_last_answer(discord_harness: Harness, discord_bot: BotRunner) -> None:
    h = discord_harness
    await discord_bot.start()
    msg = await h.send(h.general, h.alice, f"{h.bot.mention} tell me something")
    [answer] = await discord_bot.reply(msg)
    before = await discord_bot.history(h.general)
    inter = await h.click(answer, h.find_button(answer, REGEN_PREFIX), user=h.alice)
    [again] = await discord_bot.answer(inter)
    assert "tell me something" in visible_text(again) and "turns=1" in visible_text(again)
    assert not any(c.startswith(REGEN_PREFIX) for c in answer.custom_ids)  # the old answer lost its button
    assert any(c.startswith(REGEN_PREFIX) for c in again.custom_ids)
    after = await discord_bot.history(h.general)
    assert [t.role for t in after] == ["user", "assistant"]
    assert after[1].meta["job"] != before[1].meta["job"] and after[1].content.strip() == visible_text(again).strip()


async def test_slash_chat_is_deferred_in_time_then_streamed(discord_harness: Harness, discord_bot: BotRunner) -> None:
    h = discord_harness
    await discord_bot.start(test_engine_token_delay=0.03)
    inter = await h.slash("chat", {"prompt": "[[repeat:80]]"}, user=h.bob)
    messages = await discord_bot.answer(inter)
    assert inter.response_type == 5  # deferred ("thinking…")
    assert inter.responded_at is not None and inter.responded_at - inter.created < 3.0
    [original] = messages
    assert original is inter.original and visible_text(original).split() == [f"w{i}" for i in range(80)]
    assert len(original.versions) >= 3  # the loading message, then edits as the answer grew
    assert "turns=1" not in visible_text(original)
    turns = await discord_bot.history(h.general)
    assert [t.role for t in turns] == ["user", "assistant"] and turns[0].name == "Bob"


async def test_reset_clears_the_conversation(discord_harness: Harness, discord_bot: BotRunner) -> None:
    h = discord_harness
    await discord_bot.start()
    msg = await h.send(h.general, h.alice, f"{h.bot.mention} one")
    await discord_bot.reply(msg)
    inter = await h.slash("reset", user=h.alice)
    await h.response(inter)
    assert inter.original.ephemeral and "2" in visible_text(inter.original)
    assert await discord_bot.history(h.general) == []
    msg = await h.send(h.general, h.alice, f"{h.bot.mention} two")
    [reply] = await discord_bot.reply(msg)
    assert "turns=1" in visible_text(reply)


async def test_reset_mid_stream_finishes_the_answer_without_recording_it(
    discord_harness: Harness, discord_bot: BotRunner
) -> None:
    """/reset while an answer streams: the answer still completes in Discord, and the new history does not
    start with an answer to a question it no longer holds."""
    h = discord_harness
    await discord_bot.start(test_engine_token_delay=0.05)
    msg = await h.send(h.general, h.alice, f"{h.bot.mention} [[repeat:40]]")
    await h.wait_for(lambda: h.replies_to(msg))  # streaming
    inter = await h.slash("reset", user=h.alice)
    await h.response(inter)
    [reply] = await discord_bot.reply(msg)
    assert visible_text(reply).split() == [f"w{i}" for i in range(40)]
    assert await discord_bot.history(h.general) == []
    msg = await h.send(h.general, h.alice, f"{h.bot.mention} again")
    [reply] = await discord_bot.reply(msg)
    assert "turns=1" in visible_text(reply)


async def test_twenty_channels_at_once_without_cross_talk(discord_harness: Harness, discord_bot: BotRunner) -> None:
    h = discord_harness
    h.server.rate_limits = True
    channels = [await h.create_channel(f"room-{i}") for i in range(20)]
    await discord_bot.start(test_engine_token_delay=0.02, worker_concurrency=20)
    sent = await asyncio.gather(
        *(h.send(ch, h.alice, f"{h.bot.mention} token-{i}-end [[repeat:30]]") for i, ch in enumerate(channels))
    )
    await asyncio.sleep(0)
    results = await asyncio.gather(*(discord_bot.reply(m, timeout=40) for m in sent))
    for i, (channel, replies) in enumerate(zip(channels, results, strict=True)):
        [reply] = replies
        assert visible_text(reply).split() == [f"w{k}" for k in range(30)]
        turns = await discord_bot.history(channel)
        assert len(turns) == 2 and f"token-{i}-end" in turns[0].content
        assert all(f"token-{j}-end" not in t.content for t in turns for j in range(20) if j != i)
    assert not [c for c in h.calls if c.status == 429], "the bot's pacing should keep it under the limits"
    assert not h.errors()


async def test_interaction_messages_helper(discord_harness: Harness, discord_bot: BotRunner) -> None:
    """/help answers at once, ephemerally (and within the deadline)."""
    h = discord_harness
    await discord_bot.start()
    inter = await h.slash("help", user=h.alice, locale="zh-CN")
    await h.response(inter)
    [message] = interaction_messages(inter)
    assert inter.response_type == 4 and message.ephemeral and "/chat" in visible_text(message)
    assert re.search(r"[\u4e00-\u9fff]", visible_text(message))  # answered in the user's language


async def test_empty_or_blank_answers_and_prompts_never_send_empty_messages(
    discord_harness: Harness, discord_bot: BotRunner
) -> None:
    h = discord_harness
    await discord_bot.start()
    for prompt in ("[[say:]]", "[[say:   \n  ]]"):
        msg = await h.send(h.general, h.alice, f"{h.bot.mention} {prompt}")
        [reply] = await discord_bot.reply(msg)
        assert visible_text(reply).strip()  # a visible "(no answer)" instead of an empty message
    msg = await h.send(h.general, h.alice, f"{h.bot.mention}")  # just the mention
    [hint] = await discord_bot.reply(msg)
    assert "/help" in visible_text(hint)
    assert not h.errors()


async def test_slash_chat_in_a_dm(discord_harness: Harness, discord_bot: BotRunner) -> None:
    h = discord_harness
    await discord_bot.start()
    dm = h.dm(h.bob)
    inter = await h.slash("chat", {"prompt": "private question"}, user=h.bob, channel=dm)
    [answer] = await discord_bot.answer(inter)
    assert "private question" in visible_text(answer)
    assert [t.role for t in await discord_bot.history(dm, h.bob)] == ["user", "assistant"]


async def test_regenerate_double_click_and_other_users(discord_harness: Harness, discord_bot: BotRunner) -> None:
    h = discord_harness
    await discord_bot.start(test_engine_token_delay=0.02)
    msg = await h.send(h.general, h.alice, f"{h.bot.mention} [[repeat:20]]")
    [answer] = await discord_bot.reply(msg)
    regen = h.find_button(answer, REGEN_PREFIX)
    refused = await h.click(answer, regen, user=h.bob)  # not Bob's answer, and Bob is no moderator
    await h.response(refused)
    assert refused.response_type == 4 and refused.original.ephemeral
    first = await h.click(answer, regen, user=h.alice)
    second = await h.click(answer, regen, user=h.alice)  # an impatient double click
    # Either click may win the race (their handlers run concurrently); the other is refused privately.
    await h.wait_for(lambda: first.original is not None and second.original is not None)
    winner, loser = (first, second) if not first.original.ephemeral else (second, first)
    await discord_bot.answer(winner)
    await h.response(loser)
    assert loser.original.ephemeral and not winner.original.ephemeral
    public = [m for m in h.bot_messages(h.general, after=msg) if not m.ephemeral]
    assert public == [answer, winner.original]  # the old answer and exactly one new one
    turns = await discord_bot.history(h.general)
    assert [t.role for t in turns] == ["user", "assistant"]
