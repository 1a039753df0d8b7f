"""The bubblewrap command line for one run: what the sandbox sees, and nothing else.

The sandbox's filesystem is built from nothing (bubblewrap starts from an empty tmpfs root) rather than by
hiding things from the host's: it holds `/usr` and the `/bin` `/lib*` links, `/etc/ld.so.cache`, the
interpreter and venv (all read-only), five device nodes, the two child programs, the run's code (read-only)
and the run's working directory (a tmpfs capped in bytes and inodes).  Everything else — the project, `.env`,
`DATA_DIR` and its Redis socket, `$HOME`, `/tmp`, `/dev/shm`, `/run`, `/proc`, other runs — does not exist there.

bubblewrap runs as the worker's user, or as `nobody` when the worker is root (nobody.py), so the sandbox is
never the host's uid 0.  bubblewrap resolves every source path as its own user, so a source nobody cannot
reach (a pyenv interpreter under a 0700 `/root`) is given as a staged path (`staged`): a directory nobody can
reach, onto which nobody.py bind-mounts the real one in a private mount namespace.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

SANDBOX_UID = 65534  # the uid and gid the code has inside (nobody)
CHILD_DIR = Path(__file__).resolve().parent / "child"
INSIDE_LIB = "/sandbox/lib"  # the child programs
INSIDE_IN = "/sandbox/in"  # main.py and config.json, read-only
INSIDE_WORK = "/sandbox/work"  # the run's working directory (tmpfs mounted by child/mount_work.py)
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
SYSTEM_FILES = ("/etc/ld.so.cache",)  # the dynamic loader finds multiarch libraries through it
DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")


def child_env() -> dict[str, str]:
    """The code's whole environment: nothing of the worker's (no tokens, keys or Redis URL)."""
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": INSIDE_WORK,
        "TMPDIR": INSIDE_WORK,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "MPLBACKEND": "Agg",
        "MPLCONFIGDIR": f"{INSIDE_WORK}/.mpl",
        "OPENBLAS_NUM_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "NUMEXPR_MAX_THREADS": "1",
        "PYTHONHASHSEED": "0",
    }


def under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def reachable_by_nobody(path: str) -> bool:
    """Whether `nobody` could walk to `path` (every directory above it searchable by others)."""
    target = Path(os.path.realpath(path))
    for part in [*reversed(target.parents), target]:
        try:
            if part.is_dir() and not os.stat(part).st_mode & 0o001:
                return False
        except OSError:
            return False
    return True


def interpreter_dirs(python: str) -> list[str]:
    """The directories the interpreter and its packages live in (outermost only, none already under /usr)."""
    own = os.path.realpath(python) == os.path.realpath(sys.executable)  # the worker's: its venv too
    paths = {
        os.path.realpath(p)
        for p in ((sys.prefix, sys.base_prefix) if own else ())
        + (os.path.dirname(python), os.path.dirname(os.path.realpath(python)))
    }
    paths = {p for p in paths if not any(under(p, d) for d in SYSTEM_DIRS)}
    return sorted(p for p in paths if not any(p != q and under(p, q) for q in paths))


def bound_sources(python: str, in_dir: Path) -> list[str]:
    """The host directories bound into the sandbox besides the system ones (which anyone can reach)."""
    return [*interpreter_dirs(python), str(CHILD_DIR), str(in_dir)]


def command(
    bwrap: str,
    python: str,
    in_dir: Path,
    *,
    disk_bytes: int,
    max_files: int,
    seccomp_fd: int,
    info_fd: int,
    staged: dict[str, str] | None = None,
) -> list[str]:
    """bubblewrap's argv for one run (options every bubblewrap since 0.5 has: Ubuntu 22.04 ships 0.6).

    `staged` maps a source nobody cannot reach to the path bubblewrap should bind it from (see nobody.py)."""
    staged = staged or {}
    args = [
        bwrap,
        "--unshare-all",
        "--unshare-user",
        "--die-with-parent",
        "--new-session",  # no --disable-userns:
        # it nests a user namespace that would own no mount namespace (the seccomp filter refuses new ones)
        "--uid",
        str(SANDBOX_UID),
        "--gid",
        str(SANDBOX_UID),
        "--hostname",
        "sandbox",
        "--clearenv",
        "--cap-add",
        "CAP_SYS_ADMIN",
    ]  # for child/mount_work.py only; gone at its exec of the runner
    for name, value in child_env().items():
        args += ["--setenv", name, value]
    for path in SYSTEM_DIRS:
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    for path in SYSTEM_FILES:
        if os.path.isfile(path):
            args += ["--ro-bind", path, path]
    for path in interpreter_dirs(python):
        args += ["--ro-bind", staged.get(path, path), path]
    args += [
        "--ro-bind",
        staged.get(str(CHILD_DIR), str(CHILD_DIR)),
        INSIDE_LIB,
        "--ro-bind",
        staged.get(str(in_dir), str(in_dir)),
        INSIDE_IN,
        "--dir",
        INSIDE_WORK,
        "--dir",
        "/dev",
    ]
    for dev in DEVICES:
        args += ["--dev-bind", dev, dev]
    args += [
        "--remount-ro",
        "/",
        "--seccomp",
        str(seccomp_fd),
        "--info-fd",
        str(info_fd),
        "--chdir",
        "/",
        "--",
        python,
        "-I",
        "-S",
        f"{INSIDE_LIB}/mount_work.py",
        str(disk_bytes),
        str(max_files),
        str(SANDBOX_UID),
        str(SANDBOX_UID),
        INSIDE_WORK,
        "--",
        python,
        "-I",
        f"{INSIDE_LIB}/runner.py",
        f"{INSIDE_IN}/config.json",
    ]
    return args
