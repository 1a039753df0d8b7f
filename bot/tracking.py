"""Recording the replies being streamed, so a restarted bot can finish them (the mechanism is
`handlers.active_replies`; picking them up again is bot/resume.py).

`tracked(bot, reply, target, ...)`, used by `replies.stream_reply` around every reply, records the reply
(channel, the message it answers, the first reply message once sent, language, owner) in Redis when it
starts, and forgets it when the final text is written.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import discord

from handlers.active_replies import ActiveReplies
from handlers.types import Reply
from models.logs import bind as bind_log_context

from . import i18n
from .host import BotHost
from .targets import Target

log = logging.getLogger(__name__)


class TrackingTarget(Target):
    """Delegates to the real target and notes the id of the reply's first message in the record."""

    def __init__(self, inner: Target, tracker: ActiveReplies, reply: Reply) -> None:
        self.inner = inner
        self.tracker = tracker
        self.reply = reply
        self.channel_id = inner.channel_id
        self._noted = False

    async def send(
        self,
        content: str,
        *,
        view: discord.ui.View | discord.ui.LayoutView | None = None,
        files: list[discord.File] | None = None,
        first: bool = False,
    ) -> Any:
        handle = await self.inner.send(content, view=view, files=files, first=first)
        if first and not self._noted and isinstance(handle, discord.Message):
            self._noted = True
            with contextlib.suppress(Exception):  # the record is a convenience; never fail a reply for it
                await self.tracker.update(self.reply, message_id=handle.id)
        return handle

    async def edit(
        self,
        handle: Any,
        content: str,
        *,
        view: discord.ui.View | discord.ui.LayoutView | None,
        files: list[discord.File] | None = None,
    ) -> Any:
        return await self.inner.edit(handle, content, view=view, files=files)

    async def delete(self, handle: Any) -> None:
        await self.inner.delete(handle)

    def typing(self) -> contextlib.AbstractAsyncContextManager[Any]:
        return self.inner.typing()

    def initial_handles(self) -> list[Any]:
        return self.inner.initial_handles()


@contextlib.asynccontextmanager
async def tracked(
    bot: BotHost, reply: Reply, target: Target, *, lang: str = i18n.EN, owner: int | None = None
) -> AsyncIterator[Target]:
    """Record the reply while it streams (no-op when RESUME_REPLIES is off or Redis hiccups).  Also tags
    this task's later log lines with the job id, which the worker's lines carry too."""
    bind_log_context(job=reply.job.id, conversation=reply.request.conversation)
    tracker = bot.active_replies
    if tracker is None:
        yield target
        return
    reference = getattr(target, "reference", None)
    where: dict[str, Any] = {"channel_id": target.channel_id, "lang": lang, "owner": owner, "instance": bot.instance_id}
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
