"""First program inside the sandbox: mount the run's working directory, give up the capability, exec the runner.

Runs as `python -I -S mount_work.py SIZE INODES UID GID WORKDIR -- PYTHON ARGS...` with only CAP_SYS_ADMIN of
bubblewrap's user namespace (`--cap-add`), which it needs because bubblewrap 0.8's `--size` caps a tmpfs's
bytes but not its inodes: an inode costs kernel memory but no tmpfs page, so 116,000 empty files fit in any
size.  Mounting the tmpfs here with `nr_inodes` caps both.  Then it clears the ambient, effective, permitted
and inheritable sets and execs the runner (a non-root uid, no file capabilities, and no_new_privs, which
bubblewrap sets, so `execve` grants none back): the model's code holds no capability at all.

Imports nothing of the project: only the bind-mounted interpreter's standard library is visible.
"""

from __future__ import annotations

import ctypes
import os
import struct
import sys

MS_NOSUID, MS_NODEV = 2, 4
PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 47, 4
LINUX_CAPABILITY_VERSION_3 = 0x20080522
EXIT_SETUP_FAILED = 120


def die(message: str) -> None:
    os.write(2, f"sandbox setup failed: {message}\n".encode())
    os._exit(EXIT_SETUP_FAILED)


def main(argv: list[str]) -> None:
    if len(argv) < 8 or argv[5] != "--":
        die("usage: mount_work.py SIZE INODES UID GID WORKDIR -- PROGRAM ARGS...")
    size, inodes, uid, gid = (int(v) for v in argv[:4])
    workdir, command = argv[4], argv[6:]
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
    options = f"size={size},nr_inodes={inodes},mode=0700,uid={uid},gid={gid}".encode()
    if libc.mount(b"tmpfs", workdir.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, options) != 0:
        die(f"mount tmpfs on {workdir}: {os.strerror(ctypes.get_errno())}")
    if libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0:
        die(f"clear ambient capabilities: {os.strerror(ctypes.get_errno())}")
    header = ctypes.create_string_buffer(struct.pack("=II", LINUX_CAPABILITY_VERSION_3, 0))
    if libc.capset(header, ctypes.create_string_buffer(24)) != 0:  # effective, permitted, inheritable: none
        die(f"drop capabilities: {os.strerror(ctypes.get_errno())}")
    os.chdir(workdir)
    os.execv(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
