"""Reading what happened to runs: the events lifecycle.py wrote (the audit trail of one run, the feed
of all) and the notifications sent about them. Nothing here writes: events are written only with the
change they record, and deleted only by retention."""

from __future__ import annotations

import datetime
from typing import Any

from sqlalchemy import select

from .models import Notification, RunEvent
from .store import RunStore
from .visibility import RunVisibility

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
        visible_to: RunVisibility | None = None,
        since: datetime.datetime | None = None,
    ) -> list[RunEvent]:
        """Events after the event id `after`, oldest first; `visible_to`: only those of runs that viewer
        may see (visibility.py, the run history's own rule)."""
        if not 1 <= limit <= MAX_FEED_PAGE:
            raise ValueError(f"limit must be between 1 and {MAX_FEED_PAGE}, not {limit}")
        if not 0 <= after < 2**63:
            raise ValueError(f"after must be an event id (0 or more), not {after}")
        conditions = [RunEvent.id > after]
        if since is not None:
            conditions.append(RunEvent.at >= since)
        visible = visible_to.condition(RunEvent.runbook, RunEvent.run_user) if visible_to is not None else None
        if visible is not None:
            conditions.append(visible)
        query = select(RunEvent).where(*conditions).order_by(RunEvent.id).limit(limit)
        with self.store.transaction() as session:
            return list(session.scalars(query))

    def notifications_of(self, run_id: str) -> list[Notification]:
        with self.store.transaction() as session:
            query = select(Notification).where(Notification.run_id == run_id).order_by(Notification.id)
            return list(session.scalars(query))
