"""Real worker subprocesses (`python -m models.worker`) for the fault and concurrency tests."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import ROOT, subprocess_env

from models.protocol import Bus
from models.settings import Settings


class WorkerProc:
    """One worker process; its log goes to a file so a failing test can show it."""

    def __init__(self, settings: Settings, log_dir: Path, name: str, **env: str) -> None:
        self.log_path = log_dir / f"worker-{name}.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "models.worker"],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=subprocess_env(settings, **{"LOG_LEVEL": "INFO", **env}),
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-4000:]

    def kill(self) -> None:
        """kill -9: no shutdown code runs, nothing is handed back."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def terminate(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    async def wait_exit(self, limit_s: float) -> int:
        deadline = time.monotonic() + limit_s
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"worker {self.pid} did not exit in {limit_s}s:\n{self.log()}")
            await asyncio.sleep(0.05)
        return self.proc.returncode

    def close(self) -> None:
        self.kill()
        self._log.close()


def pid_of(worker_id: str) -> int:
    """Worker ids are `host-pid-random` (the host may contain dashes)."""
    return int(worker_id.rsplit("-", 2)[1])


async def wait_alive(bus: Bus, procs: list[WorkerProc], limit_s: float = 30.0) -> None:
    """Until every process has registered its heartbeat (its engine is loaded and it claims jobs)."""
    want = {p.pid for p in procs}
    deadline = time.monotonic() + limit_s
    while True:
        alive = {pid_of(w.worker_id) for w in await bus.alive_workers()}
        if want <= alive:
            return
        for p in procs:
            if p.proc.poll() is not None:
                raise AssertionError(f"worker {p.pid} exited early:\n{p.log()}")
        if time.monotonic() > deadline:
            raise AssertionError("workers did not register:\n" + "\n".join(p.log() for p in procs))
        await asyncio.sleep(0.05)


def repeat_text(n: int) -> str:
    """What TestEngine answers to `[[repeat:N]]`."""
    return "".join(f"w{i} " for i in range(n))
