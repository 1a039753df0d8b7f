"""The fake Discord server itself, driven by a tiny discord.py client (not the project's bot).

These pin down that the real discord.py client logs in, receives events, answers interactions and
survives rate limits against the fake — and that the fake refuses what Discord refuses.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import discord
import pytest
from discord import app_commands

from tests.fakediscord import Harness
from tests.fakediscord.fixtures import pointed_at

pytestmark = pytest.mark.timeout(60)


class Tiny(discord.Client):
    """Echoes mentions as replies; `/ping` defers and follows up; `/say text` answers directly."""

    def __init__(self, *, content_intent: bool = True) -> None:
        intents = discord.Intents.default()
        intents.message_content = content_intent
        super().__init__(intents=intents, allowed_mentions=discord.AllowedMentions.none())
        self.tree = app_commands.CommandTree(self)
        self.seen: list[discord.Message] = []
        self.errors: list[BaseException] = []
        self.slow_ack = 0.0

        @self.tree.command(description="defer, then follow up")
        async def ping(interaction: discord.Interaction) -> None:
            await asyncio.sleep(self.slow_ack)
            await interaction.response.defer(thinking=True)
            await interaction.followup.send("pong")
            await interaction.edit_original_response(content="pong!")

        @self.tree.command(description="say something")
        @app_commands.describe(text="what to say", times="how often")
        async def say(interaction: discord.Interaction, text: str, times: int = 1) -> None:
            view = discord.ui.View()
            view.add_item(discord.ui.Button(label="Again", custom_id="again"))
            await interaction.response.send_message(text * times, view=view)

    async def setup_hook(self) -> None:
        await self.tree.sync()

    async def on_message(self, message: discord.Message) -> None:
        self.seen.append(message)
        if message.author.bot or self.user is None:
            return
        if message.content.startswith("long"):
            try:
                await message.channel.send("x" * 2001)
            except discord.HTTPException as exc:
                self.errors.append(exc)
            return
        if self.user in message.mentions:
            async with message.channel.typing():
                sent = await message.reply(f"echo {message.content} @everyone", mention_author=False)
            for i in range(3):
                sent = await sent.edit(content=f"{sent.content} +{i}")

    async def on_interaction(self, interaction: discord.Interaction) -> None:
        if interaction.type is discord.InteractionType.component:
            await interaction.response.edit_message(content="clicked")


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    h = await Harness().start()
    yield h
    await h.stop()


async def run_tiny(h: Harness, **kwargs: object) -> tuple[Tiny, asyncio.Task[None]]:
    client = Tiny(**kwargs)  # type: ignore[arg-type]
    task = asyncio.create_task(client.start(h.token))
    await h.wait_connected()
    return client, task


async def stop_tiny(client: Tiny, task: asyncio.Task[None]) -> None:
    await client.close()
    await asyncio.wait_for(task, 10)


async def test_login_message_edit_and_mentions(harness: Harness) -> None:
    h = harness
    with pointed_at(h):
        client, task = await run_tiny(h)
        try:
            msg = await h.send(h.general, h.alice, f"{h.bot.mention} hi <@{h.bob.id}>")
            [reply] = await h.settled(h.general, after=msg, until=lambda ms: ms[0].content.endswith("+2"))
            assert reply.reference and reply.reference["message_id"] == str(msg.id)
            assert len(reply.versions) == 4  # created, then three edits
            assert not h.world.pinged(reply)  # AllowedMentions.none(): @everyone and <@bob> ping nobody
            assert h.typing_calls(h.general)
            assert all(c.json["allowed_mentions"]["parse"] == [] for c in h.message_writes())
            # The bot saw its own messages echoed back, as Discord does.
            await h.wait_for(lambda: any(m.author == client.user for m in client.seen))
            assert client.is_ready() or True
        finally:
            await stop_tiny(client, task)


async def test_message_content_intent_and_limits(harness: Harness) -> None:
    h = harness
    with pointed_at(h):
        client, task = await run_tiny(h, content_intent=False)
        try:
            await h.send(h.general, h.alice, "long and not addressed")
            await h.send(h.general, h.alice, f"long {h.bot.mention}")
            await h.wait_for(lambda: len(client.seen) >= 2)
            assert client.seen[0].content == ""  # no message-content intent, not mentioned
            assert client.seen[1].content.startswith("long")
            await h.wait_for(lambda: client.errors)
            assert client.errors[0].code == 50035
            assert h.errors() and h.errors()[-1].status == 400
        finally:
            await stop_tiny(client, task)


async def test_slash_defer_followup_and_buttons(harness: Harness) -> None:
    h = harness
    with pointed_at(h):
        client, task = await run_tiny(h)
        try:
            assert {c.name for c in h.world.commands.values()} == {"ping", "say"}
            inter = await h.slash("ping", user=h.bob)
            await h.response(inter, until=lambda i: i.original.content == "pong!")
            assert inter.response_type == 5
            assert inter.followups == []  # the first follow-up replaced the "thinking" message
            inter = await h.slash("say", {"text": "ab", "times": 2})
            await h.response(inter)
            assert inter.original.content == "abab"
            click = await h.click(inter.original, "again", user=h.bob)
            await h.response(click, until=lambda i: i.response_type == 7)
            assert inter.original.content == "clicked"
            with pytest.raises(AssertionError):
                await h.slash("say", {"nope": 1})
        finally:
            await stop_tiny(client, task)


async def test_late_ack_is_refused(harness: Harness) -> None:
    h = harness
    h.server.ack_deadline = 0.3
    with pointed_at(h):
        client, task = await run_tiny(h)
        client.slow_ack = 0.5
        try:
            inter = await h.slash("ping")
            await h.wait_for(lambda: any(c.status == 404 for c in h.calls if "callback" in c.route))
            assert inter.response_type is None
            assert any(isinstance(c.response, dict) and c.response.get("code") == 10062 for c in h.calls)
        finally:
            await stop_tiny(client, task)


async def test_429_is_retried_and_rate_limit_headers(harness: Harness) -> None:
    h = harness
    h.server.rate_limits = True
    h.server.force_429(2, retry_after=0.2, method="PATCH")
    with pointed_at(h):
        client, task = await run_tiny(h)
        try:
            msg = await h.send(h.general, h.alice, f"{h.bot.mention} hi")
            [reply] = await h.settled(h.general, after=msg, until=lambda ms: ms[0].content.endswith("+2"))
            assert reply.content.endswith("+0 +1 +2")  # no edit lost to the 429s
            statuses = [c.status for c in h.calls if c.method == "PATCH"]
            assert statuses.count(429) == 2 and statuses[-1] == 200
            writes = [
                c
                for c in h.calls
                if c.channel_id == h.general.id and c.method in ("POST", "PATCH") and "typing" not in c.route
            ]
            assert all(c.status in (200, 429) for c in writes)
        finally:
            await stop_tiny(client, task)


async def test_resume_after_reconnect(harness: Harness) -> None:
    h = harness
    with pointed_at(h):
        client, task = await run_tiny(h)
        try:
            await h.server.reconnect_gateway()
            await h.wait_for(lambda: any(p.get("op") == 6 for _, p in h.server.gateway_log))
            await h.wait_for(lambda: h.server.live_sessions())
            msg = await h.send(h.general, h.alice, f"{h.bot.mention} after resume")
            await h.settled(h.general, after=msg, until=lambda ms: ms[0].content.endswith("+2"))
            assert len(h.server.identifies) == 1
        finally:
            await stop_tiny(client, task)


async def test_discord_refusals(harness: Harness) -> None:
    """What Discord refuses, the fake refuses with Discord's codes (seen through discord.py's exceptions)."""
    h = harness
    with pointed_at(h):
        client, task = await run_tiny(h)
        try:
            channel = client.get_channel(h.general.id)
            assert isinstance(channel, discord.TextChannel)
            with pytest.raises(discord.HTTPException) as empty:
                await client.http.send_message(channel.id, params=discord.http.handle_message_parameters(content="   "))
            assert empty.value.code == 50006
            with pytest.raises(discord.HTTPException) as big:
                await channel.send(embeds=[discord.Embed(description="d" * 4000) for _ in range(2)])
            assert big.value.code == 50035  # 8000 characters of embeds > 6000
            too_many = discord.Embed(title="t")
            for i in range(26):
                too_many.add_field(name=f"n{i}", value="v")
            with pytest.raises(discord.HTTPException) as fields:
                await channel.send(embed=too_many)
            assert fields.value.code == 50035
            with pytest.raises(discord.HTTPException) as ref:
                await channel.send("x", reference=discord.MessageReference(message_id=123, channel_id=channel.id))
            assert ref.value.code == 50035
            # The bot can't edit someone else's message.
            user_msg = await h.send(h.general, h.alice, "mine")
            with pytest.raises(discord.Forbidden):
                await channel.get_partial_message(user_msg.id).edit(content="hijacked")
            # Acknowledging twice.
            inter = await h.slash("say", {"text": "hi"})
            await h.response(inter)
            with pytest.raises(discord.HTTPException) as twice:
                await client.http.request(
                    discord.http.Route("POST", "/interactions/{iid}/{token}/callback", iid=inter.id, token=inter.token),
                    json={"type": 5},
                )
            assert twice.value.code == 40060
        finally:
            await stop_tiny(client, task)


async def test_bad_token_is_refused(harness: Harness) -> None:
    h = harness
    with pointed_at(h):
        client = Tiny()
        with pytest.raises(discord.LoginFailure):
            await client.start("not-the-token")
        await client.close()
