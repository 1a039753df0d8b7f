"""Images end to end: the project's bot (real discord.py) in the fake Discord, a real worker and Redis, and the
`openai` engine talking to a local OpenAI-compatible server that decodes the images it receives."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from typing import Any

import pytest
from PIL import Image

from handlers.history import conversation_id
from models.jobs.chat import CAPTION_PROMPT
from tests.fakediscord import Harness
from tests.fakediscord.fixtures import BotRunner
from tests.fakediscord.harness import visible_text
from tests.fakeopenai import FakeOpenAI

pytestmark = pytest.mark.timeout(90)

ARTICLE = "\n".join(f"Paragraph {i}: " + "the river city at night, " * 8 for i in range(5))


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    server = await FakeOpenAI().start()
    yield server
    await server.stop()


def image(colour: str, size: tuple[int, int] = (320, 200), fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, fmt)
    return buf.getvalue()


async def start(bot: BotRunner, fake: FakeOpenAI, **overrides: Any) -> None:
    await bot.start(
        engine="openai",
        openai_base_url=fake.base_url,
        chat_model="internlm2_5-7b-chat",
        vision_model="internlm-xcomposer2d5-7b",
        **overrides,
    )


async def test_image_on_a_mention(discord_harness: Harness, discord_bot: BotRunner, fake: FakeOpenAI) -> None:
    h = discord_harness
    await start(discord_bot, fake)
    fake.reply = "A plain red rectangle."
    msg = await h.send(
        h.general,
        h.alice,
        f"{h.bot.mention}",
        attachments=[("red.jpg", image("red", (900, 600), "JPEG"), "image/jpeg")],
    )
    replies = await h.reply_to(msg, until=lambda ms: "rectangle." in h.text(ms))
    assert "A plain red rectangle." in h.text(replies)
    rec = fake.requests[-1]
    assert [(i.format, i.size) for i in rec.images] == [("JPEG", (900, 600))]  # within IMAGE_MAX_SIDE
    assert CAPTION_PROMPT in rec.body["messages"][-1]["content"][0]["text"]  # no text: a caption
    # A follow-up in the channel still shows the model the image.
    fake.reply = "It is red."
    follow = await h.send(h.general, h.alice, f"{h.bot.mention} what colour is it?")
    await h.reply_to(follow, until=lambda ms: "It is red." in h.text(ms))
    assert len(fake.requests[-1].images) == 1
    assert h.errors() == []


async def test_bad_attachment_gets_a_friendly_refusal(
    discord_harness: Harness, discord_bot: BotRunner, fake: FakeOpenAI
) -> None:
    h = discord_harness
    await start(discord_bot, fake, max_image_bytes=50_000)
    svg = b'<svg xmlns="http://www.w3.org/2000/svg"></svg>'
    msg = await h.send(
        h.general, h.alice, f"{h.bot.mention} what is this?", attachments=[("logo.svg", svg, "image/svg+xml")]
    )
    [reply] = await h.reply_to(msg)
    assert "SVG" in visible_text(reply) and reply.reference["message_id"] == str(msg.id)
    big = await h.send(
        h.general,
        h.bob,
        f"{h.bot.mention} and this?",
        attachments=[("noise.png", Image.effect_noise((400, 400), 90).tobytes() * 2, "image/png")],
    )
    [reply] = await h.reply_to(big)
    assert "MB" in visible_text(reply) and "noise.png" in visible_text(reply)
    assert fake.requests == [] and h.errors() == []


async def test_text_only_engine_says_so(discord_harness: Harness, discord_bot: BotRunner) -> None:
    h = discord_harness
    await discord_bot.start()  # ENGINE=test: no vision model, like the CPU default
    for _ in range(200):  # the worker's first heartbeat says it is text-only
        if await discord_bot.runtime.bus.alive_workers():
            break
        await asyncio.sleep(0.05)
    msg = await h.send(h.general, h.alice, f"{h.bot.mention} what is it?", attachments=[image("blue")])
    replies = await h.reply_to(msg, until=lambda ms: "VISION_MODEL" in h.text(ms))
    assert "cannot see images" in h.text(replies)
    conversation = conversation_id(guild=h.guild.id, channel=h.general.id)
    assert await discord_bot.runtime.history.recent(conversation) == []  # refused before anything was recorded


async def test_caption_command(discord_harness: Harness, discord_bot: BotRunner, fake: FakeOpenAI) -> None:
    h = discord_harness
    await start(discord_bot, fake)
    fake.reply = "Two squares, one green."
    interaction = await h.slash(
        "caption", {"image": ("shot.webp", image("green", fmt="WEBP"), "image/webp"), "question": "how many squares?"}
    )
    done = await h.response(
        interaction, until=lambda i: i.original is not None and "green." in visible_text(i.original)
    )
    assert interaction.response_type == 5  # deferred: the answer streams into it
    assert "Two squares, one green." in visible_text(done.original)
    rec = fake.requests[-1]
    assert rec.images[0].size == (320, 200) and "how many squares?" in rec.body["messages"][-1]["content"][0]["text"]
    bad = await h.slash("caption", {"image": ("empty.png", b"", "image/png")})
    done = await h.response(bad, until=lambda i: i.original is not None and visible_text(i.original))
    assert "empty" in visible_text(done.original)
    assert h.errors() == []


async def test_article_with_two_images(discord_harness: Harness, discord_bot: BotRunner, fake: FakeOpenAI) -> None:
    h = discord_harness
    # Plain by design: the article as several 2,000-character messages (one message with galleries in
    # components mode: tests/test_discord_layout.py).
    await start(discord_bot, fake, render_mode="plain")

    def script(body: dict[str, Any]) -> str:
        prompt = str(body["messages"][-1]["content"])
        return "适合插入图像的行是<Seg3>, <Seg1>" if "选择适合插入图像" in prompt else ARTICLE

    fake.reply = script
    fake.chunk_delay = 0.002
    interaction = await h.slash(
        "article",
        {
            "title": "Night river",
            "image1": ("a.png", image("red"), "image/png"),
            "image2": ("b.jpg", image("blue", fmt="JPEG"), "image/jpeg"),
            "paragraphs": 5,
        },
    )

    def posted(i: Any) -> bool:
        return sum(1 for m in i.followups if m.attachments) == 2 and "Paragraph 4" in h.text(i.followups)

    done = await h.response(interaction, until=posted, timeout=30)
    assert "Night river" in visible_text(done.original)  # the streamed draft became the header
    posts = done.followups
    assert all(len(visible_text(m)) <= 2000 for m in [done.original, *posts])
    with_images = [m for m in posts if m.attachments]
    assert [m.attachments[0].filename for m in with_images] == ["image1.png", "image2.jpg"]
    assert visible_text(with_images[0]).rstrip().endswith(ARTICLE.split("\n")[1].strip())  # image 1 after <Seg1>
    assert visible_text(with_images[1]).rstrip().endswith(ARTICLE.split("\n")[3].strip())  # image 2 after <Seg3>
    assert "Paragraph 4" in visible_text(posts[-1]) and not posts[-1].attachments
    with Image.open(io.BytesIO(with_images[1].attachments[0].data)) as img:
        assert img.size == (320, 200)
    write_call = fake.requests[0]
    assert len(write_call.images) == 2 and "浦语·灵笔" in write_call.body["messages"][0]["content"]
    assert write_call.body["repetition_penalty"] == 1.005
    assert h.errors() == []


async def test_article_with_two_images_and_one_paragraph_shows_both(
    discord_harness: Harness, discord_bot: BotRunner, fake: FakeOpenAI
) -> None:
    """The model writes a single paragraph and names a line that does not exist (the recorded XComposer answer
    shape `<Seg0>, <Seg1>`): both images are still posted, in the order given, after that paragraph."""
    h = discord_harness
    await start(discord_bot, fake, render_mode="plain")  # components: tests/test_discord_render_mode.py
    paragraph = "The river city at night, lanterns on the water and music from the boats."

    def script(body: dict[str, Any]) -> str:
        prompt = str(body["messages"][-1]["content"])
        return "适合插入图像的行是<Seg0>, <Seg1>." if "选择适合插入图像" in prompt else paragraph

    fake.reply = script
    interaction = await h.slash(
        "article",
        {
            "title": "Night river",
            "image1": ("a.png", image("red"), "image/png"),
            "image2": ("b.jpg", image("blue", fmt="JPEG"), "image/jpeg"),
        },
    )

    def posted(i: Any) -> bool:
        return sum(1 for m in i.followups if m.attachments) == 2

    done = await h.response(interaction, until=posted, timeout=30)
    with_images = [m for m in done.followups if m.attachments]
    assert [m.attachments[0].filename for m in with_images] == ["image1.png", "image2.jpg"]
    assert visible_text(with_images[0]).rstrip().endswith(paragraph) and visible_text(with_images[1]) == ""
    assert h.text(done.followups).count(paragraph) == 1
    place_call = fake.requests[1]
    assert "选择适合插入图像的1行" in str(place_call.body["messages"][-1]["content"])  # one line to choose
    assert h.errors() == []
