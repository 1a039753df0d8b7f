"""`/article title notes:<attachment>` end to end: the project's bot (real discord.py) in the fake Discord (the
notes file served by its CDN), a real worker and Redis, and `ENGINE=openai` against the local OpenAI-compatible
server, which writes the article from the facts it finds in the writing prompt (so what the article says shows
what the model was given).  A cut is told privately; refusals are text_files.py's and nothing is generated."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.fakediscord import Harness
from tests.fakediscord.fixtures import BotRunner
from tests.fakediscord.harness import visible_text
from tests.fakeopenai import FakeOpenAI

pytestmark = pytest.mark.timeout(90)

NOTES = b"# Chengdu\n- Giant pandas live at the Chengdu Research Base.\n- Mapo tofu was first made here.\n"


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    server = await FakeOpenAI().start()
    yield server
    await server.stop()


def writer(body: dict[str, Any]) -> str:
    """An article built from the notes' facts (none without them); the placement and caption answers."""
    prompt = str(body["messages"][-1]["content"])
    if "选择适合插入图像" in prompt or "Answer only with their markers" in prompt:
        return "<Seg0>"
    if "标题" in prompt or "Caption" in prompt:
        return 'Caption: "A panda"'
    facts = [line[2:] for line in prompt.splitlines() if line.startswith("- ")]
    return "\n\n".join(f"Paragraph {i}: {fact}" for i, fact in enumerate(facts)) or "Paragraph 0: no notes."


async def start(bot: BotRunner, fake: FakeOpenAI, **overrides: Any) -> None:
    fake.reply = writer
    await bot.start(engine="openai", openai_base_url=fake.base_url, chat_model="internlm2_5-7b-chat", **overrides)


def article(h: Harness, interaction: Any) -> str:
    """The article as shown, in either RENDER_MODE: one layout (the command's response) in components mode,
    the follow-ups after the response's header in plain mode; private notes left out."""
    shown = [interaction.original, *interaction.followups]
    return h.text([m for m in shown if m is not None and not m.ephemeral])


async def test_the_article_is_written_from_the_notes(
    discord_harness: Harness, discord_bot: BotRunner, fake: FakeOpenAI
) -> None:
    h = discord_harness
    await start(discord_bot, fake)
    interaction = await h.slash(
        "article", {"title": "A weekend in Chengdu", "notes": ("notes.md", NOTES, "text/markdown")}
    )
    done = await h.response(interaction, until=lambda i: "Mapo tofu" in article(h, i), timeout=30)
    text = article(h, done)
    assert "Paragraph 0: Giant pandas live at the Chengdu Research Base." in text
    assert "Paragraph 1: Mapo tofu was first made here." in text
    write = str(fake.requests[0].body["messages"][-1]["content"])
    assert "File: notes.md" in write and h.server.cdn_requests
    assert not [m for m in done.followups if m.ephemeral]  # nothing was cut: no note
    assert h.errors() == []


async def test_cut_notes_are_told_privately(discord_harness: Harness, discord_bot: BotRunner, fake: FakeOpenAI) -> None:
    h = discord_harness
    await start(discord_bot, fake, text_file_max_chars=70)  # the first fact fits, the second does not
    interaction = await h.slash("article", {"title": "Chengdu", "notes": ("notes.md", NOTES, "text/markdown")})
    done = await h.response(
        interaction,
        until=lambda i: any(m.ephemeral for m in i.followups) and "Paragraph 0" in article(h, i),
        timeout=30,
    )
    [note] = [m for m in done.followups if m.ephemeral]
    assert "notes.md" in visible_text(note) and f"70 of its {len(NOTES)}" in visible_text(note)
    assert "Mapo tofu" not in article(h, done)  # the article was there (waited for), without the cut fact
    assert h.errors() == []


@pytest.mark.parametrize(
    ("name", "data", "words"),
    [
        ("notes.txt", b"\x00\x01\x02\x03" * 200, "binary"),
        ("notes.pdf", b"%PDF-1.7 ...", "text files"),
    ],
)
async def test_bad_notes_are_refused_and_nothing_is_written(
    discord_harness: Harness, discord_bot: BotRunner, fake: FakeOpenAI, name: str, data: bytes, words: str
) -> None:
    h = discord_harness
    await start(discord_bot, fake)
    interaction = await h.slash("article", {"title": "Chengdu", "notes": (name, data, "text/plain")})
    done = await h.response(interaction, until=lambda i: i.original is not None and visible_text(i.original))
    assert name in visible_text(done.original) and words in visible_text(done.original)
    assert fake.requests == []
    assert h.errors() == []
