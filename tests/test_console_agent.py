"""`/agent` in console mode (`python -m bot console`, a real subprocess with its embedded Redis and worker) on
`ENGINE=openai`, against a local OpenAI-compatible server that replays the recorded InternLM2.5-7B-Chat math run
verbatim (source: InternLM/lagent examples/run_agent_lmdeploy.py @ 1c094f706d29208b20e5169a597e6c380c74375c;
tests/fixtures/internlm2/math_run.json) and gives each turn only after the real sandbox result of the turn
before reached the prompt."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_agent_replay import MATH, MODEL, math_turns
from test_console import ROOT, assert_no_redis_left, console_env

from models.sandbox import SandboxLimits
from tests.fakeopenai import FakeOpenAI, threaded
from tests.sandbox_support import sandbox_or_skip

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def server() -> Iterator[FakeOpenAI]:
    """The replay server on its own event loop in a thread (the test itself blocks on the subprocess)."""
    with threaded((MODEL,)) as fake:
        yield fake


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
