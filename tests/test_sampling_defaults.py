"""The worker's engine owns the model's sampling defaults; a job carries only what someone set.

Through the real llama.cpp engine (the bundled SmolLM2 and the tiny InternLM2 GGUF), the real handler, Redis and
worker: what reaches llama.cpp is recorded at `Llama.create_chat_completion`, the call the engine makes."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from handlers.chat import ChatHandler, Request
from handlers.history import HistoryStore
from handlers.overrides import ConfStore
from models.engines.llamacpp import LlamaCppEngine, bundled_model_path
from models.engines.sampling import BUNDLED_SMOLLM2, INTERNLM_DEMO, gguf_defaults
from models.protocol import Bus
from models.settings import Settings
from models.worker import Worker

pytest.importorskip("llama_cpp")
pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]
INTERNLM2_GGUF = Path(__file__).parent / "fixtures" / "internlm2-tiny" / "internlm2-tiny.gguf"


@pytest.fixture(scope="module")
def smollm2() -> LlamaCppEngine:
    engine = LlamaCppEngine(bundled_model_path(), n_ctx=1024)
    engine._ensure_loaded()
    return engine


@pytest.fixture(scope="module")
def internlm2() -> LlamaCppEngine:
    engine = LlamaCppEngine(INTERNLM2_GGUF, n_ctx=1024)
    engine._ensure_loaded()
    return engine


def test_each_loaded_model_brings_its_own_defaults(smollm2: LlamaCppEngine, internlm2: LlamaCppEngine) -> None:
    assert smollm2.sampling_defaults == BUNDLED_SMOLLM2 == {"temperature": 0.3, "repetition_penalty": 1.2}
    assert internlm2.llm.metadata["general.architecture"] == "internlm2"
    assert (
        internlm2.sampling_defaults == INTERNLM_DEMO == {"temperature": 0.8, "top_p": 0.8, "repetition_penalty": 1.005}
    )
    assert LlamaCppEngine(INTERNLM2_GGUF).sampling_defaults == {}  # not loaded yet: nothing is claimed


def test_a_ggufs_own_sampling_metadata_wins(internlm2: LlamaCppEngine) -> None:
    """llama.cpp's `general.sampling.*` keys, as a converter writes them from a generation config (added to the
    real file's metadata, which llama-cpp-python hands over as strings)."""
    metadata = {**internlm2.llm.metadata, "general.sampling.temp": "0.6", "general.sampling.top_p": "0.95"}
    assert gguf_defaults(metadata) == {"temperature": 0.6, "top_p": 0.95, "repetition_penalty": 1.005}
    assert gguf_defaults({"general.architecture": "llama", "general.sampling.temp": "x"}) == {}


class Recorded:
    """The sampling keyword arguments of every chat completion the engine asks llama.cpp for."""

    def __init__(self, engine: LlamaCppEngine) -> None:
        self.calls: list[dict[str, Any]] = []
        llm = engine.llm
        original = llm.create_chat_completion

        def recording(*args: Any, **kwargs: Any) -> Any:
            self.calls.append({k: kwargs.get(k) for k in ("temperature", "top_p", "max_tokens", "repeat_penalty")})
            return original(*args, **kwargs)

        llm.create_chat_completion = recording
        self.close = lambda: vars(llm).pop("create_chat_completion", None)


async def ask(
    engine: LlamaCppEngine,
    worker_settings: Settings,
    bot_settings: Settings,
    bus: Bus,
    conversation: str,
    scope: dict[str, str] | None = None,
) -> dict[str, Any]:
    """One chat job (the bot with `bot_settings`, the worker with `worker_settings`); what llama.cpp got."""
    recorded = Recorded(engine)
    worker = Worker(worker_settings, bus, engine, worker_id=f"sampling-{conversation}")
    task = asyncio.create_task(worker.run())
    engine_close, engine.close = engine.close, _keep_loaded  # the module's engine outlives this worker
    try:
        chat = ChatHandler(bus, HistoryStore(bus.redis), ConfStore(bus.redis, bot_settings), bot_settings)
        for name, value in (scope or {}).items():
            await chat.conf.set(ConfStore.scope(channel=7), name, value)
        reply = await chat.ask(Request(conversation=conversation, text="Hi!", channel=7))
        updates = [u async for u in chat.follow(reply)]
        assert updates[-1].kind == "done", updates[-1]
    finally:
        worker.stop()
        await asyncio.wait_for(task, 30)
        engine.close = engine_close
        recorded.close()
    assert len(recorded.calls) == 1
    return {"job": reply.job.payload["params"], **recorded.calls[0]}


