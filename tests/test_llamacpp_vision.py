"""Vision on a laptop: a projector GGUF (mmproj) beside the llama.cpp model, InternVL's included.

Real llama-cpp-python and its `libmtmd` run here: the bundled SmolLM2-135M GGUF with a tiny random-weight
InternVL projector built by tests/tinyvision.py in the layout llama.cpp reads for projector type `internvl`
(no InternVL weights exist here; the projector's output is noise, so the tests assert behaviour — the image
reaches the model as image tokens, jobs finish, errors are clear — never wording).
"""

from __future__ import annotations

import asyncio
import base64
import io
from pathlib import Path

import pytest
from PIL import Image

from models.engines.base import ChatMessage, EngineError, GenParams, ImageInput
from models.engines.llamacpp import LlamaCppEngine
from models.engines.llamacpp_vision import TemplateVisionHandler, flatten_content
from models.protocol import Bus
from models.settings import Settings
from models.worker import Worker
from tests.tinyvision import build_internvl_mmproj

pytest.importorskip("llama_cpp")
pytest.importorskip("gguf")

SHORT = GenParams(temperature=0.0, max_new_tokens=8)


def png(colour: str = "red", size: tuple[int, int] = (64, 48)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def mmproj(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_internvl_mmproj(tmp_path_factory.mktemp("mmproj") / "tiny-internvl-mmproj.gguf")


@pytest.fixture(scope="module")
def vision_llama(mmproj: Path) -> LlamaCppEngine:
    engine = LlamaCppEngine(n_ctx=1024, clip_model_path=mmproj)
    engine._ensure_loaded()
    return engine


def test_llamacpp_flatten_content_puts_the_images_first() -> None:
    parts = [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AB=="}},
        {"type": "text", "text": "What is this?"},
    ]
    assert flatten_content(parts, "<__media__>") == "<__media__>\n<__media__>\nWhat is this?"
    assert flatten_content("plain", "<__media__>") == "plain"


def test_llamacpp_internvl_projector_puts_image_tokens_in_the_prompt(vision_llama: LlamaCppEngine) -> None:
    """The model's own (string-only) chat template renders, and the image becomes InternVL image tokens:
    `<img>`, the tile's 4 embeddings (56-pixel tile, 14-pixel patches, pixel shuffle 2), `</img>`."""
    llm = vision_llama.llm
    assert isinstance(llm.chat_handler, TemplateVisionHandler)
    url = "data:image/png;base64," + base64.b64encode(png()).decode()
    text_only = llm.create_chat_completion(messages=[{"role": "user", "content": "Describe it."}], max_tokens=1)
    with_image = llm.create_chat_completion(
        messages=[
            {
                "role": "user",
                "content": [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "Describe it."}],
            }
        ],
        max_tokens=1,
    )
    extra = with_image["usage"]["prompt_tokens"] - text_only["usage"]["prompt_tokens"]
    assert extra >= 4, (text_only["usage"], with_image["usage"])  # the 4 image embeddings at least


async def test_llamacpp_streams_an_answer_about_an_image(vision_llama: LlamaCppEngine) -> None:
    assert vision_llama.supports_vision
    messages = [
        ChatMessage("system", "You describe images."),
        ChatMessage("user", "What colour is it?", [ImageInput(png("blue"), "image/png")]),
    ]
    pieces = [p async for p in vision_llama.stream_chat(messages, SHORT, asyncio.Event())]
    assert pieces and "".join(pieces).strip()


async def test_llamacpp_missing_or_mismatched_projector_is_a_start_error(tmp_path: Path) -> None:
    with pytest.raises(EngineError, match="LLAMACPP_CLIP_MODEL_PATH does not point at a file"):
        await LlamaCppEngine(n_ctx=512, clip_model_path=tmp_path / "nope.gguf").start()
    wrong = build_internvl_mmproj(tmp_path / "for-a-wider-model.gguf", llm_embd=64)  # SmolLM2 is 576 wide
    engine = LlamaCppEngine(n_ctx=512, clip_model_path=wrong)
    with pytest.raises(EngineError, match="could not be loaded with this model") as failed:
        await engine.start()
    assert "for-a-wider-model.gguf" in str(failed.value) and engine.llm is None
    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(EngineError, match="could not be loaded"):
        await LlamaCppEngine(n_ctx=512, clip_model_path=garbage).start()


async def test_llamacpp_caption_and_article_through_the_worker(settings: Settings, bus: Bus, mmproj: Path) -> None:
    """A caption job and an /article job with an image, through Redis and the real worker, on the CPU."""
    from handlers.article import ArticleHandler
    from handlers.chat import ChatHandler, Request
    from handlers.history import HistoryStore
    from handlers.overrides import ConfStore

    cpu = settings.model_copy(update={"max_new_tokens": 16, "article_max_new_tokens": 64, "temperature": 0.0})
    engine = LlamaCppEngine(n_ctx=2048, clip_model_path=mmproj)
    worker = Worker(cpu, bus, engine, worker_id="llama-vision")
    task = asyncio.create_task(worker.run())
    try:
        chat = ChatHandler(bus, HistoryStore(bus.redis), ConfStore(bus.redis, cpu), cpu)
        ref = await bus.put_blob(png(), "image/png")
        reply = await chat.ask(
            Request(conversation="console:cpu-vision", text="What is in it?", images=[ref], kind="vision")
        )
        done = [u async for u in chat.follow(reply)][-1]
        assert done.kind == "done", done.data
        assert done.data["usage"]["completion_tokens"] >= 1
        article = await ArticleHandler(chat).ask(
            Request(conversation="console:cpu-art", text=""), "Red things", [ref], 2
        )
        final = [u async for u in chat.follow(article)][-1]
        assert final.kind == "done", final.data  # greedy: SmolLM2 writes its (noisy) paragraphs every time
        assert len([b for b in final.data["layout"] if b["type"] == "text"]) >= 1
        assert [b["ref"] for b in final.data["layout"] if b["type"] == "image"] == [ref]  # placed once
    finally:
        worker.stop()
        await asyncio.wait_for(task, 30)
