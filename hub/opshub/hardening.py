"""Hardening of the execution plane's own processes (the runner, the dashboards server)."""

from __future__ import annotations

import ctypes
import ctypes.util


def keep_memory_private() -> None:
    """Make this process non-dumpable (prctl PR_SET_DUMPABLE 0): other processes of the same account,
    such as a runbook's kernel, can no longer read its memory or environment through /proc or ptrace.
    The runner's and the dashboards server's processes hold tokens there; the kernels they start are
    dumpable again (exec resets it), and hold none."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    PR_SET_DUMPABLE = 4
    if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE, 0) failed")
