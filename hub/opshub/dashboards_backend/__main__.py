"""`python -m opshub.dashboards_backend`: the server of the `opshub-dashboards` system account
(see `__init__.py`). The spawner starts it with JupyterHub's usual environment for a server."""

from __future__ import annotations

import asyncio
import atexit
import hmac
import json
import logging
import os
import re
import secrets
import shutil
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from queue import Empty
from urllib.parse import urlparse

from jupyter_client.asynchronous import AsyncKernelClient
from jupyter_client.channels import AsyncZMQSocketChannel
from traitlets import Type
from traitlets.config import Config

from ..archive import extract_runbooks
from ..hardening import keep_memory_private
from ..sandbox import BUBBLEWRAP, CONTAINER, NONE, SANDBOX_ENV, SandboxUnavailable, check_bubblewrap, python_folders
from . import (
    API_PATH,
    BASE_URL_ENV,
    CULL_IDLE_ENV,
    ENVIRONMENT_PATH,
    NOTEBOOKS_PATH,
    POOL_SIZE_ENV,
    POOLS_PATH,
    REFUSED,
    RUNBOOKS_PATH,
    SECRET_HEADER,
    SESSION_PATH,
    WAITING,
)

log = logging.getLogger("opshub.dashboards_backend")

NOTEBOOK_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?\.ipynb")


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


def backend_config(sealed: bool, home: Path, published: Path, sockets: Path) -> Config:
    """The backend's Voila configuration beyond its command line: each dashboard's kernels sealed
    in a sandbox of their own (kernels.py) unless `sealed` is False."""
    config = Config()
    config.AsyncKernelManager.client_factory = RepollingKernelClient  # what Voila's executor uses
    config.AsyncMappingKernelManager.kernel_manager_class = "opshub.dashboards_backend.kernels.SandboxedKernelManager"
    config.SandboxedKernelManager.sealed = sealed
    config.SandboxedKernelManager.home = str(home)
    config.SandboxedKernelManager.published = str(published)
    config.SandboxedKernelManager.sockets_root = str(sockets)
    config.SandboxedKernelManager.read_only = [*(str(f) for f in python_folders()), str(home / "runbooks")]
    return config


def sandbox_kind() -> tuple[bool, str]:
    """Whether kernels run sealed, and what to log about it. The hub says which kind of sandbox its
    execution plane uses (`runner.sandbox`, the spawner): on this machine (`bubblewrap`, the default
    when unset) a kernel that cannot be sealed does not start; in a container the container is the
    dashboards server's sandbox, and kernels are sealed from each other too where bubblewrap can run
    there (it needs user namespaces and an unmasked /proc: in Docker the hub gives this server's
    container alone a seccomp profile for that, images/ops/README.md); `none`: never."""
    kind = os.environ.get(SANDBOX_ENV) or BUBBLEWRAP
    if kind == NONE:
        return False, "runner.sandbox is none: live dashboards' kernels share this account's home and processes"
    try:
        check_bubblewrap()
    except SandboxUnavailable as e:
        if kind == CONTAINER:
            return False, (
                "kernels share this container: each dashboard cannot be sealed from the others, and one "
                f"dashboard's code can reach another's copy and kernels ({e}; in Docker the hub gives this "
                "container a seccomp profile and an unmasked /proc for bubblewrap: an AppArmor host may still refuse it)"
            )
        # fail closed: every kernel start fails with this reason, the pages say the dashboard failed
        return True, f"live dashboards cannot start kernels: {e}"
    return True, "each live dashboard's kernels run in a bubblewrap sandbox of their own"


def dashboard_file(root: Path, notebook: str) -> Path:
    """Where the published copy `<name>.ipynb` lives: a folder of its own, `<name>/<name>.ipynb`
    (the folder is what a kernel of that dashboard sees, and the only copy it sees)."""
    return root / notebook[: -len(".ipynb")] / notebook


def pool_key(notebook: str) -> str:
    """Voila's name of a published notebook (its path under the root), which its pools are keyed by."""
    return f"{notebook[: -len('.ipynb')]}/{notebook}"


def kernel_base_environment(home: Path, service_url: str) -> dict[str, str]:
    """What every dashboard kernel has before the service adds its data token: no hub variable, no
    token, the repository's files and where the run summaries are."""
    return {
        "PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "OPSHUB_DASHBOARD": "1",
        "OPSHUB_RUNBOOKS_DIR": str(home / "runbooks"),
        "OPSHUB_HISTORY_URL": service_url.rstrip("/") + "/api/dashboard-data/",
    }


