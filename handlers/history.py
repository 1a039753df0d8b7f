"""Per-conversation history in Redis: atomic appends, bounded length, a TTL, reset.

A conversation is a guild channel, a thread, a DM or a console session; its id is chosen by the front
end (`conversation_id`).  Each turn is one JSON list element; the worker, not this module, decides how
many of the newest turns fit the model's context (it has the tokenizer).

Answers are recorded with `record_answer`, which is exactly-once and reset-aware, because an answer is
written long after its question and possibly by another process:
* once per job: two processes following the same job (a deploy overlap, a reply resumed after a
  restart) both reach its final event; a per-job marker set in the same script as the append lets only
  the first one write;
* not across a reset: every `reset` bumps the conversation's generation in the same transaction as the
  delete; the generation read when the question was asked travels with the reply (and its resume record)
  and the answer is appended only if it is still current — an answer to a question the person has since
  cleared would otherwise open the new conversation.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline

from models.protocol import KEYS

# Remove the newest element if it is an assistant turn; return it.  Atomic, so two "Regenerate"
# presses cannot remove two answers.
_POP_ASSISTANT = """
local v = redis.call('LINDEX', KEYS[1], -1)
if v and string.sub(v, 1, 20) == '{"role":"assistant",' then
  redis.call('RPOP', KEYS[1])
  return v
end
return false
"""

# Append an answer once per job and only into the generation it was asked in.  KEYS: history, generation,
# per-job marker.  ARGV: the encoded turn, max turns, history TTL (0 = none), marker TTL, the expected
# generation ('' = do not check).  Returns "recorded", "duplicate" or "stale".
_RECORD_ANSWER = """
if ARGV[5] ~= '' and (redis.call('GET', KEYS[2]) or '0') ~= ARGV[5] then
  return 'stale'
end
if not redis.call('SET', KEYS[3], '1', 'NX', 'EX', tonumber(ARGV[4])) then
  return 'duplicate'
