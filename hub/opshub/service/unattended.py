"""Unattended runs as the service records them: a request (a person, the API), a schedule's fire, an
alert. Each is checked against the runbook as the repository has it at the run's commit (it exists,
its metadata is right, the parameters are declared), its locks are worked out from its metadata and
its parameters (the declared defaults included), and it is queued (queue.py). The runner runs it.

Refusals raise `RequestRefused` with a message that names the problem, and a status for the API
(404: no such runbook or commit; 400: a wrong parameter or lock).
"""

from __future__ import annotations

import ast
import datetime
import json
import re
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..runbooks.catalog import RunbookCatalog
from ..runbooks.metadata import RunbookMetadataError, runbook_metadata
from ..runbooks.params import DeclaredParameter, UsageError, check_parameters, declared_parameters
from ..runbooks.triggers import TriggerError, lock_keys
from .models import Run
from .queue import RunQueue

COMMIT = re.compile(r"[0-9a-f]{7,64}")
REFRESH_SECONDS = 5
RUNNER_USER = "opshub-runner"  # the `user` of runs nobody asked for in person (schedules, alerts)


class RequestRefused(ValueError):
    def __init__(self, status: int, message: str):
        self.status = status
        super().__init__(message)


@dataclass(frozen=True)
class RunbookAt:
    """A runbook as the repository has it at one commit."""

    name: str
    commit: str
    metadata: dict[str, Any]
    declared: dict[str, DeclaredParameter]

    def defaults(self) -> dict[str, Any]:
        """The declared defaults as values, where they are literals (`stack = "web"`)."""
        values = {}
        for name, parameter in self.declared.items():
            try:
                values[name] = ast.literal_eval(parameter.default)
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                values[name] = parameter.default
        return values


class Unattended:
    def __init__(self, queue: RunQueue, catalog: RunbookCatalog, wake=lambda: None):
        self.queue = queue
        self.catalog = catalog
        self.wake = wake  # tells the runner there is something in the queue
        self._runbooks: dict[tuple[str, str], RunbookAt] = {}
        self._refreshed = 0.0

    def runbook(self, name: str, commit: str | None = None) -> RunbookAt:
        """`name` at `commit` (default: the branch's latest the service has), checked."""
        if not isinstance(name, str) or not name:
            raise RequestRefused(400, "runbook must be the path of a runbook in the repository")
        if commit is None:
            commit = self.catalog.commit()
            if commit is None:
                raise RequestRefused(503, "the service has not read the runbooks repository yet: try again shortly")
            if name not in self.catalog.names() and self._refresh_now():
                commit = self.catalog.commit() or commit
            if name not in self.catalog.names() and self.catalog.unreachable:  # it may exist: say why we cannot tell
                raise RequestRefused(503, f"{self.catalog.unreachable} {name!r} is not in it; try again shortly")
            if name not in self.catalog.names():
                known = ", ".join(sorted(self.catalog.names())) or "none"
                raise RequestRefused(404, f"there is no runbook {name!r} in the repository (runbooks: {known})")
        elif not isinstance(commit, str) or not COMMIT.fullmatch(commit):
            raise RequestRefused(400, f"commit must be 7 to 64 lowercase hex digits, not {commit!r}")
        cached = self._runbooks.get((name, commit))
        if cached is not None:
            return cached
        try:
            text = self.catalog.show_runbook(commit, name)
        except LookupError as e:
            raise RequestRefused(404, str(e)) from None
        try:
            notebook = json.loads(text)
            metadata = runbook_metadata(notebook, name)
        except (ValueError, RunbookMetadataError) as e:
            raise RequestRefused(400, f"{name} at {commit[:12]} cannot run: {e}") from None
        with tempfile.TemporaryDirectory(prefix="opshub-runbook-") as folder:
            path = Path(folder) / "runbook.ipynb"
            path.write_text(text)
            try:
                declared = declared_parameters(path)
            except Exception as e:  # not a notebook papermill can read
                raise RequestRefused(400, f"{name} at {commit[:12]} cannot be read: {e}") from None
        found = RunbookAt(name, self.catalog.full_commit(commit), metadata, declared)
        if len(self._runbooks) > 500:
            self._runbooks.clear()
        self._runbooks[(name, commit)] = found
        return found

    def _refresh_now(self) -> bool:
        """Look at the repository again, for a runbook just pushed (at most every few seconds)."""
        if time.monotonic() - self._refreshed < REFRESH_SECONDS:
            return False
        self._refreshed = time.monotonic()
        self.catalog.refresh()
        return True

    def locks(self, runbook: RunbookAt, parameters: Mapping[str, Any]) -> list[str]:
        try:
            return lock_keys(runbook.metadata.get("locks") or [], {**runbook.defaults(), **parameters})
        except TriggerError as e:
            raise RequestRefused(400, f"{runbook.name}: a lock cannot be worked out: {e}") from None

    def check(self, runbook: RunbookAt, parameters: Any) -> dict[str, Any]:
        if not isinstance(parameters, dict):
            raise RequestRefused(400, "parameters must be a JSON object of name: value")
        try:
            check_parameters(runbook.name, parameters, runbook.declared)
        except UsageError as e:
            raise RequestRefused(400, str(e)) from None
        return parameters

    def request(self, name: str, parameters: Any, requester: str, commit: str | None = None) -> Run:
        """A person's request (page, `opshub request`, API): queued, or RequestRefused."""
        return self._queue(name, parameters, commit, "requested", user=requester, requested_by=requester)

    def fire(self, name: str, schedule_key: str, parameters: dict, due: datetime.datetime, fire_key: str) -> Run | None:
        """A schedule's fire, at the branch's latest commit. None: this fire is on record already."""
        requested_by = f"schedule {schedule_key}"
        return self._queue(name, parameters, None, "schedule", requested_by=requested_by, due_at=due, fire_key=fire_key)

    def alert(self, name: str, alertname: str, fingerprint: str, parameters: dict, received: datetime.datetime):
        """An alert's run. None: this alert already has a queued or running run of this runbook."""
        requested_by = f"alert {alertname} {fingerprint}"[:255]
        return self._queue(
            name, parameters, None, "alert", requested_by=requested_by, due_at=received, alert_fingerprint=fingerprint
        )

    def _queue(self, name: str, parameters: Any, commit: str | None, trigger: str, **fields) -> Run | None:
        runbook = self.runbook(name, commit)
        parameters = self.check(runbook, parameters)
        fields.setdefault("user", RUNNER_USER)
        run = self.queue.enqueue(
            runbook.name,
            trigger,
            parameters=parameters,
            commit=runbook.commit,
            locks=self.locks(runbook, parameters),
            **fields,
        )
        self.wake()
        return run
