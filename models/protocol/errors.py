"""The protocol's errors, and the one rule every Redis retry loop follows (`reraise_if_cancelling`)."""

from __future__ import annotations

import asyncio


class ProtocolError(ValueError):
    """A job or event that does not follow the protocol.  Its message is safe to show a user."""


class PayloadTooLarge(ProtocolError):
    """The job envelope is over `MAX_JOB_BYTES`."""


def reraise_if_cancelling() -> None:
    """Re-raise a cancellation that a library turned into another exception (redis-py can report a cancel
    that lands mid-command as a connection error): a retry loop that swallowed it would never end, and
    whoever cancelled it (shutdown, the event loop closing) would wait forever."""
    task = asyncio.current_task()
    cancelling = getattr(task, "cancelling", None)  # Python 3.11+
    if cancelling is not None and cancelling():
        raise asyncio.CancelledError
