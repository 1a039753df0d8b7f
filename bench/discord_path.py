"""Issue 6, P1/P2/P4: the whole Discord path — a message arrives over the gateway, the real bot (discord.py,
the chat cog, the handler, Redis, the embedded worker) answers, and the clock stops when the fake Discord
server (tests/fakediscord, the local Discord-compatible server) stores the reply's final edit.

* P1 overhead: instant engine, 1 / 16 / 32 / 64 messages at once in different channels (`--p1-levels`) →
  p50 and p99 of event → final reply edit.  Target (issue 6) p50 ≤ 10 ms, p99 ≤ 50 ms; issue 12's reply-path
  target is p50 ≤ 20 ms at 1 and p99 ≤ 150 ms at 32.  Each level's note carries the load average while it ran.
* P2 overlap: a batching engine with a fixed per-token latency (the test engine); 64 messages at once vs one
  → wall time of the 64 / median time of one.  Target ≤ 1.25×.
* P4 CPU engine: the bundled SmolLM2 (llama.cpp) behind the bot; tokens of the final Discord message per
  second (event → final edit) vs raw llama-cpp-python on the same prompts, alternately.  Target ≥ 0.9.

Each message goes to its own channel (or DM), so the per-channel write budget the bot keeps to Discord's
limits is not what is measured; see docs/performance.md for what these numbers include.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

from bench.common import Options, Result, main_for, median, percentile, private_redis
from bench.cpu_tokens import raw_chat

P1_LEVELS = (1, 16, 32, 64)
P1_TARGET_P50_MS, P1_TARGET_P99_MS = 10.0, 50.0
P1_ISSUE12 = {1: ("p50", 20.0), 32: ("p99", 150.0)}  # the reply-path targets of issue 12, by level
P2_JOBS, P2_TOKENS, P2_TOKEN_DELAY, P2_TARGET = 64, 25, 0.02, 1.25
P4_SYSTEM = "You are a helpful assistant."
P4_PROMPTS = [
    "Explain in a few sentences why the sky is blue.",
    "Write a short poem about the sea.",
    "List five tips for learning a new language.",
]
P4_MAX_TOKENS, P4_TARGET = 96, 0.9


@contextlib.asynccontextmanager
async def discord_bot(url: str, channels: int, users: int = 0, **overrides: Any) -> AsyncIterator[Any]:
    """The fake Discord with `channels` extra channels and `users` extra users, and the bot logged in."""
    from tests.fakediscord.fixtures import BotRunner, pointed_at
    from tests.fakediscord.harness import Harness

    harness = Harness()
    harness.bench_channels = [harness.world.add_channel(harness.guild, f"bench-{i}") for i in range(channels)]
    harness.bench_users = [harness.add_user(f"user{i}") for i in range(users)]
    await harness.start()
    with TemporaryDirectory(prefix="bench-bot-") as tmp, pointed_at(harness):
        runner = BotRunner(harness, url, Path(tmp))
        try:
            await runner.start(user_rate_limit="0/60", log_level="ERROR", **overrides)
            yield harness
        finally:
            await runner.stop()
            await harness.stop()


async def replies(harness: Any, posts: list[tuple[Any, Any, str]], limit_s: float = 120) -> list[tuple[float, str]]:
    """Post each (channel, author, text) at once (mentioning the bot outside DMs); returns per post
    (event → final edit in seconds, final text).  The final-edit time is the fake server's own timestamp
    of the stored message version; one coarse poller waits for all replies, so the waiting costs little."""
    from tests.fakediscord.fixtures import reply_finished
    from tests.fakediscord.harness import visible_text  # plain content or a V2 layout's text (RENDER_MODE)

    async def post(channel: Any, author: Any, text: str) -> tuple[float, Any]:
        content = text if channel.guild_id is None else f"{harness.bot.mention} {text}"
        started = time.monotonic()
        return started, await harness.send(channel, author, content)

    sent = await asyncio.gather(*(post(*p) for p in posts))
    deadline = time.monotonic() + limit_s
    out: list[tuple[float, str] | None] = [None] * len(sent)
    while any(o is None for o in out):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{sum(o is None for o in out)} replies did not finish")
        await asyncio.sleep(0.05)
        waiting = [i for i, o in enumerate(out) if o is None]
        newer = _bot_messages_since(harness, min(sent[i][1].id for i in waiting))
        for i in waiting:
            started, message = sent[i]
            msgs = [m for m in newer.get(message.channel_id, []) if m.id > message.id]  # = harness.replies_to
            if reply_finished(msgs) and msgs[-1].versions:
                final_at = max(version.at for m in msgs for version in m.versions)
                out[i] = (final_at - started, "".join(visible_text(m) for m in msgs))
    return [o for o in out if o is not None]


def _bot_messages_since(harness: Any, floor: int) -> dict[int, list[Any]]:
    """The bot's public messages newer than message id `floor`, by channel, oldest first — what
    `harness.replies_to` gives, read once per poll from the newest end.  The poller shares the process and
    its cores with the bot: scanning every stored message once per pending reply (thousands of messages
    × 32 replies every 50 ms) took CPU from the replies it timed."""
    by_channel: dict[int, list[Any]] = {}
    bot_id = harness.bot.id
    for m in reversed(harness.world.messages.values()):  # insertion order = creation order = id order
        if m.id <= floor:
            break
        if m.author.id == bot_id and not m.deleted and not m.ephemeral:
            by_channel.setdefault(m.channel_id, []).append(m)
    for msgs in by_channel.values():
        msgs.reverse()
    return by_channel


async def one_reply(harness: Any, channel: Any, author: Any, text: str, limit_s: float = 120) -> tuple[float, str]:
    return (await replies(harness, [(channel, author, text)], limit_s))[0]


# ------------------------------------------------------------------------------------------------ P1
async def p1_overhead(opts: Options, url: str) -> list[Result]:
    samples = {1: 20, 16: 64, 32: 64, 64: 128} if opts.quick else {1: 60, 16: 160, 32: 160, 64: 256}
    levels = opts.p1_levels or P1_LEVELS
    results: list[Result] = []
    async with discord_bot(url, channels=128, test_engine_token_delay=0.0, worker_concurrency=64) as h:
        channels = h.bench_channels
        for n in range(4):  # warm-up: connections, caches, first-call costs
            await one_reply(h, channels[n], h.alice, f"[[say:warm {n}]]")
        await asyncio.sleep(5.5)  # let the warm-up channels' write budgets refill
        for level in levels:
            ms: list[float] = []
            walls: list[float] = []  # per round: the posts to the last final edit
            loads: list[float] = []  # the 1-minute load average at each round: the machine is shared
            rounds = max(1, samples.get(level, max(64, 2 * level)) // level)
            used = 0
            for r in range(rounds):
                batch = [channels[(used + i) % len(channels)] for i in range(level)]
                used += level
                loads.append(os.getloadavg()[0])
                got = await replies(h, [(ch, h.alice, f"[[say:ok {r}-{i}]]") for i, ch in enumerate(batch)])
                assert all(text.strip() == f"ok {r}-{i}" for i, (_s, text) in enumerate(got)), got[:2]
                ms += [seconds * 1000 for seconds, _text in got]
                walls.append(max(seconds for seconds, _text in got))
                if used >= len(channels) - level:  # every channel used once: wait for budgets to refill
                    await asyncio.sleep(5.5)
                    used = 0
            p50, p99 = percentile(ms, 50), percentile(ms, 99)
            load = sum(loads) / len(loads)
            goal = P1_ISSUE12.get(level)
            goal_note = f"; issue 12: {goal[0]} ≤ {goal[1]:g} ms" if goal else ""
            results.append(
                Result(
                    "P1",
                    f"event→final edit p50 @{level}",
                    p50,
                    "ms",
                    f"≤ {P1_TARGET_P50_MS:g} ms",
                    p50 <= P1_TARGET_P50_MS,
                    f"{len(ms)} replies, load {load:.2f}" + (goal_note if goal and goal[0] == "p50" else ""),
                    extra={"level": level, "ms": ms, "load1": load},
                )
            )
            results.append(
                Result(
                    "P1",
                    f"event→final edit p99 @{level}",
                    p99,
                    "ms",
                    f"≤ {P1_TARGET_P99_MS:g} ms",
                    p99 <= P1_TARGET_P99_MS,
                    f"max {max(ms):.1f} ms" + (goal_note if goal and goal[0] == "p99" else ""),
                    extra={"level": level},
                )
            )
            if level > 1:  # what the 2 cores sustain: replies per second of wall time
                rate = level * len(walls) / sum(walls)
                results.append(
                    Result(
                        "P1",
                        f"replies/s @{level}",
                        rate,
                        "/s",
                        note="bot + fake Discord + worker + Redis on 2 cores",
                        extra={"level": level},
                    )
                )
    return results


# ------------------------------------------------------------------------------------------------ P2
async def p2_overlap(opts: Options, url: str) -> list[Result]:
    """Both topologies: the worker inside the bot process (the default install) and a separate
    `python -m models.worker` process (a deployment: the worker on its own host)."""
    results = []
    for label, embedded in (("embedded worker", True), ("worker process", False)):
        one, many = await _p2_once(opts, url, embedded)
        ratio = many / one
        results.append(
            Result(
                "P2",
                f"{P2_JOBS} at once / 1 (through Discord, {label})",
                ratio,
                "×",
                f"≤ {P2_TARGET:g}×",
                ratio <= P2_TARGET,
                f"one {one * 1000:.0f} ms, {P2_JOBS} in {many * 1000:.0f} ms",
                extra={"one_s": one, "many_s": many},
            )
        )
    return results


async def _p2_once(opts: Options, url: str, embedded: bool) -> tuple[float, float]:
    from bench.common import bench_settings, bus_for, worker_processes

    singles = 3 if opts.quick else 5
    async with contextlib.AsyncExitStack() as stack:
        if not embedded:
            settings = bench_settings(url, test_engine_token_delay=P2_TOKEN_DELAY, worker_concurrency=P2_JOBS)
            bus = await stack.enter_async_context(bus_for(settings))
            await stack.enter_async_context(worker_processes(settings, bus, 1))
        h = await stack.enter_async_context(
            discord_bot(
                url,
                channels=P2_JOBS + singles + 1,
                test_engine_token_delay=P2_TOKEN_DELAY,
                worker_concurrency=P2_JOBS,
                embedded_worker=embedded,
            )
        )
        channels = h.bench_channels
        prompt = f"[[repeat:{P2_TOKENS}]]"
        await one_reply(h, channels[-1], h.alice, prompt)  # warm-up
        ones = [(await one_reply(h, channels[P2_JOBS + i], h.alice, prompt))[0] for i in range(singles)]
        got = await replies(h, [(channels[i], h.alice, prompt) for i in range(P2_JOBS)])
        many = max(seconds for seconds, _ in got)  # from the posts to the last final edit
        assert all(text.strip().endswith(f"w{P2_TOKENS - 1}") for _s, text in got)
    return median(ones), many


# ------------------------------------------------------------------------------------------------ P4
async def p4_cpu_tokens(opts: Options, url: str) -> list[Result]:
    from bench.common import bench_settings
    from models.engines.llamacpp import LlamaCppEngine

    rounds = 1 if opts.quick else 2
    prompts = P4_PROMPTS[:2] if opts.quick else P4_PROMPTS
    settings = bench_settings(url, engine="llamacpp", llamacpp_n_ctx=2048)
    raw_engine = LlamaCppEngine.from_settings(settings)
    await raw_engine.start()
    raw_tokens = raw_seconds = got_tokens = got_seconds = 0.0
    users = rounds * len(prompts) + 1
    try:
        async with discord_bot(
            url,
            channels=0,
            users=users,
            engine="llamacpp",
            llamacpp_n_ctx=2048,
            worker_concurrency=1,
            system_prompt=P4_SYSTEM,
            temperature=0.0,
            top_p=1.0,
            repetition_penalty=1.0,
            max_new_tokens=P4_MAX_TOKENS,
        ) as h:
            people = iter(h.bench_users)
            await one_reply(h, h.dm(next(people)), h.alice, "Hi")  # warm-up (DMs: no speaker-name prefix)
            await asyncio.to_thread(raw_chat, raw_engine.llm, "Hi", P4_SYSTEM, P4_MAX_TOKENS)
            for _ in range(rounds):
                for prompt in prompts:
                    text, seconds = await asyncio.to_thread(raw_chat, raw_engine.llm, prompt, P4_SYSTEM, P4_MAX_TOKENS)
                    raw_tokens += raw_engine.count_tokens(text)
                    raw_seconds += seconds
                    person = next(people)
                    seconds, text = await one_reply(h, h.dm(person), person, prompt, limit_s=300)
                    got_tokens += raw_engine.count_tokens(text)
                    got_seconds += seconds
    finally:
        await raw_engine.close()
    raw_rate, got_rate = raw_tokens / raw_seconds, got_tokens / got_seconds
    ratio = got_rate / raw_rate
    return [
        Result("P4", "raw llama.cpp", raw_rate, "tok/s", note=f"{raw_tokens:.0f} tokens"),
        Result("P4", "delivered to Discord", got_rate, "tok/s", note=f"{got_tokens:.0f} tokens, event→final edit"),
        Result(
            "P4",
            "Discord / raw",
            ratio,
            "×",
            f"≥ {P4_TARGET:g}",
            ratio >= P4_TARGET,
            "SmolLM2-135M, greedy, same prompts",
            extra={"raw": raw_rate, "discord": got_rate},
        ),
    ]


async def run(opts: Options) -> list[Result]:
    results: list[Result] = []
    for bench in (p1_overhead, p2_overlap, p4_cpu_tokens):
        with private_redis() as url:
            try:
                results += await bench(opts, url)
            except Exception as exc:  # one failing bench must not hide the others
                results.append(
                    Result(
                        bench.__name__.split("_")[0].upper(),
                        "error",
                        float("nan"),
                        ok=False,
                        note=f"{type(exc).__name__}: {exc}"[:160],
                    )
                )
    return results


if __name__ == "__main__":
    raise SystemExit(main_for(run))
