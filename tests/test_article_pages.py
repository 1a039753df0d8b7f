"""Components V2 planning without Discord: the article's pages (bot/article_pages.py) and a reply's layout
(bot/layouts.py) stay within Discord's limits, checked by the fake's own validator on discord.py's payloads,
and split only when a limit makes them."""

from __future__ import annotations

import discord

from bot.article_pages import page_view, plan_pages
from bot.layouts import BLOCK, reply_layout
from tests.fakediscord import rules

NAMES = {f"ref{i}": f"image{i}.png" for i in range(1, 13)}


def paragraph(i: int, size: int = 400) -> dict[str, str]:
    text = f"Paragraph {i}: " + "the river city at night, " * 40
    return {"type": "text", "text": text[:size]}


def valid(view: discord.ui.LayoutView) -> dict[str, object]:
    payload = {"flags": rules.IS_COMPONENTS_V2, "components": view.to_components()}
    rules.check_payload(payload)
    return payload


def test_an_article_with_three_images_is_one_page_with_each_image_after_its_paragraph() -> None:
    layout = [
        paragraph(0),
        {"type": "image", "ref": "ref1"},
        paragraph(1),
        {"type": "image", "ref": "ref2"},
        {"type": "image", "ref": "ref3"},
        paragraph(2),
    ]
    [page] = plan_pages(layout, "## Title", NAMES)
    kinds = ["text" if isinstance(i, str) else [n for _, n in i] for i in page.items]
    assert kinds == ["text", "text", ["image1.png"], "text", ["image2.png", "image3.png"], "text"]
    assert [name for _, name in page.files] == ["image1.png", "image2.png", "image3.png"]
    valid(page_view(page))


def test_a_long_article_is_split_at_4000_characters_only() -> None:
    layout = [paragraph(i, 900) for i in range(10)]
    layout.insert(5, {"type": "image", "ref": "ref1"})
    pages = plan_pages(layout, "## Title", NAMES)
    assert len(pages) == 3 and all(p.chars <= 4000 for p in pages)
    assert sum(p.chars for p in pages) == len("## Title") + 10 * 900  # nothing lost
    for page in pages:
        valid(page_view(page))
    with_image = [i for i, p in enumerate(pages) if p.files]
    assert len(with_image) == 1 and "Paragraph 4" in str(pages[with_image[0]].items)  # after its paragraph


def test_galleries_hold_ten_and_a_message_ten_files() -> None:
    layout = [paragraph(0)] + [{"type": "image", "ref": f"ref{i}"} for i in range(1, 13)]
    pages = plan_pages(layout, "", NAMES)
    assert [len(p.files) for p in pages] == [10, 2]
    for page in pages:
        valid(page_view(page))


def test_many_short_paragraphs_stay_within_40_components() -> None:
    pages = plan_pages([paragraph(i, 30) for i in range(60)], "## Title", NAMES)
    assert len(pages) == 2 and all(p.components <= 40 for p in pages)
    for page in pages:
        valid(page_view(page))


def test_missing_images_are_left_out() -> None:
    [page] = plan_pages([paragraph(0), {"type": "image", "ref": "gone"}], "", NAMES)
    assert page.files == [] and all(isinstance(i, str) for i in page.items)


def test_a_reply_of_many_blocks_merges_the_oldest_to_fit_40_components() -> None:
    text = f"\n\n{BLOCK}\n\n".join(f"step {i}" for i in range(50))
    view = reply_layout(text, None, ["thinking.txt"])
    payload = valid(view)
    assert view.total_children_count <= 40
    shown = [c["content"] for c in payload["components"][0]["components"] if c["type"] == 10]  # type: ignore[index]
    assert shown[-1] == "step 49" and "step 0" in shown[0] and "".join(shown).count("step") == 50


def test_a_text_without_marks_is_one_plain_text_display() -> None:
    assert reply_layout("\n\nkept exactly\n").to_components() == [{"type": 10, "content": "\n\nkept exactly\n"}]
