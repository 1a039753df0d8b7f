"""A local OpenAI-compatible server for tests (what `lmdeploy serve api_server` or vLLM would be).

It speaks the real wire protocol — JSON requests, `text/event-stream` responses with `data: {...}` chunks
and a final `data: [DONE]` — so the real `openai` client talks to it unchanged.  It records every request,
and for each `image_url` part it decodes the data URL and opens it with Pillow, so tests can check that an
image really travelled (its format and size), not merely that a field was present.

Scripting (attributes, set between requests):
* `reply`: the text to stream (or a callable `(request_json) -> str`); split into small chunks;
* `fail_status` / `fail_message`: answer with an OpenAI-style error body instead;
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
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import json
import time
from collections.abc import Callable
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
INTERNLM2_SPECIAL = ("<|im_start|>", "<|im_end|>", "<|action_start|>", "<|action_end|>", "<|interpreter|>",
                     "<|plugin|>")


@dataclass
class ReplayTurn:
    """One recorded model output, and what the prompt must contain before it may be given."""

    reply: str
    requires: tuple[str, ...] = ()


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
            return SeenImage(format=img.format or "", size=img.size, mode=img.mode, mime=header[5:],
                             nbytes=len(raw))
    except Exception as exc:
        raise ImageRejected(f"cannot open image: {type(exc).__name__}") from exc


class FakeOpenAI:
    def __init__(self, models: tuple[str, ...] = ("internlm2_5-7b-chat", "internlm-xcomposer2d5-7b")) -> None:
        self.models = list(models)
        self.reply: str | Callable[[dict[str, Any]], str] = "Hello from the fake server."
        self.fail_status: int | None = None
        self.fail_message = "something went wrong"
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
        return web.json_response({"object": "list", "data": [
            {"id": m, "object": "model", "created": 0, "owned_by": "fake"} for m in self.models]})

    def _error(self, status: int, message: str) -> web.Response:
        return web.json_response({"error": {"message": message, "type": "invalid_request_error",
                                            "code": status}}, status=status)

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
            elif not isinstance(content, str):
                return self._error(400, "content must be a string or a list of parts")
        return await self._stream(request, rec, chat=True)

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        rec = await self._record(request)
        if isinstance(rec, web.Response):
            return rec
        if not isinstance(rec.body.get("prompt"), str):
            return self._error(400, "prompt must be a string")
        return await self._stream(request, rec, chat=False)

    def _replayed(self, body: dict[str, Any]) -> str | web.Response:
        assert self.turns is not None
        if not self.turns:
            self.replay_errors.append("a request after the recorded run had ended")
            return self._error(409, "the recorded run has no more turns")
        prompt = prompt_text(body)
        missing = [r for r in self.turns[0].requires if r not in prompt]
        if missing:
            self.replay_errors.append(f"turn asked for before its input arrived: missing {missing!r}")
            return self._error(409, f"the prompt lacks {missing!r}")
        return self.turns.pop(0).reply

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
        if self.turns is not None:
            replayed = self._replayed(rec.body)
            if isinstance(replayed, web.Response):
                return replayed
            text = replayed
        else:
            text = self.reply(rec.body) if callable(self.reply) else self.reply
        text = self._as_served(text, rec.body)
        if not rec.body.get("stream"):
            return self._error(400, "the fake server only streams")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        created = int(time.time())
        pieces = [text[i:i + 5] for i in range(0, len(text), 5)]
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
                chunk = {"id": "fake-1", "object": obj, "created": created, "model": rec.body["model"],
                         "choices": [choice]}
                await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
                if self.chunk_delay:
                    await asyncio.sleep(self.chunk_delay)
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
        except ConnectionResetError:  # the client went away mid-answer (closed its stream early): normal
            self.disconnected.set()
        except asyncio.CancelledError:
            self.disconnected.set()
            raise
        return response

    async def _wait_for_disconnect(self, request: web.Request) -> None:
        try:
            while request.transport is not None and not request.transport.is_closing():  # noqa: ASYNC110
                await asyncio.sleep(0.02)  # aiohttp offers no "client went away" event to wait on
        finally:
            self.disconnected.set()
