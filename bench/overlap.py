"""64 concurrent jobs on a fixed-latency engine vs one job: does the worker really overlap them?

`ENGINE=test` with a fixed per-token delay behaves like a batching engine (any number of streams advance at
once), so with `WORKER_CONCURRENCY=64` the 64 jobs should take about as long as one.  Reported: wall time of
64 / time of one (median of a few singles).  Target ≤ 1.25×.
"""

from __future__ import annotations

import asyncio
import time

from bench.common import (
    Options,
    Result,
    bench_settings,
    bus_for,
    chat_job,
    in_process_worker,
    main_for,
    median,
    private_redis,
    run_job,
    worker_processes,
)
from models.engines.testing import TestEngine

TOKEN_DELAY = 0.02  # seconds per token
TOKENS = 25  # → one job ≈ 0.5 s of generation
JOBS = 64
TARGET = 1.25


async def _one(bus) -> float:
    final, seconds = await run_job(bus, chat_job(f"[[repeat:{TOKENS}]]"))
    assert final.type == "done", final
    return seconds


async def _many(bus, jobs: int) -> float:
    started = time.perf_counter()
    finals = await asyncio.gather(*[run_job(bus, chat_job(f"[[repeat:{TOKENS}]]")) for _ in range(jobs)])
    assert all(final.type == "done" for final, _ in finals)
    return time.perf_counter() - started


async def run(opts: Options) -> list[Result]:
    singles = 2 if opts.quick else 3
    results: list[Result] = []
    with private_redis() as url:
        settings = bench_settings(url, test_engine_token_delay=TOKEN_DELAY, worker_concurrency=JOBS)
        for label in ("embedded worker", "worker process"):
            async with bus_for(settings) as bus:
                if label == "embedded worker":
                    ctx = in_process_worker(settings, bus, TestEngine(token_delay=TOKEN_DELAY))
                else:
                    ctx = worker_processes(settings, bus, 1)
                async with ctx:
                    await _one(bus)  # warm-up
                    one = median([await _one(bus) for _ in range(singles)])
                    many = await _many(bus, JOBS)
            ratio = many / one
            results.append(
                Result(
                    "overlap",
                    f"{JOBS} jobs / 1 job ({label})",
                    ratio,
                    "×",
                    f"≤ {TARGET:g}×",
                    ratio <= TARGET,
                    f"one {one * 1000:.0f} ms, {JOBS} in {many * 1000:.0f} ms",
                )
            )
    return results


if __name__ == "__main__":
    raise SystemExit(main_for(run))
