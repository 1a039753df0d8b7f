"""The Discord side of replies surviving a bot restart (the mechanism is `handlers.resume`).

* `tracked(bot, reply, target, ...)`: used by `streaming.stream_reply` around every reply — records the
  reply (channel, the message it answers, the first reply message once sent, language, owner) in Redis
  when it starts, forgets it when the final text is written.
* `resume_replies(bot)`: called once when the bot is ready — for each reply left behind by the previous
  process (only those of this process's shards), edits the message it had posted (or posts a new one in
  reply to the person's message) until the answer is complete; an answer that cannot be had any more is
  replaced by a short notice asking the person to ask again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import discord

from handlers.chat import Reply
from handlers.resume import ActiveRecord, ActiveReplies
from models.logs import bind as bind_log_context

from . import i18n
from .streaming import NO_MENTIONS, ChannelTarget, Target

if TYPE_CHECKING:
    from .client import InternLMBot

log = logging.getLogger(__name__)



def instance_id(bot: Any) -> str:
    """Which bot (process) recorded a reply: a bot resumes only replies of *earlier* bots — on_ready can
    fire seconds after this one started answering messages."""
    value = getattr(bot, "_resume_instance", None)
    if value is None:
        value = uuid.uuid4().hex[:12]
        bot._resume_instance = value
    return value

i18n.register({
    "resume_lost": {i18n.EN: "⚠️ I was restarted while writing this answer and it was lost. Please ask again.",
                    i18n.ZH: "⚠️ 机器人在生成回答时重启，回答已丢失。请重新提问。"},
})


def tracker_of(bot: Any) -> ActiveReplies | None:
    """The bot's `ActiveReplies` (created on first use), or None when RESUME_REPLIES is off."""
    tracker = getattr(bot, "active_replies", None)
    if tracker is None:
        runtime = getattr(bot, "runtime", None)
        if runtime is None or not getattr(runtime.settings, "resume_replies", False):
            return None
        tracker = ActiveReplies(runtime.bus, runtime.history, runtime.settings)
        bot.active_replies = tracker
    return tracker


class TrackingTarget(Target):
    """Delegates to the real target and notes the id of the reply's first message in the record."""

    def __init__(self, inner: Target, tracker: ActiveReplies, reply: Reply) -> None:
        self.inner = inner
        self.tracker = tracker
        self.reply = reply
        self.channel_id = inner.channel_id
        self._noted = False

    async def send(self, content: str, *, view: discord.ui.View | None = None,
                   files: list[discord.File] | None = None, first: bool = False) -> Any:
        handle = await self.inner.send(content, view=view, files=files, first=first)
        if first and not self._noted and isinstance(handle, discord.Message):
            self._noted = True
            with contextlib.suppress(Exception):  # the record is a convenience; never fail a reply for it
                await self.tracker.update(self.reply, message_id=handle.id)
        return handle

    async def edit(self, handle: Any, content: str, *, view: discord.ui.View | None) -> Any:
        return await self.inner.edit(handle, content, view=view)

    async def delete(self, handle: Any) -> None:
        await self.inner.delete(handle)

    def typing(self) -> contextlib.AbstractAsyncContextManager[Any]:
        return self.inner.typing()

    def initial_handles(self) -> list[Any]:
        return self.inner.initial_handles()


@contextlib.asynccontextmanager
async def tracked(bot: Any, reply: Reply, target: Target, *, lang: str = i18n.EN,
                  owner: int | None = None) -> AsyncIterator[Target]:
    """Record the reply while it streams (no-op when RESUME_REPLIES is off or Redis hiccups).  Also tags
    this task's later log lines with the job id, which the worker's lines carry too."""
    bind_log_context(job=reply.job.id, conversation=reply.request.conversation)
    tracker = tracker_of(bot)
    if tracker is None:
        yield target
        return
    reference = getattr(target, "reference", None)
    where: dict[str, Any] = {"channel_id": target.channel_id, "lang": lang, "owner": owner,
                             "instance": instance_id(bot)}
    if reference is not None:
        where["reference_id"] = reference.id
    for handle in target.initial_handles():  # a resumed reply's existing message
        if isinstance(handle, discord.PartialMessage | discord.Message):
            where["message_id"] = handle.id
    try:
        await tracker.begin(reply, **where)
    except Exception as exc:
        log.warning("could not record the reply for resuming (%s)", type(exc).__name__)
        yield target
        return
    # Forget the record only when the final text was written.  A reply cut short — the process shutting
    # down, its HTTP session closed, a task cancelled — keeps it, so the next process finishes the reply.
    yield TrackingTarget(target, tracker, reply)
    with contextlib.suppress(Exception):
        await tracker.end(reply)


