"""`/agent task file:<attachment>` end to end: the project's bot (real discord.py) in the fake Discord, the file
served by the fake's CDN, the embedded worker running the agent with the real bubblewrap sandbox and the
scripted InternLM2-protocol model of tests/test_agent.py (its second answer quotes the tool result that really
came back).  Refusals are text_files.py's, in the person's language, and nothing runs."""

from __future__ import annotations

import pytest
from test_agent import ScriptedEngine, last_environment

from models.sandbox import SandboxLimits
from tests.fakediscord import Harness
from tests.fakediscord.fixtures import BotRunner
from tests.fakediscord.harness import visible_text
from tests.sandbox_support import sandbox_or_skip

pytestmark = pytest.mark.timeout(90)

CSV = b"item,price,qty\napple,1.25,4\npear,0.80,10\nfig,3.10,3\n"
READ = (
    "I'll read the file.<|action_start|><|interpreter|>\nimport csv\n"
    "rows = list(csv.DictReader(open('data.csv')))\n"
    "print(round(sum(float(r['price']) * int(r['qty']) for r in rows), 2))\n<|action_end|>\n"
)


async def start(bot: BotRunner) -> ScriptedEngine:
    await bot.start(agent_arxiv=False, agent_protocol="internlm2")
    engine = ScriptedEngine()
    bot.runtime.worker.engine = engine
    return engine


async def test_the_agent_computes_from_the_attached_csv(discord_harness: Harness, discord_bot: BotRunner) -> None:
    sandbox_or_skip(SandboxLimits())
    h = discord_harness
    engine = await start(discord_bot)
    engine.script = [READ, lambda p: f"The total is {last_environment(p)}."]
    interaction = await h.slash("agent", {"task": "Total of price × qty?", "file": ("data.csv", CSV, "text/csv")})
    messages = await discord_bot.answer(interaction, until=lambda ms: "The total is" in h.text(ms), timeout=60)
    text = h.text(messages)
    assert "```\n22.3\n```" in text and "**Answer:** The total is 22.3." in text
    assert "data.csv" in engine.prompts[0] and "working directory" in engine.prompts[0]
    assert h.server.cdn_requests and h.errors() == []


@pytest.mark.parametrize(
    ("name", "data", "words", "downloaded"),
    [
        ("data.txt", b"\x00\x01\x02\x03" * 300, "binary", True),
        ("big.csv", b"a,b\n" * 400_000, "KB", False),  # refused from its declared size
        ("model.bin", b"abc", "text files", False),
    ],
)
async def test_a_refused_file_gets_the_friendly_refusal_and_nothing_runs(
    discord_harness: Harness, discord_bot: BotRunner, name: str, data: bytes, words: str, downloaded: bool
) -> None:
    h = discord_harness
    engine = await start(discord_bot)
    engine.script = ["must not run"]
    interaction = await h.slash("agent", {"task": "Sum it.", "file": (name, data, "text/plain")})
    done = await h.response(interaction, until=lambda i: i.original is not None and visible_text(i.original))
    assert name in visible_text(done.original) and words in visible_text(done.original)
    assert engine.prompts == [] and engine.chats == []
    assert bool(h.server.cdn_requests) == downloaded
    assert await discord_bot.history(h.general) == []
    assert h.errors() == []
