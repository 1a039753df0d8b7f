"""`/agent` end to end: the project's bot (real discord.py) in the fake Discord, its embedded worker running the
Lagent agent with the real sandbox, and a scripted InternLM2-protocol model (test_agent.ScriptedEngine) or, for
the recorded InternLM2.5 math run, `ENGINE=openai` against a local server replaying it verbatim (source:
InternLM/lagent examples/run_agent_lmdeploy.py @ 1c094f706d29208b20e5169a597e6c380c74375c, see
tests/fixtures/internlm2/math_run.json and tests/test_agent_replay.py)."""

from __future__ import annotations

import gc
import logging

import pytest
from test_agent import SOLVE, ScriptedEngine, last_environment
from test_agent_replay import MATH, MODEL, math_turns

from models.engines.openai import OpenAIEngine
from models.sandbox import SandboxLimits
from tests.fakediscord import Harness
from tests.fakediscord.fixtures import STOP_PREFIX, BotRunner
from tests.fakediscord.harness import visible_text
from tests.fakeopenai import INTERNLM2_SPECIAL, FakeOpenAI
from tests.sandbox_support import sandbox_or_skip

pytestmark = pytest.mark.timeout(90)

PLOT = (
    "Let me plot it too.<|action_start|><|interpreter|>\nimport matplotlib.pyplot as plt\n"
    "plt.plot([0, 1, 2], [3, 5, 7])\nplt.show()\nprint('plotted')\n<|action_end|>\n"
)


async def start(bot: BotRunner, **overrides: object) -> ScriptedEngine:
    await bot.start(agent_arxiv=False, **overrides)
    engine = ScriptedEngine()
    bot.runtime.worker.engine = engine  # the embedded worker now answers with the scripted model
    return engine


async def test_agent_steps_stream_into_the_reply(discord_harness: Harness, discord_bot: BotRunner) -> None:
    pytest.importorskip("sympy")
    pytest.importorskip("matplotlib")
    h = discord_harness
    engine = await start(discord_bot)
    engine.script = [SOLVE, PLOT, lambda p: f"x = 3.5 ({last_environment(p).splitlines()[0]}) @everyone"]
    engine.pauses = {2: 1.5, 3: 1.5}  # think a while, so the steps so far are shown before the answer
    interaction = await h.slash("agent", {"task": "已知 2x+3=10，求x, and plot y = 2x + 3"})
    messages = await discord_bot.answer(
        interaction, until=lambda ms: "3.5 (plotted)" in h.text(ms) and any(m.attachments for m in ms), timeout=60
    )
    first = interaction.original
    assert first is not None
    # Live: an edit showed the first tool call and its result before the answer existed.
    contents = [visible_text(v) for v in first.versions]
    early = [c for c in contents if "```python" in c and "3.5" in c and "Answer" not in c]
    assert early, contents
    final = h.text(messages)
    assert "🐍 **Python**" in final and "sp.solve" in final and "plt.plot" in final
    assert "**Answer:** x = 3.5 (plotted) @everyone" in final
    pngs = [a for m in messages for a in m.attachments]
    assert len(pngs) == 1 and pngs[0].data.startswith(b"\x89PNG")
    for m in messages:
        assert len(visible_text(m)) <= 2000
        assert not m.mention_everyone and m.mentions == [] and m.mention_roles == []
    assert not any(cid.startswith(STOP_PREFIX) for m in messages for cid in m.custom_ids)
    turns = await discord_bot.history(h.general)
    assert turns[-1].content == "x = 3.5 (plotted) @everyone\n(tools used: python ×2)"
    assert h.errors() == []


