"""Requested runs and schedules, for people: a runbook's page with its parameter form (the runner
runs it), cancelling, and the Schedules page; the same as an API.

- `POST api/requests` {runbook, parameters?, commit?}: queue a run (the `custom:opshub:runs:request`
  scope: operators, authors, admins; never viewers) -> 201 the run, status `queued`
- `POST api/runs/<id>/cancel`: its requester or an admin -> 200 the run (`cancelled`, or still running
  with `cancel_requested_by` until its runner has stopped)
- `GET api/schedules`: every schedule, its next fire and its latest fire's result
- pages: `runbooks/` (the list), `runbooks/<path>` (the form), `runs/<id>/cancel` (the run page's button), `schedules`
"""

from __future__ import annotations

import json
import logging

from jupyterhub.services.auth import check_scopes
from jupyterhub.utils import url_path_join
from tornado import web

from ...contract import REQUEST_SCOPE
from ...runbooks.typed_parameters import form_fields
from ..queue import NotCancellable
from ..store import NotRunOwner, RunNotFound
from ..unattended import RequestRefused
from .base import ApiHandler, BaseHandler, is_admin
from .runs import run_json

log = logging.getLogger("opshub.service")


class RequestMixin:
    """What the API and the pages share: who may request and cancel, and doing it."""

    def may_request(self) -> bool:
        user = self.current_user
        return (
            bool(user)
            and user.get("kind") == "user"
            and bool(check_scopes({f"{REQUEST_SCOPE}!user={user['name']}"}, user.get("scopes", [])))
        )

    def request_run(self, runbook, parameters, commit=None, text=False):
        """Queue a run for this person; `text`: the values are a form's text."""
        name = self.require(REQUEST_SCOPE)
        groups = self.current_user.get("groups") or []
        try:
            run = self.settings["opshub_unattended"].request(runbook, parameters, name, commit, text, groups)
        except RequestRefused as e:
            raise web.HTTPError(e.status, str(e)) from None
        except ValueError as e:
            raise web.HTTPError(400, str(e)) from None
        log.info("run %s of %s requested by %s", run.id, run.runbook, name)
        return run

    def cancel_run(self, run_id):
        self.run_or_404(run_id)
        name = self.user_name()
        queue = self.settings["opshub_queue"]
        try:
            run = queue.request_cancel(run_id, name, is_admin(self.current_user))
        except RunNotFound as e:
            raise web.HTTPError(404, str(e)) from None
        except NotRunOwner as e:
            raise web.HTTPError(403, str(e)) from None
        except NotCancellable as e:
            raise web.HTTPError(409, str(e)) from None
        if run.finished:
            self.settings["opshub_run_events"].ended(run)
        else:
            self.settings["opshub_runner"].wake()  # it stops the run's server
        log.info("run %s cancelled by %s (%s)", run_id, name, run.status)
        return run


class RequestsApi(RequestMixin, ApiHandler):
    @web.authenticated
    def post(self):
        body = self.body()
        unknown = set(body) - {"runbook", "parameters", "commit"}
        if unknown:
            raise web.HTTPError(400, f"unknown field(s) {', '.join(sorted(unknown))}: send runbook, parameters, commit")
        run = self.request_run(body.get("runbook"), body.get("parameters", {}), body.get("commit"))
        self.set_status(201)
        self.write(run_json(run, self.prefix))


class RunbookApi(RequestMixin, ApiHandler):
    """`GET api/runbooks/<path>`: a runbook at the repository's latest commit (or ?commit=), with its
    parameters as forms show them (types, descriptions, defaults, choices read from the repository) and
    whether this person may request it."""

    @web.authenticated
    def get(self, runbook):
        found = runbook_for(self, runbook, self.get_argument("commit", None))
        self.write(runbook_json(self, found))


def runbook_for(handler: BaseHandler, runbook: str, commit: str | None = None):
    """The runbook at `commit` (default: the latest), if this person may see its runs."""
    if runbook in handler.hidden_runbooks():
        raise web.HTTPError(403, f"{runbook}'s dashboard is restricted to groups {handler.user_name()} is not in")
    try:
        return handler.settings["opshub_unattended"].runbook(runbook, commit)
    except RequestRefused as e:
        raise web.HTTPError(e.status, str(e)) from None


