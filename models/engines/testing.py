"""`ENGINE=test`: a deterministic engine with a fixed per-token latency.

It is what the benchmarks use to measure the queue and the Discord path without a model in the way,
and what end-to-end tests use when they need exact text.  It behaves like a batching engine: any
number of requests stream concurrently, each at `token_delay` seconds per token.

What it answers (so tests can script it without a model):
* by default, `echo: <last user message>` followed by a turn count (and `model=NAME` when it stands for a
  named model of `CHAT_MODELS`), word by word;
* a user message containing `[[repeat:N]]` yields N numbered words;
* `[[say:TEXT]]` yields TEXT verbatim (split into small pieces);
* `[[think:THOUGHT|ANSWER]]` yields `<think>THOUGHT</think>` then ANSWER (cut at the last `|`), as reasoning
  models write; without `|ANSWER` the `<think>` is never closed;
* `[[fail]]` raises an error inside the engine; `[[slow]]` multiplies the delay by 20.

Its `special_tokens` stand for a tokenizer's own control tokens: by default a Gemma-style pair
(`<start_of_turn>`, `<end_of_turn>`) that `untrusted`'s built-in list does not know, so tests see that the
configured engine's tokens, not only the built-in ones, are made inert.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

from .base import ChatMessage, Engine, EngineError, GenParams

DEFAULT_SPECIAL_TOKENS = frozenset({"<start_of_turn>", "<end_of_turn>"})
_DIRECTIVE = re.compile(r"\[\[(\w+)(?::(.*?))?\]\]", re.S)


def _pieces(text: str, size: int = 4) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


class TestEngine(Engine):
    """Deterministic, instant-or-fixed-latency engine."""

    __test__ = False  # not a pytest class
    name = "test"
    supports_raw = True

    def __init__(
        self,
        token_delay: float = 0.0,
        context_window: int = 4096,
        vision: bool = False,
        special_tokens: frozenset[str] = DEFAULT_SPECIAL_TOKENS,
        model: str = "",
    ) -> None:
        self.token_delay = token_delay
        self.model = model  # the CHAT_MODELS name it stands for: named in its answers, so tests see who answered
        self.context_window = context_window
        self.supports_vision = vision
        self.special_tokens = frozenset(special_tokens)
        self.requests: list[list[ChatMessage]] = []  # what it was asked, for in-process tests

    def count_tokens(self, text: str) -> int:
        return max(1, len(text.split())) if text else 0

    def reply_for(self, messages: list[ChatMessage]) -> list[str]:
        users = [m for m in messages if m.role == "user"]
        last = users[-1].content if users else ""
        directive = _DIRECTIVE.search(last)
        if directive:
            name, arg = directive.group(1), directive.group(2) or ""
            if name == "repeat":
                return [f"w{i} " for i in range(int(arg or 10))]
            if name == "say":
                return _pieces(arg)
            if name == "think":  # a reasoning model: `[[think:THOUGHT|ANSWER]]`; no `|` = never closes <think>
                thought, bar, answer = arg.rpartition("|")
                thought, answer = (thought, answer) if bar else (answer, "")
                return _pieces("<think>" + thought + ("</think>\n\n" + answer if bar else ""), 3)
            if name == "fail":
                raise EngineError("the test engine was asked to fail")
        images = sum(len(m.images) for m in messages)
        text = f"echo: {last} (turns={len(users)}, images={images}{', model=' + self.model if self.model else ''})"
        return [word + " " for word in text.split(" ")]

    async def stream_chat(
        self, messages: list[ChatMessage], params: GenParams, cancel: asyncio.Event
    ) -> AsyncIterator[str]:
        self.requests.append(messages)
        delay = self.token_delay
        if any("[[slow]]" in m.content for m in messages if m.role == "user"):
            delay = max(delay, 0.01) * 20
        for count, piece in enumerate(self.reply_for(messages)):
            if cancel.is_set() or count >= params.max_new_tokens:
                return
            if delay:
                await asyncio.sleep(delay)
            yield piece

    async def stream_raw(self, prompt: str, params: GenParams, cancel: asyncio.Event) -> AsyncIterator[str]:
        async for piece in self.stream_chat([ChatMessage("user", prompt)], params, cancel):
            yield piece
