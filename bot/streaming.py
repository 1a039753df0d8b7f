"""Render a reply's `Update`s into Discord messages that grow by edits — the heart of the front end.

Usage (a cog that has a `Reply` from a handler):

    target = ChannelTarget(message.channel, reference=message)     # or InteractionTarget(interaction)
    result = await stream_reply(bot, reply, target, lang=lang)      # returns when the answer is final

What the person sees: the typing indicator while the job waits (from 0.2 s on: an answer that is
there sooner needs none); after about a second without a worker, "⏳ queued — position N" (updated);
"no worker" as a clear message; then the answer, appearing with the first tokens and growing by edits.
An answer complete before the first write (a short one, a fast engine) is sent in a single request.
Answers longer than a message continue in follow-up messages (`bot.splitting`).  A Stop button sits
on the last message while the answer streams and a Regenerate button replaces it when it is done.

Pacing: one writer task per reply always writes the *newest* text (tokens coalesce while it waits),
and every write takes a token from the channel's `TokenBucket` (`bot.ratelimit`), shared by all the
replies streaming in that channel.  The final write is a priority write: it skips queued intermediate
edits and may use the bucket's reserve, so it lands at once when the budget allows.  When Discord
answers 429 anyway, discord.py waits and retries the same request; the writer then simply carries on
from the newest text, so the final messages always hold the whole answer.

Extending: agent and image cogs pass a `Renderer` subclass to show `step` updates their own way
(override `render`), and get `file` updates (blob references) sent as attachments after the text.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import discord

from handlers.chat import Reply, Update

from . import i18n
from .ratelimit import TokenBucket
from .splitting import DISCORD_LIMIT, split_message

if TYPE_CHECKING:
    from .client import InternLMBot

log = logging.getLogger(__name__)

NO_MENTIONS = discord.AllowedMentions.none()
MAX_FILES = 10  # attachments per Discord message
MAX_FILE_BYTES = 10 * 1024 * 1024  # stay under the smallest upload limit of a guild

# A view factory: (reply, state) → the buttons for the first message; state is "streaming" or "done".
ViewFactory = Callable[[Reply, str], discord.ui.View | None]
BlobLoader = Callable[[str], Awaitable[tuple[bytes, str] | None]]


async def ephemeral(interaction: discord.Interaction, text: str) -> None:
    """Answer an interaction with a notice only the person sees (refusals, confirmations)."""
    await interaction.response.send_message(text, ephemeral=True, allowed_mentions=NO_MENTIONS)


# ====================================================================== renderers
class Renderer:
    """Turns updates into the reply's visible body.  The default shows the answer text as it grows.

    Subclass and override `render` to show `step` updates (agent tool calls, article stages): keep
    your own state, return the whole body to show, or None to leave the display unchanged.  `finish`
    gives the final body (the streamer adds the stopped/error notes itself).
    """

    def __init__(self, lang: str = i18n.EN) -> None:
        self.lang = lang
        self.answer = ""

    def render(self, update: Update) -> str | None:
        if update.kind in ("text", "done", "error"):
            self.answer = update.text
        elif update.kind == "restart":
            self.answer = ""
        else:
            return None
        return self.answer

    def finish(self, update: Update) -> str:
        body = self.render(update)
        return self.answer if body is None else body


# ====================================================================== targets
class Target(ABC):
    """Where a reply's messages go.  Handles are whatever the target needs to edit a message later."""

    channel_id: int = 0

    @abstractmethod
    async def send(self, content: str, *, view: discord.ui.View | None = None,
                   files: list[discord.File] | None = None, first: bool = False) -> Any: ...

    @abstractmethod
    async def edit(self, handle: Any, content: str, *, view: discord.ui.View | None) -> Any: ...

    async def delete(self, handle: Any) -> None:
        with contextlib.suppress(discord.HTTPException):
            await handle.delete()

    def typing(self) -> contextlib.AbstractAsyncContextManager[Any]:
        """Shown while nothing is visible yet (a no-op where Discord already shows "thinking")."""
        return contextlib.nullcontext()

    def initial_handles(self) -> list[Any]:
        """Messages that exist before the first write (an interaction's deferred response)."""
        return []


