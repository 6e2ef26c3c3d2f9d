"""Notifications about runs: the `notifications:` settings, sent through Apprise (Slack, Teams, email,
webhooks...). hub/docs/notifications.md says what is sent when.

    notifier = Notifier(store, settings["notifications"], public_url, registry=registry)
    store.bus.subscribe(notifier.changed)     # a run changed: wake the loop
    notifier.start()                          # on the service's event loop
    notifier.step()                           # or one pass by hand (tests): collect, then deliver

An outbox, so nothing is lost or sent twice across restarts:

1. lifecycle.py writes a RunEvent in the transaction that changes the run: the event is on record
   before anybody is told.
2. `collect()` reads the events after the notifier's FeedPosition, matches them against the rules and
   inserts one Notification per event and target (its `key` is unique), advancing the position in
   the same transaction. Runs waiting behind a lock too long are found here too (no event tells it).
   On PostgreSQL the position's row is locked (FOR UPDATE), so two service processes take turns.
3. `deliver_due()` sends the pending notifications that are due, each claimed first by a
   compare-and-set on its `attempts` (of two processes, one sends) that also sets its next attempt
   (5 s, doubling, capped), so a process killed while sending leaves it to be tried again.
   After `max_attempts` it is `failed`, its last error kept.

A process killed after an attempt reached the receiver but before it recorded it sends it again:
notifications are sent once per event, except in that crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any
from urllib.parse import urlsplit

import apprise
from prometheus_client import CollectorRegistry, Counter
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, defer

from ..contract import service_prefix
from ..runbooks.results import cell_name
from ..settings import schema
from . import outages
from .lifecycle import RunChanged
from .models import Dashboard, FeedPosition, Notification, Run, RunEvent
from .run_states import END, RUNNER_TRIGGERS, SKIPPED_ACTION, Status

log = logging.getLogger("opshub.service.notifier")

READER = "notifier"  # its FeedPosition
NEVER_STARTED, WAITING, DASHBOARD_BROKEN = "never_started", "waiting", "dashboard_broken"
REASONS = ("failed", "missed", "interrupted", NEVER_STARTED, WAITING, "succeeded", "cancelled", DASHBOARD_BROKEN)
PENDING, SENT, FAILED = "pending", "sent", "failed"
RESULTS = ("sent", "retried", "failed")
BATCH = 200  # events read, or notifications sent, per transaction
MAX_ERROR = 2000
MAX_SUMMARY = 1500  # of a run's error summary in a message (the run's page has all of it)

_SECTION = schema()["properties"]["notifications"]["properties"]
RULE_DEFAULTS = {
    key: spec["default"] for key, spec in _SECTION["rules"]["items"]["properties"].items() if "default" in spec
}
DEFAULT_MAX_ATTEMPTS = _SECTION["max_attempts"]["default"]

WHAT = {
    "failed": "failed",
    "missed": "was missed",
    "interrupted": "was interrupted",
    NEVER_STARTED: "never started",
    WAITING: "is waiting behind a lock",
    "succeeded": "succeeded",
    "cancelled": "was cancelled",
}
KIND = {
    "succeeded": apprise.NotifyType.SUCCESS,
    WAITING: apprise.NotifyType.WARNING,
    "missed": apprise.NotifyType.WARNING,
}


@dataclass(frozen=True)
class Rule:
    """One entry of `notifications.rules`."""

    to: tuple[str, ...]
    on: frozenset[str]
    runbooks: tuple[str, ...]  # fnmatch patterns (`*` matches `/` too, as for runner.credentials); none: all
    triggers: frozenset[str]
    waiting_minutes: int

    @classmethod
    def of(cls, rule: Mapping[str, Any]) -> Rule:
        rule = {**RULE_DEFAULTS, **rule}
        return cls(
            tuple(rule["to"]), frozenset(rule["on"]), tuple(rule["runbooks"]), frozenset(rule["triggers"]),
            rule["waiting_minutes"],
        )  # fmt: skip

    def wants(self, reason: str, run: Run) -> bool:
        # a run that never started ended `failed`: a rule on `failed` hears of it too
        on = reason in self.on or (reason == NEVER_STARTED and "failed" in self.on)
        return on and self.about(run.runbook) and run.trigger in self.triggers

    def about(self, runbook: str) -> bool:
        return not self.runbooks or any(fnmatchcase(runbook, pattern) for pattern in self.runbooks)


def reason_of(event: RunEvent, run: Run) -> str | None:
    """Why an event may be told (None: it is not an end): the run's end state, or never_started for an
    unattended run that ended failed before its first cell (its server never started, a refused fire)."""
    if event.to_status not in END or event.action == SKIPPED_ACTION:  # a paused schedule's fire: chosen
        return None
    if event.to_status == Status.FAILED and event.trigger in RUNNER_TRIGGERS and run.first_cell_at is None:
        return NEVER_STARTED
    return event.to_status


def failing_cell(run: Run) -> str:
    """The failing cell named as the run's page names it (`cell 3 (Reboot the hosts)`)."""
    try:
        return cell_name(json.loads(run.output_notebook or "{}"), run.failed_cell)
    except (ValueError, AttributeError, TypeError):  # no notebook recorded, or not one
        return f"cell {run.failed_cell + 1}"


