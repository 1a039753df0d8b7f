"""End to end through the real discord.py client against the fake Discord: `/model` with autocomplete
(APPLICATION_COMMAND_AUTOCOMPLETE, interaction type 4, answered with callback type 8 and at most 25 choices, as
Discord documents at https://discord.com/developers/docs/interactions/receiving-and-responding), admins choosing
the model per channel, the next /chat there answered by that model (the test engine names the model it stands
for), a non-admin refused privately, a model nobody serves answered with a friendly reply, and a single-model
deployment where /model only names the one model."""

from __future__ import annotations

import pytest

from handlers.overrides import MODEL_FIELD, ConfStore
from models.protocol import KEYS
from tests.fakediscord import Harness
from tests.fakediscord.fixtures import BotRunner
from tests.fakediscord.harness import visible_text

pytestmark = pytest.mark.timeout(120)

# The embedded worker serves alpha and beta (their entries say what serves them); gamma is a bare name that is
# not the default, so no worker here serves it.
MODELS = "alpha=test,beta=test,gamma"


async def test_admin_picks_the_model_per_channel_and_chat_follows(
    discord_harness: Harness, discord_bot: BotRunner
) -> None:
    h = discord_harness
    await discord_bot.start(chat_models=MODELS, admin_role=h.admin_role.name)
    command = h.command("model").payload()
    [name_option] = [o for o in command["options"] if o["name"] == "name"]
    assert name_option["autocomplete"] is True and not name_option.get("choices")

    # Autocomplete: every configured model, marked served or not; typing narrows it.
    choices = await h.autocomplete("model", {"name": ""}, "name", user=h.bob)
    assert [c["value"] for c in choices] == ["alpha", "beta", "gamma"]
    served = {c["value"]: "✅" in c["name"] for c in choices}
    assert served == {"alpha": True, "beta": True, "gamma": False}
    assert [c["value"] for c in await h.autocomplete("model", {"name": "BE"}, "name")] == ["beta"]

    # A non-admin cannot change it: refused privately, nothing stored.
    inter = await h.slash("model", {"name": "beta", "scope": "channel"}, user=h.bob)
    await h.response(inter)
    assert inter.original.ephemeral and "admin" in visible_text(inter.original).lower()
    redis = discord_bot.runtime.bus.redis
    assert not await redis.hget(KEYS.overrides(ConfStore.scope(channel=h.general.id)), MODEL_FIELD)

    # Carol (the admin role) chooses beta for #general; a model that is not configured is refused.
    inter = await h.slash("model", {"name": "delta"}, user=h.carol)
    await h.response(inter)
    assert inter.original.ephemeral and "alpha" in visible_text(inter.original)
    inter = await h.slash("model", {"name": "beta", "scope": "channel"}, user=h.carol)
    await h.response(inter)
    assert inter.original.ephemeral and "beta" in visible_text(inter.original)

    # The next /chat in #general runs on beta; #random keeps the default, alpha.
    messages = await discord_bot.answer(await h.slash("chat", {"prompt": "hi"}, channel=h.general))
    assert visible_text(messages[-1]).rstrip().endswith("model=beta)"), visible_text(messages[-1])
    messages = await discord_bot.answer(await h.slash("chat", {"prompt": "hi"}, channel=h.random))
    assert visible_text(messages[-1]).rstrip().endswith("model=alpha)"), visible_text(messages[-1])

    # /model with no argument shows the choice and where it comes from, to anyone, privately.
    inter = await h.slash("model", {}, user=h.alice)
    await h.response(inter)
    assert inter.original.ephemeral
    assert "**beta**" in visible_text(inter.original) and "channel" in visible_text(inter.original)
    assert "gamma" in visible_text(inter.original) and "no worker" in visible_text(inter.original)

    # The server-wide choice is beaten by the channel's: server → gamma leaves #general on beta, and
    # #random (no channel choice) on gamma, which nobody serves: a friendly reply, not a hang.
    inter = await h.slash("model", {"name": "gamma"}, user=h.carol)
    await h.response(inter)
    assert "no worker" in visible_text(inter.original).lower()  # warned when choosing it
    msg = await h.send(h.general, h.alice, f"{h.bot.mention} still beta?")
    [reply] = await discord_bot.reply(msg)
    assert visible_text(reply).rstrip().endswith("model=beta)")
    msg = await h.send(h.random, h.alice, f"{h.bot.mention} anyone?")
    [reply] = await discord_bot.reply(msg, timeout=15)
    assert "gamma" in visible_text(reply) and "/model" in visible_text(reply) and "echo" not in visible_text(reply)
    # In the person's language: /chat from a Chinese client.
    messages = await discord_bot.answer(
        await h.slash("chat", {"prompt": "有人吗？"}, channel=h.random, locale="zh-CN"), timeout=15
    )
    assert "gamma" in visible_text(messages[-1]) and "当前没有推理服务" in visible_text(messages[-1])
    # Clearing #general's choice puts it back on the server's (gamma); only admins may.
    inter = await h.slash("model", {"clear": True, "scope": "channel"}, user=h.bob)
    await h.response(inter)
    assert inter.original.ephemeral and "admin" in visible_text(inter.original).lower()
    inter = await h.slash("model", {"clear": True, "scope": "channel"}, user=h.carol)
    await h.response(inter)
    assert "**gamma**" in visible_text(inter.original) and "(server)" in visible_text(inter.original)
    assert not await redis.hget(KEYS.overrides(ConfStore.scope(channel=h.general.id)), MODEL_FIELD)
    assert not h.errors()


async def test_one_model_means_nothing_to_choose(discord_harness: Harness, discord_bot: BotRunner) -> None:
    h = discord_harness
    await discord_bot.start()  # the default: one model
    inter = await h.slash("model", {"name": "anything"}, user=h.carol)
    await h.response(inter)
    assert inter.original.ephemeral and "only one" in visible_text(inter.original).lower()
    assert "test" in visible_text(inter.original)  # ENGINE=test names itself
    assert [c["value"] for c in await h.autocomplete("model", {"name": ""}, "name")] == ["test"]
    messages = await discord_bot.answer(await h.slash("chat", {"prompt": "hi"}))
    assert "model=" not in visible_text(messages[-1])  # answers as before
    assert not h.errors()
