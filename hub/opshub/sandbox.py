"""Single-use sandboxes for the execution plane's untrusted code (an unattended run, a live
dashboard's kernel), with bubblewrap (Debian's `bubblewrap`, the `bwrap` command).

A sandbox sees the machine's files read-only, as its account could anyway (the Python environment,
/usr, /etc), except:

- every home (`/home`, and `home` wherever it is) is hidden, and `home` is a fresh empty folder;
- /tmp, /var/tmp, /run, /dev/shm are fresh and empty;
- `keep` (the Python environment and opshub's code) stay visible, read-only, even under a home;
- `work` (the run's folder) is the one place of the machine it can write, and the caller removes it;
- each of `hide` (credential files) reads as empty;
- its processes are in a process namespace of their own: it sees no other process of the machine,
  and the first one (`--as-pid-1`) takes all the others with it when it ends;
- its IPC and host name are its own, it cannot create further user namespaces, and it ends when
  the process that started it ends (`--die-with-parent`).

It keeps the network: runbooks ssh to hosts and query monitoring APIs (hub/docs/security.md says
what that reaches). Nothing it writes outlives it: the mounts are its own, and everything but
`work` is a tmpfs that goes with its mount namespace.

In a container (Docker, Kubernetes) the container is the sandbox: one fresh container or pod per
run, with no volume shared between runs; `kind` is then `container` and no bwrap is needed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

BUBBLEWRAP = "bubblewrap"  # a sandbox per run on this machine
CONTAINER = "container"  # the runner's container or pod is the sandbox (Docker, Kubernetes)
NONE = "none"  # no sandbox: every run shares the runner account's home (an explicit, documented choice)
KINDS = (BUBBLEWRAP, CONTAINER, NONE)
SANDBOX_ENV = "OPSHUB_SANDBOX"  # which of KINDS the runner uses, set by the hub's spawner

# Writable places shared by every process of an account, each replaced by a fresh tmpfs.
FRESH_FOLDERS = ("/tmp", "/var/tmp", "/run", "/home")


class SandboxUnavailable(RuntimeError):
    """bubblewrap is missing or cannot create a sandbox here; the message says what to do."""


def python_folders() -> list[Path]:
    """This Python and opshub's code, which a sandbox must keep seeing where a fresh folder above hides
    them (a checkout under /home or /tmp; an editable install's package is on no `sys.path` entry)."""
    opshub = Path(__file__).resolve().parent
    folders = {Path(sys.prefix), Path(sys.base_prefix), opshub, *(Path(p) for p in sys.path if p)}
    return sorted(folder for folder in folders if folder.is_dir())


def bwrap_path() -> str:
    found = shutil.which("bwrap") or ("/usr/bin/bwrap" if os.access("/usr/bin/bwrap", os.X_OK) else None)
    if not found:
        raise SandboxUnavailable(
            "bubblewrap (`bwrap`) is not installed on this machine: install Debian's `bubblewrap` "
            "(apt-get install bubblewrap), or set runner.sandbox to `none` to run unsandboxed"
        )
    return found


def bwrap_command(
    argv: list[str],
    *,
    home: Path,
    work: Path,
    keep: Iterable[Path] = (),
    hide: Iterable[Path] = (),
    info_fd: int | None = None,
    readonly: Iterable[Path] = (),
    chdir: Path | None = None,
) -> list[str]:
    """The command that runs `argv` in a fresh sandbox (see the module's docstring), in `work`.

    `readonly`: files or folders under `work` bound read-only on top of it (a kernel's connection
    file in its sockets folder); `chdir`: where `argv` starts instead of `work` (a live dashboard's
    kernel starts in its dashboard's read-only copy, one of `keep`)."""
    command = [bwrap_path(), "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
    for folder in FRESH_FOLDERS:
        command += ["--tmpfs", folder]
    resolv = Path("/etc/resolv.conf")
    if resolv.is_symlink():  # systemd-resolved's stub lives under /run, hidden above: keep name lookups
        target = resolv.resolve()
        command += ["--ro-bind-try", str(target), str(target)]
    command += ["--tmpfs", str(home)]
    for folder in keep:  # read-only again where a fresh folder above hid it (a checkout under /home)
        command += ["--ro-bind", str(folder), str(folder)]
    command += ["--bind", str(work), str(work)]
    for path in readonly:
        command += ["--ro-bind", str(path), str(path)]
    for path in hide:
        # os.path.exists: False, not PermissionError, for a file in a folder this account may not enter
        # (it cannot read it either, inside or out)
        if os.path.exists(path):
            command += ["--ro-bind", "/dev/null", str(path)]
    command += [
        "--unshare-user",
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--hostname",
        "opshub-sandbox",
        "--disable-userns",
        "--die-with-parent",
        "--new-session",
        "--as-pid-1",
        "--chdir",
        str(chdir or work),
    ]
    if info_fd is not None:
        command += ["--info-fd", str(info_fd)]
    return [*command, "--", *argv]


def sandbox_pid(info: str) -> int:
    """The pid (as this process sees it) of the sandbox's first process, from bwrap's --info-fd JSON."""
    return int(json.loads(info)["child-pid"])


def check_bubblewrap() -> None:
    """Raise SandboxUnavailable, saying why, unless bwrap can create a sandbox for this account here
    (user namespaces may be off: kernel.unprivileged_userns_clone, a container's seccomp profile)."""
    work = Path.cwd()
    probe = bwrap_command(["/bin/true"], home=Path("/tmp/opshub-probe-home"), work=work)
    try:
        result = subprocess.run(probe, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise SandboxUnavailable(f"bubblewrap cannot run here: {e}") from None
    if result.returncode != 0:
        raise SandboxUnavailable(
            f"bubblewrap cannot create a sandbox here: {result.stderr.strip() or f'exit {result.returncode}'} "
            "(user namespaces must be allowed for the runner's account)"
        )
