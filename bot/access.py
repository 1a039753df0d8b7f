"""Who may talk to the bot, and how much: the one gate every cog uses, so no feature can bypass it.

* `permitted` — `ALLOWED_GUILDS/CHANNELS/ROLES` (empty = everyone); DMs follow `ALLOW_DMS` alone.  People
  outside those lists are ignored silently on messages, so the bot stays out of channels it was not meant for.
* `refusal` — input length, then the per-user quota (`USER_RATE_LIMIT`): a friendly reason, or None.
* `admit` — both, for a slash command: raises `Refused`, which the command tree answers privately.
* `is_admin` — Manage Server, or `ADMIN_ROLE` (name or id): who may use /settings and /stats.
"""

from __future__ import annotations

from typing import Any

import discord

from models.settings import Settings

from . import i18n
from .conversations import channel_ids
from .host import BotHost
from .refusals import Refused


def permitted(settings: Settings, channel: Any, user: discord.abc.User) -> bool:
    """`ALLOWED_*` lists (empty = everyone); DMs follow `ALLOW_DMS` alone."""
    guild = getattr(channel, "guild", None)
    if guild is None:
        return settings.allow_dms
    if settings.allowed_guilds and guild.id not in settings.allowed_guilds:
        return False
    if settings.allowed_channels and not channel_ids(channel) & set(settings.allowed_channels):
        return False
    if settings.allowed_roles:
        roles = {role.id for role in getattr(user, "roles", [])}
        if not roles & set(settings.allowed_roles):
            return False
    return True


async def refusal(bot: BotHost, user_id: int, text: str, lang: str) -> str | None:
    """A friendly reason not to answer (too long, too many requests), or None to go ahead.
    Length first, so an over-long message does not use up the person's quota."""
    limit = bot.settings.max_input_chars
    if len(text) > limit:
        return i18n.t("too_long", lang, n=len(text), limit=limit)
    decision = await bot.limiter.hit(user_id)
    if not decision.allowed:
        return i18n.t("rate_limited", lang, n=decision.retry_seconds)
    return None


def require_permitted(bot: BotHost, interaction: discord.Interaction, lang: str) -> None:
    """Raise `Refused` unless the access lists let this person use commands here."""
    if not permitted(bot.settings, interaction.channel, interaction.user):
        raise Refused(i18n.t("not_allowed", lang))


async def admit(bot: BotHost, interaction: discord.Interaction, text: str, lang: str) -> None:
    """Access lists, input length and the per-user quota for a slash command; raises `Refused` (answered
    privately by the command tree) when the command must stop."""
    require_permitted(bot, interaction, lang)
    reason = await refusal(bot, interaction.user.id, text, lang)
    if reason:
        raise Refused(reason)


def is_admin(interaction: discord.Interaction, admin_role: str) -> bool:
    """Manage Server, or the `ADMIN_ROLE` (by name or id): who may change settings or see /stats."""
    if interaction.permissions.manage_guild:
        return True
    role = admin_role.strip()
    roles = getattr(interaction.user, "roles", [])
    return bool(role) and any(r.name == role or str(r.id) == role for r in roles)


def require_admin(interaction: discord.Interaction, admin_role: str, lang: str, message_key: str) -> None:
    """Raise `Refused` (with `message_key`'s text and the admin-role hint) unless the caller is an admin."""
    if not is_admin(interaction, admin_role):
        role = admin_role.strip()
        hint = i18n.t("admin_role_hint", lang, role=role) if role else ""
        raise Refused(i18n.t(message_key, lang, role=hint))