def message(run: Run, reason: str, run_url: str, waiting: str | None = None) -> tuple[str, str]:
    """A notification's title and body: what a person needs to decide whether to look, and the link."""
    title = f"opshub: {run.runbook} {WHAT[reason]}"
    parameters = ", ".join(f"{k}={json.dumps(v)}" for k, v in sorted((run.parameters or {}).items()))
    lines = [
        f"Runbook: {run.runbook}",
        f"Status: {run.status}" + (" (it never started)" if reason == NEVER_STARTED else ""),
        f"Trigger: {run.trigger}",
        f"Who: {run.requested_by or run.user}",
        f"Parameters: {parameters or '(none)'}",
    ]
    if waiting:
        lines.append(f"Waiting: {waiting}")
    if run.failed_cell is not None:
        lines.append(f"Failed in: {failing_cell(run)}")
    if run.error_summary:
        summary = run.error_summary
        lines.append("Error: " + (summary if len(summary) <= MAX_SUMMARY else summary[:MAX_SUMMARY] + "..."))
    lines.append(f"Run: {run_url}{run.id}")
    return title, "\n".join(lines)


def dashboard_message(dashboard: Dashboard, url: str) -> tuple[str, str]:
    """The title and body telling that a live dashboard broke (its viewers see a page saying so)."""
    detail = dashboard.broken_detail or "(no detail)"
    lines = [
        f"Dashboard: {dashboard.title} ({dashboard.name}), live",
        f"Runbook: {dashboard.runbook or '(published from JupyterLab)'}",
        f"Owner: {dashboard.owner}",
        f"Broken since: {dashboard.broken_since.isoformat(timespec='seconds')}",
        "Error: " + (detail if len(detail) <= MAX_SUMMARY else detail[:MAX_SUMMARY] + "..."),
        f"Dashboard: {url}{dashboard.name}/",
    ]
    return f"opshub: the dashboard {dashboard.name} is broken", "\n".join(lines)


