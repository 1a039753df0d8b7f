"""Where a Discord message or command belongs: its conversation, the channel whose /settings apply, and the
`Request` a slash command makes.  Every cog uses these, so a channel means the same thing everywhere."""

from __future__ import annotations

from typing import Any

import discord

from handlers.history import conversation_id
from handlers.types import Request


def conversation_for(channel: Any, user: discord.abc.User | discord.Object) -> str:
    """Each guild channel and each thread is its own conversation; a DM is the person's."""
    guild = getattr(channel, "guild", None)
    if guild is None:
        return conversation_id(dm_user=user.id)
    return conversation_id(guild=guild.id, channel=channel.id)


def settings_channel(channel: Any) -> int | None:
    """The channel whose /settings apply: a thread follows its parent channel."""
    if channel is None or getattr(channel, "guild", None) is None:
        return None
    if isinstance(channel, discord.Thread):
        return channel.parent_id
    return channel.id


def channel_ids(channel: Any) -> set[int]:
    """The channel's id and, for a thread, its parent's (access and chat-channel lists name either)."""
    ids = {getattr(channel, "id", 0)}
    parent = getattr(channel, "parent_id", None)
    if parent:
        ids.add(parent)
    return ids


def request_for(interaction: discord.Interaction, text: str) -> Request:
    """The request a slash command makes: this channel's (or DM's) conversation, the speaker's name in guilds."""
    return Request(
        conversation=conversation_for(interaction.channel, interaction.user),
        text=text,
        user_name=interaction.user.display_name if interaction.guild_id else None,
        guild=interaction.guild_id,
        channel=settings_channel(interaction.channel),
    )
