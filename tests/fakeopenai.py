"""A local OpenAI-compatible server for tests (what `lmdeploy serve api_server` or vLLM would be).

It speaks the real wire protocol — JSON requests, `text/event-stream` responses with `data: {...}` chunks
and a final `data: [DONE]` — so the real `openai` client talks to it unchanged.  It records every request,
and for each `image_url` part it decodes the data URL and opens it with Pillow, so tests can check that an
image really travelled (its format and size), not merely that a field was present.

Scripting (attributes, set between requests):
* `reply`: the text to stream (or a callable `(request_json) -> str`); split into small chunks;
* `fail_status` / `fail_message`: answer with an OpenAI-style error body instead;
* `refuse_tools`: answer a chat request that carries `tools` with HTTP 400 and this message, as a server started
  without a tool parser does (vLLM: '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser
  to be set', `VLLM_NO_TOOL_PARSER`);
* `chunk_delay`: seconds between chunks; `hang_after`: stop sending after this many chunks and wait
  until the client disconnects (`disconnected` is set when it does); `drop_after`: cut the connection
  after this many chunks, as a crashing server would;
* `skip_special`: the special tokens a server like lmdeploy or vLLM drops from its output unless the request
  says `skip_special_tokens: false` (empty: keep everything); `apply_stop`: end the output before the first
  of the request's `stop` strings, which is not sent (what lmdeploy and vLLM do);
* `replay(turns)`: answer each request with the next `ReplayTurn`'s recorded text, verbatim, but only if the
  prompt contains what that turn `requires` (the real tool result of the turn before); a request that does
  not is answered with HTTP 409 and noted in `replay_errors`, so a test sees that the model "spoke" only
  after the tool really answered.
* tool calling: a `ReplayTurn` with `tool_calls` ((name, arguments JSON text), ...) streams them as chat deltas
  the way lmdeploy and vLLM do (lmdeploy `lmdeploy/serve/openai/tool_parser/internlm2_parser.py`
  @ 007255867d9c785c3cbf1494b37d3b97806f5cad, `chat_completions/serving.py` @ 1263d5cd889b7ad500e85b8eb20401327a4516ab):
  a first delta with `index`, `id`, `type: "function"` and `function.name` (no arguments), then deltas with
  argument fragments only, and a last chunk with `finish_reason: "tool_calls"`.  Requests' `tools` are checked
  as those servers check them (each a `{"type": "function", "function": {"name": ...}}`), and a `tool` message
  must answer a `tool_call_id` that an earlier assistant message called (HTTP 400 otherwise, as OpenAI answers).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import io
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from PIL import Image

from tests.local_http import serve


@dataclass
class SeenImage:
    format: str
    size: tuple[int, int]
    mode: str
    mime: str
    nbytes: int


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    images: list[SeenImage] = field(default_factory=list)


class ImageRejected(ValueError):
    pass


# InternLM2's special tokens (chat/chat_format.md); lmdeploy drops them from output by default.
INTERNLM2_SPECIAL = (
    "<|im_start|>",
    "<|im_end|>",
    "<|action_start|>",
    "<|action_end|>",
    "<|interpreter|>",
    "<|plugin|>",
)


@dataclass
class ReplayTurn:
    """One recorded model output, and what the prompt must contain before it may be given."""

    reply: str
    requires: tuple[str, ...] = ()
    tool_calls: tuple[tuple[str, str], ...] = ()  # (function name, arguments as the model wrote them)


def prompt_text(body: dict[str, Any]) -> str:
    """What the model was given: the raw prompt (completions) or the messages' text (chat)."""
    if isinstance(body.get("prompt"), str):
        return body["prompt"]
    parts = []
    for message in body.get("messages") or []:
        content = message.get("content")
        if isinstance(content, list):
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        parts.append(str(content))
    return "\n".join(parts)


def decode_image_url(url: str) -> SeenImage:
    """Check a `data:` URL the way a vision server would: base64 that Pillow can open."""
    if not url.startswith("data:") or ";base64," not in url:
        raise ImageRejected("image_url must be a base64 data URL")
    header, _, payload = url.partition(";base64,")
    try:
        raw = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ImageRejected("invalid base64 in image_url") from exc
    try:
        with Image.open(io.BytesIO(raw)) as img:
            img.load()
            return SeenImage(format=img.format or "", size=img.size, mode=img.mode, mime=header[5:], nbytes=len(raw))
    except Exception as exc:
        raise ImageRejected(f"cannot open image: {type(exc).__name__}") from exc


VLLM_NO_TOOL_PARSER = '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set'