class Notifier:
    def __init__(
        self,
        store,
        settings: Mapping[str, Any],
        public_url: str,
        registry: CollectorRegistry | None = None,
        environ: Mapping[str, str] = os.environ,
        first_retry: datetime.timedelta = datetime.timedelta(seconds=5),
        max_retry: datetime.timedelta = datetime.timedelta(minutes=10),
        tick: float = 5.0,
    ):
        """`settings`: the `notifications:` section; each target's Apprise URL(s) are read from `environ`."""
        self.store = store
        self.url_env = {name: target["url_env"] for name, target in settings.get("targets", {}).items()}
        self.urls = {name: environ.get(env, "") for name, env in self.url_env.items()}
        self.rules = [Rule.of(rule) for rule in settings.get("rules", [])]
        self.max_attempts = settings.get("max_attempts", DEFAULT_MAX_ATTEMPTS)
        # <public_url>services/opshub/runs/<id>: public_url ends with the hub's base URL already
        self.run_url = public_url.rstrip("/") + service_prefix("/") + "runs/"
        self.dashboards_url = public_url.rstrip("/") + service_prefix("/") + "dashboards/"
        self.first_retry, self.max_retry, self.tick = first_retry, max_retry, tick
        self.results = Counter(
            "opshub_notifications",
            "Notifications about runs, by result: sent; retried (an attempt failed, it is tried again later);"
            " failed (given up after notifications.max_attempts).",
            ["result"],
            registry=registry,
        )
        for result in RESULTS:
            self.results.labels(result)
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        for name, env in self.url_env.items():
            if not self.urls[name]:
                log.warning("notification target %s: $%s is not set, its notifications will fail", name, env)
        self._start_position()

    # -- the outbox ------------------------------------------------------------------------------------

    def _start_position(self) -> None:
        """The first notifier of a database starts after the events already there: turning notifications
        on does not send the whole history."""
        try:
            with self.store.transaction() as session:
                if session.get(FeedPosition, READER) is None:
                    last = session.scalar(select(func.max(RunEvent.id))) or 0
                    session.add(FeedPosition(reader=READER, event_id=last))
        except IntegrityError:  # another service process made it first
            pass

    def step(self) -> None:
        """One pass: new events and waiting runs into notifications, then send those due. Blocking: the
        service runs it in a worker thread."""
        try:
            while self.collect() == BATCH:
                pass
        except IntegrityError:  # another process stored the same notifications first (SQLite locks no row)
            log.debug("notifications collected by another process")
        self.deliver_due()

    def collect(self) -> int:
        """Notifications for the events after the feed position (and for runs waiting too long behind a
        lock), in the transaction that advances the position. Returns how many events it read."""
        now = self.store.now()
        with self.store.transaction() as session:
            # FOR UPDATE: another service process waits here until this one has committed (PostgreSQL)
            position = session.scalars(
                select(FeedPosition).where(FeedPosition.reader == READER).with_for_update()
            ).one()
            events = session.scalars(
                select(RunEvent).where(RunEvent.id > position.event_id).order_by(RunEvent.id).limit(BATCH)
            ).all()
            wanted: dict[str, Notification] = {}
            for event in events:
                self._for_event(session, event, now, wanted)
            self._for_waiting(session, now, wanted)
            self._for_broken_dashboards(session, now, wanted)
            if wanted:
                known = set(session.scalars(select(Notification.key).where(Notification.key.in_(list(wanted)))))
                session.add_all(n for key, n in wanted.items() if key not in known)
            if events:
                position.event_id = events[-1].id
        return len(events)

    def _for_event(self, session: Session, event: RunEvent, now, wanted: dict[str, Notification]) -> None:
        if event.to_status not in END or not self.rules:
            return
        run = _run(session, event.run_id)
        if run is None:  # deleted before the notifier read its end: no page to link to
            return
        reason = reason_of(event, run)
        targets = {target for rule in self.rules if reason and rule.wants(reason, run) for target in rule.to}
        if targets:
            title, body = message(run, reason, self.run_url)
            for target in sorted(targets):
                wanted[f"{event.id}/{target}"] = self._new(run, reason, target, title, body, now, event.id)

    def _for_waiting(self, session: Session, now, wanted: dict[str, Notification]) -> None:
        """Queued runs held up by a lock another run holds, for longer than a rule's `waiting_minutes`:
        told once per run and target (no event says "still waiting")."""
        rules = [rule for rule in self.rules if WAITING in rule.on]
        if not rules:
            return
        soonest = now - datetime.timedelta(minutes=min(rule.waiting_minutes for rule in rules))
        queued = session.scalars(
            select(Run)
            .where(Run.status == Status.QUEUED, Run.queued_at <= soonest)
            .options(defer(Run.output_notebook, raiseload=True))
        ).all()
        if not queued:
            return
        held: dict[str, str] = {}  # lock -> the running run holding it
        for run_id, locks in session.execute(select(Run.id, Run.locks).where(Run.status == Status.RUNNING)):
            for lock in locks or ():
                held.setdefault(lock, run_id)
        for run in queued:
            lock = next((lock for lock in run.locks or () if lock in held), None)
            if lock is None:
                continue  # waiting for capacity, not a lock
            minutes = (now - run.queued_at).total_seconds() / 60
            targets = {
                target
                for rule in rules
                if minutes >= rule.waiting_minutes and rule.wants(WAITING, run)
                for target in rule.to
            }
            if targets:
                why = f"queued for {int(minutes)} minutes; the lock {lock} is held by run {self.run_url}{held[lock]}"
                title, body = message(run, WAITING, self.run_url, waiting=why)
                for target in sorted(targets):
                    wanted[f"waiting/{run.id}/{target}"] = self._new(run, WAITING, target, title, body, now, None)

    def _for_broken_dashboards(self, session: Session, now, wanted: dict[str, Notification]) -> None:
        """Live dashboards their views found broken (dashboard_health.py): told once per breakage and target."""
        rules = [rule for rule in self.rules if DASHBOARD_BROKEN in rule.on]
        if not rules:
            return
        broken = session.scalars(select(Dashboard).where(Dashboard.mode == "live", Dashboard.broken_since.is_not(None)))
        for dashboard in broken:
            targets = {
                target for rule in rules if rule.about(dashboard.runbook or dashboard.name) for target in rule.to
            }
            title, body = dashboard_message(dashboard, self.dashboards_url)
            since = dashboard.broken_since.isoformat(timespec="seconds")
            for target in sorted(targets):
                key = f"dashboard/{dashboard.name}@{since}/{target}"
                wanted[key] = _notification(key, "", None, DASHBOARD_BROKEN, target, title, body, now)

    @staticmethod
    def _new(run: Run, reason: str, target: str, title: str, body: str, now, event_id: int | None) -> Notification:
        key = f"{event_id}/{target}" if event_id is not None else f"waiting/{run.id}/{target}"
        return _notification(key, run.id, event_id, reason, target, title, body, now)

    # -- delivery --------------------------------------------------------------------------------------

    def retry_delay(self, attempts: int) -> datetime.timedelta:
        """How long after its `attempts`-th failed attempt a notification is tried again."""
        return min(self.first_retry * 2 ** (attempts - 1), self.max_retry)

    def deliver_due(self) -> int:
        """Send the pending notifications that are due, oldest first. Returns how many were sent."""
        with self.store.transaction() as session:
            due = session.execute(
                select(Notification.id, Notification.attempts)
                .where(Notification.status == PENDING, Notification.next_attempt_at <= self.store.now())
                .order_by(Notification.id)
                .limit(BATCH)
            ).all()
        return sum(self._attempt(notification_id, attempts) for notification_id, attempts in due)

    def _attempt(self, notification_id: int, attempts: int) -> bool:
        # Claim it: of two processes (or a restarted one) only the one whose update counts the attempt
        # sends it; the next attempt's time is set before sending, so a kill mid-send only delays it.
        now = self.store.now()
        with self.store.transaction() as session:
            claimed = session.execute(
                update(Notification)
                .where(
                    Notification.id == notification_id,
                    Notification.status == PENDING,
                    Notification.attempts == attempts,
                )
                .values(attempts=attempts + 1, next_attempt_at=now + self.retry_delay(attempts + 1))
            ).rowcount
            notification = session.get(Notification, notification_id) if claimed == 1 else None
        if notification is None:
            return False
        error = self.send(notification)
        if error is None:
            values, result = {"status": SENT, "sent_at": self.store.now(), "last_error": None}, "sent"
        elif attempts + 1 >= self.max_attempts:
            values, result = {"status": FAILED, "last_error": error}, "failed"
            log.warning(
                "notification %s about run %s: gave up after %d attempts: %s",
                notification.key,
                notification.run_id,
                attempts + 1,
                error,
            )
        else:
            values, result = {"last_error": error}, "retried"
            log.info(
                "notification %s about run %s: attempt %d failed, tried again later: %s",
                notification.key,
                notification.run_id,
                attempts + 1,
                error,
            )
        with self.store.transaction() as session:
            session.execute(update(Notification).where(Notification.id == notification_id).values(**values))
        self.results.labels(result).inc()
        return result == "sent"

    def send(self, notification: Notification) -> str | None:
        """Send one notification through Apprise (blocking); None when every URL of its target took it,
        otherwise why not."""
        target = notification.target
        if target not in self.urls:
            return f"notifications.targets has no target {target!r} any more"
        if not self.urls[target]:
            return f"${self.url_env[target]} is not set in the opshub service's environment"
        sender = apprise.Apprise()
        if not sender.add(self.urls[target]):
            return f"${self.url_env[target]} holds no URL that Apprise knows (see Apprise's list of services)"
        with apprise.LogCapture(level=logging.WARNING, fmt="%(message)s") as logs:
            sent = sender.notify(
                title=notification.title, body=notification.body,
                notify_type=KIND.get(notification.reason, apprise.NotifyType.FAILURE),
            )  # fmt: skip
            if sent:
                return None
            error = (logs.getvalue() or "").strip() or "Apprise could not send it"
            return scrub(error, self.urls[target])[:MAX_ERROR]

    # -- on the service's event loop -------------------------------------------------------------------

    def changed(self, change: RunChanged) -> None:
        """The store's bus: a run changed. Its event is stored already; the loop reads it from there."""
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._wake.clear()
            try:
                await loop.run_in_executor(None, self.step)
            except Exception as e:  # the database away, a bug: the next tick tries again
                if outages.is_database_outage(e):
                    outages.database.failed(e)
                else:
                    log.exception("notifications")
            # woken by a run's change, or every `tick` seconds for retries and waiting runs
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.tick)


