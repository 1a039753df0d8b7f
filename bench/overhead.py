"""Per-job overhead of the queue path: submit → worker → reply stream → final event, with an instant engine.

The engine answers at once (`ENGINE=test`, no per-token delay, a one-piece reply), so what is measured is the
protocol: XADD, XREADGROUP, the status/delta/done events, XREAD on the reply stream, XACK.  Jobs run one after
another (latency, not throughput), with the worker in this process (`EMBEDDED_WORKER=true`, the default) and in
a separate `python -m models.worker` process.  Target: p50 ≤ 5 ms.
"""

from __future__ import annotations

from bench.common import (
    Options,
    Result,
    bench_settings,
    bus_for,
    chat_job,
    in_process_worker,
    main_for,
    percentile,
    private_redis,
    run_job,
    worker_processes,
)
from models.engines.testing import TestEngine

TARGET_P50_MS = 5.0


async def _latencies(bus, count: int) -> list[float]:
    out: list[float] = []
    for i in range(count):
        final, seconds = await run_job(bus, chat_job(f"[[say:ok{i}]]"))
        assert final.type == "done", final
        out.append(seconds * 1000)
    return out


async def run(opts: Options) -> list[Result]:
    count, warmup = (60, 10) if opts.quick else (400, 40)
    results: list[Result] = []
    with private_redis() as url:
        settings = bench_settings(url, test_engine_token_delay=0.0)
        for label in ("embedded worker", "worker process"):
            async with bus_for(settings) as bus:
                if label == "embedded worker":
                    ctx = in_process_worker(settings, bus, TestEngine())
                else:
                    ctx = worker_processes(settings, bus, 1)
                async with ctx:
                    await _latencies(bus, warmup)
                    ms = await _latencies(bus, count)
            p50, p99 = percentile(ms, 50), percentile(ms, 99)
            results.append(
                Result(
                    "overhead",
                    f"p50 per job ({label})",
                    p50,
                    "ms",
                    f"≤ {TARGET_P50_MS:g} ms",
                    p50 <= TARGET_P50_MS,
                    f"{count} sequential jobs",
                )
            )
            results.append(Result("overhead", f"p99 per job ({label})", p99, "ms", "", None, f"max {max(ms):.1f} ms"))
    return results


if __name__ == "__main__":
    raise SystemExit(main_for(run))
