"""Requested runs, for people: a runbook's page with its parameter form (the runner runs it) and
cancelling; the same as an API. (The Schedules page and its API: schedules.py.)

- `POST api/requests` {runbook, parameters?, commit?, as_text?}: queue a run (the `custom:opshub:runs:request`
  scope: operators, authors, admins; never viewers) -> 201 the run, status `queued`; each value checked
  against the runbook's parameters (400 naming the parameter, the value and what is allowed); `as_text`:
  the values are text as typed (`"false"`, `"900"`, `"a,b"`), read for each parameter's type
- `GET api/runbooks/<path>`: the runbook's parameters as forms show them, and whether one may request it
- `POST api/runs/<id>/cancel`: its requester or an admin -> 200 the run (`cancelled`, or still running
  with `cancel_requested_by` until its runner has stopped)
- pages: `runbooks/` (the list), `runbooks/<path>` (the form built from the runbook's typed parameters, checked
  by the service's own `resolve` with each problem shown under its field; a live run of a runbook that changes
  systems is reviewed first: every value that applies, the locks, the last dry run with the same values, and a
  second button), `runs/<id>/cancel` (asks first, then cancels)
- `static/parameter-form.js`: the form's script (dependent choices follow their parent without a reload)
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from jupyterhub.services.auth import check_scopes
from jupyterhub.utils import url_path_join
from tornado import web

from ...contract import REQUEST_SCOPE
from ...runbooks.typed_parameters import ParameterError, form_fields
from ..queue import NotCancellable
from ..store import MAX_LIST_LIMIT, NotRunOwner, RunNotFound
from ..unattended import RequestRefused
from .base import ApiHandler, BaseHandler, ServiceHandler, is_admin
from .pages import RunPage
from .runs import run_json
from .schedules import visible_schedules

log = logging.getLogger("opshub.service")

# The request form's script: a file of the service (the pages' CSP runs no inline script).
FORM_SCRIPT = Path(__file__).resolve().parent.parent / "static" / "parameter-form.js"
PROBLEM = re.compile(r"^parameter ([A-Za-z_][A-Za-z0-9_]*)\b")
DRY_RUN = "dry_run"  # the boolean parameter that makes a run of a system-changing runbook a dry run
DRY_RUNS_LOOKED_AT = 2000  # runs of the runbook looked through for the last dry run with the same values


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
        if not run.finished:
            self.settings["opshub_runner"].wake()  # it stops the run's server
        log.info("run %s cancelled by %s (%s)", run_id, name, run.status)
        return run


class RequestsApi(RequestMixin, ApiHandler):
    @web.authenticated
    def post(self):
        body = self.body()
        unknown = set(body) - {"runbook", "parameters", "commit", "as_text"}
        if unknown:
            fields = "runbook, parameters, commit, as_text"
            raise web.HTTPError(400, f"unknown field(s) {', '.join(sorted(unknown))}: send {fields}")
        as_text = body.get("as_text", False)
        if not isinstance(as_text, bool):
            raise web.HTTPError(400, "as_text must be true (the values are text, read for each type) or false")
        run = self.request_run(body.get("runbook"), body.get("parameters", {}), body.get("commit"), as_text)
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
    visibility = handler.visibility()
    if not visibility.sees_runbook(runbook):
        raise web.HTTPError(403, visibility.refusal(runbook))
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


class RunbookPage(RequestMixin, BaseHandler):
    """A runbook: what it declares (parameters, schedules, alerts, locks) and the form to request a run.

    The form is built from the runbook's typed parameters (`runbook_json`). Its POST is checked by the
    service's own `resolve` first: each problem is shown under the field it names, with what the person
    entered kept. A live run of a runbook that changes systems (its `dry_run` off) is not queued at once:
    the page shows every value that will apply, the locks and the last dry run with the same values, and
    only a second POST with `confirm=live` (at the reviewed commit) queues it."""

    @web.authenticated
    def get(self, runbook):
        self.render_form(runbook)

    @web.authenticated
    def post(self, runbook):
        confirmed = self.get_body_argument("confirm", "") == "live"
        commit = self.get_body_argument("commit", None) if confirmed else None
        found = runbook_for(self, runbook, commit)
        values, entered = self.form_values(found)
        if self.get_body_argument("edit", None) is not None:  # "Change values" on the review
            return self.render_form(runbook, entered=entered)
        if not self.may_request():
            self.set_status(403)
            refusal = f"{self.user_name()} may not request runs: it needs the {REQUEST_SCOPE} permission"
            return self.render_form(runbook, error=refusal)
        try:
            resolved = found.resolve(values, text=True)
        except ParameterError as e:
            field_errors, other = problems_by_field(e.problems, found.parameters)
            self.set_status(400)
            message = f"{found.name}: {'; '.join(other)}" if other else None
            if not message:
                message = "Some values are not allowed: see the fields marked below."
            return self.render_form(runbook, error=message, entered=entered, field_errors=field_errors)
        if needs_review(found, resolved) and not confirmed:
            try:
                review = self.review(found, values, resolved)
            except RequestRefused as e:
                self.set_status(e.status)
                return self.render_form(runbook, error=str(e), entered=entered)
            return self.render_form(runbook, entered=entered, review=review, found=found)
        try:
            run = self.request_run(runbook, values, commit=found.commit if confirmed else None, text=True)
        except web.HTTPError as e:
            self.set_status(e.status_code)
            return self.render_form(runbook, error=e.log_message, entered=entered)
        self.redirect(url_path_join(self.prefix, "runs", run.id))

    def form_values(self, found) -> tuple[dict, dict]:
        """The values the form sent, for `resolve` (text), and as entered, to show them again."""
        values, entered = {}, {}
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
            entered[parameter.name] = given if parameter.multiple else (given[-1] if given else "")
        return values, entered

    def review(self, found, values, resolved) -> dict:
        """What a live run would do: every value (and whether it was given), its locks, the last dry run."""
        locks = self.settings["opshub_unattended"].locks(found, resolved)
        return {
            "values": [(name, value, value_source(found.parameters[name], value)) for name, value in resolved.items()],
            "locks": locks,
            "last_dry_run": self.last_dry_run(found, resolved),
        }

    def last_dry_run(self, found, resolved):
        """The newest run of this runbook with `dry_run` true and every other value as in `resolved` (the
        runbook's defaults standing in for what an older record left out); None when there is none."""
        defaults = {name: p.default for name, p in found.parameters.items() if p.has_default}
        wanted = {name: value for name, value in resolved.items() if name != DRY_RUN}
        hidden = {"visible_to": self.visibility()}
        limit = min(MAX_LIST_LIMIT, 500)
        for offset in range(0, DRY_RUNS_LOOKED_AT, limit):
            runs, total = self.store.list_runs(runbook=found.name, limit=limit, offset=offset, **hidden)
            for run in runs:
                recorded = {**defaults, **(run.parameters or {})}
                if recorded.get(DRY_RUN) is True and {k: v for k, v in recorded.items() if k != DRY_RUN} == wanted:
                    return run
            if offset + limit >= total:
                break
        return None

    def render_form(self, runbook, error=None, entered=None, field_errors=None, review=None, found=None):
        found = found or runbook_for(self, runbook)
        form = runbook_json(self, found)
        self.render_page(
            "runbook.html",
            runbook=found,
            error=error,
            may_request=self.may_request(),
            form=form,
            fields=[form_field(field, (entered or {}), (field_errors or {})) for field in form["parameters"]],
            review=review,
            schedules=[row for row in visible_schedules(self) if row["runbook"] == found.name],
            alerts=found.metadata.get("alerts") or [],
            tojson=json.dumps,
            nav="runbooks",
        )


def value_source(parameter, value) -> str:
    """How a value that applies came to be: `fixed` (it cannot be set), `default`, or `set` (by the person)."""
    if not parameter.settable:
        return "fixed"
    same = parameter.has_default and json.dumps(value) == json.dumps(parameter.default)
    return "default" if same else "set"


def needs_review(found, resolved) -> bool:
    """A live run of a runbook that changes systems: its boolean `dry_run` is off."""
    parameter = found.parameters.get(DRY_RUN)
    return (
        bool(found.metadata.get("changes_systems"))
        and parameter is not None
        and parameter.type == "boolean"
        and resolved.get(DRY_RUN) is False
    )


def problems_by_field(problems: list[str], parameters) -> tuple[dict[str, list[str]], list[str]]:
    """`ParameterError.problems` by the parameter each names (a settable one the form shows), and the rest."""
    by_field: dict[str, list[str]] = {}
    other = []
    for problem in problems:
        match = PROBLEM.match(problem)
        name = match.group(1) if match else None
        if name in parameters and parameters[name].settable:
            by_field.setdefault(name, []).append(problem)
        else:
            other.append(problem)
    return by_field, other


def form_field(field: dict, entered: dict, errors: dict) -> dict:
    """One parameter as runbook.html shows it: its widget, its value (what was entered, or its default,
    as text) and its problems."""
    name = field["name"]
    default = field["default"] if field["has_default"] else None
    kind = field["type"]
    if field.get("problem") and not field.get("choices"):
        widget = "text"
    elif not field["settable"]:
        widget = "fixed"
    elif kind == "boolean" and not field["multiple"]:
        widget = "checkbox"
    elif "choices_by" in field:
        widget = "dependent"
    elif field.get("choices") is not None:
        widget = "select"
    elif field["multiple"]:
        widget = "list"
    elif kind in ("integer", "number"):
        widget = "number"
    else:
        widget = "text"
    if name in entered:
        value = entered[name]
    elif field["multiple"]:
        value = [str(item) for item in default] if isinstance(default, list) else []
    elif kind == "boolean":
        value = "true" if default is True else "false"
    elif kind == "any" or default is None:
        value = field["default_text"] if kind == "any" else ""
    else:
        value = str(default)
    checked = widget == "checkbox" and str(value).strip().lower() in ("true", "yes", "on", "1")
    if field["multiple"] and not isinstance(value, list):
        value = [value] if value else []
    if widget == "list":
        value = ", ".join(value)
    groups = {}
    if widget == "dependent":
        groups = {parent: [str(c) for c in choices] for parent, choices in field["choices_by"].items()}
    return {
        **field,
        "widget": widget,
        "value": value,
        "selected": value if isinstance(value, list) else [value],
        "checked": checked,
        "options": [str(c) for c in field.get("choices") or []],
        "groups": groups,
        "parent": (field.get("depends_on") or [None])[0],
        "errors": errors.get(name, []),
    }


class CancelPage(RequestMixin, BaseHandler):
    """`runs/<id>/cancel`: the run page's *Cancel run* asks first (GET, or a POST without `confirm`: a page
    that says what will be stopped, with a second button); a POST with `confirm=yes` cancels."""

    @web.authenticated
    def get(self, run_id):
        self.render_run(self.run_or_404(run_id), confirm_cancel=True)

    @web.authenticated
    def post(self, run_id):
        if self.get_body_argument("confirm", "") != "yes":
            return self.render_run(self.run_or_404(run_id), confirm_cancel=True)
        try:
            self.cancel_run(run_id)
        except web.HTTPError as e:
            if e.status_code not in (403, 409):
                raise
            run = self.run_or_404(run_id)
            self.set_status(e.status_code)
            return self.render_run(run, error=e.log_message)
        self.redirect(url_path_join(self.prefix, "runs", run_id))

    def render_run(self, run, **namespace):
        RunPage.render_run(self, run, **namespace)  # the run page itself, with the question or the refusal


class FormScript(ServiceHandler):
    """The request form's script (static: it holds nothing of anyone's)."""

    api = False

    def get(self):
        self.set_header("Content-Type", "text/javascript; charset=utf-8")
        self.set_header("Cache-Control", "no-cache")
        self.finish(FORM_SCRIPT.read_bytes())


class RunbooksPage(RequestMixin, BaseHandler):
    """Every runbook of the repository, each linking to its page (and its request form)."""

    @web.authenticated
    def get(self):
        catalog = self.settings["opshub_unattended"].catalog
        visibility = self.visibility()
        self.render_page(
            "runbooks.html",
            runbooks=sorted((name, meta) for name, meta in catalog.metadata().items() if visibility.sees_runbook(name)),
            invalid=sorted(catalog.invalid().items()),
            commit=catalog.commit(),
            may_request=self.may_request(),
            nav="runbooks",
        )


def request_handlers(prefix: str) -> list[tuple]:
    return [
        (url_path_join(prefix, "api/requests"), RequestsApi),
        (url_path_join(prefix, r"api/runs/([^/]+)/cancel"), CancelApi),
        (url_path_join(prefix, r"api/runbooks/(.+\.ipynb)"), RunbookApi),
        (url_path_join(prefix, "runbooks/"), RunbooksPage),
        (url_path_join(prefix, r"runbooks/(.+\.ipynb)"), RunbookPage),
        (url_path_join(prefix, r"runs/([^/]+)/cancel"), CancelPage),
        (url_path_join(prefix, "static/parameter-form.js"), FormScript),
    ]
