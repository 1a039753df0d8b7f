"""What a chat request means: record the user's turn, build the job from history, follow the reply.

The front ends (Discord, console) call `ChatHandler.ask` and render the `Update`s that `follow` yields
(the types are in handlers/types.py); they never see job events or Redis.  The agent and image handlers
reuse `submit` and `follow` with their own job kinds and payloads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from redis.exceptions import RedisError

from models.protocol import Bus, Job, PayloadTooLarge, WorkerInfo, reraise_if_cancelling
from models.settings import Settings

from .history import HistoryStore, Turn
from .overrides import ConfStore
from .replay import expired_note, still_stored
from .types import InputError, Reply, Request, Update, UpdateKind

# The shared types live in handlers/types.py; they are re-exported here for the modules that import them
# from `handlers.chat` (the agent, article and image handlers).
__all__ = ["ChatHandler", "InputError", "Reply", "Request", "Update", "UpdateKind"]

log = logging.getLogger(__name__)

QUEUE_CHECK_EVERY = 1.0  # seconds between queue-position / worker-liveness checks of a waiting reply
TOO_LONG = "That message is too long ({n} characters). Please keep it under {limit} characters."
GAVE_UP = "Sorry — no answer arrived in time, so I stopped waiting. Please try again."
NO_WORKER = (
    "No inference worker is running right now, so I can't answer yet. "
    "Your message is queued and will be answered when a worker starts."
)
UNSERVED = (
    "The model {model} is not served by any worker right now, so I can't answer with it. "
    "An admin can choose another with /model."
)


class ChatHandler:
    """Turns requests into jobs and job events into updates (one per process, shared by every front end)."""

    def __init__(self, bus: Bus, history: HistoryStore, conf: ConfStore, settings: Settings) -> None:
        self.bus = bus
        self.history = history
        self.conf = conf
        self.settings = settings
        self.no_worker_timeout = 30.0  # give up on a job nobody can run after this long
        self.notice_after = 1.0  # show a queue notice when no worker took the job within this
        self._alive_at = -QUEUE_CHECK_EVERY
        self._alive_cached: list[WorkerInfo] | None = None  # None: not known (Redis unreachable)
        # Per-job "answer recorded" markers must outlive every reader that can still see the job's final
        # event: its reply stream (REPLY_TTL after the last event) and its resume record.
        self.record_marker_ttl = 2 * max(
            settings.reply_ttl, int(settings.job_timeout + settings.job_visibility_timeout) + 60
        )
        self._recording: set[asyncio.Task[None]] = set()  # answers being written into history

    # ------------------------------------------------------------------ requests
    def check_text(self, text: str) -> None:
        limit = self.settings.max_input_chars
        if len(text) > limit:
            raise InputError(TOO_LONG.format(n=len(text), limit=limit))

    async def claim(self, source: str, ttl: int = 900) -> bool:
        """True for the first bot process to claim an incoming event (`source`, e.g. a Discord message id),
        False for any other: during a deploy two processes on the same shard both receive every message."""
        return await self.bus.claim_event(source, ttl)

    async def ask(self, request: Request) -> Reply:
        """Record the user's turn and submit a job that answers it from the conversation's history."""
        self.check_text(request.text)
        user_turn = Turn(
            "user", request.content, name=request.user_name, images=request.images, meta=dict(request.meta)
        )
        return await self._submit(request, user_turn=user_turn if request.record else None)

    async def submit(self, request: Request, *, extra_turns: list[Turn] | None = None) -> Reply:
        """Submit a job for `request` built from the conversation's history (or, with `record` off, from
        the request's text alone)."""
        return await self._submit(request, extra_turns=extra_turns)

    async def _submit(
        self, request: Request, *, user_turn: Turn | None = None, extra_turns: list[Turn] | None = None
    ) -> Reply:
        # One script for the settings, the user's turn and the history the job is built from (atomic: the
        # turns and the generation read belong together, and include the new turn), then one write for the
        # job itself; both in the bus's shared pipeline, so a burst of requests shares the round trips.
        overrides, turns, generation = await self.history.request_round_trip(
            request.conversation,
            append=user_turn,
            snapshot=request.record,
            hashes=self.conf.scope_keys(guild=request.guild, channel=request.channel),
            run_script=self.bus.run_script,
        )
        eff = self.conf.effective_from(overrides)
        if not request.record:
            turns = [Turn("user", request.content, name=request.user_name, images=request.images)]
        turns += extra_turns or []
        payload: dict[str, Any] = {
            "system": eff.system_prompt,
            "messages": [t.as_message() for t in turns],
            "params": eff.params(),
        }
        payload.update(request.payload)
        job = Job(kind=request.kind, payload=payload, conversation=request.conversation, model=eff.model)
        try:
            await self.bus.submit(job)
        except PayloadTooLarge as exc:
            raise InputError(f"Sorry, {exc}.") from exc
        return Reply(job, request, generation=generation, render_mode=eff.render_mode)

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
        # What the job was asked with beyond the turn's text (/agent's task and files), its expired files left out.
        payload, gone = await still_stored(self.bus, turns[-1].meta.get("payload"))
        request.payload = {**payload, **request.payload}
        reply = await self.submit(request)
        reply.notice = expired_note(gone)
        return reply

    async def stop(self, reply: Reply) -> None:
        await self.bus.cancel(reply.job.id)

    async def reset(self, conversation: str) -> int:
        """Clear the conversation.  Answers still streaming for it finish for the person but are not
        recorded (the reset starts a new history generation), in this process or any other."""
        return await self.history.reset(conversation)

    async def drain(self, within: float = 5.0) -> None:
        """Wait (at most `within` seconds) for answers still being written into history; call before
        closing Redis."""
        if self._recording:
            await asyncio.wait(set(self._recording), timeout=within)

    # ------------------------------------------------------------------ following a reply
    async def follow(self, reply: Reply) -> AsyncIterator[Update]:
        """Translate the job's events into updates; on `done`, write the answer into history.

        The history write starts just before `done` is yielded and is awaited after it, so the front end
        shows the final text while Redis stores it; stopping at `done` and closing the generator
        (`aclose`) still waits for the write, and even an abandoned generator's write completes.

        Attempts: events of an attempt older than the newest one seen are dropped (a worker that stalled
        and was taken over may still write a few); the first event of a newer attempt yields `restart` and
        the answer starts again from empty.  Only the final event of the newest attempt ends the reply, so
        history gets exactly one assistant turn per reply."""
        job_id = reply.job.id
        attempt = 1
        parts: list[str] = []
        thinking: list[str] = []
        started = False
        last_news = time.monotonic()
        no_worker_since: float | None = None
        orphan_noted = False
        position: int | None = None
        position_at = -QUEUE_CHECK_EVERY
        deadline = self.settings.job_timeout + self.settings.job_visibility_timeout + 10
        if reply.notice:
            yield Update("step", data={"type": "note", "turn": 0, "title": "Note", "text": reply.notice})
        async for event in self.bus.events(job_id, block_ms=250):
            now = time.monotonic()
            if event is None:
                if not started and now - reply.submitted >= self.notice_after:
                    if not await self._alive():
                        no_worker_since = no_worker_since or now
                        yield Update("no_worker", data={"message": NO_WORKER})
                        if now - no_worker_since > self.no_worker_timeout:
                            await self.bus.cancel(job_id)
                            yield Update("error", data={"message": NO_WORKER.split(".")[0] + ".", "code": "no_worker"})
                            return
                    elif not await self._served(reply.job.model):
                        # Workers run, but none serves the model this channel asks for: waiting would hang.
                        await self.bus.cancel(job_id)
                        yield Update(
                            "error",
                            data={
                                "message": UNSERVED.format(model=reply.job.model),
                                "code": "model_unserved",
                                "model": reply.job.model,
                            },
                        )
                        return
                    else:
                        no_worker_since = None
                        if now - position_at >= QUEUE_CHECK_EVERY:  # the notice ticks; the count is costlier
                            position, position_at = await self._position(job_id, reply.job.model), now
                        yield Update("queued", position=position)
                elif (
                    started
                    and not orphan_noted
                    and now - last_news > self.settings.job_visibility_timeout + 5
                    and not await self._served(reply.job.model)
                ):
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
                thinking.clear()
            if event.type == "status":
                if not started:
                    started = True
                    yield Update("started", attempt=attempt, data=event.data)
            elif event.type == "delta":
                started = True
                parts.append(event.data.get("text", ""))
                yield Update("text", text="".join(parts), attempt=attempt)
            elif event.type == "thinking":  # a reasoning model's thinking: shown apart, never recorded
                started = True
                thinking.append(str(event.data.get("text", "")))
                if self.settings.reasoning_display != "hidden":
                    yield Update(
                        "thinking",
                        text="".join(parts),
                        attempt=attempt,
                        data={"thinking": "".join(thinking), "display": self.settings.reasoning_display},
                    )
            elif event.type == "step":
                started = True
                yield Update("step", text="".join(parts), attempt=attempt, data=event.data)
            elif event.type == "file":
                yield Update("file", attempt=attempt, data=event.data)
            elif event.type == "done":
                text = event.data.get("text")
                text = text if isinstance(text, str) else "".join(parts)
                recording = self._start_recording(reply, text, event.data)  # the answer only, not the thinking
                data = {**event.data, "display": self.settings.reasoning_display}
                try:
                    yield Update("done", text=text, attempt=attempt, data=data)
                finally:
                    if recording is not None:
                        with contextlib.suppress(Exception):  # logged by `_recorded`
                            await asyncio.shield(recording)  # a cancelled reader must not cancel the write
                return
            elif event.type == "error":
                yield Update("error", text="".join(parts), attempt=attempt, data=event.data)
                return

    async def _workers(self) -> list[WorkerInfo] | None:
        """The workers alive (None while Redis is unreachable).  Shared by all replies being followed and
        refreshed at most every `QUEUE_CHECK_EVERY` seconds, so a hundred queued replies do not ask Redis a
        hundred times per tick."""
        now = time.monotonic()
        if now - self._alive_at < QUEUE_CHECK_EVERY:
            return self._alive_cached
        try:
            workers: list[WorkerInfo] | None = await self.bus.alive_workers()
        except (RedisError, OSError):
            reraise_if_cancelling()
            workers = None
        self._alive_at, self._alive_cached = now, workers
        return workers

    async def _alive(self) -> bool:
        """Whether any worker is alive; True while Redis is unreachable (no false "no worker" notice)."""
        workers = await self._workers()
        return workers is None or bool(workers)

    async def _served(self, model: str) -> bool:
        """Whether a live worker serves `model` ("" = the only model: any worker); True while not known."""
        workers = await self._workers()
        if workers is None:
            return True
        return any(not model or model in info.models for info in workers)

    async def _position(self, job_id: str, model: str = "") -> int | None:
        try:
            return await self.bus.queue_position(job_id, model=model)
        except (RedisError, OSError):
            reraise_if_cancelling()
            return None

    def _start_recording(self, reply: Reply, text: str, data: dict[str, Any]) -> asyncio.Task[None] | None:
        if not reply.request.record:
            return None
        task = asyncio.create_task(self._record_answer(reply, text, data), name=f"record-{reply.job.id[:8]}")
        self._recording.add(task)  # a strong reference: the write completes even if nobody awaits it
        task.add_done_callback(self._recorded)
        return task

    def _recorded(self, task: asyncio.Task[None]) -> None:
        self._recording.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("could not record an answer in history", exc_info=task.exception())

    async def _record_answer(self, reply: Reply, text: str, data: dict[str, Any]) -> None:
        """Write the answer into history: once per job, and not into a conversation reset since it was
        asked (`HistoryStore.record_answer`)."""
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
                outcome = await self.history.record_answer(
                    reply.request.conversation,
                    turn,
                    job_id=reply.job.id,
                    generation=reply.generation,
                    marker_ttl=self.record_marker_ttl,
                    run_script=self.bus.run_script,
                )
                if outcome != "recorded":
                    log.info(
                        "answer of job %s not recorded: %s",
                        reply.job.id,
                        "already recorded" if outcome == "duplicate" else "the conversation was reset",
                    )
                return
            except (RedisError, OSError):
                reraise_if_cancelling()
                if not delay:
                    raise
                await asyncio.sleep(delay)
