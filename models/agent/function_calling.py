"""The agent over OpenAI tool calling (`AGENT_PROTOCOL=tools`).

Many OpenAI-compatible servers strip InternLM2's special tokens from their output, so the raw protocol
(`<|action_start|><|interpreter|>` …) cannot work through them; but they accept `tools` and parse the model's
calls themselves (lmdeploy `--tool-call-parser internlm`, vLLM, Ollama, llama.cpp server with `--jinja`).
Here the interpreter is a declared function, `python(code)` — lmdeploy's InternLM2 parser only reads
`<|plugin|>` calls, so an undeclared interpreter would never come back as a call — and each plugin API
(the arXiv search) is one function too.

`ToolAgent` is a `StepAgent` with another loop: the same executors, sandbox and limits, the same step events
(`StepAgent.execute` runs a call and yields its `tool_call` / `tool_result` / `figure` steps), the same
Python-off behaviour (the function is not declared, and a call to it is answered with the reason).  What goes
back to the model is made inert: the model's own text and arguments in its assistant turns, every tool result
(a `tool` message with its `tool_call_id`).  A malformed call — arguments that are not a JSON object, an unknown
function, empty code — is answered as that call's tool error, so the model can correct it; never a crash.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

from lagent.schema import ActionStatusCode

from ..engines.base import ToolsRefused
from .parsing import extract_code
from .steps import INTERPRETER_NOTE, MODEL_RESULT_CHARS, StepAgent, clip

PYTHON = "python"
SYSTEM_PROMPT = (
    "You are a helpful assistant that can call functions to solve the user's task. Call `python` to "
    "compute, check or plot something; call a search function to look up papers. When you have what "
    "you need, answer the user directly, in the user's language." + INTERPRETER_NOTE
)
_JSON_TYPES = {
    "STRING": "string",
    "NUMBER": "number",
    "INTEGER": "integer",
    "BOOLEAN": "boolean",
    "ARRAY": "array",
    "OBJECT": "object",
}


def function_name(lagent_name: str) -> str:
    """`ArxivSearch.get_arxiv_article_information` → `ArxivSearch_get_arxiv_article_information`: OpenAI function
    names allow only letters, digits, `_` and `-`."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", lagent_name)[:64]


def declare(info: dict[str, Any]) -> dict[str, Any]:
    """A Lagent action API description (`get_actions_info()`) as an OpenAI function declaration."""
    properties = {
        p["name"]: {
            "type": _JSON_TYPES.get(str(p.get("type", "STRING")).upper(), "string"),
            "description": p.get("description", ""),
        }
        for p in info.get("parameters", [])
    }
    return {
        "type": "function",
        "function": {
            "name": function_name(info["name"]),
            "description": info.get("description", ""),
            "parameters": {"type": "object", "properties": properties, "required": list(info.get("required", []))},
        },
    }


