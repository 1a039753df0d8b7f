"""Issue 6, P3 scale-out: 1, 2, 4, 8 `python -m models.worker` processes sharing one Redis.

Each worker runs the test engine with a fixed per-job latency (`TOKENS` tokens × `TOKEN_DELAY`) and a
fixed capacity (`WORKER_CONCURRENCY=SLOTS`), like a GPU that serves a few requests at once: one worker's
throughput is about SLOTS / latency, and W workers should give W times that.  Reported per W:
throughput / (W × one worker's throughput).  Target ≥ 0.9.  Jobs are submitted all at once (`WAVES`
rounds of every slot), so the figure includes the claim/ack path and the final wave's stragglers.
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
    main_for,
    private_redis,
    run_job,
    worker_processes,
)

WORKERS = (1, 2, 4, 8)
SLOTS = 4  # jobs one worker runs at once
TOKENS, TOKEN_DELAY = 10, 0.05  # → 0.5 s per job
TARGET = 0.9


async def _throughput(bus, jobs: int) -> float:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    finals = await asyncio.gather(*(run_job(bus, chat_job(f"[[repeat:{TOKENS}]]")) for _ in range(jobs)))
    assert all(final.type == "done" for final, _ in finals)
    return jobs / (time.perf_counter() - started)


async def run(opts: Options) -> list[Result]:
    waves = 4 if opts.quick else 8
    rates: dict[int, float] = {}
    with private_redis() as url:
        settings = bench_settings(
            url, test_engine_token_delay=TOKEN_DELAY, worker_concurrency=SLOTS, job_visibility_timeout=30.0
        )
        for count in WORKERS:
            async with bus_for(settings) as bus, worker_processes(settings, bus, count):
                await _throughput(bus, count * SLOTS)  # warm-up wave
                rates[count] = await _throughput(bus, count * SLOTS * waves)
    one = rates[1]
    results = [
        Result(
            "P3",
            "1 worker",
            one,
            "jobs/s",
            note=f"{SLOTS} slots × {TOKENS * TOKEN_DELAY:.1f} s jobs, ideal {SLOTS / (TOKENS * TOKEN_DELAY):.1f}",
            extra={"workers": 1, "rate": one},
        )
    ]
    for count in WORKERS[1:]:
        efficiency = rates[count] / (count * one)
        results.append(
            Result(
                "P3",
                f"{count} workers: rate / ({count} × one)",
                efficiency,
                "×",
                f"≥ {TARGET:g}",
                efficiency >= TARGET,
                f"{rates[count]:.1f} jobs/s",
                extra={"workers": count, "rate": rates[count]},
            )
        )
    return results


if __name__ == "__main__":
    raise SystemExit(main_for(run))
