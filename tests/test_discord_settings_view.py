"""`/settings view` and what Regenerate keeps, end to end (real discord.py against the fake Discord, a real
Redis, the embedded worker with ENGINE=test; the agent case with the real bubblewrap sandbox).

* Sampling values nobody set are the loaded model's to choose (models/engines/sampling.py, on the worker), so
  the view says "model default" for them and names no number (it used to show the generic 0.8); a value set in
  the bot's environment, the server or the channel is shown with where it comes from.
* Regenerate on a chat answer to a message with a text file answers with the file again: the file's text is part
  of the user's turn in history (handlers/types.py `Request.content`), which the regenerated job is built from.
* An `/article` written from notes offers no Regenerate either; its notes stay in the user's turn in history, so a
  later chat message still has them.
* Regenerate on an `/agent` answer runs the task again with its file (a blob reference in the job, kept in the
  user's turn's meta: handlers/replay.py); once the blob has expired it runs without it and says so.  (A resumed
  reply follows the same job, whose payload still has the reference: nothing to rebuild.)
"""

from __future__ import annotations

from typing import Any

import pytest
from test_agent import ScriptedEngine, last_environment
from test_discord_article_notes import NOTES, article, fake  # noqa: F401 (fake: the OpenAI server fixture)
from test_discord_article_notes import start as start_article

from models.protocol import KEYS
from models.sandbox import SandboxLimits
from tests.fakediscord import Harness
from tests.fakediscord.fixtures import REGEN_PREFIX, BotRunner
from tests.fakediscord.harness import visible_text
from tests.fakeopenai import FakeOpenAI
from tests.sandbox_support import sandbox_or_skip

pytestmark = pytest.mark.timeout(90)


def fields(interaction: Any) -> dict[str, str]:
    """The settings embed's fields (name → shown value) of an answered /settings interaction."""
    assert interaction.original is not None and interaction.original.ephemeral
    [embed] = interaction.original.embeds
    return {f["name"]: f["value"] for f in embed.get("fields", [])}


async def settings(
    h: Harness, command: str, options: dict[str, Any] | None = None, locale: str = "en-US"
) -> dict[str, str]:
    interaction = await h.slash(command, options, user=h.carol, check_permissions=False, locale=locale)
    return fields(await h.response(interaction))


async def test_settings_view_says_model_default_where_nothing_is_set(
    discord_harness: Harness, discord_bot: BotRunner
) -> None:
    h = discord_harness
    await discord_bot.start(admin_role=h.admin_role.name, top_p=0.9)  # TOP_P=0.9 in the bot's environment
    shown = await settings(h, "settings view")
    assert shown["temperature"] == "*model default*" and shown["max_new_tokens"] == "*model default*"
    assert "0.8" not in shown["temperature"]  # not the generic default the worker no longer uses
    assert shown["top_p"] == "`0.9` (bot setting)"
    assert shown["thread_replies"] == "`False` (default)"  # not a sampling value: the bot's own default

    shown = await settings(h, "settings set", {"name": "temperature", "value": "0.3", "scope": "channel"})
    assert shown["temperature"] == "`0.3` (channel)" and shown["max_new_tokens"] == "*model default*"
    shown = await settings(h, "settings set", {"name": "max_new_tokens", "value": "256", "scope": "guild"})
    assert shown["max_new_tokens"] == "`256` (server)"
    shown = await settings(h, "settings set", {"name": "top_p", "value": "0.5", "scope": "guild"})
    assert shown["top_p"] == "`0.5` (server)"  # the server's choice over the environment's

    shown = await settings(h, "settings clear", {"name": "temperature", "scope": "channel"})
    assert shown["temperature"] == "*model default*" and shown["max_new_tokens"] == "`256` (server)"
    shown = await settings(h, "settings view", locale="zh-CN")
    assert shown["temperature"] == "*模型默认*"
    assert h.errors() == []


