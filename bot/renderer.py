"""`Renderer`: turns a reply's `Update`s into the visible body of its Discord messages.

The default shows the answer text as it grows.  The agent and image cogs subclass it to show `step`
updates their own way (agent tool calls, article stages): override `render`, keep your own state, return
the whole body to show, or None to leave the display unchanged.
"""

from __future__ import annotations

import re

from handlers.types import Update

from . import i18n

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

    def render(self, update: Update) -> str | None:
        if update.kind == "thinking":
            self.thinking = str(update.data.get("thinking", ""))
            self.answer = update.text
        elif update.kind in ("text", "done", "error"):
            self.answer = update.text
            if update.kind == "done":
                if update.data.get("display", "spoiler") != "hidden":
                    kept = update.data.get("thinking")
                    self.thinking = kept if isinstance(kept, str) else self.thinking
                # thought but said nothing (never closed `<think>`, or closed it and stopped): say so
                self.unclosed = bool(update.data.get("unclosed_thinking")
                                     or (update.data.get("thinking") and not update.text.strip()))
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
        line = thinking_line(self.thinking)
        return f"{line}\n{answer}" if line and answer else line or answer

    def finish(self, update: Update) -> str:
        body = self.render(update)
        return self.answer if body is None else body