class ChannelTarget(Target):
    """A reply in a channel, thread or DM; the first message references the person's message."""

    def __init__(self, channel: discord.abc.Messageable, *, reference: discord.Message | None = None) -> None:
        self.channel = channel
        self.reference = reference
        self.channel_id = getattr(channel, "id", 0)

    async def send(self, content: str, *, view: discord.ui.View | None = None,
                   files: list[discord.File] | None = None, first: bool = False) -> discord.Message:
        kwargs: dict[str, Any] = {"allowed_mentions": NO_MENTIONS}
        if view is not None:
            kwargs["view"] = view
        if files:
            kwargs["files"] = files
        if first and self.reference is not None:
            try:
                return await self.channel.send(
                    content or None, reference=self.reference.to_reference(fail_if_not_exists=False),
                    mention_author=False, **kwargs)
            except discord.Forbidden:
                pass  # replying needs Read Message History; without it, answer as a plain message
        return await self.channel.send(content or None, **kwargs)

    async def edit(self, handle: discord.Message, content: str, *, view: discord.ui.View | None) -> Any:
        return await handle.edit(content=content, view=view, allowed_mentions=NO_MENTIONS)

    def typing(self) -> contextlib.AbstractAsyncContextManager[Any]:
        return self.channel.typing()


class _Original:
    """Marks an interaction's original response (edited through the interaction webhook)."""


class InteractionTarget(Target):
    """A reply to a deferred interaction: the original response, then follow-ups."""

    ORIGINAL = _Original()

    def __init__(self, interaction: discord.Interaction) -> None:
        self.interaction = interaction
        self.channel_id = interaction.channel_id or 0

    def initial_handles(self) -> list[Any]:
        return [self.ORIGINAL] if self.interaction.response.is_done() else []

    async def send(self, content: str, *, view: discord.ui.View | None = None,
                   files: list[discord.File] | None = None, first: bool = False) -> Any:
        kwargs: dict[str, Any] = {"allowed_mentions": NO_MENTIONS, "wait": True}
        if view is not None:
            kwargs["view"] = view
        if files:
            kwargs["files"] = files
        return await self.interaction.followup.send(content or "", **kwargs)

    async def edit(self, handle: Any, content: str, *, view: discord.ui.View | None) -> Any:
        if handle is self.ORIGINAL:
            return await self.interaction.edit_original_response(content=content, view=view,
                                                                 allowed_mentions=NO_MENTIONS)
        return await handle.edit(content=content, view=view, allowed_mentions=NO_MENTIONS)

    async def delete(self, handle: Any) -> None:
        with contextlib.suppress(discord.HTTPException):
            if handle is self.ORIGINAL:
                await self.interaction.delete_original_response()
            else:
                await handle.delete()


# ====================================================================== the streamer
@dataclass
class StreamResult:
    final: Update | None  # the done/error update (None if the stream ended without one)
    text: str  # the answer as it went into the final messages (without notes)
    messages: list[Any] = field(default_factory=list)  # the handles of the messages written
    writes: int = 0  # Discord writes made (sends, edits, deletes)


