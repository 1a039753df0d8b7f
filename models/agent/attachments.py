"""The files a user attached to an `/agent` task: fetched from their blobs, checked, and told to the model.

Payload (built by `handlers.agent`): `"files": [{"name": str, "blob": ref}]` — the bot has already refused
what `handlers/text_files.py` refuses (unknown types, binaries, bad encodings, over TEXT_FILE_MAX_BYTES) and
stored each file as UTF-8 text.  Why the worker checks again: a job is data from the bus, and these bytes go
into the sandbox, so the worker holds them to TEXT_FILES_PER_MESSAGE, TEXT_FILE_MAX_BYTES and the sandbox's
own limits (models/sandbox/files.py) and renames them with `safe_name` before anything runs.

The model is told each file's name and that it is in the working directory of every Python run (the same
words for InternLM2's protocol and for function calling: both read the task message), with its first lines so
it can write code that fits (a CSV's columns).  Where Python is off, the file's text goes into the message
instead, within TEXT_FILE_MAX_CHARS, so the agent can still read it.  All of it is made inert by the caller.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..context import JobContext, JobError
from ..sandbox import FilesRefused, SandboxLimits, check_files, unique_names
from ..untrusted import fence_for

PREVIEW_LINES = 5
PREVIEW_LINE_CHARS = 200


async def load_files(ctx: JobContext) -> dict[str, bytes]:
    """Safe name → bytes for the task's attached files (empty without any); `JobError` when they are gone or
    do not fit."""
    entries = ctx.job.payload.get("files")
    if not isinstance(entries, list) or not entries:
        return {}
    settings = ctx.settings
    entries = [e for e in entries if isinstance(e, dict)]
    if len(entries) > settings.text_files_per_message:
        raise JobError(f"That's {len(entries)} files; the agent takes up to {settings.text_files_per_message}.")
    files: dict[str, bytes] = {}
    for name, entry in zip(unique_names([str(e.get("name") or "") for e in entries]), entries, strict=True):
        blob = await ctx.bus.get_blob(str(entry.get("blob") or ""))
        if blob is None:
            raise JobError(f"The attached file “{name}” is no longer stored; please attach it again.")
        if len(blob[0]) > settings.text_file_max_bytes:
            raise JobError(
                f"“{name}” is {len(blob[0]) / 1000:.0f} KB; the limit for a text file is "
                f"{settings.text_file_max_bytes / 1000:.0f} KB."
            )
        files[name] = blob[0]
    try:
        check_files(files, SandboxLimits.from_settings(settings))
    except FilesRefused as exc:
        raise JobError(f"Sorry, {exc}.") from None
    return files


def files_note(files: Mapping[str, bytes], *, python: bool, budget: int) -> str:
    """What the task message says about the files ('' without any)."""
    if not files:
        return ""
    parts = []
    if python:
        parts.append(
            "The user attached these files; each is in the current working directory of every Python run "
            "(a fresh copy each time), so open it by its name, e.g. "
            f"open({next(iter(files))!r}).  Files your code writes are not kept between runs."
        )
    else:
        parts.append("The user attached these files (Python is off, so their text is given here):")
    for name, data in files.items():
        text = data.decode("utf-8", "replace")
        lines = text.splitlines()
        if python:
            shown = "\n".join(line[:PREVIEW_LINE_CHARS] for line in lines[:PREVIEW_LINES])
            more = f"\n… ({len(lines) - PREVIEW_LINES} more lines)" if len(lines) > PREVIEW_LINES else ""
            head = f"File: {name} ({len(text):,} characters, {len(lines):,} lines); its first lines:"
        else:
            shown = text[: max(0, budget)]
            budget -= len(shown)
            cut = len(text) - len(shown)
            more = f"\n[cut here: {cut:,} more characters not shown]" if cut else ""
            head = f"File: {name}"
        fence = fence_for(shown)
        parts.append(f"{head}\n{fence}\n{shown}\n{fence}{more}")
    return "\n\n".join(parts)


def with_files(messages: list[dict[str, Any]], note: str) -> list[dict[str, Any]]:
    """The turns with `note` (already inert) appended to the task, the last user turn."""
    if not note or not messages:
        return messages
    last = dict(messages[-1], content=f"{messages[-1]['content']}\n\n{note}")
    return [*messages[:-1], last]
