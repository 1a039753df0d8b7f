"""`/settings`: admins tune the model per server or per channel (system prompt, temperature, top_p,
max new tokens), and how replies look there (`thread_replies`, `render_mode`: components or plain).
Values are validated by `handlers.overrides` and stored in Redis, so they survive restarts and apply to every
bot process.  Who is an admin: anyone with Manage Server, or the `ADMIN_ROLE` role (name or id).
Replies are ephemeral: settings are not channel chatter.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.app_commands import Choice, locale_str
from discord.ext import commands

from handlers.overrides import FIELDS, ConfError, ConfStore

from .. import i18n
from ..access import require_admin
from ..conversations import settings_channel
from ..refusals import Refused
from ..scopes import SCOPES, settings_scope
from ..targets import NO_MENTIONS

if TYPE_CHECKING:
    from ..client import InternLMBot

EMBED_DESCRIPTION_MAX = 4096
EMBED_FIELD_MAX = 1024
NAMES = [Choice(name=name, value=name) for name in FIELDS]
SHOWN = [name for name in FIELDS if name != "system_prompt"]  # one field each; the prompt is the description
# Unset, these are the loaded model's to choose (the worker's models/engines/sampling.py), so the view names no
# number for them: the generic value `Effective` holds is not what the model samples with.
SAMPLING = ("temperature", "top_p", "max_new_tokens")

i18n.register(
    {
        "source_env": {i18n.EN: "bot setting", i18n.ZH: "机器人配置"},
        "model_default": {i18n.EN: "model default", i18n.ZH: "模型默认"},
    }
)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


class Admin(commands.Cog):
    """Per-guild and per-channel generation settings."""

    settings_group = app_commands.Group(
        name=locale_str("settings"),
        description=locale_str("Change the bot's settings for this server or channel (admins)"),
        guild_only=True,
    )

    def __init__(self, bot: InternLMBot) -> None:
        self.bot = bot
        self.overrides: ConfStore = bot.runtime.overrides

    # ---------------------------------------------------------------- helpers
    def _gate(self, interaction: discord.Interaction) -> str:
        """The language to answer in; raises `Refused` (answered privately) unless the caller is an admin
        in a server."""
        lang = i18n.lang_for(interaction=interaction)
        if interaction.guild is None:
            raise Refused(i18n.t("guild_only", lang))
        require_admin(interaction, self.bot.settings.admin_role, lang, "not_admin")
        return lang

    async def settings_embed(self, interaction: discord.Interaction, lang: str, scope_name: str) -> discord.Embed:
        """The effective settings here, with where each value comes from; always within embed limits."""
        guild_id = interaction.guild_id
        channel_id = settings_channel(interaction.channel)
        guild_values = await self.overrides.get_scope(ConfStore.scope(guild=guild_id))
        channel_values = await self.overrides.get_scope(ConfStore.scope(channel=channel_id)) if channel_id else {}
        effective = await self.overrides.effective(guild=guild_id, channel=channel_id)

        def source(name: str) -> str:
            if name in channel_values:
                return i18n.t("source_channel", lang)
            if name in guild_values:
                return i18n.t("source_guild", lang)
            return i18n.t("source_default", lang)

        prompt_head = f"**{i18n.t('system_prompt', lang)}** ({source('system_prompt')})\n"
        prompt = effective.system_prompt or "—"
        embed = discord.Embed(
            title=_clip(i18n.t("settings_title", lang, scope=scope_name), 256),
            description=prompt_head + _clip(prompt, EMBED_DESCRIPTION_MAX - len(prompt_head) - 200),
            colour=discord.Colour.blurple(),
        )
        for name in SHOWN:
            value = getattr(effective, name)
            if name in SAMPLING and name not in channel_values and name not in guild_values:
                # Set in the bot's environment, or left to the model (which the bot cannot know the value of).
                shown = (
                    f"`{value}` ({i18n.t('source_env', lang)})"
                    if name in effective.explicit
                    else f"*{i18n.t('model_default', lang)}*"
                )
            else:
                shown = f"`{value}` ({source(name)})"
            embed.add_field(name=name, value=_clip(shown, EMBED_FIELD_MAX), inline=True)
        return embed

    # ---------------------------------------------------------------- commands
    @settings_group.command(name=locale_str("view"), description=locale_str("Show the effective settings"))
    async def view(self, interaction: discord.Interaction) -> None:
        lang = self._gate(interaction)
        _, scope_name = settings_scope(interaction, SCOPES[1], lang)
        embed = await self.settings_embed(interaction, lang, scope_name)
        await interaction.response.send_message(embed=embed, ephemeral=True, allowed_mentions=NO_MENTIONS)

    @settings_group.command(name=locale_str("set"), description=locale_str("Change one setting"))
    @app_commands.rename(name=locale_str("name"), value=locale_str("value"), scope=locale_str("scope"))
    @app_commands.describe(
        name=locale_str("Which setting"),
        value=locale_str("The new value"),
        scope=locale_str("Server-wide or this channel only"),
    )
    @app_commands.choices(name=NAMES, scope=SCOPES)
    async def set_(
        self,
        interaction: discord.Interaction,
        name: Choice[str],
        value: app_commands.Range[str, 1, 4000],
        scope: Choice[str] | None = None,
    ) -> None:
        lang = self._gate(interaction)
        key, scope_name = settings_scope(interaction, scope, lang)
        try:
            await self.overrides.set(key, name.value, value)
        except ConfError as exc:
            await interaction.response.send_message(
                i18n.t("settings_invalid", lang, error=exc), ephemeral=True, allowed_mentions=NO_MENTIONS
            )
            return
        shown = _clip(value.replace("`", "ˋ"), 200)
        embed = await self.settings_embed(interaction, lang, scope_name)
        await interaction.response.send_message(
            i18n.t("settings_saved", lang, name=name.value, value=shown, scope=scope_name),
            embed=embed,
            ephemeral=True,
            allowed_mentions=NO_MENTIONS,
        )

    @settings_group.command(name=locale_str("clear"), description=locale_str("Remove an override (or all of them)"))
    @app_commands.rename(name=locale_str("name"), scope=locale_str("scope"))
    @app_commands.describe(name=locale_str("Which setting"), scope=locale_str("Server-wide or this channel only"))
    @app_commands.choices(name=NAMES, scope=SCOPES)
    async def clear(
        self, interaction: discord.Interaction, name: Choice[str] | None = None, scope: Choice[str] | None = None
    ) -> None:
        lang = self._gate(interaction)
        key, scope_name = settings_scope(interaction, scope, lang)
        await self.overrides.clear(key, name.value if name else None)
        what = f"`{name.value}`" if name else i18n.t("settings_all", lang)
        embed = await self.settings_embed(interaction, lang, scope_name)
        await interaction.response.send_message(
            i18n.t("settings_cleared", lang, what=what, scope=scope_name),
            embed=embed,
            ephemeral=True,
            allowed_mentions=NO_MENTIONS,
        )


async def setup(bot: InternLMBot) -> None:
    await bot.add_cog(Admin(bot))
