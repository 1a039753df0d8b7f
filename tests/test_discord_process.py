"""`python -m bot` as a real process against the fake Discord: killed mid-reply, started again.

The contract of issue 3 ("How it starts"): `python -m bot` with DISCORD_TOKEN serves alone with the
embedded worker; DISCORD_API_BASE (and DISCORD_GATEWAY_URL) point it elsewhere; the token never reaches
the logs.  A crash while a reply streams must not lose the answer: the next process finishes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, subprocess_env
from tests.fakediscord import Harness
from tests.fakediscord.fixtures import BotRunner, reply_finished
from tests.fakediscord.harness import visible_text

pytestmark = pytest.mark.timeout(90)


def _read(path: Path) -> str:
    return path.read_text(errors="replace")


async def spawn(h: Harness, discord_bot: BotRunner, log: Path, **extra: str) -> asyncio.subprocess.Process:
    settings = discord_bot.make_settings()
    env = subprocess_env(
        settings,
        DISCORD_TOKEN=h.token,
        DISCORD_API_BASE=h.server.api_base,
        DISCORD_GATEWAY_URL=h.server.gateway_url,
        LOG_LEVEL="INFO",
        USER_RATE_LIMIT="100/60",
        **extra,
    )
    h.server.guild_creates_sent.clear()
    out = log.open("ab")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", cwd=str(ROOT), env=env, stdout=out, stderr=out
    )
    out.close()
    waiter = asyncio.ensure_future(h.wait_connected(timeout=40))
    exited = asyncio.ensure_future(proc.wait())
    await asyncio.wait({waiter, exited}, return_when=asyncio.FIRST_COMPLETED)
    if exited.done():
        waiter.cancel()
        raise AssertionError(f"python -m bot exited ({proc.returncode}):\n{_read(log)[-3000:]}")
    exited.cancel()
    return proc


async def test_killed_mid_reply_the_next_process_finishes_it(
    discord_harness: Harness, discord_bot: BotRunner, tmp_path: Path
) -> None:
    h = discord_harness
    log = tmp_path / "bot.log"
    proc = await spawn(h, discord_bot, log, TEST_ENGINE_TOKEN_DELAY="0.05", JOB_VISIBILITY_TIMEOUT="2")
    try:
        msg = await h.send(h.general, h.alice, f"{h.bot.mention} [[repeat:100]]")
        first = await h.wait_for(
            lambda: next((m for m in h.bot_messages(h.general, after=msg) if "w5" in visible_text(m)), None),
            timeout=20,
            message="a partial reply",
        )
        proc.kill()  # no clean-up of any kind, like a crash or an OOM kill
        await proc.wait()
        partial = visible_text(first)
        assert "w99" not in partial
        proc = await spawn(h, discord_bot, log, TEST_ENGINE_TOKEN_DELAY="0.01", JOB_VISIBILITY_TIMEOUT="2")
        replies = await h.reply_to(
            msg, until=lambda ms: reply_finished(ms) and "w99" in visible_text(ms[-1]), quiet=0.3, timeout=40
        )
        text = " ".join(visible_text(m) for m in replies)
        assert [w for w in text.split() if w.startswith("w")] == [f"w{i}" for i in range(100)]
        assert replies[0] is first  # the same message was finished, not a second answer posted
        history = await _history(discord_bot, h)
        assert [t.role for t in history] == ["user", "assistant"]
        assert history[1].content.split() == [f"w{i}" for i in range(100)]
        # `docker stop` (SIGTERM) ends the process promptly and successfully.
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
    output = _read(log)
    assert h.token not in output  # the token never reaches the logs
    assert not h.unknown_routes()


async def _history(discord_bot: BotRunner, h: Harness) -> list:
    from handlers.history import HistoryStore, conversation_id
    from models.redis_server import connect

    client = connect(discord_bot.redis_url)
    try:
        return await HistoryStore(client).recent(conversation_id(guild=h.guild.id, channel=h.general.id))
    finally:
        await client.aclose()


async def run_to_exit(h: Harness, discord_bot: BotRunner, **extra: str) -> tuple[int, str]:
    settings = discord_bot.make_settings()
    env = subprocess_env(
        settings,
        DISCORD_TOKEN=h.token,
        DISCORD_API_BASE=h.server.api_base,
        DISCORD_GATEWAY_URL=h.server.gateway_url,
        EMBEDDED_WORKER="false",
        LOG_LEVEL="INFO",
    )
    env.update(extra)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        cwd=str(ROOT),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 40)
    return proc.returncode or 0, out.decode(errors="replace")


async def test_wrong_token_and_missing_intent_exit_with_a_clear_message(
    discord_harness: Harness, discord_bot: BotRunner
) -> None:
    h = discord_harness
    code, out = await run_to_exit(h, discord_bot, DISCORD_TOKEN="fake.0.wrong-token")
    assert code == 1 and "token" in out.lower() and "wrong-token" not in out
    # The Message Content intent was not enabled in the developer portal: Discord closes with 4014.
    h.server.privileged_intents = 0
    code, out = await run_to_exit(h, discord_bot)
    assert code == 1 and "intent" in out.lower() and h.token not in out
    assert h.server.identifies, "it did try to connect"