def runbook_json(handler: RequestMixin, found) -> dict:
    metadata = found.metadata
    refusal = handler.settings["opshub_unattended"].group_refusal(
        found, handler.user_name(), handler.current_user.get("groups") or []
    )
    return {
        "name": found.name,
        "commit": found.commit,
        "title": metadata.get("title") or found.name,
        "description": metadata.get("description") or "",
        "changes_systems": metadata.get("changes_systems", False),
        "locks": metadata.get("locks") or [],
        "run_groups": metadata.get("run_groups") or [],
        "may_request": handler.may_request() and refusal is None,
        "request_refusal": refusal,
        "parameters": form_fields(found.parameters, found.read_file),
    }


class CancelApi(RequestMixin, ApiHandler):
    @web.authenticated
    def post(self, run_id):
        self.write(run_json(self.cancel_run(run_id), self.prefix))


def visible_schedules(handler: BaseHandler) -> list[dict]:
    """The schedules of runbooks whose runs this person may see (dashboards restricted to groups hide
    their runbook's runs, hub/docs/dashboards.md)."""
    hidden = handler.hidden_runbooks()
    return [row for row in handler.settings["opshub_scheduler"].overview() if row["runbook"] not in hidden]


class SchedulesApi(ApiHandler):
    @web.authenticated
    def get(self):
        self.write({"schedules": visible_schedules(self)})


class RunbookPage(RequestMixin, BaseHandler):
    """A runbook: what it declares (parameters, schedules, alerts, locks) and the form to request a run."""

    @web.authenticated
    def get(self, runbook):
        self.render_form(runbook)

    @web.authenticated
    def post(self, runbook):
        found = runbook_for(self, runbook)
        values = {}
        for parameter in found.parameters.values():
            # a field the form has: a list is every value picked (none: an empty list); a checkbox comes
            # after a hidden "false", so the last value is the box's
            if not parameter.settable or self.get_body_argument(f"f-{parameter.name}", None) is None:
                continue
            given = [v for v in self.get_body_arguments(f"p-{parameter.name}") if v != ""]
            if parameter.multiple:
                values[parameter.name] = given
            elif given:
                values[parameter.name] = given[-1]
        try:
            run = self.request_run(runbook, values, text=True)
        except web.HTTPError as e:
            self.set_status(e.status_code)
            return self.render_form(runbook, error=e.log_message)
        self.redirect(url_path_join(self.prefix, "runs", run.id))

    def render_form(self, runbook, error=None):
        found = runbook_for(self, runbook)
        self.render_page(
            "runbook.html",
            runbook=found,
            error=error,
            may_request=self.may_request(),
            form=runbook_json(self, found),
            schedules=[row for row in visible_schedules(self) if row["runbook"] == found.name],
            alerts=found.metadata.get("alerts") or [],
            tojson=json.dumps,
        )


class CancelPage(RequestMixin, BaseHandler):
    @web.authenticated
    def post(self, run_id):
        try:
            self.cancel_run(run_id)
        except web.HTTPError as e:
            if e.status_code not in (403, 409):
                raise
            run = self.run_or_404(run_id)
            self.set_status(e.status_code)
            return self.render_page("run.html", run=run, has_output=bool(run.output_notebook), error=e.log_message)
        self.redirect(url_path_join(self.prefix, "runs", run_id))


class RunbooksPage(RequestMixin, BaseHandler):
    """Every runbook of the repository, each linking to its page (and its request form)."""

    @web.authenticated
    def get(self):
        catalog = self.settings["opshub_unattended"].catalog
        hidden = self.hidden_runbooks()
        self.render_page(
            "runbooks.html",
            runbooks=sorted((name, meta) for name, meta in catalog.metadata().items() if name not in hidden),
            invalid=sorted(catalog.invalid().items()),
            commit=catalog.commit(),
            may_request=self.may_request(),
            nav="runbooks",
        )


class SchedulesPage(BaseHandler):
    @web.authenticated
    def get(self):
        self.render_page("schedules.html", schedules=visible_schedules(self), nav="schedules")


def request_handlers(prefix: str) -> list[tuple]:
    return [
        (url_path_join(prefix, "api/requests"), RequestsApi),
        (url_path_join(prefix, r"api/runs/([^/]+)/cancel"), CancelApi),
        (url_path_join(prefix, r"api/runbooks/(.+\.ipynb)"), RunbookApi),
        (url_path_join(prefix, "api/schedules"), SchedulesApi),
        (url_path_join(prefix, "runbooks/"), RunbooksPage),
        (url_path_join(prefix, r"runbooks/(.+\.ipynb)"), RunbookPage),
        (url_path_join(prefix, r"runs/([^/]+)/cancel"), CancelPage),
        (url_path_join(prefix, "schedules"), SchedulesPage),
    ]
