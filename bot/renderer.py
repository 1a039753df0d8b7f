"""`Renderer`: turns a reply's `Update`s into the visible body of its Discord messages.

The default shows the answer text as it grows.  The agent and image cogs subclass it to show `step`
updates their own way (agent tool calls, article stages): override `render`, keep your own state, return
the whole body to show, or None to leave the display unchanged.
"""

from __future__ import annotations

from handlers.types import Update

from . import i18n


class Renderer:
    """Turns updates into the reply's visible body.  The default shows the answer text as it grows.

    Subclass and override `render` to show `step` updates (agent tool calls, article stages): keep
    your own state, return the whole body to show, or None to leave the display unchanged.  `finish`
    gives the final body (the streamer adds the stopped/error notes itself).
    """

    def __init__(self, lang: str = i18n.EN) -> None:
        self.lang = lang
        self.answer = ""

    def render(self, update: Update) -> str | None:
        if update.kind in ("text", "done", "error"):
            self.answer = update.text
        elif update.kind == "restart":
            self.answer = ""
        else:
            return None
        return self.answer

    def finish(self, update: Update) -> str:
        body = self.render(update)
        return self.answer if body is None else body
