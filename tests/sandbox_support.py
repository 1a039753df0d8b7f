"""What the sandbox tests share: the configurations they run in, and whether this machine can run them.

A machine without bubblewrap (or whose kernel refuses its namespaces) has no sandbox: the tests skip there,
unless SANDBOX_TESTS_REQUIRE=1 (set by .ci/run, which installs bubblewrap), where they fail instead — so CI
cannot pass by skipping the security tests.
"""

from __future__ import annotations

import os
import sys

import pytest

from models.sandbox import Sandbox, SandboxLimits, SandboxUnavailable

# The interpreters a worker may run the code with: its own (here a pyenv venv under a 0700 /root, which a root
# worker stages for bubblewrap through a private mount namespace) and the system one (reachable by nobody as
# it is).  Both are the one shipped mode, bubblewrap.
PYTHONS = {"worker-python": sys.executable, "system-python": "/usr/bin/python3"}


def sandbox_or_skip(limits: SandboxLimits, python: str | None = None) -> Sandbox:
    """A sandbox whose isolation has been resolved, or a skip (a failure under SANDBOX_TESTS_REQUIRE=1)."""
    sandbox = Sandbox(limits, python)
    try:
        assert sandbox.isolation == "bubblewrap"
    except SandboxUnavailable as exc:
        if os.environ.get("SANDBOX_TESTS_REQUIRE") == "1":
            pytest.fail(f"SANDBOX_TESTS_REQUIRE=1 but the sandbox is unavailable: {exc}")
        pytest.skip(f"no sandbox on this machine: {exc}")
    return sandbox
