"""Live dashboards, the service's side: the dashboards server (`opshub.dashboards_backend`, a
standalone Voila in the server of the `opshub-dashboards` system account) seen from the opshub
service, and the relay of viewers' kernel websockets to it.

- `VoilaBackend` starts that server through the hub's REST API (the service's role may start and
  use that one server, nothing else), opens a session with it, hands it the published notebooks,
  the repository's files and the kernels' environment, and starts it again when it is gone (a
  crash, an admin stopping it, the hub's restart). It talks to the server through the hub's proxy.
- `KernelSocketProxy` relays a viewer's kernel websocket after the service's authentication,
  through a message filter: only widget (comm) traffic reaches the kernel, as Voila itself enforces.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time

from tornado import httpclient, web, websocket

from ..dashboards_backend import (
    ENVIRONMENT_PATH,
    NOTEBOOKS_PATH,
    POOLS_PATH,
    REFUSED,
    RUNBOOKS_PATH,
    SECRET_HEADER,
    SESSION_PATH,
)
from .hub_api import HubApi

log = logging.getLogger("opshub.service.voila")

UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
# What a dashboard page may send to its kernel: widget traffic only (the list Voila itself uses).
ALLOWED_MESSAGE_TYPES = frozenset(
    {"comm_open", "comm_close", "comm_msg", "comm_info_request", "kernel_info_request", "shutdown_request"}
)


WATCHDOG_SECONDS = 2  # how often the service checks that the dashboards server answers


class BackendDown(RuntimeError):
    """The dashboards server could not be started or reached."""


class VoilaBackend:
    """The dashboards server of a system account, started through the hub and reached through the proxy."""

    def __init__(
        self,
        hub_api_url: str,
        api_token: str,
        proxy_url: str,
        server_prefix: str,
        base_url: str,
        account: str,
        restore=None,
        start_timeout: float = 120,
    ):
        self.hub_api_url = hub_api_url.rstrip("/")
        self.api_token = api_token
        self.proxy_url = proxy_url.rstrip("/")  # how this service reaches the hub's proxy
        self.server_prefix = server_prefix  # the server's routes behind the proxy: /user/<account>/
        self.base_url = base_url  # the URLs in dashboard pages: the service's proxy path
        self.account = account
        self.restore = restore  # async (): hand a fresh server everything it serves
        self.start_timeout = start_timeout
        self.secret = ""
        self.client = httpclient.AsyncHTTPClient(force_instance=True, max_clients=100)
        self.hub = HubApi(hub_api_url, api_token, self.client)
        self.ready = asyncio.Event()  # set once the server answers and has everything
        self._starting = asyncio.Lock()

    # -- the hub's side: start the server, see whether it runs -------------------------------------

    async def _hub(self, method: str, path: str, body: dict | None = None) -> httpclient.HTTPResponse:
        return await self.hub.call(method, path, body)

    async def server_model(self) -> dict | None:
        """The hub's model of the server (`servers[""]` of the account), None when it has none."""
        response = await self._hub("GET", f"users/{self.account}")
        if response.code != 200:
            raise BackendDown(
                f"the hub answered {response.code} for the {self.account} account: {response.body[:300]!r}"
            )
        return json.loads(response.body).get("servers", {}).get("")

    async def server_ready(self) -> bool:
        server = await self.server_model()
        return bool(server and server.get("ready"))

    async def answers(self) -> bool:
        """Whether the server itself answers its own API: a 200 with its pools, straight from it. A
        redirect is never an answer (with the server gone, the proxy sends its path to the hub, which
        redirects to a login page that answers 200), nor is anything else."""
        try:
            response = await self.fetch_api("GET", POOLS_PATH, timeout=5)
            return response.code == 200 and "pools" in json.loads(response.body)
        except (OSError, ValueError, AttributeError, TypeError):
            return False

    async def reachable(self) -> bool:
        """Whether the server itself answers on its own URL (a 200, or its own 403 to a session
        secret of its previous start), never a redirect or the proxy's error. Asked twice, half a
        second apart: the proxy's route may lag a moment behind a start."""
        for attempt in range(2):
            try:
                response = await self.fetch_api("GET", POOLS_PATH, timeout=5)
            except OSError:
                response = None
            if response is not None and (
                response.code == 200 or (response.code == 403 and REFUSED.encode() in (response.body or b""))
            ):
                return True
            if attempt == 0:
                await asyncio.sleep(0.5)
        return False

    async def stop_stale(self) -> None:
        """Have the hub forget a server that it still counts as running but that does not answer
        (killed: the hub's spawner notices only at its next poll, up to 30 s later), so that it can
        be started again now."""
        response = await self._hub("DELETE", f"users/{self.account}/server")
        if response.code not in (202, 204, 400):  # 400: not running
            raise BackendDown(f"the hub refused to stop the dashboards server: {response.code} {response.body[:300]!r}")
        deadline = time.monotonic() + 30
        while await self.server_model() is not None:
            if time.monotonic() > deadline:
                raise BackendDown("the hub did not stop the dashboards server that stopped answering within 30s")
            await asyncio.sleep(0.25)

    async def start(self) -> None:
        """Start the server if it is not running, open a session, hand it what it serves. A server
        that the hub counts as running but that does not answer (killed: the hub's spawner notices
        only at its next poll) is stopped through the hub first, then started again."""
        async with self._starting:
            self.ready.clear()
            if await self.server_ready() and not await self.reachable():
                log.error("the hub counts the dashboards server as running but it does not answer: restarting it")
                await self.stop_stale()
            if not await self.server_ready():
                response = await self._hub("POST", f"users/{self.account}/server")
                if response.code not in (201, 202, 400):  # 400: already running or starting
                    raise BackendDown(
                        f"the hub refused to start the dashboards server: {response.code} {response.body[:300]!r}"
                    )
                deadline = time.monotonic() + self.start_timeout
                while not await self.server_ready():
                    if time.monotonic() > deadline:
                        raise BackendDown(f"the dashboards server did not start within {self.start_timeout}s")
                    await asyncio.sleep(0.5)
                log.info("the dashboards server of %s started", self.account)
            await self._open_session()
            if self.restore is not None:
                await self.restore()
            self.ready.set()

    async def _open_session(self) -> None:
        deadline = time.monotonic() + 30
        while True:  # the proxy's route may lag a moment behind the hub's "ready"
            response = await self.client.fetch(
                self._url(SESSION_PATH),
                method="POST",
                body=b"",
                headers={"Authorization": f"token {self.api_token}"},
                raise_error=False,
                request_timeout=30,
            )
            if response.code == 200:
                self.secret = json.loads(response.body)["secret"]
                return
            if time.monotonic() > deadline:
                raise BackendDown(f"the dashboards server refused a session: {response.code} {response.body[:300]!r}")
            await asyncio.sleep(0.5)

    def running(self) -> bool:
        return self.ready.is_set()

    async def ensure_running(self) -> None:
        """The watchdog (every `WATCHDOG_SECONDS`): start the server again if it is gone (a crash,
        a kill, an admin stopping it, a hub restart), so live dashboards are back within 10 s."""
        if self._starting.locked():
            return
        was_ready = self.ready.is_set()
        if was_ready and await self.answers():
            return
        if was_ready:
            log.error("the dashboards server stopped answering: starting it again")
        try:
            await self.start()
        except (BackendDown, OSError) as e:
            log.error("live dashboards are down: %s", e)

    def stop(self) -> None:
        """Nothing to stop here: the hub owns the server (and stops it with itself)."""

    # -- talking to the server ---------------------------------------------------------------------

    def _url(self, path: str) -> str:
        return self.proxy_url + self.server_prefix + path

    def route(self, path: str) -> str:
        """A page URL (under `base_url`) as the server's URL behind the proxy."""
        if not path.startswith(self.base_url):
            raise ValueError(f"{path} is not under {self.base_url}")
        return self._url(path[len(self.base_url) :])

    def ws_url(self, path: str) -> str:
        """The server's websocket URL of a path under `base_url`'s prefix (such as api/kernels/<id>/channels)."""
        return self._url(path).replace("http", "ws", 1)

    def headers(self) -> dict[str, str]:
        return {SECRET_HEADER: self.secret}

    def fetch(self, path: str, **kwargs) -> asyncio.Future:
        """A page request (path under `base_url`), as the server answers it."""
        headers = {**kwargs.pop("headers", {}), **self.headers()}
        return self.client.fetch(self.route(path), headers=headers, **kwargs)

    def fetch_api(self, method: str, path: str, body: bytes | None = None, timeout: float = 60) -> asyncio.Future:
        """A call to the server's own API (`opshub-backend/...`). Redirects are not followed: the
        server never redirects, the hub does when the server is gone."""
        if body is None and method in ("POST", "PUT"):
            body = b""
        return self.client.fetch(
            self._url(path),
            method=method,
            body=body,
            headers=self.headers(),
            raise_error=False,
            request_timeout=timeout,
            follow_redirects=False,
        )

    async def _api(self, method: str, path: str, body: bytes | None = None, timeout: float = 60) -> None:
        response = await self.fetch_api(method, path, body, timeout)
        if response.code >= 400:
            raise BackendDown(
                f"the dashboards server answered {response.code} to {method} {path}: {response.body[:300]!r}"
            )

    async def pools(self) -> dict[str, int]:
        response = await self.fetch_api("GET", POOLS_PATH, timeout=5)
        return json.loads(response.body)["pools"]

    async def preheat(self, notebook: str) -> None:
        await self._api("POST", POOLS_PATH + notebook)

    async def drop(self, notebook: str) -> None:
        await self._api("DELETE", POOLS_PATH + notebook)

    async def put_notebook(self, notebook: str, content: bytes) -> None:
        await self._api("PUT", NOTEBOOKS_PATH + notebook, content)

    async def delete_notebook(self, notebook: str) -> None:
        await self._api("DELETE", NOTEBOOKS_PATH + notebook)

    async def put_runbooks(self, archive: bytes) -> None:
        await self._api("PUT", RUNBOOKS_PATH, archive, timeout=120)

    async def put_environment(self, environment: dict[str, str]) -> None:
        await self._api("PUT", ENVIRONMENT_PATH, json.dumps(environment).encode())


