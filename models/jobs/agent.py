"""The `agent` job: a Lagent InternLM2 agent whose steps are streamed as `step` events.

Payload (built by `handlers.agent`): `{"task": str, "messages": [recent turns], "params": {...}}`, and
`"files": [{"name", "blob"}]` when the user attached text files (models/agent/attachments.py: they are in
the working directory of every Python run of the task).

The agent (`StepAgent`, an `Internlm2Agent` with Lagent's `Internlm2Protocol` and `ActionExecutor`s) runs in
a thread because Lagent 0.2.4 is synchronous; its model calls come back to the event loop through
`EngineLLM`.  With the tools protocol the same agent talks OpenAI function calling instead
(`models/agent/function_calling.py:ToolAgent`, which reuses `StepAgent.execute`); `AGENT_PROTOCOL` (default
`auto`) is resolved per run by `models/agent/protocol.py`, which says which and why in the log and in `done`.
Each step becomes one event:

    {"type": "thought",     "turn": n, "title": "Thought",            "text": ...}
    {"type": "tool_call",   "turn": n, "title": "Python" | tool,      "tool": "python" | name,
                            "code": ... (python: the code that ran, fences removed) | "args": {...} (plugins)}
    {"type": "tool_result", "turn": n, "title": "Result",             "tool": ..., "text": ..., "ok": bool,
                            "truncated": bool, "links": [{"title", "url"}] (arXiv)}
    {"type": "note",        "turn": n, "title": "Note",               "text": ...}  (malformed call, limits;
                            turn 0 with "python_off": true when the sandbox cannot isolate code here)
    {"type": "answer",      "turn": n, "title": "Answer",             "text": ...}

Figures the code produced follow their tool result as `file` events.  The run ends with `done`, whose
`history` field is the answer plus a one-line tool summary, which `handlers.chat` records.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Collection
from typing import Any

from lagent.actions import ActionExecutor

from ..agent import protocol
from ..agent.actions import build_executors
from ..agent.attachments import files_note, load_files, with_files
from ..agent.function_calling import ToolAgent
from ..agent.llm import AgentStopped, EngineLLM
from ..agent.steps import StepAgent, short_tool
from ..context import JobContext, JobError
from ..sandbox import Sandbox, SandboxLimits, SandboxUnavailable
from ..untrusted import inert

MAX_TASK_CHARS = 4000
HISTORY_TURNS = 6  # recent chat turns given to the agent as context

_SANDBOXES: dict[tuple[Any, ...], Sandbox] = {}


def sandbox_for(settings: Any) -> Sandbox:
    """One sandbox per configuration and process, so the namespace probe runs once."""
    limits = SandboxLimits.from_settings(settings)
    key = tuple(sorted((k, str(v)) for k, v in vars(limits).items()))
    if key not in _SANDBOXES:
        _SANDBOXES[key] = Sandbox(limits)
    return _SANDBOXES[key]


def task_messages(payload: dict[str, Any], tokens: Collection[str] = ()) -> tuple[str, list[dict[str, Any]]]:
    """The task and the conversation the agent starts from (recent text turns, the task last), every text
    made inert: the task and the history come from users (and from earlier model answers)."""
    task = payload.get("task")
    raw = payload.get("messages") if isinstance(payload.get("messages"), list) else []
    if not isinstance(task, str) or not task.strip():
        users = [m for m in raw if isinstance(m, dict) and m.get("role") == "user"]
        task = users[-1].get("content", "") if users else ""
    task = str(task).strip()
    if not task:
        raise JobError("Please tell the agent what to do, e.g. `/agent Solve 2x + 3 = 10`.")
    if len(task) > MAX_TASK_CHARS:
        raise JobError(f"That task is too long ({len(task)} characters; the limit is {MAX_TASK_CHARS}).")
    context = [
        {"role": m["role"], "content": m["content"]}
        for m in raw
        if isinstance(m, dict)
        and m.get("role") in ("user", "assistant")
        and isinstance(m.get("content"), str)
        and m["content"].strip()
    ]
    if context and context[-1]["role"] == "user" and context[-1]["content"].strip() == task:
        context.pop()
    context = context[-HISTORY_TURNS:]
    while context and context[0]["role"] != "user":
        context.pop(0)
    turns = [*context, {"role": "user", "content": task}]
    return task, [{"role": m["role"], "content": inert(m["content"], extra=tokens)} for m in turns]


def history_line(answer: str, tools: Counter[str]) -> str:
    used = ", ".join(f"{t} ×{n}" if n > 1 else t for t, n in tools.items()) or "none"
    return f"{answer}\n(tools used: {used})"


def python_off_note(reason: str, plugins: ActionExecutor | None) -> str:
    """What the user reads when the sandbox cannot run code here."""
    rest = (
        "The agent can still search: " + ", ".join(short_tool(i["name"]) for i in plugins.get_actions_info()) + "."
        if plugins
        else "The agent answers without tools."
    )
    return f"Python is off: {reason.rstrip('.')}. {rest}"


async def run_agent(ctx: JobContext) -> None:
    settings = ctx.settings
    tokens = tuple(getattr(ctx.engine, "special_tokens", ()) or ())
    _task, messages = task_messages(ctx.job.payload, tokens)
    files = await load_files(ctx)  # the attachments, checked before anything runs (models/agent/attachments.py)
    sandbox = sandbox_for(settings)
    python_off = ""
    try:
        await asyncio.to_thread(lambda: sandbox.isolation)  # probe once, off the loop
    except SandboxUnavailable as exc:
        # No real isolation here: never run model-written code, but the rest of the agent still works.
        python_off = str(exc) or "the Python sandbox is unavailable on this host"
    loop = asyncio.get_running_loop()
    stop = threading.Event()
    deadline = time.monotonic() + settings.agent_timeout
    params = ctx.params()
    llm = EngineLLM(ctx.engine, loop, params, ctx.cancel, stop, deadline)
    note = files_note(files, python=not python_off, budget=settings.text_file_max_chars)
    messages = with_files(messages, inert(note, extra=tokens))
    interpreter, plugins = build_executors(sandbox, settings, python=not python_off, files=files)
    setting = getattr(settings, "agent_protocol", protocol.INTERNLM2)
    choice = protocol.choose(ctx.engine, setting, tokens)  # models/agent/protocol.py: which, and why
    protocol.log_choice(ctx.engine, setting, choice)
    if choice.note:
        await ctx.step({"type": "note", "turn": 0, "title": "Note", "protocol": choice.protocol, "text": choice.note})
    agent_class: type[StepAgent] = ToolAgent if choice.protocol == protocol.TOOLS else StepAgent
    agent = agent_class(
        llm, interpreter, plugins, max(1, settings.agent_max_turns), stop, tokens=tokens, python_off=python_off
    )
    agent.fall_back = setting == "auto"  # ToolAgent: a server refusing `tools` gets InternLM2's protocol
    if python_off:
        await ctx.step(
            {
                "type": "note",
                "turn": 0,
                "title": "Note",
                "python_off": True,
                "text": python_off_note(python_off, plugins),
            }
        )

    events: asyncio.Queue[Any] = asyncio.Queue()
    finished = object()

    def work() -> None:
        try:
            for step in agent.steps(messages):
                loop.call_soon_threadsafe(events.put_nowait, step)
        except BaseException as exc:
            loop.call_soon_threadsafe(events.put_nowait, exc)
        finally:
            loop.call_soon_threadsafe(events.put_nowait, finished)

    thread = threading.Thread(target=work, name=f"agent-{ctx.job.id[:8]}", daemon=True)
    thread.start()
    answer = ""
    notes: list[str] = []
    stopped = timed_out = False
    try:
        while True:
            remaining = deadline - time.monotonic()
            getter = asyncio.ensure_future(events.get())
            cancelled = asyncio.ensure_future(ctx.cancel.wait())
            done, _ = await asyncio.wait(
                {getter, cancelled}, timeout=max(0.0, remaining), return_when=asyncio.FIRST_COMPLETED
            )
            cancelled.cancel()
            if getter not in done:
                getter.cancel()
                stopped, timed_out = ctx.cancel.is_set(), not ctx.cancel.is_set()
                break
            item = getter.result()
            if item is finished:
                break
            if isinstance(item, AgentStopped):
                timed_out = not ctx.cancel.is_set()
                stopped = ctx.cancel.is_set()
                break
            if isinstance(item, BaseException):
                raise item
            if item["type"] == "figure":
                await ctx.file(item["data"], item["name"], item["mime"])
                continue
            if item["type"] == "answer":
                answer = item["text"]
            elif item["type"] == "note":
                notes.append(item["text"])
            await ctx.step(item)
    finally:
        stop.set()  # the thread notices at its next model call or step; a running sandbox ends by its timeout
    if timed_out:
        note = f"Stopped: the agent ran past its time limit of {settings.agent_timeout:g} s (AGENT_TIMEOUT)."
        await ctx.step({"type": "note", "turn": 0, "title": "Note", "limit": "time", "text": note})
        notes.append(note)
    if not answer:
        if stopped:
            answer = ""
        elif notes:
            answer = "I could not finish this task: " + notes[-1]
            if llm.calls and not agent.tools_used:
                answer += " The model did not follow the tool protocol; a larger InternLM2 model works better."
        else:
            answer = "The model gave no answer."
    await ctx.done(
        answer,
        stopped=stopped,
        prompt_tokens=llm.prompt_tokens,
        completion_tokens=llm.completion_tokens,
        extra={
            "history": history_line(answer or "(stopped before answering)", agent.tools_used),
            "tools": dict(agent.tools_used),
            "turns": llm.calls,
            "protocol": "internlm2" if agent.fell_back else choice.protocol,
            "protocol_reason": f"auto: the server refused `tools` ({agent.fell_back[:160]})"
            if agent.fell_back
            else choice.reason,
        },
    )
