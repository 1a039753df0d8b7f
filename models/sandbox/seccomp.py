"""The sandbox's seccomp filter, as the classic-BPF program bubblewrap loads with `--seccomp FD`.

Why a filter at all: namespaces and rlimits leave a few ways to use memory that `RLIMIT_AS` does not count
(`memfd_create`, SysV shared memory and message queues, io_uring rings, userfaultfd) and a few kernel
interfaces model-written code never needs (new namespaces, which would give it capabilities over a fresh
mount namespace; keyrings; bpf; perf; ptrace; the new mount API).  Those are refused with EPERM.

Why hand-written: libseccomp's Python binding is a Debian package, not a wheel; the program is small enough
to write directly (`struct sock_filter` is `u16 code, u8 jt, u8 jf, u32 k`).  The program:

1. kills the process if the syscall's architecture is not the worker's own (blocks the i386 `int 0x80`
   entry on x86-64 and AArch32 compat on arm64, whose syscall numbers differ);
2. on x86-64, refuses the x32 ABI (numbers with bit 30 set);
3. refuses the denied syscalls; `clone3` gets ENOSYS so glibc falls back to `clone`, whose flags *can* be
   inspected (a pointer argument, as `clone3` has, cannot);
4. refuses `fork`/`vfork` and any `clone` without `CLONE_THREAD` or with a `CLONE_NEW*` flag: the code runs as
   **one process** (threads allowed).  Its memory is then bounded by one `RLIMIT_AS` (plus the tmpfs), fork
   bombs are impossible, and this holds even where the kernel does not apply `RLIMIT_NPROC` (a sandbox whose
   host uid is 0);
5. allows everything else.

`mount` itself stays allowed: the first program inside the sandbox mounts the run's size- and inode-capped
tmpfs with a capability it then gives up before the model's code starts (see child/mount_work.py), and code
without capabilities cannot mount anything.
"""

from __future__ import annotations

import errno
import platform
import struct

# BPF opcodes (linux/bpf_common.h) and seccomp return values (linux/seccomp.h).
BPF_LD_W_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS
BPF_JEQ_K = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
BPF_JGE_K = 0x35  # BPF_JMP | BPF_JGE | BPF_K
BPF_JSET_K = 0x45  # BPF_JMP | BPF_JSET | BPF_K
BPF_RET_K = 0x06  # BPF_RET | BPF_K
SECCOMP_RET_KILL_PROCESS = 0x80000000
SECCOMP_RET_ERRNO = 0x00050000
SECCOMP_RET_ALLOW = 0x7FFF0000

# Offsets in struct seccomp_data: int nr; u32 arch; u64 instruction_pointer; u64 args[6] (little-endian).
OFFSET_NR, OFFSET_ARCH, OFFSET_ARG0_LOW = 0, 4, 16

X32_SYSCALL_BIT = 0x40000000
CLONE_NEW_FLAGS = 0x7E020000  # NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET
CLONE_THREAD = 0x00010000

AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}