# A viewer's frame to a dashboard kernel: widget messages are small; a widget's binary buffers (an
# upload) are the big ones. Frames beyond these are refused before anything is read or allocated.
MAX_FRAME_BYTES = 8 * 1024 * 1024  # tornado closes the websocket (1009) on a longer frame, unread
MAX_BUFFERS = 64  # binary buffers of one message (its table has one more entry: the JSON part)
BAD_FRAME = 1008  # the close code of a refused frame (policy violation), with the reason


class BadFrame(ValueError):
    """A binary frame whose table of parts does not describe the frame; the message says how."""


def json_part(message: bytes) -> bytes:
    """The JSON part of a binary kernel websocket frame (Jupyter's legacy framing: a count of parts,
    the parts' offsets, then the parts, the first being the message's JSON). The count and every
    offset are checked against the frame's length before anything is read or allocated."""
    if len(message) < 8:
        raise BadFrame(f"a binary frame of {len(message)} bytes has no table of parts")
    count = int.from_bytes(message[0:4], "big")
    if not 1 <= count <= MAX_BUFFERS + 1:
        raise BadFrame(f"a binary frame claims {count} parts; at most {MAX_BUFFERS + 1} (a message and its buffers)")
    table_end = 4 + 4 * count
    if table_end > len(message):
        raise BadFrame(f"a binary frame claims {count} parts but has {len(message)} bytes, too few for their offsets")
    offsets = [int.from_bytes(message[4 + 4 * i : 8 + 4 * i], "big") for i in range(count)]
    if (
        offsets[0] < table_end
        or any(b < a for a, b in zip(offsets, offsets[1:], strict=False))
        or offsets[-1] > len(message)
    ):
        raise BadFrame("a binary frame's offsets are out of order or beyond its end")
    return message[offsets[0] : offsets[1] if count > 1 else len(message)]


