"""Programs that run inside the sandbox (started by path, never imported by the worker)."""