# Syscall numbers: x86-64 from asm/unistd_64.h, AArch64 from asm-generic/unistd.h.
SYSCALLS: dict[str, dict[str, int]] = {
    "x86_64": {
        "memfd_create": 319,
        "memfd_secret": 447,
        "shmget": 29,
        "shmat": 30,
        "shmctl": 31,
        "shmdt": 67,
        "msgget": 68,
        "msgsnd": 69,
        "msgrcv": 70,
        "msgctl": 71,
        "semget": 64,
        "semop": 65,
        "semctl": 66,
        "semtimedop": 220,
        "unshare": 272,
        "setns": 308,
        "keyctl": 250,
        "add_key": 248,
        "request_key": 249,
        "bpf": 321,
        "perf_event_open": 298,
        "userfaultfd": 323,
        "io_uring_setup": 425,
        "io_uring_enter": 426,
        "io_uring_register": 427,
        "ptrace": 101,
        "process_vm_readv": 310,
        "process_vm_writev": 311,
        "pidfd_send_signal": 424,
        "pidfd_getfd": 438,
        "open_by_handle_at": 304,
        "name_to_handle_at": 303,
        "fanotify_init": 300,
        "fsopen": 430,
        "fsconfig": 431,
        "fsmount": 432,
        "move_mount": 429,
        "open_tree": 428,
        "mount_setattr": 442,
        "pivot_root": 155,
        "umount2": 166,
        "fork": 57,
        "vfork": 58,
        "clone3": 435,
        "clone": 56,
    },
    "aarch64": {
        "memfd_create": 279,
        "memfd_secret": 447,
        "shmget": 194,
        "shmat": 196,
        "shmctl": 195,
        "shmdt": 197,
        "msgget": 186,
        "msgsnd": 189,
        "msgrcv": 188,
        "msgctl": 187,
        "semget": 190,
        "semop": 193,
        "semctl": 191,
        "semtimedop": 192,
        "unshare": 97,
        "setns": 268,
        "keyctl": 219,
        "add_key": 217,
        "request_key": 218,
        "bpf": 280,
        "perf_event_open": 241,
        "userfaultfd": 282,
        "io_uring_setup": 425,
        "io_uring_enter": 426,
        "io_uring_register": 427,
        "ptrace": 117,
        "process_vm_readv": 270,
        "process_vm_writev": 271,
        "pidfd_send_signal": 424,
        "pidfd_getfd": 438,
        "open_by_handle_at": 265,
        "name_to_handle_at": 264,
        "fanotify_init": 262,
        "fsopen": 430,
        "fsconfig": 431,
        "fsmount": 432,
        "move_mount": 429,
        "open_tree": 428,
        "mount_setattr": 442,
        "pivot_root": 41,
        "umount2": 39,
        "clone3": 435,
        "clone": 220,
    },
}
DENIED = [name for name in SYSCALLS["x86_64"] if name not in ("clone", "clone3")]  # fork/vfork: x86-64 only


class UnsupportedArchitecture(RuntimeError):
    """No filter is defined for this CPU architecture (the sandbox then refuses to run code)."""


def machine() -> str:
    """The worker's architecture in the names used here ("x86_64", "aarch64")."""
    name = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(name, name)


def _insn(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)


def _ret(value: int) -> bytes:
    return _insn(BPF_RET_K, value)


def program(arch: str | None = None, *, threads: bool = True) -> bytes:
    """The filter for `arch` (default: this machine) as bytes of `struct sock_filter`, ready for bwrap.

    `threads=False` refuses every `clone`: the code is then one thread, for a sandbox whose host uid is 0, where
    the kernel does not apply `RLIMIT_NPROC` and threads would be bounded only by the address space."""
    arch = arch or machine()
    if arch not in SYSCALLS:
        raise UnsupportedArchitecture(f"the sandbox has no seccomp filter for the {arch} architecture")
    numbers = SYSCALLS[arch]
    eperm = _ret(SECCOMP_RET_ERRNO | errno.EPERM)
    out = [
        _insn(BPF_LD_W_ABS, OFFSET_ARCH),
        _insn(BPF_JEQ_K, AUDIT_ARCH[arch], jt=1, jf=0),
        _ret(SECCOMP_RET_KILL_PROCESS),
        _insn(BPF_LD_W_ABS, OFFSET_NR),
    ]
    if arch == "x86_64":
        out += [_insn(BPF_JGE_K, X32_SYSCALL_BIT, jt=0, jf=1), _ret(SECCOMP_RET_ERRNO | errno.ENOSYS)]
    for name in DENIED:
        if name in numbers:
            out += [_insn(BPF_JEQ_K, numbers[name], jt=0, jf=1), eperm]
    out += [_insn(BPF_JEQ_K, numbers["clone3"], jt=0, jf=1), _ret(SECCOMP_RET_ERRNO | errno.ENOSYS)]
    out += [
        _insn(BPF_JEQ_K, numbers["clone"], jt=0, jf=6),
        _insn(BPF_LD_W_ABS, OFFSET_ARG0_LOW),
        _insn(BPF_JSET_K, CLONE_NEW_FLAGS, jt=0, jf=1),
        eperm,
        _insn(BPF_JSET_K, CLONE_THREAD if threads else 0, jt=1, jf=0),
        eperm,
        _ret(SECCOMP_RET_ALLOW),  # a thread
        _ret(SECCOMP_RET_ALLOW),
    ]
    return b"".join(out)
