"""The run history store: every runbook execution, from start to end state, in SQLite or PostgreSQL.

    store = RunStore("sqlite:///state/opshub.sqlite")   # or "postgresql+psycopg://user:pw@host/db"
    store.upgrade()                                      # migrations to head; a no-op when up to date
    store.interrupt_stale_runs(timedelta(minutes=5))     # at service start, then periodically
    run = store.start_run("patch-server-stack.ipynb", "bob", "headless", {"stack": "web"})
    store.heartbeat(run.id, "bob")
    store.finish_run(run.id, "bob", "succeeded", output_notebook=executed_notebook)

Every datetime going in or coming out is timezone-aware UTC. The clock is injectable (`now=`) so tests
move time instead of sleeping.

Over 500 lines on purpose: one class holds the runs table's storage, with every refusal typed
(RunNotFound, NotRunOwner, RecordedByService, RunAlreadyFinished, RunConflict) next to the write it
guards.
"""

from __future__ import annotations

import datetime
import json
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import ColumnElement, case, create_engine, delete, event, func, select, update
from sqlalchemy.orm import Session, defer, sessionmaker

from opshub.service.models import (
    ACTIVE_STATES,
    END_STATES,
    NOT_RUN,
    RUNNER_TRIGGERS,
    RUNNING,
    STATUSES,
    TRIGGERS,
    Notification,
    Run,
    RunEvent,
    new_run_id,
)

from ..settings import schema_default
from . import lifecycle
from .notebook_cap import MIN_OUTPUT_CAP, cap_notebook
from .run_artifacts import artifacts_of
from .run_filters import parameter_equals
from .visibility import RunVisibility

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
DEFAULT_OUTPUT_CAP = schema_default("history.output_cap_bytes")  # bytes of notebook JSON kept per run
MAX_LIST_LIMIT = 1000
MAX_OFFSET = 2**63 - 1  # databases count rows in signed 64-bit integers
MIGRATION_LOCK_KEY = 0x6F706D67  # "opmg": PostgreSQL advisory lock of the store's migrations


class RunStoreError(Exception):
    """Base class of the store's refusals."""


class RunNotFound(RunStoreError, LookupError):
    """No run has this id."""


class NotRunOwner(RunStoreError, PermissionError):
    """Only the user who started a run may change it."""


class RecordedByService(RunStoreError, PermissionError):
    """The run is the opshub service's own record (requested, schedule, alert: RUNNER_TRIGGERS), in
    whatever state: it is written by the queue (queue.py), and only its runner moves it, with the token
    minted for that one run. The person's side of the store (start, heartbeat, finish) never touches it."""

    def __init__(self, run_id: str | None, trigger: str):
        what = f"run {run_id} is a {trigger} run: it is" if run_id else f"{trigger} runs are"
        super().__init__(
            f"{what} recorded by the opshub service and only its runner reports it, with the token minted"
            " for that run; a person's token never begins, heartbeats or finishes it"
        )


class RunConflict(RunStoreError):
    """A client-chosen run id that belongs to a different run."""


class RunAlreadyFinished(RunStoreError):
    """The run has reached an end state; it cannot be changed any more."""


def utcnow() -> datetime.datetime:
    """The current time, timezone-aware UTC."""
    return datetime.datetime.now(datetime.timezone.utc)


def alembic_config(connection=None, url: str | None = None) -> Config:
    """An alembic configuration for the store's migrations, built in code (no alembic.ini).

    Pass an open `connection` to migrate through it, or a `url` for alembic commands that need one
    (for example `alembic.command.revision(alembic_config(url=...), "message", autogenerate=True)`).
    """
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    if url is not None:
        # ConfigParser interpolation: a '%' in a password must be doubled.
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


