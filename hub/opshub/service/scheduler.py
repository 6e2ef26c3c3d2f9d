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

A schedule a person has paused (schedule_control.py) does not fire: each of its due times is recorded as
`missed`, with who paused it, when and why as the record's reason (on its trail), as a fire due while
opshub was down is; once resumed, it fires again from its next due time.
"""

from __future__ import annotations

import datetime
import logging

from ..runbooks.triggers import Schedule, TriggerError, fires_between, schedules_of
from .cron_words import cron_in_words, in_zone, next_fires
from .events import RunEvents
from .queue import RunQueue
from .run_states import SKIPPED_ACTION
from .schedule_control import Pause, ScheduleControl
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
        self.control = ScheduleControl(queue.store)  # pauses, resumes
        self._since: dict[str, datetime.datetime] = {}  # schedule id -> fires after this are to look at

    def schedules(self) -> list[Schedule]:
        catalog = self.unattended.catalog
        return [s for name, metadata in sorted(catalog.metadata().items()) for s in schedules_of(name, metadata)]

    def tick(self, now: datetime.datetime | None = None) -> None:
        """Record every fire due by `now` (default: the store's clock). Call it every second."""
        now = now or self.queue.store.now()
        paused = self.control.open_pauses()
        for schedule in self.schedules():
            try:
                self._fire_due(schedule, now, paused.get(schedule_id(schedule)))
            except TriggerError as e:
                log.error("schedule %s: %s", schedule_id(schedule), e)

    def _fire_due(self, schedule: Schedule, now: datetime.datetime, paused: Pause | None = None) -> None:
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
            if paused is not None:
                self._skip(schedule, time, fire_key, paused)
            elif time == due[-1] and late <= runnable_lateness:
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

    def _skip(self, schedule: Schedule, time: datetime.datetime, fire_key: str, paused: Pause) -> None:
        """A fire of a paused schedule: on record as missed, saying who paused it and why."""
        reason = f"Skipped: due at {time.isoformat(timespec='seconds')} while the schedule was {paused.said()}"
        requested_by = f"schedule {schedule.key}"
        run = self.queue.record_missed(schedule.runbook, requested_by, fire_key, time, reason, action=SKIPPED_ACTION)
        self.events.fired(run, "missed")
        if run is not None:
            log.info("schedule %s: the fire due at %s is skipped (paused)", schedule_id(schedule), time.isoformat())

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

    def find(self, runbook: str, key: str) -> Schedule | None:
        """The schedule `key` of `runbook` on the branch now, or None."""
        return next((s for s in self.schedules() if s.runbook == runbook and s.key == key), None)

    def overview(self, now: datetime.datetime | None = None, steering: bool = False) -> list[dict]:
        """Each schedule with its next fire and its latest fire's result, for the Schedules page and API;
        `steering`: with its cron in words, its next fires (also on its own zone's clock) and its pause."""
        now = now or self.queue.store.now()
        schedules = self.schedules()
        last = self.queue.last_fires([schedule_id(s) + "@" for s in schedules])
        paused = self.control.open_pauses() if steering else {}
        resumed = self.control.last_resumed([schedule_id(s) for s in schedules]) if steering else {}
        rows = []
        for schedule in schedules:
            sid = schedule_id(schedule)
            latest = last.get(sid + "@")
            upcoming = next_fires(schedule, now)
            row = {
                "runbook": schedule.runbook,
                "key": schedule.key,
                "name": schedule.name,
                "cron": schedule.cron,
                "timezone": schedule.timezone,
                "parameters": schedule.parameters,
                "user": RUNNER_USER,
                "next_fire": upcoming[0].isoformat() if upcoming else None,
                "last_fire": latest[0].isoformat() if latest else None,
                "last_status": latest[1] if latest else None,
                "last_run": latest[2] if latest else None,
            }
            if steering:
                pause, resume = paused.get(sid), resumed.get(sid)
                row.update(
                    {
                        "id": sid,
                        "path": f"{schedule.runbook}/{schedule.key}",  # in its URLs: api/schedules/<path>/pause
                        "cron_words": cron_in_words(schedule.cron),
                        "next_fires": [
                            {"at": moment.isoformat(), "local": in_zone(moment, schedule.timezone)}
                            for moment in upcoming
                        ],
                        "paused": pause.as_json() if pause else None,
                        "last_resumed": resume.as_json() if resume and not pause else None,
                    }
                )
            rows.append(row)
        return rows


def _minutes(delta: datetime.timedelta) -> str:
    minutes = delta.total_seconds() / 60
    return f"{minutes:.0f} minutes" if minutes >= 2 else f"{delta.total_seconds():.0f} seconds"
