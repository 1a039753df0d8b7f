"""Split a reasoning model's thinking from its answer.

Reasoning models (InternLM3 and Intern-S1 in thinking mode, DeepSeek-R1 style) write their thinking first,
between `<think>` and `</think>`, then the answer.  Served by lmdeploy with a reasoning parser, the thinking
arrives separately as `reasoning_content` in the streamed deltas; the OpenAI engine folds those back into a
`<think>…</think>` prefix (models/engines/openai.py), so every engine's output has one shape and this module
is the one place that takes it apart.

Only a `<think>` at the very start (after whitespace) opens thinking: the same characters later in an answer
are the answer's text.  A model that never closes `<think>` leaves `closed=False` and an empty answer — the
front ends then show the thinking with a note that no answer came.  The thinking never enters history
(handlers/chat.py records `answer` only).
"""

from __future__ import annotations

from dataclasses import dataclass

OPEN = "<think>"
CLOSE = "</think>"


@dataclass(frozen=True)
class Split:
    """A model output taken apart: its thinking (may be empty), the answer, and whether thinking ended."""

    thinking: str
    answer: str
    closed: bool = True

    @property
    def unanswered(self) -> bool:
        """Thinking that never ended (or ended with nothing after it): there is no answer to show."""
        return bool(self.thinking.strip()) and not self.answer.strip()


def split(text: str) -> Split:
    """Take `text` apart; text without a leading `<think>` is all answer.  A partial `<think` at the very
    start of a stream (the tag cut across two deltas) is held back as empty thinking, not shown as answer."""
    stripped = text.lstrip()
    if not stripped.startswith(OPEN):
        if stripped and OPEN.startswith(stripped):
            return Split("", "", closed=False)  # "<thi" so far: wait for the rest of the tag
        return Split("", text)
    body = stripped[len(OPEN):]
    end = body.find(CLOSE)
    if end < 0:
        for cut in range(len(CLOSE) - 1, 0, -1):  # a closing tag cut across deltas is not thinking text
            if body.endswith(CLOSE[:cut]):
                body = body[:-cut]
                break
        return Split(body.strip(), "", closed=False)
    return Split(body[:end].strip(), body[end + len(CLOSE):].lstrip())


def answer_of(text: str) -> str:
    """The answer alone (what history keeps)."""
    return split(text).answer