class RunStore:
    """Run records in a SQL database (SQLite by default, PostgreSQL with `postgresql+psycopg://`)."""

    def __init__(
        self,
        url: str,
        *,
        output_cap: int = DEFAULT_OUTPUT_CAP,
        now: Callable[[], datetime.datetime] = utcnow,
    ) -> None:
        """Connect to the database at `url` (nothing is created until `upgrade()`).

        `output_cap` is the largest executed notebook kept, in bytes of JSON; bigger ones are truncated.
        `now` returns the current time as a timezone-aware datetime.
        """
        if output_cap < MIN_OUTPUT_CAP:
            raise ValueError(f"output_cap must be at least {MIN_OUTPUT_CAP} bytes, not {output_cap}")
        self.output_cap = output_cap
        self._now = now
        # pool_pre_ping: a PostgreSQL restart must not leave the service with dead pooled connections.
        self.engine = create_engine(url, pool_pre_ping=True)
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        # expire_on_commit=False: the Run objects we return stay readable after their session closes.
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        # Every change of a run's status is written by lifecycle.py and told, once committed, to the
        # bus's subscribers (registered at the service's start).
        self.bus = lifecycle.RunBus()
        event.listen(self._sessions, "after_commit", self.bus.committed)
        event.listen(self._sessions, "after_rollback", self.bus.rolled_back)

    def close(self) -> None:
        """Close every pooled database connection."""
        self.engine.dispose()

    def transaction(self) -> Session:
        """A session in a transaction (`with store.transaction() as session:`), for the run queue
        (queue.py), which writes the same tables under its own rules."""
        return self._sessions.begin()

    def now(self) -> datetime.datetime:
        """The store's clock (injectable for tests), timezone-aware UTC."""
        return self._current_time()

    def upgrade(self) -> None:
        """Bring the database schema to the latest revision (creating it in an empty database).

        On PostgreSQL one service process migrates at a time (two replicas starting together on a new
        database would both create the tables); the other finds the work done."""
        with self.engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                connection.execute(select(func.pg_advisory_xact_lock(MIGRATION_LOCK_KEY)))
            command.upgrade(alembic_config(connection), "head")

    # Writing runs

    def start_run(
        self,
        runbook: str,
        user: str,
        trigger: str,
        parameters: Mapping[str, Any] | None = None,
        runbook_commit: str | None = None,
        drift: bool = False,
        run_id: str | None = None,
        reported_by: str | None = None,
        reported_from: str | None = None,
    ) -> Run:
        """Record a run about to start: status running, heartbeat now. Returns the new run.

        `run_id` lets a client that spools runs on disk choose the id, so that a start sent again (its
        first answer was lost) finds the run it already created instead of recording a second one.
        Runs of RUNNER_TRIGGERS are the service's own records (RunQueue.enqueue): RecordedByService,
        for a new one as for the id of an existing one.
        """
        if trigger in RUNNER_TRIGGERS:
            raise RecordedByService(run_id, trigger)
        run = self.new_run(
            runbook, user, trigger, parameters, runbook_commit, drift, run_id, reported_by, reported_from
        )
        existing = self.get_run(run.id) if run_id is not None else None
        if existing is not None:
            if existing.trigger in RUNNER_TRIGGERS:
                raise RecordedByService(existing.id, existing.trigger)
            if (existing.user, existing.runbook, existing.trigger) != (user, runbook, trigger):
                raise RunConflict(f"run {run.id} already exists and is another run")
            return existing
        with self._sessions.begin() as session:
            lifecycle.create(session, run, actor=reported_by or user, at=run.started_at, action="started")
        return run

    def new_run(
        self,
        runbook: str,
        user: str,
        trigger: str,
        parameters: Mapping[str, Any] | None = None,
        runbook_commit: str | None = None,
        drift: bool = False,
        run_id: str | None = None,
        reported_by: str | None = None,
        reported_from: str | None = None,
    ) -> Run:
        """A checked, running Run that is not written yet (`start_run` writes it). `reported_by` and
        `reported_from` say who sent the record and how it reached the service."""
        check_text("runbook", runbook, 512)
        check_text("user", user, 255)
        for name, value in (("reported_by", reported_by), ("reported_from", reported_from)):
            if value is not None:
                check_text(name, value, 255)
        if trigger not in TRIGGERS:
            raise ValueError(f"trigger must be one of {', '.join(TRIGGERS)}, not {trigger!r}")
        if runbook_commit is not None:
            check_text("runbook_commit", runbook_commit, 64)
        parameters = json_roundtrip("parameters", dict(parameters or {}))
        now = self._current_time()
        return Run(
            id=_check_run_id(run_id) if run_id is not None else new_run_id(),
            runbook=runbook,
            user=user,
            trigger=trigger,
            parameters=parameters,
            runbook_commit=runbook_commit,
            drift=bool(drift),
            status=RUNNING,
            started_at=now,
            last_heartbeat_at=now,
            output_truncated=False,
            reported_by=reported_by,
            reported_from=reported_from,
        )

    def heartbeat(
        self,
        run_id: str,
        user: str,
        output_notebook: Mapping[str, Any] | str | None = None,
        drift: bool | None = None,
    ) -> datetime.datetime:
        """Note that the run `user` started is still alive. Returns the heartbeat time.

        An interactive run also sends its progress: the cells run so far (`output_notebook`) and whether
        they drifted from the repository, so the history shows them while the session goes on.
        """
        now = self._current_time()
        values: dict[str, Any] = {"last_heartbeat_at": now}
        if output_notebook is not None:
            stored = cap_notebook(output_notebook, self.output_cap)
            values.update(output_notebook=stored.text, output_truncated=stored.truncated)
            values["artifacts"] = artifacts_of(output_notebook)
        if drift:
            values["drift"] = True
        with self._sessions.begin() as session:
            result = session.execute(update(Run).where(*_owned_and_running(run_id, user)).values(**values))
            if result.rowcount != 1:
                _explain_refusal(session, run_id, user)
        return now

    def finish_run(
        self,
        run_id: str,
        user: str,
        status: str,
        failed_cell: int | None = None,
        error_summary: str | None = None,
        output_notebook: Mapping[str, Any] | str | None = None,
        drift: bool | None = None,
    ) -> Run:
        """Bring a running run to an end state (succeeded, failed or interrupted). Returns the run.

        Only the user who started the run may finish it, and only once; never a run the service
        recorded (RecordedByService: the runner ends those, RunQueue.runner_finish). `output_notebook` is the
        executed notebook (a dict or its JSON text); above the size cap a truncated copy is stored.
        `drift` True marks drift found during the run (an interactive run's edited cells).
        """
        if status not in END_STATES:
            raise ValueError(f"status must be one of {', '.join(END_STATES)}, not {status!r}")
        check_end(failed_cell, error_summary)
        stored = None if output_notebook is None else cap_notebook(output_notebook, self.output_cap)
        now = self._current_time()
        with self._sessions.begin() as session:
            # One conditional UPDATE, so a concurrent finish or stale-run sweep cannot both win.
            finished = lifecycle.change(
                session,
                run_id,
                status,
                actor=user,
                at=now,
                action="finished",
                where=_owned_and_running(run_id, user),
                ended_at=now,
                failed_cell=failed_cell,
                error_summary=error_summary,
                output_notebook=stored.text if stored else None,
                output_truncated=stored.truncated if stored else False,
                **({"artifacts": artifacts_of(output_notebook)} if stored else {}),
                **({"drift": True} if drift else {}),
            )
            if finished is None:
                _explain_refusal(session, run_id, user)
        return self.get_run(run_id)

    def interrupt_stale_runs(self, max_silence: datetime.timedelta) -> list[str]:
        """Mark as interrupted every running run whose last heartbeat is older than `max_silence`.

        Call it at service start (a crash or restart leaves nothing running for ever) and periodically.
        Returns the ids of the runs interrupted.
        """
        if max_silence < datetime.timedelta(0):
            raise ValueError(f"max_silence must not be negative, not {max_silence}")
        now = self._current_time()
        cutoff = now - max_silence
        summary = (
            f"Interrupted by opshub at {now.isoformat(timespec='seconds')}: no heartbeat for more than"
            f" {max_silence}. The process running it stopped or lost contact with the opshub service."
        )
        interrupted = []
        with self._sessions.begin() as session:
            stale = session.scalars(select(Run.id).where(Run.status == RUNNING, Run.last_heartbeat_at < cutoff))
            for run_id in sorted(stale.all()):
                silent = (Run.last_heartbeat_at < cutoff,)  # a heartbeat meanwhile keeps it running
                run = lifecycle.change(
                    session,
                    run_id,
                    "interrupted",
                    actor="opshub sweep",
                    at=now,
                    from_states=(RUNNING,),
                    where=silent,
                    ended_at=now,
                    error_summary=summary,
                )
                if run is not None:
                    interrupted.append(run_id)
        return interrupted

    def delete_run(self, run_id: str, by: str) -> bool:
        """Delete one run, whatever its status (`by`: who, for the audit trail, which keeps the
        deletion). Returns whether there was one to delete."""
        if not storable(run_id):
            return False
        with self._sessions.begin() as session:
            return lifecycle.delete_run(session, run_id, actor=by, at=self._current_time()) is not None

    def apply_retention(self, max_age: datetime.timedelta | None = None, max_runs: int | None = None) -> int:
        """Delete finished runs started more than `max_age` ago, and all but the newest `max_runs` finished runs.

        Queued and running runs are never deleted (nor counted in `max_runs`). None means no limit.
        Returns how many runs were deleted.
        """
        if max_runs is not None and max_runs < 0:
            raise ValueError(f"max_runs must not be negative, not {max_runs}")
        finished = Run.status.not_in(ACTIVE_STATES)
        now = self._current_time()
        doomed: set[str] = set()
        with self._sessions() as session:
            if max_age is not None:
                doomed |= set(session.scalars(select(Run.id).where(finished, Run.started_at < now - max_age)))
            if max_runs is not None:
                doomed |= set(session.scalars(select(Run.id).where(finished).order_by(*_NEWEST_FIRST).offset(max_runs)))
        deleted = 0
        ids = sorted(doomed)
        for start in range(0, len(ids), 1000):  # one transaction per batch: a long pass never holds the table
            with self._sessions.begin() as session:
                batch = ids[start : start + 1000]
                gone = lifecycle.delete_runs(session, batch, actor="retention", at=now, action="deleted by retention")
                deleted += len(gone)
        if max_age is not None:  # the audit trail and notifications of runs that old go too
            with self._sessions.begin() as session:
                session.execute(delete(RunEvent).where(RunEvent.at < now - max_age))
                session.execute(delete(Notification).where(Notification.created_at < now - max_age))
        return deleted

    # Reading runs

    def get_run(self, run_id: str) -> Run | None:
        """The run with this id, output notebook included, or None."""
        if not storable(run_id):
            return None
        with self._sessions() as session:
            return session.get(Run, run_id)

    def list_runs(
        self,
        runbook: str | None = None,
        user: str | None = None,
        status: str | None = None,
        trigger: str | None = None,
        since: datetime.datetime | None = None,
        until: datetime.datetime | None = None,
        limit: int = 50,
        offset: int = 0,
        visible_to: RunVisibility | None = None,
        user_contains: str | None = None,
        parameter: tuple[str, str] | None = None,
        with_artifacts: bool = False,
    ) -> tuple[list[Run], int]:
        """One page of runs matching every filter given, newest first, and how many match in all.

        `since` and `until` bound the start time (since <= started_at < until). The output notebook is
        not loaded (reading `run.output_notebook` raises): use `get_run` for one run's output; nor are
        the artifacts unless `with_artifacts` (up to 256 KiB a run).
        `visible_to`: only the runs that viewer may see (visibility.py). `user_contains`: part of
        the user's name, any case; `parameter`: (name, value as text), run_filters.parameter_equals.
        """
        if not 1 <= limit <= MAX_LIST_LIMIT:
            raise ValueError(f"limit must be between 1 and {MAX_LIST_LIMIT}, not {limit}")
        if not 0 <= offset <= MAX_OFFSET:
            raise ValueError(f"offset must be between 0 and {MAX_OFFSET}, not {offset}")
        for name, value in (("runbook", runbook), ("user", user)):
            if value is not None and not storable(value):
                raise ValueError(f"{name} must be text without NUL characters, not {value!r}")
        if status is not None and status not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(STATUSES)}, not {status!r}")
        if trigger is not None and trigger not in TRIGGERS:
            raise ValueError(f"trigger must be one of {', '.join(TRIGGERS)}, not {trigger!r}")
        conditions: list[ColumnElement[bool]] = []
        for column, value in ((Run.runbook, runbook), (Run.user, user), (Run.status, status), (Run.trigger, trigger)):
            if value is not None:
                conditions.append(column == value)
        if user_contains:
            check_text("user", user_contains, 255)
            conditions.append(func.lower(Run.user).contains(user_contains.lower(), autoescape=True))
        if parameter is not None:
            name, text = parameter
            if not name.isidentifier():
                raise ValueError(f"a parameter filter is NAME=VALUE with a parameter name, not {name!r}")
            check_text("parameter value", text, 255)
            conditions.append(parameter_equals(self.engine.dialect.name, name, text))
        if since is not None:
            conditions.append(Run.started_at >= _aware("since", since))
        if until is not None:
            conditions.append(Run.started_at < _aware("until", until))
        visible = visible_to.condition(Run.runbook, Run.user) if visible_to is not None else None
        if visible is not None:
            conditions.append(visible)
        with self._sessions() as session:
            total = session.scalar(select(func.count()).select_from(Run).where(*conditions))
            page = session.scalars(
                select(Run)
                .where(*conditions)
                .options(defer(Run.output_notebook), *(() if with_artifacts else (defer(Run.artifacts),)))
                .order_by(*_NEWEST_FIRST)
                .limit(limit)
                .offset(offset)
            )
            return list(page), total or 0

    # Aggregates for the metrics endpoint: one GROUP BY each, answered from an index.

    def count_runs(self) -> dict[tuple[str, str, str], int]:
        """How many runs there are by (runbook, status, trigger)."""
        query = select(Run.runbook, Run.status, Run.trigger, func.count()).group_by(
            Run.runbook, Run.status, Run.trigger
        )
        with self._sessions() as session:
            return {(runbook, status, trigger): n for runbook, status, trigger, n in session.execute(query)}

    def last_run_times(self) -> dict[tuple[str, str], datetime.datetime]:
        """When the latest run started, by (runbook, status)."""
        query = select(Run.runbook, Run.status, func.max(Run.started_at)).group_by(Run.runbook, Run.status)
        with self._sessions() as session:
            return {(runbook, status): latest for runbook, status, latest in session.execute(query)}

    def last_run_time(self, runbook: str, status: str) -> datetime.datetime | None:
        """When the latest run of `runbook` with `status` started (the metrics' index answers it)."""
        query = select(func.max(Run.started_at)).where(Run.runbook == runbook, Run.status == status)
        with self._sessions() as session:
            return session.scalar(query)

    def duration_histogram(self, bounds: Sequence[float]) -> dict[tuple[str, str], tuple[list[int], float, int]]:
        """Durations of finished runs by (runbook, trigger): cumulative counts per upper bound in
        `bounds` (seconds, ascending), the sum of durations and the count. One GROUP BY."""
        duration = _duration_seconds(self.engine.dialect.name)
        columns = [func.sum(case((duration <= bound, 1), else_=0)) for bound in bounds]
        query = (
            select(Run.runbook, Run.trigger, *columns, func.sum(duration), func.count())
            .where(Run.ended_at.is_not(None), Run.status.not_in(NOT_RUN))
            .group_by(Run.runbook, Run.trigger)
        )
        with self._sessions() as session:
            return {
                (row[0], row[1]): ([int(n or 0) for n in row[2 : 2 + len(bounds)]], float(row[-2] or 0), int(row[-1]))
                for row in session.execute(query)
            }

    def cell_failures(self) -> dict[str, int]:
        """How many runs failed in a cell, by runbook."""
        query = (
            select(Run.runbook, func.count())
            .where(Run.status == "failed", Run.failed_cell.is_not(None))
            .group_by(Run.runbook)
        )
        with self._sessions() as session:
            return dict(session.execute(query).all())

    # Helpers

    def _current_time(self) -> datetime.datetime:
        return _aware("now()", self._now())


