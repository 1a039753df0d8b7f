"""Per-guild and per-channel generation settings set by admins (`/settings`, and the chat model with
`/model`), stored in Redis.

Effective settings = the process defaults, overridden by the guild's, overridden by the channel's.  The model
choice lives in the same hash under `MODEL_FIELD`; it is not one of `FIELDS` because its valid values are the
deployment's `CHAT_MODELS` (models/routing.py), not a range.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from models import routing
from models.engines.base import GenParams
from models.protocol import KEYS, Bus
from models.settings import Settings

# name → (type, min, max).  Only these can be set; values are validated and clamped.
FIELDS: dict[str, tuple[type, float, float]] = {
    "system_prompt": (str, 0, 4000),
    "temperature": (float, 0.0, 2.0),
    "top_p": (float, 0.01, 1.0),
    "max_new_tokens": (int, 1, 8192),
    "thread_replies": (bool, 0, 1),  # answer messages in a new thread (THREAD_REPLIES); on/off, true/false
    "render_mode": (str, 0, 10),  # how replies look (RENDER_MODE): one of CHOICES
}
# Settings whose value is one of a few words (checked before the type's own rule).
CHOICES: dict[str, tuple[str, ...]] = {"render_mode": ("components", "plain")}
TRUE_WORDS, FALSE_WORDS = ("true", "on", "yes", "1"), ("false", "off", "no", "0")


MODEL_FIELD = "model"


class ConfError(ValueError):
    """An invalid setting value; the message is shown to the admin."""


@dataclass
class Effective:
    system_prompt: str
    temperature: float
    top_p: float
    max_new_tokens: int
    repetition_penalty: float
    model: str = ""  # the model the job asks for (routing name); "" = the deployment's only model
    chosen_model: str = ""  # what admins chose, as stored (may name a model no longer configured)
    # The sampling values someone set (a scope, or the bot's environment); the others shown here are the generic
    # defaults, and the worker fills in the loaded model's own instead (models/engines/sampling.py).
    explicit: frozenset[str] = frozenset()
    thread_replies: bool = False  # answer messages in server channels in a new thread (bot/threads.py)
    # How the reply looks in Discord (RENDER_MODE): read with the request's other settings, so a per-channel
    # choice costs no extra round trip; the front end takes it from `Reply.render_mode`.
    render_mode: str = "components"

    def params(self) -> dict[str, float]:
        """What the job carries: only the explicitly set values, so the model's own defaults apply to the rest."""
        values = {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_new_tokens": self.max_new_tokens,
            "repetition_penalty": self.repetition_penalty,
        }
        return {name: value for name, value in values.items() if name in self.explicit}


def validate(name: str, value: str) -> str:
    if name not in FIELDS:
        raise ConfError(f"unknown setting {name!r}")
    kind, lo, hi = FIELDS[name]
    if name in CHOICES:
        word = value.strip().lower()
        if word not in CHOICES[name]:
            raise ConfError(f"{name} must be one of: {', '.join(CHOICES[name])}")
        return word
    if kind is str:
        if len(value) > hi:
            raise ConfError(f"{name} can be at most {int(hi)} characters")
        return value
    if kind is bool:
        word = value.strip().lower()
        if word not in TRUE_WORDS + FALSE_WORDS:
            raise ConfError(f"{name} must be on or off (true/false)")
        return "true" if word in TRUE_WORDS else "false"
    try:
        number = kind(value)
    except ValueError as exc:
        raise ConfError(f"{name} must be a number") from exc
    if not lo <= number <= hi:
        raise ConfError(f"{name} must be between {lo:g} and {hi:g}")
    return str(number)


class ConfStore:
    def __init__(self, redis: aioredis.Redis, defaults: Settings, *, bus: Bus | None = None) -> None:
        self.redis = redis
        self.defaults = defaults
        self.bus = bus  # given: `effective` reads in the bus's shared pipeline (a burst of messages, one trip)

    @staticmethod
    def scope(*, guild: int | None = None, channel: int | None = None) -> str:
        return f"channel:{channel}" if channel is not None else f"guild:{guild or 0}"

    async def set(self, scope: str, name: str, value: str) -> None:
        await self.redis.hset(KEYS.overrides(scope), name, validate(name, value))

    async def clear(self, scope: str, name: str | None = None) -> None:
        if name:
            await self.redis.hdel(KEYS.overrides(scope), name)
        else:
            await self.redis.delete(KEYS.overrides(scope))

    async def set_model(self, scope: str, name: str) -> None:
        """Choose the chat model for a scope; raises `ConfError` unless `CHAT_MODELS` lists it."""
        configured = routing.names(self.defaults)
        if name not in configured:
            raise ConfError(f"{name!r} is not one of the configured models ({', '.join(configured) or 'none'})")
        await self.redis.hset(KEYS.overrides(scope), MODEL_FIELD, name)

    async def get_scope(self, scope: str) -> dict[str, str]:
        return await self.redis.hgetall(KEYS.overrides(scope))

    async def effective(self, *, guild: int | None = None, channel: int | None = None) -> Effective:
        if self.bus is not None:
            return self.effective_from(
                await self.bus.pipelined(lambda pipe: self.queue_effective(pipe, guild=guild, channel=channel))
            )
        async with self.redis.pipeline(transaction=False) as pipe:
            self.queue_effective(pipe, guild=guild, channel=channel)
            return self.effective_from(await pipe.execute())

    def queue_effective(self, pipe: Any, *, guild: int | None = None, channel: int | None = None) -> int:
        """Queue the reads `effective` needs on `pipe`; returns how many results they add, to be passed to
        `effective_from` in order."""
        keys = self.scope_keys(guild=guild, channel=channel)
        for key in keys:
            pipe.hgetall(key)
        return len(keys)

    def scope_keys(self, *, guild: int | None = None, channel: int | None = None) -> list[str]:
        """The override hashes that apply here, in `effective_from`'s order (a request reads them in the same
        script as its history write: `HistoryStore.request_round_trip`)."""
        scopes = ([self.scope(guild=guild)] if guild is not None else []) + (
            [self.scope(channel=channel)] if channel is not None else []
        )
        return [KEYS.overrides(scope) for scope in scopes]

    def effective_from(self, scope_values: list[dict[str, str]]) -> Effective:
        """Defaults overridden by each scope's values in order (guild, then channel)."""
        d = self.defaults
        values: dict[str, str] = {}
        for scoped in scope_values:
            values.update(scoped or {})
        # What nobody set is the loaded model's choice (the worker's); shown here as the generic default.
        base: dict[str, Any] = {**vars(GenParams()), **d.explicit_sampling()}
        return Effective(
            system_prompt=values.get("system_prompt", d.system_prompt),
            temperature=float(values.get("temperature", base["temperature"])),
            top_p=float(values.get("top_p", base["top_p"])),
            max_new_tokens=int(values.get("max_new_tokens", base["max_new_tokens"])),
            repetition_penalty=float(base["repetition_penalty"]),
            model=routing.job_model(d, values.get(MODEL_FIELD)),
            chosen_model=values.get(MODEL_FIELD, ""),
            explicit=frozenset(d.explicit_sampling()) | {name for name in FIELDS if name in values},
            thread_replies=values["thread_replies"] == "true" if "thread_replies" in values else d.thread_replies,
            render_mode=values.get("render_mode", d.render_mode),
        )
