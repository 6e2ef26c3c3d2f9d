"""Live dashboards: one standalone Voila process behind the opshub service.

Two halves:

- The backend (`python -m opshub.service.voila ...`, started by `VoilaBackend`): Voila serving the
  folder of published copies, bound to loopback, with preheated kernels. Every request and
  websocket must carry a per-start secret header that only the service knows; anything else gets
  403, so the port is useless to other local processes. The secret is removed from the process
  environment before any kernel starts.
- The service side (`VoilaBackend`, `VoilaAssetProxy`, `KernelSocketProxy`): starts and watches the
  backend, and forwards to it only what a dashboard page needs (Voila's static files and the
  websockets of kernels it handed out), behind the hub's OAuth. Kernel websockets also pass through
  a message filter: only widget (comm) traffic reaches the kernel, as Voila itself enforces.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import json
import logging
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from queue import Empty

from jupyter_client.asynchronous import AsyncKernelClient
from jupyter_client.channels import AsyncZMQSocketChannel
from tornado import httpclient, web, websocket
from traitlets import Type
from traitlets.config import Config

log = logging.getLogger("opshub.service.voila")

SECRET_HEADER = "X-Opshub-Voila-Secret"
SECRET_ENV = "OPSHUB_VOILA_SECRET"
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
# What a dashboard page may send to its kernel: widget traffic only (the list Voila itself uses).
ALLOWED_MESSAGE_TYPES = frozenset(
    {"comm_open", "comm_close", "comm_msg", "comm_info_request", "kernel_info_request", "shutdown_request"}
)
POOLS_PATH = "opshub-backend/pools/"  # the backend's own endpoint: preheat, drop and count kernel pools


def _end_with_parent() -> None:
    """In the child before exec: Linux sends it SIGTERM when the service dies, even by SIGKILL,
    so a crashed service never leaves a Voila backend (and its kernels) behind."""
    import ctypes
    import signal

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class RepollingChannel(AsyncZMQSocketChannel):
    """A kernel client channel that looks at its socket afresh every second while it waits.

    Under load the Voila backend sometimes missed a kernel's reply: the kernel had run the cell and
    answered (it was idle, and the cell's variables existed), but the executor waited out the whole
    cell timeout and the page stayed at "Executing n of m". The socket's wake-up was lost while other
    kernels of the backend started and stopped. A new poll reads the socket's state directly, so it
    finds what a lost wake-up left behind.
    """

    poll_slice = 1.0  # seconds

    async def get_msg(self, timeout: float | None = None) -> dict:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            wait = self.poll_slice if deadline is None else max(0.0, min(self.poll_slice, deadline - time.monotonic()))
            try:
                return await super().get_msg(timeout=wait)
            except Empty:
                if deadline is not None and time.monotonic() >= deadline:
                    raise


class RepollingKernelClient(AsyncKernelClient):
    """The client Voila's executor uses for each dashboard kernel (see RepollingChannel)."""

    shell_channel_class = Type(RepollingChannel)
    iopub_channel_class = Type(RepollingChannel)
    stdin_channel_class = Type(RepollingChannel)
    control_channel_class = Type(RepollingChannel)


# -- the backend process ----------------------------------------------------------------------------


def backend_config() -> Config:
    """The backend's Voila configuration beyond its command line."""
    config = Config()
    config.AsyncKernelManager.client_factory = RepollingKernelClient  # what Voila's executor uses
    return config


def backend_main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m opshub.service.voila", description="opshub's Voila backend")
    p.add_argument("--root", required=True, help="folder of published dashboard notebooks")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--base-url", required=True, help="URL prefix the pages use (the service's proxy path)")
    p.add_argument("--pool-size", type=int, default=2, help="preheated kernels per dashboard (0: none)")
    p.add_argument("--cull-idle", type=int, default=600, help="seconds before an idle viewer kernel is stopped")
    args = p.parse_args(argv)
    # Kernels inherit this process's environment: the secret must not be in it.
    secret = os.environ.pop(SECRET_ENV, "")
    if not secret:
        sys.exit(f"${SECRET_ENV} is not set: refusing to serve dashboards without it")

    import tornado.web
    from jupyter_server.utils import url_path_join
    from voila.app import Voila

    class Refused(tornado.web.RequestHandler):
        def prepare(self):
            raise tornado.web.HTTPError(403, "this backend only answers the opshub service")

    class SecretApplication(tornado.web.Application):
        """Every request, websockets included, is routed only if it carries the secret."""

        def find_handler(self, request, **kwargs):
            sent = request.headers.get(SECRET_HEADER, "").encode()
            if not hmac.compare_digest(sent, secret.encode()):
                return self.get_handler_delegate(request, Refused)
            return super().find_handler(request, **kwargs)

    class PoolHandler(tornado.web.RequestHandler):
        """POST: (re)preheat the pool of one notebook (after a publish), DELETE: drop it, GET: sizes."""

        def initialize(self, voila):
            self.km = voila.kernel_manager
            self.root = Path(voila.root_dir)

        def get(self, name):
            pools = getattr(self.km, "_pools", {})
            ready = {nb: sum(1 for task in pool if pre_rendered(task)) for nb, pool in pools.items()}
            self.finish({"pools": ready})

        async def post(self, name):
            await self._drop(name)
            if (self.root / name).is_file() and hasattr(self.km, "fill_if_needed"):
                self.km.fill_if_needed(delay=0, notebook_name=name)
            self.finish({"notebook": name})

        async def delete(self, name):
            await self._drop(name)
            self.set_status(204)

        async def _drop(self, name):
            # Voila 0.5 keeps pre-rendered kernels per notebook in `_pools`; a republished notebook
            # must not be served from kernels that ran its previous version.
            tasks = getattr(self.km, "_pools", {}).pop(name, [])
            getattr(self.km, "notebook_data", {}).pop(name, None)
            for task in tasks:
                try:
                    kernel_id = (await task)["kernel_id"]
                    await self.km.shutdown_kernel(kernel_id)
                except Exception as e:  # a kernel that failed to start or is already gone
                    log.info("dropping a pooled kernel of %s: %s", name, e)

    class OpshubVoila(Voila):
        def start(self):
            # Voila.start, with the secret-checking application and the pool endpoint added.
            self.connection_dir = tempfile.mkdtemp(prefix="voila_", dir=self.connection_dir_root)
            settings = self.init_settings()
            self.app = SecretApplication(**settings)
            self.app.settings.update(self.tornado_settings)
            pools = (url_path_join(self.server_url, POOLS_PATH + "(.*)"), PoolHandler, {"voila": self})
            self.app.add_handlers(".*$", [pools, *self.init_handlers()])
            self.listen()

    def pre_rendered(task) -> bool:
        """A pool entry whose kernel started and whose notebook has finished running."""
        return task.done() and not task.cancelled() and task.exception() is None and task.result()["task"].done()

    preheat = args.pool_size > 0
    OpshubVoila.launch_instance(
        config=backend_config(),
        argv=[
            args.root,
            f"--port={args.port}",
            "--Voila.ip=127.0.0.1",
            "--Voila.port_retries=0",  # the service knows the port it chose: never drift to another
            "--no-browser",
            "--Voila.log_format=%(asctime)s [%(name)s]%(highlevel)s %(message)s",
            f"--Voila.base_url={args.base_url}",
            f"--VoilaConfiguration.preheat_kernel={preheat}",
            f"--VoilaConfiguration.default_pool_size={max(args.pool_size, 0)}",
            "--VoilaConfiguration.show_tracebacks=False",
            "--VoilaConfiguration.strip_sources=True",
            # no file route serves anything: notebooks embed their images in their outputs
            "--VoilaConfiguration.file_allowlist=[]",
            # a cell that never ends (or a reply lost on a loaded machine) must not hang the page for ever
            "--VoilaExecutor.timeout=120",
            f"--MappingKernelManager.cull_idle_timeout={args.cull_idle}",
            "--MappingKernelManager.cull_interval=60",
        ],
    )


# -- the service side ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class VoilaBackend:
    """Starts, watches and talks to the Voila backend process."""

    def __init__(
        self,
        root: Path,
        workdir: Path,
        base_url: str,
        kernel_env: dict[str, str],
        pool_size: int = 2,
        cull_idle: int = 600,
        log_file: Path | None = None,
    ):
        self.root = root
        self.workdir = workdir
        self.base_url = base_url
        self.kernel_env = kernel_env
        self.pool_size = pool_size
        self.cull_idle = cull_idle
        self.log_file = log_file
        self.secret = secrets.token_urlsafe(32)
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.client = httpclient.AsyncHTTPClient(force_instance=True, max_clients=100)
        self.ready = asyncio.Event()  # set once the process answers

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def headers(self) -> dict[str, str]:
        return {SECRET_HEADER: self.secret}

    def start(self) -> None:
        """Start the process (kernels are preheated in the background once it listens)."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.ready.clear()
        self.port = free_port()
        env = {**self.kernel_env, SECRET_ENV: self.secret}
        argv = [
            sys.executable, "-m", "opshub.service.voila",
            "--root", str(self.root),
            "--port", str(self.port),
            "--base-url", self.base_url,
            "--pool-size", str(self.pool_size),
            "--cull-idle", str(self.cull_idle),
        ]  # fmt: skip
        out = open(self.log_file, "ab") if self.log_file else None  # noqa: SIM115 (the child writes to it)
        try:
            self.proc = subprocess.Popen(
                argv,
                cwd=self.workdir,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT if out else None,
                preexec_fn=_end_with_parent,
            )
        finally:
            if out:
                out.close()
        log.info("Voila backend started on 127.0.0.1:%d (pid %d)", self.port, self.proc.pid)

    async def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError("the Voila backend exited; see its log")
            try:
                await self.pools()
                self.ready.set()
                return
            except (OSError, httpclient.HTTPClientError):
                await asyncio.sleep(0.2)
        raise TimeoutError(f"the Voila backend did not answer within {timeout}s")

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    async def ensure_running(self) -> None:
        """Restart the backend if it died (a crash must not leave live dashboards down)."""
        if self.proc is not None and not self.running():
            log.error("the Voila backend exited with %s: restarting it", self.proc.returncode)
            self.start()
            await self.wait_ready()

    def stop(self) -> None:
        if self.running():
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def fetch(self, path: str, **kwargs) -> asyncio.Future:
        headers = {**kwargs.pop("headers", {}), **self.headers()}
        return self.client.fetch(self.url + path, headers=headers, **kwargs)

    async def pools(self) -> dict[str, int]:
        response = await self.fetch(self.base_url + POOLS_PATH, request_timeout=5)
        return json.loads(response.body)["pools"]

    async def preheat(self, notebook: str) -> None:
        if self.running():
            await self.fetch(self.base_url + POOLS_PATH + notebook, method="POST", body=b"", request_timeout=60)

    async def drop(self, notebook: str) -> None:
        if self.running():
            await self.fetch(self.base_url + POOLS_PATH + notebook, method="DELETE", request_timeout=60)


def message_type(message: str | bytes) -> str | None:
    """The msg_type of a kernel websocket message from a browser (Jupyter's legacy framing:
    JSON text, or binary with a table of offsets whose first part is the JSON message), or None."""
    try:
        if isinstance(message, bytes):
            count = int.from_bytes(message[0:4], "big")
            offsets = [int.from_bytes(message[4 + 4 * i : 8 + 4 * i], "big") for i in range(count)]
            end = offsets[1] if count > 1 else len(message)
            message = message[offsets[0] : end].decode()
        msg_type = json.loads(message)["header"]["msg_type"]
        return msg_type if isinstance(msg_type, str) else None
    except (ValueError, KeyError, IndexError, TypeError, UnicodeDecodeError):
        return None


class KernelSocketProxy(websocket.WebSocketHandler):
    """A viewer's kernel websocket, relayed to the backend after the service's authentication.

    The dashboards module subclasses this with HubOAuth and decides who may open which kernel
    (`authorize`). No subprotocol is offered, so the page uses Jupyter's legacy framing, which
    `message_type` reads.
    """

    upstream: websocket.WebSocketClientConnection | None = None

    @property
    def backend(self) -> VoilaBackend:
        raise NotImplementedError  # the subclass says which backend

    def authorize(self, kernel_id: str) -> None:
        """Raise HTTPError unless the current user may talk to this kernel."""
        raise web.HTTPError(403)

    async def get(self, path: str, kernel_id: str):
        self.authorize(kernel_id)
        request = httpclient.HTTPRequest(
            self.backend.url.replace("http", "ws", 1) + self.backend.base_url + path,
            headers=self.backend.headers(),
        )
        self._pending: list = []
        self._open = False
        try:
            self.upstream = await websocket.websocket_connect(
                request, on_message_callback=self._from_backend, max_message_size=100 * 1024 * 1024
            )
        except (OSError, httpclient.HTTPClientError, websocket.WebSocketError) as e:
            raise web.HTTPError(502, f"the dashboard backend refused the kernel connection: {e}") from None
        await super().get(path, kernel_id)

    def open(self, *args):
        self._open = True
        for message in self._pending:
            self.write_message(message, binary=isinstance(message, bytes))
        self._pending = []

    def _from_backend(self, message):
        if message is None:
            self.close()
        elif not self._open:
            self._pending.append(message)
        else:
            with contextlib.suppress(websocket.WebSocketClosedError):
                self.write_message(message, binary=isinstance(message, bytes))

    def on_message(self, message):
        msg_type = message_type(message)
        if msg_type not in ALLOWED_MESSAGE_TYPES:
            # what was attempted is worth keeping for an audit (trimmed: it may be a large payload)
            log.warning(
                "dropped a %r message sent to a dashboard kernel by %s: %.300r", msg_type, self.viewer_name(), message
            )
            return
        if self.upstream is not None:
            self.upstream.write_message(message, binary=isinstance(message, bytes))

    def viewer_name(self) -> str:
        return (self.current_user or {}).get("name", "?")

    def on_close(self):
        if self.upstream is not None:
            self.upstream.close()


if __name__ == "__main__":
    backend_main()
