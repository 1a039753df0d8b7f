"""`python -m bot console` as a newcomer runs it: a real subprocess with piped stdin, no REDIS_URL (so it starts
the embedded Redis under DATA_DIR), answers on stdout, exit at end of input, conversation kept across runs,
and no redis-server left behind."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from handlers.history import HistoryStore, conversation_id
from models.redis_server import EmbeddedRedis, connect

ROOT = Path(__file__).resolve().parent.parent


def console_env(data_dir: Path, engine: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DISCORD_TOKEN", "OPENAI_API_KEY", "REDIS_URL")}
    env.update(
        {
            "ENGINE": engine,
            "REDIS_URL": "",
            "DATA_DIR": str(data_dir),
            "PYTHONPATH": str(ROOT),
            "PYTHONUNBUFFERED": "1",
            "LLAMACPP_N_CTX": "1024",
        }
    )
    env.update(extra)
    return env


def run_console(data_dir: Path, lines: list[str], engine: str, timeout: float = 120, **extra: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "bot", "console"],
        input="".join(f"{line}\n" for line in lines),
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=timeout,
        env=console_env(data_dir, engine, **extra),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    assert_no_redis_left(data_dir)
    return result.stdout


def assert_no_redis_left(data_dir: Path) -> None:
    """No process still serves this data dir's socket (the console stops the Redis it started)."""
    sock = str((data_dir / "redis.sock").resolve())
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        assert sock not in cmdline or "redis-server" not in cmdline, f"left behind: {cmdline}"
    assert not EmbeddedRedis(data_dir)._answers()


def read_history(data_dir: Path, session: str = "default") -> list:
    """The console's conversation, read from the data it left on disk (AOF) by starting Redis on it again."""
    server = EmbeddedRedis(data_dir)
    url = server.start()

    async def read() -> list:
        client = connect(url)
        try:
            return await HistoryStore(client).recent(conversation_id(console=session))
        finally:
            await client.aclose()

    try:
        return asyncio.run(read())
    finally:
        server.stop()


def test_console_with_test_engine_exact_text_and_reset(tmp_path: Path) -> None:
    data = tmp_path / "data"
    out = run_console(data, ["hello there", "/reset", "", "again", "/nope"], engine="test", timeout=60)
    assert out.splitlines() == [
        "echo: hello there (turns=1, images=0) ",
        "Conversation cleared (2 turns forgotten).",
        "echo: again (turns=1, images=0) ",
        "Unknown command /nope. Type /help.",
    ]
    # The conversation survives the process (AOF under DATA_DIR): a second run continues it.
    out = run_console(data, ["more"], engine="test", timeout=60)
    assert out.splitlines() == ["echo: more (turns=2, images=0) "]
    assert [t.role for t in read_history(data)] == ["user", "assistant"] * 2


def test_console_with_bundled_model_remembers_across_runs(tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp")
    data = tmp_path / "data"
    questions = ["Hello, who are you?", "What is two plus two?"]
    out = run_console(data, questions, engine="llamacpp", MAX_NEW_TOKENS="16", TEMPERATURE="0")
    turns = read_history(data)
    assert [t.role for t in turns] == ["user", "assistant"] * 2
    assert [t.content for t in turns[::2]] == questions
    answers = [t.content for t in turns[1::2]]
    assert all(a.strip() for a in answers)
    assert out == "".join(f"{a}\n" for a in answers)  # each streamed answer, then a newline

    out = run_console(data, ["And three plus three?"], engine="llamacpp", MAX_NEW_TOKENS="16", TEMPERATURE="0")
    turns = read_history(data)
    assert [t.role for t in turns] == ["user", "assistant"] * 3  # the second run continued the conversation
    assert turns[4].content == "And three plus three?" and turns[5].content.strip()
    assert out == turns[5].content + "\n"