_NEWEST_FIRST = (Run.started_at.desc(), Run.id.desc())


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # pages read the history while runs are recorded
    cursor.execute("PRAGMA synchronous=NORMAL")  # with WAL: durable across crashes, no fsync per commit
    cursor.close()


def _duration_seconds(dialect: str) -> ColumnElement[float]:
    """ended_at - started_at in seconds, in the database's own date arithmetic."""
    if dialect == "sqlite":  # naive UTC text; julianday() counts days, in floating point: round to ms
        return func.round((func.julianday(Run.ended_at) - func.julianday(Run.started_at)) * 86400.0, 3)
    return func.extract("epoch", Run.ended_at - Run.started_at)


def _owned_and_running(run_id: str, user: str) -> tuple[ColumnElement[bool], ...]:
    """A run its reporter may move: theirs, running, and not one the service recorded (the runner's)."""
    return Run.id == run_id, Run.user == user, Run.status == RUNNING, Run.trigger.not_in(RUNNER_TRIGGERS)


def _explain_refusal(session: Session, run_id: str, user: str) -> None:
    """Raise the reason a conditional update on a run matched nothing."""
    run = session.get(Run, run_id)
    if run is None:
        raise RunNotFound(f"no run with id {run_id!r}")
    if run.trigger in RUNNER_TRIGGERS:
        raise RecordedByService(run_id, run.trigger)
    if run.user != user:
        raise NotRunOwner(f"run {run_id} was started by another user; only they may change it")
    raise RunAlreadyFinished(f"run {run_id} has already ended ({run.status}) and cannot be changed")


