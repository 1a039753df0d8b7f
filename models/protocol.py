"""The job protocol shared by the bot and the inference workers — and the only place that knows Redis keys.

Shape of the bus:

* Jobs go on one Redis Stream (`KEYS.jobs`) read by the consumer group `KEYS.group`.  A job envelope
  holds `id`, `kind` (`chat` | `agent` | `vision` | `article`), `conversation` and a JSON `payload`.
* Every job has its own reply stream (`KEYS.events(job_id)`) of `Event`s: `delta` (text), `step`
  (an agent step or an article stage), `file` (a blob reference), `status`, `done`, `error`.  Each
  event carries the `attempt` number so a reader can tell a retried job from the first try.  Reply
  streams are capped (MAXLEN) and expire (TTL).
* Large payloads (images, figures) are stored once under a content-addressed key with a TTL.
* Cancellation sets a key and publishes on a channel, so a worker hears it within milliseconds.
* Workers register a heartbeat so the bot can tell "queued behind others" from "no worker alive".

Anything that reads or writes these keys goes through `Bus`; nothing else spells a key name.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

JobKind = Literal["chat", "agent", "vision", "article"]
JOB_KINDS: tuple[str, ...] = ("chat", "agent", "vision", "article")
EventType = Literal["delta", "step", "file", "status", "done", "error"]
FINAL_EVENTS = ("done", "error")

SHARED_READ_FROM = 4  # replies followed at once from which new ones share one XREAD (see `_ReplyReader`)
REPLY_MAXLEN = 20_000  # events per reply stream; a 4k-token answer needs ~4k
DEAD_MAXLEN = 1_000  # dead letters are for inspection; each field is cut to DEAD_FIELD_CHARS
DEAD_FIELD_CHARS = 65_536
JOBS_MAXLEN = 100_000


class ProtocolError(ValueError):
    """A job or event that does not follow the protocol.  Its message is safe to show a user."""


class PayloadTooLarge(ProtocolError):
    """The job envelope is over `MAX_JOB_BYTES`."""


class _Keys:
    """Every Redis key name the project uses.  History and settings keys are here too, so that a
    single file answers "what does this bot keep in Redis?"."""

    prefix = "ilm"

    @property
    def jobs(self) -> str:
        return f"{self.prefix}:jobs"

    @property
    def group(self) -> str:
        return f"{self.prefix}:workers"

    @property
    def dead(self) -> str:
        return f"{self.prefix}:jobs:dead"

    @property
    def cancel_channel(self) -> str:
        return f"{self.prefix}:cancel"

    @property
    def workers(self) -> str:
        return f"{self.prefix}:workers:alive"

    def worker(self, worker_id: str) -> str:
        return f"{self.prefix}:worker:{worker_id}"

    def events(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}:events"

    def attempts(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}:attempts"

    def cancel(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}:cancel"

    def handbacks(self, job_id: str) -> str:
        """How often a job was handed back unfinished by a worker shutting down (not a failure)."""
        return f"{self.prefix}:job:{job_id}:handbacks"

    def blob(self, digest: str) -> str:
        return f"{self.prefix}:blob:{digest}"

    def history(self, conversation: str) -> str:
        return f"{self.prefix}:hist:{conversation}"

    def history_generation(self, conversation: str) -> str:
        """Bumped by every reset of the conversation: an answer asked for before it is not recorded after it."""
        return f"{self.prefix}:histgen:{conversation}"

    def event_claimed(self, source: str) -> str:
        """Set (NX, with a TTL) by the bot process that answers an incoming event (a Discord message), so two
        processes that both receive it — a deploy overlap — answer it once."""
        return f"{self.prefix}:claimed:{source}"

    def answer_recorded(self, job_id: str) -> str:
        """Set (NX, with a TTL) when a job's answer goes into history, so it goes in once per job."""
        return f"{self.prefix}:job:{job_id}:recorded"

    def conf(self, scope: str) -> str:
        return f"{self.prefix}:conf:{scope}"

    def rate(self, user: str) -> str:
        return f"{self.prefix}:rate:{user}"

    @property
    def command_hash(self) -> str:
        return f"{self.prefix}:commands:hash"

    def reader_wake(self, reader_id: str) -> str:
        """A process's reply reader: written to when a new reply is followed, so its blocking read restarts."""
        return f"{self.prefix}:reader:{reader_id}:wake"

    def active_reply(self, conversation: str) -> str:
        return f"{self.prefix}:active:{conversation}"

    @property
    def active_conversations(self) -> str:
        """Index (sorted set) of conversations with a reply being streamed to Discord (handlers/resume.py)."""
        return f"{self.prefix}:active-index"


