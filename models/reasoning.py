"""Reasoning models: split what a model streams into its thinking and its answer.

InternLM3 and Intern-S1 in thinking mode (and the other `<think>` models) write `<think>…</think>` before
the answer; the tags may arrive split across any number of pieces, and a model that runs out of tokens
never closes them.  lmdeploy's `--reasoning-parser` instead sends the thinking as `delta.reasoning_content`
(the OpenAI engine hands those to `THINKING_SINK`, see models/engines/openai.py).  Either way the thinking
is shown apart from the answer and never enters the conversation history, so it is split here, in the
worker, before anything is emitted (`ReasoningSplitter`, streaming).

Some chat templates open the thinking themselves: Qwen3-Thinking-2507's generation prompt is
`<|im_start|>assistant\n<think>\n` (DeepSeek-R1's updated template ends the same way), so the model's output
starts *inside* the thinking, with no `<think>`, and later has `</think>`.  (Intern-S1's template instead asks
for `<think>…</think>` in its default thinking system prompt, so the model writes both tags: the usual case.)
An engine that renders the template knows (`Engine.opens_thinking`: llama.cpp renders the GGUF's template;
`prompt_opens_thinking` for a raw prompt), and the splitter then starts in the thinking
(`ReasoningSplitter(opened=True)`).  OpenAI-compatible
servers render the template themselves and, with a reasoning parser (lmdeploy, vLLM), send the thinking as
`reasoning_content`, so nothing is needed there.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar

OPEN, CLOSE = "<think>", "</think>"

# Where an engine puts thinking that arrives outside the text (lmdeploy's `reasoning_content`).  A context
# variable, not an engine attribute: one engine streams many jobs at once, each in its own task.  None (the
# default) = nobody listens, and such thinking is dropped as before.
THINKING_SINK: ContextVar[Callable[[str], None] | None] = ContextVar("thinking_sink", default=None)


def prompt_opens_thinking(prompt: str) -> bool:
    """Whether a rendered prompt ends inside an open `<think>` (the template opened the model's thinking)."""
    return prompt.rstrip().endswith(OPEN)


def _held(text: str, tag: str) -> int:
    """Length of the longest end of `text` that could be the start of `tag` (kept back until it is known)."""
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-size:]):
            return size
    return 0


class ReasoningSplitter:
    """Feed it the pieces of a reply; it returns (kind, text) pairs, kind "thinking" or "answer".

    `<think>` counts only at the start of the output (after blank space), where reasoning models write it:
    an answer that mentions the tag later is left alone.  Text that might be the start of a tag is held back
    until the next piece decides; `finish()` releases what is held.  `opened`: the prompt ended with `<think>`
    (see the module docstring), so the output begins in the thinking (a `<think>` the model repeats anyway is
    dropped).
    """

    def __init__(self, opened: bool = False) -> None:
        self.mode = "opened" if opened else "start"  # "start" (nothing decided yet), "opened", "think", "answer"
        self._buf = ""
        self._trim = False  # strip the blank lines between `</think>` and the answer
        self.thinking = ""
        self.answer = ""
        self.unclosed = False  # the output ended inside `<think>`
        self._out: list[tuple[str, str]] = []

    def _put(self, kind: str, text: str) -> None:
        if kind == "answer" and self._trim:
            text = text.lstrip()
            self._trim = not text
        if not text:
            return
        if kind == "thinking":
            self.thinking += text
        else:
            self.answer += text
        if self._out and self._out[-1][0] == kind:
            self._out[-1] = (kind, self._out[-1][1] + text)
        else:
            self._out.append((kind, text))

    def _take(self) -> list[tuple[str, str]]:
        out, self._out = self._out, []
        return out

    def reasoning(self, text: str) -> None:
        """Thinking that came outside the text (`reasoning_content`); collected by the next `feed`/`drain`."""
        if text:
            self._put("thinking", text)
            self._trim = self._trim or self.mode != "answer"

    def drain(self) -> list[tuple[str, str]]:
        """What `reasoning()` collected since the last call."""
        return self._take()

    def feed(self, piece: str) -> list[tuple[str, str]]:
        self._buf += piece
        while self._buf:
            if self.mode == "start":
                stripped = self._buf.lstrip()
                if stripped.startswith(OPEN):
                    self.mode, self._buf = "think", stripped[len(OPEN) :]
                elif OPEN.startswith(stripped):
                    break  # blank space or part of `<think>`: wait for more
                else:
                    self.mode = "answer"
            elif self.mode == "opened":  # inside the template's `<think>`: only a repeated tag is decided here
                stripped = self._buf.lstrip()
                if stripped.startswith(OPEN):
                    self.mode, self._buf = "think", stripped[len(OPEN) :]
                elif stripped and OPEN.startswith(stripped):
                    break
                else:
                    self.mode = "think"
            elif self.mode == "think":
                end = self._buf.find(CLOSE)
                if end >= 0:
                    self._put("thinking", self._buf[:end])
                    self.mode, self._buf, self._trim = "answer", self._buf[end + len(CLOSE) :], True
                else:
                    keep = _held(self._buf, CLOSE)
                    self._put("thinking", self._buf[: len(self._buf) - keep])
                    self._buf = self._buf[len(self._buf) - keep :]
                    break
            else:
                self._put("answer", self._buf)
                self._buf = ""
        return self._take()

    def finish(self) -> list[tuple[str, str]]:
        """The end of the output: release held text; an open `<think>` marks the reply `unclosed`."""
        if self.mode in ("think", "opened"):
            self.unclosed = True
            self._put("thinking", self._buf)
        elif self._buf.strip():
            self._put("answer", self._buf)
        self._buf = ""
        return self._take()
