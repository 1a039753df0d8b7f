"""Components V2 layouts (discord.py's `LayoutView`): what a reply looks like with RENDER_MODE=components.

Why a module of its own: Discord's Components V2 rules are strict and unlike plain messages (docs.discord.com,
Component Reference).  A message with the IS_COMPONENTS_V2 flag (discord.py sets it for a `LayoutView`) cannot
carry `content` or embeds, its text lives in text displays (4,000 characters across the message), it holds at
most 40 components counting nested ones, a media gallery holds 1-10 items, an uploaded file shows only where
a component references it (`attachment://name`), a Section needs an accessory (a button or a thumbnail), and the
flag can never be removed again, so every later edit must send a layout, never `view=None`.  Everything that
builds or rebuilds such a message goes through here, so those rules are kept in one place.

A reply's text may hold `BLOCK` marks (renderers put them between parts that belong apart: an agent's steps,
a thinking line and the answer).  Each block becomes a text display, with separators between, inside a
container; a text without marks is one plain text display, as close to an ordinary message as V2 allows.
"""

from __future__ import annotations

from collections.abc import Sequence

import discord

V2_TEXT_LIMIT = 4000  # characters across a message's text displays
V2_MAX_COMPONENTS = 40  # components in a message, nested ones included
MAX_GALLERY_ITEMS = 10
BLOCK = "\x1e"  # a renderer's block break (ASCII record separator): a separator between two text displays
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".gif", ".webp")


def plain(text: str) -> str:
    """The text without block marks (what a plain message shows)."""
    return text.replace(f"\n\n{BLOCK}\n\n", "\n\n").replace(BLOCK, "")


def blocks_of(text: str) -> list[str]:
    """The non-empty blocks of a text, without the blank lines around the marks (a text without marks is
    kept exactly: it is what a plain message would hold)."""
    if BLOCK not in text:
        return [text] if text.strip() else []
    return [block.strip("\n") for block in text.split(BLOCK) if block.strip()]


def _fit(blocks: list[str], room: int) -> list[str]:
    """At most `room` blocks: the oldest are merged into one (a long agent run of tiny steps would otherwise
    need more than Discord's 40 components)."""
    if len(blocks) <= room:
        return blocks
    keep = max(room - 1, 0)
    head = blocks[: len(blocks) - keep]
    return ["\n\n".join(head), *blocks[len(blocks) - keep :]]


def attachment_items(names: Sequence[str]) -> list[discord.ui.Item[discord.ui.LayoutView]]:
    """Components that show uploaded files (V2 shows none by itself): images in one media gallery (1-10),
    any other file as a file component."""
    images = [n for n in names if n.lower().endswith(IMAGE_EXTENSIONS)]
    items: list[discord.ui.Item[discord.ui.LayoutView]] = []
    for start in range(0, len(images), MAX_GALLERY_ITEMS):
        chunk = images[start : start + MAX_GALLERY_ITEMS]
        items.append(discord.ui.MediaGallery(*(discord.MediaGalleryItem(f"attachment://{n}") for n in chunk)))
    items += [discord.ui.File(f"attachment://{n}") for n in names if n not in images]
    return items


def reply_layout(text: str, buttons: discord.ui.View | None = None, files: Sequence[str] = ()) -> discord.ui.LayoutView:
    """One reply message as a layout: its text (see the module docstring), the uploaded `files` shown, and
    the reply's buttons (Stop / Regenerate) in an action row at the bottom."""
    view = discord.ui.LayoutView(timeout=None)
    shown = attachment_items(files)
    buttons_items = list(buttons.children) if buttons is not None else []
    room = V2_MAX_COMPONENTS - len(shown) - (1 + len(buttons_items) if buttons_items else 0)
    blocks = blocks_of(text)
    if len(blocks) <= 1:
        if blocks:
            view.add_item(discord.ui.TextDisplay(blocks[0]))
    else:
        container = discord.ui.Container()
        for index, block in enumerate(_fit(blocks, room // 2)):  # the container, n displays, n-1 separators
            if index:
                container.add_item(discord.ui.Separator())
            container.add_item(discord.ui.TextDisplay(block))
        view.add_item(container)
    for item in shown:
        view.add_item(item)
    if buttons_items:
        row: discord.ui.ActionRow[discord.ui.LayoutView] = discord.ui.ActionRow()
        for item in buttons_items:
            buttons.remove_item(item)  # type: ignore[union-attr]  # an item belongs to one parent
            row.add_item(item)
        view.add_item(row)
    return view


def without_buttons(message: discord.Message) -> discord.ui.LayoutView | None:
    """What to send as `view=` to take the buttons off `message`: None for a plain message (its content
    stays); for a V2 message its own layout rebuilt without action rows, since `view=None` would erase the
    text and attachments along with the buttons."""
    if not message.flags.components_v2:
        return None
    view = discord.ui.LayoutView.from_message(message, timeout=None)
    for item in view.children:
        if isinstance(item, discord.ui.ActionRow):
            view.remove_item(item)
    return view


def visible_text(view: discord.ui.LayoutView) -> str:
    """The text a layout shows (its text displays, in order), e.g. for logs and checks."""
    return "\n\n".join(item.content for item in view.walk_children() if isinstance(item, discord.ui.TextDisplay))
