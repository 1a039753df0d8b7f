"""Reasoning models: the thinking is split from the answer in the worker, streamed as `thinking` events, and
never recorded in history.

Sources of the shapes used here:
* `<think>…</think>` before the answer: InternLM3 / Intern-S1 in thinking mode (their chat templates'
  `enable_thinking`), scripted through the test engine's `[[think:THOUGHT|ANSWER]]`.
* `delta.reasoning_content`: `lmdeploy serve api_server … --reasoning-parser intern-s1` (lmdeploy's docs,
  "Reasoning Outputs"; `DeltaMessage.reasoning_content` in lmdeploy/serve/openai/protocol.py, 0.18.0): the
  first chunk has `role` with `content: null`, thinking chunks have `content: null`, the answer chunks
  `reasoning_content: null`, and the chunk where the parser sees `</think>` may carry both.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from handlers.chat import ChatHandler
from handlers.history import HistoryStore
from handlers.overrides import ConfStore
from handlers.types import Request, Update
from models.engines.openai import OpenAIEngine
from models.protocol import Bus
from models.reasoning import ReasoningSplitter
from models.settings import Settings
from models.worker import Worker
from tests.local_http import serve

pytestmark = pytest.mark.timeout(60)


def split_stream(pieces: list[str]) -> tuple[str, str, bool]:
    s = ReasoningSplitter()
    got = {"thinking": "", "answer": ""}
    for piece in pieces:
        for kind, text in s.feed(piece):
            got[kind] += text
    for kind, text in s.finish():
        got[kind] += text
    assert (got["thinking"], got["answer"]) == (s.thinking, s.answer)
    return got["thinking"], got["answer"], s.unclosed


CASES = [  # output, thinking, answer, unclosed
    (
        "<think>The user greets me.</think>\n\nHello! How can I help?",
        "The user greets me.",
        "Hello! How can I help?",
        False,
    ),
    ("\n<think>a < b and </thin is not the end</think>ok", "a < b and </thin is not the end", "ok", False),
    ("<think>I keep thinking and never stop", "I keep thinking and never stop", "", True),
    ("<think>", "", "", True),
    ("No thinking here; I mention <think> tags later.", "", "No thinking here; I mention <think> tags later.", False),
    ("<thin", "", "<thin", False),  # a tag that never completes is text
    ("  plain", "", "  plain", False),
]


@pytest.mark.parametrize(("output", "thinking", "answer", "unclosed"), CASES)
def test_splitter_at_every_cut(output: str, thinking: str, answer: str, unclosed: bool) -> None:
    """Every way of cutting the output in two, three pieces, and one character a piece: the same split."""
    n = len(output)
    cuts = [[output]] + [[output[:i], output[i:]] for i in range(n + 1)]
    cuts += [[output[:i], output[i:j], output[j:]] for i in range(n + 1) for j in range(i, n + 1) if n < 60]
    cuts.append(list(output))
    for pieces in cuts:
        assert split_stream(pieces) == (thinking, answer, unclosed), pieces


def test_reasoning_content_then_answer() -> None:
    s = ReasoningSplitter()
    s.reasoning("The user shows")
    s.reasoning(" a square.")
    assert s.drain() == [("thinking", "The user shows a square.")]
    assert s.feed("\n\nA red") + s.feed(" square.") + s.finish() == [("answer", "A red"), ("answer", " square.")]
    assert not s.unclosed and s.answer == "A red square."


# ------------------------------------------------------------------ through Redis and the real worker


async def follow_all(chat: ChatHandler, text: str, conversation: str) -> list[Update]:
    reply = await chat.ask(Request(conversation=conversation, text=text))
    return [u async for u in chat.follow(reply)]


@pytest.fixture
async def chat(settings: Settings, bus: Bus, worker: Worker) -> AsyncIterator[tuple[ChatHandler, HistoryStore]]:
    store = HistoryStore(bus.redis, max_turns=settings.history_max_turns)
    yield ChatHandler(bus, store, ConfStore(bus.redis, settings), settings), store


async def test_think_tags_stream_apart_and_stay_out_of_history(chat: tuple[ChatHandler, HistoryStore]) -> None:
    handler, store = chat
    thought = "The user asks for two plus two. That is four; answer in one word."
    updates = await follow_all(handler, f"[[think:{thought}|Four.]]", "r:tags")
    thinking = [u for u in updates if u.kind == "thinking"]
    assert thinking and thinking[-1].data["thinking"] == thought
    assert all(u.text == "" for u in thinking)  # no answer text before the thinking ended
    texts = [u.text for u in updates if u.kind == "text"]
    assert texts and all("think" not in t for t in texts)
    done = updates[-1]
    assert done.kind == "done" and done.text == "Four." and done.data["thinking"] == thought
    assert not done.data.get("unclosed_thinking")
    await asyncio.sleep(0.2)  # the history write finishes after `done` is yielded
    turns = [(t.role, t.content) for t in await store.recent("r:tags")]
    assert turns[-1] == ("assistant", "Four.")
    assert not any("two plus two" in content or "think>" in content for role, content in turns if role == "assistant")


async def test_unclosed_think_gives_no_answer_and_says_so(chat: tuple[ChatHandler, HistoryStore]) -> None:
    handler, store = chat
    updates = await follow_all(handler, "[[think:Hmm, let me consider every prime below a million]]", "r:open")
    done = updates[-1]
    assert done.kind == "done" and done.text == "" and done.data["unclosed_thinking"] is True
    assert "every prime" in done.data["thinking"]
    await asyncio.sleep(0.2)
    answers = [t for t in await store.recent("r:open") if t.role == "assistant"]
    assert answers and all("prime" not in t.content for t in answers)


async def test_hidden_setting_sends_no_thinking_updates(settings: Settings, bus: Bus, worker: Worker) -> None:
    hidden = settings.model_copy(update={"reasoning_display": "hidden"})
    store = HistoryStore(bus.redis, max_turns=hidden.history_max_turns)
    handler = ChatHandler(bus, store, ConfStore(bus.redis, hidden), hidden)
    updates = await follow_all(handler, "[[think:secret plan|Done.]]", "r:hidden")
    assert not [u for u in updates if u.kind == "thinking"]
    assert updates[-1].text == "Done." and updates[-1].data["display"] == "hidden"


# ------------------------------------------------------------------ ENGINE=openai: lmdeploy's reasoning_content

LMDEPLOY_DELTAS = [  # as lmdeploy's api_server streams them with --reasoning-parser (see the module docstring)
    {"role": "assistant", "content": None, "reasoning_content": "The user wants"},
    {"content": None, "reasoning_content": " a capital city."},
    {"content": None, "reasoning_content": " Paris."},
    {"content": "\n\nParis", "reasoning_content": None},
    {"content": " is the capital of France."},
]


async def lmdeploy_server() -> tuple[web.AppRunner, int]:
    async def completions(request: web.Request) -> web.StreamResponse:
        await request.json()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for i, delta in enumerate(LMDEPLOY_DELTAS):
            chunk = {
                "id": "chatcmpl-1",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": "s1",
                "choices": [
                    {"index": 0, "delta": delta, "finish_reason": "stop" if i == len(LMDEPLOY_DELTAS) - 1 else None}
                ],
            }
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
            await asyncio.sleep(0.01)
        await response.write(b"data: [DONE]\n\n")
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", completions)
    return await serve(app)


async def test_openai_reasoning_content_through_the_worker(settings: Settings, bus: Bus, tmp_path: Path) -> None:
    runner, port = await lmdeploy_server()
    engine = OpenAIEngine(base_url=f"http://127.0.0.1:{port}/v1", chat_model="internlm/Intern-S1-mini")
    w = Worker(settings, bus, engine, worker_id="openai-worker")
    task = asyncio.create_task(w.run())
    try:
        store = HistoryStore(bus.redis, max_turns=settings.history_max_turns)
        handler = ChatHandler(bus, store, ConfStore(bus.redis, settings), settings)
        updates = await follow_all(handler, "What is the capital of France?", "r:openai")
        thinking = [u.data["thinking"] for u in updates if u.kind == "thinking"]
        assert thinking and thinking[-1] == "The user wants a capital city. Paris."
        done = updates[-1]
        assert done.kind == "done" and done.text == "Paris is the capital of France."
        await asyncio.sleep(0.2)
        turns = await store.recent("r:openai")
        assert turns[-1].content == "Paris is the capital of France."
        assert all("capital city" not in t.content for t in turns)
    finally:
        w.stop()
        await asyncio.wait_for(task, 30)
        await runner.cleanup()


async def test_engine_drops_reasoning_content_when_nobody_listens() -> None:
    """Outside a chat job (no sink), the engine yields the answer only, as before."""
    from models.engines.base import ChatMessage, GenParams

    runner, port = await lmdeploy_server()
    engine = OpenAIEngine(base_url=f"http://127.0.0.1:{port}/v1", chat_model="internlm/Intern-S1-mini")
    try:
        text = "".join([p async for p in engine.stream_chat([ChatMessage("user", "q")], GenParams(), asyncio.Event())])
        assert text == "\n\nParis is the capital of France."
    finally:
        await engine.close()
        await runner.cleanup()


# ------------------------------------------------------------------ the console


class Tty(io.StringIO):
    """stdout as a terminal (`isatty`), to see the ANSI dimming a person sees."""

    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("tty", [True, False])
async def test_console_prints_thinking_dimmed_on_a_terminal_only(settings: Settings, tty: bool) -> None:
    from bot.console import Console
    from bot.renderer import NO_ANSWER
    from bot.runtime import Runtime

    runtime = await Runtime.start(settings)
    out = Tty() if tty else io.StringIO()
    console = Console(runtime, f"think-{tty}", out=out)
    try:
        await console.handle_line("[[think:weighing the options|Option B.]]")
        text = out.getvalue()
        if tty:
            dimmed = re.findall("\x1b\\[2m(.*?)\x1b\\[0m", text, re.S)
            assert "".join(dimmed) == "weighing the options", repr(text)
            assert text.rstrip().endswith("Option B.")
        else:
            assert "\x1b[" not in text and text.index("weighing the options") < text.index("Option B.")
        await console.handle_line("[[think:no end in sight]]")
        assert NO_ANSWER in out.getvalue()
    finally:
        await runtime.close()