class ReplyStreamer:
    """Follows one reply and keeps its Discord messages in step with it (see the module docstring)."""

    def __init__(self, target: Target, bucket: TokenBucket, *, lang: str = i18n.EN,
                 renderer: Renderer | None = None, views: ViewFactory | None = None,
                 blobs: BlobLoader | None = None, limit: int = DISCORD_LIMIT, min_interval: float = 1.0,
                 first_grace: float = 0.05, typing_after: float = 0.2) -> None:
        self.target = target
        self.bucket = bucket
        self.lang = lang
        self.renderer = renderer or Renderer(lang)
        self.views = views
        self.blobs = blobs
        self.limit = limit
        self.min_interval = min_interval  # between intermediate edits of this reply ("about 1/s")
        # Before the first write, wait this long for the final update: an answer that is complete within
        # it is sent in one request (text and Regenerate) instead of a post and an edit.  Imperceptible
        # for a streamed answer (less than a Discord round trip), half the requests for a quick one.
        self.first_grace = first_grace
        # The typing indicator is shown only when nothing is visible after this long: a quick answer
        # does not pay for a request nobody would see, and it never delays a write (its own task).
        self.typing_after = typing_after
        self._last_write = float("-inf")
        self.body = ""  # what the renderer wants shown
        self.notice = ""  # a status line: queue position, no worker, restart
        self.footer = ""  # stopped / error note, set with the final update
        self.final: Update | None = None
        self.files: list[dict[str, Any]] = []
        self.handles: list[Any] = list(target.initial_handles())
        self.shown: list[tuple[str, str | None] | None] = [None] * len(self.handles)
        self.writes = 0
        self._changed = asyncio.Event()
        self._finished = asyncio.Event()
        self._visible = asyncio.Event()
        self._abandoned = asyncio.Event()
        self.reply: Reply | None = None
        self.final_at: float | None = None  # monotonic time of the final update (for tests/metrics)
        self.synced_at: float | None = None  # monotonic time the final messages were all written

    # ---------------------------------------------------------------- state from updates
    def apply(self, update: Update) -> None:
        """Fold one update into what should be shown."""
        kind = update.kind
        if kind == "queued":
            if not self.body:
                self.notice = (i18n.t("queued", self.lang, n=update.position) if update.position
                               else i18n.t("queued_soon", self.lang))
        elif kind == "no_worker":
            if not self.body:
                self.notice = i18n.t("no_worker", self.lang)
        elif kind == "started":
            if self.notice and not self.body:
                self.notice = i18n.t("thinking", self.lang)
        elif kind == "restart":
            self.notice = i18n.t("restarted", self.lang)
            self.files.clear()
            body = self.renderer.render(update)
            self.body = body if body is not None else ""
        elif kind == "file":
            self.files.append(dict(update.data))
        elif kind in ("text", "step"):
            body = self.renderer.render(update)
            if body is not None:
                self.body = body
                if body and self.notice and self.notice != i18n.t("restarted", self.lang):
                    self.notice = ""
        elif kind in ("done", "error"):
            self.body = self.renderer.finish(update)
            self.notice = ""
            self.footer = self._footer(update)
            self.final = update
            self.final_at = time.monotonic()
            self._finished.set()
        self._changed.set()

    def _footer(self, update: Update) -> str:
        if update.kind == "done":
            if update.data.get("stopped"):
                return i18n.t("stopped" if self.body.strip() else "stopped_empty", self.lang)
            return "" if self.body.strip() else i18n.t("empty_answer", self.lang)
        code = update.data.get("code")
        if code == "no_worker":
            return i18n.t("no_worker_gave_up", self.lang)
        if code == "timeout":
            return i18n.t("timeout", self.lang)
        return i18n.t("error", self.lang, message=update.data.get("message") or "error")

    def display(self) -> str:
        """The full text to show now (before splitting)."""
        if self.final is not None:
            if self.body.strip() and self.footer:
                return f"{self.body.rstrip()}\n\n{self.footer}"
            return self.body if self.body.strip() else self.footer
        if self.notice and self.body.strip():
            return f"*{self.notice}*\n{self.body}" if self.notice == i18n.t("restarted", self.lang) else self.body
        return self.body if self.body.strip() else self.notice

    def desired(self) -> list[tuple[str, str | None]]:
        """(content, view state) per message.  The buttons live on the last message, and the final write
        of an answer is a single edit (text and Regenerate together).  While the answer streams, Stop is
        never missing: when the answer overflows, the previous message keeps Stop (with its final text)
        until the new last message is out with its own, and only then drops it."""
        parts = split_message(self.display(), self.limit)
        if not parts:
            return []
        state = "done" if self.final is not None else "streaming"
        last = len(parts) - 1
        carried = len(parts)  # the message now showing the buttons (none yet: nothing to keep)
        for index in range(len(self.shown) - 1, -1, -1):
            item = self.shown[index]
            if item is not None and item[1] is not None:
                carried = index
                break
        out: list[tuple[str, str | None]] = []
        for index, content in enumerate(parts):
            if index == last:
                out.append((content, state))
            elif self.final is None and index >= carried:
                out.append((content, "streaming"))  # keeps Stop until a later message carries it
            else:
                out.append((content, None))
        return out

    # ---------------------------------------------------------------- writing
    def _view(self, state: str | None) -> discord.ui.View | None:
        if state is None or self.views is None or self.reply is None:
            return None
        if state == "done" and (self.final is None or self.final.kind != "done"):
            return None
        return self.views(self.reply, state)

    def _pending(self) -> int | None:
        """Index of the first message out of step, len(handles) for a new one, or None if in step."""
        want = self.desired()
        for index, item in enumerate(want):
            if index >= len(self.handles) or self.shown[index] != item:
                return index
        if len(self.handles) > len(want) and (want or self.final is not None):
            return len(want)  # a leftover message to delete (after a restart shortened the answer)
        return None

    async def _token(self) -> None:
        """A write token: normal priority, upgraded to priority as soon as the final update arrives."""
        if self.final is not None:
            await self.bucket.acquire(priority=True)
            return
        pause = self._last_write + self.min_interval - time.monotonic()
        if pause > 0:  # this reply wrote recently: let tokens coalesce (the final update cuts this short)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._finished.wait(), pause)
            if self.final is not None:
                await self.bucket.acquire(priority=True)
                return
        normal = asyncio.ensure_future(self.bucket.acquire())
        final = asyncio.ensure_future(self._finished.wait())
        try:
            await asyncio.wait({normal, final}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            final.cancel()
        if normal.done() and not normal.cancelled() and normal.exception() is None:
            return
        normal.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await normal
        await self.bucket.acquire(priority=True)

    async def _write_one(self, index: int) -> None:
        want = self.desired()
        if index >= len(want):  # delete a leftover message
            handle = self.handles.pop()
            self.shown.pop()
            await self.target.delete(handle)
            return
        content, state = want[index]
        view = self._view(state)
        if index < len(self.handles):
            handle = self.handles[index]
            try:
                result = await self.target.edit(handle, content, view=view)
            except discord.NotFound:
                # Our message was deleted (by a moderator?): write the text anew.
                self.handles[index] = await self.target.send(content, view=view, first=index == 0)
            else:
                if isinstance(result, discord.Message) and handle is not InteractionTarget.ORIGINAL:
                    self.handles[index] = result
            self.shown[index] = (content, state)
        else:
            self.handles.append(await self.target.send(content, view=view, first=index == 0))
            self.shown.append((content, state))
        self._visible.set()

    async def _writer(self) -> None:
        failures = 0
        while True:
            if self._pending() is None:
                if self.final is not None:
                    return
                self._changed.clear()
                await self._changed.wait()
                continue
            if self.writes == 0 and self.final is None and self.first_grace > 0:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._finished.wait(), self.first_grace)
            await self._token()
            index = self._pending()  # newest state after the wait: tokens coalesce here
            if index is None:
                continue
            try:
                await self._write_one(index)
                self.writes += 1
                failures = 0
                self._last_write = time.monotonic()
            except discord.HTTPException as exc:
                failures += 1
                self.writes += 1
                log.warning("writing a reply message failed (%s %s): %s", exc.status, exc.code, exc.text)
                if failures >= 3:
                    if self.final is not None:
                        return
                    # Give up on intermediate edits; try again when the answer is final.
                    await self._finished.wait()
                    failures = 0

    async def _keep_typing(self) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._visible.wait(), self.typing_after)
            return  # something is on screen already: no indicator needed
        with contextlib.suppress(discord.HTTPException, asyncio.CancelledError):
            async with self.target.typing():
                await self._visible.wait()

    async def _send_files(self) -> None:
        if not self.files or self.blobs is None or self.final is None or self.final.kind != "done":
            return
        files: list[discord.File] = []
        for info in self.files[:MAX_FILES]:
            blob = await self.blobs(str(info.get("blob", "")))
            if blob is None or len(blob[0]) > MAX_FILE_BYTES:
                continue
            files.append(discord.File(io.BytesIO(blob[0]), filename=str(info.get("name") or "file.bin")))
        if files:
            await self.bucket.acquire(priority=True)
            try:
                self.handles.append(await self.target.send("", files=files))
                self.writes += 1
            except discord.HTTPException as exc:
                log.warning("sending files failed: %s", exc)

    def abandon(self) -> None:
        """Stop following the reply and end it as stopped, now (Stop pressed while no worker is alive to
        confirm it: the job is cancelled, and nobody would answer the reply stream for a long while)."""
        self._abandoned.set()

    async def _follow(self, reply: Reply, updates: AsyncIterator[Update]) -> None:
        try:
            async for update in updates:
                self.apply(update)
                if update.final:
                    break
            aclose = getattr(updates, "aclose", None)
            if aclose is not None:  # finish the generator now, not whenever it is garbage-collected
                await aclose()
        except Exception:  # e.g. Redis went away: say so in the message instead of leaving it hanging
            log.exception("following reply %s failed", reply.job.id)
            if self.final is None:
                self.apply(Update("error", text=self.renderer.answer,
                                  data={"message": i18n.t("lost_track", self.lang)}))

    async def run(self, reply: Reply, updates: AsyncIterator[Update]) -> StreamResult:
        """Consume `updates` and keep the messages in step; returns when the final text is written."""
        self.reply = reply
        writer = asyncio.create_task(self._writer(), name=f"reply-writer-{reply.job.id[:8]}")
        typing = asyncio.create_task(self._keep_typing()) if not self.handles else None
        follow = asyncio.create_task(self._follow(reply, updates), name=f"reply-follow-{reply.job.id[:8]}")
        abandoned = asyncio.create_task(self._abandoned.wait())
        try:
            await asyncio.wait({follow, abandoned}, return_when=asyncio.FIRST_COMPLETED)
            if not follow.done():  # abandoned: stop following, the answer ends here as stopped
                follow.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await follow
                if self.final is None:
                    self.apply(Update("done", text=self.renderer.answer, data={"stopped": True}))
            if self.final is None:  # the stream ended without a final event
                self.apply(Update("error", text=self.renderer.answer, data={"message": "the answer was cut off"}))
            await writer
            self.synced_at = time.monotonic()
            if not follow.done():  # closing the updates finishes the answer's history write: wait for it
                await follow
            await self._send_files()
        finally:
            for task in (follow, abandoned):
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await follow
            if not writer.done():
                writer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await writer
            self._visible.set()
            if typing is not None:
                typing.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await typing
        return StreamResult(self.final, self.renderer.answer, list(self.handles), self.writes)


