"""The InternLM2-protocol agent loop (`StepAgent`) and what both agent protocols share: the limits on tool
results, the interpreter note, and `StepAgent.execute`, which runs one tool call and reports it as steps.

Split from `models/jobs/agent.py` (the `agent` job) so that `function_calling.py` can build on the loop without
importing the job that chooses between them."""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Collection, Generator, Iterator
from typing import Any

from lagent.actions import ActionExecutor
from lagent.agents.internlm2_agent import INTERPRETER_CN, META_CN, PLUGIN_CN, Internlm2Agent, Internlm2Protocol
from lagent.schema import ActionReturn, ActionStatusCode

from ..untrusted import inert
from .actions import ArxivSearchAction, SandboxedPython, render_links
from .llm import EngineLLM
from .parsing import ACTION_START, PluginCallError, extract_code, parse_plugin_call

SHOWN_RESULT_CHARS = 1500  # a tool result as shown to people (the model reads up to the sandbox's limit)
MODEL_RESULT_CHARS = 6000

INTERPRETER_NOTE = (
    "\n注意：每段代码都在一个全新的、没有网络的沙箱进程中运行，不保留之前的变量；"
    "print 的内容和最后一行表达式的值（与 Jupyter 相同）会返回给你，"
    "用 matplotlib 画的图会自动保存并返回给用户。"
    "\nNote: each code cell runs in a fresh, offline sandbox process (variables do not persist); what "
    "it prints and the value of its last expression (as in Jupyter) come back to you; matplotlib "
    "figures are returned to the user automatically."
)


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

    fall_back = False  # the tools protocol's (`ToolAgent`): on a server refusing `tools`, run this protocol instead
    fell_back = ""  # why it did ("" = it did not)

    def __init__(
        self,
        llm: EngineLLM,
        interpreter: ActionExecutor | None,
        plugins: ActionExecutor | None,
        max_turn: int,
        stop: threading.Event,
        tokens: Collection[str] = (),
        python_off: str = "",
    ) -> None:
        protocol = Internlm2Protocol(
            meta_prompt=META_CN, interpreter_prompt=INTERPRETER_CN + INTERPRETER_NOTE, plugin_prompt=PLUGIN_CN
        )
        super().__init__(
            llm=llm, plugin_executor=plugins, interpreter_executor=interpreter, protocol=protocol, max_turn=max_turn
        )
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
            prompt = self._protocol.format(
                inner_step=inner, plugin_executor=self._action_executor, interpreter_executor=self._interpreter_executor
            )
            response = self._llm.chat(prompt)
            try:
                name, thought, action = self._protocol.parse(
                    response, self._action_executor, self._interpreter_executor
                )
            except ValueError:
                name, thought, action = "malformed", response.split(ACTION_START)[0], None
            thought = (thought or "").strip()
            if not name:
                yield from self.answer(turn, thought)
                return
            if thought:
                yield {"type": "thought", "turn": turn, "title": "Thought", "text": thought}
            problem, call = self._check_call(name, action)
            if problem:
                yield {
                    "type": "note",
                    "turn": turn,
                    "title": "Note",
                    "text": f"The model's tool call was malformed ({problem}); asking it to correct it.",
                }
                inner.append({"role": "assistant", "content": self.inert(response)})
                inner.append(
                    {
                        "role": "environment",
                        "name": "plugin" if name == "plugin" else "interpreter",
                        "content": self.inert(
                            f"Error: the tool call was malformed ({problem}). "
                            + (
                                "Answer without running code."
                                if self.python_off and name == "interpreter"
                                else 'A plugin call must be JSON like {"name": "<tool>", "parameters": {...}}; '
                                "code goes in a ```python block."
                            )
                        ),
                    }
                )
                continue
            yield from self._run_tool(turn, name, call, thought, inner)
        yield {
            "type": "note",
            "turn": self.max_turn,
            "title": "Note",
            "limit": "turns",
            "text": f"Stopped after {self.max_turn} steps without a final answer (AGENT_MAX_TURNS).",
        }

    @staticmethod
    def answer(turn: int, text: str) -> Iterator[dict[str, Any]]:
        """The steps that end a run with the model's answer (both protocols): an empty one is said to be empty."""
        if not text:
            yield {"type": "note", "turn": turn, "title": "Note", "text": "The model returned an empty answer."}
            yield {"type": "answer", "turn": turn, "title": "Answer", "text": "", "empty": True}
        else:
            yield {"type": "answer", "turn": turn, "title": "Answer", "text": text}

    def _check_call(self, name: str, action: Any) -> tuple[str, dict[str, Any]]:
        """What is wrong with a parsed call ('' if nothing), and the call as {"name", "parameters"}; an
        interpreter call keeps what the model wrote in `parameters.command` and the runnable code in `code`."""
        if name == "interpreter":
            if self._interpreter_executor is None:
                return (
                    f"Python is off here: {self.python_off}" if self.python_off else "no interpreter is available"
                ), {}
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
        if (
            not self._action_executor.is_valid(tool)
            or "." in api
            or (api and not hasattr(self._action_executor.actions[tool], api))
        ):
            return f"there is no tool named {call['name']!r}; available: {known}", {}
        return "", call

    def _run_tool(
        self, turn: int, name: str, call: dict[str, Any], thought: str, inner: list[dict[str, Any]]
    ) -> Iterator[dict[str, Any]]:
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
            yield {"type": "tool_call", "turn": turn, "title": tool, "tool": call["name"], "args": call["parameters"]}
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
