"""`ENGINE=openai`: any OpenAI-compatible server — `lmdeploy serve api_server`, vLLM, llama.cpp's server, Ollama.

Why a thin client rather than a local model: the GPU (and the vision model: InternVL3.5 or Intern-S1 behind
current `lmdeploy serve api_server`, InternLM-XComposer behind lmdeploy 0.14) can live on another machine,
and one server can batch every worker's requests.  What it does:

* streams chat completions with the job's sampling parameters (temperature, top_p, max_tokens, stop;
  `repetition_penalty` goes in the request body as lmdeploy and vLLM accept it);
* messages with images go to `VISION_MODEL` (on `VISION_BASE_URL` when set, else the same server) as
  `image_url` content parts holding base64 `data:` URLs — the server never fetches anything;
* `stream_raw` uses the plain completions endpoint (the agent renders its own prompt);
* cancelling closes the HTTP stream at once, which makes lmdeploy/vLLM stop generating;
* every server failure becomes an `EngineError` whose message is safe to show (no key, no URL userinfo).

There is no tokenizer here, so `count_tokens` is an estimate (see `estimate_tokens`); it only decides how
much history to send, and `OPENAI_CONTEXT_WINDOW` should leave some headroom for that reason.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import math
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import openai

from ..reasoning import THINKING_SINK
from ..settings import Settings
from .base import ChatMessage, Engine, EngineError, GenParams, ToolsRefused, VisionUnsupported

log = logging.getLogger(__name__)

NO_VISION_MODEL = (
    "No vision model is configured for the OpenAI-compatible engine; set VISION_MODEL "
    "(and VISION_BASE_URL if it runs on a second server)."
)


IMAGE_TOKENS = 2000  # context an image takes on the vision server (an over-estimate is the safe side)


def estimate_tokens(text: str) -> int:
    """Roughly the tokens `text` takes: one per non-ASCII character (CJK is ~1 token per character in
    InternLM's tokenizer), one per 3 ASCII characters (English averages 3.5–4).  It errs on the high side
    so that history fitted with it does not overflow the server's context window."""
    if not text:
        return 0
    ascii_chars = sum(1 for ch in text if ord(ch) < 128)
    return max(1, (len(text) - ascii_chars) + math.ceil(ascii_chars / 3))


def public_url(url: str) -> str:
    """`scheme://host:port` of a URL: what may appear in a user-facing message (no userinfo, no path)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "?"
        return f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")
    except ValueError:
        return "the configured server"


def data_url(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


class OpenAIEngine(Engine):
    """Streaming client for an OpenAI-compatible chat server, with an optional second (vision) server."""

    name = "openai"
    supports_raw = True
    supports_tools = True  # `stream_tool_chat`: the agent's AGENT_PROTOCOL=tools
    tools_refused = ""  # why the server refused `tools` once (models/agent/protocol.py then picks internlm2)

    def __init__(
        self,
        base_url: str,
        api_key: str = "",
        chat_model: str = "",
        vision_model: str = "",
        vision_base_url: str = "",
        context_window: int = 32768,
        timeout: float = 120.0,
    ) -> None:
        if not base_url:
            raise ValueError("ENGINE=openai needs OPENAI_BASE_URL (for example http://localhost:23333/v1)")
        self.base_url = base_url
        self.vision_base_url = vision_base_url or base_url
        self.chat_model = chat_model
        self.vision_model = vision_model
        self.context_window = context_window
        self.supports_vision = bool(vision_model)
        self._secret = api_key
        key = api_key or "EMPTY"  # local servers ignore it, the client insists on one
        # Retries are ours to decide (the job queue retries whole jobs); a retried stream would duplicate text.
        self.client = openai.AsyncOpenAI(base_url=base_url, api_key=key, timeout=timeout, max_retries=0)
        self.vision_client = (
            openai.AsyncOpenAI(base_url=vision_base_url, api_key=key, timeout=timeout, max_retries=0)
            if vision_base_url and vision_base_url != base_url
            else self.client
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> OpenAIEngine:
        return cls(
            base_url=settings.openai_base_url,
            api_key=settings.openai_api_key.get_secret_value(),
            chat_model=settings.chat_model,
            vision_model=settings.vision_model,
            vision_base_url=settings.vision_base_url,
            context_window=settings.openai_context_window,
            timeout=settings.openai_timeout,
        )

    def served_model(self, vision: bool) -> str:
        """The served model name a request goes to (`/article` picks XComposer's or chat prompts by it)."""
        return self.vision_model if vision and self.vision_model else self.chat_model

    def describe(self) -> str:
        vision = f", vision {self.vision_model}" if self.vision_model else ""
        return f"openai ({self.chat_model}{vision} at {public_url(self.base_url)})"

    async def start(self) -> None:
        """Check, without failing, that the server answers and knows the models (a log line helps operators)."""
        try:
            models = await asyncio.wait_for(self.client.models.list(), timeout=5)
            names = {m.id for m in models.data}
            for wanted in (self.chat_model, self.vision_model if self.vision_client is self.client else ""):
                if wanted and names and wanted not in names:
                    log.warning(
                        "model %r is not served at %s (it has: %s)",
                        wanted,
                        public_url(self.base_url),
                        ", ".join(sorted(names))[:300],
                    )
        except Exception as exc:
            log.warning(
                "OpenAI-compatible server at %s not reachable yet (%s)", public_url(self.base_url), type(exc).__name__
            )

    async def close(self) -> None:
        await self.client.close()
        if self.vision_client is not self.client:
            await self.vision_client.close()

    def count_tokens(self, text: str) -> int:
        return estimate_tokens(text)

    def count_message_tokens(self, messages: list[ChatMessage]) -> int:
        """Like the base estimate, but an image costs `IMAGE_TOKENS`: XComposer 2.5 cuts a 1024-pixel image
        into several 560-pixel tiles of ~400 tokens each, far more than the generic 256."""
        return sum(self.count_tokens(m.content) + 4 + IMAGE_TOKENS * len(m.images) for m in messages) + 2

    # ------------------------------------------------------------------ requests
    @staticmethod
    def to_openai_messages(messages: list[ChatMessage]) -> list[dict[str, Any]]:
        """Our messages in the OpenAI wire format.  `environment` (agent tool output) has no OpenAI role,
        so it travels as a user message marked as such."""
        out: list[dict[str, Any]] = []
        for m in messages:
            role = m.role if m.role in ("system", "user", "assistant") else "user"
            text = m.content if m.role != "environment" else f"[environment]\n{m.content}"
            if m.images:
                parts: list[dict[str, Any]] = [{"type": "text", "text": text}]
                parts += [{"type": "image_url", "image_url": {"url": data_url(img.data, img.mime)}} for img in m.images]
                out.append({"role": role, "content": parts})
            else:
                out.append({"role": role, "content": text})
        return out

    @staticmethod
    def sampling(params: GenParams) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "temperature": params.temperature,
            "top_p": params.top_p,
            "max_tokens": params.max_new_tokens,
        }
        if params.stop:
            kwargs["stop"] = params.stop[:4]  # the OpenAI API accepts at most 4
        if params.repetition_penalty != 1.0:  # not an OpenAI field; lmdeploy, vLLM and others read it
            kwargs["extra_body"] = {"repetition_penalty": params.repetition_penalty}
        return kwargs

    async def stream_chat(
        self, messages: list[ChatMessage], params: GenParams, cancel: asyncio.Event
    ) -> AsyncIterator[str]:
        vision = any(m.images for m in messages)
        if vision and not self.vision_model:
            raise VisionUnsupported(NO_VISION_MODEL)
        client = self.vision_client if vision else self.client
        model = self.vision_model if vision else self.chat_model
        url = self.vision_base_url if vision else self.base_url
        create = client.chat.completions.create(
            model=model, messages=self.to_openai_messages(messages), stream=True, **self.sampling(params)
        )
        async for chunk in self._stream(create, cancel, url, model):
            delta = chunk.choices[0].delta if chunk.choices else None
            # lmdeploy's --reasoning-parser streams thinking as `reasoning_content` (models/reasoning.py)
            thought = getattr(delta, "reasoning_content", None)  # an extra field: openai's models keep those
            if isinstance(thought, str) and thought and (sink := THINKING_SINK.get()) is not None:
                sink(thought)
                yield ""  # the chat runner sees the thinking now, not with the next piece of the answer
            if delta is not None and delta.content:
                yield delta.content

    async def stream_tool_chat(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]], params: GenParams, cancel: asyncio.Event
    ) -> AsyncIterator[dict[str, Any]]:
        """The agent over OpenAI tool calling: `messages` already in the wire format (`tool` role results with
        their `tool_call_id`), `tools` as function declarations.  Yields `{"content": text}` and
        `{"tool_call": {"index", "id", "name", "arguments"}}` deltas as the server streams them (vLLM and
        lmdeploy send the id and name first, then argument fragments; the caller joins them by index)."""
        extra: dict[str, Any] = {"tools": tools} if tools else {}  # an empty list is an error on some servers
        create = self.client.chat.completions.create(
            model=self.chat_model, messages=messages, stream=True, **extra, **self.sampling(params)
        )
        async for chunk in self._stream(create, cancel, self.base_url, self.chat_model, tools=bool(tools)):
            delta = chunk.choices[0].delta if chunk.choices else None
            if delta is None:
                continue
            if delta.content:
                yield {"content": delta.content}
            for call in delta.tool_calls or []:
                function = call.function
                yield {
                    "tool_call": {
                        "index": call.index or 0,
                        "id": call.id or "",
                        "name": (function.name if function else "") or "",
                        "arguments": (function.arguments if function else "") or "",
                    }
                }

    async def stream_raw(self, prompt: str, params: GenParams, cancel: asyncio.Event) -> AsyncIterator[str]:
        """Raw completions keep special tokens: the agent's InternLM2 tool markers (`<|action_start|>`…) are
        special tokens, and lmdeploy and vLLM strip them unless told not to."""
        kwargs = self.sampling(params)
        kwargs["extra_body"] = {**kwargs.get("extra_body", {}), "skip_special_tokens": False}
        create = self.client.completions.create(model=self.chat_model, prompt=prompt, stream=True, **kwargs)
        async for chunk in self._stream(create, cancel, self.base_url, self.chat_model):
            if chunk.choices and chunk.choices[0].text:
                yield chunk.choices[0].text

    async def _stream(
        self, create: Any, cancel: asyncio.Event, url: str, model: str, tools: bool = False
    ) -> AsyncIterator[Any]:
        """Open the stream and yield its chunks; stop as soon as `cancel` is set, closing the connection
        (waiting for the next chunk is raced against the cancel event, so a stalled server cannot delay it)."""
        stream = None
        received = False
        try:
            stream = await self._race(create, cancel)
            if stream is None:
                return
            iterator = stream.__aiter__()
            while not cancel.is_set():
                try:
                    chunk = await self._race(iterator.__anext__(), cancel)
                except StopAsyncIteration:
                    return
                if chunk is None:
                    return
                received = True
                yield chunk
        except openai.APIConnectionError as exc:
            if received and not isinstance(exc, openai.APITimeoutError):
                raise EngineError(
                    "The connection to the model server broke off in the middle of the answer. Please try again."
                ) from None
            raise EngineError(self._user_message(exc, url, model)) from None
        except openai.APIError as exc:
            if tools and isinstance(exc, openai.BadRequestError) and "tool" in _detail(exc).lower():
                raise ToolsRefused(self._user_message(exc, url, model)) from None
            raise EngineError(self._user_message(exc, url, model)) from None
        finally:
            if stream is not None:
                with contextlib.suppress(Exception):
                    await stream.close()

    @staticmethod
    async def _race(awaitable: Any, cancel: asyncio.Event) -> Any:
        """The awaitable's result, or None if `cancel` is set first (the awaitable is then cancelled)."""
        if cancel.is_set():
            if asyncio.iscoroutine(awaitable):
                awaitable.close()
            return None
        task = asyncio.ensure_future(awaitable)
        waiter = asyncio.ensure_future(cancel.wait())
        try:
            await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            # Our caller was cancelled: the pending read must not outlive it.  Left running, it fails once
            # the stream is closed below it and asyncio logs "Task exception was never retrieved".
            await _reap(task)
            raise
        finally:
            waiter.cancel()
        if task.done():
            return task.result()
        await _reap(task)
        return None

    def _user_message(self, exc: openai.APIError, url: str, model: str) -> str:
        """A short explanation of a server failure, safe for a chat channel."""
        where = public_url(url)
        if isinstance(exc, openai.APITimeoutError):
            text = f"The model server at {where} did not answer in time. Please try again."
        elif isinstance(exc, openai.APIConnectionError):
            text = f"I can't reach the model server at {where} right now. Please try again later."
        elif isinstance(exc, openai.APIStatusError):
            status = exc.status_code
            if status in (401, 403):
                text = f"The model server at {where} refused the API key (HTTP {status}); check OPENAI_API_KEY."
            elif status == 404:
                text = f"The model server at {where} does not serve the model {model!r} (HTTP 404)."
            elif status == 429:
                text = "The model server is busy (HTTP 429). Please try again in a moment."
            else:
                detail = _detail(exc)
                text = f"The model server returned an error (HTTP {status})" + (f": {detail}" if detail else ".")
        else:
            text = "The model server sent something I could not understand. Please try again."
        if self._secret and len(self._secret) >= 4:
            text = text.replace(self._secret, "***")
        return text


async def _reap(task: asyncio.Future[Any]) -> None:
    """Cancel `task` and wait for it, retrieving whatever it ended with (a cancelled read of a stream that
    is being closed may end with a connection error: expected, and not worth a log line)."""
    task.cancel()
    with contextlib.suppress(BaseException):
        await task
    if task.done() and not task.cancelled():
        task.exception()


def _detail(exc: openai.APIStatusError) -> str:
    """The server's own error message, shortened (it often says what was wrong with the request)."""
    body = exc.body
    message = ""
    if isinstance(body, dict):
        inner = body.get("error", body)
        message = inner.get("message", "") if isinstance(inner, dict) else str(inner)
        message = message or str(body.get("message", "") or "")
    elif isinstance(body, str):
        message = body
    message = " ".join(str(message).split())
    return message[:200] + ("…" if len(message) > 200 else "")
