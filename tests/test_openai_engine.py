"""The `openai` engine against a local OpenAI-compatible server speaking the real SSE protocol."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import io
import logging
import time
from collections.abc import AsyncIterator

import pytest
from PIL import Image

from models.engines.base import ChatMessage, EngineError, GenParams, ImageInput, VisionUnsupported
from models.engines.openai import OpenAIEngine, estimate_tokens
from models.settings import Settings
from tests.fakeopenai import FakeOpenAI

SECRET = "sk-test-secret-0123456789"


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    server = await FakeOpenAI().start()
    yield server
    await server.stop()


def make_engine(fake: FakeOpenAI, **overrides: object) -> OpenAIEngine:
    values: dict[str, object] = {
        "engine": "openai",
        "openai_base_url": fake.base_url,
        "openai_api_key": SECRET,
        "chat_model": "internlm2_5-7b-chat",
        "vision_model": "internlm-xcomposer2d5-7b",
    }
    values.update(overrides)
    return OpenAIEngine.from_settings(Settings(_env_file=None, **values))  # type: ignore[arg-type]


async def collect(stream: AsyncIterator[str]) -> str:
    return "".join([piece async for piece in stream])


def png(size: tuple[int, int] = (64, 48), fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buf, fmt)
    return buf.getvalue()


async def test_streams_text_with_params(fake: FakeOpenAI) -> None:
    engine = make_engine(fake)
    fake.reply = "The quick brown fox jumps."
    params = GenParams(temperature=0.3, top_p=0.7, max_new_tokens=77, repetition_penalty=1.05, stop=["<eoa>"])
    pieces = [
        p
        async for p in engine.stream_chat(
            [ChatMessage("system", "sys"), ChatMessage("user", "hi")], params, asyncio.Event()
        )
    ]
    assert len(pieces) > 1  # really streamed
    assert "".join(pieces) == "The quick brown fox jumps."
    body = fake.requests[-1].body
    assert body["model"] == "internlm2_5-7b-chat" and body["stream"] is True
    assert body["temperature"] == 0.3 and body["top_p"] == 0.7 and body["max_tokens"] == 77
    assert body["stop"] == ["<eoa>"] and body["repetition_penalty"] == 1.05
    assert body["messages"] == [{"role": "system", "content": "sys"}, {"role": "user", "content": "hi"}]
    assert fake.requests[-1].headers["Authorization"] == f"Bearer {SECRET}"
    await engine.close()


async def test_vision_request_carries_the_image(fake: FakeOpenAI) -> None:
    engine = make_engine(fake)
    assert engine.supports_vision
    jpeg = png((120, 90), "JPEG")
    messages = [ChatMessage("user", "what is this?", [ImageInput(jpeg, "image/jpeg"), ImageInput(png(), "image/png")])]
    await collect(engine.stream_chat(messages, GenParams(), asyncio.Event()))
    rec = fake.requests[-1]
    assert rec.body["model"] == "internlm-xcomposer2d5-7b"
    assert [(i.format, i.size, i.mime) for i in rec.images] == [
        ("JPEG", (120, 90), "image/jpeg"),
        ("PNG", (64, 48), "image/png"),
    ]
    parts = rec.body["messages"][0]["content"]
    assert parts[0] == {"type": "text", "text": "what is this?"}
    await engine.close()


async def test_vision_can_use_a_second_server(fake: FakeOpenAI) -> None:
    second = await FakeOpenAI(models=("xcomposer",)).start()
    try:
        engine = make_engine(fake, vision_base_url=second.base_url, vision_model="xcomposer")
        await collect(engine.stream_chat([ChatMessage("user", "hi")], GenParams(), asyncio.Event()))
        await collect(
            engine.stream_chat([ChatMessage("user", "look", [ImageInput(png())])], GenParams(), asyncio.Event())
        )
        assert len(fake.requests) == 1 and len(second.requests) == 1
        assert second.requests[0].images[0].size == (64, 48)
        await engine.close()
    finally:
        await second.stop()


async def test_no_vision_model_is_refused_clearly(fake: FakeOpenAI) -> None:
    engine = make_engine(fake, vision_model="")
    assert not engine.supports_vision
    with pytest.raises(VisionUnsupported, match="VISION_MODEL"):
        await collect(engine.stream_chat([ChatMessage("user", "x", [ImageInput(png())])], GenParams(), asyncio.Event()))
    assert not fake.requests
    await engine.close()


async def test_raw_completion(fake: FakeOpenAI) -> None:
    engine = make_engine(fake)
    fake.reply = "raw answer"
    assert (
        await collect(engine.stream_raw("<|im_start|>user\nhi", GenParams(max_new_tokens=9), asyncio.Event()))
        == "raw answer"
    )
    rec = fake.requests[-1]
    assert rec.path == "/v1/completions" and rec.body["prompt"].startswith("<|im_start|>")
    assert rec.body["max_tokens"] == 9
    assert rec.body["skip_special_tokens"] is False  # lmdeploy/vLLM keep the agent's tool markers
    await engine.close()


async def test_raw_completion_keeps_special_tokens_behind_a_stripping_server(fake: FakeOpenAI) -> None:
    """lmdeploy and vLLM drop special tokens from their output unless the request says not to; raw completions
    say so (chat completions do not: a chat answer needs no markers)."""
    from tests.fakeopenai import INTERNLM2_SPECIAL

    engine = make_engine(fake)
    fake.skip_special = INTERNLM2_SPECIAL
    fake.reply = "Let me run it.<|action_start|><|interpreter|>\n```python\nprint(1)\n```"
    raw = await collect(engine.stream_raw("<|im_start|>user\nhi<|im_end|>\n", GenParams(), asyncio.Event()))
    assert raw == fake.reply
    chat = await collect(engine.stream_chat([ChatMessage("user", "hi")], GenParams(), asyncio.Event()))
    assert chat == "Let me run it.\n```python\nprint(1)\n```"
    await engine.close()


@pytest.mark.parametrize(
    ("status", "expected"), [(401, "OPENAI_API_KEY"), (500, "HTTP 500"), (429, "busy"), (400, "HTTP 400")]
)
async def test_errors_become_safe_engine_errors(fake: FakeOpenAI, status: int, expected: str) -> None:
    engine = make_engine(fake)
    fake.fail_status = status
    fake.fail_message = f"bad things (key was {SECRET})"
    with pytest.raises(EngineError) as info:
        await collect(engine.stream_chat([ChatMessage("user", "hi")], GenParams(), asyncio.Event()))
    assert expected in str(info.value)
    assert SECRET not in str(info.value)
    await engine.close()


async def test_unknown_model_and_unreachable_server(fake: FakeOpenAI) -> None:
    engine = make_engine(fake, chat_model="nope")
    with pytest.raises(EngineError, match="nope"):
        await collect(engine.stream_chat([ChatMessage("user", "hi")], GenParams(), asyncio.Event()))
    await engine.close()
    port = fake.port
    await fake.stop()
    engine = make_engine(fake, openai_base_url=f"http://user:{SECRET}@127.0.0.1:{port}/v1")
    with pytest.raises(EngineError) as info:
        await collect(engine.stream_chat([ChatMessage("user", "hi")], GenParams(), asyncio.Event()))
    assert "can't reach" in str(info.value) and SECRET not in str(info.value) and "user" not in str(info.value)
    await engine.close()


async def test_cancel_closes_the_stream_promptly(fake: FakeOpenAI) -> None:
    engine = make_engine(fake)
    fake.reply = "x" * 200
    fake.hang_after = 2  # the server stalls mid-answer, as a slow GPU would
    cancel = asyncio.Event()
    pieces: list[str] = []

    async def consume() -> None:
        async for piece in engine.stream_chat([ChatMessage("user", "hi")], GenParams(), cancel):
            pieces.append(piece)

    task = asyncio.create_task(consume())
    for _ in range(200):
        if len(pieces) >= 2:
            break
        await asyncio.sleep(0.02)
    started = time.monotonic()
    cancel.set()
    await asyncio.wait_for(task, 5)
    assert time.monotonic() - started < 2.0
    await asyncio.wait_for(fake.disconnected.wait(), 5)  # the server saw the connection close
    assert "".join(pieces) == "x" * 10
    await engine.close()


async def test_token_estimate(fake: FakeOpenAI) -> None:
    engine = make_engine(fake)
    text_only = engine.count_message_tokens([ChatMessage("user", "abc" * 10)])
    with_image = engine.count_message_tokens([ChatMessage("user", "abc" * 10, [ImageInput(b"")])])
    assert with_image - text_only >= 1000  # images are budgeted generously when fitting history
    assert estimate_tokens("") == 0
    assert estimate_tokens("abc" * 10) == 10
    assert estimate_tokens("你好世界") == 4  # CJK: about one token per character
    assert estimate_tokens("a") == 1


def test_needs_a_base_url() -> None:
    with pytest.raises(ValueError, match="OPENAI_BASE_URL"):
        OpenAIEngine.from_settings(Settings(_env_file=None, engine="openai"))


async def test_connection_lost_mid_answer(fake: FakeOpenAI) -> None:
    engine = make_engine(fake)
    fake.reply = "y" * 100
    fake.drop_after = 3
    pieces: list[str] = []
    with pytest.raises(EngineError, match="broke off in the middle"):
        async for piece in engine.stream_chat([ChatMessage("user", "hi")], GenParams(), asyncio.Event()):
            pieces.append(piece)
    assert "".join(pieces) == "y" * 15  # what arrived before the cut was streamed
    await engine.close()


@pytest.mark.parametrize("how", ["task cancelled", "generator closed"])
async def test_a_stream_ended_early_leaves_nothing_behind(
    fake: FakeOpenAI, caplog: pytest.LogCaptureFixture, how: str
) -> None:
    """The agent ends streams early (a stop word seen on the text, Stop, a deadline), by cancelling the task
    that reads it or closing the generator.  Neither may leave a read of the closed connection running: it
    failed later and asyncio logged "Task exception was never retrieved ... APIConnectionError"."""
    caplog.set_level(logging.WARNING)
    engine = make_engine(fake)
    fake.reply = "<|action_start|><|interpreter|>\nprint(1)<|action_end|>" + "x" * 200
    fake.hang_after = 4  # the server is still sending (here: stalls) when the reader goes away
    first = asyncio.Event()
    stream = engine.stream_raw("<|im_start|>user\nhi<|im_end|>\n", GenParams(), asyncio.Event())

    async def read() -> None:
        async for _piece in stream:
            first.set()

    if how == "task cancelled":
        task = asyncio.create_task(read())
        await asyncio.wait_for(first.wait(), 5)
        await asyncio.sleep(0.05)  # the reader now waits for the next chunk
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    else:
        assert await stream.__anext__()
        await stream.aclose()
    await asyncio.wait_for(fake.disconnected.wait(), 5)  # the connection really closed
    for _ in range(5):
        await asyncio.sleep(0.02)
        gc.collect()
    logged = [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert logged == []
    assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()] == []
    await engine.close()
