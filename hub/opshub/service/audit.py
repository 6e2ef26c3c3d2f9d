"""Reading what happened to runs: the events lifecycle.py wrote (the audit trail of one run, the feed
of all) and the notifications sent about them. Nothing here writes: events are written only with the
change they record, and deleted only by retention."""

from __future__ import annotations

import datetime
from collections.abc import Collection
from typing import Any

from sqlalchemy import or_, select

from .models import Notification, RunEvent
from .store import RunStore

MAX_FEED_PAGE = 1000


def event_json(event: RunEvent) -> dict[str, Any]:
    """An event as the feed (`api/events`) and the admins' export give it."""
    return {
        "id": event.id,
        "at": event.at.isoformat(),
        "run_id": event.run_id,
        "runbook": event.runbook,
        "trigger": event.trigger,
        "user": event.run_user,
        "action": event.action,
        "from": event.from_status,
        "to": event.to_status,
        "actor": event.actor,
        "note": event.note,
    }


class Audit:
    def __init__(self, store: RunStore):
        self.store = store

    def of_run(self, run_id: str) -> list[RunEvent]:
        """One run's events, oldest first."""
        with self.store.transaction() as session:
            return list(session.scalars(select(RunEvent).where(RunEvent.run_id == run_id).order_by(RunEvent.id)))

    def feed(
        self,
        after: int = 0,
        limit: int = 100,
        hidden_runbooks: Collection[str] = (),
        viewer: str | None = None,
        since: datetime.datetime | None = None,
    ) -> list[RunEvent]:
        """Events after the event id `after`, oldest first; those of `hidden_runbooks` only when their run
        is `viewer`'s (the run history's own rule)."""
        if not 1 <= limit <= MAX_FEED_PAGE:
            raise ValueError(f"limit must be between 1 and {MAX_FEED_PAGE}, not {limit}")
        if not 0 <= after < 2**63:
            raise ValueError(f"after must be an event id (0 or more), not {after}")
        conditions = [RunEvent.id > after]
        if since is not None:
            conditions.append(RunEvent.at >= since)
        if hidden_runbooks:
            conditions.append(or_(RunEvent.runbook.not_in(list(hidden_runbooks)), RunEvent.run_user == (viewer or "")))
        query = select(RunEvent).where(*conditions).order_by(RunEvent.id).limit(limit)
        with self.store.transaction() as session:
            return list(session.scalars(query))

    def notifications_of(self, run_id: str) -> list[Notification]:
        with self.store.transaction() as session:
            query = select(Notification).where(Notification.run_id == run_id).order_by(Notification.id)
            return list(session.scalars(query))
