"""`AGENT_PROTOCOL=auto` (the default) against the real engines: the real llama.cpp engine with the tiny InternLM2
GGUF (its vocabulary has InternLM2's tool tokens as CONTROL tokens → `internlm2`) and with the bundled SmolLM2
(no such tokens, no tool calling → `internlm2` with a note that says what to configure), and `ENGINE=openai`
against the local OpenAI-compatible server (tests/fakeopenai.py; it accepts `tools` → `tools`).  Each through the
real worker and Redis, the choice and its reason read from the `done` event."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from test_agent import ScriptedEngine, steps
from test_agent_replay import run

from handlers.agent import AgentHandler
from handlers.chat import ChatHandler
from handlers.history import HistoryStore
from handlers.overrides import ConfStore
from models.agent import protocol
from models.engines.base import Engine
from models.engines.llamacpp import LlamaCppEngine, bundled_model_path
from models.engines.openai import OpenAIEngine
from models.protocol import Bus
from models.settings import Settings
from models.worker import Worker
from tests.fakeopenai import INTERNLM2_SPECIAL, VLLM_NO_TOOL_PARSER, FakeOpenAI, ReplayTurn

pytestmark = pytest.mark.timeout(180)
INTERNLM2_GGUF = Path(__file__).parent / "fixtures" / "internlm2-tiny" / "internlm2-tiny.gguf"
MODEL = "internlm2_5-7b-chat"


def test_auto_is_the_default() -> None:
    assert Settings(_env_file=None).agent_protocol == "auto"


@pytest.fixture(scope="module")
def internlm2() -> LlamaCppEngine:
    pytest.importorskip("llama_cpp")
    engine = LlamaCppEngine(INTERNLM2_GGUF, n_ctx=2048)
    engine._ensure_loaded()
    return engine


@pytest.fixture(scope="module")
def smollm2() -> LlamaCppEngine:
    pytest.importorskip("llama_cpp")
    engine = LlamaCppEngine(bundled_model_path(), n_ctx=2048)
    engine._ensure_loaded()
    return engine


def agent_for(settings: Settings, bus: Bus) -> AgentHandler:
    settings.agent_arxiv = False
    return AgentHandler(ChatHandler(bus, HistoryStore(bus.redis), ConfStore(bus.redis, settings), settings))


async def run_on(engine: Engine, settings: Settings, bus: Bus, task: str, conversation: str) -> list:
    worker = Worker(settings, bus, engine, worker_id=f"protocol-{conversation}")
    serving = asyncio.create_task(worker.run())
    try:
        return await run(agent_for(settings, bus), task, conversation=conversation)
    finally:
        worker.stop()
        await asyncio.wait_for(serving, 60)


@pytest.mark.slow
def test_internlm2_gguf_on_llamacpp_gets_internlm2(internlm2: LlamaCppEngine) -> None:
    choice = protocol.choose(internlm2, "auto", internlm2.special_tokens)
    assert choice.protocol == "internlm2" and not choice.note
    assert "vocabulary has InternLM2's tool tokens" in choice.reason


@pytest.mark.slow
async def test_smollm2_gets_internlm2_with_a_note_saying_what_to_use(
    smollm2: LlamaCppEngine, settings: Settings, bus: Bus, caplog: pytest.LogCaptureFixture
) -> None:
    """SmolLM2's vocabulary is known (ChatML control tokens) and lacks InternLM2's tool tokens; llama.cpp has no
    tool calling: the run goes on with InternLM2's protocol, and the user reads why it will hardly use tools."""
    tokens = smollm2.special_tokens
    assert "<|im_start|>" in tokens and "<|action_start|>" not in tokens  # the premise, from the real GGUF
    caplog.set_level(logging.INFO, logger="models.agent.protocol")
    settings.max_new_tokens, settings.agent_max_turns, settings.temperature = 8, 1, 0.0
    updates = await run_on(smollm2, settings, bus, "What is 2**20?", "console:protocol-smollm2")
    first = steps(updates)[0]
    assert first["type"] == "note" and first["protocol"] == "internlm2" and first["turn"] == 0
    assert "no InternLM2 tool tokens" in first["text"] and "ENGINE=openai" in first["text"]
    done = updates[-1]
    assert done.kind == "done" and done.data["protocol"] == "internlm2"
    assert "no InternLM2 tool tokens" in done.data["protocol_reason"]
    line = f"agent protocol internlm2 ({done.data['protocol_reason']})"
    assert [r.getMessage() for r in caplog.records].count(line) == 1  # said once, in the worker's log


@pytest.mark.slow
async def test_internlm2_gguf_agent_job_reports_internlm2_without_a_note(
    internlm2: LlamaCppEngine, settings: Settings, bus: Bus
) -> None:
    settings.max_new_tokens, settings.agent_max_turns, settings.temperature = 4, 1, 0.0
    updates = await run_on(internlm2, settings, bus, "hi", "console:protocol-internlm2")
    assert not [s for s in steps(updates, "note") if "protocol" in s]
    assert updates[-1].kind == "done" and updates[-1].data["protocol"] == "internlm2"


@pytest.fixture
async def server() -> AsyncIterator[FakeOpenAI]:
    fake = await FakeOpenAI(models=(MODEL,)).start()
    fake.skip_special = INTERNLM2_SPECIAL
    yield fake
    await fake.stop()


