"""The bot's own words in English and 中文, and the translator for slash command names/descriptions.

Model output is never translated; only what the bot itself says (errors, queue notices, help, button
labels).  The language comes from the interaction's locale (the user's client language) or, for plain
messages, the guild's preferred locale; `zh-CN` and `zh-TW` get Chinese, everything else English.
Other cogs add their strings with `register({...})` at import time.
"""

from __future__ import annotations

from typing import Any

import discord
from discord import app_commands

EN, ZH = "en", "zh"

STRINGS: dict[str, dict[str, str]] = {
    "queued": {EN: "⏳ queued — position {n}", ZH: "⏳ 排队中 — 第 {n} 位"},
    "queued_soon": {EN: "⏳ queued — starting soon", ZH: "⏳ 排队中 — 即将开始"},
    "no_worker": {
        EN: "⚠️ No inference worker is running right now, so I can't answer yet. "
        "Your message stays queued and will be answered when a worker starts.",
        ZH: "⚠️ 当前没有正在运行的推理服务，暂时无法回答。你的消息已排队，推理服务启动后会回复。",
    },
    "no_worker_gave_up": {
        EN: "⚠️ No inference worker is running, so I gave up on this message. Please try again later.",
        ZH: "⚠️ 没有正在运行的推理服务，已放弃这条消息。请稍后再试。",
    },
    "timeout": {
        EN: "⚠️ No answer arrived in time, so I stopped waiting. Please try again.",
        ZH: "⚠️ 等待超时，未收到回答。请重试。",
    },
    "error": {EN: "⚠️ {message}", ZH: "⚠️ {message}"},
    "lost_track": {
        EN: "I lost track of this answer because of an internal error. Please try again.",
        ZH: "由于内部错误，这个回答中断了。请重试。",
    },
    "thinking": {EN: "💭 thinking…", ZH: "💭 思考中…"},
    "restarted": {EN: "↻ the worker restarted — answering again…", ZH: "↻ 推理服务已重启 — 正在重新回答…"},
    "stopped": {EN: "⏹️ *stopped*", ZH: "⏹️ *已停止*"},
    "stopped_empty": {EN: "⏹️ *stopped before answering*", ZH: "⏹️ *在回答前已停止*"},
    "empty_answer": {EN: "*(no answer)*", ZH: "*（无回答）*"},
    "no_answer_thinking": {  # a reasoning model that thought but gave no answer (bot/renderer.py)
        EN: "⚠️ The model was still thinking when it stopped, and gave no answer. Try again, or ask for less.",
        ZH: "⚠️ 模型还在思考就停止了，没有给出回答。请重试，或把问题问得简单些。",
    },
    "too_long": {
        EN: "That message is too long ({n} characters). Please keep it under {limit} characters.",
        ZH: "消息太长了（{n} 个字符）。请控制在 {limit} 个字符以内。",
    },
    "rate_limited": {
        EN: "Slow down a little — you can send another request in {n} s.",
        ZH: "请慢一点 — {n} 秒后可以再次提问。",
    },
    "empty_prompt": {
        EN: "Say something after mentioning me, or try `/help`.",
        ZH: "请在提及我之后输入内容，或使用 `/help`。",
    },
    "not_allowed": {EN: "I'm not enabled here.", ZH: "我在这里没有启用。"},
    "reset_done": {EN: "Conversation cleared ({n} turns forgotten).", ZH: "对话已清空（删除了 {n} 条记录）。"},
    "button_stop": {EN: "Stop", ZH: "停止"},
    "button_regenerate": {EN: "Regenerate", ZH: "重新生成"},
    "not_latest": {
        EN: "Only the latest answer in a conversation can be regenerated.",
        ZH: "只能重新生成对话中最新的回答。",
    },
    "nothing_to_regenerate": {EN: "There is nothing to regenerate here.", ZH: "这里没有可以重新生成的内容。"},
    "stopping": {EN: "Stopping…", ZH: "正在停止…"},
    "already_done": {EN: "That answer has already finished.", ZH: "该回答已经结束。"},
    "not_admin": {
        EN: "Only server admins (Manage Server permission{role}) can change my settings.",
        ZH: "只有服务器管理员（“管理服务器”权限{role}）可以修改我的设置。",
    },
    "admin_role_hint": {EN: " or the {role} role", ZH: "或 {role} 身份组"},
    "guild_only": {EN: "This command only works in a server.", ZH: "此命令只能在服务器中使用。"},
    "settings_title": {EN: "Settings for {scope}", ZH: "{scope}的设置"},
    "scope_guild": {EN: "this server", ZH: "本服务器"},
    "scope_channel": {EN: "#{name}", ZH: "#{name} 频道"},
    "source_default": {EN: "default", ZH: "默认"},
    "source_guild": {EN: "server", ZH: "服务器"},
    "source_channel": {EN: "channel", ZH: "频道"},
    "settings_saved": {EN: "Saved: `{name}` = `{value}` for {scope}.", ZH: "已保存：{scope}的 `{name}` = `{value}`。"},
    "settings_cleared": {EN: "Cleared {what} for {scope}.", ZH: "已清除{scope}的{what}。"},
    "settings_all": {EN: "all overrides", ZH: "所有覆盖设置"},
    "settings_invalid": {EN: "Invalid value: {error}.", ZH: "无效的值：{error}。"},
    "system_prompt": {EN: "System prompt", ZH: "系统提示词"},
    "help": {
        EN: (
            "**InternLM (书生·浦语) on Discord**\n"
            "• Mention me, reply to one of my messages, or DM me to chat; in chat channels I answer "
            "every message. Each channel and thread has its own conversation.\n"
            "• **Stop** ends an answer early; **Regenerate** answers the last message again."
        ),
        ZH: (
            "**书生·浦语 InternLM**\n"
            "• 提及我、回复我的消息或私信我即可聊天；在聊天频道中我会回复每条消息。每个频道和子区都有独立的对话。\n"
            "• **停止** 提前结束回答；**重新生成** 重新回答最后一条消息。"
        ),
    },
    "help_commands": {EN: "**Commands**", ZH: "**命令**"},
}