def message_type(message: str | bytes) -> str | None:
    """The msg_type of a kernel websocket message from a browser (JSON text, or a binary frame whose
    first part is the JSON message), or None. A binary frame that lies about its parts: BadFrame."""
    if isinstance(message, bytes):
        message = json_part(message)
    try:
        msg_type = json.loads(message)["header"]["msg_type"]
        return msg_type if isinstance(msg_type, str) else None
    except (ValueError, KeyError, IndexError, TypeError, RecursionError):
        return None


class KernelSocketProxy(websocket.WebSocketHandler):
    """A viewer's kernel websocket, relayed to the backend after the service's authentication.

    handlers/dashboards.py subclasses this with HubOAuth and decides who may open which kernel
    (`authorize`). No subprotocol is offered, so the page uses Jupyter's legacy framing, which
    `message_type` reads.
    """

    upstream: websocket.WebSocketClientConnection | None = None

    @property
    def max_message_size(self) -> int:
        return MAX_FRAME_BYTES

    @property
    def backend(self) -> VoilaBackend:
        raise NotImplementedError  # the subclass says which backend

    def authorize(self, kernel_id: str) -> None:
        """Raise HTTPError unless the current user may talk to this kernel."""
        raise web.HTTPError(403)

    async def get(self, path: str, kernel_id: str):
        self.authorize(kernel_id)
        request = httpclient.HTTPRequest(self.backend.ws_url(path), headers=self.backend.headers())
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
        try:
            msg_type = message_type(message)
        except BadFrame as e:
            log.warning("refused a frame sent to a dashboard kernel by %s: %s", self.viewer_name(), e)
            self.close(BAD_FRAME, f"refused: {e}"[:120])  # a close reason fits in 123 bytes
            return
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
