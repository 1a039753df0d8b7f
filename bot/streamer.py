"""`ReplyStreamer`: the state machine that keeps one reply's Discord messages in step with its updates.

What the person sees: the typing indicator while the job waits (from 0.2 s on: an answer that is
there sooner needs none); after about a second without a worker, "⏳ queued — position N" (updated);
"no worker" as a clear message; then the answer, appearing with the first tokens and growing by edits.
An answer complete before the first write (a short one, a fast engine) is sent in a single request.
Answers longer than a message continue in follow-up messages (`bot.splitting`).  A Stop button sits
on the last message while the answer streams and a Regenerate button replaces it when it is done.

Pacing: one writer task per reply always writes the *newest* text (tokens coalesce while it waits),
and every write takes a token from the channel's `TokenBucket` (`bot.pacing`), shared by all the
replies streaming in that channel.  The final write is a priority write: it skips queued intermediate
edits and may use the bucket's reserve, so it lands at once when the budget allows.  When Discord
answers 429 anyway, discord.py waits and retries the same request; the writer then simply carries on
from the newest text, so the final messages always hold the whole answer.

`file` updates (blob references) are sent as attachments after the text.  `LiveReplies` is the process's
register of the replies it renders now (a job is rendered once per process; Stop finds its streamer).
`components=True` writes each message as a Components V2 layout (bot/layouts.py), rebuilt on every write.
REASONING_DISPLAY=file: the thinking goes with the final write of the last message, as `thinking.txt`.

Why one module past 400 lines: the states (waiting, queued, streaming, final, stopped) share one reply's
messages, its writer task and its bucket; the pieces that stand alone already live apart (targets, renderer,
layouts, splitting, pacing), and what is left is the one transition table a reader has to see whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import discord

from handlers.types import Reply, Update

from . import i18n
from .layouts import reply_layout
from .pacing import TokenBucket
from .renderer import Renderer
from .splitting import DISCORD_LIMIT, split_message
from .targets import InteractionTarget, Target

log = logging.getLogger(__name__)

MAX_FILES = 10  # attachments per Discord message
MAX_FILE_BYTES = 10 * 1024 * 1024  # stay under the smallest upload limit of a guild

# A view factory: (reply, state) → the buttons for the first message; state is "streaming" or "done".
ViewFactory = Callable[[Reply, str], discord.ui.View | None]
BlobLoader = Callable[[str], Awaitable[tuple[bytes, str] | None]]


@dataclass
class StreamResult:
    final: Update | None  # the done/error update (None if the stream ended without one)
    text: str  # the answer as it went into the final messages (without notes)
    messages: list[Any] = field(default_factory=list)  # the handles of the messages written
    writes: int = 0  # Discord writes made (sends, edits, deletes)


class ReplyStreamer:
    """Follows one reply and keeps its Discord messages in step with it (see the module docstring)."""

    def __init__(
        self,
        target: Target,
        bucket: TokenBucket,
        *,
        lang: str = i18n.EN,
        renderer: Renderer | None = None,
        views: ViewFactory | None = None,
        blobs: BlobLoader | None = None,
        limit: int = DISCORD_LIMIT,
        min_interval: float = 1.0,
        first_grace: float = 0.05,
        typing_after: float = 0.2,
        components: bool = False,
    ) -> None:
        self.target = target
        self.bucket = bucket
        self.lang = lang
        self.renderer = renderer or Renderer(lang)
        self.components = components  # Components V2 layouts instead of plain messages
        self.renderer.blocks = components
        self.thinking_attached = False  # thinking.txt went with the final write (REASONING_DISPLAY=file)
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
                self.notice = (
                    i18n.t("queued", self.lang, n=update.position)
                    if update.position
                    else i18n.t("queued_soon", self.lang)
                )
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
        elif kind in ("text", "thinking", "step"):
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
        if code == "model_unserved":  # the words are bot/cogs/models.py's (with /model)
            return "⚠️ " + i18n.t("model_unserved", self.lang, model=update.data.get("model") or "?")
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
        text = "" if self.components else content  # a V2 layout carries its text itself
        files, view = self._body(content, state, last=index == len(want) - 1)
        if index < len(self.handles):
            handle = self.handles[index]
            try:
                result = await self.target.edit(handle, text, view=view, **({"files": files} if files else {}))
            except discord.NotFound:
                # Our message was deleted (by a moderator?): write the text anew (new File objects: sent once).
                files, view = self._body(content, state, last=index == len(want) - 1)
                self.handles[index] = await self.target.send(text, view=view, files=files or None, first=index == 0)
            else:
                if isinstance(result, discord.Message) and handle is not InteractionTarget.ORIGINAL:
                    self.handles[index] = result
            self.shown[index] = (content, state)
        else:
            self.handles.append(await self.target.send(text, view=view, files=files or None, first=index == 0))
            self.shown.append((content, state))
        if files:
            self.thinking_attached = True
        self._visible.set()

    def _body(
        self, content: str, state: str | None, *, last: bool
    ) -> tuple[list[discord.File], discord.ui.View | discord.ui.LayoutView | None]:
        """A write's files (thinking.txt on the last message's final write) and `view=`: the buttons, or in
        components mode the whole message as a layout, never None (a V2 message cannot drop its flag)."""
        thinking = self.renderer.thinking_file() if last and self.final is not None else None
        files = (
            []
            if thinking is None or self.thinking_attached
            else [discord.File(io.BytesIO(thinking.encode("utf-8")), filename="thinking.txt")]
        )
        buttons = self._view(state)
        return files, reply_layout(content, buttons, [f.filename for f in files]) if self.components else buttons

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
            try:  # a V2 message shows an attachment only where a component references it
                view = reply_layout("", None, [f.filename or "" for f in files]) if self.components else None
                self.handles.append(await self.target.send("", view=view, files=files))
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
                self.apply(
                    Update("error", text=self.renderer.answer, data={"message": i18n.t("lost_track", self.lang)})
                )

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


class LiveReplies:
    """The replies this process renders now: a job is rendered at most once per process (a resumed reply and
    a live one must not both write), and Stop finds the streamer of a job to end it early."""

    def __init__(self) -> None:
        self.jobs: set[str] = set()  # jobs being rendered (from before the streamer exists)
        self.streamers: dict[str, ReplyStreamer] = {}  # job id → its streamer

    def claim(self, job_id: str) -> bool:
        """True if this process was not rendering the job yet (and now is)."""
        if job_id in self.jobs:
            return False
        self.jobs.add(job_id)
        return True

    def release(self, job_id: str) -> None:
        self.jobs.discard(job_id)
        self.streamers.pop(job_id, None)
