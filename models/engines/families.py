"""Which family a model belongs to, from its `config.json` or, failing that, its name.

Two decisions hang on it, and both must be made before any weights load:

* the lmdeploy engine refuses a combination that cannot work (InternLM-XComposer on lmdeploy ≥ 0.15, which
  removed it — InternLM/lmdeploy#4693, "chore: remove xcomposer support", first released in v0.15.0);
* `/article` picks its prompts: XComposer was trained on its composition demo's own prompts (`<Seg0>` …),
  every other model (InternVL, Intern-S1, a chat model writing a text-only article) gets the same steps as
  plain chat instructions (models/jobs/article.py).

A local model directory is judged by `architectures` in its `config.json` (what lmdeploy's own
`archs.get_model_arch` reads first, and what its vision-model registry matches on: `InternLMXComposer2ForCausalLM`,
`InternVLChatModel`, `InternVLForConditionalGeneration`, `InternS1ForConditionalGeneration`).  A hub id or a
served model name (`ENGINE=openai`) has no config here, so its name decides; a name that says nothing gives
`OTHER`, which is treated like a chat model.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path

XCOMPOSER = "xcomposer"
INTERNVL = "internvl"
INTERN_S1 = "intern-s1"
INTERNLM = "internlm"
OTHER = "other"

# `architectures[0]` of each family's config.json, as lmdeploy's registries match them.
ARCHITECTURES = {
    "InternLMXComposer2ForCausalLM": XCOMPOSER,  # internlm-xcomposer2(-4khd)-7b, internlm-xcomposer2d5-7b
    "InternVLChatModel": INTERNVL,  # OpenGVLab/InternVL2.5-*, InternVL3-*, InternVL3_5-* (remote code)
    "InternVLForConditionalGeneration": INTERNVL,  # the transformers-native *-HF releases
    "InternS1ForConditionalGeneration": INTERN_S1,  # internlm/Intern-S1, Intern-S1-mini
    "InternS1_1_ForConditionalGeneration": INTERN_S1,  # lmdeploy 0.18's vl/model/interns1_pro.py
    "InternS1ProForConditionalGeneration": INTERN_S1,  # internlm/Intern-S1-Pro
    "InternLM2ForCausalLM": INTERNLM,
    "InternLM3ForCausalLM": INTERNLM,
}
_NAMES = [  # checked in order: "internlm-xcomposer" must not read as InternLM
    (re.compile(r"x[-_]?composer", re.I), XCOMPOSER),
    (re.compile(r"intern[-_]?vl", re.I), INTERNVL),
    (re.compile(r"intern[-_]?s1", re.I), INTERN_S1),
    (re.compile(r"internlm", re.I), INTERNLM),
]


def architecture(model: str) -> str:
    """`architectures[0]` of a local model directory's config.json, or "" (a hub id, no config, bad JSON)."""
    try:
        config = json.loads((Path(model).expanduser() / "config.json").read_text("utf-8"))
    except (OSError, ValueError):
        return ""
    archs = config.get("architectures") if isinstance(config, dict) else None
    return str(archs[0]) if isinstance(archs, list) and archs else ""


@functools.lru_cache(maxsize=64)
def model_family(model: str) -> str:
    """The family of a model path, hub id or served model name (one of the constants above).  Cached: it is
    asked per request, and a model's config does not change under a running worker."""
    if not model:
        return OTHER
    arch = architecture(model)
    if arch in ARCHITECTURES:
        return ARCHITECTURES[arch]
    for pattern, family in _NAMES:
        if pattern.search(model):
            return family
    return OTHER
