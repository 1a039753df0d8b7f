"""Text files attached to a chat message (source code, notes, logs, CSV, JSON) — read into the prompt.

Why here and not in the worker: the bot is the only part that talks to Discord, so it checks the declared
size, downloads, decodes and budgets the file; the worker only sees text inside the user's message, where
`models/jobs/chat.py: build_messages` makes any control tokens in it inert like every other user text.

No Discord types here: a front end passes `handlers.images.Attachment`s (name, declared size, MIME type,
how to fetch).  Every refusal is a `TextFileRefused` (an `InputError`) with a `code` naming its text in
`MESSAGES`, so bot/ can show it in the person's language, as it does for images.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePath

from models.settings import Settings
from models.untrusted import fence_for  # the same rule as the worker's prompts (file and note text)

from .images import Attachment
from .types import CodedRefusal, InputError

# Extension → the language tag of the fenced block (what Discord and models recognise).
TEXT_EXTENSIONS: dict[str, str] = {
    ".txt": "",
    ".md": "markdown",
    ".log": "",
    ".csv": "csv",
    ".json": "json",
    ".py": "python",
    ".js": "javascript",
    ".ts": "typescript",
    ".c": "c",
    ".h": "c",
    ".cpp": "cpp",
    ".java": "java",
    ".go": "go",
    ".rs": "rust",
    ".sh": "bash",
    ".toml": "toml",
    ".yaml": "yaml",
    ".yml": "yaml",
    ".ini": "ini",
    ".html": "html",
    ".css": "css",
    ".sql": "sql",
}
ACCEPTED = ", ".join(sorted(TEXT_EXTENSIONS))

MESSAGES: dict[str, str] = {
    "unknown_type": "I can't read “{name}”: I take images (PNG, JPEG, WebP, GIF) and text files ({accepted}).",
    "too_large": "“{name}” is {size_kb:.0f} KB; the limit for a text file is {limit_kb:.0f} KB. "
    "Please send a smaller file or paste the part that matters.",
    "too_many": "That's {count} text files — I read up to {limit} at a time. Please send fewer.",
    "empty": "“{name}” is an empty file, so there is nothing to read.",
    "binary": "“{name}” looks like a binary file, not text, so I can't read it.",
    "encoding": "I couldn't read “{name}”: it is not UTF-8 or UTF-16 text. Please save it as UTF-8 and try again.",
    "download": "I couldn't download “{name}”. Please try again.",
}
CUT_NOTE = "“{name}” is long: I read the first {kept:,} of its {total:,} characters."

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")  # C0 controls other than tab, newlines, form feed


class TextFileRefused(CodedRefusal):
    """A refused text file; `code` names the message in `MESSAGES` (for translations)."""

    MESSAGES = MESSAGES


@dataclass
class TextFile:
    """A decoded file as it goes into the prompt."""

    name: str
    text: str  # what was kept
    total_chars: int  # the whole file's length
    encoding: str

    @property
    def cut(self) -> bool:
        return len(self.text) < self.total_chars


def is_text_file(name: str) -> bool:
    """Whether `name`'s extension is one this intake reads (the MIME type Discord guesses is not trusted)."""
    return PurePath(name).suffix.lower() in TEXT_EXTENSIONS


def decode(data: bytes, name: str) -> tuple[str, str]:
    """`(text, encoding)`: UTF-8 (with or without BOM) or UTF-16 with a BOM; else a `TextFileRefused`.

    A BOM decides first, because UTF-16 text is full of NUL bytes; without one, a NUL byte or a run of
    control characters means binary, and anything that is not valid UTF-8 is refused rather than guessed."""
    if not data:
        raise TextFileRefused("empty", name=name)
    for bom, encoding in (
        (codecs.BOM_UTF8, "utf-8-sig"),
        (codecs.BOM_UTF16_LE, "utf-16-le"),
        (codecs.BOM_UTF16_BE, "utf-16-be"),
    ):
        if data.startswith(bom):
            try:
                text = data[len(bom) :].decode(encoding.removesuffix("-sig"))
            except UnicodeDecodeError:
                raise TextFileRefused("encoding", name=name) from None
            break
    else:
        if b"\x00" in data:
            raise TextFileRefused("binary", name=name)
        try:
            text, encoding = data.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            raise TextFileRefused("encoding", name=name) from None
    if "\x00" in text or len(_CONTROL.findall(text[:4096])) > max(8, len(text[:4096]) // 100):
        raise TextFileRefused("binary", name=name)
    if not text.strip():
        raise TextFileRefused("empty", name=name)
    return text, encoding


def render(files: Sequence[TextFile]) -> str:
    """The files as they go into the user's message: each a fenced block headed by its name."""
    blocks = []
    for f in files:
        fence = fence_for(f.text)
        lang = TEXT_EXTENSIONS.get(PurePath(f.name).suffix.lower(), "")
        note = f"\n[cut here: {f.total_chars - len(f.text):,} more characters not shown]" if f.cut else ""
        blocks.append(f"File: {f.name}\n{fence}{lang}\n{f.text}\n{fence}{note}")
    return "\n\n".join(blocks)


class TextFileIntake:
    """Checks, downloads, decodes and budgets a message's text files."""

    def __init__(self, settings: Settings) -> None:
        self.max_bytes = settings.text_file_max_bytes
        self.max_chars = settings.text_file_max_chars
        self.max_files = settings.text_files_per_message

    def check(self, attachments: Sequence[Attachment]) -> None:
        """Refuse from what is declared (type, count, size) before anything is downloaded."""
        if len(attachments) > self.max_files:
            raise TextFileRefused("too_many", count=len(attachments), limit=self.max_files)
        for a in attachments:
            if not is_text_file(a.filename):
                raise TextFileRefused("unknown_type", name=a.filename, accepted=ACCEPTED)
            if a.size > self.max_bytes:
                raise TextFileRefused(
                    "too_large", name=a.filename, size_kb=a.size / 1000, limit_kb=self.max_bytes / 1000
                )
            if a.size == 0:
                raise TextFileRefused("empty", name=a.filename)

    async def read(self, attachments: Sequence[Attachment], *, whole: bool = False) -> list[TextFile]:
        """Check, then download and decode each file; the character budget is shared in order, so what
        does not fit is cut (the file's `cut` says so) and files past the budget keep nothing.  `whole=True`
        keeps every file whole (each is still within TEXT_FILE_MAX_BYTES): `/agent` puts them in its
        sandbox, not in a prompt."""
        self.check(attachments)
        files: list[TextFile] = []
        left = self.max_bytes * len(attachments) if whole else self.max_chars
        for a in attachments:
            try:
                data = await a.fetch()
            except InputError:
                raise
            except Exception:
                raise TextFileRefused("download", name=a.filename) from None
            if len(data) > self.max_bytes:  # the declared size was wrong: the real length decides
                raise TextFileRefused(
                    "too_large", name=a.filename, size_kb=len(data) / 1000, limit_kb=self.max_bytes / 1000
                )
            text, encoding = decode(data, a.filename)
            text = text.replace("\r\n", "\n")
            kept = text[: max(0, left)]
            left -= len(kept)
            files.append(TextFile(a.filename, kept, len(text), encoding))
        return files
