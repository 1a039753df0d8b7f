"""`BotHost`: the shared state of the Discord bot, as the modules below `bot.client` see it.

`InternLMBot` (bot/client.py) builds all of it in `setup_hook` and satisfies this protocol; the streamer,
the buttons, the access gate and reply resumption are typed against it instead of importing the client,
so nothing in `bot/` imports `bot.client` back (no import cycles, checked by import-linter).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import discord

if TYPE_CHECKING:
    from handlers.active_replies import ActiveReplies
    from handlers.types import Reply, Request
    from handlers.user_quota import UserQuota
    from models.settings import Settings

    from .attachments import DiscordImages
    from .metrics import BotMetrics
    from .pacing import BucketRegistry
    from .renderer import Renderer
    from .runtime import Runtime
    from .streamer import LiveReplies


class BotHost(Protocol):
    """What the bot shares with every feature (one instance per process)."""

    runtime: Runtime  # Redis, the Bus, history, overrides, the chat handler, the embedded worker
    settings: Settings
    buckets: BucketRegistry  # per-channel write pacing (bot/pacing.py)
    limiter: UserQuota  # per-user request quota (handlers/user_quota.py)
    metrics: BotMetrics  # the bot's Prometheus instruments (bot/metrics.py)
    live: LiveReplies  # replies this process renders now (bot/streamer.py)
    active_replies: ActiveReplies | None  # resume records; None when RESUME_REPLIES is off
    images: DiscordImages  # attachment intake and the vision handler (bot/attachments.py)
    instance_id: str  # which process recorded a reply (a bot resumes only those of earlier processes)
    regenerable_kinds: set[str]  # replies of these kinds get a Regenerate button
    # kind → (the regenerated request, lang) → its renderer, for kinds whose steps need their own (a cog adds it)
    regen_renderers: dict[str, Callable[[Request, str], Renderer]]
    regenerating: set[str]  # conversations whose last answer is being regenerated now
    resumed_replies: bool  # whether this process already picked up the replies its predecessor left

    @property
    def user(self) -> discord.ClientUser | None: ...

    @property
    def shard_count(self) -> int | None: ...

    @property
    def shard_ids(self) -> list[int] | None: ...

    def get_channel(self, channel_id: int, /) -> Any: ...

    async def fetch_channel(self, channel_id: int, /) -> Any: ...

    def reply_view(self, reply: Reply, state: str, lang: str, owner: int | None = None) -> discord.ui.View | None:
        """The buttons on a reply: Stop while streaming, Regenerate when done (bot/buttons.py)."""
        ...
