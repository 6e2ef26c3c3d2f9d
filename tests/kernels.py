"""Drive a kernel of a live Jupyter server the way JupyterLab does: a session through the REST API,
then execute requests over the kernel's websocket (Jupyter messaging protocol 5.3)."""

from __future__ import annotations

import asyncio
import datetime
import json
import threading
import time
import uuid
from urllib.parse import quote

import requests
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect


class KernelSession:
    def __init__(self, hub_url: str, user: str, token: str, path: str, kernel: str = "python3"):
        self.base = f"{hub_url}/user/{user}/api"
        self.headers = {"Authorization": f"token {token}"}
        self.user = user
        self.path = path
        self.kernel_name = kernel
        self.session_id = uuid.uuid4().hex
        # The websocket lives in an event loop of its own thread: the test's thread may already have
        # a loop (Playwright's sync API keeps one when browser tests ran earlier in the session).
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.ws = None

    def __enter__(self) -> KernelSession:
        answer = requests.post(
            f"{self.base}/sessions",
            json={
                "path": self.path,
                "name": self.path.rsplit("/", 1)[-1],
                "type": "notebook",
                "kernel": {"name": self.kernel_name},
            },
            headers=self.headers,
            timeout=60,
        )
        assert answer.status_code == 201, answer.text
        self.session = answer.json()
        self.kernel_id = self.session["kernel"]["id"]
        self._connect()
        return self

    def __exit__(self, *_):
        if self.ws is not None:
            self._close()
        requests.delete(f"{self.base}/sessions/{self.session['id']}", headers=self.headers, timeout=60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()

    def _run(self, coroutine, timeout: float = 300):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def _connect(self) -> None:
        url = self.base.replace("http", "ws", 1) + f"/kernels/{quote(self.kernel_id)}/channels"
        request = HTTPRequest(url, headers=self.headers)
        self.ws = self._run(self._in_loop(websocket_connect, request))

    @staticmethod
    async def _in_loop(function, *args):
        """Tornado's websocket objects belong to the loop they were made in: make and use them in ours."""
        result = function(*args)
        return await result if asyncio.isfuture(result) or asyncio.iscoroutine(result) else result

    def _close(self) -> None:
        self._run(self._in_loop(self.ws.close))

    def restart(self) -> None:
        self._close()
        answer = requests.post(f"{self.base}/kernels/{self.kernel_id}/restart", headers=self.headers, timeout=60)
        assert answer.status_code == 200, answer.text
        self._connect()

    def execute(self, code: str, timeout: float = 120) -> dict:
        """Run `code`; returns {"status", "stdout", "messages"} once the kernel is idle again."""
        msg_id = uuid.uuid4().hex
        message = {
            "header": {
                "msg_id": msg_id,
                "msg_type": "execute_request",
                "username": self.user,
                "session": self.session_id,
                "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
                "version": "5.3",
            },
            "parent_header": {},
            "metadata": {},
            "content": {
                "code": code,
                "silent": False,
                "store_history": True,
                "user_expressions": {},
                "allow_stdin": False,
                "stop_on_error": True,
            },
            "channel": "shell",
            "buffers": [],
        }
        return self._run(self._execute(message, timeout), timeout + 10)

    async def _execute(self, message: dict, timeout: float) -> dict:
        await self.ws.write_message(json.dumps(message))
        msg_id = message["header"]["msg_id"]
        deadline = time.monotonic() + timeout
        replies, status, idle = [], None, False
        while not (status and idle):
            raw = await asyncio.wait_for(self.ws.read_message(), timeout=max(deadline - time.monotonic(), 0.1))
            if raw is None:
                raise AssertionError("the kernel websocket closed")
            reply = json.loads(raw)
            if reply.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            replies.append(reply)
            kind = reply["header"]["msg_type"]
            if kind == "execute_reply":
                status = reply["content"]["status"]
            elif kind == "status" and reply["content"]["execution_state"] == "idle":
                idle = True
        stdout = "".join(r["content"].get("text", "") for r in replies if r["header"]["msg_type"] == "stream")
        return {"status": status, "stdout": stdout, "messages": replies}
