"""The runner, the service's side: claims queued runs (queue.py) and starts a named server of the
`opshub-runner` system account for each through the hub's API, hands it its job through the proxy,
and removes the server when the run has ended (see opshub/runner/ for the server itself).

Every second (and at once when a run is queued) it claims what `max_concurrent` and the locks allow.
A run whose server the hub cannot be asked to start (the hub restarts) goes back to the queue; one
the spawner fails to start ends `failed`, saying why. Every 30 seconds it removes servers whose run
has ended (a run cancelled while running, a service restarted while a run ended), asks servers
of runs being cancelled to stop, and records `interrupted` the runs whose server is gone (their
sandbox went with it).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
from collections.abc import Callable

from tornado import httpclient

from ..contract import RUNNER_ACCOUNT, server_prefix
from ..runner import JOB_PATH
from . import outages
from .hub_api import HubApi
from .lifecycle import RunChanged
from .models import QUEUED, RUNNER_TRIGGERS, Run
from .outages import is_database_outage
from .queue import Claim, RunQueue

log = logging.getLogger("opshub.service.runner")

TICK_SECONDS = 1.0
RECONCILE_SECONDS = 30.0
HUB_RETRY_SECONDS = 5.0  # after the hub could not be reached, queued runs wait this long


class RunnerStartFailed(RuntimeError):
    """The runner's server for a run could not be started or given its job."""