class ToolAgent(StepAgent):
    """`StepAgent`'s tools and steps, over OpenAI `tools` instead of InternLM2's special tokens.

    With `fall_back` (AGENT_PROTOCOL=auto), a server that refuses `tools` on the first call gets the run in
    InternLM2's protocol instead (`StepAgent.steps`), after a note; `fell_back` then says why."""

    def functions(self) -> tuple[list[dict[str, Any]], dict[str, str]]:
        """The declarations sent with every request, and function name → Lagent API name for the plugins."""
        tools: list[dict[str, Any]] = []
        if self._interpreter_executor is not None:
            tools.append(
                {
                    "type": "function",
                    "function": {
                        "name": PYTHON,
                        "description": "Run Python code in a fresh, offline sandbox and return what it "
                        "prints and the value of its last expression.",
                        "parameters": {
                            "type": "object",
                            "required": ["code"],
                            "properties": {"code": {"type": "string", "description": "the Python code"}},
                        },
                    },
                }
            )
        plugins: dict[str, str] = {}
        for info in self._action_executor.get_actions_info() if self._action_executor else []:
            tools.append(declare(info))
            plugins[function_name(info["name"])] = info["name"]
        return tools, plugins

    def steps(self, messages: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        tools, plugins = self.functions()
        wire: list[dict[str, Any]] = [{"role": "system", "content": SYSTEM_PROMPT}, *messages]
        for turn in range(1, self.max_turn + 1):
            if self.stop.is_set():
                return
            try:
                text, calls = self._llm.tool_chat(wire, tools)
            except ToolsRefused as exc:
                if not (self.fall_back and turn == 1):
                    raise
                self.fell_back = str(exc)
                self._llm.engine.tools_refused = self.fell_back  # later runs choose internlm2 at once
                yield {
                    "type": "note",
                    "turn": 0,
                    "title": "Note",
                    "protocol": "internlm2",
                    "text": f"{self.fell_back.rstrip('.')}. The server does not take OpenAI tool calls, so the "
                    "agent uses InternLM2's own protocol (start the server with a tool-call parser, or "
                    "set AGENT_PROTOCOL=internlm2).",
                }
                yield from StepAgent.steps(self, messages)
                return
            thought = text.strip()
            if not calls:
                yield from self.answer(turn, thought)
                return
            if thought:
                yield {"type": "thought", "turn": turn, "title": "Thought", "text": thought}
            ids = [c["id"] or f"call_{turn}_{i}" for i, c in enumerate(calls)]
            checked = [self._check_function(c, plugins) for c in calls]
            wire.append(
                {
                    "role": "assistant",
                    "content": self.inert(thought),
                    "tool_calls": [
                        {
                            "id": i,
                            "type": "function",
                            "function": {
                                "name": c["name"],
                                "arguments": self.inert(
                                    json.dumps(args, ensure_ascii=False) if args is not None else "{}"
                                ),
                            },
                        }
                        for i, c, (_p, _k, _call, args) in zip(ids, calls, checked, strict=True)
                    ],
                }
            )
            for call_id, (problem, kind, call, _args) in zip(ids, checked, strict=True):
                if problem:
                    yield {
                        "type": "note",
                        "turn": turn,
                        "title": "Note",
                        "text": f"The model's tool call was malformed ({problem}); asking it to correct it.",
                    }
                    content = f"Error: the tool call was malformed ({problem})."
                else:
                    result = yield from self.execute(turn, kind, call)
                    ok = result.state == ActionStatusCode.SUCCESS
                    content = result.format_result() if ok else f"Error: {result.errmsg or 'the tool failed'}"
                wire.append(
                    {
                        "role": "tool",
                        "tool_call_id": call_id,
                        "content": self.inert(clip(content, MODEL_RESULT_CHARS)[0]),
                    }
                )
        yield {
            "type": "note",
            "turn": self.max_turn,
            "title": "Note",
            "limit": "turns",
            "text": f"Stopped after {self.max_turn} steps without a final answer (AGENT_MAX_TURNS).",
        }

    def _check_function(
        self, call: dict[str, str], plugins: dict[str, str]
    ) -> tuple[str, str, dict[str, Any], dict[str, Any] | None]:
        """(problem or "", "interpreter" | "plugin", the call as `StepAgent.execute` takes it, the parsed
        arguments or None)."""
        name = call["name"]
        try:
            args = json.loads(call["arguments"] or "{}")
        except json.JSONDecodeError as exc:
            return f"the arguments of {name!r} are not valid JSON: {exc.msg}", "", {}, None
        if not isinstance(args, dict):
            return f"the arguments of {name!r} must be a JSON object", "", {}, None
        if name == PYTHON:
            if self._interpreter_executor is None:
                return (
                    (
                        f"Python is off here: {self.python_off}; answer without running code"
                        if self.python_off
                        else "no interpreter is available"
                    ),
                    "",
                    {},
                    args,
                )
            source = args.get("code", args.get("command"))
            if not isinstance(source, str) or not extract_code(source).strip():
                return 'python needs {"code": "<Python code>"}', "", {}, args
            return (
                "",
                "interpreter",
                {"name": "SandboxedPython", "parameters": {"command": source}, "code": extract_code(source)},
                args,
            )
        if name not in plugins:
            known = ", ".join(sorted(plugins) + ([PYTHON] if self._interpreter_executor else [])) or "none"
            return f"there is no function named {name!r}; available: {known}", "", {}, args
        return "", "plugin", {"name": plugins[name], "parameters": args}, args
