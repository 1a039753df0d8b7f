"""`/agent` in console mode (`python -m bot console`, a real subprocess with its embedded Redis and worker) on
`ENGINE=openai`, against a local OpenAI-compatible server that replays the recorded InternLM2.5-7B-Chat math run
verbatim (source: InternLM/lagent examples/run_agent_lmdeploy.py @ 1c094f706d29208b20e5169a597e6c380c74375c;
tests/fixtures/internlm2/math_run.json) and gives each turn only after the real sandbox result of the turn
before reached the prompt."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_agent_replay import MATH, MODEL, math_turns
from test_console import ROOT, assert_no_redis_left, console_env

from models.sandbox import SandboxLimits
from tests.fakeopenai import INTERNLM2_SPECIAL, FakeOpenAI
from tests.sandbox_support import sandbox_or_skip

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def server() -> Iterator[FakeOpenAI]:
    """The replay server on its own event loop in a thread (the test itself blocks on the subprocess)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="fake-openai", daemon=True)
    thread.start()
    fake = asyncio.run_coroutine_threadsafe(FakeOpenAI(models=(MODEL,)).start(), loop).result(10)
    fake.skip_special, fake.apply_stop = INTERNLM2_SPECIAL, True  # as lmdeploy serves it
    yield fake
    asyncio.run_coroutine_threadsafe(fake.stop(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


def test_console_runs_the_recorded_math_run(server: FakeOpenAI, tmp_path: Path) -> None:
    pytest.importorskip("sympy")
    sandbox_or_skip(SandboxLimits())
    server.replay(math_turns())
    data = tmp_path / "data"
    proc = subprocess.run(
        [sys.executable, "-m", "bot", "console"],
        input=f"/agent {MATH['task']}\n/agent\n",
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=150,
        env=console_env(
            data,
            "openai",
            OPENAI_BASE_URL=server.base_url,
            CHAT_MODEL=MODEL,
            AGENT_ARXIV="false",
            AGENT_PROTOCOL="internlm2",
        ),
    )  # the recording's
    out, err = proc.stdout, proc.stderr
    assert proc.returncode == 0, err[-2000:]
    assert server.replay_errors == [] and server.turns == []
    assert out.count("🐍 **Python**") == 2 and out.count("```python") == 2 and "\u200b" not in out
    assert "factors_of_63 = divisors(63)\nfactors_of_63\n```" in out
    assert "```\n[1, 3, 7, 9, 21, 63]\n```" in out and "```\n-3969\n```" in out
    assert MATH["turns"][-1]["model"] in out  # the recorded final answer, −3969
    assert "Tell the agent what to do" in out  # the empty /agent
    for bad in ("Traceback", "never retrieved", "APIConnectionError", "ERROR"):
        assert bad not in err, err[-2000:]
    assert_no_redis_left(data)
