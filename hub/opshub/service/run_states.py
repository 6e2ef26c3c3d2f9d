"""A run's statuses and the changes allowed between them: the table every status write is checked
against (lifecycle.py, the one door) and from which the SQL of the active-runs index is generated.

To add a status (an approval step, say): add it to `Status`, give it its rows in `TRANSITIONS`, put
it in `ACTIVE` if a run in it still holds its place, and write an alembic revision when
`active_sql()` changes (the partial index of models.Run). hub/docs/developing.md walks through it.
"""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    QUEUED = "queued"  # recorded by the service, waiting for the runner (capacity, a lock)
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # a cell failed, it never started, or its trigger was refused
    INTERRUPTED = "interrupted"  # its process stopped or lost contact (the sweep), or its server went
    CANCELLED = "cancelled"  # stopped by its requester, an admin or a resolved alert
    MISSED = "missed"  # a schedule's fire due while opshub was down, beyond the catch-up window


# Not statuses a run is stored with: where a run is before its record exists and after it is deleted.
NEW = "new"
DELETED = "deleted"

ACTIVE = (Status.QUEUED, Status.RUNNING)
END = (Status.SUCCEEDED, Status.FAILED, Status.INTERRUPTED, Status.CANCELLED, Status.MISSED)
NOT_RUN = (Status.CANCELLED, Status.MISSED)  # end states of runs that may never have run: no duration counted

TRIGGERS = ("headless", "interactive", "api", "schedule", "requested", "alert")
# What a person's server may report with its owner's token. Runs with other triggers (scheduled,
# requested, alert-driven) are what the trusted side did: the service records those itself.
REPORTED_TRIGGERS = ("headless", "interactive")
# Runs the service records and the runner executes (unattended runs).
RUNNER_TRIGGERS = ("requested", "schedule", "alert")


class RunKind(StrEnum):
    PERSON = "person"  # reported by a person's server (`opshub run`, an interactive session)
    RUNNER = "runner"  # recorded by the service, executed by the runner (RUNNER_TRIGGERS)


def kind_of(trigger: str) -> RunKind:
    return RunKind.RUNNER if trigger in RUNNER_TRIGGERS else RunKind.PERSON


S = Status
# kind -> status before -> the statuses it may change to. Every status a kind of run can reach may
# also become DELETED (an admin's deletion, retention): added below rather than written on every row.
TRANSITIONS: dict[RunKind, dict[str, frozenset[str]]] = {
    RunKind.PERSON: {
        NEW: frozenset({S.RUNNING}),  # its server reports the start
        S.RUNNING: frozenset({S.SUCCEEDED, S.FAILED, S.INTERRUPTED}),  # its end, or the sweep (no heartbeat)
    },
    RunKind.RUNNER: {
        # requested, fired or alerted; a fire due while opshub was down; a trigger the runbook refuses
        NEW: frozenset({S.QUEUED, S.MISSED, S.FAILED}),
        S.QUEUED: frozenset({S.RUNNING, S.CANCELLED}),  # claimed by the runner; cancelled before it started
        # back to the queue (the hub was away); its end; never started (failed); its server lost or
        # the sweep (interrupted); stopped by a cancel
        S.RUNNING: frozenset({S.QUEUED, S.SUCCEEDED, S.FAILED, S.INTERRUPTED, S.CANCELLED}),
    },
}
for _table in TRANSITIONS.values():
    for _status in set().union(*_table.values()):
        _table[_status] = _table.get(_status, frozenset()) | {DELETED}
del _table, _status, S


# The audit trail's action of a paused schedule's fire, recorded `missed` (scheduler.py): someone chose
# it, so it is not news (the notifier tells nobody, unlike a fire missed while opshub was down).
SKIPPED_ACTION = "skipped"


def allowed(kind: RunKind, before: str, after: str) -> bool:
    """Whether a run of this kind may change from `before` to `after` (NEW: recorded; DELETED: deleted)."""
    return after in TRANSITIONS[kind].get(before, ())


def active_sql() -> str:
    """The SQL condition "the run is active" (queued or running), for partial indexes."""
    return "status IN (" + ", ".join(f"'{status}'" for status in ACTIVE) + ")"