async def _keep_loaded() -> None:
    return None


async def test_nobody_set_anything_the_model_decides(smollm2: LlamaCppEngine, settings: Settings, bus: Bus) -> None:
    plain = settings.model_copy(update={"engine": "llamacpp"})
    got = await ask(smollm2, plain, plain, bus, "console:sampling-none")
    assert got["job"] == {}  # the payload carries nothing nobody set
    assert (got["temperature"], got["repeat_penalty"]) == (0.3, 1.2)  # SmolLM2's tamer sampling
    assert (got["top_p"], got["max_tokens"]) == (0.8, 1024)  # the InternLM demo's for the rest


async def test_the_same_settings_give_internlm2_its_own(
    internlm2: LlamaCppEngine, settings: Settings, bus: Bus
) -> None:
    plain = settings.model_copy(update={"engine": "llamacpp", "max_new_tokens": 4})
    got = await ask(internlm2, plain, plain, bus, "console:sampling-internlm2")
    assert got["job"] == {"max_new_tokens": 4}
    assert (got["temperature"], got["top_p"], got["repeat_penalty"], got["max_tokens"]) == (0.8, 0.8, 1.005, 4)


async def test_explicit_settings_win_over_the_models(smollm2: LlamaCppEngine, settings: Settings, bus: Bus) -> None:
    """An admin's /settings value travels in the job; the bot's and the worker's environment values are kept
    too; whatever nobody set stays the model's."""
    bot = settings.model_copy(update={"engine": "llamacpp", "top_p": 0.5})
    worker = settings.model_copy(update={"engine": "llamacpp", "repetition_penalty": 1.05})
    got = await ask(smollm2, worker, bot, bus, "console:sampling-set", scope={"temperature": "0.9"})
    assert got["job"] == {"temperature": 0.9, "top_p": 0.5}
    assert (got["temperature"], got["top_p"], got["repeat_penalty"]) == (0.9, 0.5, 1.05)


# Qwen/Qwen2.5-7B-Instruct's generation_config.json as published (a model that ships sampling values there).
QWEN_GENERATION_CONFIG = {
    "bos_token_id": 151643,
    "pad_token_id": 151643,
    "do_sample": True,
    "eos_token_id": [151645, 151643],
    "repetition_penalty": 1.05,
    "temperature": 0.7,
    "top_p": 0.8,
    "top_k": 20,
    "transformers_version": "4.37.0",
}


async def test_lmdeploy_takes_the_models_generation_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Through the lmdeploy stand-in (tests/test_lmdeploy_engine.py): a local model directory's generation config
    wins over the family's; an InternLM hub id gets the InternLM demo's; greedy-by-design configs give nothing."""
    import json

    from test_lmdeploy_engine import CURRENT, install

    from models.engines.lmdeploy import LMDeployEngine
    from models.engines.sampling import generation_config_defaults

    install(monkeypatch, CURRENT)
    local = tmp_path / "qwen2.5-7b-instruct"
    local.mkdir()
    (local / "generation_config.json").write_text(json.dumps(QWEN_GENERATION_CONFIG))
    engine = LMDeployEngine(str(local))
    await engine.start()
    assert engine.sampling_defaults == {"temperature": 0.7, "top_p": 0.8, "repetition_penalty": 1.05}
    await engine.close()
    internlm = LMDeployEngine("internlm/internlm2_5-7b-chat")
    await internlm.start()
    assert internlm.sampling_defaults == INTERNLM_DEMO
    await internlm.close()
    (local / "generation_config.json").write_text(json.dumps({**QWEN_GENERATION_CONFIG, "do_sample": False}))
    assert generation_config_defaults(str(local)) == {}
    assert generation_config_defaults(str(tmp_path / "missing")) == {}
