"""Finishing the replies a previous bot process left streaming (the records are written by bot/tracking.py;
the mechanism is `handlers.active_replies`).

`resume_replies(bot)`, called once when the bot is ready: for each reply left behind by the previous
process (only those of this process's shards), edits the message it had posted (or posts a new one in
reply to the person's message) until the answer is complete; an answer that cannot be had any more is
replaced by a short notice asking the person to ask again.

A resumed reply keeps the shape its message was created in (plain, or a Components V2 layout: the message's
IS_COMPONENTS_V2 flag, which Discord lets no edit add or remove), whatever RENDER_MODE or `/settings` say now.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

import discord

from handlers.active_replies import ActiveRecord, ActiveReplies

from . import i18n
from .host import BotHost
from .layouts import reply_layout
from .replies import stream_reply
from .targets import NO_MENTIONS, ChannelTarget

log = logging.getLogger(__name__)

i18n.register(
    {
        "resume_lost": {
            i18n.EN: "⚠️ I was restarted while writing this answer and it was lost. Please ask again.",
            i18n.ZH: "⚠️ 机器人在生成回答时重启，回答已丢失。请重新提问。",
        },
    }
)


class ResumedTarget(ChannelTarget):
    """A channel target whose first message already exists (posted by the previous process)."""

    def __init__(self, channel: discord.abc.Messageable, *, message_id: int | None, reference_id: int | None) -> None:
        reference = channel.get_partial_message(reference_id) if reference_id else None  # type: ignore[attr-defined]
        super().__init__(channel, reference=reference)
        self.message_id = message_id

    def initial_handles(self) -> list[Any]:
        if self.message_id:
            return [self.channel.get_partial_message(self.message_id)]  # type: ignore[attr-defined]
        return []


def owns(record: ActiveRecord, *, instance_id: str, shard_count: int | None, shard_ids: Sequence[int] | None) -> bool:
    """Whether this process should resume the record: left by an earlier process (`instance_id` is this
    one's: on_ready can fire seconds after this bot started answering messages), on a shard this process
    runs (DMs arrive on shard 0; `shard_ids` None = all shards)."""
    if record.where.get("instance") == instance_id:
        return False  # streaming right now, in this bot
    count = shard_count or 1
    if count <= 1:
        return True
    shard = (int(record.guild) >> 22) % count if record.guild else 0
    return shard_ids is None or shard in shard_ids


async def _channel(bot: BotHost, channel_id: int) -> Any:
    channel = bot.get_channel(channel_id)
    if channel is None:
        channel = await bot.fetch_channel(channel_id)
    return channel


async def resumed_mode(bot: BotHost, channel: Any, record: ActiveRecord) -> str:
    """The render mode to finish `record` in: its message's, read from the message's flags (an edit in the
    other shape would be refused: content on a V2 message, or the flag dropped); with no message yet (or
    none readable), what the request's server/channel would choose now."""
    message_id = record.where.get("message_id")
    if message_id:
        with contextlib.suppress(discord.HTTPException, ValueError):
            message = await channel.fetch_message(int(message_id))
            return "components" if message.flags.components_v2 else "plain"  # IS_COMPONENTS_V2, 1 << 15
    try:
        return (await bot.runtime.overrides.effective(guild=record.guild, channel=record.channel)).render_mode
    except Exception as exc:  # Redis hiccup: the process default is as good a guess as any
        log.info("could not read the render mode for a resumed reply (%s)", type(exc).__name__)
        return bot.settings.render_mode


async def resume_one(bot: BotHost, tracker: ActiveReplies, record: ActiveRecord) -> str:
    """Finish (or give up on) one reply; returns "finished", "lost" or "gone" (channel unreachable)."""
    where = record.where
    lang = str(where.get("lang") or i18n.EN)
    try:
        channel = await _channel(bot, int(where.get("channel_id") or record.channel or 0))
    except (discord.HTTPException, ValueError):
        await tracker.end(record)
        return "gone"
    target = ResumedTarget(channel, message_id=where.get("message_id"), reference_id=where.get("reference_id"))
    mode = await resumed_mode(bot, channel, record)
    reply = await tracker.reopen(record)
    if reply is None:
        notice = i18n.t("resume_lost", lang)
        with contextlib.suppress(discord.HTTPException):
            handles = target.initial_handles()
            layout = reply_layout(notice) if mode == "components" else None
            if handles and layout is not None:  # a V2 message takes no content: the notice is its layout
                await handles[0].edit(view=layout, allowed_mentions=NO_MENTIONS)
            elif handles:
                await handles[0].edit(content=notice, view=None, allowed_mentions=NO_MENTIONS)
            else:
                await target.send(notice, view=layout, first=True)
        await tracker.end(record)
        return "lost"
    reply.render_mode = mode
    owner = where.get("owner")
    try:
        await stream_reply(bot, reply, target, lang=lang, owner=int(owner) if owner else None)
    except Exception as exc:  # e.g. the channel is gone or we lost access: do not try again next start
        log.warning("could not resume reply %s (%s)", record.job_id, type(exc).__name__)
        await tracker.end(record)
        return "gone"
    return "finished"


async def resume_replies(bot: BotHost) -> list[asyncio.Task[str]]:
    """On ready: pick up the replies the previous process left (once per process).  Returns the tasks."""
    tracker = bot.active_replies
    if tracker is None or bot.resumed_replies:
        return []
    bot.resumed_replies = True
    shard_ids = bot.shard_ids
    try:
        records = await tracker.pending(
            owns=lambda r: owns(r, instance_id=bot.instance_id, shard_count=bot.shard_count, shard_ids=shard_ids)
        )
    except Exception as exc:
        log.warning("could not read the replies to resume (%s)", type(exc).__name__)
        return []
    if records:
        log.info("resuming %d replies that were streaming when the bot stopped", len(records))
    resumed = bot.metrics.resumed
    tasks: list[asyncio.Task[str]] = []
    for record in records:
        task = asyncio.create_task(resume_one(bot, tracker, record), name=f"resume-{record.job_id[:8]}")
        task.add_done_callback(
            lambda t: resumed.labels(t.result() if not t.cancelled() and not t.exception() else "error").inc()
        )
        tasks.append(task)
    return tasks
