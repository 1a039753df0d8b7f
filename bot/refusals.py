"""Refusals, answered in one place: `Refused` (raised by the access gate and the admin checks) and a
handler's `InputError` (too long, a bad file, too large) both end a slash command with a friendly reply
from `CommandTree.on_error` — privately before the command answered, in its deferred response after.

Image refusals carry a code and are shown in the person's language (`refusal_text`); other refusals are
already worded by the handler.
"""

from __future__ import annotations

import logging

import discord
from discord import app_commands

from handlers.images import MESSAGES, ImageRefused
from handlers.text_files import TextFileRefused
from handlers.types import InputError

from . import i18n
from .targets import NO_MENTIONS

log = logging.getLogger(__name__)

_ZH_REFUSALS = {
    "too_many": "一共 {count} 张图片 — 我一次最多看 {limit} 张。请少发几张。",
    "too_large": "“{name}” 有 {size_mb:.1f} MB，超过了 {limit_mb:.1f} MB 的上限。请发送更小的图片。",
    "empty": "“{name}” 是空文件，没有可看的内容。",
    "svg": "“{name}” 是 SVG 矢量图；我只能读取 PNG、JPEG、WebP 或 GIF 图片。",
    "not_image": "“{name}” 不是我能读取的图片 — 请发送 PNG、JPEG、WebP 或 GIF。",
    "corrupt": "“{name}” 似乎已损坏或不完整，无法打开。请重新保存后再试。",
    "bomb": "“{name}” 声明了 {mpix} 百万像素，超过了我接受的上限（{limit} 百万像素）。请发送更小的图片。",
    "download": "无法下载 “{name}”。请重试。",
    "no_vision": "当前配置的模型无法看图。要使用图片功能，请设置 ENGINE=openai 并将 VISION_MODEL 设为视觉模型"
    "（例如用 `lmdeploy serve api_server` 部署的 InternLM-XComposer），或设置 ENGINE=lmdeploy 与 "
    "LMDEPLOY_VISION_MODEL。",
}
i18n.register(
    {f"image_{code}": {i18n.EN: text, i18n.ZH: _ZH_REFUSALS.get(code, text)} for code, text in MESSAGES.items()}
)


class Refused(app_commands.CheckFailure):
    """A slash command refused before it did anything; `text` is the friendly reason, already translated."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


def refusal_text(exc: InputError, lang: str) -> str:
    """A handler's refusal in the person's language (image refusals have translations)."""
    if isinstance(exc, ImageRefused):
        return i18n.t(f"image_{exc.code}", lang, **exc.params)
    if isinstance(exc, TextFileRefused):  # texts registered by bot/attachments.py
        return i18n.t(f"textfile_{exc.code}", lang, **exc.params)
    return str(exc)


async def answer_refusal(interaction: discord.Interaction, text: str) -> None:
    """Privately if the command has not answered yet, else in its (deferred) response."""
    if interaction.response.is_done():
        await interaction.edit_original_response(content=text, allowed_mentions=NO_MENTIONS)
    else:
        await interaction.response.send_message(text, ephemeral=True, allowed_mentions=NO_MENTIONS)


class CommandTree(app_commands.CommandTree):
    """The bot's command tree: refusals end a command with a friendly reply; anything else is logged."""

    async def on_error(self, interaction: discord.Interaction, error: app_commands.AppCommandError, /) -> None:
        original = error.original if isinstance(error, app_commands.CommandInvokeError) else error
        if isinstance(original, Refused):
            text = original.text
        elif isinstance(original, InputError):
            text = refusal_text(original, i18n.lang_for(interaction=interaction))
        else:
            await super().on_error(interaction, error)
            return
        try:
            await answer_refusal(interaction, text)
        except discord.HTTPException as exc:
            log.warning("could not answer a refusal: %s", exc)
