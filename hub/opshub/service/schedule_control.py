"""Steering schedules without a commit: pausing and resuming them (who, when and why, on record in the
`schedule_pauses` table), and noting on a "run now" run which schedule it came from.

Whether a person may steer a schedule is the handlers' question (handlers/schedules.py: admins, and
whoever may request its runbook); this module keeps the record. A paused schedule's fires are skipped by
the scheduler (scheduler.py), which asks `open_pauses()` at each tick.
"""

from __future__ import annotations

import datetime
from collections.abc import Collection
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from . import lifecycle
from .models import Run, SchedulePause
from .store import RunStore

MAX_REASON = 500  # characters: a sentence or two, shown on the Schedules page


class ScheduleControlError(ValueError):
    """A pause or resume that cannot be done as asked; `status` is the API's answer."""

    def __init__(self, status: int, message: str):
        self.status = status
        super().__init__(message)


@dataclass(frozen=True)
class Pause:
    schedule: str  # "<runbook>#<schedule key>"
    runbook: str
    paused_by: str
    paused_at: datetime.datetime
    reason: str
    resumed_by: str | None = None
    resumed_at: datetime.datetime | None = None

    def as_json(self) -> dict:
        return {
            "paused_by": self.paused_by,
            "paused_at": self.paused_at.isoformat(),
            "reason": self.reason,
            "resumed_by": self.resumed_by,
            "resumed_at": self.resumed_at.isoformat() if self.resumed_at else None,
        }

    def said(self) -> str:
        """The pause in a sentence, for the skipped fires' records."""
        return f"paused by {self.paused_by} at {self.paused_at.isoformat(timespec='minutes')}: {self.reason}"


def _pause(row: SchedulePause) -> Pause:
    return Pause(row.schedule, row.runbook, row.paused_by, row.paused_at, row.reason, row.resumed_by, row.resumed_at)


def checked_reason(reason) -> str:
    """The reason a person gave for pausing, trimmed; ScheduleControlError(400) if there is none or it is
    too long. A pause without a reason leaves the next person guessing whether it may be resumed."""
    if not isinstance(reason, str) or not reason.strip():
        raise ScheduleControlError(
            400, "reason is required: say why the schedule is paused (text, such as 'change freeze until Monday')"
        )
    reason = " ".join(reason.split())
    if len(reason) > MAX_REASON:
        raise ScheduleControlError(400, f"reason is {len(reason)} characters: at most {MAX_REASON}")
    return reason


class ScheduleControl:
    def __init__(self, store: RunStore):
        self.store = store

    def open_pauses(self) -> dict[str, Pause]:
        """The schedules paused now: schedule id -> its pause."""
        with self.store.transaction() as session:
            rows = session.scalars(select(SchedulePause).where(SchedulePause.resumed_at.is_(None)))
            return {row.schedule: _pause(row) for row in rows}

    def last_resumed(self, schedules: Collection[str]) -> dict[str, Pause]:
        """The latest resumed pause of each of `schedules` that has one (the page says who resumed it)."""
        if not schedules:
            return {}
        found: dict[str, Pause] = {}
        with self.store.transaction() as session:
            rows = session.scalars(
                select(SchedulePause)
                .where(SchedulePause.schedule.in_(list(schedules)), SchedulePause.resumed_at.is_not(None))
                .order_by(SchedulePause.resumed_at)
            )
            for row in rows:
                found[row.schedule] = _pause(row)  # the newest last
        return found

    def pause(self, schedule: str, runbook: str, by: str, reason) -> Pause:
        """Pause `schedule` (of `runbook`) for `by`, with `reason`; 409 if it is paused already."""
        reason = checked_reason(reason)
        now = self.store.now()
        try:
            with self.store.transaction() as session:
                session.add(
                    SchedulePause(schedule=schedule, runbook=runbook, paused_by=by, paused_at=now, reason=reason)
                )
        except IntegrityError:  # an open pause already (perhaps one made a moment ago by someone else)
            current = self.open_pauses().get(schedule)
            said = current.said() if current else "by someone else a moment ago"
            raise ScheduleControlError(409, f"{schedule} is paused already ({said})") from None
        return Pause(schedule, runbook, by, now, reason)

    def resume(self, schedule: str, by: str) -> Pause:
        """Resume `schedule`: its open pause is closed with who and when; 409 if it is not paused."""
        now = self.store.now()
        with self.store.transaction() as session:
            row = session.scalars(
                select(SchedulePause).where(SchedulePause.schedule == schedule, SchedulePause.resumed_at.is_(None))
            ).first()
            if row is None:
                raise ScheduleControlError(409, f"{schedule} is not paused: there is nothing to resume")
            done = session.execute(
                update(SchedulePause)
                .where(SchedulePause.id == row.id, SchedulePause.resumed_at.is_(None))
                .values(resumed_by=by, resumed_at=now)
            )
            if done.rowcount != 1:  # resumed by someone else in the meantime
                raise ScheduleControlError(409, f"{schedule} is not paused: it was resumed a moment ago")
            return Pause(row.schedule, row.runbook, row.paused_by, row.paused_at, row.reason, by, now)

    def note_run_now(self, requested: Run, schedule: str, by: str) -> None:
        """On the trail of a run `by` asked for with "Run now": the schedule whose parameters it has."""
        with self.store.transaction() as session:
            lifecycle.note(
                session,
                requested,
                "run now",
                actor=by,
                at=self.store.now(),
                text=f'requested with the parameters of schedule {schedule} ("Run now" on the Schedules page)',
            )
