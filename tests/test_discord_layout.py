"""RENDER_MODE=components end to end: the project's bot (real discord.py, `LayoutView`) against the fake Discord,
which validates every Components V2 body as Discord documents it (tests/fakediscord/rules.py: no content with
the flag, 40 components, 4,000 text characters, galleries of 1-10, a section needs an accessory, the flag
stays on edits).  The same scenarios in plain mode show what changes: 2,000 characters a message.  Also
REASONING_DISPLAY=file (the thinking as thinking.txt on the final message) in both modes."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import discord
import pytest
from test_agent import SOLVE, ScriptedEngine
from test_discord_agent import PLOT
from test_discord_images import image
from test_discord_stream import long_answer, reassemble

from bot.layouts import reply_layout
from bot.renderer import NO_ANSWER
from tests.fakediscord import Harness, Message
from tests.fakediscord.fixtures import REGEN_PREFIX, STOP_PREFIX, BotRunner
from tests.fakediscord.harness import text_displays, visible_text
from tests.fakediscord.rules import IS_COMPONENTS_V2
from tests.fakediscord.state import LOADING
from tests.fakeopenai import FakeOpenAI

pytestmark = pytest.mark.timeout(90)

PROSE = "".join(f"Sentence {i} of a long answer about rivers and the cities built along them. " for i in range(60))


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    server = await FakeOpenAI().start()
    yield server
    await server.stop()


def is_v2(message: Message) -> bool:
    """A Components V2 message that never carried content, in any of its versions (creation and edits; an
    interaction's deferred "thinking" response comes before and is neither)."""
    written = [v for v in message.versions if not int(v.payload.get("flags") or 0) & LOADING]
    return (
        bool(message.flags & IS_COMPONENTS_V2)
        and not message.content
        and bool(written)
        and all(int(v.payload.get("flags") or 0) & IS_COMPONENTS_V2 and not v.payload.get("content") for v in written)
    )


def walk(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for item in items:
        out.append(item)
        out += walk(item.get("components") or [])
    return out


def kinds(message: Message) -> list[int]:
    return [int(c["type"]) for c in walk(message.components)]


async def test_3500_characters_are_one_message_in_components_and_two_in_plain(
    discord_harness: Harness, discord_bot: BotRunner
) -> None:
    h = discord_harness
    answer = PROSE[:3500]
    await discord_bot.start(render_mode="components")
    msg = await h.send(h.general, h.alice, f"{h.bot.mention} [[say:{answer}]]")
    [reply] = await discord_bot.reply(msg)
    assert is_v2(reply) and text_displays(reply) == [answer]
    assert any(c.startswith(REGEN_PREFIX) for c in reply.custom_ids)  # in an action row of the layout
    assert kinds(reply) == [10, 1, 2]
    assert reply.reference is not None  # it still answers the message
    turns = await discord_bot.history(h.general)
    assert turns[-1].content == answer

    await discord_bot.restart(render_mode="plain")
    msg = await h.send(h.random, h.alice, f"{h.bot.mention} [[say:{answer}]]")
    replies = await discord_bot.reply(msg, until=lambda ms: h.text(ms).rstrip().endswith(answer.rstrip()[-30:]))
    assert len(replies) == 2 and all(len(m.content) <= 2000 and not m.flags & IS_COMPONENTS_V2 for m in replies)
    assert reassemble([m.content for m in replies], answer) == answer
    assert h.errors() == []


async def test_9000_characters_with_code_split_into_layouts_with_the_fence_whole(
    discord_harness: Harness, discord_bot: BotRunner, fake: FakeOpenAI
) -> None:
    h = discord_harness
    await discord_bot.start(
        render_mode="components", engine="openai", openai_base_url=fake.base_url, chat_model="internlm2_5-7b-chat"
    )
    answer = long_answer(9000)
    code = answer.index("```python")
    answer = answer[:code] + answer[code:].replace("def f", "def g", 1)
    fake.reply = answer
    msg = await h.send(h.general, h.alice, f"{h.bot.mention} write it all")

    def complete(messages: list[Message]) -> bool:
        return h.text(messages).rstrip().endswith(answer.rstrip()[-40:])

    replies = await discord_bot.reply(msg, until=complete, timeout=40)
    parts = [visible_text(m) for m in replies]
    assert len(parts) == 3, [len(p) for p in parts]  # 9,000 characters: three layouts, not five messages
    assert all(is_v2(m) and len(text_displays(m)) == 1 and len(p) <= 4000 for m, p in zip(replies, parts, strict=True))
    for part in parts:  # each message renders on its own: its fences are balanced
        assert len(re.findall(r"^```", part, flags=re.M)) % 2 == 0
    assert reassemble(parts, answer) == answer
    assert [bool(m.buttons()) for m in replies] == [False, False, True]  # Regenerate on the last only
    assert h.errors() == []


async def test_stop_mid_stream_keeps_the_text_and_drops_the_button(
    discord_harness: Harness, discord_bot: BotRunner
) -> None:
    h = discord_harness
    await discord_bot.start(render_mode="components", test_engine_token_delay=0.05)
    msg = await h.send(h.general, h.alice, f"{h.bot.mention} [[repeat:200]]")

    def partial() -> Message | None:
        msgs = h.bot_messages(h.general, after=msg)
        return msgs[0] if msgs and "w3" in visible_text(msgs[0]) and msgs[0].custom_ids else None

    first = await h.wait_for(partial, message="a partial answer with a Stop button")
    assert is_v2(first) and kinds(first)[-2:] == [1, 2]  # the Stop button sits in the layout's action row
    await h.click(first, h.find_button(first, STOP_PREFIX), user=h.alice)
    [reply] = await discord_bot.reply(msg)
    text = visible_text(reply)
    assert "w3" in text.split() and "w199" not in text.split() and "stopped" in text.lower()
    assert is_v2(reply) and not any(c.startswith(STOP_PREFIX) for c in reply.custom_ids)
    turns = await discord_bot.history(h.general)
    assert turns[-1].meta.get("stopped") is True and "w199" not in turns[-1].content
    assert h.errors() == []


async def test_regenerate_rebuilds_the_old_layout_and_streams_a_new_one(
    discord_harness: Harness, discord_bot: BotRunner
) -> None:
    h = discord_harness
    await discord_bot.start(render_mode="components")
    msg = await h.send(h.general, h.alice, f"{h.bot.mention} tell me something")
    [answer] = await discord_bot.reply(msg)
    shown = visible_text(answer)
    assert "tell me something" in shown and "turns=1" in shown
    inter = await h.click(answer, h.find_button(answer, REGEN_PREFIX), user=h.alice)
    [again] = await discord_bot.answer(inter)
    assert is_v2(again) and "tell me something" in visible_text(again)
    assert any(c.startswith(REGEN_PREFIX) for c in again.custom_ids)
    # The old answer lost its button but not its text (`view=None` would have erased a V2 message).
    assert visible_text(answer) == shown and not answer.buttons() and is_v2(answer)
    after = await discord_bot.history(h.general)
    assert [t.role for t in after] == ["user", "assistant"] and after[1].content.strip() == visible_text(again).strip()
    assert h.errors() == []


async def test_a_stale_stop_on_a_layout_is_taken_off_without_the_text(
    discord_harness: Harness, discord_bot: BotRunner
) -> None:
    """A Stop button left on a finished reply (as after a crash mid-stream): pressing it rebuilds the layout from
    the message's own components without its action rows, keeping the text."""
    h = discord_harness
    await discord_bot.start(render_mode="components")
    msg = await h.send(h.general, h.alice, f"{h.bot.mention} [[say:All done here.]]")
    [reply] = await discord_bot.reply(msg)
    job = h.find_button(reply, REGEN_PREFIX).split(":")[3]
    stop = f"{STOP_PREFIX}{job}:{h.alice.id}"
    reply.components = [c for c in reply.components if c["type"] != 1] + [
        {"type": 1, "components": [{"type": 2, "style": 2, "label": "Stop", "custom_id": stop}]}
    ]
    inter = await h.click(reply, stop, user=h.alice)
    await h.wait_for(lambda: inter.response_type is not None and not reply.buttons(), message="the stale Stop gone")
    assert inter.response_type == 7 and visible_text(reply) == "All done here." and is_v2(reply)
    assert h.errors() == []


async def test_article_with_three_images_is_one_message_with_galleries(
    discord_harness: Harness, discord_bot: BotRunner, fake: FakeOpenAI
) -> None:
    h = discord_harness
    await discord_bot.start(
        render_mode="components",
        engine="openai",
        openai_base_url=fake.base_url,
        chat_model="internlm2_5-7b-chat",
        vision_model="internlm-xcomposer2d5-7b",
    )
    article = "\n".join(f"Paragraph {i}: " + "the river city at night, " * 8 for i in range(5))

    def script(body: dict[str, Any]) -> str:
        prompt = str(body["messages"][-1]["content"])
        return "适合插入图像的行是<Seg1>, <Seg2>, <Seg3>" if "选择适合插入图像" in prompt else article

    fake.reply = script
    interaction = await h.slash(
        "article",
        {
            "title": "Night river",
            "image1": ("a.png", image("red"), "image/png"),
            "image2": ("b.jpg", image("blue", fmt="JPEG"), "image/jpeg"),
            "image3": ("c.png", image("green"), "image/png"),
            "paragraphs": 5,
        },
    )

    def posted(i: Any) -> bool:
        return i.original is not None and len(i.original.attachments) == 3

    done = await h.response(interaction, until=posted, timeout=40)
    message = done.original
    assert done.followups == [] and is_v2(message)  # the draft became the article: one message
    assert [a.filename for a in message.attachments] == ["image1.png", "image2.jpg", "image3.png"]
    [container] = message.components
    assert container["type"] == 17
    order = [
        (c["type"], c["content"].strip() if c["type"] == 10 else [i["media"]["url"] for i in c["items"]])
        for c in container["components"]
    ]
    lines = [line.strip() for line in article.split("\n")]
    assert order == [
        (10, "## Night river"),
        (10, lines[0]),
        (10, lines[1]),
        (12, ["attachment://image1.png"]),
        (10, lines[2]),
        (12, ["attachment://image2.jpg"]),
        (10, lines[3]),
        (12, ["attachment://image3.png"]),
        (10, lines[4]),
    ]
    assert not message.buttons()
    assert h.errors() == []


async def test_agent_steps_are_parts_of_one_container(discord_harness: Harness, discord_bot: BotRunner) -> None:
    pytest.importorskip("sympy")
    pytest.importorskip("matplotlib")
    h = discord_harness
    await discord_bot.start(render_mode="components", agent_arxiv=False)
    engine = ScriptedEngine()
    discord_bot.runtime.worker.engine = engine
    engine.script = [SOLVE, PLOT, "x = 3.5"]
    interaction = await h.slash("agent", {"task": "已知 2x+3=10，求x"})
    [message, figures] = await discord_bot.answer(
        interaction, until=lambda ms: "x = 3.5" in h.text(ms) and any(m.attachments for m in ms), timeout=60
    )
    assert is_v2(message) and is_v2(figures)
    # The figure the code saved: uploaded with a gallery that shows it (V2 shows no attachment by itself).
    [png] = figures.attachments
    assert png.data.startswith(b"\x89PNG")
    assert [c["type"] for c in figures.components] == [12]
    assert [i["media"]["url"] for i in figures.components[0]["items"]] == [f"attachment://{png.filename}"]
    [container, *rest] = message.components
    assert container["type"] == 17 and [r["type"] for r in rest] == [1]  # done: no Stop, a Regenerate row
    assert [c["custom_id"].startswith(REGEN_PREFIX) for c in rest[0]["components"]] == [True]
    parts = [c for c in container["components"] if c["type"] == 10]
    separators = [c for c in container["components"] if c["type"] == 14]
    assert len(separators) == len(parts) - 1 >= 3
    assert parts[0]["content"].startswith("🤖") and "2x+3=10" in parts[0]["content"]
    code = next(p["content"] for p in parts if "```python" in p["content"])
    assert code.startswith("🐍 **Python**") and "sp.solve" in code and code.rstrip().endswith("```")
    assert any(p["content"].startswith("✅ **Result**") and "3.5" in p["content"] for p in parts)
    assert parts[-1]["content"] == "**Answer:** x = 3.5"
    assert h.errors() == []


async def test_the_fake_refuses_content_on_a_v2_message(discord_harness: Harness, discord_bot: BotRunner) -> None:
    """The rule is enforced against discord.py's own requests: a LayoutView with content is refused, and a V2
    message cannot be edited back into a plain one."""
    h = discord_harness
    bot = await discord_bot.start(render_mode="components")
    channel = bot.get_channel(h.general.id)
    with pytest.raises(discord.HTTPException) as refused:
        await channel.send("some content", view=reply_layout("a text display"))
    assert refused.value.status == 400 and refused.value.code == 50035
    sent = await channel.send(view=reply_layout("a text display"))
    with pytest.raises(discord.HTTPException) as downgrade:
        await sent.edit(content="plain again", view=None)
    assert downgrade.value.code == 50035
    stored = h.world.messages[sent.id]
    assert is_v2(stored) and text_displays(stored) == ["a text display"]


@pytest.mark.parametrize("mode", ["plain", "components"])
async def test_reasoning_display_file_attaches_the_thinking(
    discord_harness: Harness, discord_bot: BotRunner, mode: str
) -> None:
    h = discord_harness
    await discord_bot.start(render_mode=mode, reasoning_display="file")
    thought = "The user asks which planet is largest. Jupiter, clearly; || and ``` are fine in a file."
    msg = await h.send(h.general, h.alice, f"{h.bot.mention} [[think:{thought}|Jupiter is the largest planet.]]")
    [reply] = await discord_bot.reply(msg)
    assert visible_text(reply) == "Jupiter is the largest planet."  # no spoiler line: the thinking is the file
    [attached] = reply.attachments
    assert attached.filename == "thinking.txt" and attached.data.decode("utf-8") == thought
    if mode == "components":
        assert is_v2(reply)
        files = [c for c in walk(reply.components) if c["type"] == 13]
        assert [f["file"]["url"] for f in files] == ["attachment://thinking.txt"]  # V2 shows only what it references
    else:
        assert not reply.flags & IS_COMPONENTS_V2
    turns = await discord_bot.history(h.general)
    assert [t.content for t in turns if t.role == "assistant"] == ["Jupiter is the largest planet."]
    # A model that never closes <think>: the note, and the thinking still in the file.
    msg = await h.send(h.general, h.alice, f"{h.bot.mention} [[think:I must list every prime below a million]]")
    [reply] = await discord_bot.reply(msg)
    assert NO_ANSWER in visible_text(reply) and "prime" not in visible_text(reply)
    assert [a.data for a in reply.attachments] == [b"I must list every prime below a million"]
    assert h.errors() == []
