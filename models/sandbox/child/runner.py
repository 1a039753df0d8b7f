"""Second program inside the sandbox: set the limits, run the model's code IPython-style, hand back figures.

Runs as `python -I runner.py CONFIG.json` in the run's working directory, already inside bubblewrap's
namespaces and seccomp filter and without capabilities.  In order:

0. the run's given files (a user's attachment): copied from the read-only input directory into the working
   directory under the names the worker chose, each name checked again here (one plain component, never
   `.`/`..`, no link followed, never overwriting);
1. rlimits (CPU seconds, address space, processes, file size, open files, no core dumps), hard = soft, so the
   code cannot raise them again;
2. a Python audit hook — a **policy, not a barrier** (code can get around it; the barriers are bubblewrap's
   namespaces, the seccomp filter and the limits): it keeps third-party imports to the allow-list and answers
   `subprocess`/`os.system` with a plain "not allowed" instead of a confusing failure;
3. the code, compiled as `<agent-code>`; a last expression's value is printed as IPython would (`x` on the
   last line prints `repr(x)`), matplotlib's `plt.show()` saves the open figures;
4. the figures: at most `max_figures` regular, single-link image files among the first `scan_limit` entries
   of the working directory (and within `scan_seconds`), written to descriptor `figure_fd` — a file the worker
   reads with a size cap.  The worker never opens anything in the sandbox's filesystem.

Imports nothing of the project: only the bind-mounted interpreter, its standard library and the venv exist.
"""

from __future__ import annotations

import ast
import builtins
import json
import linecache
import os
import resource
import signal
import stat
import sys
import time
import traceback
import warnings
from typing import Any

USER = "<agent-code>"
SUFFIXES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif"}
MAGIC = {"image/png": b"\x89PNG", "image/jpeg": b"\xff\xd8", "image/gif": b"GIF8"}
SPAWN = {"os.fork", "os.forkpty", "os.exec", "os.posix_spawn", "os.spawn", "os.system", "subprocess.Popen", "pty.spawn"}


class Blocked(PermissionError):
    """Refused by the sandbox's policy."""


class BlockedImport(ImportError):
    """A third-party module outside SANDBOX_ALLOWED_MODULES."""


def plain_name(name: object) -> bool:
    """One path component that stays in the working directory (the worker's names are safe already)."""
    return (
        isinstance(name, str)
        and 0 < len(name) <= 255
        and name not in (".", "..")
        and "/" not in name
        and "\x00" not in name
    )


def copy_files(files: list[list[str]]) -> None:
    """Copy each `[source, name]` into the working directory; a failure is reported on stderr."""
    for entry in files:
        source, name = entry if isinstance(entry, list) and len(entry) == 2 else ("", entry)
        if not plain_name(name) or not isinstance(source, str):
            sys.stderr.write(f"sandbox: file name {name!r} refused\n")
            continue
        try:
            with open(source, "rb") as src:
                fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
                with os.fdopen(fd, "wb") as dst:
                    while chunk := src.read(1 << 20):
                        dst.write(chunk)
        except OSError as exc:
            sys.stderr.write(f"sandbox: could not write {name}: {exc.strerror}\n")


def set_limits(lim: dict[str, int]) -> None:
    for name, value in (
        ("RLIMIT_CPU", lim["cpu"]),
        ("RLIMIT_AS", lim["memory"]),
        ("RLIMIT_NPROC", lim["nproc"]),
        ("RLIMIT_FSIZE", lim["fsize"]),
        ("RLIMIT_NOFILE", lim["nofile"]),
        ("RLIMIT_CORE", 0),
    ):
        resource.setrlimit(getattr(resource, name), (value, value))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a too-large write fails with EFBIG instead of killing


def install_policy(allowed: set[str]) -> None:
    stdlib = set(sys.stdlib_module_names)

    def importer_is_user() -> bool:
        frame = sys._getframe(2)
        while frame is not None:
            name = frame.f_code.co_filename
            if name.startswith("<frozen importlib") or "/importlib/" in name:
                frame = frame.f_back
                continue
            return name == USER
        return False

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if event == "import":
            top = (args[0] or "").partition(".")[0]
            if top and top not in stdlib and top not in allowed and top not in sys.modules and importer_is_user():
                names = ", ".join(sorted(allowed)) or "the standard library only"
                raise BlockedImport(f"the sandbox does not allow the module {top!r} (allowed: {names})")
        elif event in SPAWN:
            raise Blocked("starting processes is not allowed in the sandbox")

    sys.addaudithook(hook)


