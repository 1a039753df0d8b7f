"""Red team: every escape class of issue 13's security review, tried against the real sandbox.

Each test runs the attack as model-written code in real bubblewrap — the one isolation mode the project
ships — with both interpreters a worker may have (`worker-python`: the venv, here under a 0700 /root, so a
root worker stages it through a private mount namespace for bubblewrap started as nobody; `system-python`:
/usr/bin/python3, reachable as it is), and asserts it is blocked or refused.  Where an
attack's failure could be the attack's own bug, a control runs the same code unsandboxed and shows it works
there.  Runs are short (timeouts of a few seconds), write at most the disk cap, and leave nothing behind.
"""

from __future__ import annotations

import ast
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from models.sandbox import PROJECT_ROOT, RunResult, Sandbox, SandboxLimits, SandboxUnavailable, seccomp
from models.settings import Settings
from tests.sandbox_support import PYTHONS, sandbox_or_skip


@pytest.fixture(params=sorted(PYTHONS))
def box(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Sandbox]:
    python = PYTHONS[request.param]
    if not os.path.exists(python):
        pytest.skip(f"no {python} here")
    limits = SandboxLimits(timeout=8.0, cpu_seconds=5, allowed_modules=[], hide_paths=[str(tmp_path / "data")])
    # Run directories go under a fresh temp dir (reachable by nobody, like /tmp), so a test can see that
    # nothing is left behind.
    runs = Path(tempfile.mkdtemp(prefix="redteam-runs-", dir=tempfile.gettempdir()))
    os.chmod(runs, 0o755)
    monkeypatch.setattr(tempfile, "tempdir", str(runs))
    try:
        yield sandbox_or_skip(limits, python)
        assert list(runs.iterdir()) == [], "a run directory was left behind"
    finally:
        shutil.rmtree(runs, ignore_errors=True)


@pytest.fixture
def secret_file() -> Iterator[tuple[Path, str]]:
    """A `.env`-like secret in the project tree (the real `.env` may not exist here)."""
    value = "DISCORD_TOKEN=" + secrets.token_hex(12)
    path = PROJECT_ROOT / f".redteam-{secrets.token_hex(4)}.env"
    path.write_text(value)
    yield path, value
    path.unlink(missing_ok=True)


def run(box: Sandbox, code: str, timeout: float | None = None) -> RunResult:
    return box.run(textwrap.dedent(code), timeout=timeout)


def unsandboxed(code: str) -> str:
    """The control: the same attack with the plain interpreter and no sandbox."""
    done = subprocess.run(
        [sys.executable, "-I", "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": "/usr/bin:/bin"},
    )
    return done.stdout + done.stderr


# ------------------------------------------------------------------------------------ files and secrets
def test_bytes_paths_and_dir_fd(box: Sandbox, secret_file: tuple[Path, str]) -> None:
    path, value = secret_file
    code = f"""
        import os
        for attempt in (lambda: open({bytes(path)!r}).read(),
                        lambda: os.read(os.open({path.name!r}, os.O_RDONLY,
                                                dir_fd=os.open({bytes(path.parent)!r}, os.O_RDONLY)), 200),
                        lambda: os.listdir({bytes(path.parent)!r})):
            try:
                print("GOT", attempt())
            except OSError as exc:
                print("refused:", type(exc).__name__)
    """
    assert value in unsandboxed(code)
    result = run(box, code)
    assert value not in result.for_model() and path.name not in result.stdout
    # The project directory exists only as the parent of the venv's mount point, when the venv is inside it.
    if "GOT" in result.stdout:
        assert result.stdout.count("refused:") == 2, result.for_model()
        assert Path(sys.prefix).parent == PROJECT_ROOT
        assert result.stdout.split("GOT ")[-1].strip() == f"[{Path(sys.prefix).name.encode()!r}]"
    else:
        assert result.stdout.count("refused:") == 3, result.for_model()


