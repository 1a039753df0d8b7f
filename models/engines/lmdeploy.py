"""`ENGINE=lmdeploy`: InternLM (and a vision model) in this process, on the GPU, via lmdeploy's `pipeline`.

Two lmdeploy lines are supported, because lmdeploy 0.15 removed InternLM-XComposer (InternLM/lmdeploy#4693):

* **current lmdeploy (≥ 0.15; extra `gpu`)** — InternLM2.5/3 for chat, InternVL2.5/3/3.5 or Intern-S1 as the
  vision model;
* **lmdeploy 0.14 (extra `gpu-xcomposer`)** — the last release with InternLM-XComposer 2/2.5 (TurboMind only).

`start()` reads the installed version and each model's family (models/engines/families.py: its config.json
`architectures`, else its name) and refuses, with an `EngineError` saying which extra to install, a combination
that cannot work — XComposer on ≥ 0.15, or an lmdeploy older than 0.14 — before loading anything.

Written against the `pipeline` API as the sources of v0.14.0, v0.16.0 (InternLM/lmdeploy tags) and 0.18.0
(the PyPI wheel) define it, which is the same in all three for everything used here — verified on GPU: not yet
(`scripts/gpu_check` exercises it).  Deliberately thin:

* `pipeline(model, backend_config=TurbomindEngineConfig | PytorchEngineConfig(tp=, session_len=,
  cache_max_entry_count=), log_level=, trust_remote_code=True)`, loaded in `start()` in a thread; `lmdeploy`
  is imported only there, so the default install never needs it.
* Each job is one lmdeploy *session*: `Pipeline.stream_infer(messages, sessions=session, gen_config=...,
  do_preprocess=...)` streams `Response`s whose `text` is the new piece.  The blocking iterator is drained
  in a thread and the pieces handed to asyncio through a queue; concurrent jobs are concurrent sessions,
  which lmdeploy batches (that is why the worker runs `WORKER_CONCURRENCY` jobs at once).  A failed request
  ends with `finish_reason="error"` (0.16+ also fill `error_message`, which is logged, not shown).
* Stop: `Session.abort()` cancels the request inside the engine; the stream then ends with
  `finish_reason="abort"`.
* Sampling: lmdeploy ignores temperature/top_p unless `do_sample=True`, so `do_sample = temperature > 0`.
* Images go in as OpenAI-style `image_url` parts with `data:image/...` URLs, which both lines decode
  themselves (0.16+ parse them in user messages: `MultimodalProcessor._parse_multimodal_item`).  A message
  with images is routed to the vision pipeline; when the vision model is the only model (or the same as
  `LMDEPLOY_MODEL`) one pipeline serves both.  A separate vision pipeline, and any XComposer, gets a TurboMind
  config (0.14 documents XComposer for TurboMind only; a TurboMind config falls back to the PyTorch engine by
  itself for a model TurboMind lacks).
* Intern-S1 thinks aloud by default; its chat template's `enable_thinking` is passed as
  `chat_template_kwargs` (accepted by both lines) from `LMDEPLOY_THINKING`, off unless asked for.

Why one module past 400 lines: both lmdeploy lines share the start-up checks, the pipeline calls and the
streaming adapter, and their differences are a few branches beside each other; two modules would copy the rest.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import logging
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from ..settings import Settings
from .base import ChatMessage, Engine, EngineError, GenParams, VisionUnsupported
from .families import INTERN_S1, INTERNLM, INTERNVL, XCOMPOSER, model_family
from .sampling import INTERNLM_DEMO, generation_config_defaults

log = logging.getLogger(__name__)

_DONE = object()
# Context an image takes in XComposer 2.5 (a 1024-pixel image is cut into several 560-pixel tiles of ~400
# tokens each), as the openai engine budgets it; over-estimating only drops old turns a little earlier.
IMAGE_TOKENS = 2000


OLDEST = (0, 14)  # the oldest line this engine was written against (and the XComposer line); older ones unread
XCOMPOSER_LAST = (0, 15)  # the first release without XComposer (InternLM/lmdeploy#4693)
INSTALL_CURRENT = "pip install -e '.[gpu]'"
INSTALL_XCOMPOSER = "pip install -e '.[gpu-xcomposer]'"


def version_tuple(version: str) -> tuple[int, int, int]:
    """`lmdeploy.__version__` ("0.14.0", "0.16.0", "0.15.0rc1") as numbers; unreadable parts count as 0."""
    numbers: list[int] = []
    for part in str(version).split(".")[:3]:
        digits = "".join(itertools.takewhile(str.isdigit, part))
        numbers.append(int(digits) if digits else 0)
    major, minor, patch = [*numbers, 0, 0, 0][:3]
    return major, minor, patch


def check_support(version: str, models: dict[str, str]) -> None:
    """Refuse, before any weights load, what the installed lmdeploy cannot serve.

    `models` maps each configured model to its family.  XComposer needs 0.14.x; everything else needs at
    least 0.14, the oldest release whose `pipeline` API this engine was checked against."""
    found = version_tuple(version)
    if found[:2] < OLDEST:
        raise EngineError(
            f"lmdeploy {version} is too old for this bot (it needs 0.14 or newer): "
            f"{INSTALL_CURRENT}, or {INSTALL_XCOMPOSER} for InternLM-XComposer"
        )
    xcomposer = [m for m, family in models.items() if family == XCOMPOSER]
    if xcomposer and found[:2] >= XCOMPOSER_LAST:
        raise EngineError(
            f"{xcomposer[0]} is InternLM-XComposer, which lmdeploy {version} cannot serve (lmdeploy 0.15 removed "
            f"it). Either install lmdeploy 0.14 for it ({INSTALL_XCOMPOSER}), or keep this lmdeploy and set "
            "LMDEPLOY_VISION_MODEL to an InternVL or Intern-S1 model (e.g. OpenGVLab/InternVL3_5-8B)."
        )


def generation_config_kwargs(params: GenParams, *, skip_special_tokens: bool = True) -> dict[str, Any]:
    """GenParams → keyword arguments of `lmdeploy.GenerationConfig`.

    `do_sample` must be on for temperature/top_p to matter at all (lmdeploy decodes greedily otherwise);
    temperature 0 therefore means greedy decoding.  Raw (agent) completions keep special tokens, because
    the InternLM2 tool protocol marks actions with them (`<|action_start|>` ...).
    """
    sample = params.temperature > 0
    return {
        "max_new_tokens": int(params.max_new_tokens),
        "do_sample": sample,
        "temperature": float(min(max(params.temperature, 0.0), 2.0)) if sample else 1.0,
        "top_p": float(min(max(params.top_p, 0.0), 1.0)) if sample else 1.0,
        "repetition_penalty": float(params.repetition_penalty),
        "stop_words": list(params.stop) or None,
        "skip_special_tokens": skip_special_tokens,
    }


def to_openai_messages(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    """ChatMessages → the OpenAI-format messages lmdeploy 0.14's pipeline accepts (images as data URLs).

    The agent's `environment` role is passed through: InternLM2's chat template knows it.
    """
    out: list[dict[str, Any]] = []
    for message in messages:
        if message.images:
            parts: list[dict[str, Any]] = [{"type": "text", "text": message.content}]
            parts += [
                {
                    "type": "image_url",
                    "image_url": {"url": f"data:{img.mime};base64,{base64.b64encode(img.data).decode()}"},
                }
                for img in message.images
            ]
            out.append({"role": message.role, "content": parts})
        else:
            out.append({"role": message.role, "content": message.content})
    return out


def tokenizer_special_tokens(tokenizer: Any) -> frozenset[str]:
    """The added and special tokens of the Hugging Face tokenizer inside lmdeploy's `Tokenizer`.

    lmdeploy wraps the model's `transformers` tokenizer (`Tokenizer.model` is its `HuggingFaceTokenizer`,
    whose `.model` is the `AutoTokenizer`).  Every *added* token (`added_tokens_decoder`: InternLM2's
    `<|im_start|>` ... `<|plugin|>`, `<s>`, `</s>`) is split out of prompt text before the model's own
    tokenisation, special or not, so all of them count, plus `all_special_tokens`.  A SentencePiece-only
    tokenizer has neither attribute and gives an empty set.  Tokens without a marker shape (one character,
    whitespace inside) are left out, as in the llama.cpp engine.
    """
    hf = tokenizer
    for _ in range(3):  # Tokenizer -> HuggingFaceTokenizer -> transformers tokenizer
        if hf is None or hasattr(hf, "added_tokens_decoder") or hasattr(hf, "all_special_tokens"):
            break
        hf = getattr(hf, "model", None)
    if hf is None:
        return frozenset()
    texts: set[str] = set()
    with contextlib.suppress(Exception):
        texts.update(str(t) for t in (getattr(hf, "all_special_tokens", None) or []))
    with contextlib.suppress(Exception):
        for added in (getattr(hf, "added_tokens_decoder", None) or {}).values():
            texts.add(str(getattr(added, "content", added)))
    return frozenset(t for t in texts if len(t) > 1 and not any(ch.isspace() for ch in t))


def cut_at_stop(text: str, stops: list[str]) -> int | None:
    """Index where the first stop string starts in `text`, or None.  lmdeploy maps stop words to single
    token ids only, so multi-token stop strings are enforced here, on the text."""
    found = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return min(found) if found else None


@dataclass
class _Stream:
    """One running lmdeploy session, as the event loop sees it."""

    session: Any
    queue: asyncio.Queue[Any]
    stop: threading.Event


class LMDeployEngine(Engine):
    name = "lmdeploy"
    supports_raw = True
    keeps_control_tokens = True  # raw completions decode with skip_special_tokens=False

    def __init__(
        self,
        model: str,
        *,
        vision_model: str = "",
        backend: str = "turbomind",
        tp: int = 1,
        session_len: int = 8192,
        log_level: str = "ERROR",
        cache_share: float = 0.8,
        thinking: bool = False,
    ) -> None:
        self.model = model
        self.vision_model = vision_model
        self.backend = backend
        self.tp = tp
        self.session_len = session_len
        self.context_window = session_len
        self.supports_vision = bool(vision_model)
        self.log_level = log_level
        self.cache_share = cache_share  # fraction of free GPU memory for the KV cache (lmdeploy's default 0.8)
        self.thinking = thinking
        self.version = ""  # the lmdeploy that start() found
        self.pipe: Any = None
        self.vision_pipe: Any = None
        self._special: frozenset[str] | None = None
        self.sampling_defaults: dict[str, float] = {}  # the chat model's (set by `_load`)

    @classmethod
    def from_settings(cls, settings: Settings) -> LMDeployEngine:
        return cls(
            settings.lmdeploy_model,
            vision_model=settings.lmdeploy_vision_model,
            backend=settings.lmdeploy_backend,
            tp=settings.lmdeploy_tp,
            session_len=settings.lmdeploy_session_len,
            thinking=settings.lmdeploy_thinking,
        )

    def describe(self) -> str:
        names = self.model + (f"+{self.vision_model}" if self.vision_model and self.vision_model != self.model else "")
        return f"lmdeploy{'-' + self.version if self.version else ''}:{self.backend}:{names}"

    def served_model(self, vision: bool) -> str:
        """The vision model for requests with images, the chat model (or the only model) otherwise."""
        return self.vision_model if vision and self.vision_model else (self.model or self.vision_model)

    # ------------------------------------------------------------------ lifecycle
    def backend_config(self, cache_share: float = 0.8, backend: str | None = None) -> Any:
        import lmdeploy

        backend = backend or self.backend
        cls = lmdeploy.TurbomindEngineConfig if backend == "turbomind" else lmdeploy.PytorchEngineConfig
        return cls(tp=self.tp, session_len=self.session_len, cache_max_entry_count=cache_share)

    def backend_for(self, model: str) -> str:
        """The configured backend — except that XComposer, and a vision model that is not also the chat model,
        always get TurboMind: lmdeploy 0.14 documents XComposer 2.5 for TurboMind only (InternVL and Intern-S1
        are in both engines' tables), and a TurboMind config falls back to the PyTorch engine by itself for
        models TurboMind does not support (a PyTorch config would be forced on)."""
        if model_family(model) == XCOMPOSER:
            return "turbomind"
        return "turbomind" if model == self.vision_model and model != self.model else self.backend

    def template_kwargs(self, pipe: Any) -> dict[str, Any]:
        """Extra `stream_infer` arguments for the model behind `pipe`: Intern-S1's `enable_thinking`."""
        model = self.served_model(vision=pipe is self.vision_pipe)
        if model_family(model) == INTERN_S1:
            return {"chat_template_kwargs": {"enable_thinking": self.thinking}}
        return {}

    def _load(self) -> None:
        try:
            import lmdeploy
        except ImportError as exc:
            raise EngineError(
                f"ENGINE=lmdeploy needs a GPU extra: {INSTALL_CURRENT} (InternLM, InternVL, "
                f"Intern-S1), or {INSTALL_XCOMPOSER} (lmdeploy 0.14, for InternLM-XComposer)"
            ) from exc
        models = [m for m in dict.fromkeys([self.model, self.vision_model]) if m]
        if not models:
            raise EngineError("set LMDEPLOY_MODEL (and/or LMDEPLOY_VISION_MODEL)")
        self.version = str(getattr(lmdeploy, "__version__", "0"))
        families = {m: model_family(m) for m in models}
        check_support(self.version, families)
        if self.vision_model and families[self.vision_model] not in (XCOMPOSER, INTERNVL, INTERN_S1):
            log.warning(
                "LMDEPLOY_VISION_MODEL %s is not a model family this bot knows (XComposer, InternVL, "
                "Intern-S1); lmdeploy will say whether it serves it",
                self.vision_model,
            )
        log.info("lmdeploy %s: %s", self.version, ", ".join(f"{m} ({f})" for m, f in families.items()))
        # Two models share the GPU's KV-cache budget (each takes a share of the memory still free).
        share = self.cache_share if len(models) == 1 else self.cache_share / 2
        pipes = {
            m: lmdeploy.pipeline(
                m,
                backend_config=self.backend_config(share, self.backend_for(m)),
                log_level=self.log_level,
                trust_remote_code=True,
            )
            for m in models
        }
        self.pipe = pipes[self.model or self.vision_model]
        self.vision_pipe = pipes.get(self.vision_model) if self.vision_model else None
        chat = self.model or self.vision_model  # its defaults: the family's, then its own generation_config.json
        self.sampling_defaults = {
            **(INTERNLM_DEMO if families[chat] == INTERNLM else {}),
            **generation_config_defaults(chat),
        }

    async def start(self) -> None:
        if self.pipe is None:
            await asyncio.to_thread(self._load)

    async def close(self) -> None:
        pipes = {id(p): p for p in (self.pipe, self.vision_pipe) if p is not None}
        self.pipe = self.vision_pipe = None
        self._special = None
        for pipe in pipes.values():
            with contextlib.suppress(Exception):
                await asyncio.to_thread(pipe.close)

    # ------------------------------------------------------------------ tokens
    @property
    def special_tokens(self) -> frozenset[str]:  # type: ignore[override]
        """The chat and vision models' tokenizers' added/special tokens (empty before `start()`)."""
        if self.pipe is None:
            return frozenset()
        if self._special is None:
            pipes = {id(p): p for p in (self.pipe, self.vision_pipe) if p is not None}
            found: set[str] = set()
            for pipe in pipes.values():
                engine = getattr(pipe, "async_engine", None)
                found |= tokenizer_special_tokens(getattr(engine, "tokenizer", None))
            self._special = frozenset(found)
        return self._special

    def count_tokens(self, text: str) -> int:
        if not text:
            return 0
        if self.pipe is None:
            return max(1, len(text) // 3)  # before start(): a conservative estimate
        return len(self.pipe.async_engine.tokenizer.encode(text, add_bos=False))

    def count_message_tokens(self, messages: list[ChatMessage]) -> int:
        """Like the base estimate, but an image costs `IMAGE_TOKENS` (the base's generic 256 is far too few
        for XComposer's tiles, so a conversation with images would overflow `session_len`)."""
        return sum(self.count_tokens(m.content) + 4 + IMAGE_TOKENS * len(m.images) for m in messages) + 2

    # ------------------------------------------------------------------ generation
    def stream_chat(self, messages: list[ChatMessage], params: GenParams, cancel: asyncio.Event) -> AsyncIterator[str]:
        has_images = any(m.images for m in messages)
        if has_images and self.vision_pipe is None:
            raise VisionUnsupported("no LMDEPLOY_VISION_MODEL is configured")
        pipe = self.vision_pipe if has_images else self.pipe
        return self._generate(
            pipe,
            to_openai_messages(messages),
            params,
            cancel,
            skip_special_tokens=True,
            extra=self.template_kwargs(pipe),
        )

    def stream_raw(self, prompt: str, params: GenParams, cancel: asyncio.Event) -> AsyncIterator[str]:
        return self._generate(self.pipe, prompt, params, cancel, skip_special_tokens=False, do_preprocess=False)

    async def _generate(
        self,
        pipe: Any,
        prompt: Any,
        params: GenParams,
        cancel: asyncio.Event,
        *,
        skip_special_tokens: bool,
        do_preprocess: bool = True,
        extra: dict[str, Any] | None = None,
    ) -> AsyncIterator[str]:
        if pipe is None:
            raise EngineError("the lmdeploy engine is not started")
        import lmdeploy

        gen_config = lmdeploy.GenerationConfig(
            **generation_config_kwargs(params, skip_special_tokens=skip_special_tokens)
        )
        loop = asyncio.get_running_loop()
        stream = _Stream(session=pipe.session(), queue=asyncio.Queue(), stop=threading.Event())

        def put(item: Any) -> None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stream.queue.put_nowait, item)

        def pump() -> None:
            aborted_late = False
            try:
                for response in pipe.stream_infer(
                    prompt, sessions=stream.session, gen_config=gen_config, do_preprocess=do_preprocess, **(extra or {})
                ):
                    if response.finish_reason == "error":
                        log.warning(
                            "lmdeploy refused a request: %s",
                            getattr(response, "error_message", None) or "(no message; lmdeploy 0.14)",
                        )
                        put(EngineError("the GPU model failed on this request"))
                        break
                    if not stream.stop.is_set():
                        if response.text:
                            put(response.text)
                    elif not aborted_late:
                        # Stop came while the session still waited for a free engine slot, when abort() has
                        # nothing to cancel yet: now that it produces tokens, cancel it for real.
                        aborted_late = True
                        with contextlib.suppress(Exception):
                            stream.session.abort()
            except Exception as exc:
                log.exception("lmdeploy generation failed")
                put(EngineError(f"the GPU model failed ({type(exc).__name__})"))
            finally:
                put(_DONE)

        def abort() -> None:
            if not stream.stop.is_set():
                stream.stop.set()
                with contextlib.suppress(Exception):
                    stream.session.abort()

        watcher = asyncio.ensure_future(cancel.wait())
        watcher.add_done_callback(lambda f: None if f.cancelled() else loop.run_in_executor(None, abort))
        threading.Thread(target=pump, name="lmdeploy-stream", daemon=True).start()
        text = ""
        emitted = 0
        finished = False
        try:
            while True:
                item = await stream.queue.get()
                if item is _DONE:
                    break
                if isinstance(item, Exception):
                    raise item
                if stream.stop.is_set():
                    continue  # aborted: drain until the stream ends
                text += item
                cut = cut_at_stop(text, params.stop)
                if cut is not None:
                    if cut > emitted:
                        yield text[emitted:cut]
                    await asyncio.to_thread(abort)
                    continue
                # Hold back a tail that could be the start of a stop string.
                hold = max((len(s) - 1 for s in params.stop), default=0)
                safe = max(emitted, len(text) - hold)
                if safe > emitted:
                    yield text[emitted:safe]
                    emitted = safe
            finished = True
            if not stream.stop.is_set() and emitted < len(text):
                yield text[emitted:]
        finally:
            watcher.cancel()
            if not finished:  # the consumer left early: the session must not keep generating
                await asyncio.to_thread(abort)