KEYS = _Keys()

# Refresh the idle time of the entries this consumer still owns; return the ones it no longer owns (another
# worker took them over, or they were acked).  Checking ownership matters: a plain XCLAIM would steal a job
# back from the worker that took it over after this one stalled, and two workers would run it.
_HEARTBEAT = """
local lost, mine = {}, {}
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if p[1] and p[1][2] == ARGV[2] then table.insert(mine, ARGV[i]) else table.insert(lost, ARGV[i]) end
end
if #mine > 0 then
  local args = {'XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0}
  for _, id in ipairs(mine) do table.insert(args, id) end
  table.insert(args, 'JUSTID')
  redis.call(unpack(args))
end
return lost
"""

# The 1-based position of job ARGV[2] among the entries not yet delivered to group ARGV[1], or false;
# with ARGV[2] empty, how many entries wait (at most ARGV[3]).
_QUEUE_POSITION = """
local last = '0-0'
for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local name, delivered
  for i = 1, #g, 2 do
    if g[i] == 'name' then name = g[i + 1] elseif g[i] == 'last-delivered-id' then delivered = g[i + 1] end
  end
  if name == ARGV[1] then last = delivered end
end
local entries = redis.call('XRANGE', KEYS[1], '(' .. last, '+', 'COUNT', tonumber(ARGV[3]))
if ARGV[2] == '' then return #entries end
for pos, e in ipairs(entries) do
  local f = e[2]
  for i = 1, #f, 2 do
    if f[i] == 'id' then
      if f[i + 1] == ARGV[2] then return pos end
      break
    end
  end
end
return false
"""

# XAUTOCLAIM in JUSTID form (so the cursor survives and entries deleted from the stream are visible by id on
# Redis 6.2, which otherwise returns them as nils and keeps them pending forever), then read the entries;
# entries trimmed away while pending are acked here.  Returns {cursor, {{id, fields}...}, {gone ids}}.
_AUTOCLAIM = """
local res = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], 'COUNT', ARGV[5], 'JUSTID')
local out, gone = {}, {}
for _, id in ipairs(res[2]) do
  local e = redis.call('XRANGE', KEYS[1], id, id)
  if e[1] then table.insert(out, e[1]) else redis.call('XACK', KEYS[1], ARGV[1], id); table.insert(gone, id) end
end
return {res[1], out, gone}
"""


# A worker starting a job: count the attempt, see whether it was cancelled before it started and, on a first
# attempt, announce it (the `status` event) — one round trip instead of three.  A retried attempt (> 1) writes
# nothing here: the worker first checks whether the previous attempt already finished or failed too often.
# KEYS: attempts, cancel, events.  ARGV: attempts TTL, reply TTL, status data (JSON), reply MAXLEN.
# Returns {attempt, cancelled (0/1), announced (0/1)}.
_START = """
local attempt = redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[1])
local cancelled = redis.call('EXISTS', KEYS[2])
if attempt > 1 then return {attempt, cancelled, 0} end
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[4], '*', 'type', 'status', 'attempt', tostring(attempt),
           'data', ARGV[3])
redis.call('EXPIRE', KEYS[3], ARGV[2])
return {attempt, cancelled, 1}
"""