def test_proc_of_the_worker_is_invisible(box: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    token = "discord-" + secrets.token_hex(8)
    monkeypatch.setenv("DISCORD_TOKEN", token)
    result = run(
        box,
        f"""
        import os
        for path in ("/proc/{os.getpid()}/environ", "/proc/{os.getpid()}/mem", "/proc/1/environ",
                     "/proc/self/maps", "/proc/self/environ"):
            try:
                print("GOT", open(path, "rb").read(100))
            except OSError as exc:
                print("refused:", type(exc).__name__)
        print(sorted(os.environ))
    """,
    )
    assert token not in result.for_model() and "DISCORD_TOKEN" not in result.stdout
    assert result.stdout.count("refused:") == 5, result.for_model()


def test_project_data_dir_and_home_do_not_exist(
    box: Sandbox, secret_file: tuple[Path, str], settings: Settings
) -> None:
    path, value = secret_file
    result = run(
        box,
        f"""
        import os
        for p in ({str(PROJECT_ROOT / ".env")!r}, {str(path)!r}, {str(PROJECT_ROOT / "pyproject.toml")!r},
                  {str(settings.data_dir)!r}, {str(Path.home())!r} + "/.ssh", "/etc/passwd", "/run"):
            print(p, os.path.exists(p))
        print(sorted(os.listdir("/")))
        print("TMP", sorted(os.listdir("/tmp")) if os.path.isdir("/tmp") else [])
    """,
    )
    assert result.ok, result.for_model()
    assert value not in result.for_model()
    assert " True" not in result.stdout, result.stdout
    # /tmp may exist only as the way to the read-only interpreter (a checkout under /tmp, as CI's may be).
    tmp = next(line for line in result.stdout.splitlines() if line.startswith("TMP "))
    allowed = {Path(p).relative_to("/tmp").parts[0] for p in (sys.prefix, sys.base_prefix) if p.startswith("/tmp/")}
    assert set(ast.literal_eval(tmp[4:])) <= allowed, tmp


def test_writes_into_the_venv_fail(box: Sandbox) -> None:
    planted = Path(sys.prefix) / f"redteam-{secrets.token_hex(4)}.pth"
    site = Path(os.__file__).parent
    result = run(
        box,
        f"""
        for p in ({str(planted)!r}, {str(site / "redteam.py")!r}, "/usr/redteam", "/redteam"):
            try:
                open(p, "w").write("import os")
                print("WROTE", p)
            except OSError as exc:
                print("refused:", type(exc).__name__)
    """,
    )
    assert "WROTE" not in result.stdout, result.for_model()
    assert not planted.exists() and not (site / "redteam.py").exists()


def test_policy_hook_tampered_with_then_spawn(box: Sandbox, secret_file: tuple[Path, str]) -> None:
    """The audit hook is policy: clear its tables from the code, and the seccomp filter still refuses."""
    path, value = secret_file
    result = run(
        box,
        f"""
        import sys, subprocess
        main = sys.modules["__main__"]
        main.SPAWN.clear()  # the hook's own globals
        try:
            print("GOT", subprocess.run(["/bin/cat", {str(path)!r}], capture_output=True, text=True).stdout)
        except OSError as exc:
            print("refused:", type(exc).__name__, exc.errno)
    """,
    )
    assert value not in result.for_model()
    assert "refused: PermissionError 1" in result.stdout, result.for_model()


def test_posixsubprocess_fork_exec(box: Sandbox) -> None:
    # The private call subprocess makes, with its audit event skipped (3.11's signature; later ones tried too).
    code = """
        import _posixsubprocess, os
        r, w = os.pipe()
        args = [[b"/bin/true"], [b"/bin/true"], True, (w,), None, None, -1, -1, -1, -1, -1, -1, r, w, True, False]
        for tail in ([-1, None, None, None, -1, None, False], [-1, None, None, None, -1, None]):
            try:
                pid = _posixsubprocess.fork_exec(*args, *tail)
                print("SPAWNED", pid)
                break
            except TypeError:
                continue
            except OSError as exc:
                print("refused:", type(exc).__name__, exc.errno)
                break
    """
    assert "SPAWNED" in unsandboxed(code)
    result = run(box, code)
    assert "SPAWNED" not in result.stdout
    assert "refused: PermissionError 1" in result.stdout, result.for_model()


def test_ctypes_libc_fork_clone_and_x32(box: Sandbox) -> None:
    """libc reached through ctypes (no /proc/self/maps is needed for that): fork, clone, clone3, vfork, x32."""
    code = """
        import ctypes, os
        libc = ctypes.CDLL(None, use_errno=True)
        for name, nr, arg in (("fork", 57, 0), ("clone", 56, 17), ("x32-getpid", 0x40000000 | 39, 0)):
            ret = libc.syscall(nr, arg, 0, 0, 0, 0)
            if ret == 0:
                os._exit(0)
            print(name, "ok" if ret > 0 else "refused", ctypes.get_errno() if ret < 0 else "")
    """
    if seccomp.machine() != "x86_64":
        pytest.skip("syscall numbers in this attack are x86-64's")
    assert "fork ok" in unsandboxed(code)
    result = run(box, code)
    assert "fork refused 1" in result.stdout and "clone refused 1" in result.stdout, result.for_model()
    assert "x32-getpid refused 38" in result.stdout  # ENOSYS


def test_no_capabilities_mount_or_new_namespaces(box: Sandbox) -> None:
    result = run(
        box,
        """
        import ctypes, struct
        libc = ctypes.CDLL(None, use_errno=True)
        header = ctypes.create_string_buffer(struct.pack("II", 0x20080522, 0))
        data = ctypes.create_string_buffer(24)
        libc.capget(header, data)
        print("caps", struct.unpack("6I", data.raw))
        print("mount", libc.mount(b"tmpfs", b"/sandbox/work", b"tmpfs", 0, b"size=1g"), ctypes.get_errno())
        print("remount", libc.mount(None, b"/usr", None, 0x20 | 0x1000, None), ctypes.get_errno())
        print("unshare", libc.unshare(0x10000000), ctypes.get_errno())
        print("setns", libc.setns(0, 0), ctypes.get_errno())
    """,
    )
    assert "caps (0, 0, 0, 0, 0, 0)" in result.stdout, result.for_model()
    for call in ("mount", "remount", "unshare"):
        assert f"{call} -1 1" in result.stdout, result.for_model()


# ------------------------------------------------------------------------------------------ network
def test_redis_on_loopback_and_network(box: Sandbox, redis_server: object) -> None:
    port = redis_server.port  # type: ignore[attr-defined]
    code = f"""
        import socket
        for host, port in (("127.0.0.1", {port}), ("1.1.1.1", 53), ("169.254.169.254", 80)):
            try:
                s = socket.create_connection((host, port), timeout=1)
                s.sendall(b"PING\\r\\n")
                print("CONNECTED", host, s.recv(7))
            except OSError as exc:
                print("refused:", host, type(exc).__name__)
    """
    assert "CONNECTED 127.0.0.1 b'+PONG" in unsandboxed(code)
    result = run(box, code)
    assert "CONNECTED" not in result.stdout
    assert result.stdout.count("refused:") == 3, result.for_model()


# ------------------------------------------------------------------------------------------ processes
def _marked_processes(marker: str) -> list[str]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if Path(f"/proc/{entry}/comm").read_text().strip() == marker:
                    found.append(entry)
            except OSError:
                pass
    return found


def test_setsid_survivor_after_timeout(box: Sandbox) -> None:
    """setsid(), then every way to leave a process behind; at the timeout nothing survives, nothing is left."""
    marker = "rt" + secrets.token_hex(5)
    result = run(
        box,
        f"""
        import ctypes, os, threading
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(15, {marker.encode()!r}, 0, 0, 0)  # PR_SET_NAME: the host can find us by it
        try:
            os.setsid()
        except OSError as exc:
            print("setsid:", exc.errno)
        for attempt in (os.fork, lambda: libc.fork(), lambda: libc.syscall(56, 17, 0, 0, 0, 0)):
            try:
                pid = attempt()
                if pid == 0:
                    break
                print("child" if pid > 0 else "refused")
            except OSError:
                print("refused")
        def burn():
            n = 0
            while True:
                n += 1
                if n % 100000 == 0:
                    open("f%d" % (n % 7), "w").write("x" * 4096)
        for _ in range(3):
            threading.Thread(target=burn, daemon=True).start()
        print("burning", flush=True)
        burn()
    """,
        timeout=2.0,
    )
    assert result.timed_out and "burning" in result.stdout, result.for_model()
    assert "child" not in result.stdout and result.stdout.count("refused") == 3
    assert _marked_processes(marker) == []


def test_the_code_is_never_host_root(box: Sandbox) -> None:
    """Seen from the host, the sandboxed process is nobody (or the worker's own non-root user), never uid 0."""
    import threading

    marker = "rt" + secrets.token_hex(5)
    results: list[RunResult] = []
    thread = threading.Thread(
        target=lambda: results.append(
            run(
                box,
                f"""
        import ctypes, time
        ctypes.CDLL(None).prctl(15, {marker.encode()!r}, 0, 0, 0)
        time.sleep(1.5)
    """,
                timeout=6,
            )
        )
    )
    thread.start()
    uids: list[int] = []
    try:
        for _ in range(100):
            pids = _marked_processes(marker)
            if pids:
                status = Path(f"/proc/{pids[0]}/status").read_text()
                uids = [int(v) for v in status.split("Uid:")[1].split()[:4]]
                break
            threading.Event().wait(0.05)
    finally:
        thread.join()
    assert uids, "the sandboxed process was not found from the host"
    expected = 65534 if os.geteuid() == 0 else os.geteuid()
    assert uids == [expected] * 4
    assert results and results[0].ok, results


def test_thread_flood_is_bounded(box: Sandbox) -> None:
    result = run(
        box,
        """
        import threading
        threading.stack_size(32768)
        stop = threading.Event()
        n = 0
        try:
            while n < 100000:
                threading.Thread(target=stop.wait).start()
                n += 1
        except RuntimeError as exc:
            print("refused:", exc)
        print("threads", n, flush=True)
        stop.set()
    """,
    )
    assert "refused: can't start new thread" in result.stdout, result.for_model()
    assert int(result.stdout.split("threads")[1]) < box.limits.max_processes  # RLIMIT_NPROC, not memory


def test_kill_the_parent_and_everyone(box: Sandbox) -> None:
    result = run(
        box,
        f"""
        import os, signal
        for pid in (os.getppid(), 1, {os.getpid()}, -1):
            try:
                os.kill(pid, signal.SIGKILL)
                print("sent", pid)
            except OSError as exc:
                print("refused", pid, exc.errno)
        for pid in (1, {os.getpid()}):
            try:
                fd = os.pidfd_open(pid)
                signal.pidfd_send_signal(fd, signal.SIGKILL)
                print("pidfd sent", pid)
            except OSError as exc:
                print("pidfd refused", pid, exc.errno)
        print("still here")
    """,
    )
    assert "still here" in result.stdout, result.for_model()  # PID 1 of the namespace ignores SIGKILL from inside
    assert f"refused {os.getpid()} 3" in result.stdout  # ESRCH: the worker is not in the PID namespace
    assert "pidfd sent" not in result.stdout
    os.kill(os.getpid(), 0)


def test_fork_bomb(box: Sandbox) -> None:
    result = run(
        box,
        """
        import ctypes, os
        libc = ctypes.CDLL(None, use_errno=True)
        failures = 0
        for _ in range(10000):
            pid = libc.fork()
            if pid == 0:
                os._exit(0)
            failures += pid < 0
        print("failures", failures)
    """,
    )
    assert "failures 10000" in result.stdout, result.for_model()
    assert not result.timed_out


# ------------------------------------------------------------------------------------------ memory
def test_sysv_shm_and_message_queues_refused(box: Sandbox) -> None:
    key = secrets.randbelow(2**30) + 1
    code = f"""
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        shm = libc.shmget({key}, 64 << 20, 0o1600)
        print("shmget", shm, ctypes.get_errno() if shm < 0 else "")
        msg = libc.msgget({key}, 0o1600)
        print("msgget", msg, ctypes.get_errno() if msg < 0 else "")
    """
    result = run(box, code)
    assert "shmget -1 1" in result.stdout and "msgget -1 1" in result.stdout, result.for_model()
    if os.path.exists("/proc/sysvipc/shm"):
        assert f"{key:>10}" not in Path("/proc/sysvipc/shm").read_text()


def test_memfd_and_posix_shm_refused(box: Sandbox) -> None:
    result = run(
        box,
        """
        import os, mmap
        try:
            fd = os.memfd_create("x")
            os.ftruncate(fd, 1 << 30)
            m = mmap.mmap(fd, 1 << 30)
            m.write(b"x" * (1 << 30))
            print("ALLOCATED")
        except OSError as exc:
            print("memfd refused:", exc.errno)
        print("/dev/shm exists:", os.path.exists("/dev/shm"))
    """,
    )
    assert "memfd refused: 1" in result.stdout, result.for_model()
    assert "/dev/shm exists: False" in result.stdout


def test_big_allocations(box: Sandbox) -> None:
    result = run(
        box,
        """
        import mmap
        try:
            m = mmap.mmap(-1, 2 << 30)
            print("MAPPED")
        except OSError as exc:
            print("mmap refused:", exc.errno)
        data = bytearray(4 * 1024 ** 3)
        print("ALLOCATED")
    """,
    )
    assert "MAPPED" not in result.stdout and "ALLOCATED" not in result.stdout
    assert "mmap refused: 12" in result.stdout and "MemoryError" in result.stderr, result.for_model()


# ------------------------------------------------------------------------------------------ disk
def test_two_gib_in_many_files_hits_the_disk_cap(box: Sandbox) -> None:
    result = run(
        box,
        """
        chunk = b"0" * (1 << 20)
        written = 0
        try:
            for i in range(136):
                with open("part%d.bin" % i, "wb") as f:
                    for _ in range(15):
                        f.write(chunk)
                        written += 1
        except OSError as exc:
            print("stopped:", exc.errno)
        print("MiB", written)
    """,
    )
    assert "stopped: 28" in result.stdout, result.for_model()  # ENOSPC
    written = int(result.stdout.split("MiB")[1])
    assert written <= box.limits.disk_mb


def test_many_empty_pngs_hit_the_inode_cap(box: Sandbox) -> None:
    result = run(
        box,
        """
        n = 0
        try:
            while n < 116000:
                open("f%06d.png" % n, "w").close()
                n += 1
        except OSError as exc:
            print("stopped:", exc.errno)
        print("files", n)
    """,
    )
    assert "stopped: 28" in result.stdout, result.for_model()
    files = int(result.stdout.split("files")[1])
    assert files < box.limits.max_files  # the tmpfs's nr_inodes, not 116,000
    assert result.figures == []
    assert any("files were looked at" in note for note in result.notes)  # the scan stopped at its count


def test_symlinked_and_hardlinked_figures(box: Sandbox, secret_file: tuple[Path, str]) -> None:
    path, value = secret_file
    result = run(
        box,
        f"""
        import os
        png = b"\\x89PNG\\r\\n\\x1a\\n" + b"x" * 64
        os.symlink({str(path)!r}, "leak.png")
        os.symlink("/sandbox/in/config.json", "config.png")
        open("real.png", "wb").write(png)
        os.link("real.png", "twin.png")
        open("own.png", "wb").write(png)
    """,
    )
    assert result.ok, result.for_model()
    assert [f.name for f in result.figures] == ["own.png"]  # links are never returned
    assert all(value.encode() not in f.data for f in result.figures)


# ------------------------------------------------------------------------------------------ output
def test_control_sequences_and_nul_are_stripped_for_display(box: Sandbox) -> None:
    result = run(
        box,
        r"""
        print("\x1b[2J\x1b[31mred\x1b[0m \x1b]0;pwned\x07title \x00nul \u202eevil\u202c \x9b1mend\rcr")
    """,
    )
    shown = result.for_display()
    assert "red" in shown and "title" in shown and "nul" in shown and "evil" in shown
    for bad in ("\x1b", "\x00", "\x07", "\u202e", "\x9b", "\r", "pwned"):
        assert bad not in shown and bad not in result.for_model()


def test_endless_loop_is_stopped(box: Sandbox) -> None:
    result = run(box, "while True:\n    pass", timeout=1.5)
    assert result.timed_out and any("time limit" in n for n in result.notes), result.for_model()


# ------------------------------------------------------------------------------------------ no fallback
def test_missing_bubblewrap_means_no_sandbox_not_a_weaker_one() -> None:
    with pytest.raises(SandboxUnavailable, match="bubblewrap is not installed"):
        _ = Sandbox(SandboxLimits(bwrap="/nonexistent/bwrap")).isolation


def test_off_means_off() -> None:
    with pytest.raises(SandboxUnavailable, match="switched off"):
        _ = Sandbox(SandboxLimits(isolation="off")).isolation


def test_old_audit_mode_is_refused_at_startup() -> None:
    with pytest.raises(ValueError, match="audit was removed"):
        Settings(sandbox_isolation="audit")
    assert Settings(sandbox_isolation="auto").sandbox_isolation == "bubblewrap"


def test_interpreter_holding_the_project_is_refused(tmp_path: Path) -> None:
    if shutil.which("bwrap") is None:
        pytest.skip("needs bwrap on PATH to get past the first check")
    limits = SandboxLimits(hide_paths=[sys.prefix])
    with pytest.raises(SandboxUnavailable, match="must stay hidden"):
        _ = Sandbox(limits).isolation


def test_installed_package_inside_the_venv_is_not_a_reason_to_refuse(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Docker images install the project into the venv (no checkout, no .env there): the sandbox still runs."""
    from models.sandbox import core

    monkeypatch.setattr(core, "PROJECT_ROOT", Path(sys.prefix) / "lib" / "site-packages")
    assert sandbox_or_skip(SandboxLimits(allowed_modules=[])).isolation == "bubblewrap"


WORKER_AS_NOBODY = """
import json, sys
sys.path.insert(0, {root!r})
from models.sandbox import Sandbox, SandboxLimits
box = Sandbox(SandboxLimits(allowed_modules=[], timeout=8), announce=False)
out = {{"isolation": box.isolation}}
out["attack"] = box.run('''
import os, socket, ctypes
print("uid", os.getuid())
for path in ({secret!r}, "/proc/1/environ"):
    try:
        print("GOT", open(path).read())
    except OSError as exc:
        print("refused", type(exc).__name__)
try:
    socket.create_connection(("127.0.0.1", {port}), timeout=1)
    print("CONNECTED")
except OSError:
    print("refused net")
print("fork", ctypes.CDLL(None).fork())
''').stdout
print(json.dumps(out))
"""


def test_a_non_root_worker_runs_bubblewrap_as_itself(secret_file: tuple[Path, str], redis_server: object) -> None:
    """The Docker images' case: the worker is an ordinary user, so bubblewrap runs unprivileged as that user."""
    import json

    if os.geteuid() != 0 or not shutil.which("setpriv") or not os.path.exists("/usr/bin/python3"):
        pytest.skip("needs root, setpriv and /usr/bin/python3 to start a worker as nobody")
    path, value = secret_file
    script = WORKER_AS_NOBODY.format(root=str(PROJECT_ROOT), secret=str(path), port=redis_server.port)  # type: ignore[attr-defined]
    done = subprocess.run(
        ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", "/usr/bin/python3", "-I", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
        env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "DISCORD_TOKEN": value},
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["isolation"] == "bubblewrap"
    attack = out["attack"]
    assert "uid 65534" in attack and value not in attack and "GOT" not in attack, attack
    assert attack.count("refused") == 3 and "fork -1" in attack, attack


def test_root_fallback_holds_with_one_thread(secret_file: tuple[Path, str], redis_server: object) -> None:
    """Where nobody gets no user namespace, a root worker runs bubblewrap as root: the code is then host uid 0
    without capabilities, and one thread (RLIMIT_NPROC does not bind uid 0) — still no secrets or network."""
    if os.geteuid() != 0:
        pytest.skip("the fallback exists for root workers only")
    path, value = secret_file
    box = sandbox_or_skip(SandboxLimits(allowed_modules=[], timeout=8))
    box.as_root = True  # what _resolve sets when bubblewrap fails as nobody
    port = redis_server.port  # type: ignore[attr-defined]
    result = run(
        box,
        f"""
        import ctypes, os, socket, struct, threading
        libc = ctypes.CDLL(None, use_errno=True)
        try:
            threading.Thread(target=print).start()
            print("THREAD")
        except RuntimeError:
            print("refused thread")
        print("fork", libc.fork())
        try:
            print("GOT", open({str(path)!r}).read())
        except OSError:
            print("refused file")
        try:
            socket.create_connection(("127.0.0.1", {port}), timeout=1)
            print("CONNECTED")
        except OSError:
            print("refused net")
        header = ctypes.create_string_buffer(struct.pack("II", 0x20080522, 0))
        data = ctypes.create_string_buffer(24)
        libc.capget(header, data)
        print("caps", struct.unpack("6I", data.raw))
    """,
    )
    out = result.stdout
    assert "refused thread" in out and "fork -1" in out and "refused file" in out and "refused net" in out, out
    assert "caps (0, 0, 0, 0, 0, 0)" in out and value not in result.for_model()


def test_a_host_that_gains_bubblewrap_gets_python_back_without_a_restart(monkeypatch: pytest.MonkeyPatch) -> None:
    """A failed probe is remembered for RECHECK_S (no bwrap run per agent task), then tried again: here
    bubblewrap "gets installed" (a link appears where SANDBOX_BWRAP points) and the same Sandbox object runs
    code in it.  SANDBOX_ISOLATION=off is never re-probed."""
    from models.sandbox import core

    real = shutil.which("bwrap")
    if real is None:
        pytest.skip("needs bwrap to install")
    sandbox_or_skip(SandboxLimits())  # this machine can run the sandbox at all (fails under SANDBOX_TESTS_REQUIRE)
    # Not pytest's tmp_path: a root worker starts bubblewrap as nobody, who cannot walk a 0700 directory.
    root = Path(tempfile.mkdtemp(prefix="bwrap-install-"))
    root.chmod(0o755)
    try:
        where = root / "bin" / "bwrap"
        box = Sandbox(SandboxLimits(bwrap=str(where)))
        with pytest.raises(SandboxUnavailable, match="not installed"):
            _ = box.isolation
        where.parent.mkdir(mode=0o755)
        where.symlink_to(real)
        with pytest.raises(SandboxUnavailable, match="not installed"):  # within RECHECK_S: the failure is kept
            _ = box.isolation
        monkeypatch.setattr(core, "RECHECK_S", 0.0)
        assert box.isolation == "bubblewrap"
        result = box.run("print(6 * 7)")
        assert result.ok and result.stdout.strip() == "42", result.for_model()
        off = Sandbox(SandboxLimits(isolation="off"))
        for _ in range(2):
            with pytest.raises(SandboxUnavailable, match="switched off"):
                _ = off.isolation
    finally:
        shutil.rmtree(root)
