"""What every bench shares: a private Redis, a worker to run jobs, results and how they print.

Benches start their own redis-server (the embedded one, on a Unix socket in a temp dir, no persistence) so a
run never touches the bot's data and measures the same transport the default install uses.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from models.engines.base import Engine  # noqa: E402
from models.protocol import Bus, Event, Job  # noqa: E402
from models.redis_server import EmbeddedRedis, connect, wait_ready  # noqa: E402
from models.settings import Settings  # noqa: E402
from models.worker import Worker  # noqa: E402


@dataclass
class Options:
    quick: bool = False  # fewer repetitions (CI smoke run)
    verbose: bool = False
    p1_levels: tuple[int, ...] = ()  # P1's channel counts answered at once (empty: bench/discord_path.P1_LEVELS)


@dataclass
class Result:
    """One measured figure.  `ratio`-style results carry the target they are judged against."""

    bench: str
    metric: str
    value: float
    unit: str = ""
    target: str = ""  # e.g. "≥ 0.9"
    ok: bool | None = None  # None = informational
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def verdict(self) -> str:
        return "" if self.ok is None else ("ok" if self.ok else "MISSED")


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) — honest for small samples, no interpolation."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


# ------------------------------------------------------------------------------------------------ Redis
@contextlib.contextmanager
def private_redis() -> Iterator[str]:
    """A throwaway redis-server on a Unix socket; yields its URL."""
    with tempfile.TemporaryDirectory(prefix="bench-redis-") as tmp:
        server = EmbeddedRedis(Path(tmp), appendonly=False)
        try:
            yield server.start()
        finally:
            server.stop()


def bench_settings(url: str, **overrides: Any) -> Settings:
    base: dict[str, Any] = {
        "redis_url": url,
        "engine": "test",
        "data_dir": Path(tempfile.gettempdir()),
        "job_visibility_timeout": 30.0,
        "worker_concurrency": 4,
        "embedded_worker": False,
        "log_level": "WARNING",
    }
    base.update(overrides)
    return Settings(_env_file=None, **base)


@contextlib.asynccontextmanager
async def bus_for(settings: Settings) -> AsyncIterator[Bus]:
    client = connect(settings.redis_url)
    await wait_ready(client)
    bus = Bus(client, reply_ttl=settings.reply_ttl, blob_ttl=settings.blob_ttl, max_job_bytes=settings.max_job_bytes)
    await bus.ensure_group()
    try:
        yield bus
    finally:
        await bus.close()
        await client.aclose()


@contextlib.asynccontextmanager
async def in_process_worker(settings: Settings, bus: Bus, engine: Engine) -> AsyncIterator[Worker]:
    """A worker in this process and event loop — the `EMBEDDED_WORKER=true` topology."""
    worker = Worker(settings, bus, engine, worker_id=f"bench-{os.getpid()}")
    task = asyncio.create_task(worker.run())
    try:
        await wait_for_workers(bus, 1)
        yield worker
    finally:
        worker.stop()
        await asyncio.wait_for(task, 60)


@contextlib.asynccontextmanager
async def worker_processes(
    settings: Settings, bus: Bus, count: int = 1, **env: str
) -> AsyncIterator[list[subprocess.Popen[bytes]]]:
    """`python -m models.worker` processes — the separate-worker topology (and P3's scale-out)."""
    child_env = {k: v for k, v in os.environ.items() if k not in ("DISCORD_TOKEN", "OPENAI_API_KEY")}
    child_env.update(
        {
            "REDIS_URL": settings.redis_url,
            "ENGINE": settings.engine,
            "PYTHONPATH": str(ROOT),
            "WORKER_CONCURRENCY": str(settings.worker_concurrency),
            "LOG_LEVEL": "WARNING",
            "TEST_ENGINE_TOKEN_DELAY": str(settings.test_engine_token_delay),
            "JOB_VISIBILITY_TIMEOUT": str(settings.job_visibility_timeout),
        }
    )
    child_env.update(env)
    procs = _spawn_workers(count, child_env)
    try:
        await wait_for_workers(bus, count)
        yield procs
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def _spawn_workers(count: int, env: dict[str, str]) -> list[subprocess.Popen[bytes]]:
    return [
        subprocess.Popen([sys.executable, "-m", "models.worker"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
        for _ in range(count)
    ]


async def wait_for_workers(bus: Bus, count: int, limit_s: float = 60.0) -> None:
    deadline = time.monotonic() + limit_s
    while len(await bus.alive_workers()) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{count} worker(s) did not come up in {limit_s:.0f}s")
        await asyncio.sleep(0.05)


# ------------------------------------------------------------------------------------------------ jobs
def chat_job(user: str, *, system: str = "", params: dict[str, Any] | None = None) -> Job:
    return Job(
        kind="chat",
        conversation="bench",
        payload={"system": system, "messages": [{"role": "user", "content": user}], "params": params or {}},
    )


async def run_job(bus: Bus, job: Job, on_delta: Callable[[Event, float], None] | None = None) -> tuple[Event, float]:
    """Submit a job and read its reply stream to the final event; returns (final event, seconds taken)."""
    started = time.perf_counter()
    await bus.submit(job)
    async for event in bus.events(job.id, block_ms=1000):
        if event is None:
            if time.perf_counter() - started > 600:
                raise TimeoutError(f"job {job.id} got no answer")
            continue
        if event.type == "delta" and on_delta is not None:
            on_delta(event, time.perf_counter())
        if event.final:
            return event, time.perf_counter() - started
    raise RuntimeError("reply stream ended without a final event")


# ------------------------------------------------------------------------------------------------ output
def machine() -> str:
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    cpu = cpu or platform.processor() or platform.machine()
    return f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}"


def table(results: list[Result], markdown: bool = False) -> str:
    header = ["bench", "metric", "value", "target", "verdict", "note"]
    rows = [[r.bench, r.metric, f"{r.value:.3g} {r.unit}".strip(), r.target, r.verdict(), r.note] for r in results]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows, strict=False)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*header), fmt.format(*("-" * w for w in widths))] + [fmt.format(*r) for r in rows])


