"""Split a long answer into Discord-sized messages without breaking its Markdown.

Pure functions, no Discord types.  Discord refuses messages over 2000 characters, so an answer is cut
into parts, preferring (in order) a paragraph break outside code, a line break outside code, any line
break, a space, and only then a hard cut.  A fenced code block that a cut goes through is closed at the
end of one part and reopened with the same fence and language tag at the start of the next, so every
part renders on its own.  The parts' bodies concatenate to exactly the original text: the only
characters added are the fences in `Part.prefix` / `Part.suffix`.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from dataclasses import dataclass

DISCORD_LIMIT = 2000

_FENCE = re.compile(r"^[ \t]{0,3}(`{3,}|~{3,})[ \t]*([^\s`]*)")
_MAX_LANG = 32


@dataclass(frozen=True)
class Fence:
    """An open fenced code block: its marker (``` or ~~~, maybe longer) and language tag."""

    marker: str
    lang: str = ""

    @property
    def opener(self) -> str:
        return f"{self.marker}{self.lang}\n"


@dataclass(frozen=True)
class Part:
    """One message: `prefix + body + suffix`; `body` is a slice of the original text."""

    body: str
    prefix: str = ""  # a reopened fence
    suffix: str = ""  # a closing fence

    def render(self) -> str:
        return self.prefix + self.body + self.suffix


def _advance(state: Fence | None, line: str) -> Fence | None:
    """The fence state after `line` (CommonMark-ish: a closer is the same fence char, at least as long)."""
    match = _FENCE.match(line)
    if not match:
        return state
    marker, lang = match.group(1), match.group(2)
    if state is None:
        return Fence(marker, lang[:_MAX_LANG])
    if marker[0] == state.marker[0] and len(marker) >= len(state.marker) and not line.strip()[len(marker) :]:
        return None
    return state


def _closer(state: Fence, body: str) -> str:
    return ("" if body.endswith("\n") else "\n") + state.marker


def split_parts(text: str, limit: int = DISCORD_LIMIT) -> list[Part]:
    """Cut `text` into parts whose rendering is at most `limit` characters (see the module docstring)."""
    if len(text) <= limit:
        return [Part(text)]
    # Fence state at the start of every line (and at the end).
    starts: list[int] = []
    states: list[Fence | None] = []
    blank: list[bool] = []  # line before this boundary is blank (a paragraph break)
    state: Fence | None = None
    pos = 0
    prev_blank = False
    max_marker = 3
    for line in text.splitlines(keepends=True):
        starts.append(pos)
        states.append(state)
        blank.append(prev_blank)
        state = _advance(state, line)
        if state is not None:
            max_marker = max(max_marker, len(state.marker))
        prev_blank = not line.strip()
        pos += len(line)
    starts.append(len(text))
    states.append(state)
    blank.append(prev_blank)

    def state_at(offset: int) -> Fence | None:
        return states[bisect_right(starts, offset) - 1]  # the state at the start of the line holding offset

    parts: list[Part] = []
    start = 0
    suffix_reserve = 1 + max_marker
    while True:
        opened = state_at(start)
        prefix = opened.opener if opened else ""
        if len(prefix) + len(text) - start <= limit:
            parts.append(Part(text[start:], prefix, ""))
            return parts
        avail = max(1, limit - len(prefix) - suffix_reserve)
        end = start + avail
        cut = _choose_cut(text, start, end, starts, states, blank)
        closing = state_at(cut)
        body = text[start:cut]
        parts.append(Part(body, prefix, _closer(closing, body) if closing else ""))
        start = cut


def _choose_cut(
    text: str, start: int, end: int, starts: list[int], states: list[Fence | None], blank: list[bool]
) -> int:
    """The best cut offset in (start, end]."""
    half = start + (end - start) // 2
    best: dict[int, int] = {}  # category → offset; lower category is better
    last_line = 0
    for index in range(bisect_right(starts, start), bisect_right(starts, end)):
        offset = starts[index]
        last_line = offset
        if offset < half:
            continue
        if states[index] is None and blank[index]:
            best[0] = offset
        elif states[index] is None:
            best[1] = offset
        else:
            best[2] = offset
    if best:
        return best[min(best)]
    if last_line:
        return last_line
    # No line break in reach: cut the line at a space (keeping the space with the first part).
    space = text.rfind(" ", half, end)
    return space + 1 if space >= start and space + 1 > start else end


def split_message(text: str, limit: int = DISCORD_LIMIT) -> list[str]:
    """The parts to send, as strings; whitespace-only parts (which Discord refuses) are left out."""
    return [rendered for rendered in (p.render() for p in split_parts(text, limit)) if rendered.strip()]