def main(argv: list[str] | None = None) -> None:
    keep_memory_private()  # its token and session secret: closed to the dashboards' kernels (same account)
    logging.basicConfig(level=logging.INFO, format="[%(levelname).1s %(asctime)s %(name)s] %(message)s")
    import tornado.web
    from jupyter_server.utils import url_path_join
    from jupyterhub.services.auth import HubAuth
    from voila.app import Voila

    # JupyterHub's environment for a server: where to listen, under which prefix, and this server's
    # token. The token stays in this process's memory; kernels get none of it.
    service_url = urlparse(os.environ["JUPYTERHUB_SERVICE_URL"])
    prefix = os.environ["JUPYTERHUB_SERVICE_PREFIX"]
    user = os.environ["JUPYTERHUB_USER"]
    server_name = os.environ.get("JUPYTERHUB_SERVER_NAME", "")
    api_url = os.environ["JUPYTERHUB_API_URL"]
    api_token = os.environ["JUPYTERHUB_API_TOKEN"]
    base_url = os.environ[BASE_URL_ENV]
    pool_size = int(os.environ.get(POOL_SIZE_ENV, "2"))
    cull_idle = int(os.environ.get(CULL_IDLE_ENV, "600"))
    home = Path(os.environ.get("HOME") or os.getcwd())
    root = home / "published"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    (home / "runbooks").mkdir(exist_ok=True)
    os.chdir(home)
    sealed, how = sandbox_kind()
    (log.info if sealed and "cannot" not in how else log.warning)("%s", how)
    # each kernel's connection file and sockets: a short path (a Unix socket's must fit 107 bytes),
    # this account's alone (0700), and never visible to another kernel (each sees only its own)
    sockets = Path(tempfile.mkdtemp(prefix="opshub-kernels-"))
    atexit.register(shutil.rmtree, sockets, ignore_errors=True)
    kernel_env = kernel_base_environment(home, os.environ.get("OPSHUB_SERVICE_URL", ""))
    os.environ.clear()
    os.environ.update(kernel_env)
    hub_auth = HubAuth(api_token=api_token, api_url=api_url, cache_max_age=60)
    # Who may ask for the secret: a token holding access to this server (the opshub service's role).
    access = {f"access:servers!server={user}/{server_name}", f"access:servers!user={user}"}
    secret = secrets.token_urlsafe(32)
    files = {"delivered": False}  # the repository's files, handed over by the service (RunbooksHandler)
    render_prefix = url_path_join(prefix, "voila/render/")

    class Waiting(tornado.web.RequestHandler):
        def prepare(self):
            self.set_status(503)
            self.finish(WAITING)

    class Refused(tornado.web.RequestHandler):
        def prepare(self):
            self.set_status(403)
            self.finish(REFUSED)

    class SecretApplication(tornado.web.Application):
        """Every request, websockets included, is routed only if it carries the secret (or asks for it)."""

        def find_handler(self, request, **kwargs):
            sent = request.headers.get(SECRET_HEADER, "").encode()
            asking = request.path == url_path_join(prefix, SESSION_PATH)
            if not asking and not hmac.compare_digest(sent, secret.encode()):
                return self.get_handler_delegate(request, Refused)
            if request.path.startswith(render_prefix) and not files["delivered"]:
                return self.get_handler_delegate(request, Waiting)  # its kernel would not find its files
            return super().find_handler(request, **kwargs)

    class SessionHandler(tornado.web.RequestHandler):
        """The secret, for a token that the hub says holds access to this server."""

        async def post(self):
            kind, _, token = self.request.headers.get("Authorization", "").partition(" ")
            model = await hub_auth.user_for_token(token, sync=False) if kind.lower() in ("token", "bearer") else None
            if not model or not hub_auth.check_scopes(access, model):
                raise tornado.web.HTTPError(403, "only the opshub service may use this server")
            log.info("session opened by %s %s", model.get("kind"), model.get("name"))
            self.finish({"secret": secret})

    class BackendHandler(tornado.web.RequestHandler):
        def initialize(self, voila):
            self.km = voila.kernel_manager
            self.voila = voila

        async def drop(self, name):
            # Voila 0.5 keeps pre-rendered kernels per notebook in `_pools`; a republished notebook
            # must not be served from kernels that ran its previous version.
            tasks = getattr(self.km, "_pools", {}).pop(pool_key(name), [])
            getattr(self.km, "notebook_data", {}).pop(pool_key(name), None)
            for task in tasks:
                try:
                    kernel_id = (await task)["kernel_id"]
                    await self.km.shutdown_kernel(kernel_id)
                except Exception as e:  # a kernel that failed to start or is already gone
                    log.info("dropping a pooled kernel of %s: %s", name, e)

    class PoolHandler(BackendHandler):
        """POST: (re)preheat the pool of one notebook (after a publish), DELETE: drop it, GET: sizes."""

        def get(self, name):
            pools = getattr(self.km, "_pools", {})
            ready = {Path(nb).name: sum(1 for task in pool if pre_rendered(task)) for nb, pool in pools.items()}
            self.finish({"pools": ready})

        async def post(self, name):
            if not NOTEBOOK_NAME.fullmatch(name):
                raise tornado.web.HTTPError(400, f"not a dashboard notebook name: {name!r}")
            await self.drop(name)
            if not files["delivered"]:  # preheated once the files are here (the service asks again)
                self.finish({"notebook": name, "waiting": WAITING})
                return
            if dashboard_file(root, name).is_file() and hasattr(self.km, "fill_if_needed"):
                self.km.fill_if_needed(delay=0, notebook_name=pool_key(name))
            self.finish({"notebook": name})

        async def delete(self, name):
            await self.drop(name)
            self.set_status(204)

    class NotebookHandler(BackendHandler):
        """PUT: a published copy (the notebook's JSON), DELETE: remove it and its kernels."""

        def check_name(self, name: str) -> Path:
            if not NOTEBOOK_NAME.fullmatch(name):
                raise tornado.web.HTTPError(400, f"not a dashboard notebook name: {name!r}")
            return dashboard_file(root, name)

        async def put(self, name):
            path = self.check_name(name)
            try:
                json.loads(self.request.body)
            except ValueError:
                raise tornado.web.HTTPError(400, "the body is not a notebook") from None
            await self.drop(name)
            path.parent.mkdir(exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=path.parent, delete=False, suffix=".tmp") as f:
                f.write(self.request.body)
            os.replace(f.name, path)
            self.set_status(204)

        async def delete(self, name):
            path = self.check_name(name)
            await self.drop(name)
            shutil.rmtree(path.parent, ignore_errors=True)
            self.set_status(204)

    class RunbooksHandler(BackendHandler):
        """PUT: the repository's files at the synced commit, as a tar archive."""

        async def put(self):
            try:
                await asyncio.get_running_loop().run_in_executor(
                    None, extract_runbooks, self.request.body, home / "runbooks"
                )
            except tarfile.TarError as e:
                raise tornado.web.HTTPError(400, f"not a tar archive: {e}") from None
            files["delivered"] = True
            self.set_status(204)

    class EnvironmentHandler(BackendHandler):
        """PUT: what the service adds to every kernel's environment (kernels started from now on)."""

        def put(self):
            try:
                added = json.loads(self.request.body)
                assert isinstance(added, dict) and all(isinstance(v, str) for v in added.values())
            except (ValueError, AssertionError):
                raise tornado.web.HTTPError(400, "the body must be a JSON object of strings") from None
            os.environ.clear()
            os.environ.update({**kernel_env, **added})
            self.set_status(204)

    class OpshubVoila(Voila):
        def start(self):
            # Voila.start, with the secret-checking application and the service's API added.
            self.connection_dir = tempfile.mkdtemp(prefix="voila_", dir=self.connection_dir_root)
            settings = self.init_settings()
            self.app = SecretApplication(**settings)
            self.app.settings.update(self.tornado_settings)
            ours = {"voila": self}
            api = [
                (url_path_join(prefix, POOLS_PATH + "(.*)"), PoolHandler, ours),
                (url_path_join(prefix, NOTEBOOKS_PATH + "([^/]+)"), NotebookHandler, ours),
                (url_path_join(prefix, RUNBOOKS_PATH), RunbooksHandler, ours),
                (url_path_join(prefix, ENVIRONMENT_PATH), EnvironmentHandler, ours),
                (url_path_join(prefix, SESSION_PATH), SessionHandler),
                (url_path_join(prefix, API_PATH + ".*"), Refused),
            ]
            self.app.add_handlers(".*$", [*api, *self.init_handlers()])
            self.listen()

    def pre_rendered(task) -> bool:
        """A pool entry whose kernel started and whose notebook has finished running."""
        return task.done() and not task.cancelled() and task.exception() is None and task.result()["task"].done()

    preheat = pool_size > 0
    OpshubVoila.launch_instance(
        config=backend_config(sealed, home, root, sockets),
        argv=[
            str(root),
            f"--port={service_url.port}",
            f"--Voila.ip={service_url.hostname}",
            "--Voila.port_retries=0",  # the spawner chose the port: never drift to another
            "--no-browser",
            "--Voila.log_format=%(asctime)s [%(name)s]%(highlevel)s %(message)s",
            f"--Voila.server_url={prefix}",  # the routes, as the proxy forwards them
            f"--Voila.base_url={base_url}",  # the URLs in the pages: the service's proxy path
            f"--VoilaConfiguration.preheat_kernel={preheat}",
            f"--VoilaConfiguration.default_pool_size={max(pool_size, 0)}",
            "--VoilaConfiguration.show_tracebacks=False",
            "--VoilaConfiguration.strip_sources=True",
            # no file route serves anything: notebooks embed their images in their outputs
            "--VoilaConfiguration.file_allowlist=[]",
            # a cell that never ends (or a reply lost on a loaded machine) must not hang the page for ever
            "--VoilaExecutor.timeout=120",
            f"--MappingKernelManager.cull_idle_timeout={cull_idle}",
            "--MappingKernelManager.cull_interval=60",
        ],
    )


if __name__ == "__main__":
    main()