# The last events of an attempt and the XACK of its job in one round trip, in this order: an error in any
# XADD (out of memory, say) aborts the script before the XACK, so a job is never acked without its final
# event — the same promise as a separate XACK after the write, one round trip cheaper.
# KEYS: events, jobs.  ARGV: reply TTL, reply MAXLEN, group ('' = no ack), entry id, then type/attempt/data
# triples.  Returns the stream ids written.
_FINISH = """
local ids = {}
for i = 5, #ARGV, 3 do
  table.insert(ids, redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'type', ARGV[i], 'attempt', ARGV[i + 1],
                               'data', ARGV[i + 2]))
end
redis.call('EXPIRE', KEYS[1], ARGV[1])
if ARGV[3] ~= '' then redis.call('XACK', KEYS[2], ARGV[3], ARGV[4]) end
return ids
"""


def reraise_if_cancelling() -> None:
    """Re-raise a cancellation that a library turned into another exception (redis-py can report a cancel
    that lands mid-command as a connection error): a retry loop that swallowed it would never end, and
    whoever cancelled it (shutdown, the event loop closing) would wait forever."""
    task = asyncio.current_task()
    cancelling = getattr(task, "cancelling", None)  # Python 3.11+
    if cancelling is not None and cancelling():
        raise asyncio.CancelledError


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

    def encode(self) -> dict[str, str]:
        return {
            "id": self.id,
            "kind": self.kind,
            "conversation": self.conversation,
            "created": repr(self.created),
            "payload": json.dumps(self.payload, ensure_ascii=False, separators=(",", ":")),
        }

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
        return cls(kind=kind, payload=payload, conversation=fields.get("conversation", ""), id=job_id,
                   created=created)


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
        return cls(type=fields.get("type", ""), attempt=attempt, data=data if isinstance(data, dict) else {},
                   id=entry_id)


def _stream_id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms or 0), int(seq or 0)


@dataclass
class _Subscription:
    key: str
    last: str
    queue: asyncio.Queue[Event] = field(default_factory=asyncio.Queue)


class _ReplyReader:
    """One blocking XREAD for every reply stream this process follows, instead of one per reply.

    With 64 answers streaming, per-reply reads cost a round trip (and a parse) per token each; one shared
    read returns whatever arrived on all of them.  A new subscription writes to the reader's wake stream,
    so a read already blocking restarts at once with the new stream included.  Redis errors are retried
    (the position of every subscription is kept), so a Redis restart only pauses the replies."""

    BLOCK_MS = 5000

    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis
        self.subs: list[_Subscription] = []
        self.wake_key = KEYS.reader_wake(new_id())
        self.wake_last = "0-0"
        self.task: asyncio.Task[None] | None = None
        self.blocking = False
        self.woken = False  # a wake is written and the blocking read has not restarted yet

    async def subscribe(self, key: str, after: str) -> _Subscription:
        sub = _Subscription(key, after)
        self.subs.append(sub)
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self._run(), name="bus-reply-reader")
        elif self.blocking and not self.woken:  # one wake for a burst of new replies
            self.woken = True
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    pipe.xadd(self.wake_key, {"w": "1"}, maxlen=10, approximate=False)
                    pipe.expire(self.wake_key, 3600)
                    await pipe.execute()
            except (RedisConnectionError, RedisTimeoutError, OSError):
                reraise_if_cancelling()  # the reader is retrying anyway and will include the new stream
        return sub

    def unsubscribe(self, sub: _Subscription) -> None:
        with contextlib.suppress(ValueError):
            self.subs.remove(sub)

    async def _run(self) -> None:
        while self.subs:
            self.woken = False
            streams: dict[str, str] = {self.wake_key: self.wake_last}
            for sub in self.subs:
                if sub.key not in streams or _stream_id(sub.last) < _stream_id(streams[sub.key]):
                    streams[sub.key] = sub.last
            self.blocking = True
            try:
                result = await self.redis.xread(streams, count=256, block=self.BLOCK_MS)
            except (RedisConnectionError, RedisTimeoutError, OSError):
                reraise_if_cancelling()
                await asyncio.sleep(0.25)
                continue
            finally:
                self.blocking = False
            for stream, entries in result or []:
                if stream == self.wake_key:
                    self.wake_last = entries[-1][0]
                    continue
                for sub in [s for s in self.subs if s.key == stream]:
                    for entry_id, fields in entries:
                        if _stream_id(entry_id) > _stream_id(sub.last):
                            sub.last = entry_id
                            sub.queue.put_nowait(Event.decode(entry_id, fields))

    async def close(self) -> None:
        self.subs.clear()
        if self.task is not None and not self.task.done():
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task
        # Best effort, and bounded: with Redis down the client's reconnect retries would hold shutdown for a
        # minute or more over one key that expires anyway.
        with contextlib.suppress(Exception):
            async with asyncio.timeout(1.0):
                await self.redis.delete(self.wake_key)


