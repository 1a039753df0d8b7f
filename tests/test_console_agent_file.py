"""`/agent --file PATH` in console mode (`python -m bot console`, a real subprocess with its embedded Redis and
worker) on `ENGINE=openai` against the local OpenAI-compatible server: the file is in the sandbox's working
directory, the model's code reads it and the value it prints is what the real sandbox computed; a refused
file gets text_files.py's refusal and no model call."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_agent_replay import MODEL, env_turn
from test_console import ROOT, assert_no_redis_left, console_env

from models.sandbox import SandboxLimits
from tests.fakeopenai import FakeOpenAI, ReplayTurn, threaded
from tests.sandbox_support import sandbox_or_skip

pytestmark = pytest.mark.timeout(180)
CSV = "item,price,qty\napple,1.25,4\npear,0.80,10\nfig,3.10,3\n"
TOTAL = (
    "import csv\nrows = list(csv.DictReader(open('data.csv')))\n"
    "round(sum(float(r['price']) * int(r['qty']) for r in rows), 2)"
)


@pytest.fixture
def server() -> Iterator[FakeOpenAI]:
    """The replay server on its own event loop in a thread (the test itself blocks on the subprocess)."""
    with threaded((MODEL,)) as fake:
        yield fake


def test_console_agent_reads_the_file(server: FakeOpenAI, tmp_path: Path) -> None:
    sandbox_or_skip(SandboxLimits())
    server.replay(
        [
            ReplayTurn(
                "I'll read it.<|action_start|><|interpreter|>\n```python\n" + TOTAL + "\n```",
                requires=("data.csv", "working directory"),
            ),
            ReplayTurn("The total is 22.3.", requires=(env_turn("22.3"),)),
        ]
    )
    (tmp_path / "data.csv").write_text(CSV, encoding="utf-8")
    (tmp_path / "blob.txt").write_bytes(b"\x00\x01\x02\x03" * 100)
    data = tmp_path / "data"
    lines = [
        f"/agent --file {tmp_path / 'data.csv'} What is the total of price × qty?",
        f"/agent --file {tmp_path / 'blob.txt'} Sum it.",
        f"/agent --file {tmp_path / 'nope.csv'} Sum it.",
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "bot", "console"],
        input="".join(f"{line}\n" for line in lines),
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
    )
    out, err = proc.stdout, proc.stderr
    assert proc.returncode == 0, err[-2000:]
    assert server.replay_errors == [] and server.turns == []
    assert "```\n22.3\n```" in out and "The total is 22.3." in out
    assert "“blob.txt” looks like a binary file" in out and "I can't open" in out
    assert len(server.requests) == 2  # the refused files asked the model nothing
    assert "Traceback" not in err, err[-2000:]
    assert_no_redis_left(data)
