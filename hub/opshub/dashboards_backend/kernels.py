"""Each live dashboard's kernels, sealed (hub/docs/dashboards.md, "What one dashboard cannot do to
another").

Voila starts a dashboard's kernels (its preheated pool and any fresh one) through jupyter_server's
kernel manager, with the kernel's working folder set to the folder of its notebook. The dashboards
server keeps each published copy in a folder of its own (`published/<name>/<name>.ipynb`), so that
folder says which dashboard a kernel is for. `SandboxedKernelManager` wraps the kernel's command
(`python -I -m ipykernel_launcher -f <connection file>`) in a fresh bubblewrap sandbox
(`opshub.sandbox.bwrap_command`) where the kernel sees:

- its own dashboard's copy, read-only, as its working folder, and the repository's files
  (`OPSHUB_RUNBOOKS_DIR`), read-only; no other dashboard's copy, nor the server's home, which is a
  fresh empty tmpfs (so no `~/.ipython` startup file, no `~/.local` site-packages, nothing another
  dashboard left behind);
- its own folder of kernel sockets: the kernel talks to the server over Unix sockets (ZeroMQ's
  `ipc` transport) in a folder of its own, with its connection file bound read-only, never over
  TCP ports on the loopback, where any other dashboard's code could connect to a kernel's output
  channel and read what it shows;
- a process namespace of its own (it cannot see or signal the server or any other kernel), fresh
  /tmp, /run and /dev/shm, the machine's files read-only; it dies with the server
  (`--die-with-parent`).

It keeps the network, as runs do: dashboards read monitoring APIs and the run summaries.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from pathlib import Path

from jupyter_server.services.kernels.kernelmanager import ServerKernelManager
from traitlets import Bool, List, Unicode

from ..sandbox import bwrap_command


def sealed_kernel_command(
    kernel_cmd: list[str],
    *,
    dashboard: Path,
    sockets: Path,
    connection_file: Path,
    home: Path,
    read_only: list[Path],
) -> list[str]:
    """`kernel_cmd` in a fresh sandbox: `dashboard` (its copy) read-only as its working folder,
    `sockets` its one writable folder, `connection_file` read-only, `read_only` visible read-only."""
    argv = list(kernel_cmd)
    if argv and Path(argv[0]).name.startswith("python") and "-I" not in argv[1:2]:
        argv.insert(1, "-I")  # no folder anybody writes (its working folder, ~/.local) shadows a module
    # the kernel's sockets folder is its `work` (writable: ZeroMQ creates the sockets there); the
    # connection file in it is bound read-only on top; the dashboard's copy read-only, its working folder
    command = bwrap_command(
        argv,
        home=home,
        work=sockets,
        keep=[*read_only, dashboard],
        readonly=[connection_file],
        chdir=dashboard,
    )
    return command


class SandboxedKernelManager(ServerKernelManager):
    """A dashboard kernel's manager: its kernel runs sealed (the module's docstring)."""

    sealed = Bool(True, config=True, help="Run each kernel in a bubblewrap sandbox of its own.")
    home = Unicode("", config=True, help="The dashboards server's home, hidden from kernels.")
    published = Unicode("", config=True, help="The folder of the published copies, one folder each.")
    read_only = List(Unicode(), config=True, help="Folders kernels see read-only (Python, the repository's files).")
    sockets_root = Unicode("", config=True, help="Where each kernel gets a folder for its sockets (a short path).")

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        if self.sealed:
            # a folder of the kernel's own for its connection file and its Unix sockets (short:
            # a socket's path must fit in 107 bytes)
            self.transport = "ipc"
            root = self.sockets_root or tempfile.gettempdir()
            self._sockets = Path(tempfile.mkdtemp(prefix="k", dir=root))
            self.connection_file = str(self._sockets / "kernel.json")
            self.ip = str(self._sockets / "s")

    def dashboard_folder(self, cwd: str | None) -> Path:
        """The dashboard's own folder: the kernel's working folder, which must be one under `published`."""
        published = Path(self.published).resolve()
        folder = Path(cwd or "").resolve()
        if folder.parent != published:
            raise RuntimeError(f"a dashboard kernel must start in its dashboard's folder, not in {folder}")
        return folder

    async def _async_launch_kernel(self, kernel_cmd: list[str], **kw) -> None:
        if self.sealed:
            dashboard = self.dashboard_folder(kw.get("cwd"))
            kernel_cmd = sealed_kernel_command(
                kernel_cmd,
                dashboard=dashboard,
                sockets=self._sockets,
                connection_file=Path(self.connection_file),
                home=Path(self.home),
                read_only=[Path(p) for p in self.read_only if Path(p).exists()],
            )
            kw["cwd"] = str(self._sockets)  # bwrap's own; the kernel's is the dashboard's folder
        return await super()._async_launch_kernel(kernel_cmd, **kw)

    async def _async_cleanup_resources(self, restart: bool = False) -> None:
        # a coroutine, as the async kernel manager's is: its shutdown awaits it, and so do Voila's
        # executor and nbclient (as `cleanup_resources`) when a kernel died before it answered
        await super()._async_cleanup_resources(restart=restart)
        if self.sealed and not restart:
            with contextlib.suppress(OSError):
                shutil.rmtree(self._sockets)

    cleanup_resources = _async_cleanup_resources
