"""Benchmarks: ratios measured side by side in one run (not timed tests).

    python -m bench                 run every bench, print a table of ratios
    python -m bench overlap         run some of them (names from REGISTRY)
    python -m bench.overlap         run one module alone

Adding a bench is one module with `async def run(opts: Options) -> list[Result]` (see `bench/common.py`)
plus one line in `REGISTRY`.
"""

from __future__ import annotations

# name → module.  Order is the order of the printed table.
REGISTRY: dict[str, str] = {
    "cpu_tokens": "bench.cpu_tokens",  # tokens/s of the bundled model: raw llama.cpp vs delivered by the worker
    "overlap": "bench.overlap",  # 64 concurrent jobs vs one, on a fixed-latency engine
    "overhead": "bench.overhead",  # per-job latency of the queue path with an instant engine
    "production": "bench.production",  # issue 6: P1–P4 through the fake Discord, scale-out; writes the report
    "reply_path": "bench.reply_path",  # issue 12: P1 alone (event → final edit), e.g. --p1-levels 1,32
}
