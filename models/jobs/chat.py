"""The `chat` job: stream a reply to a conversation.

Payload: `{"system": str, "messages": [{"role", "content", "images": [blob refs]}], "params": {...}}`.
Images are resolved from blobs here; a text-only engine refuses them with a clear message.

Every message of the payload (the user's words with their display-name prefix, image questions, past
assistant turns: all of the conversation history) and the per-server system prompt an admin typed are
data, so their control tokens are made inert here, where the prompt is assembled, with the engine's own
special tokens; only the chat template adds real ones.
"""

from __future__ import annotations

import re
import time
from typing import Any

from ..context import BadPayload, JobContext, JobError
from ..engines.base import ChatMessage, VisionUnsupported
from ..prompting import fit_messages
from ..reasoning import THINKING_SINK, ReasoningSplitter
from ..untrusted import inert

ROLES = {"user", "assistant", "system", "environment"}
MAX_MESSAGES = 400

NO_VISION = (
    "The configured model cannot see images. To use image features, run the bot with "
    "ENGINE=openai and VISION_MODEL set to a vision model (for example InternLM-XComposer served by "
    "`lmdeploy serve api_server`), or ENGINE=lmdeploy with LMDEPLOY_VISION_MODEL."
)


def parse_messages(raw: Any) -> list[dict[str, Any]]:
    """Validate the `messages` field; raise `BadPayload` (a `JobError`) with a clear message if it is malformed."""
    if not isinstance(raw, list) or not raw:
        raise BadPayload("the request has no messages")
    if len(raw) > MAX_MESSAGES:
        raise BadPayload("the request has too many messages")
    out = []
    for item in raw:
        if not isinstance(item, dict) or item.get("role") not in ROLES:
            raise BadPayload("the request has a malformed message")
        content = item.get("content", "")
        images = item.get("images") or []
        if not isinstance(content, str) or not isinstance(images, list):
            raise BadPayload("the request has a malformed message")
        out.append({"role": item["role"], "content": content, "images": [str(i) for i in images]})
    return out


CAPTION_PROMPT = (
    "Describe this image in detail: what it shows, notable objects, people and text, the setting, colours and mood."
)
CAPTION_PROMPT_MANY = "Describe these {count} images in detail, one after another, then say how they relate."
_SPEAKER_ONLY = re.compile(r"^\s*([^:\n]{1,100}:)?\s*$")  # "" or just the "name:" prefix of a shared channel


def caption_prompt(count: int) -> str:
    """What to ask when someone posts images without a question: a detailed caption."""
    return CAPTION_PROMPT if count <= 1 else CAPTION_PROMPT_MANY.format(count=count)


IMAGE_GONE = "[an image was shared here, but it has expired: say you can no longer see it if asked about it]"
IMAGE_UNSEEN = "[an image was shared here, which this text-only model cannot see]"


async def build_messages(ctx: JobContext, raw: Any) -> list[ChatMessage]:
    """Parsed messages with image blobs loaded.

    Only the image the conversation is about decides failure: the newest image-bearing message, when it is
    the current message or the user message just before it (a follow-up such as "and what colour is the
    car?").  Its images must load (else the friendly "expired" `JobError`) and need a vision engine (else
    `VisionUnsupported`).  Images of older turns that expired, or that a text-only engine cannot see, are
    replaced by a short note, so one old picture cannot break a whole conversation.  Loaded images get
    their TTL refreshed: they are still referenced.
    """
    parsed = parse_messages(raw)
    with_images = [i for i, item in enumerate(parsed) if item["images"]]
    focus = -1
    if with_images and sum(1 for item in parsed[with_images[-1] + 1 :] if item["role"] == "user") <= 1:
        focus = with_images[-1]  # the image message, or the one the current message follows up on
    messages: list[ChatMessage] = []
    special = ctx.engine.special_tokens
    for index, item in enumerate(parsed):
        newest = index == focus
        images = []
        content = inert(item["content"], special)  # before the bot's own notes are added
        if item["images"]:
            if not ctx.engine.supports_vision:
                if newest:
                    raise VisionUnsupported(NO_VISION)
                content = f"{content}\n{IMAGE_UNSEEN}"
            else:
                for ref in item["images"]:
                    try:
                        images.append(await ctx.load_image(ref))
                    except JobError:
                        if newest:
                            raise
                        content = f"{content}\n{IMAGE_GONE}"
                        continue
                    await ctx.bus.touch_blob(ref)
                if newest and images and _SPEAKER_ONLY.match(content):  # images without a question
                    content = f"{content} {caption_prompt(len(images))}".strip()
        messages.append(ChatMessage(item["role"], content, images))
    return messages


THINKING_EVERY = 0.3  # seconds between `thinking` events: the front ends redraw about once a second anyway
THINKING_KEPT = 20_000  # characters of thinking carried by the `done` event (for the final display)


async def run_chat(ctx: JobContext) -> None:
    """Stream the answer as `delta`s and a reasoning model's thinking as `thinking` events (never as
    answer text); `done` carries the answer alone, which is what history records."""
    payload = ctx.job.payload
    params = ctx.params()
    turns = await build_messages(ctx, payload.get("messages"))
    system = payload.get("system")
    system = inert(system if isinstance(system, str) else ctx.settings.system_prompt, ctx.engine.special_tokens)
    prompt = fit_messages(ctx.engine, system, turns, params.max_new_tokens)
    prompt_tokens = ctx.engine.count_message_tokens(prompt)
    splitter = ReasoningSplitter(opened=ctx.engine.opens_thinking(prompt))  # a template that opens <think>
    thought: list[str] = []  # thinking not sent yet
    sent_at = float("-inf")

    async def route(parts: list[tuple[str, str]], *, flush: bool = False) -> None:
        nonlocal sent_at
        for kind, text in parts:
            if kind == "thinking":
                thought.append(text)
            else:
                flush = True  # the answer began: the thinking before it goes first
                if thought:
                    await send_thinking()
                await ctx.delta(text)
        if thought and (flush or time.monotonic() - sent_at >= THINKING_EVERY):
            await send_thinking()

    async def send_thinking() -> None:
        nonlocal sent_at
        text = "".join(thought)
        thought.clear()
        sent_at = time.monotonic()
        await ctx.emit("thinking", {"text": text})

    sink = THINKING_SINK.set(splitter.reasoning)
    try:
        async for piece in ctx.engine.stream_chat(prompt, params, ctx.cancel):
            await route(splitter.drain() + splitter.feed(piece))
            if ctx.cancel.is_set():
                break
    finally:
        THINKING_SINK.reset(sink)
    await route(splitter.drain() + splitter.finish(), flush=True)
    text = splitter.answer
    data: dict[str, Any] = {}
    if splitter.thinking:
        data["thinking"] = splitter.thinking[-THINKING_KEPT:]
        data["thinking_chars"] = len(splitter.thinking)
    if splitter.unclosed:
        data["unclosed_thinking"] = True
    produced = splitter.thinking + text
    await ctx.done(
        text,
        prompt_tokens=prompt_tokens,
        completion_tokens=ctx.engine.count_tokens(produced) if produced else 0,
        stopped=ctx.cancel.is_set(),
        extra=data,
    )
