"""Schedules, for people: the Schedules page and its API, and steering a schedule without a commit:
pausing it with a reason, resuming it, and "Run now".

- `GET api/schedules`: every schedule this person may see, its cron in words, its next fires (UTC and on
  its own zone's clock), its latest fire's result, whether it is paused (who, when, why) and whether
  this person may steer it
- `POST api/schedules/<runbook>/<schedule>/pause` {"reason": "..."}: pause it -> 200 the schedule;
  400 without a reason, 409 if it is paused already
- `POST api/schedules/<runbook>/<schedule>/resume` -> 200 the schedule; 409 if it is not paused
- `POST api/schedules/<runbook>/<schedule>/run`: "Run now", a requested run with the schedule's
  parameters whose requester is the caller -> 201 the run (its trail names the schedule)
- pages: `schedules`, and `schedules/<runbook>/<schedule>/(pause|resume|run)`: a GET (or a POST without
  `confirm=yes`) asks first, as cancelling a run does; the POST with `confirm=yes` does it

`<schedule>` is the schedule's name (or, for an unnamed one, its key: the `key` of `api/schedules`). Who
may steer a schedule: admins, and the people who may request its runbook (the request permission, and
the runbook's `run_groups`). "Run now" is a request like the runbook page's, so only the latter.
Everyone else gets 403 naming why, and the page shows them no buttons.
"""

from __future__ import annotations

import datetime
import logging

from jupyterhub.services.auth import check_scopes
from jupyterhub.utils import url_path_join
from tornado import web

from ...contract import REQUEST_SCOPE
from ..schedule_control import ScheduleControlError
from ..unattended import RequestRefused
from .base import ApiHandler, BaseHandler, is_admin
from .runs import run_json

log = logging.getLogger("opshub.service")

ACTIONS = ("pause", "resume", "run")
SCHEDULE_PATH = r"(.+\.ipynb)[/#]([a-z0-9][a-z0-9-]*)"  # <runbook>/<schedule> (or <runbook>#<schedule>)


def visible_schedules(handler: BaseHandler) -> list[dict]:
    """The schedules of runbooks whose runs this person may see (dashboards restricted to groups hide
    their runbook's runs, hub/docs/dashboards.md), each with whether this person may steer it."""
    visibility = handler.visibility()
    rows = [
        row
        for row in handler.settings["opshub_scheduler"].overview(steering=True)
        if visibility.sees_runbook(row["runbook"])
    ]
    for row in rows:
        row["may_steer"] = steering_refusal(handler, row["runbook"]) is None
        row["may_run_now"] = request_refusal(handler, row["runbook"]) is None
    return rows


def request_refusal(handler: BaseHandler, runbook: str) -> str | None:
    """Why this person may not request a run of `runbook` (the runbook page's rules: the request
    permission and the runbook's `run_groups`), or None when they may."""
    user = handler.current_user or {}
    if user.get("kind") != "user":
        return "only people steer schedules, not services"
    name = user["name"]
    if not check_scopes({f"{REQUEST_SCOPE}!user={name}"}, user.get("scopes", [])):
        return f"{name} may not request runs of {runbook}: it needs the {REQUEST_SCOPE} permission"
    unattended = handler.settings["opshub_unattended"]
    try:
        found = unattended.runbook(runbook)
    except RequestRefused as e:
        return str(e)
    return unattended.group_refusal(found, name, user.get("groups") or [])


def steering_refusal(handler: BaseHandler, runbook: str) -> str | None:
    """Why this person may not pause or resume the schedules of `runbook`, or None: admins may, and
    whoever may request the runbook."""
    if is_admin(handler.current_user):
        return None
    refusal = request_refusal(handler, runbook)
    if refusal is None:
        return None
    return f"{refusal}; only admins and the people who may request {runbook} may pause or resume its schedules"


