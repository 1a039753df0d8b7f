"""Which protocol the agent speaks with the model (`AGENT_PROTOCOL`): InternLM2's own special tokens, or OpenAI
function calling — and, for `auto` (the default), why.

Why `auto` decides as it does:

* InternLM2's protocol (`<|action_start|><|interpreter|>` … `<|action_end|>`) needs two things: raw completions
  that hand the model's control tokens back as text (`Engine.keeps_control_tokens`: the llama.cpp engine renders
  them, in-process lmdeploy decodes with `skip_special_tokens=False`), and a model whose vocabulary has those
  tokens as single special tokens (`Engine.special_tokens`, read from the GGUF or the tokenizer).  Both known
  → `internlm2`: it is what InternLM2 was trained on, and works on the 1.8B model as on the 7B.
* Otherwise, an engine that accepts `tools` (`ENGINE=openai`) → `tools`: an OpenAI-compatible server may strip
  special tokens from what it sends, and whether it does is not visible from here; `AGENT_PROTOCOL=internlm2`
  is how an operator says that theirs keeps them (lmdeploy and vLLM do when asked, as this bot asks).  A server
  started without a tool parser refuses the first request (`ToolsRefused`: vLLM's HTTP 400 '"auto" tool choice
  requires --enable-auto-tool-choice …'); the run then goes on in InternLM2's protocol with a note
  (`ToolAgent`), and the engine remembers it, so later runs choose `internlm2` at once.
* Otherwise InternLM2's protocol is the only one the engine can run.  When the vocabulary is known and lacks the
  tokens (the bundled SmolLM2), the user is told in a note that the model will hardly follow it, and what to
  configure instead; when it is not known (a test engine, a server), it runs without a note.

The choice and its reason go to the worker's log (once per engine and setting) and into the `done` event.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

INTERNLM2 = "internlm2"
TOOLS = "tools"
# The tokens InternLM2's tool protocol is written in (Lagent's Internlm2Protocol; tokenizer ids 92538…92543).
PROTOCOL_TOKENS = ("<|im_start|>", "<|im_end|>", "<|action_start|>", "<|action_end|>", "<|interpreter|>", "<|plugin|>")
_LOGGED: set[tuple[int, str, str]] = set()


@dataclass(frozen=True)
class Choice:
    protocol: str  # INTERNLM2 | TOOLS
    reason: str  # for the log and the `done` event
    note: str = ""  # shown to the user before the run: the choice is a fallback that may not work


def has_protocol_tokens(tokens: Collection[str]) -> bool:
    return all(t in tokens for t in PROTOCOL_TOKENS)


def choose(engine: Any, setting: str, tokens: Collection[str] = ()) -> Choice:
    """The protocol for one agent run on `engine` under `AGENT_PROTOCOL=setting`; `tokens` are the engine's
    special tokens (read once by the caller)."""
    name = getattr(engine, "name", "engine")
    refused = str(getattr(engine, "tools_refused", "") or "")  # the server said no to `tools` in an earlier run
    tools = bool(getattr(engine, "supports_tools", False)) and not (refused and setting == "auto")
    if setting == INTERNLM2:
        return Choice(INTERNLM2, "AGENT_PROTOCOL=internlm2")
    if setting == TOOLS:
        if tools:
            return Choice(TOOLS, "AGENT_PROTOCOL=tools")
        return Choice(
            INTERNLM2,
            f"AGENT_PROTOCOL=tools, but the {name} engine has no tool calling",
            note=f"AGENT_PROTOCOL=tools needs ENGINE=openai (this worker runs {name}); using InternLM2's own protocol.",
        )
    raw_keeps = bool(getattr(engine, "supports_raw", False) and getattr(engine, "keeps_control_tokens", False))
    if raw_keeps and has_protocol_tokens(tokens):
        return Choice(
            INTERNLM2,
            f"auto: the model's vocabulary has InternLM2's tool tokens and the {name} engine "
            "keeps them in raw completions",
        )
    if tools:
        return Choice(
            TOOLS,
            f"auto: the {name} engine accepts OpenAI `tools` (a server may strip InternLM2's "
            "special tokens; AGENT_PROTOCOL=internlm2 if yours keeps them)",
        )
    if refused:
        return Choice(INTERNLM2, f"auto: the server refused `tools` ({refused[:160]})")
    if raw_keeps and tokens:
        return Choice(
            INTERNLM2,
            f"auto: the model has no InternLM2 tool tokens and the {name} engine no tool calling",
            note="This model has no InternLM2 tool tokens (<|action_start|>, <|interpreter|>, …) and the "
            f"{name} engine has no tool calling, so it will hardly use the tools. For the agent, use "
            "an InternLM2 model (LLAMACPP_MODEL empty = InternLM2.5-1.8B-Chat when the hub is "
            "reachable) or ENGINE=openai with a server that accepts `tools`.",
        )
    return Choice(INTERNLM2, f"auto: the {name} engine has no tool calling; InternLM2's protocol is the one it runs")


def log_choice(engine: Any, setting: str, choice: Choice) -> None:
    """One info line per engine and setting (every run would repeat it), the rest at debug."""
    key = (id(engine), setting, choice.protocol)
    level = logging.DEBUG if key in _LOGGED else logging.INFO
    _LOGGED.add(key)
    log.log(level, "agent protocol %s (%s)", choice.protocol, choice.reason)
