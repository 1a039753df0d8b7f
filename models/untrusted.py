"""Untrusted text made inert before it enters a prompt.

Everything the bot did not write itself — users' messages and names, file contents, tool and sandbox output,
search results, history — may contain the model's control tokens as plain characters (`<|im_end|>` typed
into Discord, printed by model-written code, stored in an arXiv abstract).  A tokenizer that parses special
tokens in the prompt string (llama.cpp with `special=True`, lmdeploy, a server applying its chat template)
would turn them into real tokens: a forged system turn, a forged tool result.

`inert()` breaks each such token by putting a WORD JOINER (U+2060, invisible, no meaning to the model)
after its first character, so no tokenizer can match it as a special token while the model still reads
what was written.  It is the one place that decides what counts as a control token; callers pass the
configured model's own special tokens (`Engine.special_tokens`) as `extra`.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from functools import lru_cache

JOINER = "\u2060"

# InternLM2 / InternLM2.5 / InternLM3 (ChatML + the tool protocol), XComposer's InternLM-XComposer tokens,
# and the common ChatML / Llama / reasoning markers other supported models use.
CONTROL_TOKENS: tuple[str, ...] = (
    "<|im_start|>",
    "<|im_end|>",
    "<|action_start|>",
    "<|action_end|>",
    "<|plugin|>",
    "<|interpreter|>",
    "[UNUSED_TOKEN_145]",
    "[UNUSED_TOKEN_146]",
    "[UNUSED_TOKEN_141]",
    "[UNUSED_TOKEN_142]",
    "[UNUSED_TOKEN_143]",
    "[UNUSED_TOKEN_144]",
    "<s>",
    "</s>",
    "<|endoftext|>",
    "<|eot_id|>",
    "<|begin_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<think>",
    "</think>",
)

# Shapes no model uses for ordinary text: `<|anything|>` and `[UNUSED_TOKEN_n]`.
_SHAPES = r"<\|[^\s<>|]{0,40}\|>|\[UNUSED_TOKEN_\d+\]"


@lru_cache(maxsize=16)
def _pattern(extra: frozenset[str]) -> re.Pattern[str]:
    literals = sorted({t for t in (*CONTROL_TOKENS, *extra) if len(t) > 1}, key=len, reverse=True)
    return re.compile("|".join([_SHAPES, *(re.escape(t) for t in literals)]))


def _break(match: re.Match[str]) -> str:
    token = match.group(0)
    return token[0] + JOINER + token[1:]


def inert(text: str, extra: Collection[str] = ()) -> str:
    """`text` with every control token broken so that no tokenizer reads it as one.

    Idempotent, and a no-op on text without control tokens (the common case costs one regex search).
    """
    if not text:
        return text
    pattern = _pattern(frozenset(extra))
    if pattern.search(text) is None:
        return text
    return pattern.sub(_break, text)


def fence_for(text: str) -> str:
    """A backtick fence longer than any run inside `text`, so quoted file or note text cannot close its own block
    (and what follows it in the prompt cannot pass for the file's content)."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)
