"""The job protocol shared by the bot and the inference workers, split by job (as arq splits its own):

* `keys` — every Redis key name the project uses (jobs, replies, blobs, and also history, overrides,
  quotas, active replies, the command hash);
* `envelopes` — `Job` (an entry of the job stream), `Event` (an entry of a job's reply stream), `Claimed`,
  `WorkerInfo`; `errors` — `ProtocolError`, `PayloadTooLarge`, `reraise_if_cancelling`;
* `bus` — `Bus`, the typed access to all of it; `batch` — the write batcher the Bus shares between jobs;
  `reader` — the one XREAD a process shares between the replies it follows; `scripts` — the Lua scripts.

Shape of the bus:

* Jobs go on one Redis Stream (`KEYS.jobs`) read by the consumer group `KEYS.group`.  A job envelope
  holds `id`, `kind` (`chat` | `agent` | `vision` | `article`), `conversation` and a JSON `payload`.
  Where several chat models are configured (models/routing.py) a job also names its `model` and goes on
  that model's stream (`KEYS.jobs_for(model)`, each with its own group of the same name), which only the
  workers serving the model read; a worker holds its claims as entry references (`Bus.entry_ref`).
* Every job has its own reply stream (`KEYS.events(job_id)`) of `Event`s: `delta` (text), `thinking`
  (a reasoning model's thinking, apart from the answer: models/reasoning.py), `step`
  (an agent step or an article stage), `file` (a blob reference), `status`, `done`, `error`.  Each
  event carries the `attempt` number so a reader can tell a retried job from the first try.  Reply
  streams are capped (MAXLEN) and expire (TTL).
* Large payloads (images, figures) are stored once under a content-addressed key with a TTL.
* Cancellation sets a key and publishes on a channel, so a worker hears it within milliseconds.
* Workers register a heartbeat so the bot can tell "queued behind others" from "no worker alive".

Anything that reads or writes the job stream, reply streams, blobs or heartbeats goes through `Bus`; the
modules owning another record (history, overrides, quotas, active replies) use `KEYS` for its name.
"""

from __future__ import annotations

from .bus import DEAD_FIELD_CHARS, DEAD_MAXLEN, JOBS_MAXLEN, REPLY_MAXLEN, SHARED_READ_FROM, Bus
from .envelopes import FINAL_EVENTS, JOB_KINDS, Claimed, Event, EventType, Job, JobKind, WorkerInfo, new_id
from .errors import PayloadTooLarge, ProtocolError, reraise_if_cancelling
from .keys import KEYS

__all__ = [
    "DEAD_FIELD_CHARS",
    "DEAD_MAXLEN",
    "FINAL_EVENTS",
    "JOBS_MAXLEN",
    "JOB_KINDS",
    "KEYS",
    "REPLY_MAXLEN",
    "SHARED_READ_FROM",
    "Bus",
    "Claimed",
    "Event",
    "EventType",
    "Job",
    "JobKind",
    "PayloadTooLarge",
    "ProtocolError",
    "WorkerInfo",
    "new_id",
    "reraise_if_cancelling",
]
