"""What a job runner gets from the worker: the job, the engine, and typed ways to emit events."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .engines.base import Engine, GenParams, ImageInput
from .protocol import FINAL_EVENTS, Bus, Job
from .settings import Settings

# Text deltas of one job are coalesced: the first goes out at once, later ones produced while a write is in
# flight or within this many seconds of the previous write are sent together as one `delta` event.  One
# event per token costs one XADD and one XREAD entry each (CPU in redis-py on both sides); readers show
# text at most a few times a second anyway (Discord edits about once a second).
DELTA_WINDOW = 0.025


class JobError(RuntimeError):
    """A failure of one job whose message is safe and useful to show the user."""


class BadPayload(JobError):
    """The job's payload does not follow its kind's format (no messages, wrong types).  A producer bug, not
    a user's: the worker reports it as an error event *and* dead-letters the job so it can be inspected."""


@dataclass
class JobContext:
    job: Job
    attempt: int
    engine: Engine
    bus: Bus
    settings: Settings
    cancel: asyncio.Event
    worker_id: str = ""
    started: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None
    finished: bool = False
    parts: list[str] = field(default_factory=list)  # the text streamed so far (reported if interrupted)
    ack_entry: str = ""  # the job's stream entry: the final event and its XACK are written together
    acked: bool = False  # the final event was written together with the XACK
    delta_window: float = DELTA_WINDOW
    on_final: Callable[[], None] | None = None  # called as the final event goes out (the worker's hook)
    _pending: list[str] = field(default_factory=list, repr=False)  # delta text not written yet
    _flusher: asyncio.Task[None] | None = field(default=None, repr=False)
    _flusher_sleeping: bool = field(default=False, repr=False)
    _hurry: bool = field(default=False, repr=False)  # a flush is waited for: write without waiting the window
    _last_write: float = field(default=float("-inf"), repr=False)
    _failed: BaseException | None = field(default=None, repr=False)  # a delta write that failed

    @property
    def text(self) -> str:
        """Everything `delta()` has streamed in this attempt."""
        return "".join(self.parts)

    def params(self) -> GenParams:
        """Sampling parameters of the job, clamped: what its payload carries (only what a user or admin set), over
        the worker's explicitly set settings, over the loaded model's own defaults (models/engines/sampling.py)."""
        model = dict(getattr(self.engine, "sampling_defaults", None) or {})
        defaults = GenParams.from_dict({**model, **self.settings.explicit_sampling()})
        return GenParams.from_dict(self.job.payload.get("params"), defaults)

    async def emit(self, type_: str, data: dict[str, Any] | None = None) -> None:
        """Write one non-delta event; delta text not written yet goes first, in the same round trip.

        A final event (`done`/`error`) is written together with the job's XACK when `ack_entry` is set."""
        tail = await self._take_pending()
        events: list[tuple[str, dict[str, Any] | None]] = [("delta", {"text": tail})] if tail else []
        events.append((type_, data))
        if type_ in FINAL_EVENTS:
            if self.on_final is not None:
                self.on_final()
            await self.bus.finish(self.job.id, self.attempt, [(t, d or {}) for t, d in events], self.ack_entry)
            self.acked = bool(self.ack_entry)
        else:
            await self.bus.emit_many(self.job.id, self.attempt, events)

    async def delta(self, text: str) -> None:
        """Stream a piece of the answer.  Does not wait for Redis: the text is written in the background (see
        `DELTA_WINDOW`); a failed write is raised here, at the next piece, so a runner stops generating."""
        if self._failed is not None:
            raise self._failed
        if not text:
            return
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        self.parts.append(text)
        self._pending.append(text)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_deltas(), name=f"deltas-{self.job.id}")

    async def _flush_deltas(self) -> None:
        """Write pending delta text until none is left: at once when the last write is older than the
        window, else after the rest of it.  Its writes are awaited one after another, so whatever arrives
        during one goes out in the next.  When another event is waiting (`_hurry`), it stops and leaves the
        rest to go out with that event."""
        try:
            while self._pending and not self._hurry:
                wait = self._last_write + self.delta_window - time.monotonic()
                if wait > 0:
                    self._flusher_sleeping = True
                    try:
                        await asyncio.sleep(wait)
                    finally:
                        self._flusher_sleeping = False
                text = "".join(self._pending)
                self._pending.clear()
                self._last_write = time.monotonic()
                await self.bus.emit(self.job.id, self.attempt, "delta", {"text": text})
        except Exception as exc:
            self._failed = exc

    async def _take_pending(self) -> str:
        """Wait for a delta write in flight, then take (and return) the text not written yet; raise the
        error of a failed delta write, so an event never follows text that was lost."""
        task = self._flusher
        if task is not None and not task.done():
            self._hurry = True
            try:
                if self._flusher_sleeping:
                    task.cancel()  # waiting out the window only; nothing is being written
                await asyncio.gather(task, return_exceptions=True)
            finally:
                self._hurry = False
        if self._failed is not None:
            raise self._failed
        text = "".join(self._pending)
        self._pending.clear()
        if text:
            self._last_write = time.monotonic()
        return text

    def close(self) -> None:
        """Drop unwritten delta text (an attempt abandoned without a final event: shut down or taken over)."""
        if self._flusher is not None and not self._flusher.done():
            self._flusher.cancel()
        self._pending.clear()

    async def step(self, data: dict[str, Any]) -> None:
        await self.emit("step", data)

    async def status(self, **data: Any) -> None:
        await self.emit("status", data)

    async def file(self, data: bytes, name: str, mime: str) -> None:
        """Store a produced file (a figure, say) and point the reader at it."""
        ref = await self.bus.put_blob(data, mime)
        await self.emit("file", {"blob": ref, "name": name, "mime": mime, "size": len(data)})

    async def load_image(self, ref: str) -> ImageInput:
        blob = await self.bus.get_blob(ref)
        if blob is None:
            raise JobError("that image has expired, so I can no longer see it — please post it again")
        data, mime = blob
        return ImageInput(data=data, mime=mime)

    async def done(
        self,
        text: str,
        *,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        stopped: bool = False,
        extra: dict[str, Any] | None = None,
    ) -> None:
        """The final event: the full text, token counts and timings.  Emitted once."""
        if self.finished:
            return
        now = time.perf_counter()
        total = now - self.started
        gen_time = now - (self.first_token_at or now)
        timings = {
            "queue_ms": round(max(0.0, time.time() - self.job.created - total) * 1000, 2),
            "ttft_ms": round(((self.first_token_at or now) - self.started) * 1000, 2),
            "total_ms": round(total * 1000, 2),
            "tokens_per_s": round(completion_tokens / gen_time, 2) if gen_time > 0 else 0.0,
        }
        data = {
            "text": text,
            "stopped": stopped,
            "timings": timings,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens},
        }
        if extra:
            data.update(extra)
        await self.emit("done", data)
        self.finished = True

    async def error(self, message: str, code: str = "error") -> None:
        if self.finished:
            return
        await self.emit("error", {"message": message, "code": code})
        self.finished = True
