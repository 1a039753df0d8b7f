"""The `agent` job: a Lagent InternLM2 agent whose steps are streamed as `step` events.

Payload (built by `handlers.agent`): `{"task": str, "messages": [recent turns], "params": {...}}`.

The agent (`StepAgent`, an `Internlm2Agent` with Lagent's `Internlm2Protocol` and `ActionExecutor`s) runs in
a thread because Lagent 0.2.4 is synchronous; its model calls come back to the event loop through
`EngineLLM`.  With `AGENT_PROTOCOL=tools` the same agent talks OpenAI function calling instead
(`models/agent/function_calling.py:ToolAgent`, which reuses `StepAgent.execute`).  Each step becomes one event:

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
import json
import threading
import time
from collections import Counter
from collections.abc import Collection, Generator, Iterator
from typing import Any

from lagent.actions import ActionExecutor
from lagent.agents.internlm2_agent import INTERPRETER_CN, META_CN, PLUGIN_CN, Internlm2Agent, Internlm2Protocol
from lagent.schema import ActionReturn, ActionStatusCode

from ..context import JobContext, JobError
from ..sandbox import Sandbox, SandboxLimits, SandboxUnavailable
from ..untrusted import inert
from .actions import ArxivSearchAction, SandboxedPython, build_executors, render_links
from .llm import AgentStopped, EngineLLM
from .parsing import ACTION_START, PluginCallError, extract_code, parse_plugin_call

MAX_TASK_CHARS = 4000
HISTORY_TURNS = 6  # recent chat turns given to the agent as context
SHOWN_RESULT_CHARS = 1500  # a tool result as shown to people (the model reads up to the sandbox's limit)
MODEL_RESULT_CHARS = 6000

INTERPRETER_NOTE = ("\n注意：每段代码都在一个全新的、没有网络的沙箱进程中运行，不保留之前的变量；"
                    "print 的内容和最后一行表达式的值（与 Jupyter 相同）会返回给你，"
                    "用 matplotlib 画的图会自动保存并返回给用户。"
                    "\nNote: each code cell runs in a fresh, offline sandbox process (variables do not persist); what "
                    "it prints and the value of its last expression (as in Jupyter) come back to you; matplotlib "
                    "figures are returned to the user automatically.")

_SANDBOXES: dict[tuple[Any, ...], Sandbox] = {}


def sandbox_for(settings: Any) -> Sandbox:
    """One sandbox per configuration and process, so the namespace probe runs once."""
    limits = SandboxLimits.from_settings(settings)
    key = tuple(sorted((k, str(v)) for k, v in vars(limits).items()))
    if key not in _SANDBOXES:
        _SANDBOXES[key] = Sandbox(limits)
    return _SANDBOXES[key]


def short_tool(name: str) -> str:
    """`ArxivSearch.get_arxiv_article_information` → `ArxivSearch`; the interpreter → `python`."""
    return name.split(".")[0]


def clip(text: str, limit: int) -> tuple[str, bool]:
    if len(text) <= limit:
        return text, False
    return text[:limit].rstrip() + "\n…", True


class StepAgent(Internlm2Agent):
    """`Internlm2Agent` whose stream yields one dict per step and never crashes on a malformed call.

    Lagent 0.2.4's own `stream_chat` raises a TypeError when the model writes invalid JSON for a plugin call
    and gives no sign that the turn limit was reached; this loop uses the same protocol, executors and model
    API but reports both as notes the model (and the user) can read.

    Everything that goes back into the prompt is made inert (`models.untrusted.inert`) when it enters the
    turn list: the model's own thoughts and code, tool and sandbox output, arXiv results.  The protocol's
    markers (`<|action_start|><|interpreter|>`, the `environment` turn) are added afterwards by Lagent's
    template, so only they stay real tokens.
    """

    def __init__(self, llm: EngineLLM, interpreter: ActionExecutor | None, plugins: ActionExecutor | None,
                 max_turn: int, stop: threading.Event, tokens: Collection[str] = (), python_off: str = "") -> None:
        protocol = Internlm2Protocol(meta_prompt=META_CN, interpreter_prompt=INTERPRETER_CN + INTERPRETER_NOTE,
                                     plugin_prompt=PLUGIN_CN)
        super().__init__(llm=llm, plugin_executor=plugins, interpreter_executor=interpreter, protocol=protocol,
                         max_turn=max_turn)
        self.stop = stop
        self.tokens = tuple(tokens)  # the engine's own special tokens, for `inert`
        self.python_off = python_off  # why the interpreter is not offered ("" when it is)
        self.tools_used: Counter[str] = Counter()

    def inert(self, text: str) -> str:
        return inert(text, extra=self.tokens)

    def steps(self, messages: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        inner = list(messages)
        for turn in range(1, self.max_turn + 1):
            if self.stop.is_set():
                return
            prompt = self._protocol.format(inner_step=inner, plugin_executor=self._action_executor,
                                           interpreter_executor=self._interpreter_executor)
            response = self._llm.chat(prompt)
            try:
                name, thought, action = self._protocol.parse(response, self._action_executor,
                                                             self._interpreter_executor)
            except ValueError:
                name, thought, action = "malformed", response.split(ACTION_START)[0], None
            thought = (thought or "").strip()
            if not name:
                if not thought:
                    yield {"type": "note", "turn": turn, "title": "Note",
                           "text": "The model returned an empty answer."}
                    yield {"type": "answer", "turn": turn, "title": "Answer", "text": "", "empty": True}
                    return
                yield {"type": "answer", "turn": turn, "title": "Answer", "text": thought}
                return
            if thought:
                yield {"type": "thought", "turn": turn, "title": "Thought", "text": thought}
            problem, call = self._check_call(name, action)
            if problem:
                yield {"type": "note", "turn": turn, "title": "Note",
                       "text": f"The model's tool call was malformed ({problem}); asking it to correct it."}
                inner.append({"role": "assistant", "content": self.inert(response)})
                inner.append({"role": "environment", "name": "plugin" if name == "plugin" else "interpreter",
                              "content": self.inert(f"Error: the tool call was malformed ({problem}). " + (
                                  "Answer without running code." if self.python_off and name == "interpreter"
                                  else 'A plugin call must be JSON like {"name": "<tool>", "parameters": {...}}; '
                                       "code goes in a ```python block."))})
                continue
            yield from self._run_tool(turn, name, call, thought, inner)
        yield {"type": "note", "turn": self.max_turn, "title": "Note", "limit": "turns",
               "text": f"Stopped after {self.max_turn} steps without a final answer (AGENT_MAX_TURNS)."}

    def _check_call(self, name: str, action: Any) -> tuple[str, dict[str, Any]]:
        """What is wrong with a parsed call ('' if nothing), and the call as {"name", "parameters"}; an
        interpreter call keeps what the model wrote in `parameters.command` and the runnable code in `code`."""
        if name == "interpreter":
            if self._interpreter_executor is None:
                return (f"Python is off here: {self.python_off}" if self.python_off
                        else "no interpreter is available"), {}
            raw = action["parameters"]["command"] if isinstance(action, dict) else ""
            code = extract_code(raw)
            if not code.strip():
                return "the code block is empty", {}
            return "", {"name": action["name"], "parameters": {"command": raw}, "code": code}
        if name != "plugin":
            return "the <|plugin|> or <|interpreter|> marker is misplaced", {}
        if self._action_executor is None:
            return "no plugin tools are available", {}
        try:
            call = parse_plugin_call(action)
        except PluginCallError as exc:
            return str(exc), {}
        tool, _, api = call["name"].partition(".")
        known = ", ".join(i["name"] for i in self._action_executor.get_actions_info())
        if not self._action_executor.is_valid(tool) or "." in api or (
                api and not hasattr(self._action_executor.actions[tool], api)):
            return f"there is no tool named {call['name']!r}; available: {known}", {}
        return "", call

    def _run_tool(self, turn: int, name: str, call: dict[str, Any], thought: str,
                  inner: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        result = yield from self.execute(turn, name, call)
        # The turn as the model wrote it (its fenced code, its JSON), inert, for the protocol to re-render.
        inner.append({"role": "language", "content": self.inert(thought)})
        if name == "interpreter":
            content = call["parameters"]["command"]
        else:
            content = json.dumps({"name": call["name"], "parameters": call["parameters"]}, ensure_ascii=False)
        inner.append({"role": "tool", "name": name, "content": self.inert(content)})
        response = self._protocol.format_response(result, name=name)
        response["content"] = self.inert(clip(response["content"], MODEL_RESULT_CHARS)[0])
        inner.append(response)

    def execute(self, turn: int, name: str, call: dict[str, Any]) -> Generator[dict[str, Any], None, ActionReturn]:
        """Run a checked call (`name` "interpreter" or "plugin") and yield its `tool_call`, `tool_result` and
        `figure` steps; return Lagent's result for the protocol to give back to the model.  Shared by both
        agent protocols (models/agent/function_calling.py)."""
        executor = self._interpreter_executor if name == "interpreter" else self._action_executor
        assert executor is not None
        if name == "interpreter":
            tool = "python"
            yield {"type": "tool_call", "turn": turn, "title": "Python", "tool": tool, "code": call["code"]}
        else:
            tool = short_tool(call["name"])
            yield {"type": "tool_call", "turn": turn, "title": tool, "tool": call["name"],
                   "args": call["parameters"]}
        self.tools_used[tool] += 1
        before = self._papers_seen()
        result: ActionReturn = executor(call["name"], call["parameters"])
        ok = result.state == ActionStatusCode.SUCCESS
        text = result.format_result() if ok else str(result.errmsg or "the tool failed")
        step: dict[str, Any] = {"type": "tool_result", "turn": turn, "title": "Result", "tool": tool, "ok": ok}
        python = self._python()
        ran = name == "interpreter" and python is not None and python.results
        if ran:
            last = python.results[-1]
            step["ok"] = last.ok
            step["figures"] = [f.name for f in last.figures]
        papers = self._papers()[before:]
        if papers:
            step["links"] = [{"title": p.title, "url": p.url} for p in papers]
            shown = render_links(papers)
        else:
            shown = text
        step["text"], step["truncated"] = clip(shown, SHOWN_RESULT_CHARS)
        yield step
        if ran:
            for figure in python.results[-1].figures:
                yield {"type": "figure", "turn": turn, "name": figure.name, "data": figure.data, "mime": figure.mime}
        return result

    def _python(self) -> SandboxedPython | None:
        actions = self._interpreter_executor.actions.values() if self._interpreter_executor else []
        return next((a for a in actions if isinstance(a, SandboxedPython)), None)

    def _papers(self) -> list[Any]:
        actions = self._action_executor.actions.values() if self._action_executor else []
        return [p for a in actions if isinstance(a, ArxivSearchAction) for p in a.papers]

    def _papers_seen(self) -> int:
        return len(self._papers())


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
    context = [{"role": m["role"], "content": m["content"]} for m in raw
               if isinstance(m, dict) and m.get("role") in ("user", "assistant")
               and isinstance(m.get("content"), str) and m["content"].strip()]
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
    rest = ("The agent can still search: " + ", ".join(short_tool(i["name"]) for i in plugins.get_actions_info())
            + "." if plugins else "The agent answers without tools.")
    return f"Python is off: {reason.rstrip('.')}. {rest}"


async def run_agent(ctx: JobContext) -> None:
    settings = ctx.settings
    tokens = tuple(getattr(ctx.engine, "special_tokens", ()) or ())
    _task, messages = task_messages(ctx.job.payload, tokens)
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
    interpreter, plugins = build_executors(sandbox, settings, python=not python_off)
    agent_class: type[StepAgent] = StepAgent
    if getattr(settings, "agent_protocol", "internlm2") == "tools":
        from .function_calling import ToolAgent, tools_unavailable  # it builds on this module

        unavailable = tools_unavailable(ctx.engine)
        if unavailable:
            await ctx.step({"type": "note", "turn": 0, "title": "Note", "text": unavailable + "."})
        else:
            agent_class = ToolAgent
    agent = agent_class(llm, interpreter, plugins, max(1, settings.agent_max_turns), stop, tokens=tokens,
                        python_off=python_off)
    if python_off:
        await ctx.step({"type": "note", "turn": 0, "title": "Note", "python_off": True,
                        "text": python_off_note(python_off, plugins)})

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
            done, _ = await asyncio.wait({getter, cancelled}, timeout=max(0.0, remaining),
                                         return_when=asyncio.FIRST_COMPLETED)
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
    await ctx.done(answer, stopped=stopped, prompt_tokens=llm.prompt_tokens, completion_tokens=llm.completion_tokens,
                   extra={"history": history_line(answer or "(stopped before answering)", agent.tools_used),
                          "tools": dict(agent.tools_used), "turns": llm.calls})