class ResumedTarget(ChannelTarget):
    """A channel target whose first message already exists (posted by the previous process)."""

    def __init__(self, channel: discord.abc.Messageable, *, message_id: int | None,
                 reference_id: int | None) -> None:
        reference = channel.get_partial_message(reference_id) if reference_id else None  # type: ignore[attr-defined]
        super().__init__(channel, reference=reference)
        self.message_id = message_id

    def initial_handles(self) -> list[Any]:
        if self.message_id:
            return [self.channel.get_partial_message(self.message_id)]  # type: ignore[attr-defined]
        return []


def owns(bot: Any, record: ActiveRecord) -> bool:
    """Whether this process should resume the record: left by an earlier process, on a shard this process
    runs (DMs arrive on shard 0)."""
    if record.where.get("instance") == instance_id(bot):
        return False  # streaming right now, in this bot
    count = getattr(bot, "shard_count", None) or 1
    if count <= 1:
        return True
    shard = (int(record.guild) >> 22) % count if record.guild else 0
    ids = getattr(bot, "shard_ids", None)
    if ids is None:
        shard_id = getattr(bot, "shard_id", None)
        ids = [shard_id] if shard_id is not None else None
    return ids is None or shard in ids


async def _channel(bot: Any, channel_id: int) -> Any:
    channel = bot.get_channel(channel_id)
    if channel is None:
        channel = await bot.fetch_channel(channel_id)
    return channel


async def resume_one(bot: InternLMBot, tracker: ActiveReplies, record: ActiveRecord) -> str:
    """Finish (or give up on) one reply; returns "finished", "lost" or "gone" (channel unreachable)."""
    from .streaming import stream_reply

    where = record.where
    lang = str(where.get("lang") or i18n.EN)
    try:
        channel = await _channel(bot, int(where.get("channel_id") or record.channel or 0))
    except (discord.HTTPException, ValueError):
        await tracker.end(record)
        return "gone"
    target = ResumedTarget(channel, message_id=where.get("message_id"), reference_id=where.get("reference_id"))
    reply = await tracker.reopen(record)
    if reply is None:
        notice = i18n.t("resume_lost", lang)
        with contextlib.suppress(discord.HTTPException):
            handles = target.initial_handles()
            if handles:
                await handles[0].edit(content=notice, view=None, allowed_mentions=NO_MENTIONS)
            else:
                await target.send(notice, first=True)
        await tracker.end(record)
        return "lost"
    owner = where.get("owner")
    try:
        await stream_reply(bot, reply, target, lang=lang, owner=int(owner) if owner else None)
    except Exception as exc:  # e.g. the channel is gone or we lost access: do not try again next start
        log.warning("could not resume reply %s (%s)", record.job_id, type(exc).__name__)
        await tracker.end(record)
        return "gone"
    return "finished"


async def resume_replies(bot: InternLMBot) -> list[asyncio.Task[str]]:
    """On ready: pick up the replies the previous process left (once per process).  Returns the tasks."""
    tracker = tracker_of(bot)
    if tracker is None or getattr(bot, "_resumed_replies", False):
        return []
    bot._resumed_replies = True  # type: ignore[attr-defined]
    try:
        records = await tracker.pending(owns=lambda r: owns(bot, r))
    except Exception as exc:
        log.warning("could not read the replies to resume (%s)", type(exc).__name__)
        return []
    if records:
        log.info("resuming %d replies that were streaming when the bot stopped", len(records))
    metrics = getattr(bot, "metrics", None)
    tasks: list[asyncio.Task[str]] = []
    for record in records:
        task = asyncio.create_task(resume_one(bot, tracker, record), name=f"resume-{record.job_id[:8]}")
        if metrics is not None:
            task.add_done_callback(
                lambda t: metrics.resumed.labels(t.result() if not t.cancelled() and not t.exception()
                                                 else "error").inc())
        tasks.append(task)
    return tasks
