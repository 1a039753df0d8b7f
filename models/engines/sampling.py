"""The loaded model's own sampling defaults — what a job gets for every value nobody set.

Why the worker owns them: only the engine knows which model it loaded (the default `LLAMACPP_MODEL` is
InternLM2.5-1.8B when the hub is reachable, SmolLM2-135M offline, decided at start), so the bot's job payload
carries only what a user or admin explicitly set (`/settings`, or `TEMPERATURE`… in the environment), and the
worker fills the rest (`JobContext.params`): payload ← the worker's explicit settings ← these defaults ← the
InternLM demo's values (`GenParams`' own).

Where the defaults come from, first match wins:

* the GGUF's own `general.sampling.*` metadata (llama.cpp's `LLAMA_MODEL_META_KEY_SAMPLING_*`: `temp`, `top_p`,
  `penalty_repeat`), which a converter writes from the model's generation config;
* for lmdeploy, a local model directory's `generation_config.json` (what transformers and lmdeploy read);
* the model's family: InternLM's own chat demo (InternLM/InternLM `chat/web_demo.py` `GenerationConfig`:
  temperature 0.8, top_p 0.8, repetition_penalty 1.005; InternLM2.5's generation_config.json sets no sampling);
  the bundled SmolLM2-135M loops and rambles with those, so it gets temperature 0.3 and repetition penalty 1.2
  (tried side by side in the console).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

SAMPLING_FIELDS = ("temperature", "top_p", "max_new_tokens", "repetition_penalty")
INTERNLM_DEMO = {"temperature": 0.8, "top_p": 0.8, "repetition_penalty": 1.005}
BUNDLED_SMOLLM2 = {"temperature": 0.3, "repetition_penalty": 1.2}
GGUF_KEYS = {
    "general.sampling.temp": "temperature",
    "general.sampling.top_p": "top_p",
    "general.sampling.penalty_repeat": "repetition_penalty",
}
_INTERNLM_ARCHITECTURES = ("internlm2", "internlm3")


def generation_config_defaults(model: str) -> dict[str, float]:
    """The sampling values in a local model directory's `generation_config.json`; {} for a hub id or no file."""
    try:
        config = json.loads((Path(model).expanduser() / "generation_config.json").read_text("utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(config, dict) or config.get("do_sample") is False:
        return {}  # greedy by design: its temperature/top_p are not meant to apply
    return {
        key: float(value)
        for key in ("temperature", "top_p", "repetition_penalty")
        if isinstance(value := config.get(key), int | float) and not isinstance(value, bool)
    }


def gguf_defaults(metadata: Mapping[str, str], *, bundled: bool = False) -> dict[str, float]:
    """A GGUF's sampling defaults from its metadata (llama-cpp-python's `Llama.metadata`: every value a string)."""
    found: dict[str, float] = {}
    for key, name in GGUF_KEYS.items():
        try:
            found[name] = float(metadata[key])
        except (KeyError, TypeError, ValueError):
            continue
    arch = str(metadata.get("general.architecture", "")).lower()
    family = BUNDLED_SMOLLM2 if bundled else INTERNLM_DEMO if arch in _INTERNLM_ARCHITECTURES else {}
    return {**family, **found}
