"""`/model`: which chat model answers here, and — for admins — choosing it per server or per channel.

Only the deployment's `CHAT_MODELS` can be chosen (models/routing.py); autocomplete lists them with whether a
live worker serves each right now, so an admin does not pick a model nobody runs without knowing it.  The
choice is stored with the other overrides (handlers/overrides.py): a channel's beats its server's, a thread
follows its channel.  With one model configured, `/model` only names it.  Replies are private.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.app_commands import Choice, locale_str
from discord.ext import commands

from handlers.overrides import MODEL_FIELD, ConfError, ConfStore
from models import routing

from .. import i18n
from ..access import require_admin
from ..conversations import settings_channel
from ..refusals import Refused
from ..scopes import SCOPES, settings_scope
from ..targets import NO_MENTIONS

if TYPE_CHECKING:
    from ..client import InternLMBot

MAX_CHOICES = 25  # Discord's limit on autocomplete suggestions
CHOICE_NAME_MAX = 100

i18n.register(
    {
        "model_only_one": {
            i18n.EN: "Only one chat model is configured here: **{name}**.",
            i18n.ZH: "这里只配置了一个对话模型：**{name}**。",
        },
        "model_current": {
            i18n.EN: "Chat model for {scope}: **{name}** ({source}).",
            i18n.ZH: "{scope}的对话模型：**{name}**（{source}）。",
        },
        "model_list": {i18n.EN: "Configured models:", i18n.ZH: "已配置的模型："},
        "model_served": {i18n.EN: "served", i18n.ZH: "可用"},
        "model_not_served": {i18n.EN: "no worker serves it right now", i18n.ZH: "当前没有推理服务提供"},
        "model_saved": {i18n.EN: "{scope} now uses **{name}**.", i18n.ZH: "{scope}现在使用 **{name}**。"},
        "model_saved_unserved": {
            i18n.EN: "⚠️ No worker serves **{name}** right now: answers here will say so until one starts.",
            i18n.ZH: "⚠️ 当前没有推理服务提供 **{name}**：在它启动之前，这里的回答会提示这一点。",
        },
        "model_cleared": {i18n.EN: "Forgot the model chosen for {scope}.", i18n.ZH: "已清除为{scope}选择的模型。"},
        "model_unknown": {
            i18n.EN: "`{name}` is not one of the configured models: {names}.",
            i18n.ZH: "`{name}` 不是已配置的模型：{names}。",
        },
        "model_not_admin": {
            i18n.EN: "Only server admins (Manage Server permission{role}) can change the model.",
            i18n.ZH: "只有服务器管理员（“管理服务器”权限{role}）可以更换模型。",
        },
        "model_unserved": {
            i18n.EN: "The model **{model}** is not served by any worker right now, so I can't answer "
            "with it. An admin can choose another with /model.",
            i18n.ZH: "当前没有推理服务提供模型 **{model}**，暂时无法用它回答。管理员可以用 /model 换一个。",
        },
    }
)
i18n.register_commands(
    {
        "model": "模型",
        "Show or choose the chat model for this server or channel": "查看或更换本服务器或频道的对话模型",
        "Which model (admins)": "哪个模型（管理员）",
        "Forget the choice made for this scope (admins)": "清除为此范围所做的选择（管理员）",
    }
)


class Models(commands.Cog):
    """`/model`: show the chat model that answers here; admins choose it per server or channel."""

    def __init__(self, bot: InternLMBot) -> None:
        self.bot = bot
        self.overrides: ConfStore = bot.runtime.overrides

    async def served_models(self) -> set[str]:
        """The models some live worker serves now (a worker's heartbeat lists them)."""
        return {model for info in await self.bot.runtime.bus.alive_workers() for model in info.models}

    async def _show(self, interaction: discord.Interaction, lang: str) -> str:
        """The model in effect here, where the choice comes from, and the list with what is served."""
        settings = self.bot.settings
        channel_id = settings_channel(interaction.channel)
        guild_values = await self.overrides.get_scope(ConfStore.scope(guild=interaction.guild_id))
        channel_values = await self.overrides.get_scope(ConfStore.scope(channel=channel_id)) if channel_id else {}
        effective = await self.overrides.effective(guild=interaction.guild_id, channel=channel_id)
        if channel_values.get(MODEL_FIELD) == effective.model:
            source = i18n.t("source_channel", lang)
        elif guild_values.get(MODEL_FIELD) == effective.model:
            source = i18n.t("source_guild", lang)
        else:  # no choice, or one of a model no longer configured
            source = i18n.t("source_default", lang)
        where = settings_scope(interaction, SCOPES[1], lang)[1]  # the answer is about this channel
        served = await self.served_models()
        lines = [
            i18n.t("model_current", lang, scope=where, name=effective.model, source=source),
            "",
            i18n.t("model_list", lang),
        ]
        for spec in routing.configured(settings):
            state = i18n.t("model_served" if spec.name in served else "model_not_served", lang)
            lines.append(f"• `{spec.describe()}` — {state}")
        return "\n".join(lines)

    @app_commands.command(
        name=locale_str("model"), description=locale_str("Show or choose the chat model for this server or channel")
    )
    @app_commands.guild_only()
    @app_commands.rename(name=locale_str("name"), scope=locale_str("scope"), clear=locale_str("clear"))
    @app_commands.describe(
        name=locale_str("Which model (admins)"),
        scope=locale_str("Server-wide or this channel only"),
        clear=locale_str("Forget the choice made for this scope (admins)"),
    )
    @app_commands.choices(scope=SCOPES)
    async def model(
        self,
        interaction: discord.Interaction,
        name: app_commands.Range[str, 1, 100] | None = None,
        scope: Choice[str] | None = None,
        clear: bool = False,
    ) -> None:
        lang = i18n.lang_for(interaction=interaction)
        settings = self.bot.settings
        if interaction.guild is None:
            raise Refused(i18n.t("guild_only", lang))
        if not routing.routed(settings):
            await interaction.response.send_message(
                i18n.t("model_only_one", lang, name=routing.single_model_name(settings)),
                ephemeral=True,
                allowed_mentions=NO_MENTIONS,
            )
            return
        if name is None and not clear:
            await interaction.response.send_message(
                await self._show(interaction, lang), ephemeral=True, allowed_mentions=NO_MENTIONS
            )
            return
        require_admin(interaction, settings.admin_role, lang, "model_not_admin")
        key, scope_name = settings_scope(interaction, scope, lang)
        if name is None:  # clear: the scope falls back to the server's choice, or the default
            await self.overrides.clear(key, MODEL_FIELD)
            text = i18n.t("model_cleared", lang, scope=scope_name) + "\n\n" + await self._show(interaction, lang)
            await interaction.response.send_message(text, ephemeral=True, allowed_mentions=NO_MENTIONS)
            return
        try:
            await self.overrides.set_model(key, name.strip())
        except ConfError:
            names = ", ".join(f"`{n}`" for n in routing.names(settings))
            shown = name.replace("`", "ˋ")[:100]
            await interaction.response.send_message(
                i18n.t("model_unknown", lang, name=shown, names=names), ephemeral=True, allowed_mentions=NO_MENTIONS
            )
            return
        text = i18n.t("model_saved", lang, scope=scope_name, name=name.strip())
        if name.strip() not in await self.served_models():
            text += "\n" + i18n.t("model_saved_unserved", lang, name=name.strip())
        await interaction.response.send_message(text, ephemeral=True, allowed_mentions=NO_MENTIONS)

    @model.autocomplete("name")
    async def model_names(self, interaction: discord.Interaction, current: str) -> list[Choice[str]]:
        """The configured models matching what was typed, each marked served or not (at most 25)."""
        lang = i18n.lang_for(interaction=interaction)
        settings = self.bot.settings
        if not routing.routed(settings):
            name = routing.single_model_name(settings)[:CHOICE_NAME_MAX]
            return [Choice(name=name, value=name)]
        served = await self.served_models()
        needle = current.strip().lower()
        choices: list[Choice[str]] = []
        for spec in routing.configured(settings):
            if needle and needle not in spec.name.lower():
                continue
            state = (
                "✅ " + i18n.t("model_served", lang) if spec.name in served else "⚠️ " + i18n.t("model_not_served", lang)
            )
            label = f"{spec.name} — {state}"
            if len(label) > CHOICE_NAME_MAX:
                label = spec.name[:CHOICE_NAME_MAX]
            choices.append(Choice(name=label, value=spec.name))
        return choices[:MAX_CHOICES]


async def setup(bot: InternLMBot) -> None:
    await bot.add_cog(Models(bot))
