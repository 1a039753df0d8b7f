"""The envelopes on the bus: a `Job` on the job stream, an `Event` on a job's reply stream, what a worker
claimed (`Claimed`) and what it announces about itself (`WorkerInfo`)."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

from .errors import ProtocolError

JobKind = Literal["chat", "agent", "vision", "article"]
JOB_KINDS: tuple[str, ...] = ("chat", "agent", "vision", "article")
EventType = Literal["delta", "thinking", "step", "file", "status", "done", "error"]  # thinking: models/reasoning.py
FINAL_EVENTS = ("done", "error")


def new_id() -> str:
    return uuid.uuid4().hex


@dataclass
class Job:
    """One unit of work for a worker."""

    kind: str
    payload: dict[str, Any]
    conversation: str = ""
    id: str = field(default_factory=new_id)
    created: float = field(default_factory=time.time)
    # The chat model asked for (models/routing.py); "" = the deployment's only model.  It also picks the job
    # stream (`KEYS.jobs_for`), so only a worker serving the model ever claims the job.
    model: str = ""

    def encode(self) -> dict[str, str]:
        fields = {
            "id": self.id,
            "kind": self.kind,
            "conversation": self.conversation,
            "created": repr(self.created),
            "payload": json.dumps(self.payload, ensure_ascii=False, separators=(",", ":")),
        }
        if self.model:  # absent in a single-model deployment: its envelopes stay as they were
            fields["model"] = self.model
        return fields

    @classmethod
    def decode(cls, fields: dict[str, str]) -> Job:
        """Parse a stream entry; raise `ProtocolError` with a user-safe message if it is malformed."""
        job_id = fields.get("id") or ""
        if not job_id or len(job_id) > 64 or not job_id.replace("-", "").isalnum():
            raise ProtocolError("the job has no valid id")
        kind = fields.get("kind", "")
        if kind not in JOB_KINDS:
            raise ProtocolError(f"unknown job kind {kind[:32]!r}")
        try:
            payload = json.loads(fields.get("payload") or "")
        except ValueError as exc:
            raise ProtocolError("the job payload is not valid JSON") from exc
        if not isinstance(payload, dict):
            raise ProtocolError("the job payload must be an object")
        try:
            created = float(fields.get("created") or time.time())
        except ValueError:
            created = time.time()
        model = fields.get("model", "")
        if len(model) > 100 or any(ch in model for ch in ", =\n\r\t"):
            raise ProtocolError("the job names an invalid model")
        return cls(
            kind=kind,
            payload=payload,
            conversation=fields.get("conversation", ""),
            id=job_id,
            created=created,
            model=model,
        )


@dataclass
class Event:
    """One entry of a job's reply stream."""

    type: str
    attempt: int
    data: dict[str, Any]
    id: str = ""  # the stream id, filled in when read

    @property
    def final(self) -> bool:
        return self.type in FINAL_EVENTS

    @classmethod
    def decode(cls, entry_id: str, fields: dict[str, str]) -> Event:
        try:
            data = json.loads(fields.get("data") or "{}")
        except ValueError:
            data = {}
        try:
            attempt = int(fields.get("attempt") or 1)
        except ValueError:
            attempt = 1
        return cls(
            type=fields.get("type", ""), attempt=attempt, data=data if isinstance(data, dict) else {}, id=entry_id
        )


@dataclass
class Claimed:
    """A job a worker took from the stream (or the reason it could not be parsed)."""

    entry_id: str
    job: Job | None
    error: ProtocolError | None = None
    raw: dict[str, str] = field(default_factory=dict)
    model: str = ""  # whose job stream it came from ("" = `KEYS.jobs`)


@dataclass
class WorkerInfo:
    worker_id: str
    host: str
    engine: str
    concurrency: int
    in_flight: int
    vision: bool
    last_seen: float
    models: list[str] = field(default_factory=list)  # the chat models it serves (routing names; [] = the one)
