"""What a sandbox run produced, and the text made of it for the model and for people."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# Terminal control sequences (CSI `ESC [ ... final`, OSC `ESC ] ... BEL|ST`, DCS/SOS/PM/APC strings, two-byte
# `ESC x`), then single control characters: C0 except tab and newline, DEL, C1, and the Unicode bidi
# overrides/isolates that can make text display in another order than it reads.
_ESCAPES = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"
    r"|\x1b[\]PX^_][^\x07\x1b]*(?:\x07|\x1b\\)?"
    r"|\x9b[0-?]*[ -/]*[@-~]"
    r"|\x1b[ -~]?"
)
_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def strip_controls(text: str) -> str:
    """`text` without terminal control sequences, NUL and other control characters (tabs, newlines kept)."""
    text = text.replace("\r\n", "\n")
    return _CONTROLS.sub("", _ESCAPES.sub("", text))


@dataclass
class Figure:
    name: str
    data: bytes
    mime: str = "image/png"


@dataclass
class RunResult:
    """What a run produced, and why it ended."""

    stdout: str = ""
    stderr: str = ""
    exit_code: int = 0
    timed_out: bool = False
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # limits hit, output cut, figures dropped
    duration: float = 0.0
    isolation: str = ""
    setup_error: str = ""  # bubblewrap's own message when the sandbox could not start (for the worker log)

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out

    def _parts(self) -> list[str]:
        parts = [p.rstrip() for p in (self.stdout, self.stderr) if p.strip()]
        if self.figures:
            parts.append(f"[{len(self.figures)} figure(s) produced: {', '.join(f.name for f in self.figures)}]")
        parts += [f"[{note}]" for note in self.notes]
        return parts

    def for_model(self) -> str:
        """The text the model reads as the tool's result (IPython-like: output, then the error, then notes).

        Control sequences and NUL bytes are removed here too: they mean nothing to the model and would travel
        on into the transcript people see."""
        parts = self._parts()
        return strip_controls("\n".join(parts)) if parts else "[the code ran without printing anything]"

    def for_display(self, limit: int | None = None) -> str:
        """The same text, safe to show people (Discord, a terminal): no escape sequences, NUL or other control
        characters, no bidi overrides; optionally cut to `limit` characters."""
        text = strip_controls(self.for_model())
        if limit is not None and len(text) > limit:
            text = text[: max(0, limit - 1)] + "…"
        return text
