"""Images on the CPU: a multimodal projector GGUF (mmproj) next to the llama.cpp model — InternVL3/3.5 included.

llama-cpp-python 0.3.x runs projectors through llama.cpp's `libmtmd`, which knows InternVL's vision tower
(projector type `internvl`: the ViT, pixel shuffle, the MLP, `<img>…</img>` around the image embeddings) as well
as LLaVA, Qwen2.5-VL, Gemma 3 and others.  Which chat handler renders the prompt is the part that differs:

* `MTMDChatHandler` (the generic mtmd handler of llama-cpp-python, 0.3.36 here) renders the **model's own**
  `tokenizer.chat_template` with mtmd's media marker where each image goes — right for InternVL (ChatML turns)
  and any GGUF that carries its template.  Its templates receive OpenAI-style content lists, which many
  templates (SmolLM2's, InternLM2.5's, several InternVL GGUFs') cannot read — they concatenate
  `message['content']` as a string — so `TemplateVisionHandler` hands them one string instead: the image
  markers first (InternVL's and LLaVA's order), then the text.  A list-aware template reads a string as well.
* `Llava15ChatHandler` (the hard-wired LLaVA-1.5 `USER:/ASSISTANT:` prompt) stays for a model without a chat
  template, and for an older binding without `MTMDChatHandler`.

The projector is opened at start (`open_projector`), so a missing, corrupt or mismatched file (its projection
width must equal the model's embedding width) is a clear start-up error rather than a failure on the first
image.  Tested against the bundled SmolLM2 GGUF with a tiny random-weight InternVL projector built by the tests
(tests/tinyvision.py), which exercises the real `libmtmd` InternVL path; no InternVL weights exist here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .base import EngineError

try:  # imported only by LlamaCppEngine._load, with llama_cpp itself
    from llama_cpp.llama_chat_format import MTMDChatHandler as _MTMDBase
except ImportError:  # pragma: no cover - an older binding: LLaVA-1.5 prompts only
    _MTMDBase = None  # type: ignore[assignment,misc]


def flatten_content(content: Any, media_marker: str) -> Any:
    """OpenAI-style content parts → one string: a media marker per image (first), then the text parts."""
    if not isinstance(content, list):
        return content
    markers = [media_marker for part in content if isinstance(part, dict) and part.get("type") == "image_url"]
    texts = [str(part.get("text", "")) for part in content if isinstance(part, dict) and part.get("type") == "text"]
    return "\n".join([*markers, *(t for t in texts if t)])


if _MTMDBase is not None:

    class TemplateVisionHandler(_MTMDBase):  # type: ignore[misc,valid-type]
        """llama-cpp-python's mtmd handler with the model's own chat template, fed string content."""

        @classmethod
        def _convert_message_for_template(cls, message: Any, media_marker: str) -> dict[str, Any]:
            converted = dict(message)
            converted["content"] = flatten_content(converted.get("content"), media_marker)
            return converted
else:  # pragma: no cover
    TemplateVisionHandler = None  # type: ignore[assignment,misc]


def open_projector(llm: Any, clip_model_path: Path) -> Any:
    """Attach a vision handler for `clip_model_path` to the loaded `llm` and open the projector now.

    The model's own template when it has one (`TemplateVisionHandler`), else LLaVA-1.5's prompt format."""
    if not clip_model_path.is_file():
        raise EngineError(f"LLAMACPP_CLIP_MODEL_PATH does not point at a file: {clip_model_path}")
    has_template = bool(str((getattr(llm, "metadata", None) or {}).get("tokenizer.chat_template") or ""))
    if TemplateVisionHandler is not None and has_template:
        handler = TemplateVisionHandler(clip_model_path=str(clip_model_path), verbose=False)
    else:
        from llama_cpp.llama_chat_format import Llava15ChatHandler

        handler = Llava15ChatHandler(clip_model_path=str(clip_model_path), verbose=False)
    try:
        handler._init_mtmd_context(llm)  # both handlers open the projector lazily; do it at start instead
    except (ValueError, RuntimeError) as exc:
        raise EngineError(
            f"the vision projector {clip_model_path.name} could not be loaded with this model "
            f"(is it the mmproj that belongs to LLAMACPP_MODEL?): {exc}"
        ) from None
    llm.chat_handler = handler
    return handler
