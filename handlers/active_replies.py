"""Replies that survive a bot restart: a Redis record of every reply being streamed, so a new bot process
can finish posting them (or say that the answer was lost).

Why this works: the answer is produced by a worker and written to the job's reply stream in Redis, not
held by the bot.  When the bot dies mid-reply the worker carries on (or, with the embedded worker, the
job is taken over by the next worker after `JOB_VISIBILITY_TIMEOUT`).  All a new bot process needs is to
know *which* jobs it was showing, and *where* — that is this record.  Following the reply stream from
its start gives the whole answer so far, so the Discord message simply catches up.

The behaviour (documented in docs/deploy.md):
* the front end calls `begin` when it starts showing a reply (with where it shows it: channel and
  message ids — opaque to this module) and `end` when the final text is posted;
* on startup, `pending()` lists the records left behind (optionally only those a shard owns), and
  `reopen(record)` turns one into a `Reply` to follow again — or None when the answer cannot be had any
  more (its reply stream expired and the job is nowhere), in which case the front end tells the person
  the answer was interrupted;
* the answer goes into history exactly once: recording is idempotent per job (handlers/history.py), so
  if the old process recorded it before dying (it got as far as the final event), the reopened reply's
  write is a no-op; and the record carries the history generation the question was asked in, so an
  answer to a conversation `/reset` meanwhile is not recorded after the restart either.

Keys: `KEYS.active_reply(conversation)` is a hash job id → record; `KEYS.active_conversations` is a
sorted set of conversations with records (by time), so startup does not SCAN the keyspace.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from models.protocol import KEYS, Bus, Job
from models.settings import Settings

from .history import HistoryStore
from .types import Reply, Request

# Drop a conversation from the index once its hash is empty — atomically, so a `begin` racing with the
# cleanup is never dropped from the index.
_FORGET_IF_EMPTY = """
if redis.call('HLEN', KEYS[1]) == 0 then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return 1
end
return 0
"""

# Write a record and index its conversation, atomically.  KEYS: the conversation's hash, the index.  ARGV: job
# id, encoded record, hash TTL, conversation, index score, and "1" to write only while the record exists (an
# update must not bring back a record that `end` or a restarted process's cleanup removed meanwhile).
_SAVE = """
if ARGV[6] == '1' and redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
redis.call('ZADD', KEYS[2], ARGV[5], ARGV[4])
return 1
"""

# Forget one record, and its conversation in the index once its hash is empty (as `_FORGET_IF_EMPTY`).
# KEYS: the conversation's hash, the index.  ARGV: job id, conversation.
_END = """
redis.call('HDEL', KEYS[1], ARGV[1])
if redis.call('HLEN', KEYS[1]) == 0 then
  redis.call('ZREM', KEYS[2], ARGV[2])
