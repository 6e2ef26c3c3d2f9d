"""Schedules: the `opshub.schedules` of the runbooks on the repository's branch (so every schedule is
reviewed in git), fired by the service, each fire exactly once.

Every second the scheduler looks for due times since each schedule's latest recorded fire (or since
opshub first saw the schedule: a new schedule does not fire for its past). A fire is a run record
whose `fire_key` (`<runbook>#<schedule>@<due time>`) is unique in the database, so a restarted service,
or a second service process on the same PostgreSQL database, that looks at the same due time records
nothing more.

Fires found late (opshub was down): the latest one of each schedule runs if it is at most
`runner.catch_up_minutes` late; the others are recorded as `missed`. A fire is never late within
ON_TIME_SECONDS (the scheduler's own tick, a busy machine).
"""

from __future__ import annotations

import datetime
import logging

from ..runbooks.triggers import Schedule, TriggerError, fires_between, next_fire, schedules_of
from .events import RunEvents
from .queue import RunQueue
from .unattended import RUNNER_USER, RequestRefused, Unattended

log = logging.getLogger("opshub.service.scheduler")

ON_TIME_SECONDS = 60


def schedule_id(schedule: Schedule) -> str:
    return f"{schedule.runbook}#{schedule.key}"


class Scheduler:
    def __init__(self, unattended: Unattended, queue: RunQueue, events: RunEvents, catch_up: datetime.timedelta):
        self.unattended = unattended
        self.queue = queue
        self.events = events
        self.catch_up = catch_up
        self._since: dict[str, datetime.datetime] = {}  # schedule id -> fires after this are to look at

    def schedules(self) -> list[Schedule]:
        catalog = self.unattended.catalog
        return [s for name, metadata in sorted(catalog.metadata().items()) for s in schedules_of(name, metadata)]

    def tick(self, now: datetime.datetime | None = None) -> None:
        """Record every fire due by `now` (default: the store's clock). Call it every second."""
        now = now or self.queue.store.now()
        for schedule in self.schedules():
            try:
                self._fire_due(schedule, now)
            except TriggerError as e:
                log.error("schedule %s: %s", schedule_id(schedule), e)

    def _fire_due(self, schedule: Schedule, now: datetime.datetime) -> None:
        sid = schedule_id(schedule)
        since = self._since.get(sid)
        if since is None:
            since = self.queue.schedule_since(sid, schedule.runbook)
            last = self.queue.last_fires([sid + "@"]).get(sid + "@")
            if last is not None:
                since = max(since, last[0])
        due = fires_between(schedule, since, now)
        if not due:
            return
        runnable_lateness = max(self.catch_up, datetime.timedelta(seconds=ON_TIME_SECONDS))
        for time in due:
            fire_key = f"{sid}@{time.isoformat()}"
            late = now - time
            if time == due[-1] and late <= runnable_lateness:
                self._fire(schedule, time, fire_key)
            else:
                reason = (
                    f"Missed: due at {time.isoformat(timespec='seconds')} while opshub was not running, and"
                    f" {_minutes(late)} late when it was back"
                    + (" (later fires of this schedule were due too)." if time != due[-1] else ".")
                    + f" runner.catch_up_minutes is {int(self.catch_up.total_seconds() // 60)}."
                )
                run = self.queue.record_missed(schedule.runbook, f"schedule {schedule.key}", fire_key, time, reason)
                self.events.fired(run, "missed")
                if run is not None:
                    log.warning("schedule %s: the fire due at %s is missed", sid, time.isoformat())
        self.queue.schedule_dealt_with(sid, due[-1])
        self._since[sid] = due[-1]

    def _fire(self, schedule: Schedule, time: datetime.datetime, fire_key: str) -> None:
        try:
            run = self.unattended.fire(schedule.runbook, schedule.key, schedule.parameters, time, fire_key)
        except RequestRefused as e:
            # on record, so the Schedules page and the history say why nothing ran
            run = self.queue.record_missed(
                schedule.runbook, f"schedule {schedule.key}", fire_key, time, f"Not run: {e}", status="failed"
            )
            if run is not None:
                log.error("schedule %s: the fire due at %s cannot run: %s", schedule_id(schedule), time, e)
            self.events.fired(run, "refused")
            return
        self.events.fired(run)
        if run is not None:
            log.info("schedule %s fired (due %s): run %s", schedule_id(schedule), time.isoformat(), run.id)

    def overview(self, now: datetime.datetime | None = None) -> list[dict]:
        """Each schedule with its next fire and its latest fire's result, for the Schedules page and API."""
        now = now or self.queue.store.now()
        schedules = self.schedules()
        last = self.queue.last_fires([schedule_id(s) + "@" for s in schedules])
        rows = []
        for schedule in schedules:
            latest = last.get(schedule_id(schedule) + "@")
            try:
                upcoming = next_fire(schedule, now)
            except TriggerError:
                upcoming = None
            rows.append(
                {
                    "runbook": schedule.runbook,
                    "key": schedule.key,
                    "name": schedule.name,
                    "cron": schedule.cron,
                    "timezone": schedule.timezone,
                    "parameters": schedule.parameters,
                    "user": RUNNER_USER,
                    "next_fire": upcoming.isoformat() if upcoming else None,
                    "last_fire": latest[0].isoformat() if latest else None,
                    "last_status": latest[1] if latest else None,
                    "last_run": latest[2] if latest else None,
                }
            )
        return rows


def _minutes(delta: datetime.timedelta) -> str:
    minutes = delta.total_seconds() / 60
    return f"{minutes:.0f} minutes" if minutes >= 2 else f"{delta.total_seconds():.0f} seconds"
