"""Model-written Python, run in bubblewrap (see core.py for the barriers and docs/agent.md for the table).

The public interface: `Sandbox(limits).isolation` names the isolation in force or raises `SandboxUnavailable`
(with a reason a user can read) where there is none — there is no weaker fallback; `Sandbox.run(code)`
returns a `RunResult` (`.ok`, `.figures`, `.for_model()`, `.for_display()`); `Sandbox.run(code, files={name:
bytes})` first writes those files into the run's working directory under `safe_name`s (files.py).
"""

from .core import ISOLATION_MODES, PROJECT_ROOT, Sandbox, SandboxLimits, SandboxUnavailable, describe_isolation
from .files import FilesRefused, check_files, safe_name, unique_names
from .result import Figure, RunResult, strip_controls

__all__ = [
    "ISOLATION_MODES",
    "PROJECT_ROOT",
    "Figure",
    "FilesRefused",
    "RunResult",
    "Sandbox",
    "SandboxLimits",
    "SandboxUnavailable",
    "check_files",
    "describe_isolation",
    "safe_name",
    "strip_controls",
    "unique_names",
]
