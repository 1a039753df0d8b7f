"""`/help`'s text: how to talk to the bot, then every slash command of every loaded cog with its description,
so a new feature's commands show up without touching this file."""

from __future__ import annotations

import discord
from discord import app_commands

from . import i18n


def help_text(tree: app_commands.CommandTree, lang: str) -> str:
    lines = [i18n.t("help", lang), "", i18n.t("help_commands", lang)]
    for command in tree.get_commands(type=discord.AppCommandType.chat_input):
        label, description = f"`/{command.name}`", getattr(command, "description", "")
        subs = [c.name for c in getattr(command, "commands", [])]
        if subs:
            label += " " + " · ".join(subs)
        if lang == i18n.ZH:
            local = i18n.COMMAND_TEXT.get(command.name)
            label += f"（{local}）" if local else ""
            description = i18n.COMMAND_TEXT.get(description, description)
        lines.append(f"• {label} — {description}")
    text = "\n".join(lines)
    return text if len(text) <= 2000 else text[:1999] + "…"
