"""What `/agent <task>` means: record the task, submit an `agent` job, and say how its steps read.

The job itself (models/agent) streams `step` events; `ChatHandler.follow` turns them into `Update("step")`
and records the final answer with its one-line tool summary in the conversation, so a later chat message can
refer to it.  `format_step` renders a step as Markdown for any front end (console, Discord).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from models.sandbox import unique_names

from .chat import ChatHandler, InputError, Reply, Request
from .text_files import TextFile

USAGE = (
    "Tell the agent what to do, for example: `/agent Solve 2x + 3 = 10` or `/agent find recent arXiv papers on RLHF`."
)
AGENT_STEPS = frozenset({"thought", "tool_call", "tool_result", "note", "answer"})
CODE_LINES = 30  # a code block longer than this is shown cut (the full code still ran)
TEXT_MIME = "text/plain; charset=utf-8"


class AgentHandler:
    """Thin layer over `ChatHandler`: the agent's request is a chat turn with kind "agent"."""

    def __init__(self, chat: ChatHandler) -> None:
        self.chat = chat

    async def ask(
        self,
        conversation: str,
        task: str,
        *,
        user_name: str | None = None,
        guild: int | None = None,
        channel: int | None = None,
        files: Sequence[TextFile] = (),
    ) -> Reply:
        """Record the task as the user's turn and queue the agent job; `InputError` for an empty one.

        `files` (read whole by `TextFileIntake.read(..., whole=True)`, so already refused where text_files.py
        refuses) are stored as UTF-8 blobs; the worker puts them in the sandbox's working directory."""
        task = (task or "").strip()
        if not task:
            raise InputError(USAGE)
        names = unique_names([f.name for f in files])
        attached = [
            {"name": name, "blob": await self.chat.bus.put_blob(f.text.encode("utf-8"), TEXT_MIME)}
            for name, f in zip(names, files, strict=True)
        ]
        payload: dict[str, Any] = {"task": task, **({"files": attached} if attached else {})}
        request = Request(
            conversation=conversation,
            text=task,
            user_name=user_name,
            guild=guild,
            channel=channel,
            kind="agent",
            payload=payload,
            meta={"payload": payload},
        )
        return await self.chat.ask(request)

    def follow(self, reply: Reply) -> Any:
        return self.chat.follow(reply)

    async def stop(self, reply: Reply) -> None:
        await self.chat.stop(reply)


FENCE = "```"
LOOKALIKE = "\u02cb\u02cb\u02cb"  # ˋˋˋ (modifier grave accents): reads as ``` but cannot close a block


def _fence(text: str, lang: str = "") -> str:
    """A code block that the content cannot break out of.

    The step's code is already bare (models/agent strips the model's own fence), so normally nothing is
    replaced; a ``` inside the code or output (a Markdown string, say) is shown as a visible look-alike
    rather than hidden behind a zero-width character."""
    text = text.replace(FENCE, LOOKALIKE)
    return f"{FENCE}{lang}\n{text.strip(chr(10)).rstrip()}\n{FENCE}"


def _balanced(text: str) -> str:
    """Model prose with an unclosed code fence closed, so it cannot swallow the steps shown after it."""
    return text + f"\n{FENCE}" if text.count(FENCE) % 2 else text


def format_step(step: dict[str, Any]) -> str:
    """One agent step as Markdown (the Discord message and the console both show this)."""
    kind = step.get("type")
    text = str(step.get("text") or "")
    if kind == "thought":
        return f"💭 {_balanced(text)}"
    if kind == "tool_call":
        if step.get("code") is not None:
            lines = str(step["code"]).rstrip().splitlines()
            code = "\n".join(lines[:CODE_LINES]) + (
                f"\n# … {len(lines) - CODE_LINES} more lines" if len(lines) > CODE_LINES else ""
            )
            return "🐍 **Python**\n" + _fence(code, "python")
        args = step.get("args") or {}
        shown = ", ".join(f"{k}={v!r}" for k, v in args.items()) if isinstance(args, dict) else str(args)
        return f"🔧 **{step.get('tool', 'tool')}**({shown[:300]})"
    if kind == "tool_result":
        mark = "✅" if step.get("ok", True) else "⚠️"
        note = "\n*(output truncated)*" if step.get("truncated") else ""
        figures = step.get("figures") or []
        fig = f"\n🖼️ {len(figures)} figure(s) attached" if figures else ""
        if step.get("links"):
            return f"{mark} **Results**\n{text}{note}"
        return f"{mark} **Result**\n{_fence(text or '(no output)')}{note}{fig}"
    if kind == "note":
        return f"ℹ️ *{text}*"
    if kind == "answer":
        return f"**Answer:** {_balanced(text)}" if text else ""
    return text
