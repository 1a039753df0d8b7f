"""Issue 6 benchmark report: P1–P4 side by side in one run, a PNG plot, and the issue-6 section of
docs/performance.md (between markers; the rest of the file — the issue-2 section — is left alone).

    python -m bench production          (part of `make bench`)
    python -m bench.production --quick  (fewer samples)

The plot is drawn with Pillow (a dependency already); matplotlib is not installed here.
"""

from __future__ import annotations

import time
from pathlib import Path

from bench.common import ROOT, Options, Result, machine, main_for, private_redis, table

DOC = ROOT / "docs" / "performance.md"
PNG = ROOT / "docs" / "performance-issue6.png"
START, END = "<!-- issue6:start -->", "<!-- issue6:end -->"


async def run(opts: Options) -> list[Result]:
    from bench import discord_path, scaleout

    results: list[Result] = []
    for bench in (discord_path.p1_overhead, discord_path.p2_overlap):
        with private_redis() as url:
            results += await _guarded(bench.__name__[:2].upper(), bench(opts, url))
    results += await _guarded("P3", scaleout.run(opts))
    with private_redis() as url:
        results += await _guarded("P4", discord_path.p4_cpu_tokens(opts, url))
    try:
        plot(results, PNG)
        write_section(results, DOC, PNG)
    except Exception as exc:  # the figures were printed anyway
        results.append(Result("report", "write", float("nan"), ok=False, note=f"{type(exc).__name__}: {exc}"[:120]))
    return results


async def _guarded(name: str, awaitable) -> list[Result]:  # type: ignore[no-untyped-def]
    try:
        return await awaitable
    except Exception as exc:  # one failing bench must not hide the others
        return [Result(name, "error", float("nan"), ok=False, note=f"{type(exc).__name__}: {exc}"[:160])]


# ------------------------------------------------------------------------------------------------ plot
def plot(results: list[Result], path: Path) -> None:
    """Four panels: P1 p50/p99 by concurrency, P2 ratio, P3 efficiency by workers, P4 tokens/s."""
    from PIL import Image, ImageDraw, ImageFont

    width, height, pad = 1400, 900, 70
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    try:
        font = ImageFont.load_default(size=18)
        small = ImageFont.load_default(size=14)
    except TypeError:  # Pillow < 10.1
        font = small = ImageFont.load_default()
    panels = [(0, 0), (1, 0), (0, 1), (1, 1)]
    pw, ph = width // 2, height // 2

    def bars(
        panel: int,
        title: str,
        labels: list[str],
        values: list[float],
        colors: list[str],
        target: float | None,
        unit: str,
    ) -> None:
        ox, oy = panels[panel][0] * pw, panels[panel][1] * ph
        draw.text((ox + pad, oy + 15), title, fill="black", font=font)
        x0, y0, x1, y1 = ox + pad, oy + 55, ox + pw - 30, oy + ph - 50
        draw.line([(x0, y1), (x1, y1)], fill="black")
        draw.line([(x0, y0), (x0, y1)], fill="black")
        finite = [v for v in values if v == v]
        top = max([*finite, target or 0, 1e-9]) * 1.15
        n = max(1, len(values))
        slot = (x1 - x0) / n
        for i, (label, value, color) in enumerate(zip(labels, values, colors, strict=True)):
            bx0, bx1 = x0 + i * slot + slot * 0.15, x0 + (i + 1) * slot - slot * 0.15
            if value == value:
                by = y1 - (y1 - y0) * value / top
                draw.rectangle([bx0, by, bx1, y1], fill=color)
                draw.text((bx0, by - 20), f"{value:.3g}{unit}", fill="black", font=small)
            draw.text((bx0, y1 + 8), label, fill="black", font=small)
        if target is not None:
            ty = y1 - (y1 - y0) * target / top
            draw.line([(x0, ty), (x1, ty)], fill="red", width=2)
            draw.text((x1 - 110, ty - 20), f"target {target:g}{unit}", fill="red", font=small)

    def pick(bench: str, contains: str) -> Result | None:
        return next((r for r in results if r.bench == bench and contains in r.metric), None)

    p1_levels = [r.extra["level"] for r in results if r.bench == "P1" and "p50 @" in r.metric]
    p1 = [(lvl, pick("P1", f"p50 @{lvl}"), pick("P1", f"p99 @{lvl}")) for lvl in p1_levels]
    labels, values, colors = [], [], []
    for lvl, p50, p99 in p1:
        labels += [f"p50 @{lvl}", f"p99 @{lvl}"]
        values += [p50.value if p50 else float("nan"), p99.value if p99 else float("nan")]
        colors += ["#4e79a7", "#a0cbe8"]
    bars(0, "P1 event -> final reply edit (ms), instant engine", labels, values, colors, 10.0, "")
    p2 = [pick("P2", "embedded"), pick("P2", "worker process")]
    bars(
        1,
        "P2 64 at once / one, fixed-latency engine (x)",
        ["embedded worker", "worker process"],
        [r.value if r else float("nan") for r in p2],
        ["#f28e2b", "#ffbe7d"],
        1.25,
        "x",
    )
    p3 = [r for r in results if r.bench == "P3" and "workers:" in r.metric]
    bars(
        2,
        "P3 scale-out: rate / (W x one worker's)",
        [f"W={r.extra.get('workers')}" for r in p3],
        [r.value for r in p3],
        ["#59a14f"] * len(p3),
        0.9,
        "",
    )
    raw, got = pick("P4", "raw"), pick("P4", "delivered")
    bars(
        3,
        "P4 tokens/s: raw llama.cpp vs delivered to Discord",
        ["raw", "Discord"],
        [raw.value if raw else float("nan"), got.value if got else float("nan")],
        ["#b07aa1", "#e15759"],
        None,
        "",
    )
    draw.text((pad, height - 25), f"{time.strftime('%Y-%m-%d')} - {machine()}", fill="gray", font=small)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


