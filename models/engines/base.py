"""The one small interface every inference engine implements.

An engine streams text for a list of chat messages, stops when its `cancel` event is set, and counts
tokens with its own tokenizer (the worker uses that to fit history into the context window).
Engines never see Redis, Discord or job envelopes.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any


class EngineError(RuntimeError):
    """A failure whose message is safe to show a user (no secrets, no stack traces)."""


class VisionUnsupported(EngineError):
    """The configured engine has no vision model."""


class ToolsRefused(EngineError):
    """The server refused a request for carrying `tools` (vLLM without --enable-auto-tool-choice answers HTTP 400
    '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set'; Ollama '… does not
    support tools'): the agent under AGENT_PROTOCOL=auto falls back to InternLM2's protocol."""


@dataclass
class ImageInput:
    """An image handed to a vision engine: already validated, downsized and re-encoded."""

    data: bytes
    mime: str = "image/png"


@dataclass
class ChatMessage:
    role: str  # "system" | "user" | "assistant" | "environment" (agent tool results)
    content: str
    images: list[ImageInput] = field(default_factory=list)
    name: str | None = None


@dataclass
class GenParams:
    temperature: float = 0.8
    top_p: float = 0.8
    max_new_tokens: int = 1024
    repetition_penalty: float = 1.005
    stop: list[str] = field(default_factory=list)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, defaults: GenParams | None = None) -> GenParams:
        base = defaults or cls()
        data = data or {}

        def num(key: str, lo: float, hi: float) -> float:
            try:
                value = float(data.get(key, getattr(base, key)))
            except (TypeError, ValueError):
                value = float(getattr(base, key))
            return min(max(value, lo), hi)

        stop = data.get("stop", base.stop)
        return cls(
            temperature=num("temperature", 0.0, 2.0),
            top_p=num("top_p", 0.01, 1.0),
            max_new_tokens=int(num("max_new_tokens", 1, 32768)),
            repetition_penalty=num("repetition_penalty", 0.5, 2.0),
            stop=[str(s) for s in stop][:8] if isinstance(stop, list) else [],
        )


class Engine(ABC):
    """Async streaming generation with cancellation, plus token counting."""

    name: str = "engine"
    context_window: int = 4096
    supports_vision: bool = False
    supports_raw: bool = False  # can complete a raw prompt string (for the agent's native protocol)
    # Its raw completions hand the model's control tokens back as text (InternLM2's `<|action_start|>` …), as the
    # agent's InternLM2 protocol needs; False where that depends on a server (models/agent/protocol.py).
    keeps_control_tokens: bool = False
    # The configured model's own control tokens as text (`<|im_start|>`, `<|im_end|>`, ...): every token its
    # tokenizer would read as one special token where it appears in prompt text.  Runners pass them to
    # `untrusted.inert` as `extra`, so a model with markers beyond the built-in list is covered too.
    # Empty when the tokenizer is not known here (before `start()`, a remote server): inert's own list of
    # InternLM2 / ChatML / Llama markers still applies.
    special_tokens: frozenset[str] = frozenset()
    # The loaded model's own sampling defaults (models/engines/sampling.py), for every value neither the job nor
    # the worker's settings set explicitly; empty = the InternLM demo's (`GenParams`' own).
    sampling_defaults: dict[str, float] = {}

    async def start(self) -> None:
        """Load weights / open clients.  Called once by the worker before it claims jobs."""

    async def close(self) -> None:
        """Release resources."""

    @abstractmethod
    def count_tokens(self, text: str) -> int:
        """Tokens `text` takes with this engine's tokenizer."""

    def count_message_tokens(self, messages: list[ChatMessage]) -> int:
        """Tokens a list of messages takes, template overhead included (roughly: 4 per message)."""
        return sum(self.count_tokens(m.content) + 4 + 256 * len(m.images) for m in messages) + 2

    @abstractmethod
    def stream_chat(self, messages: list[ChatMessage], params: GenParams, cancel: asyncio.Event) -> AsyncIterator[str]:
        """Yield pieces of the reply as they are produced; return early when `cancel` is set."""

    def stream_raw(self, prompt: str, params: GenParams, cancel: asyncio.Event) -> AsyncIterator[str]:
        """Complete a fully rendered prompt (no chat template applied).  Optional."""
        raise EngineError(f"the {self.name} engine cannot complete raw prompts")

    def opens_thinking(self, messages: list[ChatMessage]) -> bool:
        """Whether the prompt `stream_chat` renders for `messages` ends inside an open `<think>` (the chat
        template opened the model's thinking, models/reasoning.py).  False where the engine does not render
        the template itself (a server that splits the reasoning does so on its side)."""
        return False

    def served_model(self, vision: bool) -> str:
        """The model (path, hub id or served name) that answers a request with images (`vision`) or without.
        The article flow picks its prompt set by it (models/engines/families.py); "" = not known."""
        return ""

    def describe(self) -> str:
        return self.name
