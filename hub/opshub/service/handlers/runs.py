"""The run API at `api/runs`: people's servers record their runs here (`opshub run`, interactive
runs), every role reads, admins delete.

Who records is always the token's owner. A person's token reports only `headless` and `interactive`
runs, and each record says who reported it and how it reached the service.
"""

from __future__ import annotations

import json
import logging

from jupyterhub.utils import url_path_join
from tornado import web

from ...contract import DELETE_SCOPE, RECORD_SCOPE
from ...run_record import RUN, RUN_FINISH, RUN_HEARTBEAT, RUNS, Heartbeat, Record, RecordError, RunEnd, RunStart, route
from ...runbooks.client import LOCK_HELD
from ..models import REPORTED_TRIGGERS, TRIGGERS, Run
from ..queue import LockHeld
from ..run_filters import parameter_filter
from ..unattended import RequestRefused
from .base import ApiHandler, int_argument, notebook_field, parse_time

log = logging.getLogger("opshub.service")


def run_json(run: Run, prefix: str, with_output: bool = False) -> dict:
    data = {
        "id": run.id,
        "runbook": run.runbook,
        "runbook_commit": run.runbook_commit,
        "drift": run.drift,
        "trigger": run.trigger,
        "user": run.user,
        "parameters": run.parameters,
        "status": run.status,
        "started_at": run.started_at.isoformat(),
        "ended_at": run.ended_at.isoformat() if run.ended_at else None,
        "last_heartbeat_at": run.last_heartbeat_at.isoformat(),
        "failed_cell": run.failed_cell,
        "error_summary": run.error_summary,
        "output_truncated": run.output_truncated,
        "reported_by": run.reported_by,
        "reported_from": run.reported_from,
        # unattended runs (the service's own records): who asked, when due, queued, at the first cell
        "requested_by": run.requested_by,
        "due_at": _time(run.due_at),
        "queued_at": _time(run.queued_at),
        "first_cell_at": _time(run.first_cell_at),
        "locks": run.locks or [],
        "cancel_requested_by": run.cancel_requested_by,
        "url": url_path_join(prefix, "runs", run.id),
    }
    if with_output:  # and what it published for dashboards (run_artifacts.py), seen by whoever sees the output
        data["output_notebook"] = json.loads(run.output_notebook) if run.output_notebook else None
        data["artifacts"] = run.artifacts or {}
    return data


def _time(value) -> str | None:
    return value.isoformat() if value else None


class RunsHandler(ApiHandler):
    @web.authenticated
    def get(self):
        args = {key: self.get_argument(key, None) for key in ("runbook", "user", "status", "trigger")}
        for key in ("since", "until"):
            value = self.get_argument(key, None)
            args[key] = parse_time(key, value) if value else None
        args["user_contains"] = self.get_argument("user_contains", None)
        try:
            args["parameter"] = parameter_filter(self.get_argument("param", None))
        except ValueError as e:
            raise web.HTTPError(400, str(e)) from None
        args["limit"] = int_argument(self, "limit", 50)
        args["offset"] = int_argument(self, "offset", 0)
        runs, total = self.store_call(self.store.list_runs, **args, visible_to=self.visibility())
        self.write({"runs": [run_json(r, self.prefix) for r in runs], "total": total})

    @web.authenticated
    def post(self):
        user = self.require(RECORD_SCOPE)
        start = record_of(RunStart, self.body())
        trigger = start.trigger
        if trigger not in REPORTED_TRIGGERS:
            allowed = " or ".join(REPORTED_TRIGGERS)
            if trigger not in TRIGGERS:
                raise web.HTTPError(400, f"trigger must be one of {', '.join(REPORTED_TRIGGERS)}, not {trigger!r}")
            raise web.HTTPError(
                403,
                f"a person's token reports only {allowed} runs, not {trigger!r}:"
                f" {trigger} runs are recorded by the opshub service itself",
            )
        sent_again = start.id is not None and self.store.get_run(start.id) is not None
        run = self.store_call(
            self.start_run,
            self.person_run_locks(start),
            runbook=start.runbook,
            user=user,
            trigger=trigger,
            parameters=start.parameters,
            runbook_commit=start.runbook_commit,
            drift=start.drift,
            run_id=start.id,
            reported_by=user,
            reported_from=self.reported_from(),
        )
        if sent_again:  # by a client that spools runs (its first answer was lost): the run it recorded then
            self.write(run_json(run, self.prefix))
            return
        log.info("run %s of %s started by %s (%s)", run.id, run.runbook, user, run.trigger)
        self.set_status(201)
        self.write(run_json(run, self.prefix))

    def person_run_locks(self, start: RunStart) -> list[str]:
        """The locks a person's `opshub run` of a repository runbook holds (its metadata's, with its
        parameters and the declared defaults at its commit), or 403 when the runbook's `run_groups` leave
        this person out; none for a notebook the repository does not
        have, nor for an interactive run (a person working cell by cell: its parameters are whatever the
        cells set, and a lock would keep its record out of the history)."""
        unattended = self.settings.get("opshub_unattended")
        runbook, commit = start.runbook, start.runbook_commit
        if start.trigger != "headless":
            return []
        if unattended is None or runbook not in unattended.catalog.names():
            return []
        try:
            found = unattended.runbook(runbook, commit or None)
        except RequestRefused:  # a commit the repository does not have (a local one): today's metadata
            found = unattended.runbook(runbook)
        refusal = unattended.group_refusal(found, self.user_name(), self.current_user.get("groups") or [])
        if refusal:  # `opshub run` of a runbook kept for some groups: refused before it runs, like a request
            raise web.HTTPError(403, refusal)
        defaults = {name: p.default for name, p in found.parameters.items() if p.has_default}
        return unattended.locks(found, {**defaults, **start.parameters})

    def start_run(self, locks: list[str], **start):
        queue = self.settings.get("opshub_queue")
        if queue is None:
            return self.store.start_run(**start)
        try:
            return queue.start_person_run(locks, **start)
        except LockHeld as e:
            raise web.HTTPError(409, f"{LOCK_HELD}: {e}; opshub run waits until it is free") from None


