"""Type commands in a JupyterLab terminal of a live server, as a person does: a terminal made
through the REST API, then keystrokes over its websocket (terminado's protocol)."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
import uuid

import requests
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\r")


class Terminal:
    def __init__(self, hub_url: str, user: str, token: str):
        self.base = f"{hub_url}/user/{user}"
        self.headers = {"Authorization": f"token {token}"}
        self.screen = ""  # everything the terminal showed, without escape codes
        self.loop = asyncio.new_event_loop()  # the websocket lives in a loop of its own thread
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def __enter__(self) -> Terminal:
        answer = requests.post(f"{self.base}/api/terminals", headers=self.headers, timeout=60)
        assert answer.status_code == 200, answer.text
        self.name = answer.json()["name"]
        url = self.base.replace("http", "ws", 1) + f"/terminals/websocket/{self.name}"
        self.ws = self._run(self._connect(HTTPRequest(url, headers=self.headers)))
        return self

    def __exit__(self, *_):
        self._run(self._close())
        requests.delete(f"{self.base}/api/terminals/{self.name}", headers=self.headers, timeout=60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()

    def _run(self, coroutine, timeout: float = 300):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    async def _connect(self, request):
        return await websocket_connect(request)

    async def _close(self):
        self.ws.close()

    async def _type(self, keys: str):
        await self.ws.write_message(json.dumps(["stdin", keys]))

    def press(self, keys: str) -> None:
        """Keys as typed, such as "\\x03" for Ctrl-C."""
        self._run(self._type(keys))

    def start(self, command: str) -> str:
        """Type `command` and Enter without waiting for it to end; returns the mark `finish` waits for.
        The marks are split in quotes, so the terminal's echo of the typed line never matches them."""
        mark = uuid.uuid4().hex[:12]
        self.press(f'echo "{mark}""-start"; {command}; echo "{mark}""-rc=$?"\n')
        return mark

    def read_until(self, pattern: str, timeout: float = 120) -> re.Match:
        """Wait until the screen matches `pattern` (a multi-line regular expression)."""
        return self._run(self._read_until(re.compile(pattern, re.M | re.S), timeout), timeout + 10)

    async def _read_until(self, pattern: re.Pattern, timeout: float) -> re.Match:
        deadline = time.monotonic() + timeout
        while not (found := pattern.search(self.screen)):
            raw = await asyncio.wait_for(self.ws.read_message(), timeout=max(deadline - time.monotonic(), 0.1))
            if raw is None:
                raise AssertionError(f"the terminal closed; it showed:\n{self.screen}")
            kind, *content = json.loads(raw)
            if kind == "stdout":
                self.screen += _ANSI.sub("", content[0])
        return found

    def finish(self, mark: str, timeout: float = 120) -> tuple[str, int]:
        """What a command `start` typed printed, and its exit code."""
        found = self.read_until(rf"^{mark}-start\n(.*?)^{mark}-rc=(\d+)\n", timeout)
        return found.group(1).rstrip("\n"), int(found.group(2))

    def run(self, command: str, timeout: float = 120) -> tuple[str, int]:
        """Type `command` and Enter; returns what it printed and its exit code."""
        return self.finish(self.start(command), timeout)
