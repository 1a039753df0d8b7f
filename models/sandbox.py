"""Run model-written Python in a separate, locked-down process.

Lagent's own PythonInterpreter/IPythonInterpreter `exec()` the model's code inside the worker, where it could
read the Discord token, the `.env` file and Redis, or kill the worker.  Here every run gets:

* a fresh process (`python -I`, the worker's own interpreter so the allowed packages import) started with an
  **empty environment** (no secrets, no PYTHONPATH) and no inherited file descriptors, in its own session so
  the **wall-clock timeout kills the whole process group**;
* **resource limits** set in the child before the code starts: CPU seconds, address space, processes,
  file size, open files, no core dumps;
* where the kernel allows it (`isolation="namespace"`), **Linux namespaces**: a new network namespace (only a
  loopback interface that is down: no Redis, no Discord API, no cloud metadata address), a new PID namespace
  with its own /proc (the worker's /proc/<pid>/environ is invisible and it cannot be signalled), and a new
  mount namespace in which the project directory, DATA_DIR, $HOME, /tmp, /run, /var/tmp and /dev/shm are
  replaced by empty tmpfs mounts; only the interpreter (re-mounted read-only) and the run's own working
  directory are put back.  A worker running as root drops the child to `nobody`; otherwise a user namespace
  provides the isolation without privileges;
* in every mode, a Python **audit hook** in the child that refuses to start processes (fork/exec/subprocess)
  and restricts imports of third-party packages to an allow-list.  Where namespaces are unavailable
  (`isolation="audit"`), the same hook also refuses sockets, signals to other processes, ctypes, and opening
  hidden paths — a weaker, in-process barrier, documented as such in docs/agent.md.

Output is captured to files (not pipes: a chatty program cannot block the worker) and truncated, and figures
the code saves or shows with matplotlib come back as PNG bytes.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
INSIDE_DIR = "/tmp/sandbox"  # where the run's working directory appears inside the mount namespace
NOBODY = 65534
FIGURE_SUFFIXES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif"}
MAX_FIGURES = 4
MAX_FIGURE_BYTES = 8 * 1024 * 1024
EXIT_SETUP_FAILED = 120  # the boot script could not isolate the child

# --------------------------------------------------------------------------------------------- child side
# The boot script runs first in the child (`python -I -S -c BOOT <config>`): a fresh, single-threaded process,
# so unshare() is allowed.  It isolates the process, sets the limits and execs the runner.
BOOT = r'''
import ctypes, json, os, resource, signal, sys
cfg = json.loads(sys.argv[1])
def die(msg):
    os.write(2, ("sandbox setup failed: " + msg + "\n").encode()); os._exit(120)
libc = ctypes.CDLL(None, use_errno=True)
libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
def mount(src, dst, fstype, flags, data=None):
    enc = lambda s: s.encode() if s is not None else None
    if libc.mount(enc(src), enc(dst), enc(fstype), flags, enc(data)) != 0:
        e = ctypes.get_errno(); raise OSError(e, "mount %s: %s" % (dst, os.strerror(e)))
def write(path, text):
    with open(path, "w") as f: f.write(text)
def under(path, root):
    return path == root or path.startswith(root.rstrip("/") + "/")
root = os.geteuid() == 0
work = cfg["workdir"]
if cfg["isolation"] == "namespace":
    NEWNS, NEWUSER, NEWPID, NEWNET = 0x20000, 0x10000000, 0x20000000, 0x40000000
    RDONLY, NOSUID, NODEV, NOEXEC, REMOUNT, BIND, REC, PRIVATE = 1, 2, 4, 8, 32, 4096, 16384, 1 << 18
    uid, gid = os.getuid(), os.getgid()
    if libc.unshare(NEWNS | NEWNET | NEWPID | (0 if root else NEWUSER)) != 0:
        die("unshare: " + os.strerror(ctypes.get_errno()))
    try:
        if not root:
            write("/proc/self/setgroups", "deny")
            write("/proc/self/uid_map", "%d %d 1" % (uid, uid))
            write("/proc/self/gid_map", "%d %d 1" % (gid, gid))
        mount(None, "/", None, REC | PRIVATE)
        hide = [p for p in cfg["hide"] if os.path.isdir(p)]
        keep = [p for p in cfg["keep"] if os.path.isdir(p) and any(under(p, h) for h in hide)]
        fds = {p: os.open(p, os.O_PATH | os.O_DIRECTORY) for p in keep}
        work_fd = os.open(work, os.O_PATH | os.O_DIRECTORY)
        for h in hide:
            if os.path.isdir(h):
                mount("tmpfs", h, "tmpfs", NOSUID | NODEV, "size=4m,mode=755")
        for p in sorted(keep, key=len):
            os.makedirs(p, exist_ok=True)
            mount("/proc/self/fd/%d" % fds[p], p, None, BIND | REC)
            try:  # read-only, keeping the flags the original mount has (a user namespace may not drop them)
                f = os.statvfs(p).f_flag
                mount(None, p, None, REMOUNT | BIND | RDONLY | (f & (NOSUID | NODEV | NOEXEC | 1024 | 2048)))
            except OSError:
                pass
        os.makedirs(cfg["inside"], exist_ok=True)
        mount("/proc/self/fd/%d" % work_fd, cfg["inside"], None, BIND)
        work = cfg["inside"]
    except OSError as exc:
        die(str(exc))
    pid = os.fork()  # the child is PID 1 of the new PID namespace; when it dies, all its descendants die
    if pid:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        _, status = os.waitpid(pid, 0)
        os._exit(128 + os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status))
    try:
        mount("proc", "/proc", "proc", NOSUID | NODEV | NOEXEC)
    except OSError:
        mount("tmpfs", "/proc", "tmpfs", NOSUID | NODEV | NOEXEC, "size=4k,mode=555")  # no /proc rather than the host's
os.chdir(work)
if root and cfg["nobody"] is not None:
    os.setgroups([]); os.setgid(cfg["nobody"]); os.setuid(cfg["nobody"])
lim = cfg["limits"]
for name, value in (("RLIMIT_CPU", lim["cpu"]), ("RLIMIT_AS", lim["memory"]), ("RLIMIT_NPROC", lim["nproc"]),
                    ("RLIMIT_FSIZE", lim["fsize"]), ("RLIMIT_NOFILE", lim["nofile"]), ("RLIMIT_CORE", 0)):
    try:
        resource.setrlimit(getattr(resource, name), (value, value))
    except (ValueError, OSError) as exc:
        die("%s: %s" % (name, exc))
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a too-large write fails with EFBIG instead of killing
cfg["workdir"] = work
os.execve(sys.executable, [sys.executable, "-I", "-c", cfg["runner"], json.dumps(cfg)], os.environ)
'''

# The runner executes the code: audit-hook policy, IPython-like echo of a last expression, figure capture.
RUNNER = r'''
import ast, builtins, json, linecache, os, sys, traceback, warnings
cfg = json.loads(sys.argv[1]); sys.argv = ["main.py"]
USER = "<agent-code>"
STRICT = cfg["isolation"] == "audit"
ALLOWED = set(cfg["allowed_modules"])
STDLIB = set(sys.stdlib_module_names)
WORK = os.path.realpath(cfg["workdir"])
HIDE = [os.path.realpath(p) for p in cfg["hide"]]
KEEP = [os.path.realpath(p) for p in cfg["keep"]]
ME = os.getpid()
SPAWN = {"os.fork", "os.forkpty", "os.exec", "os.posix_spawn", "os.spawn", "os.system", "subprocess.Popen",
         "pty.spawn", "os.startfile"}
NET = {"socket.__new__", "socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg",
       "socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyaddr"}
class Blocked(PermissionError):
    pass
class BlockedImport(ImportError):
    pass
def under(path, root):
    return path == root or path.startswith(root.rstrip("/") + "/")
def importer_is_user():
    f = sys._getframe(2)
    while f is not None:
        name = f.f_code.co_filename
        if name.startswith("<frozen importlib") or "/importlib/" in name:
            f = f.f_back; continue
        return name == USER or name == "<string>"
    return False
def check_open(path, mode, flags):
    if not isinstance(path, str):
        return
    real = os.path.realpath(path)
    if under(real, WORK):
        return
    writing = any(c in (mode or "") for c in "wax+") or (flags or 0) & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)
    if writing:
        raise Blocked("the sandbox may only write inside its working directory")
    if real.startswith("/proc/") and real.split("/")[2].isdigit() and int(real.split("/")[2]) != ME:
        raise Blocked("other processes are not visible from the sandbox")
    if any(under(real, h) for h in HIDE) and not any(under(real, k) for k in KEEP):
        raise Blocked("%s is not visible from the sandbox" % path)
def hook(event, args):
    if event == "import":
        top = (args[0] or "").partition(".")[0]
        if top and top not in STDLIB and top not in ALLOWED and top not in sys.modules and importer_is_user():
            raise BlockedImport("the sandbox does not allow the module %r (allowed: %s)"
                                % (top, ", ".join(sorted(ALLOWED)) or "the standard library only"))
    elif event in SPAWN:
        raise Blocked("starting processes is not allowed in the sandbox")
    elif STRICT:
        if event in NET:
            raise Blocked("network access is not allowed in the sandbox")
        if event in ("os.kill", "os.killpg", "signal.pthread_kill") and args[0] not in (0, ME):
            raise Blocked("signalling other processes is not allowed in the sandbox")
        if (event == "ctypes.dlopen" and args[0] is not None) or event.startswith("ctypes.dlsym"):
            raise Blocked("calling C functions through ctypes is not allowed in the sandbox")
        if event in ("os.link", "os.symlink", "os.rename", "os.remove", "os.rmdir", "os.chmod", "os.chown",
                     "os.truncate", "os.mkdir", "shutil.rmtree", "os.utime"):
            for p in args:
                if isinstance(p, str) and not under(os.path.realpath(p), WORK):
                    raise Blocked("the sandbox may only change files inside its working directory")
        if event == "open":
            check_open(args[0], args[1], args[2])
        if event in ("os.listdir", "os.scandir") and isinstance(args[0], str):
            check_open(args[0], "r", 0)
sys.addaudithook(hook)
warnings.filterwarnings("ignore", message=".*non-interactive.*")
saved = [0]
def save_figures(plt):
    for num in plt.get_fignums():
        fig = plt.figure(num)
        if not getattr(fig, "_sandbox_saved", False):
            saved[0] += 1
            fig.savefig("figure_%d.png" % saved[0], dpi=100, bbox_inches="tight")
    plt.close("all")
class PyplotHook:
    """Make plt.show() save the open figures (the Agg backend cannot show anything)."""
    def find_spec(self, name, path=None, target=None):
        if name != "matplotlib.pyplot":
            return None
        sys.meta_path.remove(self)
        import importlib.util
        spec = importlib.util.find_spec(name)
        original = spec.loader.exec_module
        def exec_module(module):
            original(module)
            module.show = lambda *a, **k: save_figures(module)
            figure = sys.modules["matplotlib.figure"].Figure
            savefig = figure.savefig
            def marking_savefig(self, *a, **k):  # a figure the code saved itself is not saved again
                self._sandbox_saved = True
                return savefig(self, *a, **k)
            figure.savefig = marking_savefig
        spec.loader.exec_module = exec_module
        return spec
sys.meta_path.insert(0, PyplotHook())
with open(os.path.join(WORK, "main.py"), encoding="utf-8") as f:
    source = f.read()
os.remove(os.path.join(WORK, "main.py"))
linecache.cache[USER] = (len(source), None, source.splitlines(True), USER)
status = 0
try:
    tree = ast.parse(source, USER)
    last = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = ast.Expression(tree.body.pop().value)
    scope = {"__name__": "__main__", "__builtins__": builtins}
    exec(compile(tree, USER, "exec"), scope)
    if last is not None:
        value = eval(compile(last, USER, "eval"), scope)
        if value is not None:
            print(repr(value))
except SyntaxError as exc:
    sys.stderr.write("".join(traceback.format_exception_only(type(exc), exc))); status = 1
except SystemExit as exc:
    status = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
except BaseException as exc:
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename != USER:
        tb = tb.tb_next
    traceback.print_exception(type(exc), exc, tb); status = 1
finally:
    plt = sys.modules.get("matplotlib.pyplot")
    if plt is not None:
        try:
            save_figures(plt)
        except Exception as exc:
            sys.stderr.write("could not save the figure: %s\n" % exc)
    sys.stdout.flush(); sys.stderr.flush()
os._exit(status)
'''


# -------------------------------------------------------------------------------------------- worker side
@dataclass
class SandboxLimits:
    """What one run may use.  Defaults match `.env.example`."""

    timeout: float = 10.0
    memory_mb: int = 512
    cpu_seconds: int = 10
    max_processes: int = 32
    max_file_mb: int = 16
    max_open_files: int = 64
    max_output_chars: int = 4000
    allowed_modules: list[str] = field(default_factory=lambda: [
        "numpy", "sympy", "mpmath", "matplotlib", "pandas", "scipy", "PIL"])
    isolation: str = "auto"  # "auto" | "namespace" | "audit"
    hide_paths: list[str] = field(default_factory=list)  # besides the defaults (see `hidden_paths`)

    @classmethod
    def from_settings(cls, settings: Any) -> SandboxLimits:
        return cls(timeout=settings.sandbox_timeout, memory_mb=settings.sandbox_memory_mb,
                   cpu_seconds=settings.sandbox_cpu_seconds, max_processes=settings.sandbox_max_processes,
                   max_file_mb=settings.sandbox_max_file_mb, max_open_files=settings.sandbox_max_open_files,
                   max_output_chars=settings.sandbox_max_output_chars,
                   allowed_modules=list(settings.sandbox_allowed_modules), isolation=settings.sandbox_isolation,
                   hide_paths=[*settings.sandbox_hide_paths, str(settings.data_dir)])


@dataclass
class Figure:
    name: str
    data: bytes
    mime: str = "image/png"


@dataclass
class RunResult:
    """What a run produced, and why it ended."""

    stdout: str = ""
    stderr: str = ""
    exit_code: int = 0
    timed_out: bool = False
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # limits hit, output cut, figures dropped
    duration: float = 0.0
    isolation: str = ""

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out

    def for_model(self) -> str:
        """The text the model reads as the tool's result (IPython-like: output, then the error, then notes)."""
        parts = [p.rstrip() for p in (self.stdout, self.stderr) if p.strip()]
        if self.figures:
            parts.append(f"[{len(self.figures)} figure(s) produced: {', '.join(f.name for f in self.figures)}]")
        parts += [f"[{note}]" for note in self.notes]
        return "\n".join(parts) if parts else "[the code ran without printing anything]"


