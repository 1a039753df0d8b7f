"""The persistent buttons on replies: Stop while an answer streams, Regenerate when it is done.

They are `DynamicItem`s whose custom ids carry the job and the owner, so they keep working after a bot
restart (the custom ids below are Discord component ids, not Redis keys).  Each checks its owner in
`interaction_check`, as discord.py's own examples do: only the person who asked (or a moderator with
Manage Messages) may press it; anyone else is told so privately.
"""

from __future__ import annotations

import re
from typing import Any, cast

import discord

from handlers.types import Reply, Request

from . import i18n
from .conversations import conversation_for, settings_channel
from .host import BotHost
from .layouts import without_buttons
from .replies import stream_reply
from .targets import NO_MENTIONS, InteractionTarget, ephemeral

i18n.register(
    {
        "not_yours": {
            i18n.EN: "Only the person who asked (or a moderator) can use this button.",
            i18n.ZH: "只有提问者（或管理员）可以使用此按钮。",
        },
        "busy_regenerating": {i18n.EN: "This answer is already being regenerated.", i18n.ZH: "该回答正在重新生成。"},
    }
)


def _host(interaction: discord.Interaction) -> BotHost:
    return cast(BotHost, interaction.client)


class _OwnedButton:
    """Mixin: the owner (0 = anyone) or a moderator may press; others get a private "not yours"."""

    owner: int

    async def interaction_check(self, interaction: discord.Interaction, /) -> bool:
        if self.owner in (0, interaction.user.id) or interaction.permissions.manage_messages:
            return True
        await ephemeral(interaction, i18n.t("not_yours", i18n.lang_for(interaction=interaction)))
        return False


class StopButton(
    _OwnedButton, discord.ui.DynamicItem[discord.ui.Button], template=r"ilm:stop:(?P<job>[0-9a-f]{32}):(?P<owner>\d+)"
):
    """Cancels the job; the partial answer stays (marked stopped) and goes into history."""

    def __init__(self, job: str, owner: int, lang: str = i18n.EN) -> None:
        super().__init__(
            discord.ui.Button(
                label=i18n.t("button_stop", lang),
                emoji="⏹️",
                style=discord.ButtonStyle.secondary,
                custom_id=f"ilm:stop:{job}:{owner}",
            )
        )
        self.job, self.owner = job, owner

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Button, match: re.Match[str], /
    ) -> StopButton:
        return cls(match["job"], int(match["owner"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        bot = _host(interaction)
        bus = bot.runtime.bus
        events = await bus.read_events(self.job)
        if events and events[-1].final:  # a button left over from a reply that finished long ago
            view = without_buttons(interaction.message) if interaction.message is not None else None
            await interaction.response.edit_message(view=view, allowed_mentions=NO_MENTIONS)
            return
        await interaction.response.defer()  # the streamer edits the message as the job stops
        await bus.cancel(self.job)
        streamer = bot.live.streamers.get(self.job)
        if streamer is not None and not await bus.alive_workers():
            # No worker is alive to confirm the stop (a live one ends the job within a second): end the
            # reply now, marked stopped, rather than after the no-worker timeout.
            streamer.abandon()


class RegenerateButton(
    _OwnedButton,
    discord.ui.DynamicItem[discord.ui.Button],
    template=r"ilm:regen:(?P<kind>[a-z]{1,16}):(?P<job>[0-9a-f]{32}):(?P<owner>\d+)",
):
    """Answers the conversation's last message again, replacing the last answer in history."""

    def __init__(self, kind: str, job: str, owner: int, lang: str = i18n.EN) -> None:
        super().__init__(
            discord.ui.Button(
                label=i18n.t("button_regenerate", lang),
                emoji="🔄",
                style=discord.ButtonStyle.secondary,
                custom_id=f"ilm:regen:{kind}:{job}:{owner}",
            )
        )
        self.kind, self.job, self.owner = kind, job, owner

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Button, match: re.Match[str], /
    ) -> RegenerateButton:
        return cls(match["kind"], match["job"], int(match["owner"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        bot = _host(interaction)
        lang = i18n.lang_for(interaction=interaction)
        owner = self.owner
        asker: Any = interaction.user if owner == 0 else discord.Object(owner)
        conversation = conversation_for(interaction.channel, asker)
        last = await bot.runtime.history.recent(conversation, limit=1)
        if not last or last[-1].role != "assistant" or last[-1].meta.get("job") != self.job:
            await ephemeral(interaction, i18n.t("not_latest", lang))
            return
        if conversation in bot.regenerating:
            await ephemeral(interaction, i18n.t("busy_regenerating", lang))
            return
        bot.regenerating.add(conversation)
        try:
            await interaction.response.defer(thinking=True)
            if interaction.message is not None:  # the old answer loses its button (a layout keeps its text)
                await bot.buckets.get(interaction.channel_id or 0).acquire()
                try:
                    await interaction.message.edit(
                        view=without_buttons(interaction.message), allowed_mentions=NO_MENTIONS
                    )
                except discord.HTTPException:
                    pass
            request = Request(
                conversation=conversation,
                text="",
                guild=interaction.guild_id,
                channel=settings_channel(interaction.channel),
                kind=self.kind,
            )
            reply = await bot.runtime.chat.regenerate(request)
            if reply is None:
                await interaction.edit_original_response(
                    content=i18n.t("nothing_to_regenerate", lang), allowed_mentions=NO_MENTIONS
                )
                return
            make = bot.regen_renderers.get(self.kind)
            await stream_reply(
                bot,
                reply,
                InteractionTarget(interaction),
                lang=lang,
                owner=owner or None,
                renderer=make(reply.request, lang) if make else None,
            )
        finally:
            bot.regenerating.discard(conversation)


BUTTONS = (StopButton, RegenerateButton)


def reply_buttons(
    reply: Reply, state: str, lang: str, owner: int | None, regenerable_kinds: set[str]
) -> discord.ui.View | None:
    """Stop while streaming; Regenerate once done (for kinds that can be regenerated)."""
    view = discord.ui.View(timeout=None)
    if state == "streaming":
        view.add_item(StopButton(reply.job.id, owner or 0, lang))
    elif state == "done" and reply.request.record and reply.request.kind in regenerable_kinds:
        view.add_item(RegenerateButton(reply.request.kind, reply.job.id, owner or 0, lang))
    else:
        return None
    return view
