"""A run's one door: every change of a run's status, for every kind of run, is written here.

    run = lifecycle.create(session, Run(...), actor="bob", at=now)                 # NEW -> queued/running/...
    run = lifecycle.change(session, run_id, Status.FAILED, actor="opshub runner", at=now,
                           from_states=(Status.RUNNING,), error_summary="...", ended_at=now)
    run = lifecycle.delete(session, run_id, actor="alice", at=now)                 # -> DELETED
    lifecycle.note(session, run, "cancel asked", actor="alice", at=now)             # no status change

Each checks the change against run_states.TRANSITIONS (BadTransition otherwise), writes it with the
status before in its WHERE (of two writers racing, one wins and the other changes nothing), and adds
a RunEvent row in the same transaction: the audit trail, the JSON feed and the notifier's outbox, so
an event is on record before anything acts on it. After the commit, the store's RunBus hands a
RunChanged to every subscriber registered at start (the metrics, the runner, the notifier).

Whether a run may move is decided before it comes here: ownership and tokens by the store and the
queue, admission (locks, `max_concurrent`) by the queue. tests/unit/test_layering.py forbids writing
a run's status anywhere else.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, delete, select, update
from sqlalchemy.orm import Session, defer

from .models import Run, RunEvent
from .run_states import DELETED, END, NEW, allowed, kind_of

log = logging.getLogger("opshub.service.lifecycle")

CHANGES = "opshub.run_changes"  # session.info key: the changes a transaction made, published at its commit
MAX_NOTE = 4000


class BadTransition(ValueError):
    """A change of status the table of transitions does not allow for this kind of run."""


@dataclass(frozen=True)
class RunChanged:
    """What subscribers hear: the run as it is now (as it was, when deleted; its output not loaded),
    its status before and after (run_states.NEW, run_states.DELETED), who did it and the event's id."""

    run: Run
    before: str
    after: str
    actor: str
    action: str
    event_id: int
    at: datetime.datetime

    @property
    def ended(self) -> bool:
        """The run reached an end state with this change."""
        return self.after in END


def check(trigger: str, before: str, after: str) -> None:
    """BadTransition unless a run of this trigger's kind may go from `before` to `after`."""
    if not allowed(kind_of(trigger), before, after):
        raise BadTransition(f"a {kind_of(trigger)} run ({trigger}) cannot go from {before} to {after}")


def create(session: Session, run: Run, *, actor: str, at: datetime.datetime, action: str | None = None) -> Run:
    """Record a new run in the status it was built with. An IntegrityError (a fire or an alert already
    on record) raises here, before the event is written."""
    check(run.trigger, NEW, run.status)
    session.add(run)
    session.flush()
    _record(session, run, NEW, run.status, actor, at, action, run.error_summary)
    return run


def change(
    session: Session,
    run_id: str,
    after: str,
    *,
    actor: str,
    at: datetime.datetime,
    from_states: Collection[str] | None = None,
    where: Collection[ColumnElement[bool]] = (),
    action: str | None = None,
    note: str | None = None,
    **values: Any,
) -> Run | None:
    """Move one run to `after`, setting `values` too. None when no run matches `where` in one of
    `from_states` (or another writer moved it first); BadTransition when the table forbids the change."""
    row = session.execute(select(Run.status, Run.trigger).where(Run.id == run_id, *where)).first()
    if row is None or (from_states is not None and row.status not in from_states):
        return None
    before = row.status
    check(row.trigger, before, after)
    query = update(Run).where(Run.id == run_id, Run.status == before, *where).values(status=after, **values)
    if session.execute(query).rowcount != 1:
        return None
    run = _load(session, run_id)
    _record(session, run, before, after, actor, at, action, note if note is not None else values.get("error_summary"))
    return run


def delete_run(
    session: Session, run_id: str, *, actor: str, at: datetime.datetime, action: str = "deleted"
) -> Run | None:
    """Delete one run's record, whatever its status; the event stays. None if there is none."""
    deleted = delete_runs(session, [run_id], actor=actor, at=at, action=action)
    return deleted[0] if deleted else None


