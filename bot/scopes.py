"""Where an admin's choice applies: the server, or this channel (a thread follows its parent channel).

Shared by `/settings` and `/model`, which store their choices in the same overrides hash per scope."""

from __future__ import annotations

import discord
from discord.app_commands import Choice, locale_str

from handlers.overrides import ConfStore

from . import i18n
from .conversations import settings_channel

SCOPES = [Choice(name=locale_str("server"), value="guild"), Choice(name=locale_str("channel"), value="channel")]


def settings_scope(interaction: discord.Interaction, scope: Choice[str] | None, lang: str) -> tuple[str, str]:
    """(ConfStore scope key, a human name for it); the server unless `scope` says channel."""
    if scope is not None and scope.value == "channel":
        channel_id = settings_channel(interaction.channel)
        channel = interaction.guild.get_channel(channel_id) if interaction.guild and channel_id else None
        name = channel.name if channel is not None else str(channel_id)
        return ConfStore.scope(channel=channel_id), i18n.t("scope_channel", lang, name=name)
    return ConfStore.scope(guild=interaction.guild_id), i18n.t("scope_guild", lang)
