"""Console commands for images: `/image <path> [question]` and
`/article <title> [--image PATH]… [--paragraphs N] [--notes PATH]` (a text file of source notes).

They go through exactly the handlers Discord uses (image intake, vision and article handlers), so the
console is a quick way to try captions, visual Q&A and illustrated articles against a vision engine.
Paths may be quoted when they contain spaces.
"""

from __future__ import annotations

import re
import shlex
from typing import Protocol

from handlers.article import ArticleHandler, plan_posts
from handlers.images import Attachment, ImageIntake, VisionHandler
from handlers.text_files import CUT_NOTE, TextFileIntake
from handlers.types import InputError, Reply, Request, Update

from .console_models import CONSOLE_GUILD
from .runtime import Runtime


class Console(Protocol):
    """What these commands use of the console session (bot/console.py's `Console`, which imports this
    module: the protocol keeps the import one-way)."""

    runtime: Runtime
    conversation: str

    def print(self, text: str = "", *, end: str = "\n") -> None: ...

    async def render(self, reply: Reply) -> Update | None: ...


IMAGE_USAGE = "Usage: /image <path> [question]   (quote the path if it has spaces)"
ARTICLE_USAGE = "Usage: /article <title> [--image PATH]... [--paragraphs N] [--notes PATH]"


def split_path(rest: str) -> tuple[str, str]:
    """The first (possibly quoted) word, and the rest of the line untouched (questions keep apostrophes)."""
    rest = rest.strip()
    if rest[:1] in ("'", '"'):
        end = rest.find(rest[0], 1)
        if end > 0:
            return rest[1:end], rest[end + 1 :].strip()
    path, _, tail = rest.partition(" ")
    return path, tail.strip()


async def _attachments(paths: list[str]) -> list[Attachment]:
    out = []
    for path in paths:
        try:
            out.append(Attachment.from_path(path))
        except OSError:
            raise InputError(f"I can't open {path!r}: no such file.") from None
    return out


async def image_command(console: Console, rest: str) -> None:
    path, question = split_path(rest)
    if not path:
        console.print(IMAGE_USAGE)
        return
    runtime = console.runtime
    intake = ImageIntake(runtime.bus, runtime.settings)
    try:
        stored = await intake.ingest(await _attachments([path]))
        reply = await VisionHandler(runtime.chat, intake).ask(
            Request(conversation=console.conversation, text=question, guild=CONSOLE_GUILD), [s.ref for s in stored]
        )
    except InputError as exc:
        console.print(str(exc))
        return
    await console.render(reply)


def parse_article_args(rest: str) -> tuple[str, list[str], int | None, str]:
    """Title words, `--image PATH` (repeatable), `--paragraphs N` and `--notes PATH`."""
    try:
        words = shlex.split(rest)
    except ValueError:
        words = rest.split()
    title: list[str] = []
    images: list[str] = []
    paragraphs: int | None = None
    notes = ""
    it = iter(words)
    for word in it:
        if word in ("--image", "-i"):
            images.append(next(it, ""))
        elif word in ("--notes", "-n"):
            notes = next(it, "")
            if not notes:
                raise InputError(ARTICLE_USAGE)
        elif word in ("--paragraphs", "-p"):
            value = next(it, "")
            if not re.fullmatch(r"\d{1,3}", value):
                raise InputError(ARTICLE_USAGE)
            paragraphs = int(value)
        else:
            title.append(word)
    return " ".join(title), [p for p in images if p], paragraphs, notes


async def article_command(console: Console, rest: str) -> None:
    runtime = console.runtime
    try:
        title, paths, paragraphs, notes_path = parse_article_args(rest)
        if not title:
            console.print(ARTICLE_USAGE)
            return
        stored = await ImageIntake(runtime.bus, runtime.settings).ingest(await _attachments(paths)) if paths else []
        refs = [s.ref for s in stored]
        notes = await TextFileIntake(runtime.settings).read(await _attachments([notes_path])) if notes_path else []
        reply = await ArticleHandler(runtime.chat).ask(
            Request(conversation=console.conversation, text="", guild=CONSOLE_GUILD),
            title,
            refs,
            paragraphs,
            notes=notes,
        )
    except InputError as exc:
        console.print(str(exc))
        return
    final = await console.render(reply)
    for read in (final.data.get("notes") or []) if final is not None else []:
        if read.get("kept", 0) < read.get("total", 0):
            console.print("✂️ " + CUT_NOTE.format(name=read.get("name"), kept=read["kept"], total=read["total"]))
    if final is None or final.kind != "done":
        return
    # The text has streamed; show where the pictures go.
    names = {s.ref: s.filename for s in stored}
    paragraph = 0
    notes = []
    for block in final.data.get("layout", []):
        if block.get("type") == "text":
            paragraph += 1
        elif block.get("type") == "image":
            notes.append(f"  after paragraph {paragraph}: [image] {names.get(block.get('ref'), '?')}")
        elif block.get("type") == "caption":
            notes.append(f"  after paragraph {paragraph}: *{block.get('text')}*")
    if notes:
        console.print("Pictures:" if refs else "Suggested pictures:")
        for note in notes:
            console.print(note)
    posts = plan_posts(final.data.get("layout", []), str(final.data.get("title", "")), refs)
    console.print(f"({len(posts)} Discord messages)")
