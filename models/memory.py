"""Keep the garbage collector off the reply path: freeze what a process loaded at startup.

Why: a bot process holds ~100,000 long-lived objects once discord.py, redis-py, the cogs and the settings are
imported and built (modules, functions, classes, caches).  None of them will ever be garbage, yet every
full (generation-2) collection walks them all: on the 2-core development machine one full collection took
100–140 ms, in the middle of a burst of replies, so whichever replies were in flight waited for it.  With the
freeze the longest pause in P1 at 32 channels fell to 26–39 ms; p99 alone moved within the noise (228/221 →
192/234 ms, docs/performance.md, "What changed").  `gc.freeze()` moves every object alive
now into a permanent generation the collector never scans; objects made later (replies, messages, jobs) are
collected as before, and a full collection only walks those.

Called once per process after startup (`InternLMBot.setup_hook`; `models.worker.serve` for a worker process,
not measured separately); a `gc.collect()` first, so garbage made while starting is freed rather than frozen.
Later calls are no-ops: freezing again would also pin whatever the running process holds then (in a test
process, earlier tests' objects).
"""

from __future__ import annotations

import gc

_frozen = False


def freeze_startup_objects() -> bool:
    """Collect once, then freeze every object alive now (first call per process only); True if it froze."""
    global _frozen
    if _frozen:
        return False
    _frozen = True
    gc.collect()
    gc.freeze()
    return True
