"""The illustrated article (`/article`) as Components V2 messages (RENDER_MODE=components).

One message when it fits: a container holding the title, each paragraph as a text display, and each image in a
media gallery right after the paragraph the model chose for it (the images are uploaded with the message and
referenced as `attachment://name`: a V2 message shows no attachment by itself).  The article is split across
messages only where Discord's limits make it (bot/layouts.py): 4,000 characters of text, 40 components and
10 attachments a message, 10 items a gallery.  `plan_pages` is pure (tested without Discord); `page_view`
builds the layout of one page.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import discord

from handlers.article import shown_blocks, split_text

from .layouts import MAX_GALLERY_ITEMS, V2_MAX_COMPONENTS, V2_TEXT_LIMIT

MAX_FILES = 10  # attachments a message may carry

Gallery = list[tuple[str, str]]  # (blob ref, file name) per image


@dataclass
class Page:
    """One message of the article: text displays and galleries, in reading order."""

    items: list[str | Gallery] = field(default_factory=list)
    chars: int = 0

    @property
    def components(self) -> int:
        return 1 + len(self.items)  # the container and its children (gallery items are not components)

    @property
    def files(self) -> list[tuple[str, str]]:
        """The distinct (ref, name) pairs its galleries show, in order: what the message uploads."""
        seen: dict[str, str] = {}
        for item in self.items:
            if isinstance(item, list):
                for ref, name in item:
                    seen.setdefault(name, ref)
        return [(ref, name) for name, ref in seen.items()]


def plan_pages(
    layout: Sequence[Mapping[str, Any]],
    header: str,
    names: Mapping[str, str],
    *,
    text_limit: int = V2_TEXT_LIMIT,
    max_components: int = V2_MAX_COMPONENTS,
    max_files: int = MAX_FILES,
) -> list[Page]:
    """The article's pages: `layout` is the job's blocks ({"type": "text"|"caption"|"image", ...}), `header`
    the first text (title and notes), `names` the file name of each image ref that could be loaded (others
    are left out).  Consecutive images share a gallery; a new page starts only when one more item would
    break a limit."""
    pages = [Page()]

    def add_text(text: str) -> None:
        for piece in split_text(text, text_limit):
            page = pages[-1]
            if page.items and (page.chars + len(piece) > text_limit or page.components + 1 > max_components):
                page = Page()
                pages.append(page)
            page.items.append(piece)
            page.chars += len(piece)

    def add_image(ref: str) -> None:
        name = names.get(ref)
        if name is None:
            return
        page = pages[-1]
        on_page = {n for _, n in page.files}
        new_file = name not in on_page
        if new_file and len(on_page) + 1 > max_files:
            page = Page()
            pages.append(page)
        last = page.items[-1] if page.items else None
        if isinstance(last, list) and len(last) < MAX_GALLERY_ITEMS:
            last.append((ref, name))
            return
        if page.components + 1 > max_components:
            page = Page()
            pages.append(page)
        page.items.append([(ref, name)])

    if header.strip():
        add_text(header)
    for kind, shown in shown_blocks(layout):
        if kind == "text":
            add_text(shown)
        else:
            add_image(str(shown["ref"]))
    return [page for page in pages if page.items]


def page_view(page: Page) -> discord.ui.LayoutView:
    """One page as a layout: a container of text displays and media galleries."""
    container: discord.ui.Container[discord.ui.LayoutView] = discord.ui.Container()
    for item in page.items:
        if isinstance(item, str):
            container.add_item(discord.ui.TextDisplay(item))
        else:
            container.add_item(
                discord.ui.MediaGallery(*(discord.MediaGalleryItem(f"attachment://{name}") for _, name in item))
            )
    view = discord.ui.LayoutView(timeout=None)
    view.add_item(container)
    return view