class SandboxUnavailable(RuntimeError):
    """The configured isolation cannot be provided here (message is safe to show)."""


def _truncate(text: str, limit: int) -> tuple[str, bool]:
    if len(text) <= limit:
        return text, False
    head = text[: limit * 3 // 4]
    tail = text[-(limit // 4):]
    return f"{head}\n… [{len(text) - len(head) - len(tail)} characters cut] …\n{tail}", True


def _read_capped(path: Path, limit_bytes: int) -> str:
    with open(path, "rb") as fh:
        data = fh.read(limit_bytes + 1)
    text = data[:limit_bytes].decode("utf-8", "replace")
    if len(data) > limit_bytes:
        text += "\n… [more output cut]"
    return text


def _read_figure(path: Path) -> bytes | None:
    """A regular, unlinked-elsewhere file's bytes — never follow a link the code planted to a host file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1 or st.st_size > MAX_FIGURE_BYTES:
            return None
        with os.fdopen(fd, "rb", closefd=False) as fh:
            return fh.read(MAX_FIGURE_BYTES)
    finally:
        os.close(fd)


def _looks_like(data: bytes, mime: str) -> bool:
    magic = {"image/png": b"\x89PNG", "image/jpeg": b"\xff\xd8", "image/gif": b"GIF8"}[mime]
    return data.startswith(magic)


class Sandbox:
    """Runs code snippets; thread-safe (each run has its own directory and process)."""

    def __init__(self, limits: SandboxLimits | None = None, python: str | None = None) -> None:
        self.limits = limits or SandboxLimits()
        self.python = python or sys.executable
        self._isolation: str | None = None
        self._lock = threading.Lock()
        self._warned = False

    # ------------------------------------------------------------------ configuration
    def hidden_paths(self) -> list[str]:
        """Directories replaced by empty ones in the child: where secrets and the worker's state live."""
        paths = [str(PROJECT_ROOT), str(Path.home()), "/tmp", "/var/tmp", "/dev/shm", "/run",
                 tempfile.gettempdir(), *self.limits.hide_paths]
        out: list[str] = []
        for p in paths:
            real = os.path.realpath(p)
            if real not in out and real != "/" and os.path.isdir(real):
                out.append(real)
        # A directory inside another hidden one is hidden with it (and would not exist to mount on).
        return [p for p in out if not any(p != q and p.startswith(q.rstrip("/") + "/") for q in out)]

    def kept_paths(self) -> list[str]:
        """The interpreter and its packages, put back (read-only) if they live under a hidden directory."""
        paths = sorted({os.path.realpath(p) for p in (sys.prefix, sys.base_prefix,
                                                       os.path.dirname(os.path.realpath(self.python)))})
        return [p for p in paths if not any(p != q and p.startswith(q + "/") for q in paths)]

    def can_drop_to_nobody(self) -> bool:
        """Whether `nobody` could run the interpreter (in audit mode nothing is re-mounted for it)."""
        for kept in self.kept_paths():
            path = Path(kept)
            for part in [*reversed(path.parents), path]:
                try:
                    if not os.stat(part).st_mode & stat.S_IXOTH:
                        return False
                except OSError:
                    return False
        return True

    @property
    def isolation(self) -> str:
        """The isolation actually used ("namespace" or "audit"), probed once."""
        with self._lock:
            if self._isolation is None:
                self._isolation = self._resolve()
            return self._isolation

    def _resolve(self) -> str:
        wanted = self.limits.isolation
        if wanted == "audit":
            return "audit"
        works, why = namespaces_available(self.python)
        if works:
            return "namespace"
        if wanted == "namespace":
            raise SandboxUnavailable(f"SANDBOX_ISOLATION=namespace, but namespaces are unavailable here ({why})")
        log.warning("sandbox: Linux namespaces are unavailable (%s); falling back to the weaker audit-hook "
                    "isolation (see docs/agent.md)", why)
        return "audit"

    # ------------------------------------------------------------------ running
    def run(self, code: str, *, timeout: float | None = None) -> RunResult:
        """Run `code` to completion or until a limit stops it.  Never raises for anything the code does."""
        return self._run(code, self.isolation, timeout or self.limits.timeout)

    async def arun(self, code: str, *, timeout: float | None = None) -> RunResult:
        import asyncio

        return await asyncio.to_thread(self.run, code, timeout=timeout)

    def _config(self, isolation: str, workdir: str) -> dict[str, Any]:
        lim = self.limits
        if isolation == "audit" and os.geteuid() == 0 and not self.can_drop_to_nobody() and not self._warned:
            self._warned = True
            log.warning("sandbox: the worker runs as root without namespaces and `nobody` cannot reach the "
                        "interpreter (%s), so sandboxed code runs as root behind the audit hook only",
                        ", ".join(self.kept_paths()))
        return {
            "isolation": isolation, "workdir": workdir, "inside": INSIDE_DIR,
            "nobody": NOBODY if isolation == "namespace" or self.can_drop_to_nobody() else None,
            "hide": self.hidden_paths(), "keep": self.kept_paths(), "runner": RUNNER,
            "allowed_modules": lim.allowed_modules,
            "limits": {"cpu": max(1, int(lim.cpu_seconds)), "memory": lim.memory_mb * 1024 * 1024,
                       "nproc": max(1, lim.max_processes), "fsize": lim.max_file_mb * 1024 * 1024,
                       "nofile": max(16, lim.max_open_files)},
        }

    @staticmethod
    def _env(inside: str) -> dict[str, str]:
        """The child's whole environment: nothing of the worker's (no tokens, keys or Redis URL)."""
        return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": inside, "TMPDIR": inside, "LANG": "C.UTF-8",
                "LC_ALL": "C.UTF-8", "MPLBACKEND": "Agg", "MPLCONFIGDIR": f"{inside}/.matplotlib",
                "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                "NUMEXPR_MAX_THREADS": "1", "PYTHONHASHSEED": "0"}

    def _run(self, code: str, isolation: str, timeout: float) -> RunResult:
        started = time.monotonic()
        base = Path(tempfile.mkdtemp(prefix="agent-sandbox-"))
        work, out = base / "work", base / "out"
        work.mkdir(mode=0o700)
        out.mkdir(mode=0o700)
        try:
            (work / "main.py").write_text(code, encoding="utf-8")
            inside = INSIDE_DIR if isolation == "namespace" else str(work)
            config = self._config(isolation, str(work))
            if os.geteuid() == 0 and config["nobody"] is not None:  # the child runs as nobody: it must own these
                os.chmod(base, 0o711)
                os.chown(work, NOBODY, NOBODY)
                os.chown(work / "main.py", NOBODY, NOBODY)
            with open(out / "stdout", "wb") as so, open(out / "stderr", "wb") as se:
                proc = subprocess.Popen([self.python, "-I", "-S", "-c", BOOT, json.dumps(config)],
                                        stdin=subprocess.DEVNULL, stdout=so, stderr=se, cwd=str(work),
                                        env=self._env(inside), start_new_session=True, close_fds=True)
                timed_out = False
                try:
                    proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    timed_out = True
                finally:
                    _kill_group(proc)
            return self._result(proc.returncode, timed_out, timeout, work, out, isolation,
                                time.monotonic() - started)
        finally:
            shutil.rmtree(base, ignore_errors=True)

    def _result(self, code: int, timed_out: bool, timeout: float, work: Path, out: Path, isolation: str,
                duration: float) -> RunResult:
        limit = self.limits.max_output_chars
        stdout, cut_out = _truncate(_read_capped(out / "stdout", limit * 4), limit)
        stderr, cut_err = _truncate(_read_capped(out / "stderr", limit * 4), limit)
        result = RunResult(stdout=stdout, stderr=stderr, exit_code=code, timed_out=timed_out,
                           duration=duration, isolation=isolation)
        if cut_out or cut_err:
            result.notes.append(f"output truncated to {limit} characters")
        if timed_out:
            result.notes.append(f"stopped: the time limit of {timeout:g} s was reached")
        elif code == 128 + signal.SIGXCPU or code == -signal.SIGXCPU:
            result.notes.append(f"stopped: the CPU time limit of {self.limits.cpu_seconds} s was reached")
        elif code == 128 + signal.SIGKILL or code == -signal.SIGKILL:
            result.notes.append("stopped: the process was killed (memory or process limit)")
        elif code == EXIT_SETUP_FAILED and "sandbox setup failed" in stderr:
            log.error("sandbox setup failed: %s", stderr.strip()[:500])
            result.stderr = "the sandbox could not start (see the worker log)"
        elif code > 128:
            result.notes.append(f"stopped by signal {code - 128}")
        if "MemoryError" in stderr:
            result.notes.append(f"the memory limit is {self.limits.memory_mb} MiB")
        result.figures = self._figures(work, result.notes)
        return result

    @staticmethod
    def _figures(work: Path, notes: list[str]) -> list[Figure]:
        figures: list[Figure] = []
        try:
            entries = sorted(os.scandir(work), key=lambda e: e.name)
        except OSError:
            return figures
        for entry in entries:
            mime = FIGURE_SUFFIXES.get(Path(entry.name).suffix.lower())
            if mime is None:
                continue
            if len(figures) >= MAX_FIGURES:
                notes.append(f"only the first {MAX_FIGURES} figures are returned")
                break
            data = _read_figure(work / entry.name)
            if data and _looks_like(data, mime):
                figures.append(Figure(entry.name, data, mime))
        return figures


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """Kill the run's whole process group (the boot process is the session leader), then reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        log.error("sandbox process %s did not die", proc.pid)


@functools.lru_cache(maxsize=4)
def namespaces_available(python: str = sys.executable) -> tuple[bool, str]:
    """Whether a namespace-isolated child starts here and really has no network (checked once per process)."""
    probe = Sandbox(SandboxLimits(timeout=20, isolation="namespace", allowed_modules=[]), python)
    code = ("import socket\ns = socket.socket()\ns.settimeout(1)\n"
            "try:\n    s.connect(('1.1.1.1', 53)); print('NET')\nexcept OSError:\n    print('NONET')\n")
    try:
        result = probe._run(code, "namespace", 20)
    except OSError as exc:
        return False, str(exc)
    if result.stdout.strip() == "NONET":
        return True, "ok"
    return False, (result.stderr or result.stdout).strip()[:200] or f"exit code {result.exit_code}"
