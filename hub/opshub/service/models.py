"""The tables of the run history store (SQLAlchemy 2 ORM). Schema changes go through an alembic revision."""

from __future__ import annotations

import datetime
import uuid
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, Index, Integer, MetaData, String, Text, text
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from .run_states import ACTIVE, END, NOT_RUN, REPORTED_TRIGGERS, RUNNER_TRIGGERS, TRIGGERS, Status, active_sql

__all__ = ["NOT_RUN", "REPORTED_TRIGGERS", "RUNNER_TRIGGERS", "TRIGGERS"]  # re-exported for their readers

# The statuses, the kinds of run and the transitions between them are declared in run_states.py;
# these names are kept for the modules that read them.
QUEUED = Status.QUEUED
RUNNING = Status.RUNNING
ACTIVE_STATES = ACTIVE
END_STATES = END
STATUSES = tuple(Status)

# Named constraints and indexes, so later alembic revisions can refer to them on every database.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime.datetime]):
    """A timezone-aware UTC datetime on every database.

    PostgreSQL stores `timestamptz`; SQLite has no time zones, so naive UTC is stored there and UTC is
    attached again on the way out. Naive datetimes are refused: they are a bug waiting to happen.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime.datetime | None, dialect: Dialect) -> datetime.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value!r}: use a timezone-aware UTC datetime")
        value = value.astimezone(datetime.timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime.datetime | None, dialect: Dialect) -> datetime.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=datetime.timezone.utc)
        return value.astimezone(datetime.timezone.utc)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def new_run_id() -> str:
    """A random run id (UUID4 as text)."""
    return str(uuid.uuid4())


class Run(Base):
    """One execution of a runbook, written before the run starts and always brought to an end state."""

    __tablename__ = "runs"

    # A UUID rather than an integer: the id is shown in URLs and logs without revealing how many runs there
    # are or letting anyone guess a neighbour's id, and it stays unique when runs are moved between databases
    # (SQLite to PostgreSQL). Stored as text so both databases see the same string.
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_run_id)
    runbook: Mapped[str] = mapped_column(String(512))  # path within the runbooks repository
    runbook_commit: Mapped[str | None] = mapped_column(String(64))  # 40 hex digits for SHA-1, 64 for SHA-256
    drift: Mapped[bool] = mapped_column(Boolean, default=False)  # the executed copy differed from the commit
    trigger: Mapped[str] = mapped_column(String(16))  # one of TRIGGERS
    user: Mapped[str] = mapped_column(String(255))  # JupyterHub user name of whoever started the run
    parameters: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    started_at: Mapped[datetime.datetime] = mapped_column(UTCDateTime)
    ended_at: Mapped[datetime.datetime | None] = mapped_column(UTCDateTime)
    last_heartbeat_at: Mapped[datetime.datetime] = mapped_column(UTCDateTime)
    status: Mapped[str] = mapped_column(String(16))  # one of STATUSES
    failed_cell: Mapped[int | None] = mapped_column(Integer)  # index of the cell that failed
    error_summary: Mapped[str | None] = mapped_column(Text)
    output_notebook: Mapped[str | None] = mapped_column(Text)  # the executed notebook as JSON text
    output_truncated: Mapped[bool] = mapped_column(Boolean, default=False)
    # Who sent the record and how it reached the service (None: recorded before opshub kept this).
    reported_by: Mapped[str | None] = mapped_column(String(255))  # the token's (or cookie's) user name
    reported_from: Mapped[str | None] = mapped_column(String(255))  # e.g. "API token from 10.0.0.7"
    # Unattended runs (RUNNER_TRIGGERS), all written by the service (None for runs people report):
    # who asked for it ("bob", "schedule weekly-web", "alert HostDown 1a2b..."), when it was due (the
    # schedule's time, the alert's or request's arrival), when it was queued and reached its first cell.
    requested_by: Mapped[str | None] = mapped_column(String(255))
    due_at: Mapped[datetime.datetime | None] = mapped_column(UTCDateTime)
    queued_at: Mapped[datetime.datetime | None] = mapped_column(UTCDateTime)
    first_cell_at: Mapped[datetime.datetime | None] = mapped_column(UTCDateTime)
    # A schedule's fire ("<runbook>#<schedule>@<due time>"): unique, so a fire is recorded once even
    # when two service processes (or a restarted one) look at the same due time.
    fire_key: Mapped[str | None] = mapped_column(String(700), unique=True)
    alert_fingerprint: Mapped[str | None] = mapped_column(String(64))
    locks: Mapped[list[str] | None] = mapped_column(JSON)  # lock keys held while it runs ("stack:web")
    # The runner's credential for this run: a sha256 of the token the service handed its server.
    runner_token_hash: Mapped[str | None] = mapped_column(String(64))
    runner_server: Mapped[str | None] = mapped_column(String(255))  # the runner's named server
    cancel_requested_by: Mapped[str | None] = mapped_column(String(255))
    # What the runbook published for dashboards ({name: data}, run_artifacts.py), from its recorded
    # notebook, masked like it; None when it published nothing.
    artifacts: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True))

    __table_args__ = (
        # History pages: newest first, optionally for one runbook or one user; retention by age.
        Index(None, "started_at"),
        Index(None, "user", "started_at"),
        # Metrics: counts by (runbook, status, trigger) and latest start by (runbook, status) read this
        # index only, without touching the table rows.
        Index(None, "runbook", "status", "trigger", "started_at"),
        # The stale-run sweep looks at running runs only.
        Index(None, "status", "last_heartbeat_at"),
        # The runner's queue: queued runs, oldest first.
        Index(None, "status", "queued_at"),
        # One queued or running run per (runbook, alert): an alert sent again is not a second run.
        Index(
            "uq_runs_active_alert",
            "runbook",
            "alert_fingerprint",
            unique=True,
            sqlite_where=text(f"{active_sql()} AND alert_fingerprint IS NOT NULL"),
            postgresql_where=text(f"{active_sql()} AND alert_fingerprint IS NOT NULL"),
        ),
    )

    @property
    def finished(self) -> bool:
        """Whether the run has reached an end state."""
        return self.status not in ACTIVE_STATES

    def __repr__(self) -> str:
        return f"<Run {self.id} {self.runbook!r} by {self.user!r}: {self.status}>"


DASHBOARD_MODES = ("live", "snapshot")


class Dashboard(Base):
    """A published dashboard: a live copy of a notebook (rendered by Voila) or the latest run of a runbook."""

    __tablename__ = "dashboards"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)  # a slug: its URL /dashboards/<name>/
    mode: Mapped[str] = mapped_column(String(16))  # one of DASHBOARD_MODES
    title: Mapped[str] = mapped_column(String(255))
    description: Mapped[str] = mapped_column(Text, default="")
    groups: Mapped[list[str]] = mapped_column(JSON, default=list)  # who may see it; empty: every team member
    owner: Mapped[str] = mapped_column(String(255))  # who published it ("git" for the repository's)
    source: Mapped[str] = mapped_column(String(16))  # "api" (opshub publish, JupyterLab) or "git"
    runbook: Mapped[str | None] = mapped_column(String(512))  # path in the runbooks repository
    commit: Mapped[str | None] = mapped_column(String(64))  # repository commit of a git-published copy
    notebook: Mapped[str | None] = mapped_column(Text)  # live: the published copy (JSON), served by Voila
    created_at: Mapped[datetime.datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime.datetime] = mapped_column(UTCDateTime)
    # A live dashboard's health, as its latest views found it (dashboard_health.py; snapshots' comes
    # from their runbook's runs): broken since when and why (for its author and admins), last rendered.
    broken_since: Mapped[datetime.datetime | None] = mapped_column(UTCDateTime)
    broken_detail: Mapped[str | None] = mapped_column(Text)
    last_good_at: Mapped[datetime.datetime | None] = mapped_column(UTCDateTime)

    def __repr__(self) -> str:
        return f"<Dashboard {self.name} ({self.mode}) by {self.owner!r}>"


class ScheduleState(Base):
    """When opshub first saw each schedule: fires before that are not "missed", they never were due."""

    __tablename__ = "schedules"

    key: Mapped[str] = mapped_column(String(600), primary_key=True)  # "<runbook>#<schedule key>"
    runbook: Mapped[str] = mapped_column(String(512))
    first_seen_at: Mapped[datetime.datetime] = mapped_column(UTCDateTime)
    # The latest due time looked at (fired or recorded missed): the runs of old fires may be deleted
    # by retention, and must not come back as "missed" after a restart.
    last_due_at: Mapped[datetime.datetime | None] = mapped_column(UTCDateTime)


class RunEvent(Base):
    """One thing that happened to a run, written by lifecycle.py in the transaction that did it: every
    change of status (with the status before) and what people did that changes none (a cancel asked of
    a running run). The audit trail, the JSON feed (`api/events`) and the notifier's outbox. Kept when
    the run is deleted (its deletion is an event too), so the people it concerns cannot erase it."""

    __tablename__ = "run_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)  # the feed's order
    at: Mapped[datetime.datetime] = mapped_column(UTCDateTime)
    run_id: Mapped[str] = mapped_column(String(36))  # no foreign key: the event outlives the run
    runbook: Mapped[str] = mapped_column(String(512))
    trigger: Mapped[str] = mapped_column(String(16))
    run_user: Mapped[str] = mapped_column(String(255))
    action: Mapped[str] = mapped_column(String(32))  # "queued", "claimed", "ended", "cancel asked", ...
    from_status: Mapped[str] = mapped_column(String(16))  # run_states.NEW for a new record
    to_status: Mapped[str] = mapped_column(String(16))  # run_states.DELETED when the record was deleted
    actor: Mapped[str] = mapped_column(String(255))  # who did it: a person, "opshub runner", "schedule x"
    note: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (Index(None, "run_id", "id"),)


class Notification(Base):
    """A message about a run for one notification target, stored before it is sent (notifier.py), so it
    is delivered after a restart and at most once per event and target (`key` is unique)."""

    __tablename__ = "notifications"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(String(255), unique=True)  # "<event id>/<target>", "waiting/<run id>/<target>"
    run_id: Mapped[str] = mapped_column(String(36))
    event_id: Mapped[int | None] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(String(32))  # failed, missed, interrupted, never_started, waiting, ...
    target: Mapped[str] = mapped_column(String(64))  # a name under `notifications.targets`
    title: Mapped[str] = mapped_column(Text)
    body: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16))  # pending, sent, failed (gave up)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime.datetime] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime.datetime] = mapped_column(UTCDateTime)
    sent_at: Mapped[datetime.datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (Index(None, "status", "next_attempt_at"), Index(None, "run_id"))


class FeedPosition(Base):
    """How far a reader of the events (the notifier) has read them, so a restart resumes there."""

    __tablename__ = "feed_positions"

    reader: Mapped[str] = mapped_column(String(64), primary_key=True)
    event_id: Mapped[int] = mapped_column(Integer)


class SchedulePause(Base):
    """A schedule paused by a person (schedule_control.py): who, when and why, and who resumed it when.
    A paused schedule's fires are skipped (recorded `missed`, with the pause as the reason). At most one
    pause per schedule is open (not resumed); the resumed ones stay, as the schedule's history."""

    __tablename__ = "schedule_pauses"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    schedule: Mapped[str] = mapped_column(String(600))  # "<runbook>#<schedule key>", as ScheduleState.key
    runbook: Mapped[str] = mapped_column(String(512))
    paused_by: Mapped[str] = mapped_column(String(255))
    paused_at: Mapped[datetime.datetime] = mapped_column(UTCDateTime)
    reason: Mapped[str] = mapped_column(Text)
    resumed_by: Mapped[str | None] = mapped_column(String(255))
    resumed_at: Mapped[datetime.datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        Index(None, "schedule", "paused_at"),
        # One open pause per schedule: of two people pausing at once, one wins.
        Index(
            "uq_schedule_pauses_open",
            "schedule",
            unique=True,
            sqlite_where=text("resumed_at IS NULL"),
            postgresql_where=text("resumed_at IS NULL"),
        ),
    )
