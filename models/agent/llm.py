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
import concurrent.futures
import contextlib
import json
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
CLOSE_GRACE = 5.0  # seconds an engine gets to close its stream once told to stop, before it is cancelled
_END = object()
Factory = Callable[[asyncio.Event], AsyncIterator[Any]]  # opens the engine's stream with a call's cancel event


class AgentStopped(Exception):
    """The run was cancelled or ran past its deadline while waiting for the model."""


class EngineLLM(BaseModel):
    """Bridge from Lagent's synchronous model API to an async engine running on `loop`."""

    def __init__(
        self,
        engine: Engine,
        loop: asyncio.AbstractEventLoop,
        params: GenParams,
        cancel: asyncio.Event,
        stop: threading.Event,
        deadline: float,
        raw: bool | None = None,
    ) -> None:
        super().__init__(
            path=engine.name,
            meta_template=INTERNLM2_META,
            max_new_tokens=params.max_new_tokens,
            top_p=params.top_p,
            temperature=params.temperature,
            repetition_penalty=params.repetition_penalty,
            stop_words=STOP_WORDS,
        )
        self.engine = engine
        self.loop = loop
        self.params = replace(params, stop=[*STOP_WORDS, *[s for s in params.stop if s not in STOP_WORDS]])
        self.cancel = cancel
        self.stop = stop  # set by the runner: cancel pressed or deadline reached
        self.deadline = deadline  # time.monotonic() value
        self.raw = engine.supports_raw if raw is None else raw
        self.tool_params = params  # tool calling: the server's parser reads the markers, so no stop words of ours
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
            return [self._complete(lambda cancel, p=p: self.engine.stream_raw(p, self.params, cancel)) for p in inputs]
        return self._complete(lambda cancel: self.engine.stream_raw(inputs, self.params, cancel))

    def chat(self, inputs: list[dict[str, Any]], **gen_params: Any) -> str:
        final = ""
        for _state, text, _ in self.stream_chat(inputs, **gen_params):
            final = text
        return final

    def stream_chat(
        self, inputs: list[dict[str, Any]], **gen_params: Any
    ) -> Iterator[tuple[ModelStatusCode, str, None]]:
        """Yield `(STREAM_ING, text so far, None)` as the model writes, then `(END, text, None)`."""
        self.calls += 1
        if self.raw:
            prompt = self.render(inputs)
            self.prompt_tokens += self.engine.count_tokens(prompt)

            def factory(cancel: asyncio.Event) -> AsyncIterator[str]:
                return self.engine.stream_raw(prompt, self.params, cancel)
        else:
            messages = self.to_messages(inputs)
            self.prompt_tokens += self.engine.count_message_tokens(messages)

            def factory(cancel: asyncio.Event) -> AsyncIterator[str]:
                return self.engine.stream_chat(messages, self.params, cancel)

        final = ""
        for text in self._stream(factory):
            final = text
            yield ModelStatusCode.STREAM_ING, text, None
        self.completion_tokens += self.engine.count_tokens(final) if final else 0
        yield ModelStatusCode.END, final, None

    def _complete(self, factory: Factory) -> str:
        final = ""
        for text in self._stream(factory):
            final = text
        return final

    def _items(self, factory: Factory) -> Iterator[Any]:
        """Run the engine's generator on the loop and yield what it yields.

        Ending a call early (a stop word seen here, the Stop button, the deadline) sets this call's own
        cancel event, the engine's documented way to stop: it returns, closing its stream (an HTTP
        connection, a llama.cpp thread) itself.  Only if it does not within `CLOSE_GRACE` seconds is the
        pump task cancelled.  Cancelling it outright made the openai client's pending read fail after the
        connection was closed under it: "Task exception was never retrieved ... APIConnectionError".
        """
        pieces: queue.Queue[Any] = queue.Queue()
        call_cancel: asyncio.Event | None = None

        async def pump() -> None:
            nonlocal call_cancel
            call_cancel = event = asyncio.Event()
            if self.cancel.is_set():
                event.set()
            relay = asyncio.ensure_future(self.cancel.wait())  # the job's Stop reaches this call too
            relay.add_done_callback(lambda f: f.cancelled() or event.set())
            stream = factory(event)
            try:
                async for piece in stream:
                    pieces.put(piece)
            except Exception as exc:
                pieces.put(exc)
            finally:
                relay.cancel()
                with contextlib.suppress(Exception):
                    await stream.aclose()  # type: ignore[attr-defined]
                pieces.put(_END)

        future = asyncio.run_coroutine_threadsafe(pump(), self.loop)
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
                yield item
        finally:
            self._close(future, lambda: call_cancel)

    def _stream(self, factory: Factory) -> Iterator[str]:
        """The engine's text pieces (`_items`), accumulated and cut at the first stop word (some servers do not
        apply multi-token stop strings themselves)."""
        text = ""
        for item in self._items(factory):
            text += item
            cut = min((i for i in (text.find(s) for s in STOP_WORDS) if i >= 0), default=-1)
            if cut >= 0:
                yield text[:cut]
                return
            yield text

    # ------------------------------------------------------------------ OpenAI tool calling
    def tool_chat(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]
    ) -> tuple[str, list[dict[str, str]]]:
        """One model call with OpenAI `tools` (`engine.stream_tool_chat`): the text it wrote and its tool calls,
        each `{"id", "name", "arguments"}` assembled from the streamed deltas (arguments still a JSON string,
        unparsed: the caller reports bad JSON to the model)."""
        self.calls += 1
        self.prompt_tokens += self.engine.count_tokens(json.dumps([messages, tools], ensure_ascii=False))
        stream_tool_chat = self.engine.stream_tool_chat  # type: ignore[attr-defined]

        def factory(cancel: asyncio.Event) -> AsyncIterator[Any]:
            return stream_tool_chat(messages, tools, self.tool_params, cancel)

        text = ""
        calls: dict[int, dict[str, str]] = {}
        for item in self._items(factory):
            if "content" in item:
                text += item["content"]
                continue
            delta = item["tool_call"]
            call = calls.setdefault(delta["index"], {"id": "", "name": "", "arguments": ""})
            call["id"] = call["id"] or delta.get("id") or ""
            call["name"] += delta.get("name") or ""
            call["arguments"] += delta.get("arguments") or ""
        self.completion_tokens += self.engine.count_tokens(text + "".join(c["arguments"] for c in calls.values()))
        return text, [calls[i] for i in sorted(calls)]

    def _close(self, future: concurrent.futures.Future[None], event: Callable[[], asyncio.Event | None]) -> None:
        """Stop the pump through the call's cancel event and wait for it to wind down (it closes the stream)."""
        if future.done():
            return

        def signal() -> None:
            ev = event()
            if ev is not None:
                ev.set()
            elif not future.done():
                future.cancel()  # not started yet: nothing is open

        try:
            self.loop.call_soon_threadsafe(signal)
        except RuntimeError:  # the loop is closed: nothing left to close
            return
        try:
            future.result(timeout=CLOSE_GRACE)
        except concurrent.futures.TimeoutError:
            future.cancel()
        except (concurrent.futures.CancelledError, Exception):  # cancelled or failed while closing: it is closed
            pass