def check_end(failed_cell: Any, error_summary: Any) -> None:
    """What a run's end says about itself: a cell index and a summary every database keeps."""
    if failed_cell is not None and (
        not isinstance(failed_cell, int) or isinstance(failed_cell, bool) or not 0 <= failed_cell < 2**31
    ):
        raise ValueError(f"failed_cell must be a cell index (0 or more), not {failed_cell!r}")
    if error_summary is not None and not storable(error_summary):
        raise ValueError(f"error_summary must be text without NUL characters, not {error_summary!r}")


def _check_run_id(value: Any) -> str:
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        raise ValueError(f"id must be a UUID, not {value!r}") from None


def check_text(name: str, value: str, max_length: int) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name} must be a non-empty string, not {value!r}")
    if len(value) > max_length:
        raise ValueError(f"{name} must be at most {max_length} characters, not {len(value)}")
    if not storable(value):
        raise ValueError(f"{name} must not contain NUL characters: {value!r}")


def storable(value: str) -> bool:
    """Whether every database keeps this text (PostgreSQL refuses NUL characters in text)."""
    return isinstance(value, str) and "\x00" not in value


def json_roundtrip(name: str, value: Any) -> Any:
    """`value` as it will come back from the database, or ValueError if it is not JSON."""
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must be JSON-serialisable: {e}") from e


def _aware(name: str, value: datetime.datetime) -> datetime.datetime:
    if not isinstance(value, datetime.datetime) or value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime, not {value!r}")
    return value.astimezone(datetime.timezone.utc)
