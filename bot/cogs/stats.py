"""`/stats` for admins (Manage Server or `ADMIN_ROLE`; ephemeral): workers alive, queue, dead letters, Redis
memory (the same report as `python -m bot status`) plus this bot process's gateway latency, guilds,
replies and Discord 429s since it started (the bot's metrics, bot/metrics.py, built by the client, which
also serves them on `BOT_METRICS_PORT` and resumes replies after a restart).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.app_commands import locale_str
from discord.ext import commands

from .. import i18n
from ..access import require_admin
from ..status import collect, render

if TYPE_CHECKING:
    from ..client import InternLMBot

log = logging.getLogger(__name__)

i18n.register(
    {
        "stats_not_admin": {
            i18n.EN: "Only server admins (Manage Server permission{role}) can see the bot's stats.",
            i18n.ZH: "只有服务器管理员（“管理服务器”权限{role}）可以查看机器人状态。",
        },
        "stats_unavailable": {
            i18n.EN: "I can't read the job queue right now (Redis is unreachable).",
            i18n.ZH: "暂时无法读取任务队列（Redis 无法连接）。",
        },
        "stats_title": {i18n.EN: "Bot status", i18n.ZH: "机器人状态"},
    }
)
i18n.register_commands(
    {
        "stats": "状态",
        "Workers, queue and health of the bot (admins)": "查看机器人的推理进程、队列与健康状态（管理员）",
    }
)

CODE_BLOCK_MAX = 1900  # leave room for the fences in a 2000-character message


def _value(counter_family: object) -> float:
    """Sum of a counter's samples (all label sets)."""
    total = 0.0
    for metric in counter_family.collect():  # type: ignore[attr-defined]
        for sample in metric.samples:
            if sample.name.endswith("_total"):
                total += sample.value
    return total


class Stats(commands.Cog):
    """/stats."""

    def __init__(self, bot: InternLMBot) -> None:
        self.bot = bot

    @app_commands.command(
        name=locale_str("stats"), description=locale_str("Workers, queue and health of the bot (admins)")
    )
    @app_commands.guild_only()
    async def stats_command(self, interaction: discord.Interaction) -> None:
        lang = i18n.lang_for(interaction=interaction)
        require_admin(interaction, self.bot.settings.admin_role, lang, "stats_not_admin")
        await interaction.response.defer(ephemeral=True, thinking=True)
        try:
            status = await asyncio.wait_for(collect(self.bot.runtime.bus), 5.0)
            report = render(status)
        except Exception as exc:
            log.warning("/stats could not read Redis (%s)", type(exc).__name__)
            report = i18n.t("stats_unavailable", lang)
        m = self.bot.metrics
        latency = self.bot.latency
        connected = latency == latency and latency != float("inf")  # NaN / inf before the first heartbeat
        lines = [
            f"Bot: {len(self.bot.guilds)} guilds, gateway latency {latency * 1000:.0f} ms"
            if connected
            else f"Bot: {len(self.bot.guilds)} guilds, gateway connecting",
            f"Since start: {_value(m.messages):.0f} messages, {_value(m.requests):.0f} replies started, "
            f"{_value(m.replies):.0f} finished, {_value(m.rate_limits):.0f} Discord 429s",
        ]
        body = (report + "\n" + "\n".join(lines)).replace("```", "'''")
        if len(body) > CODE_BLOCK_MAX:
            body = body[: CODE_BLOCK_MAX - 1] + "…"
        await interaction.edit_original_response(
            content=f"**{i18n.t('stats_title', lang)}**\n```\n{body}\n```",
            allowed_mentions=discord.AllowedMentions.none(),
        )


async def setup(bot: InternLMBot) -> None:
    await bot.add_cog(Stats(bot))