async def test_regenerate_answers_with_the_chat_text_file_again(
    discord_harness: Harness, discord_bot: BotRunner
) -> None:
    h = discord_harness
    await discord_bot.start(render_mode="plain")
    code = b'def greet(name):\n    return f"hello {name}"\n'
    msg = await h.send(
        h.general, h.alice, f"{h.bot.mention} review this", attachments=[("greet.py", code, "text/x-python")]
    )
    [answer] = await h.reply_to(msg, until=lambda ms: "turns=" in h.text(ms), timeout=20)
    downloads = len(h.server.cdn_requests)
    inter = await h.click(answer, h.find_button(answer, REGEN_PREFIX), user=h.alice)
    [again] = await discord_bot.answer(inter)
    assert "turns=1" in visible_text(again)
    prompts = discord_bot.runtime.worker.engine.requests
    assert len(prompts) == 2
    last = prompts[-1][-1]  # what the regenerated job gave the model: the typed text and the file, as the first
    assert last.role == "user" and "review this" in last.content
    assert "File: greet.py" in last.content and 'return f"hello {name}"' in last.content
    assert len(h.server.cdn_requests) == downloads  # from history, not downloaded again
    assert h.errors() == []


READ = (
    "I'll read the file.<|action_start|><|interpreter|>\nimport csv\n"
    "rows = list(csv.DictReader(open('data.csv')))\nprint(sum(int(r['qty']) for r in rows))\n<|action_end|>\n"
)


async def test_regenerate_runs_the_agent_task_again_with_its_file(
    discord_harness: Harness, discord_bot: BotRunner
) -> None:
    sandbox_or_skip(SandboxLimits())
    h = discord_harness
    await discord_bot.start(agent_arxiv=False, agent_protocol="internlm2", render_mode="plain")
    engine = ScriptedEngine()
    discord_bot.runtime.worker.engine = engine
    count = [READ, lambda p: f"There are {last_environment(p)} items."]
    engine.script = list(count)
    interaction = await h.slash(
        "agent", {"task": "How many items?", "file": ("data.csv", b"item,qty\napple,4\nfig,3\n", "text/csv")}
    )
    [answer] = await discord_bot.answer(interaction, until=lambda ms: "There are" in h.text(ms), timeout=60)
    assert "There are 7 items." in visible_text(answer)  # the file was really in the sandbox
    downloads = len(h.server.cdn_requests)

    engine.script = list(count)  # Regenerate: the same task, the file in the sandbox again, from its blob
    inter = await h.click(answer, h.find_button(answer, REGEN_PREFIX), user=h.alice)
    [again] = await discord_bot.answer(inter, until=lambda ms: "There are" in h.text(ms), timeout=60)
    assert "How many items?" in visible_text(again) and "There are 7 items." in visible_text(again)
    assert "data.csv" in engine.prompts[-2] and len(h.server.cdn_requests) == downloads
    [user, _answer] = await discord_bot.history(h.general)
    [ref] = [f["blob"] for f in user.meta["payload"]["files"]]

    await discord_bot.runtime.bus.raw.delete(KEYS.blob(ref))  # BLOB_TTL passed
    engine.script = ["I have no file to read, so I cannot count the items."]
    inter = await h.click(again, h.find_button(again, REGEN_PREFIX), user=h.alice)
    [third] = await discord_bot.answer(inter, until=lambda ms: "cannot count" in h.text(ms), timeout=60)
    shown = visible_text(third)
    assert "“data.csv” is no longer stored" in shown and "cannot count" in shown  # told, and it ran without it
    assert "data.csv" not in engine.prompts[-1]
    assert [t.role for t in await discord_bot.history(h.general)] == ["user", "assistant"]
    # The older answers (interaction responses, edited through the channel endpoint) lost their buttons.
    for old in (answer, again):
        buttons = h.server.world.messages[old.id].buttons()
        assert not any(REGEN_PREFIX in (b.get("custom_id") or "") for b in buttons), buttons
    assert h.errors() == []


async def test_an_article_from_notes_offers_no_regenerate_and_keeps_them_in_history(
    discord_harness: Harness,
    discord_bot: BotRunner,
    fake: FakeOpenAI,  # noqa: F811 (the fixture imported above)
) -> None:
    h = discord_harness
    await start_article(discord_bot, fake)
    interaction = await h.slash("article", {"title": "Chengdu", "notes": ("notes.md", NOTES, "text/markdown")})
    done = await h.response(interaction, until=lambda i: "Mapo tofu" in article(h, i), timeout=30)
    shown = [m for m in (done.original, *done.followups) if m is not None]
    assert not any(c.startswith(REGEN_PREFIX) for m in shown for c in m.custom_ids)
    [user, _answer] = await discord_bot.history(h.general)
    assert user.role == "user" and "File: notes.md" in user.content and "Mapo tofu" in user.content
    assert h.errors() == []