async def test_openai_server_with_tools_gets_tools(server: FakeOpenAI, settings: Settings, bus: Bus) -> None:
    """No sandbox needed: the model answers without calling a tool, but the request declares them."""
    server.replay([ReplayTurn("Hello there.")])
    engine = OpenAIEngine(base_url=server.base_url, chat_model=MODEL)
    try:
        updates = await run_on(engine, settings, bus, "Say hello.", "console:protocol-openai")
    finally:
        await engine.close()
    assert server.replay_errors == [] and [r.path for r in server.requests] == ["/v1/chat/completions"]
    body = server.requests[0].body
    assert body["tools"] and all(t["type"] == "function" for t in body["tools"])
    assert not steps(updates, "note")
    done = updates[-1]
    assert done.kind == "done" and done.text == "Hello there." and done.data["protocol"] == "tools"
    assert "accepts OpenAI `tools`" in done.data["protocol_reason"]


async def test_openai_with_internlm2_set_uses_raw_completions(server: FakeOpenAI, settings: Settings, bus: Bus) -> None:
    """`AGENT_PROTOCOL=internlm2` is how an operator says the server keeps special tokens: no `tools` sent."""
    server.skip_special = ()
    server.reply = "The answer is 4."
    settings.agent_protocol = "internlm2"
    engine = OpenAIEngine(base_url=server.base_url, chat_model=MODEL)
    try:
        updates = await run_on(engine, settings, bus, "2+2?", "console:protocol-openai-raw")
    finally:
        await engine.close()
    assert [r.path for r in server.requests] == ["/v1/completions"]
    assert "tools" not in json.dumps(server.requests[0].body.get("tools", ""))
    assert updates[-1].kind == "done" and updates[-1].data["protocol"] == "internlm2"
    assert updates[-1].data["protocol_reason"] == "AGENT_PROTOCOL=internlm2"


async def test_an_engine_of_unknown_vocabulary_runs_internlm2_without_a_note(settings: Settings, bus: Bus) -> None:
    engine = ScriptedEngine()
    engine.script = ["x = 3.5."]
    updates = await run_on(engine, settings, bus, "2x+3=10", "console:protocol-scripted")
    assert steps(updates, "note") == [] and len(engine.prompts) == 1
    assert updates[-1].kind == "done" and updates[-1].data["protocol"] == "internlm2"
    assert "no tool calling" in updates[-1].data["protocol_reason"]


async def test_lmdeploy_in_process_with_internlm2_gets_internlm2(monkeypatch: pytest.MonkeyPatch) -> None:
    """The lmdeploy stand-in of tests/test_lmdeploy_engine.py (its tokenizer carries InternLM2's added tokens):
    raw completions decode with skip_special_tokens=False, so `auto` keeps InternLM2's protocol."""
    from test_lmdeploy_engine import CURRENT, install

    from models.engines.lmdeploy import LMDeployEngine

    install(monkeypatch, CURRENT)
    engine = LMDeployEngine("internlm/internlm2_5-7b-chat")
    await engine.start()
    try:
        choice = protocol.choose(engine, "auto", engine.special_tokens)
    finally:
        await engine.close()
    assert choice.protocol == "internlm2" and "lmdeploy engine keeps them" in choice.reason


async def test_a_server_refusing_tools_gets_internlm2_with_a_note_then_at_once(
    server: FakeOpenAI, settings: Settings, bus: Bus
) -> None:
    """vLLM started without --enable-auto-tool-choice answers a request with `tools` with HTTP 400: under `auto` the
    run goes on in InternLM2's protocol (raw completions, special tokens kept), says so, and the next run on the
    same engine does not ask with `tools` again."""
    server.skip_special = ()  # a server that keeps them when asked (vLLM does with skip_special_tokens: false)
    server.refuse_tools = VLLM_NO_TOOL_PARSER
    server.reply = "The answer is 4."
    engine = OpenAIEngine(base_url=server.base_url, chat_model=MODEL)
    worker = Worker(settings, bus, engine, worker_id="protocol-refused")  # one worker: it closes its engine
    serving = asyncio.create_task(worker.run())
    try:
        first = await run(agent_for(settings, bus), "2+2?", conversation="console:protocol-refused")
        paths = [r.path for r in server.requests]
        second = await run(agent_for(settings, bus), "3+3?", conversation="console:protocol-refused-again")
    finally:
        worker.stop()
        await asyncio.wait_for(serving, 60)
    assert paths == ["/v1/chat/completions", "/v1/completions"]  # refused once, then the raw protocol
    note = steps(first, "note")[0]
    assert note["protocol"] == "internlm2" and "HTTP 400" in note["text"] and "tool-call parser" in note["text"]
    assert first[-1].kind == "done" and first[-1].text == "The answer is 4."
    assert first[-1].data["protocol"] == "internlm2" and "refused `tools`" in first[-1].data["protocol_reason"]
    assert [r.path for r in server.requests][2:] == ["/v1/completions"]  # no `tools` request the second time
    assert steps(second, "note") == [] and second[-1].data["protocol"] == "internlm2"
    assert "refused `tools`" in second[-1].data["protocol_reason"]


async def test_explicit_tools_on_a_refusing_server_is_a_clear_error(
    server: FakeOpenAI, settings: Settings, bus: Bus
) -> None:
    server.refuse_tools = VLLM_NO_TOOL_PARSER
    settings.agent_protocol = "tools"
    engine = OpenAIEngine(base_url=server.base_url, chat_model=MODEL)
    try:
        updates = await run_on(engine, settings, bus, "2+2?", "console:protocol-refused-explicit")
    finally:
        await engine.close()
    message = updates[-1].data["message"]
    assert updates[-1].kind == "error" and "HTTP 400" in message and "tool choice" in message
    assert [r.path for r in server.requests] == ["/v1/chat/completions"]
