"""Start bubblewrap as nobody from a root worker, even when nobody cannot reach the paths it must bind.

Run by a root worker as `python -I -S nobody.py UID GID N SRC1 DST1 ... SRCN DSTN -- BWRAP ARGS...`.  It:

1. enters a new, private mount namespace (never the host's: its mounts vanish when bubblewrap exits);
2. bind-mounts each SRC (for example a pyenv interpreter under a 0700 `/root`) onto DST, an empty directory
   the worker made where nobody can reach it;
3. drops to UID/GID with no supplementary groups and execs bubblewrap, which binds the DSTs into the sandbox.

Why not let bubblewrap run as root: the code would then be the host's uid 0 without capabilities, and the
kernel does not apply `RLIMIT_NPROC` to uid 0, so a thread flood would be bounded only by the address space
(core.py does so only where nobody gets no user namespace, and then allows the code a single thread).
Why not just run it as nobody: bubblewrap resolves every source path as its own user.

Imports nothing of the project (it is started by path, with `-I -S`).
"""

from __future__ import annotations

import ctypes
import os
import sys

CLONE_NEWNS = 0x00020000
MS_BIND, MS_REC, MS_PRIVATE = 4096, 16384, 1 << 18
EXIT_SETUP_FAILED = 120


def die(message: str) -> None:
    os.write(2, f"sandbox setup failed: {message}\n".encode())
    os._exit(EXIT_SETUP_FAILED)


def main(argv: list[str]) -> None:
    uid, gid, count = int(argv[0]), int(argv[1]), int(argv[2])
    pairs = argv[3 : 3 + 2 * count]
    if argv[3 + 2 * count] != "--":
        die("usage: nobody.py UID GID N SRC DST ... -- BWRAP ARGS...")
    command = argv[4 + 2 * count :]
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
    if libc.unshare(CLONE_NEWNS) != 0:
        die(f"unshare(CLONE_NEWNS): {os.strerror(ctypes.get_errno())}")
    if libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None) != 0:
        die(f"make / private: {os.strerror(ctypes.get_errno())}")
    for src, dst in zip(pairs[::2], pairs[1::2], strict=True):
        if libc.mount(src.encode(), dst.encode(), None, MS_BIND | MS_REC, None) != 0:
            die(f"bind {src}: {os.strerror(ctypes.get_errno())}")
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    if os.getuid() != uid or os.geteuid() != uid:
        die("could not drop to the sandbox user")
    os.execv(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
