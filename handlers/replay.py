"""What Regenerate re-sends besides the conversation: the job payload a user's turn was asked with.

An `/agent` task's files travel as blob references (handlers/agent.py), not in the turn's text, so the user's
turn keeps that payload in its `meta` and `ChatHandler.regenerate` sends it again.  Blobs expire (BLOB_TTL):
a file gone since is left out, so the task runs again without it and the person is told, rather than the job
failing on a missing blob; one still stored gets a fresh TTL, as it is in use again.
"""

from __future__ import annotations

from typing import Any

from models.protocol import Bus

EXPIRED = (
    "{what} no longer stored (files are kept for a limited time), so this run is without it; attach it "
    "again with a new /agent to use it."
)


def expired_note(names: list[str]) -> str:
    """The friendly line for files left out ('' when none)."""
    if not names:
        return ""
    shown = ", ".join(f"“{name[:80]}”" for name in names)
    what = f"The attached file {shown} is" if len(names) == 1 else f"The attached files {shown} are"
    return EXPIRED.format(what=what)


async def still_stored(bus: Bus, payload: Any) -> tuple[dict[str, Any], list[str]]:
    """`payload` (a turn's stored job payload, {} when none) with its expired files left out, and their names."""
    if not isinstance(payload, dict):
        return {}, []
    files = payload.get("files")
    if not isinstance(files, list):
        return dict(payload), []
    kept: list[dict[str, Any]] = []
    gone: list[str] = []
    for entry in files:
        if isinstance(entry, dict) and await bus.touch_blob(str(entry.get("blob") or "")):
            kept.append(entry)
        else:
            gone.append(str(entry.get("name") if isinstance(entry, dict) else "") or "file")
    out = {key: value for key, value in payload.items() if key != "files"}
    return ({**out, "files": kept} if kept else out), gone
