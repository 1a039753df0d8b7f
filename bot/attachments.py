"""Images attached on Discord, for every feature that takes them (chat messages, `/caption`, `/article`).

Each file is refused from its declared size before anything is downloaded, then downloaded by the bot
(workers never see Discord URLs), validated and stored as a blob (`handlers.images.ImageIntake`).  When
every live worker is text-only, that is said before downloading anything.
"""

from __future__ import annotations

from collections.abc import Sequence

import discord

from handlers.images import Attachment, ImageIntake, VisionHandler

from .runtime import Runtime


class DiscordImages:
    """The bot's image intake and vision handler (one per process, built in `setup_hook`)."""

    def __init__(self, runtime: Runtime) -> None:
        self.intake = ImageIntake(runtime.bus, runtime.settings)
        self.vision = VisionHandler(runtime.chat, self.intake)

    async def ingest(self, attachments: Sequence[discord.Attachment]) -> list[str]:
        """Check, download, validate and store attachments; their blob references (or `InputError`)."""
        await self.vision.check_vision_available()
        stored = await self.intake.ingest([Attachment(a.filename, a.size, a.content_type, a.read)
                                           for a in attachments])
        return [s.ref for s in stored]
