"""Per-conversation history in Redis: atomic appends, bounded length, a TTL, reset.

A conversation is a guild channel, a thread, a DM or a console session; its id is chosen by the front
end (`conversation_id`).  Each turn is one JSON list element; the worker, not this module, decides how
many of the newest turns fit the model's context (it has the tokenizer).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import redis.asyncio as aioredis

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


def conversation_id(*, guild: int | None = None, channel: int | None = None, dm_user: int | None = None,
                    console: str | None = None) -> str:
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
        return json.dumps(asdict(self), ensure_ascii=False, separators=(",", ":"))

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

    async def append(self, conversation: str, *turns: Turn) -> None:
        key = KEYS.history(conversation)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.rpush(key, *(t.encode() for t in turns))
            pipe.ltrim(key, -self.max_turns, -1)
            if self.ttl:
                pipe.expire(key, self.ttl)
            await pipe.execute()

    async def recent(self, conversation: str, limit: int | None = None) -> list[Turn]:
        raw = await self.redis.lrange(KEYS.history(conversation), -(limit or self.max_turns), -1)
        return [t for t in (Turn.decode(r) for r in raw) if t is not None]

    async def reset(self, conversation: str) -> int:
        """Forget the conversation; returns how many turns were dropped."""
        key = KEYS.history(conversation)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.llen(key)
            pipe.delete(key)
            count, _ = await pipe.execute()
        return int(count)

    async def pop_last_assistant(self, conversation: str) -> Turn | None:
        raw = await self._pop_assistant(keys=[KEYS.history(conversation)])
        return Turn.decode(raw) if raw else None
