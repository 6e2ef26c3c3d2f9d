"""What reaches the service from machines rather than people: the runner's reports on its run, and
Alertmanager's webhook.

- `api/runner/runs/<id>/{begin,heartbeat,finish}`: `Authorization: Bearer <run token>`, the token the
  service minted for that one run when it handed it to the runner (queue.py stores only its sha256).
  Any other run, or any other token, gets 403.
- `api/alerts`: Alertmanager's webhook (version 4) with `Authorization: Bearer <alerts token>`. Each
  firing alert starts the runbooks whose `opshub.alerts` match it, once per alert fingerprint while a
  run of it is queued or running; a resolved alert cancels its runs still queued.

Neither uses the hub's authentication (they are not people), nor cookies: no XSRF check applies.
"""

from __future__ import annotations

import logging
import re

from jupyterhub.utils import url_path_join
from tornado import web

from ...run_record import RUNNER_BEGIN, RUNNER_FINISH, RUNNER_HEARTBEAT, FirstCell, Heartbeat, RunEnd, route
from ...runbooks.triggers import alert_rules_of
from ..queue import BadRunToken
from ..store import RunAlreadyFinished, RunNotFound
from .base import ServiceHandler, json_object, notebook_field
from .runs import record_of, run_json

log = logging.getLogger("opshub.service")

FINGERPRINT = re.compile(r"[0-9A-Za-z]{1,64}")  # Alertmanager's: 16 hex digits
MAX_ALERTS = 1000  # alerts in one notification (Alertmanager's max_alerts is 0, unlimited, by default)


class MachineHandler(ServiceHandler):
    """A JSON API for a caller holding a bearer secret: no cookies, so no XSRF check."""

    def check_xsrf_cookie(self) -> None:
        return None

    def body(self) -> dict:
        return json_object(self.request.body)

    @property
    def hooks(self):
        return self.settings["opshub_run_events"]


class RunnerReportHandler(MachineHandler):
    """One of the runner's reports (`action`: begin, heartbeat, finish), each the record of
    opshub.run_record its path takes."""

    RECORDS = {"begin": FirstCell, "heartbeat": Heartbeat, "finish": RunEnd}

    def initialize(self, action: str) -> None:
        self.action = action

    def post(self, run_id: str):
        queue = self.settings["opshub_queue"]
        scheme, _, token = self.request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise web.HTTPError(401, "send the run's token: Authorization: Bearer <token>")
        report = record_of(self.RECORDS[self.action], self.body())
        if getattr(report, "drift", False):
            raise web.HTTPError(400, "drift: the runner runs the runbook as its commit has it, never drifted")
        try:
            if self.action == "begin":
                run = queue.runner_begin(run_id, token)
                self.hooks.began(run)
            elif self.action == "heartbeat":
                run = queue.runner_heartbeat(run_id, token, notebook_field(report.output_notebook))
                if report.output_notebook is not None:  # its cells so far: the run's page shows them
                    self.settings["opshub_changes"].changed(run.id, run.runbook, run.user)
            else:
                run = queue.runner_finish(
                    run_id,
                    token,
                    report.status,
                    report.failed_cell,
                    report.error_summary,
                    notebook_field(report.output_notebook),
                )
                log.info("run %s of %s %s on the runner", run.id, run.runbook, run.status)
        except RunNotFound as e:
            raise web.HTTPError(404, str(e)) from None
        except BadRunToken as e:
            raise web.HTTPError(403, str(e)) from None
        except RunAlreadyFinished as e:
            raise web.HTTPError(409, str(e)) from None
        except ValueError as e:
            raise web.HTTPError(400, str(e)) from None
        self.write(run_json(run, self.settings["opshub_prefix"]))


class AlertsHandler(MachineHandler):
    """Alertmanager's webhook receiver."""

    def post(self):
        self.check_bearer(self.settings["opshub_alerts_token"], "send the alerts bearer token")
        body = self.body()
        alerts = body.get("alerts")
        if not isinstance(alerts, list) or len(alerts) > MAX_ALERTS:
            raise web.HTTPError(400, f"alerts must be a list of at most {MAX_ALERTS} alerts (Alertmanager's webhook)")
        unattended = self.settings["opshub_unattended"]
        queue = self.settings["opshub_queue"]
        received = queue.store.now()
        started, skipped, cancelled, problems = [], 0, [], []
        for alert in alerts:
            labels, fingerprint, status = _alert_fields(alert)
            if labels is None:
                problems.append("an alert without labels or fingerprint was ignored")
                continue
            if status == "resolved":
                by = f"alert {labels.get('alertname', '')} resolved"
                cancelled += [run.id for run in queue.cancel_queued_alert_runs(fingerprint, by)]
                continue
            for rule in self.rules():
                if not rule.matches(labels):
                    continue
                try:
                    parameters = rule.parameters_for(labels)
                    run = unattended.alert(rule.runbook, rule.alertname, fingerprint, parameters, received)
                except ValueError as e:  # TriggerError, RequestRefused, a value the history cannot store
                    problems.append(str(e))
                    log.error("alert %s (%s) cannot start %s: %s", rule.alertname, fingerprint, rule.runbook, e)
                    self.record_refusal(rule, fingerprint, received, e)
                    continue
                if run is None:
                    skipped += 1
                else:
                    started.append(run_json(run, self.settings["opshub_prefix"]))
                    log.info("alert %s (%s) queued run %s of %s", rule.alertname, fingerprint, run.id, run.runbook)
        self.write({"started": started, "already_running": skipped, "cancelled": cancelled, "problems": problems})

    def record_refusal(self, rule, fingerprint: str, received, error: ValueError) -> None:
        """On record, once per alert and runbook (Alertmanager sends a firing alert again and again), so the
        history says why the alert ran nothing."""
        queue = self.settings["opshub_queue"]
        try:
            queue.record_missed(
                rule.runbook,
                f"alert {rule.alertname} {fingerprint}"[:255],
                f"{rule.runbook}!alert:{fingerprint}",
                received,
                f"Not run: {error}"[:4000],
                status="failed",
                trigger="alert",
            )
        except ValueError as e:  # a field the history cannot store: the webhook's answer says the problem
            log.error("alert %s (%s): its refusal cannot be recorded: %s", rule.alertname, fingerprint, e)

    def rules(self):
        catalog = self.settings["opshub_unattended"].catalog
        return [
            rule for name, metadata in sorted(catalog.metadata().items()) for rule in alert_rules_of(name, metadata)
        ]


def _alert_fields(alert) -> tuple[dict | None, str, str]:
    """An alert's labels (strings), fingerprint and status, or None labels if it has not the shape."""
    if not isinstance(alert, dict):
        return None, "", ""
    labels, fingerprint = alert.get("labels"), alert.get("fingerprint")
    if not isinstance(labels, dict) or not isinstance(fingerprint, str) or not FINGERPRINT.fullmatch(fingerprint):
        return None, "", ""
    return {str(k): str(v) for k, v in labels.items()}, fingerprint, str(alert.get("status", "firing"))


def runner_handlers(prefix: str) -> list[tuple]:
    return [
        (url_path_join(prefix, route(RUNNER_BEGIN)), RunnerReportHandler, {"action": "begin"}),
        (url_path_join(prefix, route(RUNNER_HEARTBEAT)), RunnerReportHandler, {"action": "heartbeat"}),
        (url_path_join(prefix, route(RUNNER_FINISH)), RunnerReportHandler, {"action": "finish"}),
        (url_path_join(prefix, "api/alerts"), AlertsHandler),
    ]