class RunHandler(ApiHandler):
    @web.authenticated
    def get(self, run_id):
        self.write(run_json(self.run_or_404(run_id), self.prefix, with_output=True))

    @web.authenticated
    def delete(self, run_id):
        user = self.require(DELETE_SCOPE)
        self.run_or_404(run_id)  # admins see every run: this only refuses malformed and unknown ids
        if not self.store.delete_run(run_id, by=user):
            raise web.HTTPError(404, f"no run with id {run_id!r}")
        log.info("run %s deleted by %s", run_id, user)
        self.set_status(204)


class HeartbeatHandler(ApiHandler):
    @web.authenticated
    def post(self, run_id):
        user = self.require(RECORD_SCOPE)
        body = self.body()
        self.run_or_404(run_id)  # an unknown run is a 404 whatever the body
        beat = record_of(Heartbeat, body)
        notebook = notebook_field(beat.output_notebook)
        self.store_call(self.store.heartbeat, run_id, user, notebook, beat.drift)
        run = self.store.get_run(run_id)
        if notebook is not None:  # its cells so far: the run's page shows them
            self.settings["opshub_changes"].changed(run.id, run.runbook, run.user)
        self.write(run_json(run, self.prefix))


class FinishHandler(ApiHandler):
    @web.authenticated
    def post(self, run_id):
        user = self.require(RECORD_SCOPE)
        body = self.body()
        self.run_or_404(run_id)
        end = record_of(RunEnd, body)
        run = self.store_call(
            self.store.finish_run,
            run_id,
            user,
            end.status,
            failed_cell=end.failed_cell,
            error_summary=end.error_summary,
            output_notebook=notebook_field(end.output_notebook),
            drift=end.drift,
        )
        log.info("run %s of %s ended %s", run.id, run.runbook, run.status)
        self.write(run_json(run, self.prefix))


def record_of(kind: type[Record], body: dict):
    """The record `kind` (opshub.run_record) in a request's body, exactly: 400 naming the field otherwise."""
    try:
        return kind.from_json(body)
    except RecordError as e:
        raise web.HTTPError(400, str(e)) from None


def run_handlers(prefix: str) -> list[tuple]:
    """The run API's routes under the service's prefix (its paths: opshub.run_record)."""
    return [
        (url_path_join(prefix, route(RUNS)), RunsHandler),
        (url_path_join(prefix, route(RUN)), RunHandler),
        (url_path_join(prefix, route(RUN_HEARTBEAT)), HeartbeatHandler),
        (url_path_join(prefix, route(RUN_FINISH)), FinishHandler),
    ]
