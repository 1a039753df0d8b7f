"""`/article`: what an illustrated-article request means, and how its result is cut into chat messages.

The worker's `article` job (models/jobs/article.py) returns a layout — paragraphs, the user's images placed
after some of them, or suggested picture captions.  `plan_posts` turns that layout into a sequence of
posts that each fit one Discord message (2,000 characters, one image attached below its text), with no
Discord types, so the console and tests use the same plan.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from .chat import ChatHandler, InputError, Reply, Request
from .images import ImageRefused
from .text_files import TextFile, render

MAX_TITLE_CHARS = 300
MAX_PARAGRAPHS = 20
DISCORD_MESSAGE_LIMIT = 2000

NO_TITLE = "Please give the article a title (for example: /article title: A weekend in Chengdu)."
LONG_TITLE = "That title is {n} characters long; please keep it under {limit}."
BAD_PARAGRAPHS = "The paragraph count must be between 1 and {limit}."


@dataclass
class Post:
    """One message of a finished article: text (may be empty) and at most one image below it."""

    text: str = ""
    image: str | None = None  # blob ref
    image_number: int | None = None  # 1-based: the user's image1..image4


@dataclass
class ArticlePlan:
    posts: list[Post] = field(default_factory=list)


class ArticleHandler:
    def __init__(self, chat: ChatHandler) -> None:
        self.chat = chat

    async def ask(
        self,
        request: Request,
        title: str,
        refs: Sequence[str] = (),
        paragraphs: int | None = None,
        notes: Sequence[TextFile] = (),
    ) -> Reply:
        """Validate, record the request in the conversation, and submit an `article` job.

        `notes` (text files read by `TextFileIntake`, already within TEXT_FILE_MAX_CHARS) are the article's
        source material: the worker puts them in the writing prompt within the model's context
        (models/jobs/article.py), and they stay in the conversation like a chat message's files."""
        title = " ".join(title.split())
        if not title:
            raise InputError(NO_TITLE)
        if len(title) > MAX_TITLE_CHARS:
            raise InputError(LONG_TITLE.format(n=len(title), limit=MAX_TITLE_CHARS))
        if paragraphs is not None and not 1 <= paragraphs <= MAX_PARAGRAPHS:
            raise InputError(BAD_PARAGRAPHS.format(limit=MAX_PARAGRAPHS))
        limit = self.chat.settings.max_images_per_message
        if len(refs) > limit:
            raise ImageRefused("too_many", count=len(refs), limit=limit)
        if refs:
            workers = await self.chat.bus.alive_workers()
            if workers and not any(w.vision for w in workers):
                raise ImageRefused("no_vision")
        request.kind = "article"
        request.text = (
            f"Write an illustrated article titled “{title}”"
            + (f" in {paragraphs} paragraphs" if paragraphs else "")
            + (f", from the attached notes ({', '.join(f.name for f in notes)})" if notes else "")
            + "."
        )
        request.images = list(refs)
        request.files = render(notes) if notes else request.files
        request.payload = {**request.payload, "title": title, "paragraphs": paragraphs, "images": list(refs)}
        if notes:
            request.payload["notes"] = [{"name": f.name, "text": f.text, "total": f.total_chars} for f in notes]
        return await self.chat.ask(request)


def split_text(text: str, limit: int) -> list[str]:
    """Pieces of at most `limit` characters, cut after a sentence end or a space when possible."""
    pieces: list[str] = []
    while len(text) > limit:
        window = text[:limit]
        cut = max((m.end() for m in re.finditer(r"[.!?。！？;；]\s*", window)), default=0)
        if cut < limit // 2:
            cut = window.rfind(" ") + 1 if window.rfind(" ") > limit // 2 else limit
        pieces.append(text[:cut].rstrip())
        text = text[cut:].lstrip()
    if text:
        pieces.append(text)
    return pieces


def shown_blocks(layout: Sequence[dict[str, Any]]) -> Iterator[tuple[str, Any]]:
    """The worker's layout as what is shown, in order: ("text", paragraph or italic caption suggestion) and
    ("image", block) — one reading for the plain posts here and the Components V2 pages (bot/article_pages.py)."""
    for block in layout:
        kind = block.get("type")
        if kind == "text" and block.get("text"):
            yield "text", str(block["text"])
        elif kind == "caption" and block.get("text"):
            yield "text", f"*🖼️ {block['text']}*"
        elif kind == "image" and block.get("ref"):
            yield "image", block


def plan_posts(
    layout: Sequence[dict[str, Any]],
    title: str = "",
    image_refs: Sequence[str] = (),
    limit: int = DISCORD_MESSAGE_LIMIT,
) -> list[Post]:
    """The article as messages: paragraphs joined up to `limit` characters, each image attached to the
    message that ends with the paragraph it follows, caption suggestions in italics."""
    numbers = {ref: i + 1 for i, ref in enumerate(image_refs)}
    posts: list[Post] = []
    current: list[str] = [f"## {title}"] if title else []

    def size(parts: list[str]) -> int:
        return len("\n\n".join(parts))

    def flush(image: str | None = None, number: int | None = None) -> None:
        nonlocal current
        if current or image:
            posts.append(Post("\n\n".join(current), image, (number or numbers.get(image)) if image else None))
        current = []

    def add(text: str) -> None:
        for piece in split_text(text, limit):
            if current and size([*current, piece]) > limit:
                flush()
            current.append(piece)

    for kind, shown in shown_blocks(layout):
        if kind == "text":
            add(shown)
        else:  # several images after one paragraph: one post each
            number = shown.get("number")
            flush(str(shown["ref"]), number if isinstance(number, int) else None)
    flush()
    return posts