end
return 1
"""


MINE_MAX = 4096  # records kept in memory for `update` (more than any process streams at once)


@dataclass
class ActiveRecord:
    """One reply that was being shown when the record was written."""

    job_id: str
    kind: str
    conversation: str
    record: bool  # whether the answer goes into history
    guild: int | None = None
    channel: int | None = None  # the request's channel (for settings), not necessarily where it shows
    where: dict[str, Any] = field(default_factory=dict)  # front-end data: channel/message ids, lang, owner
    started: float = field(default_factory=time.time)
    generation: int | None = None  # the history generation the job was built from (None: records before it)
    # The job's chat model (CHAT_MODELS; "" = the default): the reopened reply looks for its job in that
    # model's queue and reports that model unserved, not the default one ("" too for records before it).
    model: str = ""

    def encode(self) -> str:
        # Field by field rather than `asdict`, which deep-copies `where` on every reply (the same JSON).
        return json.dumps({name: getattr(self, name) for name in self.__dataclass_fields__}, separators=(",", ":"))

    @classmethod
    def decode(cls, raw: str) -> ActiveRecord | None:
        try:
            data = json.loads(raw)
            return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})
        except (ValueError, TypeError):
            return None


class ActiveReplies:
    """The record of replies in progress (see the module docstring)."""

    def __init__(self, bus: Bus, history: HistoryStore, settings: Settings) -> None:
        self.bus = bus
        self.redis = bus.redis
        self.history = history
        self.settings = settings
        # A job nobody has started yet and that is not in the queue may still be about to be retried:
        # only after this long is it declared lost.
        self.lost_after = 2 * settings.job_visibility_timeout + 10
        self.ttl = max(settings.reply_ttl, int(settings.job_timeout + settings.job_visibility_timeout) + 60)
        self._forget = self.redis.register_script(_FORGET_IF_EMPTY)
        self._save = self.redis.register_script(_SAVE)
        self._end = self.redis.register_script(_END)
        # The records this process wrote and has not ended: `update` adds to the record it wrote instead of
        # reading it back (only the process showing a reply writes its record).
        self._mine: dict[str, ActiveRecord] = {}

    async def begin(self, reply: Reply, **where: Any) -> ActiveRecord:
        """Note that `reply` is being shown (where: e.g. channel_id, message_id, reference_id, lang)."""
        req = reply.request
        rec = ActiveRecord(
            job_id=reply.job.id,
            kind=req.kind,
            conversation=req.conversation,
            record=req.record,
            guild=req.guild,
            channel=req.channel,
            where=dict(where),
            generation=reply.generation,
            model=reply.job.model,
        )
        await self._write(rec)
        self._mine[rec.job_id] = rec
        if len(self._mine) > MINE_MAX:  # replies cut short keep their record for the next process, not here
            self._mine.pop(next(iter(self._mine)))
        return rec

    async def update(self, reply: Reply, **where: Any) -> None:
        """Add to where the reply is shown (the first message's id once it was sent); a record that is gone
        (ended, or cleaned up by another process) stays gone."""
        rec = self._mine.get(reply.job.id)
        if rec is None:  # not begun by this process: read the record
            key = KEYS.active_reply(reply.request.conversation)
            raw = await self.redis.hget(key, reply.job.id)
            rec = ActiveRecord.decode(raw) if raw else None
            if rec is None:
                return
        rec.where.update(where)
        await self._write(rec, only_if_present=True)

    async def _write(self, rec: ActiveRecord, *, only_if_present: bool = False) -> None:
        """One atomic script in the bus's shared pipeline: the replies of a burst share the round trip."""
        await self.bus.run_script(
            self._save,
            [KEYS.active_reply(rec.conversation), KEYS.active_conversations],
            [rec.job_id, rec.encode(), self.ttl, rec.conversation, repr(time.time()), "1" if only_if_present else ""],
        )

    async def end(self, reply_or_record: Reply | ActiveRecord) -> None:
        """The final text is posted: forget the record."""
        if isinstance(reply_or_record, Reply):
            conversation, job_id = reply_or_record.request.conversation, reply_or_record.job.id
        else:
            conversation, job_id = reply_or_record.conversation, reply_or_record.job_id
        self._mine.pop(job_id, None)
        await self.bus.run_script(
            self._end, [KEYS.active_reply(conversation), KEYS.active_conversations], [job_id, conversation]
        )

    async def pending(self, owns: Callable[[ActiveRecord], bool] | None = None) -> list[ActiveRecord]:
        """Records left by a previous process (oldest first); `owns` filters them (e.g. by shard)."""
        out: list[ActiveRecord] = []
        horizon = time.time() - self.ttl
        for conversation in await self.redis.zrange(KEYS.active_conversations, 0, -1):
            key = KEYS.active_reply(conversation)
            entries = await self.redis.hgetall(key)
            if not entries:
                await self._forget(keys=[key, KEYS.active_conversations], args=[conversation])
                continue
            for job_id, raw in entries.items():
                rec = ActiveRecord.decode(raw)
                if rec is None or rec.started < horizon:
                    await self.redis.hdel(key, job_id)
                    continue
                if owns is None or owns(rec):
                    out.append(rec)
        out.sort(key=lambda r: r.started)
        return out

    async def answer_recorded(self, rec: ActiveRecord) -> bool:
        """Whether the answer of this job was recorded (by the old process).  An answer that an older
        version recorded without the per-job marker is found in history and marked now, so following the
        reply again cannot record it twice."""
        if await self.history.answer_recorded(rec.job_id):
            return True
        for turn in await self.history.recent(rec.conversation):
            if turn.role == "assistant" and turn.meta.get("job") == rec.job_id:
                await self.history.mark_answer_recorded(rec.job_id, self.ttl * 2)
                return True
        return False

    async def reopen(self, rec: ActiveRecord) -> Reply | None:
        """A `Reply` to follow again from the start of its reply stream, or None if the answer is lost."""
        has_events = bool(await self.redis.exists(KEYS.events(rec.job_id)))
        if not has_events:
            queued = await self.bus.queue_position(rec.job_id, model=rec.model) is not None
            if not queued and time.time() - rec.started > self.lost_after:
                return None
        if rec.record:
            await self.answer_recorded(rec)  # marks an answer an older version recorded without the marker
        job = Job(
            kind=rec.kind,
            payload={},
            conversation=rec.conversation,
            id=rec.job_id,
            created=rec.started,
            model=rec.model,
        )
        # `record` stays as it was: recording is once per job and generation-checked, so the answer goes in
        # only if it is not there yet and the conversation was not reset (and Regenerate stays offered).
        request = Request(
            conversation=rec.conversation,
            text="",
            guild=rec.guild,
            channel=rec.channel,
            kind=rec.kind,
            record=rec.record,
        )
        return Reply(job, request, generation=rec.generation)
