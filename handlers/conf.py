"""Compatibility: this module is now `handlers.overrides` (per-guild and per-channel admin overrides).

Kept only so tests and scripts that still import `handlers.conf` keep working while other work on them is
open; import `handlers.overrides` in new code.  Nothing in bot/, handlers/ or models/ may import it
(tests/test_architecture.py); delete it once tests/ and scripts/ no longer do.
"""

from __future__ import annotations

from .overrides import FIELDS, ConfError, ConfStore, Effective, validate

__all__ = ["FIELDS", "ConfError", "ConfStore", "Effective", "validate"]
