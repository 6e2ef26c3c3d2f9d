"""Unattended runs as the service records them: a request (a person, the API), a schedule's fire, an
alert. Each is checked against the runbook as the repository has it at the run's commit (it exists,
its metadata is right, every value is one its parameters allow: runbooks/typed_parameters.py, with
choices read from the repository at that commit), its locks are worked out from the checked values, and
it is queued (queue.py) with every value that applies, defaults included. The runner runs it.

Refusals raise `RequestRefused` with a message that names the problem, and a status for the API
(404: no such runbook or commit; 400: a wrong parameter or lock).
"""

from __future__ import annotations

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
from ..runbooks.params import declared_parameters
from ..runbooks.triggers import TriggerError, lock_keys
from ..runbooks.typed_parameters import Parameter, ParameterError, parameters_of, resolve
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
    parameters: dict[str, Parameter]
    read_file: Any  # a repository file at `commit`, as text (LookupError when it is not there)

    def resolve(self, given: Mapping[str, Any], text: bool = False) -> dict[str, Any]:
        """Every value that applies to a run given `given` (typed JSON; `text`: a form's text), checked."""
        return resolve(self.parameters, given, self.read_file, text)


class Unattended:
    def __init__(self, queue: RunQueue, catalog: RunbookCatalog):
        self.queue = queue
        self.catalog = catalog
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
        read_file = self._file_reader(commit)
        try:
            notebook = json.loads(text)
            metadata = runbook_metadata(notebook, name, read_file)
        except (ValueError, RunbookMetadataError) as e:
            raise RequestRefused(400, f"{name} at {commit[:12]} cannot run: {e}") from None
        with tempfile.TemporaryDirectory(prefix="opshub-runbook-") as folder:
            path = Path(folder) / "runbook.ipynb"
            path.write_text(text)
            try:
                declared = declared_parameters(path)
            except Exception as e:  # not a notebook papermill can read
                raise RequestRefused(400, f"{name} at {commit[:12]} cannot be read: {e}") from None
        parameters = parameters_of(metadata, declared)
        found = RunbookAt(name, self.catalog.full_commit(commit), metadata, parameters, read_file)
        if len(self._runbooks) > 500:
            self._runbooks.clear()
        self._runbooks[(name, commit)] = found
        return found

    def _file_reader(self, commit: str):
        """Reads a repository file at `commit`, each file once (the choices of parameters come from them)."""
        cache: dict[str, str] = {}

        def read_file(path: str) -> str:
            if path not in cache:
                try:
                    cache[path] = self.catalog.show(commit, path)
                except Exception:  # git says the path is not there
                    raise LookupError(f"the repository has no file {path} at commit {commit[:12]}") from None
            return cache[path]

        return read_file

    def _refresh_now(self) -> bool:
        """Look at the repository again, for a runbook just pushed (at most every few seconds)."""
        if time.monotonic() - self._refreshed < REFRESH_SECONDS:
            return False
        self._refreshed = time.monotonic()
        self.catalog.refresh()
        return True

    def locks(self, runbook: RunbookAt, values: Mapping[str, Any]) -> list[str]:
        """The locks a run with these (checked) values holds."""
        try:
            return lock_keys(runbook.metadata.get("locks") or [], values)
        except TriggerError as e:
            raise RequestRefused(400, f"{runbook.name}: a lock cannot be worked out: {e}") from None

    def check(self, runbook: RunbookAt, parameters: Any, text: bool = False) -> dict[str, Any]:
        """Every value that applies (`resolve`), or RequestRefused naming each wrong one."""
        if not isinstance(parameters, dict):
            raise RequestRefused(400, "parameters must be a JSON object of name: value")
        try:
            return runbook.resolve(parameters, text)
        except ParameterError as e:
            raise RequestRefused(400, f"{runbook.name}: {e}") from None

    def request(
        self, name: str, parameters: Any, requester: str, commit: str | None = None, text=False, groups=()
    ) -> Run:
        """A person's request (page, `opshub request`, API): queued, or RequestRefused. `text`: the values
        are a form's text, read for each parameter's type. `groups`: the requester's, held against the
        runbook's `run_groups`."""
        refusal = self.group_refusal(self.runbook(name, commit), requester, groups)
        if refusal:
            raise RequestRefused(403, refusal)
        return self._queue(name, parameters, commit, "requested", text, user=requester, requested_by=requester)

    @staticmethod
    def group_refusal(runbook: RunbookAt, requester: str, groups) -> str | None:
        """Why `requester` (in `groups`) may not request `runbook`, or None when they may."""
        allowed = runbook.metadata.get("run_groups") or []
        if not allowed or set(allowed) & set(groups or ()):
            return None
        return (
            f"{runbook.name} may be requested or run only by members of {', '.join(allowed)} "
            f"(its run_groups), and {requester} is in none of them"
        )

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

    def _queue(self, name: str, parameters: Any, commit, trigger: str, text=False, **fields) -> Run | None:
        runbook = self.runbook(name, commit)
        parameters = self.check(runbook, parameters, text)
        fields.setdefault("user", RUNNER_USER)
        run = self.queue.enqueue(
            runbook.name,
            trigger,
            parameters=parameters,
            commit=runbook.commit,
            locks=self.locks(runbook, parameters),
            **fields,
        )  # the runner hears of it from the store's bus
        return run
