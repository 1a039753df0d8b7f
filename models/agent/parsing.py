"""What InternLM2 really writes in a tool turn, turned into something a tool can run.

InternLM2/2.5 never sends bare code.  A recorded InternLM2.5-7B-Chat turn (lagent's
`examples/run_agent_lmdeploy.py`) is thought text, `<|action_start|><|interpreter|>`, a newline and a
```` ```python ```` fenced block, and then nothing, because `<|action_end|>` is a stop word the server removed.
Other turns keep `<|action_end|>` and a newline or `<|im_end|>` after it (`chat/chat_format.md`), put the fence
without a language tag, leave it unclosed, or wrap plugin JSON in a ```` ```json ```` fence with a sentence
after it.  Lagent's own interpreters accept all of these (`IPythonInterpreter`'s `extract_code`: a fenced block
with any tag, inline backticks, JSON `{"code": ...}`; `PythonInterpreter`: an unclosed fence); so does
`extract_code` here, without ever running anything.

`parse_plugin_call` does the same for `<|plugin|>` calls: it reads the first JSON object of the text and
ignores a surrounding fence and whatever follows the object.
"""

from __future__ import annotations

import json
import re
import textwrap
from typing import Any

ACTION_START = "<|action_start|>"
ACTION_END = "<|action_end|>"
INTERPRETER = "<|interpreter|>"
PLUGIN = "<|plugin|>"
IM_END = "<|im_end|>"

_OPEN_FENCE = re.compile(r"```[ \t]*([^\n`]*)\n")  # ```python\n, ```py\n, ```\n
_CLOSE_FENCE = re.compile(r"^[ \t]*```", re.M)  # a line starting with ``` ends the block
_INLINE_FENCE = re.compile(r"```(?:python3?|py)?[ \t]*(.+?)```", re.S)  # ```print(1)``` on one line
_BACKTICKS = re.compile(r"^`([^`]+)`$", re.S)  # `print(1)`, the whole command in single backticks


def _turn_body(text: str, marker: str) -> str:
    """The part of a whole turn that belongs to the tool: after the marker, before `<|action_end|>`."""
    if marker in text:
        text = text.split(marker, 1)[1]
    for end in (ACTION_END, IM_END):
        text = text.split(end, 1)[0]
    return text


def extract_code(command: str) -> str:
    """The Python code in what the model sent to the interpreter (a whole turn or just its action part).

    Order, as Lagent's interpreters do it: a fenced block (language tag or not, closing fence or not, prose
    before and after it dropped), then a command wrapped in single backticks, then JSON `{"code": ...}`, else
    the text itself as bare code.  Common indentation is removed (a fence inside a Markdown list).
    """
    text = _turn_body(command or "", INTERPRETER)
    opening = _OPEN_FENCE.search(text)
    if opening:
        body = text[opening.end() :]
        closing = _CLOSE_FENCE.search(body)
        if closing is None:  # a closing fence that is not at the start of a line (`...x)```)
            cut = body.find("```")
            body = body if cut < 0 else body[:cut]
        else:
            body = body[: closing.start()]
        return textwrap.dedent(body).strip("\n").rstrip()
    inline = _INLINE_FENCE.search(text)
    if inline:
        return inline.group(1).strip()
    stripped = text.strip()
    ticks = _BACKTICKS.match(stripped)
    if ticks:
        return ticks.group(1).strip()
    if stripped.startswith("{"):
        code = _json_code(stripped)
        if code is not None:
            return code
    return textwrap.dedent(text).strip("\n").rstrip()


def _json_code(text: str) -> str | None:
    """`{"code": "..."}` (IPythonInterpreter reads it with json5, which also takes single quotes)."""
    try:
        import json5

        value = json5.loads(text)
    except Exception:  # anything unreadable is simply not this form
        return None
    code = value.get("code") if isinstance(value, dict) else None
    return code.strip() if isinstance(code, str) else None


class PluginCallError(ValueError):
    """A plugin call that cannot be read; the message says what is wrong, for the model and the user."""


def parse_plugin_call(text: str) -> dict[str, Any]:
    """`{"name": str, "parameters": dict}` from the text of a `<|plugin|>` action.

    Tolerates a ```` ```json ```` (or bare) fence around the object, text before and after it, and
    `parameters` given as a JSON string; raises `PluginCallError` otherwise.
    """
    body = _turn_body(text or "", PLUGIN)
    opening = _OPEN_FENCE.search(body)
    if opening:
        inner = body[opening.end() :]
        cut = inner.find("```")
        body = inner if cut < 0 else inner[:cut]
    start = body.find("{")
    if start < 0:
        raise PluginCallError("the arguments are not valid JSON: no JSON object found")
    try:
        call, _end = json.JSONDecoder().raw_decode(body, start)
    except ValueError as exc:
        raise PluginCallError(f"the arguments are not valid JSON: {str(exc)[:80]}") from None
    if not isinstance(call, dict) or not isinstance(call.get("name"), str) or not call["name"].strip():
        raise PluginCallError('the call has no "name"')
    params = call.get("parameters", {})
    if isinstance(params, str):
        try:
            params = json.loads(params) if params.strip() else {}
        except ValueError:
            params = None
    if params is None or not isinstance(params, dict):
        raise PluginCallError('"parameters" is not a JSON object')
    return {"name": call["name"].strip(), "parameters": params}
