"""What a job runner gets from the worker: the job, the engine, and typed ways to emit events."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from .engines.base import Engine, GenParams, ImageInput
from .protocol import Bus, Job
from .settings import Settings


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

    @property
    def text(self) -> str:
        """Everything `delta()` has streamed in this attempt."""
        return "".join(self.parts)

    def params(self) -> GenParams:
        """Sampling parameters of the job, clamped, with the settings as defaults."""
        s = self.settings
        defaults = GenParams(temperature=s.temperature, top_p=s.top_p, max_new_tokens=s.max_new_tokens,
                             repetition_penalty=s.repetition_penalty)
        return GenParams.from_dict(self.job.payload.get("params"), defaults)

    async def emit(self, type_: str, data: dict[str, Any] | None = None) -> None:
        await self.bus.emit(self.job.id, self.attempt, type_, data)

    async def delta(self, text: str) -> None:
        if not text:
            return
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        self.parts.append(text)
        await self.emit("delta", {"text": text})

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

    async def done(self, text: str, *, prompt_tokens: int = 0, completion_tokens: int = 0,
                   stopped: bool = False, extra: dict[str, Any] | None = None) -> None:
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
        data = {"text": text, "stopped": stopped, "timings": timings,
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens}}
        if extra:
            data.update(extra)
        await self.emit("done", data)
        self.finished = True

    async def error(self, message: str, code: str = "error") -> None:
        if self.finished:
            return
        await self.emit("error", {"message": message, "code": code})
        self.finished = True
