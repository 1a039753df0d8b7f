"""The job runners, one module per kind: `chat` (and `vision`), `article`, `agent`.

The worker (models/worker.py) owns claiming, heartbeats and replies; a runner only turns a `JobContext` into
events.  The table is built lazily so a worker only imports what it runs (Lagent with the first agent job)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from ..context import JobContext, JobError

Runner = Callable[[JobContext], Awaitable[None]]


def runners() -> dict[str, Runner]:
    """Kind → runner.  Imported lazily so a worker only loads what it runs."""
    from .chat import run_chat

    table: dict[str, Runner] = {"chat": run_chat, "vision": run_chat}

    async def run_agent(ctx: JobContext) -> None:
        try:
            from .agent import run_agent as run  # Lagent is imported by the first agent job only
        except ImportError as exc:
            raise JobError(
                "The agent is not installed on this worker (pip install --no-deps lagent==0.2.4; see docs/agent.md)."
            ) from exc
        await run(ctx)

    table["agent"] = run_agent
    from .article import run_article

    table["article"] = run_article
    return table