def delete_runs(
    session: Session, run_ids: Collection[str], *, actor: str, at: datetime.datetime, action: str
) -> list[Run]:
    """Delete runs' records (retention deletes thousands in a pass: a statement per status, not per
    run), each change checked against the table and recorded. Returns the runs deleted."""
    query = select(Run).where(Run.id.in_(list(run_ids))).options(defer(Run.output_notebook, raiseload=True))
    runs = list(session.scalars(query.execution_options(populate_existing=True)))
    for run in runs:
        check(run.trigger, run.status, DELETED)
    deleted: set[str] = set()
    for status in {run.status for run in runs}:  # the status before in the WHERE: a run moved meanwhile stays
        ids = [run.id for run in runs if run.status == status]
        deleted |= set(session.scalars(delete(Run).where(Run.id.in_(ids), Run.status == status).returning(Run.id)))
    gone = [run for run in runs if run.id in deleted]
    for run in gone:
        _record(session, run, run.status, DELETED, actor, at, action, None)
    return gone


def note(
    session: Session, run: Run, action: str, *, actor: str, at: datetime.datetime, text: str | None = None
) -> None:
    """Something a person did to a run that changes no status (a cancel asked of a running run): on the
    audit trail, told to no subscriber."""
    _record(session, run, run.status, run.status, actor, at, action, text, publish=False)


def _load(session: Session, run_id: str) -> Run | None:
    query = select(Run).where(Run.id == run_id).options(defer(Run.output_notebook, raiseload=True))
    return session.scalars(query.execution_options(populate_existing=True)).first()


def _record(
    session: Session,
    run: Run,
    before: str,
    after: str,
    actor: str,
    at: datetime.datetime,
    action: str | None,
    note: str | None,
    publish: bool = True,
) -> None:
    event = RunEvent(
        at=at,
        run_id=run.id,
        runbook=run.runbook,
        trigger=run.trigger,
        run_user=run.user,
        action=action or default_action(before, after),
        from_status=str(before),
        to_status=str(after),
        actor=actor[:255],
        note=note[:MAX_NOTE] if note else None,
    )
    session.add(event)
    session.flush()
    if publish:
        changed = RunChanged(run, str(before), str(after), event.actor, event.action, event.id, at)
        session.info.setdefault(CHANGES, []).append(changed)


def default_action(before: str, after: str) -> str:
    """What the audit trail says when the writer gave no word of its own."""
    if after == DELETED:
        return "deleted"
    if before == NEW:
        return "recorded " + str(after)
    return {"running": "started", "queued": "back in the queue"}.get(str(after), "ended " + str(after))


class RunBus:
    """Hands every committed RunChanged to the subscribers, in order, on the service's event loop
    (writes made in worker threads hop to it), each subscriber's failure logged and contained."""

    def __init__(self) -> None:
        self._subscribers: list[Callable[[RunChanged], None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    def subscribe(self, subscriber: Callable[[RunChanged], None]) -> None:
        self._subscribers.append(subscriber)

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Subscribers run on this loop from now on (before: on the writer's thread, as in tests)."""
        self._loop = loop

    def committed(self, session: Session) -> None:
        changes = session.info.pop(CHANGES, None)
        if not changes:
            return
        try:
            on_loop = asyncio.get_running_loop() is self._loop
        except RuntimeError:
            on_loop = False
        if self._loop is None or on_loop:
            self._deliver(changes)
        else:
            self._loop.call_soon_threadsafe(self._deliver, changes)

    @staticmethod
    def rolled_back(session: Session) -> None:
        session.info.pop(CHANGES, None)

    def _deliver(self, changes: list[RunChanged]) -> None:
        for changed in changes:
            for subscriber in self._subscribers:
                try:
                    subscriber(changed)
                except Exception:  # one subscriber's bug must not keep the others from hearing
                    log.exception(
                        "run %s: %s failed on %s -> %s", changed.run.id, subscriber, changed.before, changed.after
                    )
