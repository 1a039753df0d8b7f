"""Structured logs: the job id follows a request into the worker, JSON output parses, secrets never appear."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import subprocess
import sys

from pydantic import SecretStr

from handlers.chat import ChatHandler, Request
from handlers.history import HistoryStore
from handlers.overrides import ConfStore
from models import logs
from models.protocol import Bus
from models.settings import Settings
from tests.conftest import ROOT, subprocess_env

TOKEN = "MTIzNDU2Nzg5MDEyMzQ1Njc4.GAbCdE.abcdefghijklmnopqrstuvwxyz0123456789ab"
KEY = "sk-test-0123456789abcdefghijklmnop"


def capture(settings: Settings) -> tuple[io.StringIO, logging.Logger]:
    stream = io.StringIO()
    logger = logging.getLogger("ilm.test")
    logger.handlers = [logs.make_handler(settings, stream)]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    return stream, logger


def test_redaction_of_known_and_shaped_secrets(settings: Settings) -> None:
    s = settings.model_copy(update={"discord_token": SecretStr(TOKEN), "openai_api_key": SecretStr("hunter2-secret")})
    stream, logger = capture(s)
    logger.info("connecting with %s", TOKEN)
    logger.warning("openai key is %s", "hunter2-secret")
    logger.info("headers {'Authorization': 'Bot %s'}", "A" * 30)
    logger.info("url https://api.example/v1?api_key=%s&x=1 and %s", "zzzzzzzzzzzz", KEY)
    logger.info("redis://user:p4ssw0rd@redis:6379/0")
    try:
        raise RuntimeError(f"failed with token={TOKEN}")
    except RuntimeError:
        logger.exception("boom")
    out = stream.getvalue()
    for secret in (TOKEN, "hunter2-secret", "A" * 30, "zzzzzzzzzzzz", KEY, "p4ssw0rd"):
        assert secret not in out
    assert out.count(logs.REDACTED) >= 7
    assert "Bot [REDACTED]" in out and "api_key=[REDACTED]" in out  # still says what was hidden
    assert "redis://user:[REDACTED]@redis:6379/0" in out
    # Ordinary text is left alone.
    stream.truncate(0)
    logger.info("max_new_tokens=1024 completion_tokens: 37 Bot ready")
    assert logs.REDACTED not in stream.getvalue()


def test_json_format_carries_bound_fields(settings: Settings) -> None:
    s = settings.model_copy(update={"log_format": "json", "openai_api_key": SecretStr(KEY)})
    stream, logger = capture(s)

    async def one_request(job: str) -> None:
        logs.bind(job=job, conversation="g1:c2")
        await asyncio.sleep(0)
        logger.info("answering with key %s", KEY)

    async def main() -> None:  # two tasks: each keeps its own job id
        await asyncio.gather(one_request("job-a"), one_request("job-b"))

    asyncio.run(main())
    logger.info("outside")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert sorted(line.get("job", "") for line in lines) == ["", "job-a", "job-b"]
    assert all(line["level"] == "INFO" and line["logger"] == "ilm.test" for line in lines)
    assert all(KEY not in line["msg"] for line in lines)
    assert lines[0]["conversation"] == "g1:c2"
    with logs.log_context(job="inner"):
        logger.info("in a block")
    logger.info("after the block")
    tail = [json.loads(line) for line in stream.getvalue().splitlines()][-2:]
    assert tail[0]["job"] == "inner" and "job" not in tail[1]


def test_text_format_has_job_id(settings: Settings) -> None:
    stream, logger = capture(settings)
    with logs.log_context(job="abc123"):
        logger.info("hello")
    assert "[job=abc123]" in stream.getvalue()


async def test_job_id_reaches_worker_process_logs(settings: Settings, bus: Bus) -> None:
    """A real worker process logging JSON: the job id the bot created appears in the worker's lines,
    and the API key given to it in its environment never does."""
    env = subprocess_env(settings, LOG_FORMAT="json", LOG_LEVEL="INFO", OPENAI_API_KEY=KEY, DISCORD_TOKEN=TOKEN)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "models.worker", cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        chat = ChatHandler(bus, HistoryStore(bus.redis), ConfStore(bus.redis, settings), settings)
        reply = await chat.ask(Request(conversation="log:1", text=f"[[fail]] my key is {KEY}"))
        logs.bind(job=reply.job.id)  # what the Discord side does after submitting
        final = [u async for u in chat.follow(reply)][-1]
        assert final.kind == "error"
    finally:
        proc.terminate()
        out = (await asyncio.wait_for(proc.communicate(), 30))[0].decode()
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert lines, out
    tagged = [line for line in lines if line.get("job") == reply.job.id]
    assert tagged, out  # the worker logged about this job, tagged with its id
    assert all(line.get("attempt") == 1 and line.get("kind") == "chat" for line in tagged)
    assert any(line["msg"] == "job error: EngineError" for line in tagged)
    assert KEY not in out and TOKEN not in out