class FakeOpenAI:
    def __init__(self, models: tuple[str, ...] = ("internlm2_5-7b-chat", "internlm-xcomposer2d5-7b")) -> None:
        self.models = list(models)
        self.reply: str | Callable[[dict[str, Any]], str] = "Hello from the fake server."
        self.fail_status: int | None = None
        self.fail_message = "something went wrong"
        self.refuse_tools: str | None = None
        self.chunk_delay = 0.0
        self.hang_after: int | None = None
        self.drop_after: int | None = None
        self.skip_special: tuple[str, ...] = ()
        self.apply_stop = False
        self.turns: list[ReplayTurn] | None = None
        self.replay_errors: list[str] = []
        self.requests: list[Recorded] = []
        self.disconnected = asyncio.Event()
        self.runner: web.AppRunner | None = None
        self.port = 0

    def replay(self, turns: list[ReplayTurn]) -> None:
        """Answer the next requests with these recorded turns, in order (see the module docstring)."""
        self.turns = list(turns)
        self.replay_errors = []

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def start(self) -> FakeOpenAI:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._completions)
        self.runner, self.port = await serve(app)
        return self

    async def stop(self) -> None:
        if self.runner:
            await self.runner.cleanup()

    # ------------------------------------------------------------------ handlers
    async def _models(self, _request: web.Request) -> web.Response:
        return web.json_response(
            {
                "object": "list",
                "data": [{"id": m, "object": "model", "created": 0, "owned_by": "fake"} for m in self.models],
            }
        )

    def _error(self, status: int, message: str) -> web.Response:
        return web.json_response(
            {"error": {"message": message, "type": "invalid_request_error", "code": status}}, status=status
        )

    async def _record(self, request: web.Request) -> Recorded | web.Response:
        try:
            body = await request.json()
        except ValueError:
            return self._error(400, "body is not JSON")
        rec = Recorded(request.path, dict(request.headers), body)
        self.requests.append(rec)
        if body.get("model") not in self.models:
            return self._error(404, f"The model `{body.get('model')}` does not exist.")
        if self.fail_status:
            return self._error(self.fail_status, self.fail_message)
        if self.refuse_tools and body.get("tools"):
            return self._error(400, self.refuse_tools)
        return rec

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        rec = await self._record(request)
        if isinstance(rec, web.Response):
            return rec
        messages = rec.body.get("messages")
        if not isinstance(messages, list) or not messages:
            return self._error(400, "messages must be a non-empty list")
        for message in messages:
            content = message.get("content")
            if isinstance(content, list):
                for part in content:
                    if part.get("type") == "image_url":
                        try:
                            rec.images.append(decode_image_url(part["image_url"]["url"]))
                        except (ImageRejected, KeyError, TypeError) as exc:
                            return self._error(400, f"bad image: {exc}")
                    elif part.get("type") != "text":
                        return self._error(400, f"unknown content part {part.get('type')!r}")
            elif not isinstance(content, str) and not (content is None and message.get("tool_calls")):
                return self._error(400, "content must be a string or a list of parts")
        problem = self._check_tools(rec.body)
        if problem:
            return self._error(400, problem)
        return await self._stream(request, rec, chat=True)

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        rec = await self._record(request)
        if isinstance(rec, web.Response):
            return rec
        if not isinstance(rec.body.get("prompt"), str):
            return self._error(400, "prompt must be a string")
        return await self._stream(request, rec, chat=False)

    @staticmethod
    def _check_tools(body: dict[str, Any]) -> str:
        """What a tool-calling server would reject in the request ('' if nothing)."""
        tools = body.get("tools")
        if tools is not None and not (
            isinstance(tools, list)
            and all(
                isinstance(t, dict)
                and t.get("type") == "function"
                and isinstance(t.get("function"), dict)
                and isinstance(t["function"].get("name"), str)
                for t in tools
            )
        ):
            return "tools must be a list of {type: function, function: {name, ...}}"
        called: set[str] = set()
        for message in body.get("messages") or []:
            for call in message.get("tool_calls") or []:
                if not isinstance(call, dict) or not call.get("id") or not isinstance(call.get("function"), dict):
                    return "tool_calls entries need an id and a function"
                if not isinstance(call["function"].get("arguments"), str):
                    return "function.arguments must be a string"
                called.add(call["id"])
            if message.get("role") == "tool" and message.get("tool_call_id") not in called:
                return f"tool message answers unknown tool_call_id {message.get('tool_call_id')!r}"
        return ""

    def _replayed(self, body: dict[str, Any]) -> ReplayTurn | web.Response:
        assert self.turns is not None
        if not self.turns:
            self.replay_errors.append("a request after the recorded run had ended")
            return self._error(409, "the recorded run has no more turns")
        prompt = prompt_text(body)
        missing = [r for r in self.turns[0].requires if r not in prompt]
        if missing:
            self.replay_errors.append(f"turn asked for before its input arrived: missing {missing!r}")
            return self._error(409, f"the prompt lacks {missing!r}")
        return self.turns.pop(0)

    def _as_served(self, text: str, body: dict[str, Any]) -> str:
        """The output as lmdeploy/vLLM would send it: cut at a stop string, special tokens dropped unless kept."""
        if self.apply_stop:
            stops = body.get("stop") or []
            stops = [stops] if isinstance(stops, str) else stops
            cut = min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=-1)
            text = text if cut < 0 else text[:cut]
        if self.skip_special and body.get("skip_special_tokens", True) is not False:
            for token in self.skip_special:
                text = text.replace(token, "")
        return text

    async def _stream(self, request: web.Request, rec: Recorded, *, chat: bool) -> web.StreamResponse:
        calls: tuple[tuple[str, str], ...] = ()
        if self.turns is not None:
            replayed = self._replayed(rec.body)
            if isinstance(replayed, web.Response):
                return replayed
            text, calls = replayed.reply, replayed.tool_calls
        else:
            text = self.reply(rec.body) if callable(self.reply) else self.reply
        text = self._as_served(text, rec.body)
        if not rec.body.get("stream"):
            return self._error(400, "the fake server only streams")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        created = int(time.time())
        pieces = [text[i : i + 5] for i in range(0, len(text), 5)]
        try:
            for count, piece in enumerate(pieces):
                if self.drop_after is not None and count >= self.drop_after:
                    assert request.transport is not None
                    request.transport.abort()  # the server dies mid-answer
                    return response
                if self.hang_after is not None and count >= self.hang_after:
                    await self._wait_for_disconnect(request)
                    return response
                if chat:
                    choice = {"index": 0, "delta": {"content": piece}, "finish_reason": None}
                    obj = "chat.completion.chunk"
                else:
                    choice = {"index": 0, "text": piece, "finish_reason": None}
                    obj = "text_completion"
                chunk = {
                    "id": "fake-1",
                    "object": obj,
                    "created": created,
                    "model": rec.body["model"],
                    "choices": [choice],
                }
                await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
                if self.chunk_delay:
                    await asyncio.sleep(self.chunk_delay)
            if chat and calls:
                for chunk in self._tool_call_chunks(calls, rec.body["model"], created):
                    await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
        except ConnectionResetError:  # the client went away mid-answer (closed its stream early): normal
            self.disconnected.set()
        except asyncio.CancelledError:
            self.disconnected.set()
            raise
        return response

    @staticmethod
    def _tool_call_chunks(calls: tuple[tuple[str, str], ...], model: str, created: int) -> list[dict[str, Any]]:
        """The calls as lmdeploy/vLLM stream them: id, type and name first, then argument fragments."""
        chunks = []

        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            return {
                "id": "fake-1",
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }

        for index, (name, arguments) in enumerate(calls):
            chunks.append(
                chunk(
                    {
                        "role": "assistant",
                        "tool_calls": [
                            {
                                "index": index,
                                "id": f"chatcmpl-tool-{uuid.uuid4().hex[:12]}",
                                "type": "function",
                                "function": {"name": name},
                            }
                        ],
                    }
                )
            )
            for i in range(0, len(arguments), 7):
                chunks.append(
                    chunk({"tool_calls": [{"index": index, "function": {"arguments": arguments[i : i + 7]}}]})
                )
        chunks.append(chunk({}, "tool_calls"))
        return chunks

    async def _wait_for_disconnect(self, request: web.Request) -> None:
        try:
            while request.transport is not None and not request.transport.is_closing():  # noqa: ASYNC110
                await asyncio.sleep(0.02)  # aiohttp offers no "client went away" event to wait on
        finally:
            self.disconnected.set()


@contextlib.contextmanager
def threaded(models: tuple[str, ...]) -> Iterator[FakeOpenAI]:
    """The server on its own event loop in a thread, for tests that block on a subprocess (the console), served
    the way lmdeploy serves InternLM2: special tokens skipped unless asked for, stop strings applied."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="fake-openai", daemon=True)
    thread.start()
    fake = asyncio.run_coroutine_threadsafe(FakeOpenAI(models=models).start(), loop).result(10)
    fake.skip_special, fake.apply_stop = INTERNLM2_SPECIAL, True
    try:
        yield fake
    finally:
        asyncio.run_coroutine_threadsafe(fake.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
