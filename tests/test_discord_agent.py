"""`/agent` end to end: the project's bot (real discord.py) in the fake Discord, its embedded worker running the
Lagent agent with the real sandbox, and a scripted InternLM2-protocol model (test_agent.ScriptedEngine)."""

from __future__ import annotations

import pytest
from test_agent import SOLVE, ScriptedEngine, last_environment

from tests.fakediscord import Harness
from tests.fakediscord.fixtures import STOP_PREFIX, BotRunner

pytestmark = pytest.mark.timeout(90)

PLOT = ("Let me plot it too.<|action_start|><|interpreter|>\nimport matplotlib.pyplot as plt\n"
        "plt.plot([0, 1, 2], [3, 5, 7])\nplt.show()\nprint('plotted')\n<|action_end|>\n")


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
    messages = await discord_bot.answer(interaction, until=lambda ms: "3.5 (plotted)" in h.text(ms)
                                        and any(m.attachments for m in ms), timeout=60)
    first = interaction.original
    assert first is not None
    # Live: an edit showed the first tool call and its result before the answer existed.
    contents = [v.content for v in first.versions]
    early = [c for c in contents if "```python" in c and "3.5" in c and "Answer" not in c]
    assert early, contents
    final = h.text(messages)
    assert "🐍 **Python**" in final and "sp.solve" in final and "plt.plot" in final
    assert "**Answer:** x = 3.5 (plotted) @everyone" in final
    pngs = [a for m in messages for a in m.attachments]
    assert len(pngs) == 1 and pngs[0].data.startswith(b"\x89PNG")
    for m in messages:
        assert len(m.content) <= 2000
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
        return msg is not None and "step one" in msg.content and any(
            c.startswith(STOP_PREFIX) for c in msg.custom_ids)

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
    engine = await start(discord_bot, agent_max_turns=5)
    engine.script = ["Printing a lot.<|action_start|><|interpreter|>\nprint('line\\n' * 400)\n<|action_end|>"]
    interaction = await h.slash("agent", {"task": "print a lot, five times"})
    messages = await discord_bot.answer(interaction, until=lambda ms: "AGENT_MAX_TURNS" in h.text(ms), timeout=60)
    assert all(0 < len(m.content) <= 2000 for m in messages)
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
    done = await h.response(second, until=lambda i: i.original is not None and i.original.content)
    assert second.ephemeral or done.original.ephemeral
    assert h.errors() == []
