"""Chat templates that open the thinking themselves (models/reasoning.py): the generation prompt ends with
`<think>\\n`, so the model's output starts inside its thinking with no opening tag and later has `</think>`.

The template shape is Qwen3-Thinking-2507's generation prompt, `{{- '<|im_start|>assistant\\n<think>\\n' }}`
(as unsloth's `chat_templates.py` "qwen3-thinking" entry reproduces it), put on the tiny InternLM2 GGUF of
tests/fixtures/internlm2-tiny (scripts/tiny_internlm2_gguf.py) in place of its own generation prompt: the real
llama.cpp engine renders it, sees the open tag, and the worker splits the model's real output accordingly.
The random-weight model never writes `</think>`, which is the never-closing case; the closing case is the
output shape such a model writes (thinking, `</think>`, blank line, answer), cut at every point.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from handlers.chat import ChatHandler
from handlers.history import HistoryStore
from handlers.overrides import ConfStore
from handlers.types import Request, Update
from models.engines.base import ChatMessage, GenParams
from models.engines.testing import TestEngine
from models.protocol import Bus
from models.reasoning import ReasoningSplitter, prompt_opens_thinking
from models.settings import Settings
from models.worker import Worker

pytestmark = pytest.mark.timeout(120)

FIXTURE = Path(__file__).parent / "fixtures" / "internlm2-tiny" / "internlm2-tiny.gguf"
GENERATION = "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
OPENED = "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n<think>\\n' }}{% endif %}"
# What such a model writes after the template's `<think>\n`: its thinking, then the close tag and the answer.
OUTPUT = "The user asks for 2 + 2. That is 4.\n</think>\n\nThe answer is **4**."


def split(pieces: list[str], opened: bool = True) -> tuple[str, str, bool]:
    s = ReasoningSplitter(opened=opened)
    got = {"thinking": "", "answer": ""}
    for piece in pieces:
        for kind, text in s.feed(piece):
            got[kind] += text
    for kind, text in s.finish():
        got[kind] += text
    assert (got["thinking"], got["answer"]) == (s.thinking, s.answer)
    return got["thinking"], got["answer"], s.unclosed


def test_prompt_opens_thinking() -> None:
    assert prompt_opens_thinking("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\n")
    assert not prompt_opens_thinking("<|im_start|>assistant\n")
    # Qwen3 with thinking off ends with an empty, closed block: the answer comes straight away.
    assert not prompt_opens_thinking("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert not prompt_opens_thinking("")


def test_an_opened_output_split_at_every_point() -> None:
    want = ("The user asks for 2 + 2. That is 4.\n", "The answer is **4**.", False)
    assert split([OUTPUT]) == want
    for cut in range(1, len(OUTPUT)):
        assert split([OUTPUT[:cut], OUTPUT[cut:]]) == want, cut
    assert split(list(OUTPUT)) == want  # one character at a time
    # A model that writes the tag again anyway: it is dropped, not shown as thinking.
    assert split(["\n<thi", "nk>", OUTPUT]) == want
    # Without `opened`, the same output is all answer (the tag never opened), as before.
    assert split([OUTPUT], opened=False) == ("", OUTPUT, False)


def test_an_opened_output_that_never_closes() -> None:
    assert split(["I think and think", " and never stop"]) == ("I think and think and never stop", "", True)
    assert split([""]) == ("", "", True)
    assert split(["<", "b> is bold"]) == ("<b> is bold", "", True)  # a partial tag that is not one is thinking


# ------------------------------------------------------------------------------ the worker, scripted output
class OpenedTemplate(TestEngine):
    """The test engine behind a template that opens `<think>`: it says so, and writes `OUTPUT` in 7-character
    pieces (not echoed from the user's text, where `</think>` is made inert)."""

    __test__ = False

    def opens_thinking(self, messages: list[ChatMessage]) -> bool:
        return True

    def reply_for(self, messages: list[ChatMessage]) -> list[str]:
        return [OUTPUT[i : i + 7] for i in range(0, len(OUTPUT), 7)]


@pytest.fixture
async def opened_worker(settings: Settings, bus: Bus) -> AsyncIterator[Worker]:
    worker = Worker(settings, bus, OpenedTemplate(), worker_id="opened")
    task = asyncio.create_task(worker.run())
    yield worker
    worker.stop()
    await asyncio.wait_for(task, 30)


async def ask(settings: Settings, bus: Bus, text: str, conversation: str) -> tuple[list[Update], HistoryStore]:
    history = HistoryStore(bus.redis)
    chat = ChatHandler(bus, history, ConfStore(bus.redis, settings), settings)
    reply = await chat.ask(Request(conversation=conversation, text=text))
    async with asyncio.timeout(30):
        updates = [u async for u in chat.follow(reply)]
    await chat.drain()
    return updates, history


async def test_the_worker_splits_a_template_opened_answer(settings: Settings, bus: Bus, opened_worker: Worker) -> None:
    updates, history = await ask(settings, bus, "What is 2 + 2?", "console:opened")
    final = updates[-1]
    assert final.kind == "done" and final.text == "The answer is **4**."
    assert final.data["thinking"] == "The user asks for 2 + 2. That is 4.\n"
    assert not final.data.get("unclosed_thinking")
    thinking = [u for u in updates if u.kind == "thinking"]
    assert thinking and all("The answer" not in u.data["thinking"] for u in thinking)
    assert all("</think>" not in u.text for u in updates)
    turns = await history.recent("console:opened")
    assert [(t.role, t.content) for t in turns][-1] == ("assistant", "The answer is **4**.")  # no thinking kept


# ------------------------------------------------------------------------------ the real llama.cpp engine
def with_chat_template(src: Path, dst: Path, template: str) -> Path:
    """A copy of a GGUF with `tokenizer.chat_template` replaced (GGUF v3: the key/value is rewritten in place,
    the tensor infos kept, the data section re-aligned to `general.alignment`)."""
    gguf = pytest.importorskip("gguf")
    reader = gguf.GGUFReader(src)
    raw = src.read_bytes()
    field = reader.fields["tokenizer.chat_template"]
    start = field.offset
    end = start + sum(int(part.nbytes) for part in field.parts)
    key, value = b"tokenizer.chat_template", template.encode()
    kv = struct.pack("<Q", len(key)) + key + struct.pack("<I", 8) + struct.pack("<Q", len(value)) + value
    infos_end = max(t.field.offset + sum(int(p.nbytes) for p in t.field.parts) for t in reader.tensors)
    head = raw[:start] + kv + raw[end:infos_end]
    head += b"\0" * (-len(head) % reader.alignment)
    dst.write_bytes(head + raw[reader.data_offset :])
    return dst


@pytest.mark.slow
async def test_llamacpp_sees_the_template_open_thinking_and_the_answer_still_comes(
    settings: Settings, bus: Bus, tmp_path: Path
) -> None:
    pytest.importorskip("llama_cpp")
    from models.engines.llamacpp import LlamaCppEngine

    original = LlamaCppEngine(FIXTURE, n_ctx=2048)
    template = original._ensure_loaded().metadata["tokenizer.chat_template"]
    assert template.endswith(GENERATION)
    patched = with_chat_template(FIXTURE, tmp_path / "opened.gguf", template.replace(GENERATION, OPENED))
    engine = LlamaCppEngine(patched, n_ctx=2048)
    try:
        await engine.start()
        assert engine.llm.metadata["tokenizer.chat_template"].endswith(OPENED)
        messages = [ChatMessage("user", "What is 2 + 2?")]
        assert engine.opens_thinking(messages) and not original.opens_thinking(messages)
        # Both models write the same (random) tokens; only the template's open tag makes them thinking.
        params = GenParams(temperature=0.0, max_new_tokens=8)
        plain = "".join([p async for p in original.stream_chat(messages, params, asyncio.Event())])
        assert plain.strip()
        settings.max_new_tokens, settings.temperature = 8, 0.0
        worker = Worker(settings, bus, engine, worker_id="opened-llamacpp")
        task = asyncio.create_task(worker.run())
        try:
            updates, history = await ask(settings, bus, "What is 2 + 2?", "console:opened-llamacpp")
        finally:
            worker.stop()
            await asyncio.wait_for(task, 30)
    finally:
        await engine.close()
        await original.close()
    final = updates[-1]
    assert final.kind == "done", final.data
    # The model never closed the thinking: all it wrote is thinking, surfaced with the note, not an empty reply.
    assert final.data.get("unclosed_thinking") is True and final.text == ""
    assert final.data["thinking"].strip() and "<think>" not in final.data["thinking"]
    assert any(u.kind == "thinking" and u.data["thinking"].strip() for u in updates)
    turns = await history.recent("console:opened-llamacpp")
    assert [t.role for t in turns] == ["user", "assistant"] and turns[1].content == ""  # the thinking is not kept
