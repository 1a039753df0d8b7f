"""`Renderer`: turns a reply's `Update`s into the visible body of its Discord messages.

The default shows the answer text as it grows.  The agent and image cogs subclass it to show `step`
updates their own way (agent tool calls, article stages): override `render`, keep your own state, return
the whole body to show, or None to leave the display unchanged.  `blocks` is set when the reply is rendered
as a Components V2 layout (RENDER_MODE=components): parts that belong apart are joined with `block_join`,
which puts a separator between them there (bot/layouts.py) and is a blank line in a plain message.

A reasoning model's thinking (REASONING_DISPLAY) is a spoiler line above the answer (`spoiler`), or, for
`file`, a short "thinking" line while nothing else is there and `thinking_file()` for the streamer to
attach as `thinking.txt` to the final message.
"""

from __future__ import annotations

import re

from handlers.types import Update

from . import i18n
from .layouts import BLOCK

# A reasoning model's thinking is shown as one subtext line under a spoiler, clipped to its newest part, so
# the answer keeps its room (a message holds 2,000 characters) and the reader opens it only if curious.
THINKING_SHOWN = 300
NO_ANSWER = i18n.t("no_answer_thinking")  # English; replies use the reader's language


def thinking_line(thinking: str, limit: int = THINKING_SHOWN) -> str:
    """`-# 💭 ||…thinking||`: whitespace collapsed to one line (subtext is one line), its newest `limit`
    characters, with `|` and backticks replaced so the model's text cannot end the spoiler or open a code
    block that the message splitter would keep whole."""
    flat = re.sub(r"\s+", " ", thinking).strip().replace("|", "¦").replace("`", "ˋ")
    if len(flat) > limit:
        flat = "…" + flat[-limit:].lstrip()
    return f"-# 💭 ||{flat}||" if flat else ""


class Renderer:
    """Turns updates into the reply's visible body.  The default shows the answer text as it grows.

    Subclass and override `render` to show `step` updates (agent tool calls, article stages): keep
    your own state, return the whole body to show, or None to leave the display unchanged.  `finish`
    gives the final body (the streamer adds the stopped/error notes itself).
    """

    def __init__(self, lang: str = i18n.EN) -> None:
        self.lang = lang
        self.answer = ""
        self.thinking = ""  # a reasoning model's thinking so far (never part of `answer`)
        self.unclosed = False  # it never closed `<think>`: no answer came
        self.display = "spoiler"  # REASONING_DISPLAY, as the updates carry it
        self.blocks = False  # rendered as a Components V2 layout: parts apart (see the module docstring)

    def block_join(self, parts: list[str]) -> str:
        """Parts that belong apart: a separator between them in a layout, a blank line in plain text."""
        return f"\n\n{BLOCK}\n\n".join(parts) if self.blocks else "\n\n".join(parts)

    def thinking_file(self) -> str | None:
        """The thinking to attach as a file (REASONING_DISPLAY=file), once there is any."""
        return self.thinking if self.display == "file" and self.thinking.strip() else None

    def render(self, update: Update) -> str | None:
        if update.kind == "thinking":
            self.thinking = str(update.data.get("thinking", ""))
            self.display = str(update.data.get("display") or self.display)
            self.answer = update.text
        elif update.kind in ("text", "done", "error"):
            self.answer = update.text
            if update.kind == "done":
                self.display = str(update.data.get("display") or self.display)
                if update.data.get("display", "spoiler") != "hidden":
                    kept = update.data.get("thinking")
                    self.thinking = kept if isinstance(kept, str) else self.thinking
                # thought but said nothing (never closed `<think>`, or closed it and stopped): say so
                self.unclosed = bool(
                    update.data.get("unclosed_thinking") or (update.data.get("thinking") and not update.text.strip())
                )
        elif update.kind == "restart":
            self.answer = self.thinking = ""
            self.unclosed = False
        else:
            return None
        return self.body()

    def body(self) -> str:
        """The thinking line (if any), then the answer, or the no-answer note for a model that never
        closed `<think>`."""
        answer = self.answer if self.answer.strip() or not self.unclosed else i18n.t("no_answer_thinking", self.lang)
        if self.display == "file":  # the thinking goes into thinking.txt; meanwhile say that it thinks
            line = f"-# {i18n.t('thinking', self.lang)}" if self.thinking.strip() and not answer.strip() else ""
        else:
            line = thinking_line(self.thinking)
        if line and answer:
            return self.block_join([line, answer]) if self.blocks else f"{line}\n{answer}"
        return line or answer

    def finish(self, update: Update) -> str:
        body = self.render(update)
        return self.answer if body is None else body
