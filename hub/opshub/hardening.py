"""Hardening of opshub's own processes: the execution plane's servers (the runner, the dashboards server)
keep their memory private; the hub's services end with the hub."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal


def keep_memory_private() -> None:
    """Make this process non-dumpable (prctl PR_SET_DUMPABLE 0): other processes of the same account,
    such as a runbook's kernel, can no longer read its memory or environment through /proc or ptrace.
    The runner's and the dashboards server's processes hold tokens there; the kernels they start are
    dumpable again (exec resets it), and hold none."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    PR_SET_DUMPABLE = 4
    if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE, 0) failed")


def die_with_parent(signum: int = signal.SIGTERM) -> None:
    """Get `signum` when the process that started this one ends (prctl PR_SET_PDEATHSIG): a hub killed
    with SIGKILL takes its services with it, instead of leaving them on its ports for the next start to
    collide with ("Address already in use"). A parent gone already (we were reparented) counts too."""
    parent = os.getppid()
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    PR_SET_PDEATHSIG = 1
    if libc.prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent or parent == 1:
        os.kill(os.getpid(), signum)