class PyplotHook:
    """Make plt.show() save the open figures (the Agg backend cannot show anything)."""

    def __init__(self) -> None:
        self.saved = 0

    def save_all(self, plt: Any) -> None:
        for num in plt.get_fignums():
            fig = plt.figure(num)
            if not getattr(fig, "_sandbox_saved", False):
                self.saved += 1
                fig.savefig(f"figure_{self.saved}.png", dpi=100, bbox_inches="tight")
        plt.close("all")

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != "matplotlib.pyplot":
            return None
        sys.meta_path.remove(self)
        import importlib.util

        spec = importlib.util.find_spec(name)
        original = spec.loader.exec_module

        def exec_module(module: Any) -> None:
            original(module)
            module.show = lambda *a, **k: self.save_all(module)
            figure = sys.modules["matplotlib.figure"].Figure
            savefig = figure.savefig

            def marking_savefig(fig: Any, *a: Any, **k: Any) -> Any:  # a figure the code saved is not saved again
                fig._sandbox_saved = True
                return savefig(fig, *a, **k)

            figure.savefig = marking_savefig

        spec.loader.exec_module = exec_module
        return spec


def run_code(source: str) -> int:
    """Exec the code with IPython's echo of a last expression; the exit status the run reports."""
    linecache.cache[USER] = (len(source), None, source.splitlines(True), USER)
    try:
        tree = ast.parse(source, USER)
        last = None
        if tree.body and isinstance(tree.body[-1], ast.Expr):
            last = ast.Expression(tree.body.pop().value)
        scope: dict[str, Any] = {"__name__": "__main__", "__builtins__": builtins}
        exec(compile(tree, USER, "exec"), scope)
        if last is not None:
            value = eval(compile(last, USER, "eval"), scope)
            if value is not None:
                print(repr(value))
        return 0
    except SyntaxError as exc:
        sys.stderr.write("".join(traceback.format_exception_only(type(exc), exc)))
        return 1
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException as exc:  # the code's own error, shown as IPython would (its frames only)
        tb = exc.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename != USER:
            tb = tb.tb_next
        traceback.print_exception(type(exc), exc, tb)
        return 1


def read_figure(name: str, max_bytes: int) -> bytes | None:
    """A regular, single-link file's bytes, opened without following a link."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1 or st.st_size > max_bytes:
            return None
        data = os.read(fd, max_bytes + 1)
        return data if len(data) <= max_bytes else None
    finally:
        os.close(fd)


def collect_figures(cfg: dict[str, Any]) -> tuple[list[tuple[str, str, bytes]], list[str]]:
    """Bounded scan: at most `scan_limit` directory entries and `scan_seconds`, then at most `max_figures`."""
    notes: list[str] = []
    candidates: list[tuple[str, str]] = []
    deadline = time.monotonic() + cfg["scan_seconds"]
    seen = 0
    try:
        with os.scandir(".") as entries:
            for entry in entries:
                seen += 1
                if seen > cfg["scan_limit"] or time.monotonic() > deadline:
                    notes.append(f"only the first {cfg['scan_limit']} files were looked at for figures")
                    break
                mime = SUFFIXES.get(os.path.splitext(entry.name)[1].lower())
                if mime is not None:
                    candidates.append((entry.name, mime))
    except OSError:
        return [], notes
    figures: list[tuple[str, str, bytes]] = []
    budget = cfg["figure_budget"]
    for name, mime in sorted(candidates):
        if len(figures) >= cfg["max_figures"]:
            notes.append(f"only the first {cfg['max_figures']} figures are returned")
            break
        data = read_figure(name, min(cfg["max_figure_bytes"], budget))
        if data and data.startswith(MAGIC[mime]):
            figures.append((name, mime, data))
            budget -= len(data)
    return figures, notes


def send_figures(fd: int, figures: list[tuple[str, str, bytes]], notes: list[str]) -> None:
    """One JSON header line, then the figures' bytes back to back (erasing anything the code wrote there)."""
    header = {"figures": [{"name": n, "mime": m, "size": len(d)} for n, m, d in figures], "notes": notes}
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    payload = json.dumps(header).encode() + b"\n" + b"".join(d for _, _, d in figures)
    view = memoryview(payload)
    while view:
        view = view[os.write(fd, view) :]


def main(config_path: str) -> None:
    with open(config_path, encoding="utf-8") as fh:
        cfg = json.load(fh)
    with open(cfg["code_path"], encoding="utf-8") as fh:
        source = fh.read()
    sys.argv = ["main.py"]
    for stream in (sys.stdout, sys.stderr):  # what was printed before a timeout or a crash is kept
        stream.reconfigure(line_buffering=True)
    copy_files(cfg.get("files") or [])
    set_limits(cfg["limits"])
    install_policy(set(cfg["allowed_modules"]))
    warnings.filterwarnings("ignore", message=".*non-interactive.*")
    pyplot = PyplotHook()
    sys.meta_path.insert(0, pyplot)
    status = run_code(source)
    plt = sys.modules.get("matplotlib.pyplot")
    if plt is not None:
        try:
            pyplot.save_all(plt)
        except Exception as exc:
            sys.stderr.write(f"could not save the figure: {exc}\n")
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        send_figures(cfg["figure_fd"], *collect_figures(cfg))
    except OSError as exc:
        sys.stderr.write(f"could not return the figures: {exc}\n")
    os._exit(status)


if __name__ == "__main__":
    main(sys.argv[1])
