"""Run model-written Python in bubblewrap: the worker side (limits, one run, its result).

Lagent's own interpreters `exec()` the model's code inside the worker.  Here every run is a fresh process tree
inside bubblewrap (bwrap.py builds the command line) with:

* new user, PID, network, IPC, UTS and cgroup namespaces (`--unshare-all`): no network but a loopback of its
  own, no other process visible or signallable, SysV IPC private and gone with the run;
* a filesystem built from nothing: only /usr, the interpreter and venv (read-only), the run's code and its
  working directory — a tmpfs capped at SANDBOX_DISK_MB bytes and SANDBOX_MAX_FILES inodes;
* an empty environment, no inherited descriptors but the three output files, no capabilities, and a host uid
  that is never 0 (a root worker starts bubblewrap as nobody through nobody.py);
* a seccomp filter (seccomp.py) refusing memfd_create, SysV shared memory and message queues, new namespaces
  and other interfaces the code never needs, so `RLIMIT_AS` × `RLIMIT_NPROC` (+ the tmpfs) bounds its memory;
* rlimits on CPU, address space, processes, file size and open files (child/runner.py sets them);
* a wall-clock timeout after which the sandbox's PID 1 is killed: the kernel then kills every process of the
  PID namespace, `setsid()` or not, and bubblewrap exits only once they are gone (`--die-with-parent` does
  the same if the worker dies).

There is no weaker mode to fall back to: where bubblewrap cannot run, `Sandbox.isolation` raises
`SandboxUnavailable` and the agent turns its Python tool off.

Why one module past 400 lines: the limits, the run and the parsing of its untrusted result are one security
boundary, reviewed together; the command line (bwrap.py), the filter (seccomp.py), file names (files.py) and
the child's programs (child/) already live apart.
"""

from __future__ import annotations

import json
import logging
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import bwrap, seccomp
from .files import check_files
from .result import Figure, RunResult, strip_controls

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parent.parent.parent
ISOLATION_MODES = ("bubblewrap", "off")
MAX_FIGURES = 4
MAX_FIGURE_BYTES = 8 * 1024 * 1024
SCAN_LIMIT = 1000  # directory entries the figure scan looks at, at most
SCAN_SECONDS = 1.0
EXIT_SETUP_FAILED = 120  # child/mount_work.py could not set the sandbox up
KILL_GRACE = 5.0  # seconds bubblewrap gets to exit once its PID 1 is killed


@dataclass
class SandboxLimits:
    """What one run may use.  Defaults match `.env.example`."""

    timeout: float = 10.0
    memory_mb: int = 512  # RLIMIT_AS of the code's one process; its memory ≤ memory_mb + disk_mb
    cpu_seconds: int = 10
    max_processes: int = 32  # RLIMIT_NPROC: threads (the seccomp filter allows no second process)
    max_file_mb: int = 16
    max_open_files: int = 64
    max_output_chars: int = 4000
    disk_mb: int = 64  # the whole working directory (tmpfs size)
    max_files: int = 4096  # inodes of the working directory (tmpfs nr_inodes)
    allowed_modules: list[str] = field(
        default_factory=lambda: ["numpy", "sympy", "mpmath", "matplotlib", "pandas", "scipy", "PIL"]
    )
    isolation: str = "bubblewrap"  # "bubblewrap" | "off"
    bwrap: str = "bwrap"  # the bubblewrap executable (a name on PATH or a path)
    hide_paths: list[str] = field(default_factory=list)  # must never be visible (besides the project, $HOME)

    @classmethod
    def from_settings(cls, settings: Any) -> SandboxLimits:
        return cls(
            timeout=settings.sandbox_timeout,
            memory_mb=settings.sandbox_memory_mb,
            cpu_seconds=settings.sandbox_cpu_seconds,
            max_processes=settings.sandbox_max_processes,
            max_file_mb=settings.sandbox_max_file_mb,
            max_open_files=settings.sandbox_max_open_files,
            max_output_chars=settings.sandbox_max_output_chars,
            disk_mb=settings.sandbox_disk_mb,
            max_files=settings.sandbox_max_files,
            allowed_modules=list(settings.sandbox_allowed_modules),
            isolation=settings.sandbox_isolation,
            bwrap=settings.sandbox_bwrap,
            hide_paths=[*settings.sandbox_hide_paths, str(settings.data_dir)],
        )


