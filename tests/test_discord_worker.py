"""End to end: the bot when no worker runs, with the real bundled llama.cpp model, and /settings."""

from __future__ import annotations

import re

import pytest

from tests.fakediscord import Harness
from tests.fakediscord.fixtures import STOP_PREFIX, BotRunner
from tests.fakediscord.harness import visible_text

pytestmark = pytest.mark.timeout(90)


async def test_no_worker_says_so_then_answers_when_one_starts(discord_harness: Harness, discord_bot: BotRunner) -> None:
    h = discord_harness
    await discord_bot.start(embedded_worker=False)
    msg = await h.send(h.general, h.alice, f"{h.bot.mention} is anyone there?")

    def notice() -> bool:
        msgs = h.bot_messages(h.general, after=msg)
        return bool(msgs) and "worker" in visible_text(msgs[0]).lower()

    await h.wait_for(notice, timeout=10, message="a no-worker notice")
    [first] = h.bot_messages(h.general, after=msg)
    assert first.reference is not None and first.reference["message_id"] == str(msg.id)
    assert "is anyone there" not in visible_text(first)  # no answer yet: the notice, not silence
    # A worker comes up: the queued message is answered in the same reply.
    await discord_bot.runtime.start_worker()
    [reply] = await discord_bot.reply(msg, until=lambda ms: "is anyone there" in visible_text(ms[0]))
    assert reply is first and "worker" not in visible_text(reply).lower()
    assert "turns=1" in visible_text(reply)


async def test_stop_without_a_worker_ends_the_reply_at_once(discord_harness: Harness, discord_bot: BotRunner) -> None:
    """Stop on the no-worker notice: the job is cancelled and the reply ends as stopped at once, not after
    the no-worker timeout (30 s)."""
    h = discord_harness
    await discord_bot.start(embedded_worker=False)
    msg = await h.send(h.general, h.alice, f"{h.bot.mention} is anyone there?")

    def notice() -> object:
        msgs = h.bot_messages(h.general, after=msg)
        return msgs[0] if msgs and "worker" in visible_text(msgs[0]).lower() and msgs[0].custom_ids else None

    first = await h.wait_for(notice, timeout=10, message="a no-worker notice with a Stop button")
    await h.click(first, h.find_button(first, STOP_PREFIX), user=h.alice)
    [reply] = await discord_bot.reply(msg, timeout=8)
    assert reply is first and "stopped" in visible_text(reply).lower()
    assert not any(c.startswith(STOP_PREFIX) for c in reply.custom_ids)
    assert await discord_bot.runtime.bus.is_cancelled(reply_job(first))
    assert not h.errors()


def reply_job(message: object) -> str:
    """The job id a reply's buttons name (ilm:stop:<job>:<owner> / ilm:regen:<kind>:<job>:<owner>)."""
    ids = [c for v in message.versions for c in re.findall(r"ilm:stop:([0-9a-f]{32})", str(v.payload))]  # type: ignore[attr-defined]
    return ids[0]


async def test_bundled_llamacpp_model_answers(discord_harness: Harness, discord_bot: BotRunner) -> None:
    from models.engines.base import EngineError
    from models.engines.llamacpp import bundled_model_path

    try:
        bundled_model_path()
    except EngineError as exc:
        pytest.skip(str(exc))
    h = discord_harness
    await discord_bot.start(
        engine="llamacpp",
        max_new_tokens=12,
        temperature=0.0,
        llamacpp_n_ctx=1024,
        worker_concurrency=1,
        llamacpp_threads=2,
    )
    msg = await h.send(h.general, h.alice, f"{h.bot.mention} Say hello.")
    [reply] = await discord_bot.reply(msg, timeout=60)
    assert visible_text(reply).strip() and "⚠️" not in visible_text(reply)
    turns = await discord_bot.history(h.general)
    assert [t.role for t in turns] == ["user", "assistant"] and turns[1].content.strip()


async def test_settings_are_for_admins_and_change_the_answer(discord_harness: Harness, discord_bot: BotRunner) -> None:
    h = discord_harness
    await discord_bot.start(admin_role=h.admin_role.name)
    command = h.command("settings").payload()
    assert command.get("contexts") == [0] or command.get("dm_permission") is False  # guild only
    # Someone without Manage Server or the admin role is refused, politely and privately.
    values = {"name": "max_new_tokens", "value": "3"}
    inter = await h.slash("settings set", values, user=h.bob, check_permissions=False)
    await h.response(inter)
    assert inter.original.ephemeral and visible_text(inter.original)
    # Carol has the admin role: the value is stored and used for the next answer.
    inter = await h.slash("settings set", values, user=h.carol, check_permissions=False)
    await h.response(inter)
    assert inter.original.ephemeral
    msg = await h.send(h.general, h.alice, f"{h.bot.mention} [[repeat:50]]")
    [reply] = await discord_bot.reply(msg)
    assert visible_text(reply).split() == ["w0", "w1", "w2"]  # max new tokens = 3
    assert not [c for c in h.errors() if c.status == 400]
