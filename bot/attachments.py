"""Images attached on Discord, for every feature that takes them (chat messages, `/caption`, `/article`).

Each file is refused from its declared size before anything is downloaded, then downloaded by the bot
(workers never see Discord URLs), validated and stored as a blob (`handlers.images.ImageIntake`).  When
every live worker is text-only, that is said before downloading anything.

Text files (`.txt`, `.md`, `.py` and other source files, `.csv`, `.json`, `.log`) are read into the message
instead (`handlers.text_files`); a file that is neither is refused, naming what is accepted, before
anything is downloaded.
"""

from __future__ import annotations

from collections.abc import Sequence

import aiohttp
import discord

from handlers.images import Attachment, ImageIntake, VisionHandler
from handlers.text_files import ACCEPTED, CUT_NOTE, MESSAGES, TextFile, TextFileIntake, TextFileRefused, is_text_file

from . import i18n
from .runtime import Runtime

_ZH_TEXT_FILE = {
    "unknown_type": "我无法读取 “{name}”：我接受图片（PNG、JPEG、WebP、GIF）和文本文件（{accepted}）。",
    "too_large": "“{name}” 有 {size_kb:.0f} KB，文本文件的上限是 {limit_kb:.0f} KB。"
    "请发送更小的文件，或只粘贴相关部分。",
    "too_many": "一共 {count} 个文本文件 — 我一次最多读 {limit} 个。请少发几个。",
    "empty": "“{name}” 是空文件，没有可读的内容。",
    "binary": "“{name}” 看起来是二进制文件而不是文本，我无法读取。",
    "encoding": "无法读取 “{name}”：它不是 UTF-8 或 UTF-16 文本。请另存为 UTF-8 后再试。",
    "download": "无法下载 “{name}”。请重试。",
}
i18n.register(
    {f"textfile_{code}": {i18n.EN: text, i18n.ZH: _ZH_TEXT_FILE.get(code, text)} for code, text in MESSAGES.items()}
)
i18n.register(
    {
        "textfile_cut": {
            i18n.EN: "✂️ " + CUT_NOTE,
            i18n.ZH: "✂️ “{name}” 太长：我只读了它 {total:,} 个字符中的前 {kept:,} 个。",
        }
    }
)


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".svg", ".svgz")


def looks_like_image(a: discord.Attachment) -> bool:
    """Declared an image (by MIME type or name): the image intake validates it, or refuses it by name."""
    return (a.content_type or "").lower().startswith("image/") or a.filename.lower().endswith(IMAGE_SUFFIXES)


def split_attachments(
    attachments: Sequence[discord.Attachment],
) -> tuple[list[discord.Attachment], list[discord.Attachment]]:
    """`(text files, images)`; any other file is refused here, naming what is accepted, before anything
    is downloaded."""
    texts: list[discord.Attachment] = []
    images: list[discord.Attachment] = []
    for a in attachments:
        if is_text_file(a.filename):
            texts.append(a)
        elif looks_like_image(a):
            images.append(a)
        else:
            raise TextFileRefused("unknown_type", name=a.filename, accepted=ACCEPTED)
    return texts, images


def as_attachment(a: discord.Attachment) -> Attachment:
    return Attachment(a.filename, a.size, a.content_type, a.read)


def capped_attachment(a: discord.Attachment, limit: int) -> Attachment:
    """Like `as_attachment`, but the download stops after `limit` + 1 bytes and is refused: the declared
    `size` is checked first, and this holds even if it was wrong (discord.py's `read` reads everything)."""

    async def fetch() -> bytes:
        data = bytearray()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
            async with session.get(a.url) as resp:
                resp.raise_for_status()
                async for chunk in resp.content.iter_chunked(64 * 1024):
                    data += chunk
                    if len(data) > limit:
                        raise TextFileRefused(
                            "too_large", name=a.filename, size_kb=len(data) / 1000, limit_kb=limit / 1000
                        )
        return bytes(data)

    return Attachment(a.filename, a.size, a.content_type, fetch)


def cut_notes(files: Sequence[TextFile], lang: str) -> list[str]:
    """What the person is told about files that did not fit the budget."""
    return [i18n.t("textfile_cut", lang, name=f.name, kept=len(f.text), total=f.total_chars) for f in files if f.cut]


class DiscordImages:
    """The bot's image intake and vision handler (one per process, built in `setup_hook`)."""

    def __init__(self, runtime: Runtime) -> None:
        self.intake = ImageIntake(runtime.bus, runtime.settings)
        self.vision = VisionHandler(runtime.chat, self.intake)
        self.text_files = TextFileIntake(runtime.settings)

    async def ingest(self, attachments: Sequence[discord.Attachment]) -> list[str]:
        """Check, download, validate and store attachments; their blob references (or `InputError`)."""
        await self.vision.check_vision_available()
        stored = await self.intake.ingest([as_attachment(a) for a in attachments])
        return [s.ref for s in stored]

    async def read_text_files(
        self, attachments: Sequence[discord.Attachment], *, whole: bool = False
    ) -> list[TextFile]:
        """Check (declared type, count and size first), download and decode text files (or `InputError`);
        `whole` keeps them uncut (for `/agent`'s sandbox)."""
        return await self.text_files.read(
            [capped_attachment(a, self.text_files.max_bytes) for a in attachments], whole=whole
        )
