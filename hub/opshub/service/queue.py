"""The runner's queue: unattended runs (requested, scheduled, alert-driven) as the service records
them, and the locks every run may hold.

    queue = RunQueue(store)
    run = queue.enqueue("patch.ipynb", "requested", user="bob", requested_by="bob", parameters={...},
                        commit="abc...", locks=["stack:web"])          # status queued
    claims, waiting = queue.claim(max_concurrent=2)                  # queued -> running, a token each
    queue.runner_begin(run.id, token)                                # the runner's reports, by token
    queue.runner_finish(run.id, token, "succeeded", output_notebook=nb)

The service writes every unattended run itself, before anything runs: the record is its word, and
the runner's reports can only move that one run along, with the token minted for it (only its
sha256 is stored). Admission (queueing with duplicate checks, claiming under `max_concurrent` and
locks, a person's locked run) is serialised: a PostgreSQL advisory lock across service processes,
a process lock on SQLite (one process). Exactly-once fires and alerts also rest on the database's
unique indexes (`fire_key`; one active run per runbook and alert fingerprint), so a second process
or a restart that tries again inserts nothing.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import hmac
import secrets
import threading
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from . import lifecycle
from .models import QUEUED, RUNNER_TRIGGERS, RUNNING, Run, ScheduleState, new_run_id
from .notebook_cap import cap_notebook
from .run_artifacts import artifacts_of
from .store import (
    NotRunOwner,
    RunAlreadyFinished,
    RunNotFound,
    RunStore,
    RunStoreError,
    check_end,
    check_text,
    json_roundtrip,
)

ADVISORY_LOCK_KEY = 0x6F707368  # "opsh": one key for the whole admission of runs
RUNNER_END_STATES = ("succeeded", "failed", "interrupted")
RUNNER = "opshub runner"  # the actor of what the runner does, on the audit trail


class LockHeld(RunStoreError):
    """Another run holds a lock this run needs; `holder` is its id."""

    def __init__(self, lock: str, holder: str):
        self.lock, self.holder = lock, holder
        super().__init__(f"the lock {lock!r} is held by run {holder}")


class BadRunToken(RunStoreError, PermissionError):
    """The token is not the one minted for this run (or the run is not the runner's)."""


class NotCancellable(RunStoreError):
    """The run cannot be cancelled (it has ended, or it runs in a person's own server)."""


@dataclass(frozen=True)
class Claim:
    """A queued run handed to the runner: the run (now running) and its one-time token."""

    run: Run
    token: str


def runner_server_name(run_id: str) -> str:
    """The runner's named server of a run: JupyterHub wants a "safe slug" of at most 30 characters,
    starting with a letter (`run-` and 104 bits of the run's UUID)."""
    return "run-" + run_id.replace("-", "")[:26]


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class RunQueue:
    def __init__(self, store: RunStore):
        self.store = store
        self._local = threading.Lock()

    @contextlib.contextmanager
    def _admission(self) -> Iterator[Session]:
        """A transaction no other admission runs beside (any process on PostgreSQL)."""
        with self._local, self.store.transaction() as session:
            if self.store.engine.dialect.name == "postgresql":
                session.execute(select(func.pg_advisory_xact_lock(ADVISORY_LOCK_KEY)))
            yield session

    # -- recording unattended runs -------------------------------------------------------------------

    def enqueue(
        self,
        runbook: str,
        trigger: str,
        *,
        user: str,
        requested_by: str,
        parameters: Mapping[str, Any] | None = None,
        commit: str | None = None,
        locks: Sequence[str] = (),
        due_at: datetime.datetime | None = None,
        fire_key: str | None = None,
        alert_fingerprint: str | None = None,
    ) -> Run | None:
        """Record a queued run. Returns it, or None when this fire or alert already has its run."""
        if trigger not in RUNNER_TRIGGERS:
            raise ValueError(f"trigger must be one of {', '.join(RUNNER_TRIGGERS)}, not {trigger!r}")
        now = self.store.now()
        run = self._new(runbook, trigger, user, requested_by, parameters, commit, locks, now, QUEUED)
        run.queued_at, run.due_at = now, due_at
        run.fire_key, run.alert_fingerprint = fire_key, alert_fingerprint
        return self._insert(run, "queued")

    def record_missed(
        self,
        runbook: str,
        requested_by: str,
        fire_key: str,
        due_at: datetime.datetime,
        reason: str,
        status: str = "missed",
        trigger: str = "schedule",
        action: str | None = None,
    ) -> Run | None:
        """Record a schedule's fire (or an alert) that will not run: `missed` (due while opshub was down; the
        trail's `action` says skipped for a paused schedule's) or `failed` (the runbook cannot run as
        asked). None if this `fire_key` is on record already."""
        now = self.store.now()
        run = self._new(runbook, trigger, "opshub-runner", requested_by, {}, None, (), due_at, status)
        run.ended_at, run.due_at, run.fire_key, run.error_summary = now, due_at, fire_key, reason
        return self._insert(run, action or ("missed" if status == "missed" else "refused"))

    def _new(self, runbook, trigger, user, requested_by, parameters, commit, locks, started, status) -> Run:
        check_text("runbook", runbook, 512)
        check_text("user", user, 255)
        check_text("requested_by", requested_by, 255)
        if commit is not None:
            check_text("commit", commit, 64)
        locks = sorted(set(locks))
        for lock in locks:
            check_text("lock", lock, 255)
        return Run(
            id=new_run_id(),
            runbook=runbook,
            trigger=trigger,
            user=user,
            requested_by=requested_by,
            parameters=json_roundtrip("parameters", dict(parameters or {})),
            runbook_commit=commit,
            locks=locks,
            drift=False,
            status=status,
            started_at=started,
            last_heartbeat_at=started,
            output_truncated=False,
            reported_by="opshub service",
            reported_from="recorded by the opshub service",
        )

    def _insert(self, run: Run, action: str) -> Run | None:
        try:
            with self._admission() as session:
                lifecycle.create(session, run, actor=run.requested_by, at=self.store.now(), action=action)
        except IntegrityError:  # this fire, or a run for this alert, is already on record
            return None
        return run

    def start_person_run(self, locks: Collection[str], **start_run) -> Run:
        """`RunStore.start_run` for a run a person's server reports (`opshub run`), holding `locks`:
        LockHeld if a running run (of any trigger) holds one of them."""
        if not locks:
            return self.store.start_run(**start_run)
        run = self.store.new_run(**start_run)
        if start_run.get("run_id") is not None and self.store.get_run(run.id) is not None:
            return self.store.start_run(**start_run)  # the same start sent again: the store checks it is
        with self._admission() as session:
            held = _held_locks(session)
            for lock in sorted(set(locks)):
                if lock in held:
                    raise LockHeld(lock, held[lock])
            run.locks = sorted(set(locks))
            lifecycle.create(session, run, actor=run.reported_by or run.user, at=run.started_at, action="started")
        return run

    # -- the runner's side -------------------------------------------------------------------------

    def claim(self, max_concurrent: int) -> tuple[list[Claim], dict[str, str]]:
        """Move queued runs to running, oldest first, while fewer than `max_concurrent` runner runs
        run and no running run holds one of their locks. Returns the claims and, for the runs that
        wait for a lock, which lock (run id -> lock)."""
        claims: list[Claim] = []
        waiting: dict[str, str] = {}
        now = self.store.now()
        with self._admission() as session:
            running = session.scalar(
                select(func.count()).select_from(Run).where(Run.status == RUNNING, Run.trigger.in_(RUNNER_TRIGGERS))
            )
            free = max_concurrent - (running or 0)
            if free <= 0:
                return [], {}
            held = _held_locks(session)
            queued = session.execute(
                select(Run.id, Run.locks).where(Run.status == QUEUED).order_by(Run.queued_at, Run.id)
            )
            for run_id, locks in queued.all():
                blocking = next((lock for lock in locks or () if lock in held), None)
                if blocking is not None:
                    waiting[run_id] = blocking
                    continue
                token = secrets.token_urlsafe(32)
                run = lifecycle.change(
                    session,
                    run_id,
                    RUNNING,
                    actor=RUNNER,
                    at=now,
                    action="claimed",
                    from_states=(QUEUED,),
                    started_at=now,
                    last_heartbeat_at=now,
                    runner_token_hash=token_hash(token),
                    runner_server=runner_server_name(run_id),
                )
                if run is None:  # deleted meanwhile (an admin's deletion takes no admission lock)
                    continue
                held.update(dict.fromkeys(locks or (), run_id))
                claims.append(Claim(run, token))
                if len(claims) == free:
                    break
        return claims, waiting

    def release(self, run_id: str) -> bool:
        """Put a claimed run back in the queue (its runner could not be asked to start: the hub was
        away), or end it `cancelled` if its cancel was asked meanwhile. Only before its first cell.
        Returns whether it went back to the queue."""
        now = self.store.now()
        with self._admission() as session:
            claimed = (Run.first_cell_at.is_(None), Run.trigger.in_(RUNNER_TRIGGERS))
            run = session.scalars(select(Run).where(Run.id == run_id, Run.status == RUNNING, *claimed)).first()
            if run is None:
                return False
            if run.cancel_requested_by:
                summary = f"Cancelled by {run.cancel_requested_by} before it started."
                lifecycle.change(
                    session, run_id, "cancelled", actor=run.cancel_requested_by, at=now, from_states=(RUNNING,),
                    where=claimed, ended_at=now, error_summary=summary,
                )  # fmt: skip
                return False
            back = lifecycle.change(
                session, run_id, QUEUED, actor=RUNNER, at=now, action="released", from_states=(RUNNING,),
                where=claimed, runner_token_hash=None, runner_server=None,
                note="its runner's server could not be started now; it waits in the queue again",
            )  # fmt: skip
            return back is not None

    def touch(self, run_id: str) -> None:
        """A heartbeat on the runner's behalf while its server starts."""
        with self.store.transaction() as session:
            session.execute(
                update(Run).where(Run.id == run_id, Run.status == RUNNING).values(last_heartbeat_at=self.store.now())
            )

    def fail(self, run_id: str, summary: str) -> Run | None:
        """End a claimed run that never reached its runner (the server would not start)."""
        return self._end(run_id, "failed", summary, (RUNNING,), action="never started")

    def lost(self, run_id: str) -> Run | None:
        """End a run past its first cell whose runner's server is gone without recording its end: its
        sandbox, job and kernel ended with the server (bubblewrap's --die-with-parent, the container)."""
        run = self.store.get_run(run_id)
        if run is None or run.first_cell_at is None:
            return None
        summary = "Its runner's server stopped before the run recorded its end; the run's processes ended with it."
        if run.cancel_requested_by:
            summary += f" ({run.cancel_requested_by}'s cancel found it stopped already.)"
        return self._end(run_id, "interrupted", summary, (RUNNING,), action="server lost")

    def runner_run(self, run_id: str, token: str) -> Run:
        """The run, if `token` is the one minted for it; BadRunToken otherwise."""
        run = self.store.get_run(run_id)
        if run is None:
            raise RunNotFound(f"no run with id {run_id!r}")
        if not run.runner_token_hash or not hmac.compare_digest(run.runner_token_hash, token_hash(token)):
            raise BadRunToken(f"this token may not report run {run_id}")
        return run

    def runner_begin(self, run_id: str, token: str) -> Run:
        """The runner reached the run's first cell."""
        run = self._runner_update(run_id, token, first_cell_at=self.store.now())
        return run

    def runner_heartbeat(self, run_id: str, token: str, output_notebook=None) -> Run:
        values: dict[str, Any] = {}
        if output_notebook is not None:
            stored = cap_notebook(output_notebook, self.store.output_cap)
            values.update(output_notebook=stored.text, output_truncated=stored.truncated)
            values["artifacts"] = artifacts_of(output_notebook)
        return self._runner_update(run_id, token, **values)

    def runner_finish(
        self,
        run_id: str,
        token: str,
        status: str,
        failed_cell: int | None = None,
        error_summary: str | None = None,
        output_notebook=None,
    ) -> Run:
        """The runner's end of the run. A run whose cancel was asked for ends `cancelled`."""
        if status not in RUNNER_END_STATES:
            raise ValueError(f"status must be one of {', '.join(RUNNER_END_STATES)}, not {status!r}")
        check_end(failed_cell, error_summary)
        run = self.runner_run(run_id, token)
        if run.cancel_requested_by and status == "interrupted":  # the cancel stopped it
            status = "cancelled"
            error_summary = f"Cancelled by {run.cancel_requested_by} while it ran." + (
                f" {error_summary}" if error_summary else ""
            )
        elif run.cancel_requested_by:  # it ended by itself before the cancel reached it: the record says so
            error_summary = f"{run.cancel_requested_by} asked to cancel it, but it had ended ({status}) first." + (
                f" {error_summary}" if error_summary else ""
            )
        stored = None if output_notebook is None else cap_notebook(output_notebook, self.store.output_cap)
        now = self.store.now()
        with self.store.transaction() as session:
            ended = lifecycle.change(
                session,
                run_id,
                status,
                actor=RUNNER,
                at=now,
                action="finished",
                from_states=(RUNNING,),
                ended_at=now,
                last_heartbeat_at=now,
                failed_cell=failed_cell,
                error_summary=error_summary,
                **({"output_notebook": stored.text, "output_truncated": stored.truncated} if stored else {}),
                **({"artifacts": artifacts_of(output_notebook)} if stored else {}),
            )
            if ended is None:
                raise RunAlreadyFinished(f"run {run_id} has already ended and cannot be changed")
        return self.store.get_run(run_id)

    def _runner_update(self, run_id: str, token: str, **values) -> Run:
        self.runner_run(run_id, token)
        values.setdefault("last_heartbeat_at", self.store.now())
        with self.store.transaction() as session:
            query = update(Run).where(Run.id == run_id, Run.status == RUNNING)
            first = "first_cell_at" in values
            if first and session.execute(query.where(Run.first_cell_at.is_(None)).values(**values)).rowcount == 1:
                pass  # the first cell's time, set once
            else:
                values.pop("first_cell_at", None)
                if session.execute(query.values(**values)).rowcount != 1:
                    raise RunAlreadyFinished(f"run {run_id} has already ended and cannot be changed")
        return self.store.get_run(run_id)  # read after the commit: another connection reads it

    # -- cancelling ---------------------------------------------------------------------------------

    def request_cancel(self, run_id: str, by: str, may_cancel_any: bool) -> Run:
        """Cancel a queued run (it ends now) or ask a running one to stop (it ends `cancelled` when its
        runner reports its end). Its requester may, and whoever `may_cancel_any` (admins)."""
        run = self.store.get_run(run_id)
        if run is None:
            raise RunNotFound(f"no run with id {run_id!r}")
        if run.trigger not in RUNNER_TRIGGERS:
            raise NotCancellable(
                f"run {run_id} runs in {run.user}'s own server ({run.trigger}): stop it there (Ctrl-C in its terminal)"
            )
        if not may_cancel_any and not (run.trigger == "requested" and run.requested_by == by):
            raise NotRunOwner(f"only the person who requested run {run_id} and admins may cancel it")
        if run.status == QUEUED:
            ended = self._end(run_id, "cancelled", f"Cancelled by {by} before it started.", (QUEUED,), by)
            if ended is not None:
                return ended
            run = self.store.get_run(run_id)
        if run.status == RUNNING:
            with self.store.transaction() as session:
                asked = session.execute(
                    update(Run)
                    .where(Run.id == run_id, Run.status == RUNNING, Run.cancel_requested_by.is_(None))
                    .values(cancel_requested_by=by)
                )
                if asked.rowcount == 1:
                    lifecycle.note(session, run, "cancel asked", actor=by, at=self.store.now())
            return self.store.get_run(run_id)
        raise NotCancellable(f"run {run_id} has already ended ({run.status})")

    def cancel_queued_alert_runs(self, fingerprint: str, by: str) -> list[Run]:
        """The queued runs of an alert that resolved: cancelled (running ones go on)."""
        with self.store.transaction() as session:
            ids = session.scalars(
                select(Run.id).where(Run.status == QUEUED, Run.alert_fingerprint == fingerprint)
            ).all()
        summary = f"Cancelled: {by} before it started."
        return [run for run_id in ids if (run := self._end(run_id, "cancelled", summary, (QUEUED,), by)) is not None]

    def _end(
        self, run_id: str, status: str, summary: str, from_states: Sequence[str], by: str = RUNNER, action=None
    ) -> Run | None:
        """End a queued or claimed run; under the admission lock, so a claim never hands out a run
        that was cancelled between its look at the queue and its write."""
        now = self.store.now()
        with self._admission() as session:
            ended = lifecycle.change(
                session, run_id, status, actor=by, at=now, action=action, from_states=from_states,
                ended_at=now, error_summary=summary,
            )  # fmt: skip
            if ended is None:
                return None
        return self.store.get_run(run_id)

    # -- reading -----------------------------------------------------------------------------------

    def queued_count(self) -> int:
        with self.store.transaction() as session:
            return session.scalar(select(func.count()).select_from(Run).where(Run.status == QUEUED)) or 0

    def queued(self) -> list[Run]:
        with self.store.transaction() as session:
            return list(session.scalars(select(Run).where(Run.status == QUEUED).order_by(Run.queued_at, Run.id)))

    def runner_runs(self) -> list[Run]:
        """Runs the runner is running (claimed, starting or executing)."""
        with self.store.transaction() as session:
            return list(session.scalars(select(Run).where(Run.status == RUNNING, Run.trigger.in_(RUNNER_TRIGGERS))))

    def cancel_requested(self) -> list[Run]:
        with self.store.transaction() as session:
            return list(session.scalars(select(Run).where(Run.status == RUNNING, Run.cancel_requested_by.is_not(None))))

    # -- schedules -----------------------------------------------------------------------------------

    def schedule_since(self, key: str, runbook: str) -> datetime.datetime:
        """Since when the schedule `key` has been looked at: the latest due time dealt with, else when
        opshub first saw it (now, the first time it is asked)."""
        with self.store.transaction() as session:
            state = session.get(ScheduleState, key)
            if state is not None:
                return max(state.first_seen_at, state.last_due_at or state.first_seen_at)
        now = self.store.now()
        try:
            with self.store.transaction() as session:
                session.add(ScheduleState(key=key, runbook=runbook, first_seen_at=now))
        except IntegrityError:  # another service process saw it first
            return self.schedule_since(key, runbook)
        return now

    def schedule_dealt_with(self, key: str, due: datetime.datetime) -> None:
        """Every due time of the schedule `key` up to `due` is on record (fired, missed or refused)."""
        with self.store.transaction() as session:
            session.execute(
                update(ScheduleState)
                .where(ScheduleState.key == key)
                .where((ScheduleState.last_due_at.is_(None)) | (ScheduleState.last_due_at < due))
                .values(last_due_at=due)
            )

    def last_fires(self, key_prefixes: Collection[str]) -> dict[str, tuple[datetime.datetime, str, str]]:
        """The latest recorded fire of each schedule (by fire-key prefix): its due time, status and run id."""
        found = {}
        with self.store.transaction() as session:
            for prefix in key_prefixes:
                row = session.execute(
                    select(Run.due_at, Run.status, Run.id)
                    # not LIKE: SQLite's ignores case, and a runbook name may hold % or _
                    .where(func.substr(Run.fire_key, 1, len(prefix)) == prefix)
                    .order_by(Run.due_at.desc())
                    .limit(1)
                ).first()
                if row is not None:
                    found[prefix] = (row[0], row[1], row[2])
        return found


def _held_locks(session: Session) -> dict[str, str]:
    """lock -> the running run holding it."""
    held: dict[str, str] = {}
    for run_id, locks in session.execute(select(Run.id, Run.locks).where(Run.status == RUNNING)):
        for lock in locks or ():
            held.setdefault(lock, run_id)
    return held
