"""`Bus`: typed access to the job protocol over one Redis connection pool — the only way the bot, the handlers
and the workers touch the job stream, the reply streams, blobs, cancellation and worker heartbeats.

Producer side (bot, handlers): `submit`, `events` (reply streams, shared XREAD from `SHARED_READ_FROM` replies
on), `cancel`, queue position and worker liveness, blobs, and `pipelined`/`run_script`, which put the
handlers' own reads and atomic writes (history, reply records, settings) in the shared pipeline.  Consumer side
(workers): claim, take over stale jobs, heartbeat, start/finish attempts (Lua, see scripts.py), emit events
through the write batcher (batch.py), dead letters.  Key names come from keys.py.

Why one class of about 550 lines: it is the protocol's whole surface, one short method per operation, and
the producer and the consumer side share its pool, batcher and reader; the parts with their own logic
(batching, the shared reader, the scripts) live in their own modules.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import AsyncIterator, Iterable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from . import scripts
from .batch import WriteBatcher
from .envelopes import FINAL_EVENTS, Claimed, Event, Job, WorkerInfo
from .errors import PayloadTooLarge, ProtocolError, reraise_if_cancelling
from .keys import KEYS
from .reader import ReplyReader

SHARED_READ_FROM = 4  # replies followed at once from which new ones share one XREAD (see `ReplyReader`)
REPLY_MAXLEN = 20_000  # events per reply stream; a 4k-token answer needs ~4k
DEAD_MAXLEN = 1_000  # dead letters are for inspection; each field is cut to DEAD_FIELD_CHARS
DEAD_FIELD_CHARS = 65_536
JOBS_MAXLEN = 100_000


class Bus:
    """Typed access to the job protocol over one Redis connection pool."""

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        reply_ttl: int = 3600,
        blob_ttl: int = 86400,
        max_job_bytes: int = 2_000_000,
        models: Iterable[str] = (),
    ) -> None:
        self.redis = redis  # decode_responses=True: every key but blobs holds text
        # The deployment's routed chat models (models/routing.py; empty = one model): their job streams count
        # in `queue_depth` and `running_count`.
        self.models: tuple[str, ...] = tuple(m for m in models if m)
        kwargs = dict(redis.connection_pool.connection_kwargs)
        kwargs["decode_responses"] = False
        self.raw = aioredis.Redis(
            connection_pool=aioredis.ConnectionPool(connection_class=redis.connection_pool.connection_class, **kwargs)
        )
        self.reply_ttl = reply_ttl
        self.blob_ttl = blob_ttl
        self.max_job_bytes = max_job_bytes
        self._heartbeat = redis.register_script(scripts.HEARTBEAT)
        self._queue_position = redis.register_script(scripts.QUEUE_POSITION)
        self._autoclaim = redis.register_script(scripts.AUTOCLAIM)
        self._start = redis.register_script(scripts.START)
        self._finish = redis.register_script(scripts.FINISH)
        self._autoclaim_cursor: dict[str, str] = {}  # consumer → where its next XAUTOCLAIM scan starts
        # Writes queued meanwhile (events, jobs, attempt starts) share one pipeline (models/protocol/batch.py).
        self._batcher = WriteBatcher(redis)
        self._reader = ReplyReader(redis)
        self._alone = 0  # replies read with their own XREAD
        self._turn = -1  # which served model's stream `claim_new` asks first (round robin)

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

        stream = KEYS.jobs_for(job.model)

        def add(pipe: Any) -> int:
            pipe.xadd(stream, fields, maxlen=JOBS_MAXLEN, approximate=True)
            return 1

        [entry] = await self._batcher.run(add)
        if isinstance(entry, Exception):
            raise entry
        return job.id

    async def events(
        self, job_id: str, *, after: str = "0-0", block_ms: int = 1000, idle_timeout: float | None = None
    ) -> AsyncIterator[Event | None]:
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

    async def queue_position(self, job_id: str, entry_hint: str | None = None, *, model: str = "") -> int | None:
        """1-based position of a not-yet-claimed job in its model's queue, or None once a worker has it."""
        # Counted inside Redis: reading the waiting entries out would copy every queued payload (whole
        # conversations) to every follower, several times a second.  Looks at most 1000 entries ahead.
        try:
            position = await self._queue_position(keys=[KEYS.jobs_for(model)], args=[KEYS.group, job_id, 1000])
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
                data.setdefault("models", [])  # a worker from before models were routed serves the one
                infos.append(WorkerInfo(**{k: data[k] for k in WorkerInfo.__dataclass_fields__}))
            except (ValueError, TypeError, KeyError):  # a worker of another version: still alive
                infos.append(WorkerInfo(worker_id, "", "", 0, 0, False, now))
        return infos

    def _streams(self, model: str | None) -> list[str]:
        """One model's job stream, or (None) every stream of the deployment."""
        return [KEYS.jobs_for(model)] if model is not None else [KEYS.jobs, *map(KEYS.jobs_for, self.models)]

    async def queue_depth(self, model: str | None = None) -> int:
        """Jobs waiting for a worker (not yet delivered to any consumer): of one model, or of all."""
        total = 0
        for stream in self._streams(model):
            try:
                total += int(await self._queue_position(keys=[stream], args=[KEYS.group, "", 10_000]) or 0)
            except ResponseError:  # no stream yet
                pass
        return total

    async def dead_letters(self, count: int = 100) -> list[dict[str, str]]:
        entries = await self.redis.xrevrange(KEYS.dead, count=count)
        return [fields for _eid, fields in entries]

    async def dead_letter_count(self) -> int:
        return int(await self.redis.xlen(KEYS.dead))

    async def running_count(self, model: str | None = None) -> int:
        """Jobs a worker has claimed and not yet acknowledged (running, or waiting for a takeover)."""
        total = 0
        for stream in self._streams(model):
            try:
                pending = await self.redis.xpending(stream, KEYS.group)
            except ResponseError:  # no stream or group yet: nothing ever ran
                continue
            total += int(pending.get("pending") or 0)
        return total

    async def active_reply_count(self) -> int:
        """Conversations with a reply being shown by some bot process (the resume index)."""
        return int(await self.redis.zcard(KEYS.active_conversations))

    async def claim_event(self, source: str, ttl: int = 900) -> bool:
        """True for the first bot process to claim an incoming event (`source`, e.g. a Discord message id),
        False for any other (two processes that both receive it answer it once).  In the shared pipeline: a
        burst of messages claims in one round trip."""

        def add(pipe: Any) -> int:
            pipe.set(KEYS.event_claimed(source), "1", nx=True, ex=ttl)
            return 1

        [claimed] = await self._batcher.run(add)
        if isinstance(claimed, Exception):
            raise claimed
        return bool(claimed)

    async def pipelined(self, add: Any) -> list[Any]:
        """Queue `add(pipe)`'s commands (it returns how many) in the shared pipeline; their replies, the first
        error raised.  For reads and writes that need no atomicity (a request's settings overrides)."""
        results = await self._batcher.run(add)
        for result in results:
            if isinstance(result, Exception):
                raise result
        return results

    async def run_script(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        """Run a Lua script registered on `self.redis` in the shared pipeline (with whatever else is written
        meanwhile: one round trip for a burst), for the handlers' atomic steps (history, reply records)."""
        return await self._batcher.script(script, keys, args)

    async def command_hash(self) -> str | None:
        """The hash of the slash commands last synced with Discord (bot/client.py)."""
        return await self.redis.get(KEYS.command_hash)

    async def set_command_hash(self, digest: str) -> None:
        await self.redis.set(KEYS.command_hash, digest)

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
    # A worker serves one or more models (models/routing.py), each with its own job stream and consumer group.
    # What it holds of a claimed job is an entry reference: the stream entry id for `KEYS.jobs` (as before
    # models were routed), `model@id` for a model's stream — two streams can hold the same entry id.
    @staticmethod
    def entry_ref(model: str, entry_id: str) -> str:
        return f"{model}@{entry_id}" if model else entry_id

    @staticmethod
    def split_ref(ref: str) -> tuple[str, str]:
        """(stream, entry id) of an entry reference."""
        model, _, entry_id = ref.rpartition("@")
        return KEYS.jobs_for(model), entry_id

    @staticmethod
    def _by_model(refs: Iterable[str]) -> dict[str, list[str]]:
        """Entry ids grouped by the model whose stream holds them."""
        groups: dict[str, list[str]] = {}
        for ref in refs:
            model, _, entry_id = ref.rpartition("@")
            groups.setdefault(model, []).append(entry_id)
        return groups

    async def ensure_group(self, models: Iterable[str] = ("",)) -> None:
        for model in models:
            try:
                await self.redis.xgroup_create(KEYS.jobs_for(model), KEYS.group, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    def _claimed(self, entries: Iterable[tuple[str, dict[str, str]]], model: str = "") -> list[Claimed]:
        out: list[Claimed] = []
        for entry_id, fields in entries:
            ref = self.entry_ref(model, entry_id)
            if fields is None:  # deleted from the stream while pending
                out.append(Claimed(ref, None, ProtocolError("the job vanished"), {}, model))
                continue
            size = sum(len(k) + len(v.encode()) for k, v in fields.items())
            if size > self.max_job_bytes:  # written past `submit` (another client, an older bot)
                raw = {k: v for k, v in fields.items() if k != "payload"}
                out.append(
                    Claimed(
                        ref,
                        None,
                        PayloadTooLarge(
                            f"the request is too large to process ({size // 1024} KiB; the limit is "
                            f"{self.max_job_bytes // 1024} KiB)"
                        ),
                        raw,
                        model,
                    )
                )
                continue
            try:
                job = Job.decode(fields)
            except ProtocolError as exc:
                out.append(Claimed(ref, None, exc, fields, model))
                continue
            if job.model != model:  # put on the wrong stream by hand or by another client: never run it here
                out.append(
                    Claimed(
                        ref,
                        None,
                        ProtocolError(
                            f"the job asks for model {job.model or '(default)'!r} but was queued for "
                            f"{model or '(default)'!r}"
                        ),
                        fields,
                        model,
                    )
                )
                continue
            out.append(Claimed(ref, job, None, fields, model))
        return out

    def _stream_model(self, stream: str, models: Iterable[str]) -> str:
        for model in models:
            if KEYS.jobs_for(model) == stream:
                return model
        raise ProtocolError(f"unexpected job stream {stream!r}")

    async def claim_new(self, consumer: str, count: int, block_ms: int, models: Iterable[str] = ("",)) -> list[Claimed]:
        """New jobs for the models this worker serves, at most `count` of them.

        One model: one blocking XREADGROUP, as always.  Several: each stream is asked without blocking (in
        turn, so one busy model does not starve the others) until `count` are claimed; with none waiting, one
        XREADGROUP blocks on all of them (COUNT 1 each).  Should that return more than `count` (several streams
        filled in the same instant), the extra entries are handed back at once (idle past any visibility
        timeout), so the next XAUTOCLAIM of a worker with a free slot takes them up — none is lost or doubled."""
        served = list(dict.fromkeys(models)) or [""]
        if len(served) == 1:
            result = await self.redis.xreadgroup(
                KEYS.group, consumer, {KEYS.jobs_for(served[0]): ">"}, count=count, block=block_ms
            )
            claimed: list[Claimed] = []
            for _stream, entries in result or []:
                claimed.extend(self._claimed(entries, served[0]))
            return claimed
        turn = self._turn = (self._turn + 1) % len(served)
        order = served[turn:] + served[:turn]
        claimed = []
        for model in order:
            if len(claimed) >= count:
                break
            result = await self.redis.xreadgroup(
                KEYS.group, consumer, {KEYS.jobs_for(model): ">"}, count=count - len(claimed)
            )
            for _stream, entries in result or []:
                claimed.extend(self._claimed(entries, model))
        if claimed:
            return claimed
        result = await self.redis.xreadgroup(
            KEYS.group, consumer, {KEYS.jobs_for(m): ">" for m in order}, count=1, block=block_ms
        )
        for stream, entries in result or []:
            claimed.extend(self._claimed(entries, self._stream_model(stream, order)))
        extra = claimed[max(1, count) :]
        if extra:
            await self.release(consumer, [item.entry_id for item in extra], idle_ms=10**9)
        return claimed[: max(1, count)]

    async def claim_stale(
        self, consumer: str, min_idle_ms: int, count: int, models: Iterable[str] = ("",)
    ) -> list[Claimed]:
        """Take over jobs whose worker stopped heartbeating (XAUTOCLAIM), on the streams of `models` only.

        The scan resumes where the previous one stopped (per consumer and stream), so stale entries behind
        many healthy pending ones are found too; entries trimmed from the stream while pending are acked."""
        claimed: list[Claimed] = []
        for model in dict.fromkeys(models):
            if len(claimed) >= count:
                break
            stream = KEYS.jobs_for(model)
            where = f"{consumer}\n{stream}"
            start = self._autoclaim_cursor.get(where, "0-0")
            cursor, raw_entries, _gone = await self._autoclaim(
                keys=[stream],
                args=[KEYS.group, consumer, max(0, int(min_idle_ms)), start, max(1, count - len(claimed))],
            )
            self._autoclaim_cursor[where] = cursor or "0-0"
            entries = []
            for entry_id, flat in raw_entries:
                entries.append((entry_id, dict(zip(flat[::2], flat[1::2], strict=True))))
            claimed.extend(self._claimed(entries, model))
        return claimed

    async def heartbeat_jobs(self, consumer: str, entry_ids: list[str]) -> list[str]:
        """Reset the idle time of jobs this worker still runs, so nobody takes them over.

        Returns the entries this consumer no longer owns (taken over by another worker meanwhile): the
        caller should stop running them, since their reply now belongs to a newer attempt."""
        lost: list[str] = []
        for model, ids in self._by_model(entry_ids).items():
            gone = await self._heartbeat(keys=[KEYS.jobs_for(model)], args=[KEYS.group, consumer, *ids])
            lost.extend(self.entry_ref(model, str(entry_id)) for entry_id in gone)
        return lost

    async def release(self, consumer: str, entry_ids: list[str], idle_ms: int, job_ids: Iterable[str] = ()) -> None:
        """Hand jobs back without finishing them: mark them idle so the next XAUTOCLAIM takes them.

        `job_ids` (of the same jobs) are counted as hand-backs, which do not count against
        `JOB_MAX_ATTEMPTS`: a job interrupted by rolling restarts is not a poison job."""
        for model, ids in self._by_model(entry_ids).items():
            await self.redis.xclaim(KEYS.jobs_for(model), KEYS.group, consumer, 0, ids, idle=idle_ms, justid=True)
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
        """Acknowledge a job by its entry reference (see `entry_ref`)."""
        stream, plain = self.split_ref(entry_id)
        await self.redis.xack(stream, KEYS.group, plain)

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
        attempt, cancelled, announced = await self._batcher.script(
            self._start,
            [KEYS.attempts(job_id), KEYS.cancel(job_id), KEYS.events(job_id)],
            [max(self.reply_ttl, 3600), self.reply_ttl, data, REPLY_MAXLEN],
        )
        return int(attempt), bool(cancelled), bool(announced)

    async def finish(
        self, job_id: str, attempt: int, events: list[tuple[str, dict[str, Any]]], ack_entry: str = ""
    ) -> list[str]:
        """Write the last events of an attempt (a final one last) and then, when `ack_entry` is given, XACK
        the job — in one round trip, the XACK only once every event is written (a Lua script stops at the
        first error).  The caller must have awaited its earlier events, so the order per job is kept."""
        stream, plain = self.split_ref(ack_entry)
        args: list[Any] = [self.reply_ttl, REPLY_MAXLEN, KEYS.group if ack_entry else "", plain]
        for type_, data in events:
            args += [type_, str(attempt), json.dumps(data or {}, ensure_ascii=False, separators=(",", ":"))]
        ids = await self._batcher.script(self._finish, [KEYS.events(job_id), stream], args)
        return [str(i) for i in ids]

    async def emit(
        self, job_id: str, attempt: int, type_: str, data: dict[str, Any] | None = None, *, refresh_ttl: bool = False
    ) -> str:
        """Append an event to the job's reply stream.  The TTL is set on `status` events (every attempt
        starts with one), on final events and when asked, which keeps the per-token cost at one round trip
        and still lets the stream of a job whose worker died expire."""
        [entry_id] = await self.emit_many(job_id, attempt, [(type_, data)], refresh_ttl=refresh_ttl)
        return entry_id

    async def emit_many(
        self, job_id: str, attempt: int, events: list[tuple[str, dict[str, Any] | None]], *, refresh_ttl: bool = False
    ) -> list[str]:
        """Append several events to the job's reply stream, in this order, in the same write (one round trip,
        shared with whatever other jobs emit meanwhile)."""
        key = KEYS.events(job_id)
        entries: list[tuple[dict[str, str], bool]] = []
        for type_, data in events:
            fields = {
                "type": type_,
                "attempt": str(attempt),
                "data": json.dumps(data or {}, ensure_ascii=False, separators=(",", ":")),
            }
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

        results = await self._batcher.run(add)
        ids = [results[i] for i in positions]
        for entry_id in ids:
            if isinstance(entry_id, Exception):
                raise entry_id
        return ids

    async def dead_letter(self, claimed: Claimed, reason: str) -> None:
        fields = {
            k: v if len(v) <= DEAD_FIELD_CHARS else v[:DEAD_FIELD_CHARS] + "…[cut]" for k, v in claimed.raw.items()
        }
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