def register(strings: dict[str, dict[str, str]]) -> None:
    """Add a cog's strings (`{"key": {"en": ..., "zh": ...}}`)."""
    STRINGS.update(strings)


def lang_of(locale: discord.Locale | str | None) -> str:
    """`zh-CN` / `zh-TW` (any `zh…`) → Chinese; anything else → English."""
    value = locale.value if isinstance(locale, discord.Locale) else (locale or "")
    return ZH if str(value).lower().startswith("zh") else EN


def lang_for(*, interaction: discord.Interaction | None = None, guild: discord.Guild | None = None) -> str:
    """The language for a reply: the interaction's (user) locale first, then the guild's preferred one."""
    if interaction is not None:
        return lang_of(interaction.locale)
    if guild is not None:
        return lang_of(guild.preferred_locale)
    return EN


def t(key: str, lang: str = EN, **values: Any) -> str:
    """The string `key` in `lang` (English if missing), formatted with `values`."""
    entry = STRINGS.get(key)
    if entry is None:
        return key
    text = entry.get(lang) or entry.get(EN) or key
    return text.format(**values) if values else text


# ---------------------------------------------------------------- slash command localisation
# English source text (what the code passes as `locale_str`) → Chinese.  Command names must be
# lowercase and at most 32 characters; CJK characters are allowed.
COMMAND_TEXT: dict[str, str] = {
    "chat": "聊天",
    "Chat with InternLM": "与书生·浦语聊天",
    "prompt": "内容",
    "What to ask": "你想问什么",
    "reset": "重置",
    "Forget this conversation": "清空本对话",
    "help": "帮助",
    "How to use this bot": "如何使用本机器人",
    "settings": "设置",
    "Change the bot's settings for this server or channel (admins)": "修改本服务器或频道的机器人设置（管理员）",
    "view": "查看",
    "Show the effective settings": "显示当前生效的设置",
    "set": "修改",
    "Change one setting": "修改一项设置",
    "clear": "清除",
    "Remove an override (or all of them)": "清除覆盖设置（或全部）",
    "name": "名称",
    "Which setting": "哪一项设置",
    "value": "值",
    "The new value": "新的值",
    "scope": "范围",
    "Server-wide or this channel only": "整个服务器或仅本频道",
    "server": "服务器",
    "channel": "频道",
}
CHINESE_LOCALES = (discord.Locale.chinese, discord.Locale.taiwan_chinese)


def register_commands(text: dict[str, str]) -> None:
    """Add a cog's command names/descriptions (English → Chinese)."""
    COMMAND_TEXT.update(text)


class Translator(app_commands.Translator):
    """Gives Discord the Chinese names and descriptions of the slash commands."""

    async def translate(
        self, string: app_commands.locale_str, locale: discord.Locale, context: app_commands.TranslationContextTypes
    ) -> str | None:
        if locale not in CHINESE_LOCALES:
            return None
        return COMMAND_TEXT.get(string.message)
