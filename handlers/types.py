"""The types every front end and handler shares: a `Request` (what a person asked), a `Reply` (the submitted
job, to follow or stop), the `Update`s a reply yields, and `InputError` (a friendly refusal).

They know nothing of Discord or Redis; `handlers.chat.ChatHandler` produces them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

from models.protocol import Job

UpdateKind = Literal["queued", "no_worker", "started", "text", "thinking", "step", "file", "restart", "done", "error"]


@dataclass
class Request:
    """One thing a person asked, independent of where they asked it."""

    conversation: str
    text: str
    user_name: str | None = None  # set in shared channels so the model can tell speakers apart
    images: list[str] = field(default_factory=list)  # blob refs, already validated and stored
    guild: int | None = None
    channel: int | None = None
    kind: str = "chat"
    payload: dict[str, Any] = field(default_factory=dict)  # kind-specific extras
    record: bool = True  # write the turns into history
    # Text files read into the message (handlers/text_files.py), already within TEXT_FILE_MAX_CHARS: not
    # counted against MAX_INPUT_CHARS, which limits what the person typed.
    files: str = ""
    # Kept in the user's turn in history (`Turn.meta`): e.g. /agent's task and file blob refs under "payload",
    # which Regenerate re-sends (`ChatHandler.regenerate`) because they are not part of the turn's text.
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def content(self) -> str:
        """The user's turn as the model sees it: the typed text, then any text files."""
        return "\n\n".join(part for part in (self.text, self.files) if part)


@dataclass
class Update:
    """Something the front end should show."""

    kind: UpdateKind
    text: str = ""  # the whole answer so far (for "text", "done", "restart")
    attempt: int = 1
    position: int | None = None
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def final(self) -> bool:
        return self.kind in ("done", "error")


@dataclass
class Reply:
    """A submitted job, as the front end holds it (to follow it, or to press Stop)."""

    job: Job
    request: Request
    submitted: float = field(default_factory=time.monotonic)
    # The history generation the job was built from (see handlers/history.py): the answer is recorded only
    # if the conversation was not reset since.  None: no check (nothing to record, or an older record).
    generation: int | None = None
    # How the front end shows it (RENDER_MODE, or the server's/channel's `/settings` choice), read with the
    # request's settings; "" = the process default (a reply reopened after a restart: bot/resume.py decides).
    render_mode: str = ""
    # A line to show before the answer (e.g. a regenerated /agent task whose file has expired): `follow` yields
    # it first as a note step.
    notice: str = ""


class InputError(ValueError):
    """A request refused before it reached a worker; the message is friendly and shown as is."""


class CodedRefusal(InputError):
    """A refusal whose `code` names its English text in the subclass's `MESSAGES`, so a front end can show it
    translated (`params` fill the placeholders); a user-chosen `name` is cut to keep replies short."""

    MESSAGES: dict[str, str] = {}

    def __init__(self, code: str, **params: Any) -> None:
        if isinstance(params.get("name"), str) and len(params["name"]) > 80:
            params["name"] = params["name"][:77] + "…"
        self.code = code
        self.params = params
        super().__init__(self.MESSAGES[code].format(**params))
