"""Refusals of slash commands go through one handler (bot/refusals.py: `CommandTree.on_error`), and every
cog's commands go through the one access gate (bot/access.py) — attacked from outside, with the real
discord.py client against the fake Discord (tests/fakediscord), a real Redis and worker.

A command refused before it answered gets a private reply; nothing is queued or recorded.  A bug in a
command is not dressed up as a refusal: it is logged as discord.py logs it.
"""

from __future__ import annotations

import logging

import pytest

from bot import i18n
from models.protocol import KEYS
from tests.fakediscord import Harness
from tests.fakediscord.fixtures import BotRunner
from tests.fakediscord.harness import visible_text

pytestmark = pytest.mark.timeout(120)


async def _refused(h: Harness, command: str, options: dict | None = None, **kwargs) -> str:
    inter = await h.slash(command, options, **kwargs)
    await h.response(inter)
    assert inter.original is not None and inter.original.ephemeral, f"/{command} must answer privately"
    return visible_text(inter.original)


async def test_every_cog_is_behind_the_one_gate(discord_harness: Harness, discord_bot: BotRunner) -> None:
    h = discord_harness
    bot = await discord_bot.start(allowed_channels=[h.general.id], user_rate_limit="1/60")
    not_here = i18n.t("not_allowed", i18n.EN)
    # In a channel outside ALLOWED_CHANNELS, every feature's command is refused the same way.
    assert await _refused(h, "chat", {"prompt": "hello"}, channel=h.random) == not_here
    assert await _refused(h, "agent", {"task": "2+2"}, channel=h.random) == not_here
    assert await _refused(h, "article", {"title": "Autumn"}, channel=h.random) == not_here
    assert await _refused(h, "reset", channel=h.random) == not_here
    assert await bot.runtime.bus.redis.xlen(KEYS.jobs) == 0  # nothing was queued
    assert await discord_bot.history(h.random) == []
    # Where it is allowed, the per-user quota holds across features: the first request is answered, the
    # next one (another cog's command) is refused with when to try again.
    inter = await h.slash("chat", {"prompt": "first"}, user=h.alice)
    [answer] = await discord_bot.answer(inter)
    assert "first" in visible_text(answer)
    refusal = await _refused(h, "agent", {"task": "second"}, user=h.alice)
    assert refusal.startswith("Slow down a little")
    assert len(await discord_bot.history(h.general)) == 2  # the refused request left no turn behind
    assert not h.errors()


async def test_admin_commands_refuse_others_privately(discord_harness: Harness, discord_bot: BotRunner) -> None:
    h = discord_harness
    await discord_bot.start(admin_role=h.admin_role.name)
    text = await _refused(h, "stats", user=h.bob, check_permissions=False)
    assert text == i18n.t("stats_not_admin", i18n.EN, role=i18n.t("admin_role_hint", i18n.EN, role=h.admin_role.name))
    text = await _refused(h, "settings view", user=h.bob, check_permissions=False)
    assert text.startswith("Only server admins")
    assert not h.errors()


async def test_a_bug_in_a_command_is_logged_not_shown_as_a_refusal(
    discord_harness: Harness, discord_bot: BotRunner, caplog: pytest.LogCaptureFixture
) -> None:
    h = discord_harness
    bot = await discord_bot.start()

    async def broken(request: object) -> None:
        raise RuntimeError("a bug, not a refusal")

    bot.runtime.chat.ask = broken  # the handler misbehaves after the command deferred
    with caplog.at_level(logging.ERROR, logger="discord.app_commands.tree"):
        inter = await h.slash("chat", {"prompt": "hello"}, user=h.alice)
        await h.wait_for(
            lambda: any("Ignoring exception in command" in r.getMessage() for r in caplog.records),
            timeout=10,
            message="discord.py's log line for the failed command",
        )
    assert inter.response_type == 5  # deferred, and left so: no made-up refusal text
    assert inter.original is None or "a bug" not in (visible_text(inter.original) or "")