end
redis.call('RPUSH', KEYS[1], ARGV[1])
redis.call('LTRIM', KEYS[1], -tonumber(ARGV[2]), -1)
if tonumber(ARGV[3]) > 0 then
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
end
return 'recorded'
"""

# A request's one round trip (`HistoryStore.request_round_trip`): append the user's turn, read the hashes
# the request needs (its settings overrides) and the newest turns with their generation — atomically, as the
# MULTI/EXEC it replaces (the turns read include the new one and belong to the generation read with them).
# KEYS: history, generation, then the hashes to read.  ARGV: max turns, history TTL (0 = none), "1" to read
# the turns, how many, then the encoded turns to append.  Returns {hash as flat list...,[turns, generation]}.
_REQUEST = """
if #ARGV > 4 then
  redis.call('RPUSH', KEYS[1], unpack(ARGV, 5, #ARGV))
  redis.call('LTRIM', KEYS[1], -tonumber(ARGV[1]), -1)
  if tonumber(ARGV[2]) > 0 then
    redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
  end
end
local out = {}
for i = 3, #KEYS do
  table.insert(out, redis.call('HGETALL', KEYS[i]))
end
if ARGV[3] == '1' then
  table.insert(out, redis.call('LRANGE', KEYS[1], -tonumber(ARGV[4]), -1))
  table.insert(out, redis.call('GET', KEYS[2]))
end
return out
"""

# A generation outlives any answer still pending from before the reset that bumped it (answers live for
# minutes, reply streams for about an hour); after that the key may go, and a missing key reads as 0.
GENERATION_TTL = 7 * 24 * 3600

RecordOutcome = Literal["recorded", "duplicate", "stale"]
# (registered script, keys, args) → its result, e.g. `Bus.run_script`.
ScriptRunner = Callable[[Any, list[str], list[Any]], Awaitable[Any]]


def conversation_id(
    *, guild: int | None = None, channel: int | None = None, dm_user: int | None = None, console: str | None = None
) -> str:
    """The history key suffix for a place people talk in.  Threads are channels to Discord."""
    if console is not None:
        return f"console:{console}"
    if dm_user is not None:
        return f"dm:{dm_user}"
    return f"g{guild or 0}:c{channel}"


@dataclass
class Turn:
    role: str  # "user" | "assistant"
    content: str
    name: str | None = None  # the speaker's display name in shared channels
    images: list[str] = field(default_factory=list)  # blob refs
    ts: float = field(default_factory=time.time)
    meta: dict[str, Any] = field(default_factory=dict)  # e.g. {"stopped": true, "tools": "python"}

    def encode(self) -> str:
        # Field by field rather than `asdict`, which deep-copies `images` and `meta` (the same JSON).
        return json.dumps(
            {name: getattr(self, name) for name in self.__dataclass_fields__}, ensure_ascii=False, separators=(",", ":")
        )

    @classmethod
    def decode(cls, raw: str) -> Turn | None:
        try:
            data = json.loads(raw)
            return cls(**{k: data[k] for k in data if k in cls.__dataclass_fields__})
        except (ValueError, TypeError, KeyError):
            return None

    def as_message(self) -> dict[str, Any]:
        """The turn as a job message (names prefixed so the model can tell speakers apart)."""
        content = f"{self.name}: {self.content}" if self.name and self.role == "user" else self.content
        return {"role": self.role, "content": content, "images": list(self.images)}


class HistoryStore:
    def __init__(self, redis: aioredis.Redis, *, max_turns: int = 40, ttl: int = 0) -> None:
        self.redis = redis
        self.max_turns = max(2, max_turns)
        self.ttl = ttl
        self._pop_assistant = redis.register_script(_POP_ASSISTANT)
        self._record_answer = redis.register_script(_RECORD_ANSWER)
        self._request = redis.register_script(_REQUEST)

    async def append(self, conversation: str, *turns: Turn) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            self.queue_append(pipe, conversation, *turns)
            await pipe.execute()

    def queue_append(self, pipe: Pipeline, conversation: str, *turns: Turn) -> int:
        """Queue an append on `pipe` (so a caller can share the round trip); returns how many results it adds."""
        key = KEYS.history(conversation)
        pipe.rpush(key, *(t.encode() for t in turns))
        pipe.ltrim(key, -self.max_turns, -1)
        if self.ttl:
            pipe.expire(key, self.ttl)
            return 3
        return 2

    def queue_snapshot(self, pipe: Pipeline, conversation: str, limit: int | None = None) -> None:
        """Queue a read of the newest turns and the generation; `snapshot_from` parses the two results.
        In a transaction, the generation is the one those turns belong to."""
        pipe.lrange(KEYS.history(conversation), -(limit or self.max_turns), -1)
        pipe.get(KEYS.history_generation(conversation))

    @staticmethod
    def snapshot_from(raw_turns: list[str], raw_generation: str | None) -> tuple[list[Turn], int]:
        return [t for t in (Turn.decode(r) for r in raw_turns) if t is not None], int(raw_generation or 0)

    async def snapshot(self, conversation: str, limit: int | None = None) -> tuple[list[Turn], int]:
        """The newest turns and the conversation's generation, read atomically."""
        async with self.redis.pipeline(transaction=True) as pipe:
            self.queue_snapshot(pipe, conversation, limit)
            raw_turns, raw_generation = await pipe.execute()
        return self.snapshot_from(raw_turns, raw_generation)

    async def request_round_trip(
        self,
        conversation: str,
        *,
        append: Turn | None,
        snapshot: bool,
        hashes: list[str],
        run_script: ScriptRunner | None = None,
    ) -> tuple[list[dict[str, str]], list[Turn], int | None]:
        """What a request needs, in one atomic script: append `append` (if any), read `hashes` (e.g. the
        settings overrides that apply) and, with `snapshot`, the newest turns and their generation.  Returns
        (the hashes in order, the turns, the generation; [] and None without `snapshot`).  `run_script`
        (the bus's) runs it in the shared pipeline, so a burst of requests shares one round trip."""
        keys = [KEYS.history(conversation), KEYS.history_generation(conversation), *hashes]
        args: list[Any] = [self.max_turns, self.ttl, "1" if snapshot else "", self.max_turns]
        if append is not None:
            args.append(append.encode())
        if run_script is not None:
            out = await run_script(self._request, keys, args)
        else:
            out = await self._request(keys=keys, args=args)
        read = [dict(zip(flat[::2], flat[1::2], strict=True)) for flat in out[: len(hashes)]]
        if not snapshot:
            return read, [], None
        turns, generation = self.snapshot_from(out[len(hashes)], out[len(hashes) + 1])
        return read, turns, generation

    async def recent(self, conversation: str, limit: int | None = None) -> list[Turn]:
        raw = await self.redis.lrange(KEYS.history(conversation), -(limit or self.max_turns), -1)
        return [t for t in (Turn.decode(r) for r in raw) if t is not None]

    async def generation(self, conversation: str) -> int:
        """How often the conversation was reset (recently: see `GENERATION_TTL`)."""
        return int(await self.redis.get(KEYS.history_generation(conversation)) or 0)

    async def record_answer(
        self,
        conversation: str,
        turn: Turn,
        *,
        job_id: str,
        generation: int | None,
        marker_ttl: int,
        run_script: ScriptRunner | None = None,
    ) -> RecordOutcome:
        """Append a job's answer: once per job (`marker_ttl` must outlast every reader that can still see
        the job's final event), and only if the conversation was not reset since `generation` was read
        (None: no check, for replies recorded by an older version).  Atomic (one script); `run_script`
        (the bus's `run_script`) runs it in a shared pipeline instead of a round trip of its own."""
        keys = [KEYS.history(conversation), KEYS.history_generation(conversation), KEYS.answer_recorded(job_id)]
        args = [
            turn.encode(),
            self.max_turns,
            self.ttl,
            max(1, int(marker_ttl)),
            "" if generation is None else str(generation),
        ]
        if run_script is not None:
            return await run_script(self._record_answer, keys, args)
        return await self._record_answer(keys=keys, args=args)

    async def answer_recorded(self, job_id: str) -> bool:
        return bool(await self.redis.exists(KEYS.answer_recorded(job_id)))

    async def mark_answer_recorded(self, job_id: str, marker_ttl: int) -> None:
        """For an answer found in history without its marker (recorded by an older version)."""
        await self.redis.set(KEYS.answer_recorded(job_id), "1", nx=True, ex=max(1, int(marker_ttl)))

    async def reset(self, conversation: str) -> int:
        """Forget the conversation and start a new generation (answers still pending for the old one will
        not be recorded); returns how many turns were dropped."""
        key, gen = KEYS.history(conversation), KEYS.history_generation(conversation)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.llen(key)
            pipe.delete(key)
            pipe.incr(gen)
            pipe.expire(gen, GENERATION_TTL)
            count, *_ = await pipe.execute()
        return int(count)

    async def pop_last_assistant(self, conversation: str) -> Turn | None:
        raw = await self._pop_assistant(keys=[KEYS.history(conversation)])
        return Turn.decode(raw) if raw else None
