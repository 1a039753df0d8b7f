"""64 jobs at once on one worker process with WORKER_CONCURRENCY=64 and a fixed per-token latency: they
overlap (a batching engine would batch them), and no answer ends up in the wrong reply or history.

The bound is loose on purpose (< 3x one job's time) because the machine is shared; `bench/` measures the
real ratio."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from worker_procs import WorkerProc, wait_alive

from handlers.chat import ChatHandler, Request, Update
from handlers.history import HistoryStore
from handlers.overrides import ConfStore
from models.protocol import Bus
from models.settings import Settings

JOBS = 64
TOKEN_DELAY = 0.05
PIECES = 20  # the test engine says TEXT in 4-character pieces: 20 x 50 ms = 1 s per job


def answer_for(i: int) -> str:
    body = f"job{i:02d}:" + "".join(chr(ord("a") + (i + k) % 26) for k in range(PIECES * 4 - 12))
    return f"{body}:end{i:02d}"[: PIECES * 4]


@pytest.fixture
def proc(settings: Settings, tmp_path: Path) -> Iterator[WorkerProc]:
    p = WorkerProc(
        settings,
        tmp_path,
        "c64",
        WORKER_CONCURRENCY=str(JOBS),
        TEST_ENGINE_TOKEN_DELAY=str(TOKEN_DELAY),
        LOG_LEVEL="WARNING",
    )
    yield p
    p.close()


async def test_64_jobs_overlap_and_stay_apart(settings: Settings, bus: Bus, proc: WorkerProc) -> None:
    await wait_alive(bus, [proc])
    history = HistoryStore(bus.redis)
    chat = ChatHandler(bus, history, ConfStore(bus.redis, settings), settings)

    async def one(i: int) -> tuple[Update, float]:
        began = time.perf_counter()
        reply = await chat.ask(Request(conversation=f"conc:{i}", text=f"[[say:{answer_for(i)}]]"))
        async with asyncio.timeout(60):
            updates = [u async for u in chat.follow(reply)]
        assert all(u.text == answer_for(i)[: len(u.text)] for u in updates if u.kind == "text")
        return updates[-1], time.perf_counter() - began

    final, single = await one(999)  # warms the path too
    assert final.kind == "done"
    assert single >= PIECES * TOKEN_DELAY

    began = time.perf_counter()
    results = await asyncio.gather(*(one(i) for i in range(JOBS)))
    total = time.perf_counter() - began

    for i, (final, _took) in enumerate(results):
        assert final.kind == "done", final
        assert final.text == answer_for(i)
        assert final.attempt == 1
        assert final.data["usage"]["completion_tokens"] > 0
    for i in range(JOBS):
        turns = await history.recent(f"conc:{i}")
        assert [t.role for t in turns] == ["user", "assistant"]
        assert turns[1].content == answer_for(i)
    # Serial execution would take 64x; overlapping jobs take about one job's time.
    print(f"64 jobs: {total:.2f}s, one job: {single:.2f}s, ratio {total / single:.2f}")
    assert total < 3 * single, f"64 jobs took {total:.2f}s, one took {single:.2f}s"
    assert total < JOBS * PIECES * TOKEN_DELAY / 8
