"""The sandbox's seccomp program, read instruction by instruction, for both architectures it supports.

The red-team tests run the filter for real on this machine's architecture; this file also covers the other one
(AArch64 on an x86-64 machine, or the reverse) by evaluating the classic-BPF program the way the kernel does
for the handful of opcodes it uses, and checks the syscall numbers against the kernel headers when they are
installed (/usr/include/x86_64-linux-gnu/asm/unistd_64.h, /usr/include/asm-generic/unistd.h).
"""

from __future__ import annotations

import errno
import re
import struct
from pathlib import Path

import pytest

from models.sandbox import seccomp

ALLOW, KILL = seccomp.SECCOMP_RET_ALLOW, seccomp.SECCOMP_RET_KILL_PROCESS
EPERM, ENOSYS = seccomp.SECCOMP_RET_ERRNO | errno.EPERM, seccomp.SECCOMP_RET_ERRNO | errno.ENOSYS
HEADERS = {
    "x86_64": Path("/usr/include/x86_64-linux-gnu/asm/unistd_64.h"),
    "aarch64": Path("/usr/include/asm-generic/unistd.h"),
}


def evaluate(program: bytes, nr: int, arch: int, arg0: int = 0) -> int:
    """What the kernel's classic-BPF interpreter returns for one syscall (only the opcodes the filter uses)."""
    data = struct.pack("=iIQ6Q", nr, arch, 0, arg0, 0, 0, 0, 0, 0)
    insns = [struct.unpack_from("=HBBI", program, i) for i in range(0, len(program), 8)]
    acc, pc = 0, 0
    while True:
        code, jt, jf, k = insns[pc]
        if code == seccomp.BPF_LD_W_ABS:
            acc = struct.unpack_from("=I", data, k)[0]
        elif code == seccomp.BPF_RET_K:
            return k
        elif code in (seccomp.BPF_JEQ_K, seccomp.BPF_JGE_K, seccomp.BPF_JSET_K):
            taken = {seccomp.BPF_JEQ_K: acc == k, seccomp.BPF_JGE_K: acc >= k, seccomp.BPF_JSET_K: bool(acc & k)}[code]
            pc += jt if taken else jf
        else:
            raise AssertionError(f"unexpected opcode {code:#x}")
        pc += 1


@pytest.mark.parametrize("arch", sorted(seccomp.SYSCALLS))
def test_filter_decisions(arch: str) -> None:
    program, numbers, audit = seccomp.program(arch), seccomp.SYSCALLS[arch], seccomp.AUDIT_ARCH[arch]
    assert len(program) % 8 == 0 and len(program) // 8 < 4096  # BPF_MAXINSNS
    for name in seccomp.DENIED:
        if name in numbers:
            assert evaluate(program, numbers[name], audit) == EPERM, name
    assert evaluate(program, numbers["clone3"], audit) == ENOSYS
    thread = 0x3D0F00  # what glibc's pthread_create passes: CLONE_VM|FS|FILES|SIGHAND|THREAD|SYSVSEM|SETTLS|...
    assert evaluate(program, numbers["clone"], audit, thread) == ALLOW
    assert evaluate(program, numbers["clone"], audit, 0x01200011) == EPERM  # fork(): SIGCHLD|CHILD_SETTID|CLEARTID
    assert evaluate(program, numbers["clone"], audit, thread | 0x10000000) == EPERM  # + CLONE_NEWUSER
    for ordinary in (0, 1, 3):  # read/write/close on x86-64; io_setup, io_destroy, io_cancel on AArch64
        assert evaluate(program, ordinary, audit) == ALLOW
    other = next(a for n, a in seccomp.AUDIT_ARCH.items() if n != arch)
    assert evaluate(program, 0, other) == KILL
    assert evaluate(program, 0, 0x40000003) == KILL  # AUDIT_ARCH_I386
    if arch == "x86_64":
        assert evaluate(program, 0x40000000 | 39, audit) == ENOSYS  # x32 getpid


@pytest.mark.parametrize("arch", sorted(seccomp.SYSCALLS))
def test_syscall_numbers_match_the_kernel_headers(arch: str) -> None:
    header = HEADERS[arch]
    if not header.exists():
        pytest.skip(f"{header} is not installed")
    text = header.read_text()
    for name, number in seccomp.SYSCALLS[arch].items():
        found = re.search(rf"#define __NR(?:3264)?_{name}\s+(\d+)", text)
        assert found and int(found.group(1)) == number, name


@pytest.mark.parametrize("arch", sorted(seccomp.SYSCALLS))
def test_one_thread_filter_refuses_threads_too(arch: str) -> None:
    program, numbers, audit = seccomp.program(arch, threads=False), seccomp.SYSCALLS[arch], seccomp.AUDIT_ARCH[arch]
    assert evaluate(program, numbers["clone"], audit, 0x3D0F00) == EPERM
    assert evaluate(program, numbers["clone3"], audit) == ENOSYS
    assert evaluate(program, 0, audit) == ALLOW


def test_unknown_architecture_is_refused() -> None:
    with pytest.raises(seccomp.UnsupportedArchitecture):
        seccomp.program("riscv64")
