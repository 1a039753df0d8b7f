"""`python -m bot status` as a real subprocess against the test Redis: no worker, a worker, no Redis."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

from models.engines.testing import TestEngine
from models.protocol import KEYS, Bus, Job
from models.settings import Settings
from models.worker import Worker
from tests.conftest import ROOT, free_port, subprocess_env
from tests.fakediscord.harness import visible_text


async def status(env: dict[str, str], *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        "status",
        *args,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode()


async def test_status_reports_queue_workers_and_dead_letters(settings: Settings, bus: Bus) -> None:
    env = subprocess_env(settings)
    for i in range(2):
        await bus.submit(Job(kind="chat", payload={"messages": [{"role": "user", "content": f"q{i}"}]}))
    await bus.redis.xadd(KEYS.dead, {"id": "deadbeef", "kind": "chat", "reason": "too many attempts (3)"})

    code, out = await status(env)
    assert code == 1, out  # Redis fine, but nobody to run the jobs
    assert "Workers alive: 0" in out and "2 waiting" in out and "Dead letters: 1" in out
    assert "too many attempts" in out and "AOF" in out

    code, out = await status(env, "--json")
    data = json.loads(out)
    assert data["queue_depth"] == 2 and data["dead_letters"] == 1 and data["workers"] == []
    assert data["redis_memory"] and data["redis_version"]

    w = Worker(settings.model_copy(update={"worker_concurrency": 3}), bus, TestEngine(), worker_id="status-w1")
    task = asyncio.create_task(w.run())
    try:
        for _ in range(400):  # ≤ 20 s for both jobs to be answered
            if w.jobs_done >= 2:
                break
            await asyncio.sleep(0.05)
        code, out = await status(env, "--json")
        data = json.loads(out)
        assert code == 0, out
        assert [x["id"] for x in data["workers"]] == ["status-w1"]
        assert data["workers"][0]["engine"].startswith("test") and data["workers"][0]["concurrency"] == 3
        assert data["capacity"] == 3 and data["queue_depth"] == 0 and data["running"] == 0
        code, out = await status(env)
        assert "Workers alive: 1" in out and "status-w1" in out
    finally:
        w.stop()
        await asyncio.wait_for(task, 30)


async def test_status_without_redis_fails_fast(settings: Settings, tmp_path) -> None:
    env = subprocess_env(settings, REDIS_URL=f"redis://:s3cretpw@127.0.0.1:{free_port()}/0")
    started = time.monotonic()
    code, out = await status(env)
    assert code == 2 and "Cannot reach Redis" in out
    assert "s3cretpw" not in out  # the URL is shown without its password
    assert time.monotonic() - started < 30
    # No REDIS_URL and no running bot: it must not start an embedded Redis of its own.
    env = subprocess_env(settings, REDIS_URL="", DATA_DIR=str(tmp_path / "nobot"))
    code, out = await status(env)
    assert code == 2 and "is the bot running" in out
    assert not (tmp_path / "nobot" / "redis.sock").exists()


async def test_stats_command_in_discord(discord_harness, discord_bot) -> None:  # type: ignore[no-untyped-def]
    """`/stats` through the fake Discord: admins get the report (ephemeral), others a polite refusal."""
    h = discord_harness
    await discord_bot.start()
    await discord_bot.runtime.bus.redis.xadd(KEYS.dead, {"id": "feedface", "kind": "chat", "reason": "poison"})
    interaction = await h.slash("stats", user=h.alice)
    [refusal] = await discord_bot.answer(interaction)
    assert refusal.ephemeral and "admin" in visible_text(refusal).lower() and "Workers" not in visible_text(refusal)
    interaction = await h.slash("stats", user=h.carol)  # carol has the Admins role (Manage Server)
    [report] = await discord_bot.answer(interaction)
    assert report.ephemeral
    assert "Workers alive: 1" in visible_text(report) and "Queue: 0 waiting" in visible_text(report)
    assert "Dead letters: 1" in visible_text(report) and "poison" in visible_text(report)
    assert "1 guilds" in visible_text(report) and "Discord 429s" in visible_text(report)
    assert len(visible_text(report)) <= 2000
