"""The Discord client: a `commands.AutoShardedBot` holding the `Runtime` and the state every feature shares,
one extension (Cog) per feature.

`python -m bot` calls `run_discord(settings)`.  Features live in `bot/cogs/`: chat, admin and stats always,
agent and images when their modules exist, so adding a feature is adding a Cog.  What the cogs share —
the per-channel write budget, the per-user quota, the live replies, resume records, metrics, the image
intake — is typed on `InternLMBot` (the `bot.host.BotHost` protocol) and built here, never looked up at
run time; cogs import what they share (bot/access.py, bot/buttons.py, bot/replies.py), never each other.
Refusals from any command are answered by one handler (`bot.refusals.CommandTree.on_error`).  Slash commands are
synced with Discord only when their definition changed (a hash in Redis) or on `python -m bot sync`,
because Discord rate-limits syncing.

Sharding: the bot is always an `AutoShardedBot`.  With the defaults it runs the shard count Discord
recommends (one below 2,500 guilds: exactly the unsharded bot); `DISCORD_SHARD_COUNT` fixes the total and
`DISCORD_SHARD_IDS` the shards this process runs, so several processes can share a large bot
(docs/deploy.md).  Everything else lives in Redis or is per channel, and a channel belongs to one shard.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib.util
import json
import logging
import signal
import uuid
from collections.abc import Callable
from typing import Any

import discord
import yarl
from discord.ext import commands

from handlers.active_replies import ActiveReplies
from handlers.types import Reply, Request
from handlers.user_quota import UserQuota
from models.logs import make_handler
from models.memory import freeze_startup_objects
from models.settings import Settings

from . import i18n
from .attachments import DiscordImages
from .buttons import BUTTONS, reply_buttons
from .metrics import BotMetrics
from .pacing import BucketRegistry
from .refusals import CommandTree
from .renderer import Renderer
from .resume import resume_replies
from .runtime import Runtime
from .streamer import LiveReplies

log = logging.getLogger(__name__)

CORE_EXTENSIONS = ("bot.cogs.chat", "bot.cogs.admin", "bot.cogs.stats", "bot.cogs.models")
OPTIONAL_EXTENSIONS = ("bot.cogs.agent", "bot.cogs.images")
# Permissions the invite link asks for: View Channels, Send Messages, Create Public Threads (bot/threads.py),
# Send Messages in Threads, Embed Links, Attach Files, Read Message History (see docs/discord.md).
INVITE_PERMISSIONS = discord.Permissions(
    view_channel=True,
    send_messages=True,
    create_public_threads=True,
    send_messages_in_threads=True,
    embed_links=True,
    attach_files=True,
    read_message_history=True,
)


class ShardingError(ValueError):
    """DISCORD_SHARD_COUNT / DISCORD_SHARD_IDS do not fit together."""


def shard_options(settings: Settings) -> dict[str, Any]:
    """`shard_count`/`shard_ids` for `AutoShardedBot` from the settings (empty: Discord's recommendation)."""
    count, ids = settings.discord_shard_count, list(settings.discord_shard_ids)
    if count < 0:
        raise ShardingError("DISCORD_SHARD_COUNT must be 0 (Discord's recommendation) or a positive number")
    if ids and not count:
        raise ShardingError("DISCORD_SHARD_IDS needs DISCORD_SHARD_COUNT (the bot's total number of shards)")
    bad = [i for i in ids if not 0 <= i < count]
    if bad:
        raise ShardingError(f"DISCORD_SHARD_IDS {bad} are not below DISCORD_SHARD_COUNT={count}")
    options: dict[str, Any] = {}
    if count:
        options["shard_count"] = count
    if ids:
        options["shard_ids"] = sorted(set(ids))
    return options


class InternLMBot(commands.AutoShardedBot):
    """The bot and its shared state (see `bot.host.BotHost` for what each attribute is)."""

    limiter: UserQuota
    active_replies: ActiveReplies | None
    images: DiscordImages

    def __init__(self, runtime: Runtime, *, sync: str = "auto") -> None:
        intents = discord.Intents.default()
        intents.message_content = True  # a privileged intent: enable it in the developer portal
        super().__init__(
            command_prefix=commands.when_mentioned,
            intents=intents,
            help_command=None,
            allowed_mentions=discord.AllowedMentions.none(),
            tree_cls=CommandTree,
            **shard_options(runtime.settings),
        )
        self.runtime = runtime
        self.settings: Settings = runtime.settings
        self.sync_mode = sync  # "auto" (when changed), "force", or "never"
        self.synced: bool | None = None  # whether setup_hook synced the commands
        self.instance_id = uuid.uuid4().hex[:12]
        self.regenerable_kinds: set[str] = {"chat", "vision"}  # cogs add theirs (/agent)
        self.regen_renderers: dict[str, Callable[[Request, str], Renderer]] = {}
        self.regenerating: set[str] = set()
        self.resumed_replies = False
        self.buckets = BucketRegistry(capacity=5, per=5.0, reserve=1)
        self.live = LiveReplies()
        self.metrics = BotMetrics()
        self.metrics.watch(
            bus=runtime.bus,
            latency=lambda: self.latency,
            guilds=lambda: len(self.guilds),
            ready=lambda: self.is_ready() and not self.is_closed(),
        )

    async def setup_hook(self) -> None:
        runtime = self.runtime
        self.limiter = UserQuota.from_settings(runtime.bus.redis, self.settings)
        self.active_replies = (
            ActiveReplies(runtime.bus, runtime.history, self.settings) if self.settings.resume_replies else None
        )
        self.images = DiscordImages(runtime)
        self.metrics.install()
        await self.metrics.start_server(self.settings.metrics_host, self.settings.bot_metrics_port)
        self.add_dynamic_items(*BUTTONS)
        await self.tree.set_translator(i18n.Translator())
        for name in CORE_EXTENSIONS:
            await self.load_extension(name)
        for name in OPTIONAL_EXTENSIONS:
            if importlib.util.find_spec(name) is not None:
                await self.load_extension(name)
        if self.sync_mode != "never":
            self.synced = await self.sync_commands(force=self.sync_mode == "force")
        # Everything loaded so far lives as long as the process: keep full GCs from walking it (models/memory.py).
        freeze_startup_objects()

    async def on_message(self, message: discord.Message, /) -> None:
        """Counted for the metrics; no text commands (this replaces `process_commands`): messages are the
        chat cog's business."""
        if not message.author.bot:
            self.metrics.message(dm=message.guild is None)

    async def close(self) -> None:
        await super().close()
        self.metrics.uninstall()
        await self.metrics.stop_server()

    async def command_payload(self) -> list[dict[str, Any]]:
        """The global command tree as Discord would receive it (translations included)."""
        translator = self.tree.translator
        payload = []
        for command in self.tree.get_commands():
            if translator is not None:
                payload.append(await command.get_translated_payload(self.tree, translator))
            else:
                payload.append(command.to_dict(self.tree))
        return payload

    async def command_hash(self) -> str:
        data = json.dumps([self.application_id, await self.command_payload()], sort_keys=True, default=str)
        return hashlib.sha256(data.encode()).hexdigest()

    async def sync_commands(self, *, force: bool = False) -> bool:
        """Sync the application commands if their definition changed since the last sync."""
        digest = await self.command_hash()
        bus = self.runtime.bus
        if not force and await bus.command_hash() == digest:
            log.info("application commands unchanged; not syncing")
            return False
        synced = await self.tree.sync()
        await bus.set_command_hash(digest)
        log.info("synced %d application commands", len(synced))
        return True

    async def on_ready(self) -> None:
        log.info(
            "logged in as %s (id %s) in %d guilds; shards %s of %s",
            self.user,
            getattr(self.user, "id", "?"),
            len(self.guilds),
            self.shard_ids or "all",
            self.shard_count,
        )
        if self.application_id:
            log.info("invite link: %s", invite_url(self.application_id))
        await resume_replies(self)  # once per process: the replies a previous process left streaming

    def reply_view(self, reply: Reply, state: str, lang: str, owner: int | None = None) -> discord.ui.View | None:
        """The buttons on a reply: Stop while streaming, Regenerate when done (bot/buttons.py)."""
        return reply_buttons(reply, state, lang, owner, self.regenerable_kinds)


def invite_url(application_id: int) -> str:
    return discord.utils.oauth_url(
        application_id, permissions=INVITE_PERMISSIONS, scopes=("bot", "applications.commands")
    )


def build_bot(runtime: Runtime, *, sync: str = "auto") -> InternLMBot:
    return InternLMBot(runtime, sync=sync)


def configure_discord(settings: Settings) -> None:
    """Point discord.py at a REST proxy / gateway when configured, and set up its logging."""
    if settings.discord_api_base:
        discord.http.Route.BASE = settings.discord_api_base.rstrip("/")
    gateway = getattr(settings, "discord_gateway_url", "")
    if gateway:
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(gateway)
    # discord.py's logging setup, with the project's handler: secrets (the token first) are redacted
    # from every line, and LOG_FORMAT=json gives one object per line with the job id.
    root = logging.getLogger()
    for old in list(root.handlers):  # e.g. the basicConfig of `python -m bot`: one handler, not two
        root.removeHandler(old)
    handler = make_handler(settings)
    handler._ilm = True  # type: ignore[attr-defined]  # models.logs.setup_logging replaces it, if called
    discord.utils.setup_logging(
        handler=handler,
        formatter=handler.formatter or logging.Formatter(),
        level=getattr(logging, settings.log_level.upper(), logging.INFO),
        root=True,
    )


async def _serve(settings: Settings, sync: str) -> int:
    token = settings.discord_token.get_secret_value() if settings.discord_token else ""
    if not token:
        log.error("DISCORD_TOKEN is not set")
        return 2
    try:
        shard_options(settings)
    except ShardingError as exc:
        log.error("%s", exc)
        return 2
    runtime = await Runtime.start(settings)
    bot = build_bot(runtime, sync=sync)
    _close_on_signals(bot)
    try:
        async with bot:
            await bot.start(token)
    except discord.LoginFailure:
        log.error("Discord refused the token (DISCORD_TOKEN): check it in the developer portal")
        return 1
    except discord.PrivilegedIntentsRequired:
        log.error(
            "Enable the Message Content intent for this bot in the developer portal (Bot → "
            "Privileged Gateway Intents), then start again"
        )
        return 1
    finally:
        await runtime.close()
    return 0


def _close_on_signals(bot: InternLMBot) -> None:
    """SIGTERM (docker stop, systemd) and SIGINT close the bot cleanly: the gateway is left, the embedded
    worker finishes or hands back its jobs, and the process exits 0."""
    loop = asyncio.get_running_loop()
    closing: set[asyncio.Task[None]] = set()

    def close() -> None:
        log.info("stopping (signal received)")
        task = asyncio.ensure_future(bot.close())
        closing.add(task)
        task.add_done_callback(closing.discard)

    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # not on Windows / threads
            loop.add_signal_handler(sig, close)


async def _sync_only(settings: Settings) -> int:
    """Log in over REST only, sync the commands, and leave (`python -m bot sync`)."""
    token = settings.discord_token.get_secret_value() if settings.discord_token else ""
    if not token:
        log.error("DISCORD_TOKEN is not set")
        return 2
    runtime = await Runtime.start(settings.model_copy(update={"embedded_worker": False}))
    bot = build_bot(runtime, sync="force")
    try:
        async with bot:
            await bot.login(token)  # runs setup_hook, which syncs
        print(f"Synced application commands for application {bot.application_id}.")
    except discord.LoginFailure:
        log.error("Discord refused the token (DISCORD_TOKEN)")
        return 1
    finally:
        await runtime.close()
    return 0


def run_discord(settings: Settings, *, sync_only: bool = False) -> int:
    """Run the bot until interrupted (or just sync the commands); returns the process exit code."""
    configure_discord(settings)
    try:
        return asyncio.run(_sync_only(settings) if sync_only else _serve(settings, "auto"))
    except KeyboardInterrupt:
        return 0


__all__ = ["InternLMBot", "ShardingError", "build_bot", "invite_url", "run_discord", "shard_options"]