class SandboxUnavailable(RuntimeError):
    """No real isolation can be provided here; the message says why in words a user can read."""


def _truncate(text: str, limit: int) -> tuple[str, bool]:
    if len(text) <= limit:
        return text, False
    head = text[: limit * 3 // 4]
    tail = text[-(limit // 4) :]
    return f"{head}\n… [{len(text) - len(head) - len(tail)} characters cut] …\n{tail}", True


def _read_capped(fd: int, limit_bytes: int) -> bytes:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks, left = [], limit_bytes
    while left > 0:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _output(fd: int, limit_chars: int) -> str:
    data = _read_capped(fd, limit_chars * 4 + 1)
    text = data[: limit_chars * 4].decode("utf-8", "replace")
    return text + ("\n… [more output cut]" if len(data) > limit_chars * 4 else "")


def _figures(fd: int, budget: int, notes: list[str]) -> list[Figure]:
    """Parse what child/runner.py wrote to the figure file (never trusting it: the code could write there)."""
    data = _read_capped(fd, budget + 65536)
    head, sep, body = data.partition(b"\n")
    if not sep:
        return []
    try:
        header = json.loads(head)
        entries, extra = header["figures"], header.get("notes", [])
    except (ValueError, KeyError, TypeError):
        return []
    notes.extend(strip_controls(str(n))[:200] for n in extra[:4] if isinstance(n, str))
    figures, offset = [], 0
    for entry in entries[:MAX_FIGURES]:
        try:
            name, mime, size = os.path.basename(str(entry["name"]))[:100], str(entry["mime"]), int(entry["size"])
        except (KeyError, TypeError, ValueError):
            break
        blob = body[offset : offset + size]
        offset += size
        magic = {"image/png": b"\x89PNG", "image/jpeg": b"\xff\xd8", "image/gif": b"GIF8"}.get(mime)
        if size <= 0 or len(blob) != size or magic is None or not blob.startswith(magic):
            break
        figures.append(Figure(strip_controls(name) or "figure", blob, mime))
    return figures


def _parent_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("PPid:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


RECHECK_S = 60.0  # a host that could not run bubblewrap is probed again after this long (see Sandbox.isolation)


class Sandbox:
    """Runs code snippets; thread-safe (each run has its own directory and process tree)."""

    def __init__(
        self, limits: SandboxLimits | None = None, python: str | None = None, *, announce: bool = True
    ) -> None:
        self.limits = limits or SandboxLimits()
        self.announce = announce  # log the isolation (a worker does; `bot status` prints it instead)
        self.python = python or sys.executable
        self._isolation: str | None = None
        self._unavailable: SandboxUnavailable | None = None
        self._failed_at = 0.0  # monotonic time of the last failed probe
        self._lock = threading.Lock()
        self.as_root = False  # a root worker's fallback where nobody gets no user namespace (see _resolve)

    # ------------------------------------------------------------------ configuration
    @property
    def isolation(self) -> str:
        """The isolation in force ("bubblewrap"); raises SandboxUnavailable where there is none.

        A success is kept for the process.  A failure is kept for RECHECK_S, then probed again: the usual causes
        are fixed on a running host (bubblewrap installed, user namespaces allowed, a container's seccomp
        profile changed), and the Python tool should come back without a worker restart.  A configuration that
        switches it off (SANDBOX_ISOLATION=off) is not a failure of the host and is never re-probed."""
        with self._lock:
            if (
                self._unavailable is not None
                and self.limits.isolation == "bubblewrap"
                and time.monotonic() - self._failed_at >= RECHECK_S
            ):
                self._unavailable = None  # probe again
            if self._isolation is None and self._unavailable is None:
                try:
                    self._isolation = self._resolve()
                    if self.announce:
                        log.info(
                            "sandbox: model-written code runs in bubblewrap (no network, empty filesystem, one "
                            "process of %d MiB, %d MiB disk)",
                            self.limits.memory_mb,
                            self.limits.disk_mb,
                        )
                except SandboxUnavailable as exc:
                    again = self._failed_at > 0
                    self._unavailable, self._failed_at = exc, time.monotonic()
                    if self.announce and not again:
                        log.error("sandbox: UNAVAILABLE — the Python tool is off: %s", exc)
                    elif self.announce:
                        log.warning("sandbox: still unavailable: %s", exc)
            if self._unavailable is not None:
                raise self._unavailable
            assert self._isolation is not None
            return self._isolation

    def bwrap_path(self) -> str | None:
        return shutil.which(self.limits.bwrap)

    def _resolve(self) -> str:
        wanted = self.limits.isolation
        if wanted == "off":
            raise SandboxUnavailable("running Python is switched off on this bot (SANDBOX_ISOLATION=off)")
        if wanted != "bubblewrap":
            raise SandboxUnavailable(f"unknown sandbox isolation {wanted!r} (use bubblewrap or off)")
        if self.bwrap_path() is None:
            raise SandboxUnavailable(
                "bubblewrap is not installed on the worker (Debian/Ubuntu: apt-get install "
                "bubblewrap), so there is no safe place to run code"
            )
        try:
            seccomp.program()
        except seccomp.UnsupportedArchitecture as exc:
            raise SandboxUnavailable(str(exc)) from None
        # A source checkout (where `.env` lives) must stay out of the sandbox; an installed copy of the package
        # (site-packages, as in the Docker images) is public code inside the venv, which is bound anyway.
        checkout = [str(PROJECT_ROOT)] if (PROJECT_ROOT / "pyproject.toml").exists() else []
        try:
            home = [str(Path.home())]
        except (KeyError, RuntimeError):  # no HOME and no passwd entry (some containers)
            home = []
        secret = [*checkout, *home, *self.limits.hide_paths]
        for path in bwrap.interpreter_dirs(self.python):
            exposed = [s for s in secret if bwrap.under(os.path.realpath(s), path)]
            if exposed:
                raise SandboxUnavailable(
                    f"the Python environment {path} contains {exposed[0]}, which must "
                    "stay hidden from the code; install the venv elsewhere"
                )
        probe = self._probe()
        if not probe.ok and probe.setup_error and os.geteuid() == 0:
            # Some kernels refuse user namespaces to unprivileged users (Ubuntu's AppArmor restriction) but not to
            # root.  bubblewrap then runs as root: the code is host uid 0 with no capabilities, and one thread.
            log.warning(
                "sandbox: bubblewrap cannot run as nobody here (%s); running it as root, with the code "
                "limited to one thread (docs/agent.md)",
                probe.setup_error.splitlines()[-1][:200],
            )
            self.as_root = True
            probe = self._probe()
        if probe.stdout.strip() == "NONET" and probe.ok:
            return "bubblewrap"
        why = (probe.setup_error or probe.stderr or probe.stdout).strip().splitlines()
        raise SandboxUnavailable(
            "bubblewrap cannot create its namespaces here ("
            + (why[-1][:200] if why else f"exit code {probe.exit_code}")
            + "); see docs/agent.md"
        )

    def _as_nobody(self, base: Path, in_dir: Path) -> tuple[list[str], dict[str, str]]:
        """For a root worker: the nobody.py prefix that starts bubblewrap as nobody, and the staged sources."""
        if os.geteuid() != 0 or self.as_root:
            return [], {}
        os.chmod(base, 0o711)  # bubblewrap, as nobody, walks to in/ or to the staging directories
        staged: dict[str, str] = {}
        for path in bwrap.bound_sources(self.python, in_dir):
            if not bwrap.reachable_by_nobody(path):
                target = base / "mnt" / str(len(staged))
                target.mkdir(parents=True, mode=0o755)
                os.chmod(base / "mnt", 0o755)
                staged[path] = str(target)
        prefix = [
            self.python,
            "-I",
            "-S",
            str(Path(__file__).resolve().parent / "nobody.py"),
            str(bwrap.SANDBOX_UID),
            str(bwrap.SANDBOX_UID),
            str(len(staged)),
        ]
        for src, dst in staged.items():
            prefix += [src, dst]
        return [*prefix, "--"], staged

    def _probe(self) -> RunResult:
        """One real run: the sandbox starts and has no network."""
        return self._run(
            "import socket\ns = socket.socket()\ns.settimeout(1)\ntry:\n"
            "    s.connect(('1.1.1.1', 53)); print('NET')\nexcept OSError:\n    print('NONET')\n",
            "bubblewrap",
            30.0,
        )

    # ------------------------------------------------------------------ running
    def run(self, code: str, *, timeout: float | None = None, files: Mapping[str, bytes] | None = None) -> RunResult:
        """Run `code` to completion or until a limit stops it.  Never raises for anything the code does.

        `files` (name → bytes) are written into the run's working directory first, under their safe names
        (files.py; `FilesRefused` if they do not fit the limits)."""
        given = check_files(files or {}, self.limits)
        return self._run(code, self.isolation, timeout or self.limits.timeout, given)

    async def arun(
        self, code: str, *, timeout: float | None = None, files: Mapping[str, bytes] | None = None
    ) -> RunResult:
        import asyncio

        return await asyncio.to_thread(self.run, code, timeout=timeout, files=files)

    def _config(self, figure_fd: int, files: Sequence[str] = ()) -> dict[str, Any]:
        lim = self.limits
        fsize = lim.max_file_mb * 1024 * 1024
        return {
            "code_path": f"{bwrap.INSIDE_IN}/main.py",
            "figure_fd": figure_fd,
            "allowed_modules": lim.allowed_modules,
            "max_figures": MAX_FIGURES,
            "max_figure_bytes": min(MAX_FIGURE_BYTES, fsize),
            "figure_budget": fsize,
            "scan_limit": SCAN_LIMIT,
            "scan_seconds": SCAN_SECONDS,
            "files": [[f"{bwrap.INSIDE_IN}/file{i}", name] for i, name in enumerate(files)],
            "limits": {
                "cpu": max(1, int(lim.cpu_seconds)),
                "memory": lim.memory_mb * 1024 * 1024,
                "nproc": max(1, lim.max_processes),
                "fsize": fsize,
                "nofile": max(16, lim.max_open_files),
            },
        }

    def _run(self, code: str, isolation: str, timeout: float, files: Sequence[tuple[str, bytes]] = ()) -> RunResult:
        started = time.monotonic()
        base = Path(tempfile.mkdtemp(prefix="agent-sandbox-"))
        fds: list[int] = []
        try:
            in_dir = base / "in"
            in_dir.mkdir(mode=0o755)
            os.chmod(in_dir, 0o755)  # readable by the sandbox's user, whatever the umask
            out = [
                os.open(base / name, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
                for name in ("stdout", "stderr", "figures")
            ]
            fds += out
            config = json.dumps(self._config(out[2], [name for name, _ in files]))
            for name, data in (
                ("main.py", code.encode()),
                ("config.json", config.encode()),
                *((f"file{i}", blob) for i, (_, blob) in enumerate(files)),
            ):
                (in_dir / name).write_bytes(data)  # copied into the working directory by child/runner.py
                os.chmod(in_dir / name, 0o644)
            filt_r, filt_w = os.pipe()
            info_r, info_w = os.pipe()
            fds += [filt_r, filt_w, info_r, info_w]
            os.write(filt_w, seccomp.program(threads=not self.as_root))
            prefix, staged = self._as_nobody(base, in_dir)
            argv = bwrap.command(
                self.bwrap_path() or self.limits.bwrap,
                self.python,
                in_dir,
                disk_bytes=self.limits.disk_mb * 1024 * 1024,
                max_files=self.limits.max_files,
                seccomp_fd=filt_r,
                info_fd=info_w,
                staged=staged,
            )
            proc = subprocess.Popen(
                [*prefix, *argv],
                stdin=subprocess.DEVNULL,
                stdout=out[0],
                stderr=out[1],
                env={},
                cwd="/",
                close_fds=True,
                pass_fds=[out[2], filt_r, info_w],
                start_new_session=True,
            )
            os.close(filt_w)
            fds.remove(filt_w)
            os.close(info_w)
            fds.remove(info_w)
            timed_out = self._wait(proc, info_r, started + timeout)
            return self._result(proc.returncode, timed_out, timeout, out, isolation, time.monotonic() - started)
        finally:
            for fd in fds:
                try:
                    os.close(fd)
                except OSError:
                    pass
            shutil.rmtree(base, ignore_errors=True)

    def _wait(self, proc: subprocess.Popen[bytes], info_r: int, deadline: float) -> bool:
        """Wait for the run; at the deadline kill the sandbox's PID 1 (and with it its whole PID namespace)."""
        pidfd = None
        try:
            child = self._child_pid(info_r, deadline)
            if child is not None:
                try:
                    pidfd = os.pidfd_open(child)
                    if _parent_of(child) != proc.pid:  # not bubblewrap's child (any more): never signal it
                        os.close(pidfd)
                        pidfd = None
                except OSError:
                    pidfd = None
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
                return False
            except subprocess.TimeoutExpired:
                pass
            if pidfd is not None:
                try:
                    signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                except OSError:
                    pass
            try:
                proc.wait(timeout=KILL_GRACE)  # bubblewrap exits once every process of the namespace is gone
            except subprocess.TimeoutExpired:
                log.error("sandbox: bubblewrap %s outlived its PID 1 by %g s; killing it", proc.pid, KILL_GRACE)
                proc.kill()  # --die-with-parent then takes the sandbox's PID 1 down
            return True
        finally:
            if pidfd is not None:
                os.close(pidfd)
            if proc.returncode is None:
                proc.kill()
                proc.wait()

    @staticmethod
    def _child_pid(info_r: int, deadline: float) -> int | None:
        """The sandbox's PID 1 as bubblewrap's --info-fd reports it (host pid)."""
        data = b""
        while time.monotonic() < deadline:
            ready, _, _ = select.select([info_r], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                break
            chunk = os.read(info_r, 4096)
            if not chunk:
                break
            data += chunk
            try:
                return int(json.loads(data)["child-pid"])
            except (ValueError, KeyError, TypeError):
                continue
        return None

    def _result(
        self, code: int, timed_out: bool, timeout: float, out: list[int], isolation: str, duration: float
    ) -> RunResult:
        limit = self.limits.max_output_chars
        stdout, cut_out = _truncate(_output(out[0], limit), limit)
        stderr, cut_err = _truncate(_output(out[1], limit), limit)
        result = RunResult(
            stdout=stdout, stderr=stderr, exit_code=code, timed_out=timed_out, duration=duration, isolation=isolation
        )
        if cut_out or cut_err:
            result.notes.append(f"output truncated to {limit} characters")
        if timed_out:
            result.notes.append(f"stopped: the time limit of {timeout:g} s was reached")
        elif code in (128 + signal.SIGXCPU, -signal.SIGXCPU):
            result.notes.append(f"stopped: the CPU time limit of {self.limits.cpu_seconds} s was reached")
        elif code in (128 + signal.SIGKILL, -signal.SIGKILL):
            result.notes.append("stopped: the process was killed (memory or process limit)")
        elif (code == EXIT_SETUP_FAILED and "sandbox setup failed" in stderr) or stderr.startswith("bwrap:"):
            log.error("sandbox setup failed: %s", stderr.strip()[:500])
            result.setup_error = stderr.strip()[:500]
            result.stderr = "the sandbox could not start (see the worker log)"
        elif code > 128:
            result.notes.append(f"stopped by signal {code - 128}")
        if "MemoryError" in stderr:
            result.notes.append(f"the memory limit is {self.limits.memory_mb} MiB")
        result.figures = _figures(out[2], self.limits.max_file_mb * 1024 * 1024, result.notes)
        return result


def describe_isolation(limits: SandboxLimits) -> str:
    """One line for `python -m bot status`: the isolation model-written code gets on this host, or why none."""
    try:
        mode = Sandbox(limits, announce=False).isolation
    except SandboxUnavailable as exc:
        return f"unavailable, so /agent runs no Python ({exc})"
    return f"{mode} (no network, empty filesystem, one process of {limits.memory_mb} MiB, {limits.disk_mb} MiB disk)"
