"""The agent loop end to end in one process: handler → Redis → worker → Lagent agent → real sandbox.

The model is `ScriptedEngine`, a real `Engine` that speaks InternLM2's tool protocol: it answers raw prompts
(rendered client-side with the protocol's special tokens) from a script, and a script entry may be a function
of the prompt, so the tool output that really came back from the sandbox decides the final answer.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable

import pytest

from handlers.agent import AgentHandler, format_step
from handlers.chat import ChatHandler, InputError, Update
from handlers.history import HistoryStore
from handlers.overrides import ConfStore
from models.engines.base import ChatMessage, Engine, GenParams
from models.protocol import Bus
from models.settings import Settings
from models.worker import Worker

Script = str | Callable[[str], str]
HANG = "[[hang]]"


class ScriptedEngine(Engine):
    """Answers each model call with the next script entry, in small pieces, honouring `cancel`."""

    __test__ = False
    name = "scripted"
    supports_raw = True

    def __init__(self) -> None:
        self.script: list[Script] = []
        self.prompts: list[str] = []
        self.pauses: dict[int, float] = {}  # model call number (1-based) → seconds to think first
        self.chats: list[list[ChatMessage]] = []

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def _next(self, prompt: str) -> str:
        if not self.script:
            return "(script exhausted)"
        entry = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        return entry(prompt) if callable(entry) else entry

    async def _pieces(self, text: str, cancel: asyncio.Event) -> AsyncIterator[str]:
        if text == HANG:
            await cancel.wait()
            return
        for i in range(0, len(text), 5):
            if cancel.is_set():
                return
            await asyncio.sleep(0)
            yield text[i : i + 5]

    async def stream_raw(self, prompt: str, params: GenParams, cancel: asyncio.Event) -> AsyncIterator[str]:
        assert "<|action_end|>" in params.stop and "<|im_end|>" in params.stop
        self.prompts.append(prompt)
        await asyncio.sleep(self.pauses.get(len(self.prompts), 0.0))
        async for piece in self._pieces(self._next(prompt), cancel):
            yield piece

    async def stream_chat(
        self, messages: list[ChatMessage], params: GenParams, cancel: asyncio.Event
    ) -> AsyncIterator[str]:
        self.chats.append(messages)
        prompt = "\n".join(f"{m.role}: {m.content}" for m in messages)
        async for piece in self._pieces(self._next(prompt), cancel):
            yield piece


def last_environment(prompt: str) -> str:
    """The last tool result in a rendered InternLM2 prompt."""
    found = re.findall(r"<\|im_start\|>environment name=<\|(?:interpreter|plugin)\|>\n(.*?)<\|im_end\|>", prompt, re.S)
    return found[-1].strip() if found else ""


@pytest.fixture
def engine() -> ScriptedEngine:  # the conftest `worker` fixture serves with this engine
    return ScriptedEngine()


@pytest.fixture
def chat(settings: Settings, bus: Bus) -> ChatHandler:
    return ChatHandler(bus, HistoryStore(bus.redis), ConfStore(bus.redis, settings), settings)


@pytest.fixture
def agent(chat: ChatHandler, settings: Settings) -> AgentHandler:
    settings.agent_arxiv = False
    settings.agent_timeout = 60
    return AgentHandler(chat)


async def run(agent: AgentHandler, task: str, conversation: str = "console:agent") -> list[Update]:
    reply = await agent.ask(conversation, task)
    return [u async for u in agent.follow(reply)]


def steps(updates: list[Update], kind: str | None = None) -> list[dict]:
    return [u.data for u in updates if u.kind == "step" and (kind is None or u.data.get("type") == kind)]


SOLVE = (
    "I'll solve it with Python.<|action_start|><|interpreter|>\n"
    "import sympy as sp\nx = sp.symbols('x')\nprint(float(sp.solve(sp.Eq(2*x + 3, 10), x)[0]))\n"
    "<|action_end|>\n"
)


async def test_solves_an_equation_with_real_code(
    agent: AgentHandler, engine: ScriptedEngine, chat: ChatHandler, worker: Worker
) -> None:
    pytest.importorskip("sympy")
    engine.script = [SOLVE, lambda prompt: f"The solution is x = {last_environment(prompt)}."]
    updates = await run(agent, "已知 2x+3=10，求x")
    final = updates[-1]
    assert final.kind == "done", final.data
    assert final.text == "The solution is x = 3.5."  # 3.5 came from the sandbox, through the prompt
    call = steps(updates, "tool_call")[0]
    assert call["tool"] == "python" and "sp.solve" in call["code"]
    result = steps(updates, "tool_result")[0]
    assert result["ok"] and result["text"].strip() == "3.5"
    assert [s["type"] for s in steps(updates)] == ["thought", "tool_call", "tool_result", "answer"]
    # The protocol reached the model: system prompts for the interpreter, the call, the result.
    second = engine.prompts[1]
    assert "<|im_start|>system name=<|interpreter|>" in second
    assert "<|action_start|><|interpreter|>\nimport sympy" in second
    assert second.endswith("<|im_start|>assistant\n")
    turns = await chat.history.recent("console:agent")
    assert [t.role for t in turns] == ["user", "assistant"]
    assert turns[0].content == "已知 2x+3=10，求x"
    assert turns[1].content == "The solution is x = 3.5.\n(tools used: python)"
    assert "Python" in format_step(call) and "```python" in format_step(call)


async def test_figure_comes_back_as_a_file(
    agent: AgentHandler, engine: ScriptedEngine, bus: Bus, worker: Worker
) -> None:
    pytest.importorskip("matplotlib")
    engine.script = [
        "<|action_start|><|interpreter|>\nimport matplotlib.pyplot as plt\nplt.plot([1, 4, 9])\n"
        "plt.savefig('squares.png')\n<|action_end|>",
        "Here is the plot.",
    ]
    updates = await run(agent, "plot squares")
    files = [u.data for u in updates if u.kind == "file"]
    assert len(files) == 1 and files[0]["mime"] == "image/png" and files[0]["name"] == "squares.png"
    blob = await bus.get_blob(files[0]["blob"])
    assert blob is not None and blob[0].startswith(b"\x89PNG")
    assert updates[-1].kind == "done" and updates[-1].text == "Here is the plot."


async def test_plugin_call_with_json_arguments(
    agent: AgentHandler, engine: ScriptedEngine, settings: Settings, worker: Worker
) -> None:
    from test_arxiv import AtomServer

    async with AtomServer() as server:
        settings.agent_arxiv = True
        settings.arxiv_base_url = server.url
        engine.script = [
            'Searching arXiv.<|action_start|><|plugin|>\n{"name": "ArxivSearch.get_arxiv_article_information", '
            '"parameters": {"query": "diffusion models"}}<|action_end|>\n',
            lambda prompt: "Top result: " + last_environment(prompt).splitlines()[0],
        ]
        updates = await run(agent, "find papers on diffusion models")
    assert server.queries == ["diffusion models"]
    call = steps(updates, "tool_call")[0]
    assert call["tool"] == "ArxivSearch.get_arxiv_article_information"
    assert call["args"] == {"query": "diffusion models"}
    result = steps(updates, "tool_result")[0]
    assert result["links"][0]["url"] == "http://arxiv.org/abs/2401.00001v1"
    assert "](<http://arxiv.org/abs/2401.00001v1>)" in result["text"]
    assert updates[-1].text == "Top result: Title: Denoising Diffusion for Testing"
    assert "<|im_start|>system name=<|plugin|>" in engine.prompts[0]
    assert "ArxivSearch.get_arxiv_article_information" in engine.prompts[0]


async def test_malformed_action_gets_a_note_and_a_second_chance(
    agent: AgentHandler, engine: ScriptedEngine, settings: Settings, worker: Worker
) -> None:
    settings.agent_arxiv = True
    engine.script = [
        '<|action_start|><|plugin|>\n{"name": "ArxivSearch.get_arxiv_article_information", '
        '"parameters": {query: oops}<|action_end|>',
        "Sorry, here is my answer without tools.",
    ]
    updates = await run(agent, "find something")
    notes = steps(updates, "note")
    assert len(notes) == 1 and "malformed" in notes[0]["text"] and "JSON" in notes[0]["text"]
    assert "tool call was malformed" in last_environment(engine.prompts[1])
    assert updates[-1].kind == "done" and updates[-1].text == "Sorry, here is my answer without tools."


async def test_unknown_tool_and_stray_marker(agent: AgentHandler, engine: ScriptedEngine, worker: Worker) -> None:
    engine.script = [
        '<|action_start|><|plugin|>\n{"name": "rm_rf", "parameters": {}}<|action_end|>',
        "text <|plugin|> more <|plugin|> text",
        "Done.",
    ]
    updates = await run(agent, "do it")
    notes = [n["text"] for n in steps(updates, "note")]
    assert len(notes) == 2
    assert "no plugin tools" in notes[0] or "no tool named" in notes[0]
    assert updates[-1].text == "Done."


async def test_max_turns_reached(
    agent: AgentHandler, engine: ScriptedEngine, settings: Settings, chat: ChatHandler, worker: Worker
) -> None:
    settings.agent_max_turns = 2
    engine.script = ["<|action_start|><|interpreter|>\nprint(1)\n<|action_end|>"]
    updates = await run(agent, "loop forever")
    assert len(steps(updates, "tool_call")) == 2
    assert len(engine.prompts) == 2
    final = updates[-1]
    assert final.kind == "done"
    assert "Stopped after 2 steps" in final.text
    turns = await chat.history.recent("console:agent")
    assert turns[-1].content.endswith("(tools used: python ×2)")


async def test_model_ignoring_the_protocol_answers_plainly(
    agent: AgentHandler, engine: ScriptedEngine, worker: Worker
) -> None:
    engine.script = ["x is probably 3.5"]
    updates = await run(agent, "solve 2x+3=10")
    assert updates[-1].kind == "done" and updates[-1].text == "x is probably 3.5"
    assert steps(updates, "tool_call") == []


async def test_empty_model_output_ends_clearly(agent: AgentHandler, engine: ScriptedEngine, worker: Worker) -> None:
    engine.script = [""]
    updates = await run(agent, "anything")
    assert updates[-1].kind == "done" and "empty answer" in updates[-1].text


async def test_chat_fallback_without_raw_completion(
    agent: AgentHandler, engine: ScriptedEngine, worker: Worker
) -> None:
    engine.supports_raw = False
    engine.script = [
        "<|action_start|><|interpreter|>\nprint(6 * 7)\n<|action_end|>",
        lambda prompt: "It is " + prompt.rsplit("environment: ", 1)[-1].strip(),
    ]
    updates = await run(agent, "six times seven")
    assert updates[-1].text == "It is 42"
    second = engine.chats[1]
    assert [m.role for m in second] == ["system", "user", "assistant", "environment"]
    assert sum(m.role == "system" for m in second) == 1


async def test_deadline_ends_a_hanging_model(
    agent: AgentHandler, engine: ScriptedEngine, settings: Settings, worker: Worker
) -> None:
    settings.agent_timeout = 1.0
    engine.script = [HANG]
    updates = await asyncio.wait_for(run(agent, "hang"), 30)
    assert updates[-1].kind == "done"
    assert "time limit" in updates[-1].text
    assert any(n.get("limit") == "time" for n in steps(updates, "note"))


async def test_stop_button(agent: AgentHandler, engine: ScriptedEngine, worker: Worker) -> None:
    engine.script = [HANG]
    reply = await agent.ask("console:agent", "hang until stopped")
    updates: list[Update] = []
    async for update in agent.follow(reply):
        updates.append(update)
        if update.kind == "started":
            await agent.stop(reply)
    assert updates[-1].kind == "done" and updates[-1].data.get("stopped")


async def test_empty_task_is_refused(agent: AgentHandler) -> None:
    with pytest.raises(InputError):
        await agent.ask("console:agent", "   ")


async def test_escape_through_the_agent_leaves_the_worker_serving(
    agent: AgentHandler, engine: ScriptedEngine, chat: ChatHandler, worker: Worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DISCORD_TOKEN", "secret-token-for-the-test")
    engine.script = [
        "<|action_start|><|interpreter|>\nimport os, signal\n"
        "print(os.environ.get('DISCORD_TOKEN'))\nos.kill(os.getppid(), signal.SIGKILL)\n<|action_end|>",
        lambda prompt: last_environment(prompt)[:200],
    ]
    updates = await run(agent, "escape")
    assert updates[-1].kind == "done"
    assert "secret-token-for-the-test" not in updates[-1].text
    engine.script = ["still serving"]
    assert (await run(agent, "are you there?"))[-1].text == "still serving"


# ------------------------------------------------------------------------------ ENGINE=openai (completions)
def protocol_server_reply(body: dict) -> str:
    """What an InternLM2 model behind lmdeploy/vLLM would write for the agent's raw prompt (the server then
    drops the special tokens unless the request asks it not to: `FakeOpenAI.skip_special`)."""
    env = last_environment(body["prompt"])
    return (
        f"x = {env}"
        if env
        else "Let me compute.<|action_start|><|interpreter|>\n```python\nprint((10 - 3) / 2)\n```<|action_end|>\n"
    )


async def agent_via_openai(
    settings: Settings, bus: Bus, chat: ChatHandler, honour_skip: bool = True
) -> tuple[list[Update], list]:
    from models.engines.openai import OpenAIEngine
    from tests.fakeopenai import INTERNLM2_SPECIAL, FakeOpenAI

    fake = await FakeOpenAI().start()
    fake.reply = protocol_server_reply
    fake.skip_special = INTERNLM2_SPECIAL if honour_skip else ()
    engine = OpenAIEngine(base_url=fake.base_url, chat_model="internlm2_5-7b-chat")
    w = Worker(settings, bus, engine, worker_id="openai-worker")
    task = asyncio.create_task(w.run())
    try:
        settings.agent_arxiv = False
        settings.agent_protocol = "internlm2"  # the raw protocol over completions; `auto` would pick tools here
        updates = await run(AgentHandler(chat), "2x + 3 = 10", conversation="console:openai")
    finally:
        w.stop()
        await asyncio.wait_for(task, 30)
        await fake.stop()
    return updates, fake.requests


async def test_openai_engine_uses_the_completions_endpoint(settings: Settings, bus: Bus, chat: ChatHandler) -> None:
    """A server that keeps special tokens in completions output (what the agent needs)."""
    updates, requests = await agent_via_openai(settings, bus, chat, honour_skip=False)
    assert [r.path for r in requests] == ["/v1/completions", "/v1/completions"]
    first = requests[0].body
    assert first["prompt"].endswith("<|im_start|>assistant\n") and "<|interpreter|>" in first["prompt"]
    assert "<|action_end|>" in first["stop"] and "<|im_end|>" in first["stop"]
    assert updates[-1].text == "x = 3.5"
    assert steps(updates, "tool_call")[0]["code"] == "print((10 - 3) / 2)"


async def test_openai_engine_keeps_special_tokens(settings: Settings, bus: Bus, chat: ChatHandler) -> None:
    """Behind a server that drops special tokens unless told not to (lmdeploy's and vLLM's default), the tool
    call still arrives with its markers, because raw completions ask for `skip_special_tokens: false`."""
    updates, requests = await agent_via_openai(settings, bus, chat)
    assert requests[0].body.get("skip_special_tokens") is False
    assert updates[-1].text == "x = 3.5"


# ------------------------------------------------------------------------------ ENGINE=llamacpp (bundled model)
async def test_bundled_smollm2_answers_plainly(settings: Settings, bus: Bus, caplog: pytest.LogCaptureFixture) -> None:
    """The bundled SmolLM2-135M (real llama.cpp) does not follow InternLM2's tool protocol: the agent still
    ends with the model's own plain answer, not an error, and nothing is logged as an error."""
    pytest.importorskip("llama_cpp")
    import logging

    from models.engines import build_engine

    caplog.set_level(logging.WARNING)
    cpu = settings.model_copy(
        update={
            "engine": "llamacpp",
            "llamacpp_n_ctx": 2048,
            "max_new_tokens": 24,
            "temperature": 0.0,
            "agent_arxiv": False,
            "agent_max_turns": 2,
            "agent_timeout": 120,
        }
    )
    engine = build_engine(cpu)
    w = Worker(cpu, bus, engine, worker_id="llama-agent")
    task = asyncio.create_task(w.run())
    try:
        chat = ChatHandler(bus, HistoryStore(bus.redis), ConfStore(bus.redis, cpu), cpu)
        updates = await asyncio.wait_for(
            run(AgentHandler(chat), "What is the capital of France?", conversation="console:smol"), 150
        )
    finally:
        w.stop()
        await asyncio.wait_for(task, 30)
    final = updates[-1]
    assert final.kind == "done", final.data
    assert final.text.strip()
    answers = steps(updates, "answer")
    if not steps(updates, "tool_call"):  # the usual case: a plain answer, shown as is
        assert answers and answers[-1]["text"] == final.text
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
