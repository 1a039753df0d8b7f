"""Tokens/s of the bundled CPU model: raw llama.cpp vs delivered through the queue and the worker.

Same prompts, same greedy settings, measured in pairs (raw then worker, worker then raw, …) so machine load
hits both sides alike.  Raw = llama-cpp-python's streaming chat completion called directly; delivered = a chat job
submitted to Redis, run by a worker with the llama.cpp engine, read back from the reply stream until `done`.
Tokens are counted with the model's tokenizer on the final text, on both sides; time runs from the request to
the last token.  Target: delivered / raw ≥ 0.9.

The machine is shared, so load drifts during a run: the headline figure is the median of the per-pair ratios
(each delivered run against the raw run just before it), which a load spike in one pair cannot move much; the
rates over all runs are printed too.
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
)
from models.engines.llamacpp import LlamaCppEngine

SYSTEM = "You are a helpful assistant."
PROMPTS = [
    "Explain in a few sentences why the sky is blue.",
    "Write a short poem about the sea.",
    "List five tips for learning a new language.",
]
MAX_TOKENS = 48  # short runs, many pairs: each pair sees about the same machine load
TARGET = 0.9


def raw_chat(llm, prompt: str, system: str = SYSTEM, max_tokens: int = MAX_TOKENS) -> tuple[str, float]:
    """One direct llama-cpp-python streaming call, greedy: (text, seconds to the last token).  The "raw" side
    of every delivered-vs-raw ratio (this bench and P4)."""
    started = time.perf_counter()
    parts: list[str] = []
    for chunk in llm.create_chat_completion(
        messages=[{"role": "system", "content": system}, {"role": "user", "content": prompt}],
        stream=True,
        temperature=0.0,
        top_p=1.0,
        max_tokens=max_tokens,
        repeat_penalty=1.0,
    ):
        piece = chunk["choices"][0]["delta"].get("content")
        if piece:
            parts.append(piece)
    return "".join(parts), time.perf_counter() - started


async def run(opts: Options) -> list[Result]:
    pairs = 4 if opts.quick else 16
    raw_tokens = raw_seconds = got_tokens = got_seconds = 0.0
    pair_ratios: list[float] = []
    with private_redis() as url:
        settings = bench_settings(url, engine="llamacpp", worker_concurrency=1, llamacpp_n_ctx=2048)
        engine = LlamaCppEngine.from_settings(settings)
        raw_engine = LlamaCppEngine.from_settings(settings)  # its own llama.cpp context, same weights file
        await raw_engine.start()
        async with bus_for(settings) as bus, in_process_worker(settings, bus, engine):
            params = {"temperature": 0.0, "top_p": 1.0, "max_new_tokens": MAX_TOKENS, "repetition_penalty": 1.0}
            await run_job(bus, chat_job("Hi", system=SYSTEM, params=params | {"max_new_tokens": 4}))  # warm-up
            await asyncio.to_thread(raw_chat, raw_engine.llm, "Hi")
            for pair in range(pairs):
                prompt = PROMPTS[pair % len(PROMPTS)]
                rates: dict[str, float] = {}
                for side in ("raw", "worker") if pair % 2 == 0 else ("worker", "raw"):  # alternate the order
                    if side == "raw":
                        text, seconds = await asyncio.to_thread(raw_chat, raw_engine.llm, prompt)
                        tokens = raw_engine.count_tokens(text)
                        raw_tokens, raw_seconds = raw_tokens + tokens, raw_seconds + seconds
                    else:
                        final, seconds = await run_job(bus, chat_job(prompt, system=SYSTEM, params=params))
                        assert final.type == "done", final
                        tokens = engine.count_tokens(final.data["text"])
                        got_tokens, got_seconds = got_tokens + tokens, got_seconds + seconds
                    rates[side] = tokens / seconds
                pair_ratios.append(rates["worker"] / rates["raw"])
        await raw_engine.close()
    raw_rate, got_rate = raw_tokens / raw_seconds, got_tokens / got_seconds
    ratio = median(pair_ratios)
    return [
        Result("cpu_tokens", "raw llama.cpp", raw_rate, "tok/s", note=f"{raw_tokens:.0f} tokens"),
        Result("cpu_tokens", "delivered by worker", got_rate, "tok/s", note=f"{got_tokens:.0f} tokens"),
        Result(
            "cpu_tokens",
            "delivered / raw (median of pairs)",
            ratio,
            "×",
            f"≥ {TARGET:g}",
            ratio >= TARGET,
            f"{len(pair_ratios)} pairs, {min(pair_ratios):.2f}–{max(pair_ratios):.2f}; all runs "
            f"{got_rate / raw_rate:.2f}",
        ),
    ]


if __name__ == "__main__":
    raise SystemExit(main_for(run))
