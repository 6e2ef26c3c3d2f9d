"""Record interactive runs: the cells a person runs in a runbook's kernel become a run in the history.

This runs inside the user's Jupyter server (a server extension), not inside the kernel. It listens to
each kernel's IOPub channel, where every kernel broadcasts the code it executes (`execute_input`), the
outputs and its busy/idle status. So it never slows a cell (it is not on the kernel's execution path), it
works for every kernel language (bash runbooks too), and the user's namespace is left alone.

Secrets are masked with the values of the kernel's own environment, not only the server's: after each cell
the kernel is asked, with a silent request (see `opshub.runbooks.masking.kernel_environment`), and the
run is written to the spool only once it answered, masked with every secret value seen so far, so that a
secret a cell sets (`os.environ["DB_PASSWORD"] = ...`, `export API_TOKEN=...`) and prints is masked in that
very cell, and in the earlier ones.

No cell is missed, not even the first one sent at once to a fresh kernel ("Run All" on a notebook just
opened). IOPub is ZMQ publish/subscribe, and a subscriber gets only what is published after its subscription
has reached the kernel, which happens some time after it connects, with nothing to say when. The person's
own connection is made sure of by jupyter_server (its "nudge"), ours is not. So `attach` wraps the kernel
manager's `start_kernel` and `restart_kernel`: the kernel is started (or restarted) as before, then the
recorder subscribes and sends kernel_info requests on a connection of its own until its subscription
carries the busy status of one of them (`until_heard`). Only then does the start answer, so no frontend
knows the kernel, or its new process, before the recorder hears everything it says. A kernel that does not
answer in time is let go with a warning (the frontend could not use it either). Alternatives weighed:
reading cells off the websocket sees only what a browser sends, and asking the kernel's history after the
fact gives a missed cell's source but not its outputs, so a failing first cell would go unnoticed.

A run starts with the first cell executed in a notebook inside the runbooks folder, and ends when the
kernel shuts down or restarts, or after `idle_minutes` without an execution. Its state is written to a
spool folder on local disk after every cell; a `Deliverer` sends it to the opshub service in order, and
retries while the service is unreachable. The run id is chosen here, so a retried start is recognised by
the service instead of recorded twice, and a finish already recorded answers 409, which counts as done.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import os
import subprocess
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..run_record import RunEnd, RunStart
from ..runbooks.gitstate import committed_text, git_state, notebook_cells
from ..runbooks.masking import kernel_environment, mask_notebook, mask_obj, secret_values
from ..runbooks.results import error_summary, failed_cell_index, is_failure
from .spool import Deliverer, Spool  # noqa: F401 (Spool: part of this module's interface too)

log = logging.getLogger("opshub.recorder")

KERNEL_ACTIONS = "https://events.jupyter.org/jupyter_server/kernel_actions/v1"
OUTPUT_TYPES = {"stream", "display_data", "execute_result", "error", "update_display_data"}
FAILED_CELL_TAG = "opshub-failed-cell"  # the service's run page highlights the cell with this tag
RECORD_OUTSIDE_ENV = "OPSHUB_RECORD_OUTSIDE_RUNBOOKS"
IDLE_MINUTES_ENV = "OPSHUB_INTERACTIVE_IDLE_MINUTES"
# How long a started kernel may take to be heard (jupyter_server's own kernel_info_timeout), and how often
# it is asked meanwhile (a request answered before our subscription was live is not seen: ask again).
HEAR_SECONDS = 60
HEAR_RETRY_SECONDS = 0.5
# How long the kernel may take to tell its environment after a cell. It may be busy with cells queued
# meanwhile (Run All), and the run is not spooled until it answers, so this is generous.
KERNEL_ENVIRONMENT_SECONDS = 600
# How long a shutdown or restart waits for that answer (the kernel is idle by then: milliseconds).
SETTLE_SECONDS = 30


def utcnow() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat()


@dataclass
class InteractiveRun:
    """One kernel session on one runbook, from its first executed cell to its end."""

    id: str
    runbook: str  # path inside the runbooks folder, as headless runs record it
    commit: str | None
    drift: bool
    repository_sources: set[str]  # the sources of the runbook's cells at `commit`, to spot edited cells
    metadata: dict[str, Any]
    cells: list[dict[str, Any]] = field(default_factory=list)
    # execute_request msg_id -> (its cell, when it started): the cells still running
    by_request: dict[str, tuple[dict[str, Any], float]] = field(default_factory=dict)
    last_activity: float = field(default_factory=time.monotonic)
    version: int = 0  # bumped on every change, so the deliverer knows what the service has not seen
    end: RunEnd | None = None  # its status, failing cell and summary (the notebook and drift are sent with it)
    # every secret value seen in the server's or the kernel's environment: masked whenever it is spooled
    secrets: set[str] = field(default_factory=set)

    def failed_cell(self) -> int | None:
        """The first cell that failed, by the rule headless runs follow too (`sys.exit(0)` is no failure)."""
        return failed_cell_index({"cells": self.cells})

    def notebook(self, finished_only: bool = False) -> dict[str, Any]:
        """The run as a notebook: the executed cells in the order they ran, with their outputs (not masked)."""
        running = {id(cell) for cell, _ in self.by_request.values()}
        cells = [cell for cell in self.cells if not (finished_only and id(cell) in running)]
        return {"nbformat": 4, "nbformat_minor": 5, "metadata": self.metadata, "cells": cells}

    def spool_record(self) -> dict[str, Any]:
        """What is written to disk and delivered: everything masked with the secrets known now.

        While the run goes on, cells still running are left out: the kernel was asked for its environment
        before they ran, so a secret they set is not known yet. They are in once they finish, or at the end.
        """
        secrets = sorted(self.secrets, key=lambda value: (-len(value), value))
        return {
            "id": self.id,
            "version": self.version,
            "start": RunStart(self.runbook, "interactive", {}, self.commit, self.drift, self.id).to_json(),
            "drift": self.drift,
            "notebook": mask_notebook(self.notebook(finished_only=self.end is None), secrets),
            "end": mask_obj(spooled_end(self.end), secrets),
        }


class Recorder:
    """Watches the kernels of one Jupyter server and records the runs of runbooks."""

    def __init__(
        self,
        serverapp,
        runbooks_dir: Path,
        spool: Spool,
        *,
        record_outside: bool = False,
        idle_minutes: float = 60,
        secret_names: Iterable[str] = (),
        on_change: Callable[[], None] = lambda: None,
        ask_kernels: bool = True,
    ):
        """`ask_kernels`: ask each kernel for its environment after every cell (False: the server's only)."""
        self.serverapp = serverapp
        self.runbooks_dir = Path(runbooks_dir)
        self.spool = spool
        self.record_outside = record_outside
        self.idle_seconds = idle_minutes * 60
        self.secret_names = list(secret_names)
        self.secrets = secret_values(os.environ, names=self.secret_names)
        self.on_change = on_change
        self.ask_kernels = ask_kernels
        self.asking: dict[str, asyncio.Future] = {}  # kernel id -> its environment being asked for
        self.ask_again: set[str] = set()  # kernels that finished a cell while being asked
        self.streams: dict[str, Any] = {}  # kernel id -> IOPub ZMQStream
        # kernel id -> (our kernel_info requests, set when the IOPub status of one of them arrives)
        self.probes: dict[str, tuple[set[str], asyncio.Event]] = {}
        self.runs: dict[str, InteractiveRun] = {}  # kernel id -> open run
        self.paths: dict[str, Path | None] = {}  # kernel id -> notebook path (None: not recorded)

    # Kernels

    def attach(self, kernel_manager) -> None:
        """Make the server's kernel manager answer a start or restart only once we hear the kernel, and
        shut down or restart a kernel only once it has told its environment after its last cells."""
        start_kernel, restart_kernel = kernel_manager.start_kernel, kernel_manager.restart_kernel
        shutdown_kernel = kernel_manager.shutdown_kernel

        async def start_then_listen(*args, **kwargs):
            kernel_id = await start_kernel(*args, **kwargs)
            await self.listen(kernel_id)
            return kernel_id

        async def restart_then_listen(kernel_id, *args, **kwargs):
            await self.settle(kernel_id)
            answer = await restart_kernel(kernel_id, *args, **kwargs)
            # a new process, maybe on new ports: subscribe afresh, and leave the old one's last words behind
            self.unwatch(kernel_id)
            await self.listen(kernel_id)
            return answer

        async def settle_then_shutdown(kernel_id, *args, **kwargs):
            await self.settle(kernel_id)
            return await shutdown_kernel(kernel_id, *args, **kwargs)

        kernel_manager.start_kernel = start_then_listen
        kernel_manager.restart_kernel = restart_then_listen
        kernel_manager.shutdown_kernel = settle_then_shutdown

    async def settle(self, kernel_id: str) -> None:
        """Before a kernel goes: let the question about its environment in flight come back (bounded),
        so the secrets its last cells set are known when its run is spooled. Without this a notebook
        closed right after a cell (or a loaded machine) stored that cell's secrets unmasked."""
        asking = self.asking.get(kernel_id)
        if asking is not None:
            with contextlib.suppress(Exception):  # a kernel that cannot answer: the end is spooled anyway
                await asyncio.wait_for(asyncio.shield(asking), SETTLE_SECONDS)

    async def listen(self, kernel_id: str) -> None:
        """Subscribe to a kernel's IOPub and wait until the subscription is live. Never fails a start."""
        try:
            self.watch(kernel_id)
            await self.until_heard(kernel_id)
        except Exception:
            log.exception("opshub: cannot make sure to hear kernel %s from its first cell", kernel_id)

    async def until_heard(self, kernel_id: str, timeout: float = HEAR_SECONDS) -> None:
        """Ask the kernel for its info until our IOPub subscription carries the busy status of a request.

        The requests go on a shell connection of our own session (a shared one would have the same ZMQ
        identity as the manager's other clients, and the kernel would send their replies to us).
        """
        kernel = self.serverapp.kernel_manager.get_kernel(kernel_id)
        if getattr(kernel, "execution_state", None) == "busy":
            return  # not a fresh kernel (a start that found it running), and kernel_info would wait behind its cell
        session = kernel.session.clone()
        session.session = str(uuid.uuid4())
        client = kernel.client(session=session)
        client.start_channels(shell=True, iopub=False, stdin=False, hb=False, control=False)
        requests, heard = self.probes[kernel_id] = (set(), asyncio.Event())
        deadline = time.monotonic() + timeout
        try:
            while kernel_id in self.streams and time.monotonic() < deadline:
                requests.add(client.kernel_info())
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(heard.wait(), HEAR_RETRY_SECONDS)
                    return
            log.warning(
                "opshub: kernel %s not heard within %gs; its first cells may not be recorded", kernel_id, timeout
            )
        finally:
            self.probes.pop(kernel_id, None)
            client.stop_channels()

    def watch(self, kernel_id: str) -> None:
        """Subscribe to a kernel's IOPub channel."""
        if kernel_id in self.streams:
            return
        km = self.serverapp.kernel_manager
        try:
            stream = km.connect_iopub(kernel_id)
        except Exception as e:  # the kernel went away meanwhile
            log.debug("opshub: cannot watch kernel %s: %s", kernel_id, e)
            return
        self.streams[kernel_id] = stream
        session = km.get_kernel(kernel_id).session
        stream.on_recv(lambda parts: self._on_iopub(kernel_id, session, parts))

    def unwatch(self, kernel_id: str) -> None:
        stream = self.streams.pop(kernel_id, None)
        if stream is not None:
            stream.close()

    def forget(self, kernel_id: str, how: str) -> None:
        self.end(kernel_id, how)
        self.unwatch(kernel_id)
        self.paths.pop(kernel_id, None)

    async def on_kernel_action(self, logger=None, schema_id=None, data=None) -> None:
        """jupyter_server's kernel_actions events: restart (ours, or the server's after a kernel died) and
        shutdown. Starts are followed by `attach`, which also hears the first cell."""
        try:
            self._on_kernel_action(data or {})
        except Exception:  # never let recording break a kernel action
            log.exception("opshub: cannot follow the kernel action %s", data)

    def _on_kernel_action(self, data: dict) -> None:
        kernel_id, action = data.get("kernel_id"), data.get("action")
        if not kernel_id or data.get("status") != "success":
            return
        if action == "restart":
            self.end(kernel_id, "the kernel was restarted")
            self.paths.pop(kernel_id, None)  # the notebook may have been renamed meanwhile
        elif action == "shutdown":
            self.forget(kernel_id, "the kernel was shut down")

    def check(self) -> None:
        """Periodic: watch kernels started before us, end runs of vanished kernels and idle runs."""
        alive = set(self.serverapp.kernel_manager.list_kernel_ids())
        for kernel_id in alive - set(self.streams):
            self.watch(kernel_id)
        for kernel_id in set(self.streams) - alive:
            self.forget(kernel_id, "the kernel stopped")
        now = time.monotonic()
        for kernel_id, run in list(self.runs.items()):
            if now - run.last_activity > self.idle_seconds:
                self.end(kernel_id, f"no cell ran for {self.idle_seconds / 60:g} minutes")

    def end_all(self, how: str) -> None:
        for kernel_id in list(self.runs):
            self.end(kernel_id, how)

    # Messages

    def _on_iopub(self, kernel_id: str, session, parts: list) -> None:
        try:
            _, parts = session.feed_identities(parts)
            message = session.deserialize(parts, content=True)
            self.on_message(kernel_id, message)
        except Exception:
            log.exception("opshub: cannot record a message of kernel %s", kernel_id)

    def on_message(self, kernel_id: str, message: dict) -> None:
        kind = message["header"]["msg_type"]
        request = message.get("parent_header", {}).get("msg_id")
        probe = self.probes.get(kernel_id)
        if probe is not None and request in probe[0]:
            probe[1].set()  # our subscription is live: everything the kernel says from now on reaches us
        if kind == "execute_input":
            self._cell_started(kernel_id, request, message["content"])
            return
        run = self.runs.get(kernel_id)
        if run is None or request not in run.by_request:
            return
        cell, started = run.by_request[request]
        content = message["content"]
        if kind in OUTPUT_TYPES:
            output = {"output_type": kind, **_output_fields(kind, content)}
            last = cell["outputs"][-1] if cell["outputs"] else None
            if kind == "stream" and last and last["output_type"] == "stream" and last["name"] == output["name"]:
                # one text, as JupyterLab shows it: a secret split across two messages is still masked
                last["text"] += output["text"]
            else:
                cell["outputs"].append(output)
            if is_failure(output):
                cell["metadata"].setdefault("tags", []).append(FAILED_CELL_TAG)
        elif kind == "clear_output":
            cell["outputs"].clear()
        elif kind == "status" and content.get("execution_state") == "idle":
            cell["metadata"]["opshub"]["duration_seconds"] = round(time.monotonic() - started, 3)
            del run.by_request[request]
            run.last_activity = time.monotonic()
            self._cell_finished(kernel_id, run)

    def _cell_finished(self, kernel_id: str, run: InteractiveRun) -> None:
        """Spool the run once the kernel has told its environment (the cell may have set a secret).

        One question at a time per kernel. A cell finishing while one is out may have run before the
        kernel answered: its secrets may be missing from the answer, so the kernel is asked again before
        anything is spooled.
        """
        if not self.ask_kernels:
            self._save(run)
        elif kernel_id in self.asking:
            self.ask_again.add(kernel_id)
        else:
            self.asking[kernel_id] = asyncio.ensure_future(self._ask_then_save(kernel_id))

    async def _ask_then_save(self, kernel_id: str) -> None:
        try:
            while True:
                self.ask_again.discard(kernel_id)
                try:
                    environment = await self.kernel_environment(kernel_id)
                except Exception as e:  # the kernel went away, or speaks no language we can ask
                    log.warning("opshub: cannot read the environment of kernel %s: %s", kernel_id, e)
                    environment = None
                run = self.runs.get(kernel_id)
                if run is None:  # ended meanwhile, and spooled then
                    return
                if environment:
                    run.secrets.update(secret_values(environment, self.secret_names))
                if kernel_id not in self.ask_again:
                    self._save(run)
                    return
        finally:
            if self.asking.get(kernel_id) is asyncio.current_task():
                del self.asking[kernel_id]

    async def kernel_environment(self, kernel_id: str) -> Mapping[str, str] | None:
        """The kernel's variables now (None: its language has no way to ask, or no answer in time)."""
        km = self.serverapp.kernel_manager.get_kernel(kernel_id)
        return await kernel_environment(km, timeout=KERNEL_ENVIRONMENT_SECONDS)

    def _cell_started(self, kernel_id: str, request: str, content: dict) -> None:
        run = self.runs.get(kernel_id)
        if run is None:
            run = self._new_run(kernel_id)
            if run is None:
                return
        code = content.get("code", "")
        edited = code.strip() not in run.repository_sources
        if edited:
            run.drift = True  # executed code the repository's runbook does not have
        cell = {
            "cell_type": "code",
            "id": f"cell-{len(run.cells)}",
            "execution_count": content.get("execution_count"),
            "source": code,
            "outputs": [],
            "metadata": {"opshub": {"started_at": utcnow(), "edited": edited}},
        }
        run.cells.append(cell)
        run.by_request[request] = (cell, time.monotonic())
        run.last_activity = time.monotonic()

    def _new_run(self, kernel_id: str) -> InteractiveRun | None:
        if kernel_id not in self.paths:
            self.paths[kernel_id] = self._runbook_path(kernel_id)
        path = self.paths[kernel_id]
        if path is None:
            return None
        try:
            runbook = path.resolve().relative_to(self.runbooks_dir.resolve()).as_posix()
            folder = path.parent
        except ValueError:  # outside the runbooks folder, recorded because the settings say so
            runbook, folder = str(path), path.parent
        commit, drift = git_state(folder, path.name)
        metadata = {}
        with contextlib.suppress(OSError, ValueError):
            metadata = json.loads(path.read_text()).get("metadata", {})
        run = InteractiveRun(
            id=str(uuid.uuid4()),
            runbook=runbook,
            commit=commit,
            drift=drift,
            repository_sources=_repository_sources(folder, path.name, commit),
            metadata={**metadata, "opshub_run": {"trigger": "interactive", "kernel_id": kernel_id}},
            secrets=set(self.secrets),
        )
        self.runs[kernel_id] = run
        log.info("opshub: recording the interactive run %s of %s", run.id, runbook)
        return run

    def _runbook_path(self, kernel_id: str) -> Path | None:
        """The notebook this kernel runs, if it is to be recorded; None otherwise."""
        # SessionManager's own SQLite table, read synchronously: its methods are coroutines, and a
        # message callback must not wait (the session exists before the first cell can run).
        row = self.serverapp.session_manager.cursor.execute(
            "SELECT path FROM session WHERE kernel_id=?", (kernel_id,)
        ).fetchone()
        if row is None or not row[0].endswith(".ipynb"):
            return None
        path = Path(self.serverapp.root_dir) / row[0]
        inside = path.resolve().is_relative_to(self.runbooks_dir.resolve())
        return path if inside or self.record_outside else None

    def end(self, kernel_id: str, how: str) -> None:
        asking = self.asking.pop(kernel_id, None)
        if asking is not None:  # a restarted or stopped kernel will not answer
            asking.cancel()
        run = self.runs.pop(kernel_id, None)
        if run is None:
            return
        failed = run.failed_cell()
        summary = error_summary({"cells": run.cells}, failed)
        summary = summary[:1000] if summary else None
        for cell, _ in run.by_request.values():  # cells still running when the kernel went away
            cell["metadata"]["opshub"]["unfinished"] = True
        run.end = RunEnd("failed" if failed is not None else "succeeded", failed, summary)
        run.metadata["opshub_run"]["ended"] = how  # shown with the recorded notebook
        self._save(run)
        log.info("opshub: interactive run %s of %s ended (%s)", run.id, run.runbook, how)

    def _save(self, run: InteractiveRun) -> None:
        run.version += 1
        self.spool.write(run.spool_record())
        self.on_change()


def spooled_end(end: RunEnd | None) -> dict[str, Any] | None:
    """What the spool keeps of a run's end: the notebook and drift are in the spooled record once."""
    if end is None:
        return None
    return {key: value for key, value in end.to_json().items() if key not in ("output_notebook", "drift")}


def _output_fields(kind: str, content: dict) -> dict[str, Any]:
    if kind == "stream":
        return {"name": content.get("name", "stdout"), "text": content.get("text", "")}
    if kind == "error":
        return {k: content.get(k) for k in ("ename", "evalue", "traceback")}
    fields = {"data": content.get("data", {}), "metadata": content.get("metadata", {})}
    if kind == "execute_result":
        fields["execution_count"] = content.get("execution_count")
    return fields


def _repository_sources(folder: Path, name: str, commit: str | None) -> set[str]:
    """The code cells' sources of the runbook at `commit` (empty when it is not in the repository)."""
    try:
        text = committed_text(folder, commit, name) if commit is not None else None
    except (OSError, subprocess.SubprocessError):
        return set()
    cells = notebook_cells(text) if text is not None else None
    return {source.strip() for kind, source in cells or [] if kind == "code"}