def parse_options(
    argv: list[str] | None = None, *, names: list[str] | None = None
) -> tuple[Options, argparse.Namespace]:
    parser = argparse.ArgumentParser(description="Benchmarks (ratios measured side by side in one run)")
    if names is not None:
        parser.add_argument(
            "benches", nargs="*", metavar="BENCH", help=f"which to run (default: all of {', '.join(names)})"
        )
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (a smoke run)")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument(
        "--p1-levels",
        metavar="N,N",
        default=os.environ.get("BENCH_P1_LEVELS", ""),
        help="P1: how many channels are answered at once, comma-separated (default 1,16,32,64; env BENCH_P1_LEVELS)",
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    try:
        levels = tuple(int(n) for n in args.p1_levels.replace(" ", "").split(",") if n)
    except ValueError:
        parser.error(f"--p1-levels takes whole numbers separated by commas, not {args.p1_levels!r}")
    if any(not 1 <= n <= 128 for n in levels):
        parser.error("--p1-levels: each count must be between 1 and 128 (the bench makes 128 channels)")
    return Options(quick=args.quick, verbose=args.verbose, p1_levels=levels), args


def report(results: list[Result], args: argparse.Namespace) -> None:
    print(f"# {time.strftime('%Y-%m-%d %H:%M')} — {machine()}")
    print(table(results, markdown=args.markdown))
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "results": [asdict(r) for r in results]},
                indent=2,
            )
        )


def main_for(run: Callable[[Options], Awaitable[list[Result]]], argv: list[str] | None = None) -> int:
    """Entry point of a bench module run alone (`python -m bench.NAME`)."""
    opts, args = parse_options(argv)
    results = asyncio.run(run(opts))
    report(results, args)
    return 0
