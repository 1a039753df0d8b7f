"""What a chat request means: record the user's turn, build the job from history, follow the reply.

The front ends (Discord, console) call `ChatHandler.ask` and render the `Update`s that `follow` yields;
they never see job events or Redis.  The agent and image handlers reuse `submit` and `follow` with
their own job kinds and payloads.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

from redis.exceptions import RedisError

from models.protocol import Bus, Job, PayloadTooLarge, reraise_if_cancelling
from models.settings import Settings

from .conf import ConfStore
from .history import HistoryStore, Turn

UpdateKind = Literal["queued", "no_worker", "started", "text", "step", "file", "restart", "done", "error"]

QUEUE_CHECK_EVERY = 1.0  # seconds between queue-position / worker-liveness checks of a waiting reply
TOO_LONG = "That message is too long ({n} characters). Please keep it under {limit} characters."
GAVE_UP = "Sorry — no answer arrived in time, so I stopped waiting. Please try again."
NO_WORKER = ("No inference worker is running right now, so I can't answer yet. "
             "Your message is queued and will be answered when a worker starts.")


@dataclass
class Request:
    """One thing a person asked, independent of where they asked it."""

    conversation: str
    text: str
    user_name: str | None = None  # set in shared channels so the model can tell speakers apart
    images: list[str] = field(default_factory=list)  # blob refs, already validated and stored
    guild: int | None = None
    channel: int | None = None
    kind: str = "chat"
    payload: dict[str, Any] = field(default_factory=dict)  # kind-specific extras
    record: bool = True  # write the turns into history


@dataclass
class Update:
    """Something the front end should show."""

    kind: UpdateKind
    text: str = ""  # the whole answer so far (for "text", "done", "restart")
    attempt: int = 1
    position: int | None = None
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def final(self) -> bool:
        return self.kind in ("done", "error")


@dataclass
class Reply:
    """A submitted job, as the front end holds it (to follow it, or to press Stop)."""

    job: Job
    request: Request
    submitted: float = field(default_factory=time.monotonic)


class InputError(ValueError):
    """A request refused before it reached a worker; the message is friendly and shown as is."""


class ChatHandler:
    def __init__(self, bus: Bus, history: HistoryStore, conf: ConfStore, settings: Settings) -> None:
        self.bus = bus
        self.history = history
        self.conf = conf
        self.settings = settings
        self.no_worker_timeout = 30.0  # give up on a job nobody can run after this long
        self.notice_after = 1.0  # show a queue notice when no worker took the job within this
        self._alive_at = -QUEUE_CHECK_EVERY
        self._alive_cached = True

    # ------------------------------------------------------------------ requests
    def check_text(self, text: str) -> None:
        limit = self.settings.max_input_chars
        if len(text) > limit:
            raise InputError(TOO_LONG.format(n=len(text), limit=limit))

    async def ask(self, request: Request) -> Reply:
        """Record the user's turn and submit a job that answers it from the conversation's history."""
        self.check_text(request.text)
        if request.record:
            await self.history.append(request.conversation, Turn(
                "user", request.text, name=request.user_name, images=request.images))
        return await self.submit(request)

    async def submit(self, request: Request, *, extra_turns: list[Turn] | None = None) -> Reply:
        eff = await self.conf.effective(guild=request.guild, channel=request.channel)
        if request.record:
            turns = await self.history.recent(request.conversation)
        else:
            turns = [Turn("user", request.text, name=request.user_name, images=request.images)]
        turns += extra_turns or []
        payload: dict[str, Any] = {
            "system": eff.system_prompt,
            "messages": [t.as_message() for t in turns],
            "params": eff.params(),
        }
        payload.update(request.payload)
        job = Job(kind=request.kind, payload=payload, conversation=request.conversation)
        try:
            await self.bus.submit(job)
        except PayloadTooLarge as exc:
            raise InputError(f"Sorry, {exc}.") from exc
        return Reply(job, request)

    async def regenerate(self, request: Request) -> Reply | None:
        """Drop the last answer and answer the last user turn again; None if there is nothing to redo."""
        turns = await self.history.recent(request.conversation, limit=2)
        if not turns:
            return None
        if turns[-1].role == "assistant":
            await self.history.pop_last_assistant(request.conversation)
        turns = await self.history.recent(request.conversation, limit=1)
        if not turns or turns[-1].role != "user":
            return None
        return await self.submit(request)

    async def stop(self, reply: Reply) -> None:
        await self.bus.cancel(reply.job.id)

    async def reset(self, conversation: str) -> int:
        return await self.history.reset(conversation)

    # ------------------------------------------------------------------ following a reply
    async def follow(self, reply: Reply) -> AsyncIterator[Update]:
        """Translate the job's events into updates; on `done`, write the answer into history.

        Attempts: events of an attempt older than the newest one seen are dropped (a worker that stalled
        and was taken over may still write a few); the first event of a newer attempt yields `restart` and
        the answer starts again from empty.  Only the final event of the newest attempt ends the reply, so
        history gets exactly one assistant turn per reply."""
        job_id = reply.job.id
        attempt = 1
        parts: list[str] = []
        started = False
        last_news = time.monotonic()
        no_worker_since: float | None = None
        orphan_noted = False
        position: int | None = None
        position_at = -QUEUE_CHECK_EVERY
        deadline = self.settings.job_timeout + self.settings.job_visibility_timeout + 10
        async for event in self.bus.events(job_id, block_ms=250):
            now = time.monotonic()
            if event is None:
                if not started and now - reply.submitted >= self.notice_after:
                    if not await self._alive():
                        no_worker_since = no_worker_since or now
                        yield Update("no_worker", data={"message": NO_WORKER})
                        if now - no_worker_since > self.no_worker_timeout:
                            await self.bus.cancel(job_id)
                            yield Update("error", data={"message": NO_WORKER.split(".")[0] + ".",
                                                        "code": "no_worker"})
                            return
                    else:
                        no_worker_since = None
                        if now - position_at >= QUEUE_CHECK_EVERY:  # the notice ticks; the count is costlier
                            position, position_at = await self._position(job_id), now
                        yield Update("queued", position=position)
                elif (started and not orphan_noted
                      and now - last_news > self.settings.job_visibility_timeout + 5
                      and not await self._alive()):
                    # The worker running it died and no other is alive to take it over: say so once.
                    orphan_noted = True
                    yield Update("no_worker", attempt=attempt, data={"message": NO_WORKER})
                if now - last_news > deadline:
                    await self.bus.cancel(job_id)
                    yield Update("error", data={"message": GAVE_UP, "code": "timeout"})
                    return
                continue
            last_news = now
            orphan_noted = False
            if event.attempt < attempt:
                continue  # a late event of an abandoned attempt
            if event.attempt > attempt:
                attempt = event.attempt
                if not event.final:  # a dead-letter error needs no "answering again" first
                    yield Update("restart", attempt=attempt)
                parts.clear()
            if event.type == "status":
                if not started:
                    started = True
                    yield Update("started", attempt=attempt, data=event.data)
            elif event.type == "delta":
                started = True
                parts.append(event.data.get("text", ""))
                yield Update("text", text="".join(parts), attempt=attempt)
            elif event.type == "step":
                started = True
                yield Update("step", text="".join(parts), attempt=attempt, data=event.data)
            elif event.type == "file":
                yield Update("file", attempt=attempt, data=event.data)
            elif event.type == "done":
                text = event.data.get("text")
                text = text if isinstance(text, str) else "".join(parts)
                await self._record_answer(reply, text, event.data)
                yield Update("done", text=text, attempt=attempt, data=event.data)
                return
            elif event.type == "error":
                yield Update("error", text="".join(parts), attempt=attempt, data=event.data)
                return

    async def _alive(self) -> bool:
        """Whether any worker is alive; True while Redis is unreachable (no false "no worker" notice).
        Shared by all replies being followed and refreshed at most every `QUEUE_CHECK_EVERY` seconds, so
        a hundred queued replies do not ask Redis a hundred times per tick."""
        now = time.monotonic()
        if now - self._alive_at < QUEUE_CHECK_EVERY:
            return self._alive_cached
        try:
            alive = bool(await self.bus.alive_workers())
        except (RedisError, OSError):
            reraise_if_cancelling()
            alive = True
        self._alive_at, self._alive_cached = now, alive
        return alive

    async def _position(self, job_id: str) -> int | None:
        try:
            return await self.bus.queue_position(job_id)
        except (RedisError, OSError):
            reraise_if_cancelling()
            return None

    async def _record_answer(self, reply: Reply, text: str, data: dict[str, Any]) -> None:
        if not reply.request.record:
            return
        stored = data.get("history")
        stored = stored if isinstance(stored, str) else text
        meta: dict[str, Any] = {"job": reply.job.id}
        if data.get("stopped"):
            meta["stopped"] = True
        if not stored and data.get("stopped"):
            stored = "(stopped before answering)"
        turn = Turn("assistant", stored, meta=meta)
        for delay in (0.2, 1.0, 3.0, 0.0):  # survive a Redis restart: the answer belongs in history
            try:
                await self.history.append(reply.request.conversation, turn)
                return
            except (RedisError, OSError):
                reraise_if_cancelling()
                if not delay:
                    raise
                await asyncio.sleep(delay)
