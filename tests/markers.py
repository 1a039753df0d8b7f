"""Marks the slow tests `slow`, so a newcomer runs the fast unit tests in seconds: `make test-fast`
(`pytest -m "not slow"`); `make test` still runs everything.

Slow = a test that starts something big: the real discord.py bot against the fake Discord
(`discord_harness`/`discord_bot`), worker or bot processes (`procs`, or a file that spawns them), the
llama.cpp model, sandboxed processes, or the benchmarks.  Loaded from pyproject.toml (`-p tests.markers`),
so a new test file of that kind only needs its name below, or one of the fixtures.
"""

from __future__ import annotations

from pathlib import Path

import pytest

SLOW_FIXTURES = frozenset({"discord_harness", "discord_bot", "procs"})
SLOW_FILES = frozenset(
    {
        "test_agent.py",
        "test_agent_replay.py",
        "test_bench.py",
        "test_chaos.py",
        "test_console.py",
        "test_console_agent.py",
        "test_discord_process.py",
        "test_discord_worker.py",
        "test_llamacpp.py",
        "test_lmdeploy_engine.py",
        "test_sandbox.py",
        "test_sandbox_redteam.py",
        "test_worker_faults.py",
    }
)
SLOW_NAMES = ("llamacpp", "sandbox")  # a test elsewhere that loads the model or starts a sandbox says so


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        name = Path(str(item.fspath)).name
        if (
            name in SLOW_FILES
            or SLOW_FIXTURES & set(getattr(item, "fixturenames", ()))
            or any(word in item.name.lower() for word in SLOW_NAMES)
        ):
            item.add_marker(pytest.mark.slow)