async def stream_reply(bot: InternLMBot, reply: Reply, target: Target, *, lang: str = i18n.EN,
                       renderer: Renderer | None = None, buttons: bool = True, owner: int | None = None,
                       updates: AsyncIterator[Update] | None = None) -> StreamResult:
    """Stream `reply` into `target` with the bot's shared per-channel buckets and reply buttons.

    `owner` (the asker's user id) may press Stop/Regenerate (moderators always may); None = anyone.
    `buttons=False` leaves them off.  `updates` defaults to `bot.runtime.chat.follow(reply)`; pass your
    own iterator to post-process.  A job is rendered at most once per process: a second call for a job
    already streaming here returns at once (with `final=None`), so nothing is written or recorded twice.
    """
    streaming: set[str] = bot.__dict__.setdefault("streaming_jobs", set())
    if reply.job.id in streaming:
        return StreamResult(None, "")
    streaming.add(reply.job.id)
    try:
        return await _stream_reply(bot, reply, target, lang=lang, renderer=renderer, buttons=buttons,
                                   owner=owner, updates=updates)
    finally:
        streaming.discard(reply.job.id)


async def _stream_reply(bot: InternLMBot, reply: Reply, target: Target, *, lang: str, renderer: Renderer | None,
                        buttons: bool, owner: int | None, updates: AsyncIterator[Update] | None) -> StreamResult:
    from .resume import tracked  # here: bot.resume builds on this module

    metrics = getattr(bot, "metrics", None)  # bot/metrics.py, set by the stats cog
    if metrics is not None:
        metrics.reply_started(reply)
    async with tracked(bot, reply, target, lang=lang, owner=owner) as target:  # survives a bot restart
        streamer = ReplyStreamer(
            target, bot.buckets.get(target.channel_id), lang=lang, renderer=renderer,
            views=(lambda r, state: bot.reply_view(r, state, lang, owner)) if buttons else None,
            blobs=bot.runtime.bus.get_blob)
        streamers: dict[str, ReplyStreamer] = bot.__dict__.setdefault("live_streamers", {})
        streamers[reply.job.id] = streamer  # for Stop (bot.cogs.chat.press_stop → abandon)
        try:
            result = await streamer.run(reply, updates if updates is not None else bot.runtime.chat.follow(reply))
        finally:
            streamers.pop(reply.job.id, None)
    if metrics is not None:
        metrics.reply_finished(reply, result, synced_at=streamer.synced_at)
    return result