class Runner:
    def __init__(
        self,
        queue: RunQueue,
        hub: HubApi,
        proxy_url: str,
        hub_base_url: str,
        archive: Callable[[str], bytes],
        max_concurrent: int,
        start_timeout: float = 120,
        on_lock_wait: Callable[[Run | str, str], None] = lambda run, lock: None,
    ):
        self.queue = queue
        self.hub = hub
        self.proxy_url = proxy_url.rstrip("/")
        self.prefix = server_prefix(hub_base_url, RUNNER_ACCOUNT)  # /user/opshub-runner/
        self.archive = archive
        self.max_concurrent = max_concurrent
        self.start_timeout = start_timeout
        self.on_lock_wait = on_lock_wait
        self.launching: dict[str, asyncio.Task] = {}  # run id -> its start
        self.stopping: set[str] = set()  # servers asked to stop
        self.waiting: dict[str, str] = {}  # run id -> the lock it waits for
        self.missing: set[str] = set()  # running runs whose server the hub did not list at the last look
        self.paused_until = 0.0  # the hub was away: no claims before this (time.monotonic())
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task] = []

    # -- the loops ----------------------------------------------------------------------------------

    def start(self) -> None:
        self._tasks = [asyncio.ensure_future(self._dispatch_loop()), asyncio.ensure_future(self._reconcile_loop())]

    def stop(self) -> None:
        for task in self._tasks:
            task.cancel()

    def wake(self) -> None:
        """Something was queued (or ended): look at the queue now rather than at the next tick."""
        with contextlib.suppress(RuntimeError):  # called from a thread without the loop: the tick will do
            asyncio.get_running_loop().call_soon(self._wake.set)

    async def _dispatch_loop(self) -> None:
        while True:
            try:
                await self.dispatch()
                outages.database.answered()
            except Exception as e:  # a database hiccup must not stop the runner for good
                if is_database_outage(e):
                    outages.database.failed(e)
                else:
                    log.exception("dispatching queued runs")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), TICK_SECONDS)
            self._wake.clear()

    async def _reconcile_loop(self) -> None:
        while True:
            try:
                await self.reconcile()
            except (OSError, httpclient.HTTPClientError) as e:
                log.warning("cannot look at the runner's servers: %s", e)
            except Exception as e:
                if is_database_outage(e):
                    outages.database.failed(e)
                else:
                    log.exception("looking at the runner's servers")
            await asyncio.sleep(RECONCILE_SECONDS)

    async def dispatch(self) -> None:
        if time.monotonic() < self.paused_until:
            return
        loop = asyncio.get_running_loop()
        claims, waiting = await loop.run_in_executor(None, self.queue.claim, self.max_concurrent)
        for run_id, lock in waiting.items():
            if self.waiting.get(run_id) != lock:
                self.on_lock_wait(run_id, lock)
                log.info("run %s waits for the lock %s", run_id, lock)
        self.waiting = waiting
        for claim in claims:
            self.launching[claim.run.id] = asyncio.ensure_future(self.launch(claim))
        for run in await loop.run_in_executor(None, self.queue.cancel_requested):
            if run.runner_server and run.runner_server not in self.stopping and run.id not in self.launching:
                self.stopping.add(run.runner_server)
                log.info("run %s: cancel asked by %s, stopping its server", run.id, run.cancel_requested_by)
                await self.remove(run.runner_server)

    async def reconcile(self) -> None:
        """Remove the runner's servers whose run is not running any more, and put back in the queue the
        runs claimed without a server that came up (a service killed while it started one)."""
        servers = await self.hub.servers(RUNNER_ACCOUNT)
        loop = asyncio.get_running_loop()
        runs = await loop.run_in_executor(None, self.queue.runner_runs)
        active = {run.runner_server for run in runs}
        for name in servers:
            if name and name not in active and name not in self.launching:
                log.info("removing the runner's server %s: its run has ended", name)
                await self.remove(name)
        now = self.queue.store.now()
        # another service process may be starting one: only once that would have timed out
        patience = self.start_timeout + RECONCILE_SECONDS
        abandoned = [
            run.id
            for run in runs
            if run.runner_server not in servers
            and run.first_cell_at is None
            and run.id not in self.launching
            and (now - run.started_at).total_seconds() > patience
        ]
        for run_id in abandoned:
            if await loop.run_in_executor(None, self.queue.release, run_id):
                log.warning("run %s goes back to the queue: its runner's server never came up", run_id)
        # past its first cell, a run whose server is gone is gone too (its sandbox ends with the server);
        # seen gone twice in a row, so that a hub still taking over its servers after a restart is no loss
        missing = {
            run.id
            for run in runs
            if run.runner_server not in servers and run.first_cell_at is not None and run.id not in self.launching
        }
        lost, self.missing = missing & self.missing, missing
        for run_id in sorted(lost):
            ended = await loop.run_in_executor(None, self.queue.lost, run_id)
            if ended is not None:
                log.warning("run %s: its runner's server is gone; recorded interrupted", run_id)

    # -- one run ------------------------------------------------------------------------------------

    async def launch(self, claim: Claim) -> None:
        run = claim.run
        loop = asyncio.get_running_loop()
        try:
            await self._start_server(run)
            archive = await loop.run_in_executor(None, self.archive, run.runbook_commit)
            await self._hand_job(run, claim.token, archive)
            log.info("run %s of %s handed to the runner's server %s", run.id, run.runbook, run.runner_server)
        except OSError as e:  # the hub is away (a restart): the run waits in the queue again
            if time.monotonic() >= self.paused_until:
                log.warning("the hub cannot be reached (%s): queued runs wait %.0fs", e, HUB_RETRY_SECONDS)
            self.paused_until = time.monotonic() + HUB_RETRY_SECONDS
            await loop.run_in_executor(None, self.queue.release, run.id)
        except RunnerStartFailed as e:
            log.error("run %s failed to start: %s", run.id, e)
            await loop.run_in_executor(None, self.queue.fail, run.id, f"The runner could not start the run: {e}")
            with contextlib.suppress(OSError):
                await self.remove(run.runner_server)
        finally:
            self.launching.pop(run.id, None)
            self.wake()

    async def _start_server(self, run: Run) -> None:
        # the runbook: the hub's spawner mounts into the run's container only the credentials granted to it
        response = await self.hub.start_server(RUNNER_ACCOUNT, run.runner_server, {"runbook": run.runbook})
        if response.code not in (201, 202):
            raise RunnerStartFailed(f"the hub answered {response.code}: {_message(response)}")
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + self.start_timeout
        last_touch = time.monotonic()
        while True:
            server = (await self.hub.servers(RUNNER_ACCOUNT)).get(run.runner_server)
            if server is None:
                raise RunnerStartFailed("the server stopped while starting (see the hub's log)")
            if server.get("ready"):
                return
            if time.monotonic() > deadline:
                raise RunnerStartFailed(f"the server did not start within {self.start_timeout:.0f}s")
            if time.monotonic() - last_touch > 10:  # starting counts as alive
                await loop.run_in_executor(None, self.queue.touch, run.id)
                last_touch = time.monotonic()
            await asyncio.sleep(0.2)

    async def _hand_job(self, run: Run, token: str, archive: bytes) -> None:
        job = {
            "run_id": run.id,
            "token": token,
            "runbook": run.runbook,
            "commit": run.runbook_commit,
            "parameters": run.parameters,
            "archive": base64.b64encode(archive).decode(),
        }
        url = f"{self.proxy_url}{self.prefix}{run.runner_server}/{JOB_PATH}"
        deadline = time.monotonic() + 30
        while True:  # the proxy's route may lag a moment behind the hub's "ready"
            response = await self.hub.client.fetch(
                url,
                method="POST",
                body=json.dumps(job),
                headers={"Authorization": f"token {self.hub.api_token}", "Content-Type": "application/json"},
                raise_error=False,
                request_timeout=60,
            )
            if response.code == 202:
                return
            if response.code not in (404, 502, 503, 599) or time.monotonic() > deadline:
                raise RunnerStartFailed(f"the runner's server refused the job: {response.code} {_message(response)}")
            await asyncio.sleep(0.3)

    async def remove(self, name: str | None) -> None:
        if not name:
            return
        response = await self.hub.remove_server(RUNNER_ACCOUNT, name)
        if response.code not in (202, 204, 404):
            log.warning(
                "the hub answered %s removing the runner's server %s: %s", response.code, name, _message(response)
            )

    def changed(self, change: RunChanged) -> None:
        """A run's status changed (the store's bus): a runner run that ended loses its server, and a run
        queued or ended may let a queued one start now."""
        run = change.run
        if change.ended and run.trigger in RUNNER_TRIGGERS:
            self.stopping.discard(run.runner_server or "")
            if run.runner_server:
                asyncio.ensure_future(self._remove_quietly(run.runner_server))
        if change.ended or change.after == QUEUED:
            self.wake()

    async def _remove_quietly(self, name: str) -> None:
        try:
            await self.remove(name)
        except OSError as e:  # the next reconcile removes it
            log.warning("cannot remove the runner's server %s now: %s", name, e)


def _message(response: httpclient.HTTPResponse) -> str:
    try:
        return str(json.loads(response.body).get("message", ""))[:300]
    except (ValueError, AttributeError, TypeError):
        return (response.body or b"")[:300].decode(errors="replace")