def scrub(text: str, urls: str) -> str:
    """`text` without the secrets of `urls` (a target's Apprise URLs: their tokens, passwords and
    webhook paths), so an error from Apprise can be shown on a run's page and logged."""
    secrets = set()
    for url in re.split(r"[\s,]+", urls.strip()):
        parts = urlsplit(url)
        secrets.add(url)
        secrets |= {parts.password or "", parts.username or "", parts.query}
        host = parts.netloc.rpartition("@")[2].split(":")[0]  # as written: .hostname is lowercased
        if "." not in host:  # not a machine's name: a token (slack://T0.../...)
            secrets.add(host)
        secrets |= set(re.split(r"[/&=?]", parts.path + "&" + parts.query))
    for secret in sorted((s for s in secrets if len(s) >= 6), key=len, reverse=True):
        text = text.replace(secret, "****")
    return text


def _notification(key, run_id, event_id, reason, target, title, body, now) -> Notification:
    """A notification to send (`run_id` empty: about a dashboard)."""
    return Notification(
        key=key, run_id=run_id, event_id=event_id, reason=reason, target=target, title=title, body=body,
        status=PENDING, attempts=0, next_attempt_at=now, created_at=now,
    )  # fmt: skip


def _run(session: Session, run_id: str) -> Run | None:
    """The run an event is about; its notebook is read (in this session) only if the message names its
    failing cell."""
    return session.scalars(select(Run).where(Run.id == run_id).options(defer(Run.output_notebook))).first()