# ------------------------------------------------------------------------------------------------ report
EXPLANATION = """\
What is measured (all on this machine, in one run, with `make bench`):

* **P1** — a user's message arrives over the gateway of the local Discord-compatible server
  (tests/fakediscord); the real bot (discord.py, chat cog, handler, Redis, the embedded worker with an
  instant engine) answers; the clock stops at the fake server's timestamp of the reply's final edit.
  1, 16, 32 and 64 messages are posted at once, each in its own channel (`--p1-levels` picks others).
* **P2** — the same path with the test engine at a fixed 20 ms per token (25 tokens, a batching engine:
  any number of streams advance together): 64 messages at once vs one, with the worker inside the bot
  process (the default install) and in a separate `python -m models.worker` process.
* **P3** — 1, 2, 4, 8 `python -m models.worker` processes on one Redis, each with 4 slots and 0.5 s jobs;
  throughput / (W × one worker's).
* **P4** — the bundled SmolLM2-135M behind the bot: tokens of the final Discord message per second
  (event → final edit, including prompt processing) vs raw llama-cpp-python on the same prompts, greedy,
  measured alternately.

Reading the figures honestly:

* Everything in P1/P2 — the fake Discord server (its HTTP and gateway handling, JSON), the bot, the worker
  and Redis — shares the same 2 cores, and the fake server runs in the bot's own process and event loop.
  At one message the reply is a single HTTP request of discord.py against the fake: an answer complete
  before the first write is posted in one request with its final buttons, and an answer there within
  0.2 s gets no typing call (bot/streaming.py; before that change it was three round trips — typing,
  first message, final edit — and p50 @1 was about 20 ms).  What remains is the queue path before that
  request: the gateway event parsed, the user turn recorded and the job submitted, the worker's claim and
  events, the answer recorded in history — a dozen Redis round trips of 1–2 ms each on this shared
  machine (the issue-2 `overhead` bench measures that path alone).
* At 16 and 64 messages at once the latency is CPU queueing: each reply costs the one busy process
  several milliseconds (gateway dispatch, the REST call on both the client and the fake server, history
  and job writes, the worker's events), so 64 replies take about 64 × that — the `replies/s` rows are
  what this machine sustains with all the parts on it.
  This is throughput on 2 cores, not a per-reply delay of the queue (the issue-2 `overhead` bench above
  measures the queue path alone).  On a real deployment Discord's servers are not on the bot's CPU.
* P2 misses for the same reason: 64 replies at once cost the bot process about 64 × (gateway event,
  history read and writes, job submit, a few Discord REST calls on both the client and the fake server)
  within half a second, on the same 2 cores as the worker and Redis.  The worker's side is no longer the
  limit: its events per answer are coalesced (`DELTA_WINDOW_MS`) and its per-job round trips cut to three or
  four, and without Discord the same 64 jobs take ~1.1–1.2 × one (issue-2 `overlap`, met).  With the
  worker in its own process the bot process has a core to itself and the ratio drops (1.5–2.0 × in
  repeated runs); what is left is the bot's and the fake server's own CPU per reply.
* P3 shows that adding worker processes adds capacity almost linearly: the coordination cost (claims,
  heartbeats, acks on one Redis) is small next to generation time.
* P4: delivering tokens to Discord costs nothing measurable on tokens/s: the Discord edits are paced by
  the per-channel write budget, not by the token rate, and the final edit follows the last token at once.
"""


def write_section(results: list[Result], doc: Path, png: Path) -> None:
    """Replace (or append) the issue-6 section of docs/performance.md; the rest of the file is kept."""
    body = "\n".join(
        [
            START,
            "## Production (issue 6): the Discord path, overlap, scale-out, CPU tokens",
            "",
            f"Last run: {time.strftime('%Y-%m-%d %H:%M')} on {machine()} — `make bench` (or "
            "`python -m bench production`) rewrites this section.",
            "",
            table([r for r in results if r.bench in ("P1", "P2", "P3", "P4", "report")], markdown=True),
            "",
            f"![P1–P4]({png.name})",
            "",
            EXPLANATION,
            END,
        ]
    )
    text = doc.read_text() if doc.exists() else "# Performance\n"
    if START in text and END in text:
        before, rest = text.split(START, 1)
        after = rest.split(END, 1)[1]
        text = before + body + after
    else:
        text = text.rstrip("\n") + "\n\n" + body + "\n"
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text)


if __name__ == "__main__":
    raise SystemExit(main_for(run))