async def test_stop_button_stops_the_agent(discord_harness: Harness, discord_bot: BotRunner) -> None:
    h = discord_harness
    engine = await start(discord_bot)
    engine.script = ["<|action_start|><|interpreter|>\nprint('step one')\n<|action_end|>", "[[hang]]"]
    interaction = await h.slash("agent", {"task": "take your time"})

    def has_stop() -> object:
        msg = interaction.original
        return (
            msg is not None
            and "step one" in visible_text(msg)
            and any(c.startswith(STOP_PREFIX) for c in msg.custom_ids)
        )

    await h.wait_for(has_stop, timeout=30)
    stop = next(c for c in interaction.original.custom_ids if c.startswith(STOP_PREFIX))
    await h.click(interaction.original, stop)
    messages = await discord_bot.answer(interaction, timeout=30)
    text = h.text(messages)
    assert "step one" in text
    assert not any(c.startswith(STOP_PREFIX) for m in messages for c in m.custom_ids)
    assert h.errors() == []


async def test_long_runs_stay_within_discord_limits(discord_harness: Harness, discord_bot: BotRunner) -> None:
    h = discord_harness
    # Plain messages by design (2,000 characters); layouts of 4,000: tests/test_discord_render_mode.py.
    engine = await start(discord_bot, agent_max_turns=5, render_mode="plain")
    engine.script = ["Printing a lot.<|action_start|><|interpreter|>\nprint('line\\n' * 400)\n<|action_end|>"]
    interaction = await h.slash("agent", {"task": "print a lot, five times"})
    messages = await discord_bot.answer(interaction, until=lambda ms: "AGENT_MAX_TURNS" in h.text(ms), timeout=60)
    assert all(0 < len(visible_text(m)) <= 2000 for m in messages)
    text = h.text(messages)
    assert "earlier step(s), shortened" in text and "(output truncated)" in text
    assert len(messages) <= 3
    assert h.errors() == []


async def test_empty_or_refused_task(discord_harness: Harness, discord_bot: BotRunner) -> None:
    h = discord_harness
    await start(discord_bot, user_rate_limit="1/60")
    engine = discord_bot.runtime.worker.engine
    engine.script = ["fine."]
    first = await h.slash("agent", {"task": "one"})
    await discord_bot.answer(first, until=lambda ms: "fine." in h.text(ms))
    second = await h.slash("agent", {"task": "two"})
    done = await h.response(second, until=lambda i: i.original is not None and visible_text(i.original))
    assert second.ephemeral or done.original.ephemeral
    assert h.errors() == []


async def test_recorded_internlm_math_run(
    discord_harness: Harness, discord_bot: BotRunner, caplog: pytest.LogCaptureFixture
) -> None:
    """The recorded InternLM2.5-7B-Chat run through `/agent`: both cells run in the sandbox and their values
    are shown, each cell's code once in one clean block, then the recorded answer; nothing logs an error."""
    pytest.importorskip("sympy")
    sandbox_or_skip(SandboxLimits())
    caplog.set_level(logging.WARNING)
    h = discord_harness
    server = await FakeOpenAI(models=(MODEL,)).start()
    server.skip_special, server.apply_stop = INTERNLM2_SPECIAL, True  # as lmdeploy serves it
    engine = OpenAIEngine(base_url=server.base_url, chat_model=MODEL)
    try:
        await discord_bot.start(agent_arxiv=False, agent_protocol="internlm2")  # the recording's raw protocol
        discord_bot.runtime.worker.engine = engine
        server.replay(math_turns())
        interaction = await h.slash("agent", {"task": MATH["task"]})
        messages = await discord_bot.answer(interaction, until=lambda ms: "boxed{-3969}" in h.text(ms), timeout=60)
    finally:
        await engine.close()
        await server.stop()
    assert server.replay_errors == [] and server.turns == []
    text = h.text(messages)
    assert text.count("```python") == 2 and "```python\n```python" not in text
    assert "\u200b" not in text
    assert "factors_of_63 = divisors(63)\nfactors_of_63\n```" in text
    assert "```\n[1, 3, 7, 9, 21, 63]\n```" in text and "```\n-3969\n```" in text
    assert "**Answer:** " + MATH["turns"][-1]["model"] in text
    assert all(len(visible_text(m)) <= 2000 for m in messages)
    assert h.errors() == []
    gc.collect()
    logged = [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert logged == []
