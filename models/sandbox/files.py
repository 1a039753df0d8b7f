"""Files given to a sandbox run (a user's attachment for `/agent`): their names made safe, their sizes checked.

Why names are rewritten and not just checked: a name comes from a user (a Discord attachment's file name),
and it becomes a path inside the sandbox and a word in the model's prompt.  `safe_name` keeps only the last
path component, only letters, digits, `.`, `-` and `_` (so `../../etc/passwd` is `passwd` and a control token
such as `<|im_end|>` loses the `<|`/`|>` that make it one), no leading dot, and a bounded length with the
extension kept.  The child side (child/runner.py) checks the names again before it writes anything.

Sizes: each file at most SANDBOX_MAX_FILE_MB, all of them at most half of SANDBOX_DISK_MB (the tmpfs the
files are written into), so the code still has room to write its own files and figures.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from pathlib import PurePosixPath
from typing import Any

MAX_NAME_CHARS = 80
MAX_FILES = 16
FALLBACK = "file.txt"
_UNSAFE = re.compile(r"[^\w.\-]+")


class FilesRefused(ValueError):
    """The files cannot be given to a run (too many or too large); the message says so in plain words."""


def safe_name(name: str) -> str:
    """`name` as a plain file name in the working directory (see the module docstring)."""
    text = unicodedata.normalize("NFKC", str(name)).replace("\\", "/")
    base = PurePosixPath(text).name if text.strip("/") else ""
    base = _UNSAFE.sub("_", "".join(c for c in base if unicodedata.category(c)[0] != "C"))
    base = re.sub(r"_{2,}", "_", base).lstrip("._-")
    if not base or base in (".", ".."):
        return FALLBACK
    if len(base) > MAX_NAME_CHARS:
        _stem, dot, ext = base.rpartition(".")
        ext = ext if dot and 0 < len(ext) <= 10 else ""
        base = base[: MAX_NAME_CHARS - len(ext) - 1].rstrip("._-") + ("." + ext if ext else "")
    return base


def unique_names(names: list[str]) -> list[str]:
    """Safe names, with `-2`, `-3` … before the extension where two would be the same."""
    seen: set[str] = set()
    out = []
    for name in names:
        safe = safe_name(name)
        stem, dot, ext = safe.rpartition(".") if "." in safe else (safe, "", "")
        candidate, n = safe, 1
        while candidate.lower() in seen:
            n += 1
            candidate = f"{stem}-{n}{dot}{ext}"
        seen.add(candidate.lower())
        out.append(candidate)
    return out


def check_files(files: Mapping[str, bytes], limits: Any) -> list[tuple[str, bytes]]:
    """`(safe name, bytes)` for each file, or `FilesRefused` when they do not fit the run's limits."""
    if len(files) > MAX_FILES:
        raise FilesRefused(f"{len(files)} files is more than the {MAX_FILES} a run takes")
    per_file = limits.max_file_mb * 1024 * 1024
    budget = limits.disk_mb * 1024 * 1024 // 2
    names = unique_names(list(files))
    total = 0
    for name, data in zip(names, files.values(), strict=True):
        if len(data) > per_file:
            raise FilesRefused(
                f"“{name}” is {len(data) / 1e6:.1f} MB; a file in the sandbox may be at most "
                f"{limits.max_file_mb} MB (SANDBOX_MAX_FILE_MB)"
            )
        total += len(data)
    if total > budget:
        raise FilesRefused(
            f"the files are {total / 1e6:.1f} MB together; the sandbox takes at most "
            f"{budget / 1e6:.1f} MB of them (half of SANDBOX_DISK_MB)"
        )
    return list(zip(names, files.values(), strict=True))
