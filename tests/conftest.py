"""Shared fixtures: a real Redis server per test session (never a mock), settings, a bus, a worker."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as sync_redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from models.engines.testing import TestEngine  # noqa: E402
from models.protocol import Bus  # noqa: E402
from models.redis_server import connect, find_redis_server  # noqa: E402
from models.settings import Settings  # noqa: E402
from models.worker import Worker  # noqa: E402

pytest_plugins = ["tests.fakediscord.fixtures"]  # the fake Discord: discord_harness, discord_bot

# Tests must never pick up a developer's .env or environment by accident.
for _name in list(os.environ):
    if _name in Settings.model_fields or _name.lower() in Settings.model_fields:
        os.environ.pop(_name)
# ... and never reach the model hub: the CPU engine uses the bundled model unless a test names another
# (tests/test_hub.py points the real huggingface_hub client at its own stand-in, tests/fakehub.py).
os.environ["LLAMACPP_MODEL"] = "bundled"
os.environ["HF_HUB_OFFLINE"] = "1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    """A real redis-server process on a free loopback port."""

    def __init__(self, workdir: Path, appendonly: bool = False) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.appendonly = appendonly
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                find_redis_server(),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes" if self.appendonly else "no",
                "--dir",
                str(self.workdir),
                "--daemonize",
                "no",
                "--loglevel",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = sync_redis.Redis(port=self.port)
        for _ in range(200):
            with contextlib.suppress(Exception):
                if client.ping():
                    return self
            time.sleep(0.025)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def flush(self) -> None:
        sync_redis.Redis(port=self.port).flushall()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    redis_server.flush()
    return redis_server.url


@pytest.fixture
def settings(redis_url: str, tmp_path: Path) -> Settings:
    return Settings(
        _env_file=None,
        redis_url=redis_url,
        engine="test",
        data_dir=tmp_path / "data",
        job_visibility_timeout=2.0,
        worker_concurrency=4,
        embedded_worker=True,
    )


@pytest.fixture
async def bus(settings: Settings) -> AsyncIterator[Bus]:
    client = connect(settings.redis_url)
    bus = Bus(client, reply_ttl=settings.reply_ttl, blob_ttl=settings.blob_ttl, max_job_bytes=settings.max_job_bytes)
    await bus.ensure_group()
    yield bus
    await bus.close()
    await client.aclose()


@pytest.fixture
def engine() -> TestEngine:
    return TestEngine()


@pytest.fixture
async def worker(settings: Settings, bus: Bus, engine: TestEngine) -> AsyncIterator[Worker]:
    w = Worker(settings, bus, engine, worker_id="test-worker")
    task = asyncio.create_task(w.run())
    yield w
    w.stop()
    await asyncio.wait_for(task, 30)


def subprocess_env(settings: Settings, **extra: str) -> dict[str, str]:
    """Environment for a child process (a worker, the console) that uses the test Redis."""
    env = {k: v for k, v in os.environ.items() if k not in ("DISCORD_TOKEN", "OPENAI_API_KEY")}
    env.update(
        {
            "REDIS_URL": settings.redis_url,
            "ENGINE": settings.engine,
            "PYTHONUNBUFFERED": "1",
            "JOB_VISIBILITY_TIMEOUT": str(settings.job_visibility_timeout),
            "DATA_DIR": str(settings.data_dir),
            "PYTHONPATH": str(ROOT),
        }
    )
    env.update(extra)
    return env


@pytest.fixture
def procs() -> Iterator[list[Any]]:
    """Worker subprocesses a test starts (tests/worker_procs.WorkerProc); all are killed afterwards."""
    started: list[Any] = []
    yield started
    for proc in started:
        proc.close()