@dataclass
class Claimed:
    """A job a worker took from the stream (or the reason it could not be parsed)."""

    entry_id: str
    job: Job | None
    error: ProtocolError | None = None
    raw: dict[str, str] = field(default_factory=dict)


@dataclass
class WorkerInfo:
    worker_id: str
    host: str
    engine: str
    concurrency: int
    in_flight: int
    vision: bool
    last_seen: float


class Bus:
    """Typed access to the job protocol over one Redis connection pool."""

    def __init__(self, redis: aioredis.Redis, *, reply_ttl: int = 3600, blob_ttl: int = 86400,
                 max_job_bytes: int = 2_000_000) -> None:
        self.redis = redis  # decode_responses=True: every key but blobs holds text
        kwargs = dict(redis.connection_pool.connection_kwargs)
        kwargs["decode_responses"] = False
        self.raw = aioredis.Redis(
            connection_pool=aioredis.ConnectionPool(
                connection_class=redis.connection_pool.connection_class, **kwargs
            )
        )
        self.reply_ttl = reply_ttl
        self.blob_ttl = blob_ttl
        self.max_job_bytes = max_job_bytes
        self._heartbeat = redis.register_script(_HEARTBEAT)
        self._queue_position = redis.register_script(_QUEUE_POSITION)
        self._autoclaim = redis.register_script(_AUTOCLAIM)
        self._start = redis.register_script(_START)
        self._finish = redis.register_script(_FINISH)
        self._autoclaim_cursor: dict[str, str] = {}  # consumer → where its next XAUTOCLAIM scan starts
        # Writes queued meanwhile (events, jobs, attempt starts) share one pipeline: see `_batched`.
        self._batch: list[tuple[Callable[[Any], int], asyncio.Future[list[Any]]]] = []
        self._batcher: asyncio.Task[None] | None = None
        self._reader = _ReplyReader(redis)
        self._alone = 0  # replies read with their own XREAD

    # ---------------------------------------------------------------- producer (bot) side
    async def submit(self, job: Job) -> str:
        """Put a job on the stream (its reply stream appears with the first event).  Returns the job id.

        Raises `PayloadTooLarge` (a user-safe `ProtocolError`) when the envelope is over `max_job_bytes`."""
        fields = job.encode()
        size = sum(len(v.encode()) for v in fields.values())
        if size > self.max_job_bytes:
            raise PayloadTooLarge(
                f"that request is too large to process ({size // 1024} KiB; the limit is "
                f"{self.max_job_bytes // 1024} KiB)"
            )

        def add(pipe: Any) -> int:
            pipe.xadd(KEYS.jobs, fields, maxlen=JOBS_MAXLEN, approximate=True)
            return 1

        [entry] = await self._batched(add)
        if isinstance(entry, Exception):
            raise entry
        return job.id

    async def events(self, job_id: str, *, after: str = "0-0", block_ms: int = 1000,
                     idle_timeout: float | None = None) -> AsyncIterator[Event | None]:
        """Yield the reply events of a job as they arrive; yields `None` every `block_ms` without news
        (so the caller can update a queue notice or give up).  Never stops by itself: a final event of an
        attempt that was already superseded must not end the reading, so the caller decides when it is done
        (`ChatHandler.follow` does)."""
        if self._alone + len(self._reader.subs) < SHARED_READ_FROM:  # few replies: a direct read is cheaper
            async for event in self._read_alone(job_id, after, block_ms):
                yield event
            return
        sub = await self._reader.subscribe(KEYS.events(job_id), after)
        try:
            while True:
                if not sub.queue.empty():  # the common case under load: no timer needed
                    yield sub.queue.get_nowait()
                    continue
                try:
                    async with asyncio.timeout(block_ms / 1000):  # no task per event, unlike wait_for
                        event = await sub.queue.get()
                except TimeoutError:
                    yield None
                    continue
                yield event
        finally:
            self._reader.unsubscribe(sub)

    async def _read_alone(self, job_id: str, last: str, block_ms: int) -> AsyncIterator[Event | None]:
        key = KEYS.events(job_id)
        self._alone += 1
        try:
            while True:
                try:
                    result = await self.redis.xread({key: last}, count=256, block=block_ms)
                except (RedisConnectionError, RedisTimeoutError, OSError):
                    reraise_if_cancelling()  # Redis restarting: keep the position, retry after a pause
                    await asyncio.sleep(block_ms / 1000)
                    result = None
                if not result:
                    yield None
                    continue
                for _stream, entries in result:
                    for entry_id, fields in entries:
                        last = entry_id
                        yield Event.decode(entry_id, fields)
        finally:
            self._alone -= 1

    async def read_events(self, job_id: str) -> list[Event]:
        """Everything written to a job's reply stream so far (for tests and late readers)."""
        entries = await self.redis.xrange(KEYS.events(job_id))
        return [Event.decode(eid, fields) for eid, fields in entries]

    async def cancel(self, job_id: str) -> None:
        """Ask whoever runs (or will run) the job to stop.  Reaches a running worker via pub/sub."""
        await self.redis.set(KEYS.cancel(job_id), "1", ex=max(self.reply_ttl, 60))
        await self.redis.publish(KEYS.cancel_channel, job_id)

    async def is_cancelled(self, job_id: str) -> bool:
        return bool(await self.redis.exists(KEYS.cancel(job_id)))

    async def cancelled_among(self, job_ids: Iterable[str]) -> set[str]:
        """Which of these jobs were cancelled (one round trip for all of them)."""
        ids = list(job_ids)
        if not ids:
            return set()
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.exists(KEYS.cancel(job_id))
            flags = await pipe.execute()
        return {job_id for job_id, flag in zip(ids, flags, strict=True) if flag}

    async def queue_position(self, job_id: str, entry_hint: str | None = None) -> int | None:
        """1-based position of a not-yet-claimed job in the queue, or None once a worker has it."""
        # Counted inside Redis: reading the waiting entries out would copy every queued payload (whole
        # conversations) to every follower, several times a second.  Looks at most 1000 entries ahead.
        try:
            position = await self._queue_position(keys=[KEYS.jobs], args=[KEYS.group, job_id, 1000])
        except ResponseError:  # no stream or group yet
            return None
        return int(position) if position else None

    async def alive_workers(self, within: float = 15.0) -> list[WorkerInfo]:
        now = time.time()
        ids = await self.redis.zrangebyscore(KEYS.workers, now - within, "+inf")
        infos: list[WorkerInfo] = []
        records = await self.redis.mget([KEYS.worker(worker_id) for worker_id in ids]) if ids else []
        for worker_id, raw in zip(ids, records, strict=True):
            if not raw:
                continue
            try:
                data = json.loads(raw)
                infos.append(WorkerInfo(**{k: data[k] for k in WorkerInfo.__dataclass_fields__}))
            except (ValueError, TypeError, KeyError):  # a worker of another version: still alive
                infos.append(WorkerInfo(worker_id, "", "", 0, 0, False, now))
        return infos

    async def queue_depth(self) -> int:
        """Jobs waiting for a worker (not yet delivered to any consumer)."""
        try:
            return int(await self._queue_position(keys=[KEYS.jobs], args=[KEYS.group, "", 10_000]) or 0)
        except ResponseError:  # no stream yet
            return 0

    async def dead_letters(self, count: int = 100) -> list[dict[str, str]]:
        entries = await self.redis.xrevrange(KEYS.dead, count=count)
        return [fields for _eid, fields in entries]

    async def dead_letter_count(self) -> int:
        return int(await self.redis.xlen(KEYS.dead))

    async def running_count(self) -> int:
        """Jobs a worker has claimed and not yet acknowledged (running, or waiting for a takeover)."""
        try:
            pending = await self.redis.xpending(KEYS.jobs, KEYS.group)
        except ResponseError:  # no stream or group yet: nothing ever ran
            return 0
        return int(pending.get("pending") or 0)

    async def active_reply_count(self) -> int:
        """Conversations with a reply being shown by some bot process (the resume index)."""
        return int(await self.redis.zcard(KEYS.active_conversations))

    # ---------------------------------------------------------------- blobs
    async def put_blob(self, data: bytes, mime: str) -> str:
        """Store bytes once under their SHA-256; returns the reference to put in a job."""
        digest = hashlib.sha256(data).hexdigest()
        key = KEYS.blob(digest)
        async with self.raw.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping={"mime": mime, "data": data})
            pipe.expire(key, self.blob_ttl)
            await pipe.execute()
        return digest

    async def get_blob(self, ref: str) -> tuple[bytes, str] | None:
        """The bytes and MIME type of a stored blob, or None once it has expired."""
        if not ref or len(ref) != 64 or not all(c in "0123456789abcdef" for c in ref):
            return None
        raw = await self.raw.hgetall(KEYS.blob(ref))
        if not raw:
            return None
        mime = raw.get(b"mime", b"application/octet-stream")
        return raw[b"data"], mime.decode() if isinstance(mime, bytes) else mime

    async def touch_blob(self, ref: str) -> bool:
        """Extend a blob's life (it is still referenced by a conversation)."""
        return bool(await self.redis.expire(KEYS.blob(ref), self.blob_ttl))

    # ---------------------------------------------------------------- consumer (worker) side
    async def ensure_group(self) -> None:
        try:
            await self.redis.xgroup_create(KEYS.jobs, KEYS.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def _claimed(self, entries: Iterable[tuple[str, dict[str, str]]]) -> list[Claimed]:
        out: list[Claimed] = []
        for entry_id, fields in entries:
            if fields is None:  # deleted from the stream while pending
                out.append(Claimed(entry_id, None, ProtocolError("the job vanished"), {}))
                continue
            size = sum(len(k) + len(v.encode()) for k, v in fields.items())
            if size > self.max_job_bytes:  # written past `submit` (another client, an older bot)
                raw = {k: v for k, v in fields.items() if k != "payload"}
                out.append(Claimed(entry_id, None, PayloadTooLarge(
                    f"the request is too large to process ({size // 1024} KiB; the limit is "
                    f"{self.max_job_bytes // 1024} KiB)"), raw))
                continue
            try:
                out.append(Claimed(entry_id, Job.decode(fields), None, fields))
            except ProtocolError as exc:
                out.append(Claimed(entry_id, None, exc, fields))
        return out

    async def claim_new(self, consumer: str, count: int, block_ms: int) -> list[Claimed]:
        result = await self.redis.xreadgroup(KEYS.group, consumer, {KEYS.jobs: ">"}, count=count,
                                             block=block_ms)
        claimed: list[Claimed] = []
        for _stream, entries in result or []:
            claimed.extend(self._claimed(entries))
        return claimed

    async def claim_stale(self, consumer: str, min_idle_ms: int, count: int) -> list[Claimed]:
        """Take over jobs whose worker stopped heartbeating (XAUTOCLAIM).

        The scan resumes where the previous one stopped (per consumer), so stale entries behind many
        healthy pending ones are found too; entries trimmed from the stream while pending are acked."""
        start = self._autoclaim_cursor.get(consumer, "0-0")
        cursor, raw_entries, _gone = await self._autoclaim(
            keys=[KEYS.jobs], args=[KEYS.group, consumer, max(0, int(min_idle_ms)), start, max(1, count)])
        self._autoclaim_cursor[consumer] = cursor or "0-0"
        entries = []
        for entry_id, flat in raw_entries:
            entries.append((entry_id, dict(zip(flat[::2], flat[1::2], strict=True))))
        return self._claimed(entries)

    async def heartbeat_jobs(self, consumer: str, entry_ids: list[str]) -> list[str]:
        """Reset the idle time of jobs this worker still runs, so nobody takes them over.

        Returns the entries this consumer no longer owns (taken over by another worker meanwhile): the
        caller should stop running them, since their reply now belongs to a newer attempt."""
        if not entry_ids:
            return []
        return list(await self._heartbeat(keys=[KEYS.jobs], args=[KEYS.group, consumer, *entry_ids]))

    async def release(self, consumer: str, entry_ids: list[str], idle_ms: int,
                      job_ids: Iterable[str] = ()) -> None:
        """Hand jobs back without finishing them: mark them idle so the next XAUTOCLAIM takes them.

        `job_ids` (of the same jobs) are counted as hand-backs, which do not count against
        `JOB_MAX_ATTEMPTS`: a job interrupted by rolling restarts is not a poison job."""
        if entry_ids:
            await self.redis.xclaim(KEYS.jobs, KEYS.group, consumer, 0, entry_ids, idle=idle_ms,
                                    justid=True)
        for job_id in job_ids:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.incr(KEYS.handbacks(job_id))
                pipe.expire(KEYS.handbacks(job_id), max(self.reply_ttl, 3600))
                await pipe.execute()

    async def handbacks(self, job_id: str) -> int:
        """How often the job was handed back by a shutting-down worker."""
        return int(await self.redis.get(KEYS.handbacks(job_id)) or 0)

    async def final_event(self, job_id: str) -> Event | None:
        """The job's final event if its reply stream ends with one (the job is complete; a takeover after a
        crash between the final event and the XACK must not run it again)."""
        entries = await self.redis.xrevrange(KEYS.events(job_id), count=1)
        if not entries:
            return None
        event = Event.decode(*entries[0])
        return event if event.final else None

    async def ack(self, entry_id: str) -> None:
        await self.redis.xack(KEYS.jobs, KEYS.group, entry_id)

    async def next_attempt(self, job_id: str) -> int:
        key = KEYS.attempts(job_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.incr(key)
            pipe.expire(key, max(self.reply_ttl, 3600))
            attempt, _ = await pipe.execute()
        return int(attempt)

    async def start_attempt(self, job_id: str, status: dict[str, Any]) -> tuple[int, bool, bool]:
        """Count a new attempt of the job; returns (attempt, cancelled already, announced).

        On a first attempt the `status` event (`status` is its data) is written in the same round trip
        (announced = True); a later attempt is announced by the caller once it decided to run it."""
        data = json.dumps(status, ensure_ascii=False, separators=(",", ":"))
        attempt, cancelled, announced = await self._script(
            self._start, [KEYS.attempts(job_id), KEYS.cancel(job_id), KEYS.events(job_id)],
            [max(self.reply_ttl, 3600), self.reply_ttl, data, REPLY_MAXLEN])
        return int(attempt), bool(cancelled), bool(announced)

    async def finish(self, job_id: str, attempt: int, events: list[tuple[str, dict[str, Any]]],
                     ack_entry: str = "") -> list[str]:
        """Write the last events of an attempt (a final one last) and then, when `ack_entry` is given, XACK
        the job — in one round trip, the XACK only once every event is written (a Lua script stops at the
        first error).  The caller must have awaited its earlier events, so the order per job is kept."""
        args: list[Any] = [self.reply_ttl, REPLY_MAXLEN, KEYS.group if ack_entry else "", ack_entry]
        for type_, data in events:
            args += [type_, str(attempt), json.dumps(data or {}, ensure_ascii=False, separators=(",", ":"))]
        ids = await self._script(self._finish, [KEYS.events(job_id), KEYS.jobs], args)
        return [str(i) for i in ids]

    async def _script(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        """Run a registered Lua script in the shared pipeline (EVALSHA); alone when Redis lost the script
        (restarted or flushed), which loads it again."""

        def add(pipe: Any) -> int:
            pipe.evalsha(script.sha, len(keys), *keys, *args)
            return 1

        [result] = await self._batched(add)
        if isinstance(result, NoScriptError):
            return await script(keys=keys, args=args)
        if isinstance(result, Exception):
            raise result
        return result

    async def emit(self, job_id: str, attempt: int, type_: str, data: dict[str, Any] | None = None,
                   *, refresh_ttl: bool = False) -> str:
        """Append an event to the job's reply stream.  The TTL is set on `status` events (every attempt
        starts with one), on final events and when asked, which keeps the per-token cost at one round trip
        and still lets the stream of a job whose worker died expire."""
        [entry_id] = await self.emit_many(job_id, attempt, [(type_, data)], refresh_ttl=refresh_ttl)
        return entry_id

    async def emit_many(self, job_id: str, attempt: int, events: list[tuple[str, dict[str, Any] | None]],
                        *, refresh_ttl: bool = False) -> list[str]:
        """Append several events to the job's reply stream, in this order, in the same write (one round trip,
        shared with whatever other jobs emit meanwhile)."""
        key = KEYS.events(job_id)
        entries: list[tuple[dict[str, str], bool]] = []
        for type_, data in events:
            fields = {"type": type_, "attempt": str(attempt),
                      "data": json.dumps(data or {}, ensure_ascii=False, separators=(",", ":"))}
            entries.append((fields, refresh_ttl or type_ in FINAL_EVENTS or type_ == "status"))
        positions: list[int] = []

        def add(pipe: Any) -> int:
            count = 0
            for fields, ttl in entries:
                positions.append(count)
                pipe.xadd(key, fields, maxlen=REPLY_MAXLEN, approximate=True)
                count += 1
                if ttl:
                    pipe.expire(key, self.reply_ttl)
                    count += 1
            return count

        results = await self._batched(add)
        ids = [results[i] for i in positions]
        for entry_id in ids:
            if isinstance(entry_id, Exception):
                raise entry_id
        return ids

    async def _batched(self, add: Callable[[Any], int]) -> list[Any]:
        """Queue commands for the shared pipeline: `add(pipe)` queues them and returns how many; the result
        is their replies (errors as exception objects).  Alone, a write goes out at once (one loop tick
        later); with many jobs streaming, everything written meanwhile shares one round trip, which is what
        keeps 64 concurrent answers nearly as fast as one.  Order is kept: one queue, one pipeline at a
        time, commands in the order they were queued."""
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._batch.append((add, future))
        if self._batcher is None or self._batcher.done():
            self._batcher = asyncio.create_task(self._flush_batch(), name="bus-batch")
        return await future

    async def _flush_batch(self) -> None:
        while self._batch:
            batch, self._batch = self._batch, []
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    counts = [add(pipe) for add, _future in batch]
                    results = await pipe.execute(raise_on_error=False)
            except Exception as exc:  # Redis unreachable even after the client's retries
                for _add, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            start = 0
            for (_add, future), count in zip(batch, counts, strict=True):
                if not future.done():  # else its caller was cancelled meanwhile
                    future.set_result(results[start:start + count])
                start += count

    async def dead_letter(self, claimed: Claimed, reason: str) -> None:
        fields = {k: v if len(v) <= DEAD_FIELD_CHARS else v[:DEAD_FIELD_CHARS] + "…[cut]"
                  for k, v in claimed.raw.items()}
        fields.update({"reason": reason[:500], "entry_id": claimed.entry_id, "at": repr(time.time())})
        await self.redis.xadd(KEYS.dead, fields, maxlen=DEAD_MAXLEN, approximate=True)

    async def register_worker(self, info: WorkerInfo, ttl: float) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.set(KEYS.worker(info.worker_id), json.dumps(info.__dict__), ex=max(1, int(ttl)))
            pipe.zadd(KEYS.workers, {info.worker_id: info.last_seen})
            pipe.zremrangebyscore(KEYS.workers, 0, info.last_seen - 24 * 3600)
            await pipe.execute()

    async def unregister_worker(self, worker_id: str) -> None:
        await self.redis.delete(KEYS.worker(worker_id))
        await self.redis.zrem(KEYS.workers, worker_id)

    async def cancel_listener(self) -> Any:
        """A pub/sub object subscribed to cancellations; its messages' `data` are job ids."""
        pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe(KEYS.cancel_channel)
        return pubsub

    async def close(self) -> None:
        await self._reader.close()
        await self.raw.aclose()
