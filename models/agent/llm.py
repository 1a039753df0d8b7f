"""Lagent's `BaseModel` on top of the worker's async `Engine`.

Lagent 0.2.4 is synchronous: the agent loop runs in a thread and calls `stream_chat` here, which schedules
the engine's async generator on the worker's event loop and hands the pieces back through a queue.  One
adapter therefore serves every engine (llamacpp, openai, lmdeploy, test).

With `engine.supports_raw` the InternLM2 chat prompt is rendered here, client-side, with Lagent's
`INTERNLM2_META` template (`<|im_start|>role name=<|interpreter|>` …), so the protocol's special tokens reach
the model exactly as InternLM2 was trained on them, whatever chat template the server would apply.  Without
raw completion the turns are sent as chat messages (tool output as the `environment` role), which works only
if the server keeps special tokens in its output (see docs/agent.md).
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from typing import Any

from lagent.llms import INTERNLM2_META, BaseModel
from lagent.schema import ModelStatusCode

from ..engines.base import ChatMessage, Engine, GenParams

STOP_WORDS = ["<|im_end|>", "<|action_end|>"]
_END = object()


class AgentStopped(Exception):
    """The run was cancelled or ran past its deadline while waiting for the model."""


class EngineLLM(BaseModel):
    """Bridge from Lagent's synchronous model API to an async engine running on `loop`."""

    def __init__(self, engine: Engine, loop: asyncio.AbstractEventLoop, params: GenParams,
                 cancel: asyncio.Event, stop: threading.Event, deadline: float,
                 raw: bool | None = None) -> None:
        super().__init__(path=engine.name, meta_template=INTERNLM2_META, max_new_tokens=params.max_new_tokens,
                         top_p=params.top_p, temperature=params.temperature,
                         repetition_penalty=params.repetition_penalty, stop_words=STOP_WORDS)
        self.engine = engine
        self.loop = loop
        self.params = replace(params, stop=[*STOP_WORDS, *[s for s in params.stop if s not in STOP_WORDS]])
        self.cancel = cancel
        self.stop = stop  # set by the runner: cancel pressed or deadline reached
        self.deadline = deadline  # time.monotonic() value
        self.raw = engine.supports_raw if raw is None else raw
        self.calls = 0
        self.prompt_tokens = 0  # summed over the run's model calls (usage in the done event)
        self.completion_tokens = 0

    # ------------------------------------------------------------------ prompt building
    def render(self, inputs: list[dict[str, Any]]) -> str:
        """The whole InternLM2 prompt, ending with the assistant's turn header."""
        return self.template_parser(inputs)

    @staticmethod
    def to_messages(inputs: list[dict[str, Any]]) -> list[ChatMessage]:
        """Chat messages for engines without raw completion: one system message (most templates allow only
        one), tool output as `environment`, the rest as is."""
        system = [m["content"] for m in inputs if m.get("role") == "system" and m.get("content")]
        out = [ChatMessage("system", "\n\n".join(system))] if system else []
        for m in inputs:
            if m.get("role") in ("user", "assistant", "environment") and m.get("content") is not None:
                out.append(ChatMessage(m["role"], str(m["content"]), name=m.get("name")))
        return out

    # ------------------------------------------------------------------ Lagent's model API
    def generate(self, inputs: str | list[str], **gen_params: Any) -> str | list[str]:
        if isinstance(inputs, list):
            return [self._complete(lambda p=p: self.engine.stream_raw(p, self.params, self.cancel))
                    for p in inputs]
        return self._complete(lambda: self.engine.stream_raw(inputs, self.params, self.cancel))

    def chat(self, inputs: list[dict[str, Any]], **gen_params: Any) -> str:
        final = ""
        for _state, text, _ in self.stream_chat(inputs, **gen_params):
            final = text
        return final

    def stream_chat(self, inputs: list[dict[str, Any]], **gen_params: Any) -> Iterator[tuple[ModelStatusCode,
                                                                                             str, None]]:
        """Yield `(STREAM_ING, text so far, None)` as the model writes, then `(END, text, None)`."""
        self.calls += 1
        if self.raw:
            prompt = self.render(inputs)
            self.prompt_tokens += self.engine.count_tokens(prompt)

            def factory() -> AsyncIterator[str]:
                return self.engine.stream_raw(prompt, self.params, self.cancel)
        else:
            messages = self.to_messages(inputs)
            self.prompt_tokens += self.engine.count_message_tokens(messages)

            def factory() -> AsyncIterator[str]:
                return self.engine.stream_chat(messages, self.params, self.cancel)
        final = ""
        for text in self._stream(factory):
            final = text
            yield ModelStatusCode.STREAM_ING, text, None
        self.completion_tokens += self.engine.count_tokens(final) if final else 0
        yield ModelStatusCode.END, final, None

    def _complete(self, factory: Callable[[], AsyncIterator[str]]) -> str:
        final = ""
        for text in self._stream(factory):
            final = text
        return final

    def _stream(self, factory: Callable[[], AsyncIterator[str]]) -> Iterator[str]:
        """Run the engine's generator on the loop; yield the accumulated text, cut at the first stop word
        (some servers do not apply multi-token stop strings themselves)."""
        pieces: queue.Queue[Any] = queue.Queue()

        async def pump() -> None:
            try:
                async for piece in factory():
                    pieces.put(piece)
            except Exception as exc:
                pieces.put(exc)
            finally:
                pieces.put(_END)

        future = asyncio.run_coroutine_threadsafe(pump(), self.loop)
        text = ""
        try:
            while True:
                if self.stop.is_set() or time.monotonic() > self.deadline:
                    raise AgentStopped()
                try:
                    item = pieces.get(timeout=0.2)
                except queue.Empty:
                    continue
                if item is _END:
                    return
                if isinstance(item, Exception):
                    raise item
                text += item
                cut = min((i for i in (text.find(s) for s in STOP_WORDS) if i >= 0), default=-1)
                if cut >= 0:
                    yield text[:cut]
                    return
                yield text
        finally:
            future.cancel()  # closes the engine's stream (the server stops generating)