class ScheduleSteering:
    """What the API and the pages share: finding the schedule and doing what was asked."""

    def schedule_or_error(self, runbook: str, key: str):
        visibility = self.visibility()
        if not visibility.sees_runbook(runbook):
            raise web.HTTPError(403, visibility.refusal(runbook))
        scheduler = self.settings["opshub_scheduler"]
        schedule = scheduler.find(runbook, key)
        if schedule is None:
            keys = [s.key for s in scheduler.schedules() if s.runbook == runbook]
            known = f"its schedules: {', '.join(keys)}" if keys else "it declares no schedule"
            raise web.HTTPError(404, f"{runbook} has no schedule {key!r} on the repository's branch ({known})")
        return schedule

    def row(self, schedule_id: str) -> dict:
        return next(row for row in visible_schedules(self) if row["id"] == schedule_id)

    def steer(self, action: str, runbook: str, key: str, reason=None):
        """Pause, resume or run now; the schedule's row (the run for "run"), or an HTTPError naming why not."""
        schedule = self.schedule_or_error(runbook, key)
        sid = f"{schedule.runbook}#{schedule.key}"
        if action == "run":
            return self.run_now(schedule, sid)
        refusal = steering_refusal(self, runbook)
        if refusal:
            raise web.HTTPError(403, refusal)
        name = self.current_user["name"]
        control = self.settings["opshub_scheduler"].control
        try:
            if action == "pause":
                control.pause(sid, schedule.runbook, name, reason)
            else:
                control.resume(sid, name)
        except ScheduleControlError as e:
            raise web.HTTPError(e.status, str(e)) from None
        log.info("schedule %s: %sd by %s", sid, action, name)
        changes = self.settings.get("opshub_changes")
        if changes is not None:  # the pages that update in place show it at once
            changes.changed(f"schedule {sid}", schedule.runbook, "")
        return self.row(sid)

    def run_now(self, schedule, sid: str):
        """A requested run with the schedule's parameters, by this person, through the request path of
        the runbook page's form; its trail names the schedule."""
        refusal = request_refusal(self, schedule.runbook)
        if refusal:
            raise web.HTTPError(403, refusal)
        name = self.current_user["name"]
        unattended = self.settings["opshub_unattended"]
        groups = self.current_user.get("groups") or []
        try:
            run = unattended.request(schedule.runbook, schedule.parameters, name, None, False, groups)
        except RequestRefused as e:
            raise web.HTTPError(e.status, str(e)) from None
        except ValueError as e:
            raise web.HTTPError(400, str(e)) from None
        self.settings["opshub_scheduler"].control.note_run_now(run, sid, name)
        log.info("run %s of %s requested by %s with the parameters of schedule %s", run.id, run.runbook, name, sid)
        return run


class SchedulesApi(ApiHandler):
    @web.authenticated
    def get(self):
        self.write({"schedules": visible_schedules(self)})


class ScheduleActionApi(ScheduleSteering, ApiHandler):
    @web.authenticated
    def post(self, runbook, key, action):
        body = self.body()
        allowed = {"reason"} if action == "pause" else set()
        unknown = set(body) - allowed
        if unknown:
            send = 'send {"reason": "why"}' if action == "pause" else "send no fields"
            raise web.HTTPError(400, f"unknown field(s) {', '.join(sorted(unknown))}: {send}")
        result = self.steer(action, runbook, key, body.get("reason"))
        if action == "run":
            self.set_status(201)
            result = run_json(result, self.prefix)
        self.write(result)


class SchedulesPage(BaseHandler):
    @web.authenticated
    def get(self):
        render_schedules(self, visible_schedules(self))


class ScheduleActionPage(ScheduleSteering, BaseHandler):
    """`schedules/<runbook>/<schedule>/(pause|resume|run)`: asks first (the Schedules page with the
    question on top: a reason for a pause), then does it and goes back to the Schedules page."""

    @web.authenticated
    def get(self, runbook, key, action):
        self.ask(runbook, key, action)

    @web.authenticated
    def post(self, runbook, key, action):
        reason = self.get_body_argument("reason", None)
        if self.get_body_argument("confirm", "") != "yes":
            return self.ask(runbook, key, action, reason=reason)
        try:
            result = self.steer(action, runbook, key, reason)
        except web.HTTPError as e:
            if e.status_code not in (400, 403, 409):
                raise
            self.set_status(e.status_code)
            return self.ask(runbook, key, action, error=e.log_message, reason=reason)
        if action == "run":
            return self.redirect(url_path_join(self.prefix, "runs", result.id))
        self.redirect(url_path_join(self.prefix, "schedules"))

    def ask(self, runbook, key, action, error=None, reason=None):
        schedule = self.schedule_or_error(runbook, key)
        sid = f"{schedule.runbook}#{schedule.key}"
        rows = visible_schedules(self)
        asked = next(row for row in rows if row["id"] == sid)
        refusal = request_refusal(self, runbook) if action == "run" else steering_refusal(self, runbook)
        if refusal and not error:  # asked by someone who may not: say why, offer nothing
            self.set_status(403)
            error = refusal
        render_schedules(self, rows, asked=asked, action=action, error=error, reason=reason)


def render_schedules(handler: BaseHandler, rows: list[dict], **namespace) -> None:
    # the rows' times are ISO text (as the API has them); the page writes them as <time> elements
    parse_time = datetime.datetime.fromisoformat
    handler.render_page("schedules.html", schedules=rows, parse_time=parse_time, nav="schedules", **namespace)


def schedule_handlers(prefix: str) -> list[tuple]:
    actions = f"({'|'.join(ACTIONS)})"
    return [
        (url_path_join(prefix, "api/schedules"), SchedulesApi),
        (url_path_join(prefix, f"api/schedules/{SCHEDULE_PATH}/{actions}"), ScheduleActionApi),
        (url_path_join(prefix, "schedules"), SchedulesPage),
        (url_path_join(prefix, f"schedules/{SCHEDULE_PATH}/{actions}"), ScheduleActionPage),
    ]
