"""A run's life (service/lifecycle.py, run_states.py): every transition of the table, for each kind of
run, driven by the operation that makes it (the store's, the queue's, the sweep, retention), tells
the subscribers exactly once and leaves exactly one event on record; every change the table does not
hold is refused, changes nothing and tells nobody.

tests/integration/test_store_postgres.py runs these tests on PostgreSQL too.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from opshub.service import lifecycle
from opshub.service.audit import Audit
from opshub.service.models import Run
from opshub.service.queue import RunQueue
from opshub.service.run_states import DELETED, NEW, TRANSITIONS, RunKind, Status, allowed
from opshub.service.store import RunStore

from tests.unit.test_store import OUTPUT_CAP, START, Clock, clock, database_url, store  # noqa: F401 (fixtures)

S = Status
PERSON, RUNNER = RunKind.PERSON, RunKind.RUNNER


@dataclass
class Life:
    """A store and queue, what their bus told, and the runner's tokens of claimed runs."""

    store: RunStore
    queue: RunQueue
    clock: Clock
    heard: list[lifecycle.RunChanged] = field(default_factory=list)
    tokens: dict[str, str] = field(default_factory=dict)

    def claim(self, run_id: str) -> None:
        claims, _ = self.queue.claim(max_concurrent=100)
        assert [c.run.id for c in claims] == [run_id]
        self.tokens[run_id] = claims[0].token


@pytest.fixture
def life(store, clock) -> Life:  # noqa: F811 (the store suite's fixtures)
    found = Life(store, RunQueue(store), clock)
    store.bus.subscribe(found.heard.append)
    return found


# How to bring a run of each kind to each status it can have, by the operations that do it.


def person_running(life: Life) -> str:
    return life.store.start_run("patch.ipynb", "alice", "headless", {"stack": "web"}).id


def person_ended(status: str) -> Callable[[Life], str]:
    def make(life: Life) -> str:
        run_id = person_running(life)
        life.store.finish_run(run_id, "alice", status)
        return run_id

    return make


def runner_queued(life: Life) -> str:
    return life.queue.enqueue("patch.ipynb", "requested", user="bob", requested_by="bob", locks=["stack:web"]).id


def runner_running(life: Life) -> str:
    run_id = runner_queued(life)
    life.claim(run_id)
    return run_id


def runner_ended(status: str) -> Callable[[Life], str]:
    def make(life: Life) -> str:
        run_id = runner_running(life)
        life.queue.runner_finish(run_id, life.tokens[run_id], status)
        return run_id

    return make


def runner_cancelled(life: Life) -> str:
    run_id = runner_queued(life)
    life.queue.request_cancel(run_id, "bob", may_cancel_any=False)
    return run_id


def runner_missed(life: Life) -> str:
    return life.queue.record_missed("patch.ipynb", "schedule nightly", "patch.ipynb#nightly@1", START, "Missed").id


BRING = {
    PERSON: {
        S.RUNNING: person_running,
        S.SUCCEEDED: person_ended("succeeded"),
        S.FAILED: person_ended("failed"),
        S.INTERRUPTED: person_ended("interrupted"),
    },
    RUNNER: {
        S.QUEUED: runner_queued,
        S.RUNNING: runner_running,
        S.SUCCEEDED: runner_ended("succeeded"),
        S.FAILED: runner_ended("failed"),
        S.INTERRUPTED: runner_ended("interrupted"),
        S.CANCELLED: runner_cancelled,
        S.MISSED: runner_missed,
    },
}


# The operations, each making one transition of the table: (kind, before, after, name, operation).


def sweep(life: Life, run_id: str) -> None:
    life.clock.advance(minutes=10)
    assert life.store.interrupt_stale_runs(datetime.timedelta(minutes=5)) == [run_id]


def retention(life: Life, run_id: str) -> None:
    life.clock.advance(days=40)
    assert life.store.apply_retention(max_age=datetime.timedelta(days=30)) == 1


def cancel_then(operation: Callable[[Life, str], object]) -> Callable[[Life, str], None]:
    def run(life: Life, run_id: str) -> None:
        life.queue.request_cancel(run_id, "alice", may_cancel_any=True)  # asked: no change of status yet
        operation(life, run_id)

    return run


def begun(operation: Callable[[Life, str], object]) -> Callable[[Life, str], None]:
    def run(life: Life, run_id: str) -> None:
        life.queue.runner_begin(run_id, life.tokens[run_id])  # its first cell: no change of status
        operation(life, run_id)

    return run


def alert_resolved(life: Life, _run_id: str) -> None:
    (cancelled,) = life.queue.cancel_queued_alert_runs("f00d", "alert HostDown resolved")


def queued_alert(life: Life) -> str:
    run = life.queue.enqueue(
        "patch.ipynb", "alert", user="opshub-runner", requested_by="alert", alert_fingerprint="f00d"
    )
    return run.id


def finish_runner(status: str) -> Callable[[Life, str], None]:
    return lambda life, run_id: life.queue.runner_finish(run_id, life.tokens[run_id], status)


def finish_person(status: str) -> Callable[[Life, str], None]:
    return lambda life, run_id: life.store.finish_run(run_id, "alice", status)


def delete(life: Life, run_id: str) -> None:
    assert life.store.delete_run(run_id, by="admin")


NEW_RUNS = {  # operations that record a new run: they return its id
    (PERSON, S.RUNNING, "opshub run"): person_running,
    (PERSON, S.RUNNING, "opshub run holding a lock"): lambda life: (
        life.queue.start_person_run(["stack:web"], runbook="patch.ipynb", user="alice", trigger="headless").id
    ),
    (RUNNER, S.QUEUED, "request"): runner_queued,
    (RUNNER, S.QUEUED, "alert"): queued_alert,
    (RUNNER, S.MISSED, "missed fire"): runner_missed,
    (RUNNER, S.FAILED, "refused alert"): lambda life: (
        life.queue.record_missed(
            "patch.ipynb", "alert HostDown f00d", "patch.ipynb!alert:f00d", START, "Not run: bad", "failed", "alert"
        ).id
    ),
}
CHANGES = [
    (PERSON, S.RUNNING, S.SUCCEEDED, "finish", finish_person("succeeded")),
    (PERSON, S.RUNNING, S.FAILED, "finish failed", finish_person("failed")),
    (PERSON, S.RUNNING, S.INTERRUPTED, "finish interrupted (Ctrl-C)", finish_person("interrupted")),
    (PERSON, S.RUNNING, S.INTERRUPTED, "sweep", sweep),
    (RUNNER, S.QUEUED, S.RUNNING, "claim", lambda life, run_id: life.claim(run_id)),
    (RUNNER, S.QUEUED, S.CANCELLED, "cancel", lambda life, run_id: life.queue.request_cancel(run_id, "bob", False)),
    (RUNNER, S.RUNNING, S.QUEUED, "release (hub away)", lambda life, run_id: life.queue.release(run_id)),
    (
        RUNNER,
        S.RUNNING,
        S.CANCELLED,
        "release of a cancelled claim",
        cancel_then(lambda life, r: life.queue.release(r)),
    ),
    (RUNNER, S.RUNNING, S.SUCCEEDED, "runner's finish", finish_runner("succeeded")),
    (RUNNER, S.RUNNING, S.FAILED, "runner's finish failed", finish_runner("failed")),
    (RUNNER, S.RUNNING, S.FAILED, "never started", lambda life, run_id: life.queue.fail(run_id, "no server")),
    (RUNNER, S.RUNNING, S.INTERRUPTED, "runner's finish interrupted", finish_runner("interrupted")),
    (RUNNER, S.RUNNING, S.INTERRUPTED, "server lost", begun(lambda life, run_id: life.queue.lost(run_id))),
    (RUNNER, S.RUNNING, S.INTERRUPTED, "sweep", sweep),
    (RUNNER, S.RUNNING, S.CANCELLED, "stopped by a cancel", cancel_then(finish_runner("interrupted"))),
]
CHANGES += [(kind, before, DELETED, "admin deletes", delete) for kind in BRING for before in BRING[kind]]
CHANGES += [
    (kind, before, DELETED, "retention", retention)
    for kind in BRING
    for before in BRING[kind]
    if before not in (S.QUEUED, S.RUNNING)  # retention keeps active runs
]
SETUP = {(RUNNER, S.QUEUED, "alert resolved"): queued_alert}
CHANGES.append((RUNNER, S.QUEUED, S.CANCELLED, "alert resolved", alert_resolved))


def test_the_cases_cover_every_transition_of_the_table():
    covered = {(kind, NEW, after) for kind, after, _ in NEW_RUNS} | {(k, b, a) for k, b, a, _, _ in CHANGES}
    table = {
        (kind, before, after)
        for kind, rows in TRANSITIONS.items()
        for before, afters in rows.items()
        for after in afters
    }
    assert covered == table


def assert_one_change(life: Life, run_id: str, before: str, after: str) -> None:
    assert [(c.run.id, c.before, c.after) for c in life.heard] == [(run_id, before, after)]
    changes = [e for e in Audit(life.store).of_run(run_id) if e.from_status != e.to_status]
    assert [(e.from_status, e.to_status) for e in changes][-1:] == [(before, after)]
    assert life.heard[0].event_id == changes[-1].id


@pytest.mark.parametrize(("kind", "after", "name"), list(NEW_RUNS), ids=lambda v: str(v))
def test_recording_a_run_is_one_change_from_new(life, kind, after, name):
    run_id = NEW_RUNS[(kind, after, name)](life)
    assert_one_change(life, run_id, NEW, after)
    assert life.store.get_run(run_id).status == after


@pytest.mark.parametrize(
    ("kind", "before", "after", "name", "operation"), CHANGES, ids=[f"{c[0]}-{c[1]}-{c[2]}-{c[3]}" for c in CHANGES]
)
def test_each_transition_tells_the_subscribers_once_and_is_on_record(life, kind, before, after, name, operation):
    run_id = SETUP.get((kind, before, name), BRING[kind][before])(life)
    assert life.store.get_run(run_id).status == before
    life.heard.clear()
    operation(life, run_id)
    assert_one_change(life, run_id, before, after)
    stored = life.store.get_run(run_id)
    assert (stored.status if stored else DELETED) == after


REFUSED = [
    (kind, before, after)
    for kind in BRING
    for before in [NEW, *BRING[kind]]
    for after in [*Status, DELETED]
    if not allowed(kind, before, after)
]


@pytest.mark.parametrize(("kind", "before", "after"), REFUSED, ids=[f"{k}-{b}-{a}" for k, b, a in REFUSED])
def test_a_change_the_table_does_not_hold_is_refused(life, kind, before, after):
    now = life.store.now()
    if before == NEW:
        trigger = "headless" if kind == PERSON else "requested"
        run = Run(
            runbook="patch.ipynb", user="mallory", trigger=trigger, status=after, started_at=now, last_heartbeat_at=now
        )
        with (
            pytest.raises(lifecycle.BadTransition, match=f"cannot go from new to {after}"),
            life.store.transaction() as session,
        ):
            lifecycle.create(session, run, actor="mallory", at=now)
        assert life.store.list_runs()[1] == 0 and life.heard == []
        return
    run_id = BRING[kind][before](life)
    events = len(Audit(life.store).of_run(run_id))
    life.heard.clear()
    with (
        pytest.raises(lifecycle.BadTransition, match=f"cannot go from {before} to {after}"),
        life.store.transaction() as session,
    ):
        if after == DELETED:
            lifecycle.delete_run(session, run_id, actor="mallory", at=now)
        else:
            lifecycle.change(session, run_id, after, actor="mallory", at=now)
    assert life.store.get_run(run_id).status == before
    assert life.heard == [] and len(Audit(life.store).of_run(run_id)) == events


def test_a_persons_token_cannot_record_a_status_only_the_service_gives(life):
    """`cancelled` and `missed` are end states of the runner's runs: a person's finish is refused."""
    run_id = person_running(life)
    for status in ("cancelled", "missed"):
        with pytest.raises(lifecycle.BadTransition):
            life.store.finish_run(run_id, "alice", status)
    assert life.store.get_run(run_id).status == "running"


def test_a_cancel_asked_of_a_running_run_is_on_the_audit_trail_but_changes_nothing(life):
    run_id = runner_running(life)
    life.heard.clear()
    life.queue.request_cancel(run_id, "alice", may_cancel_any=True)
    assert life.heard == []
    last = Audit(life.store).of_run(run_id)[-1]
    assert (last.action, last.actor, last.from_status, last.to_status) == (
        "cancel asked",
        "alice",
        "running",
        "running",
    )


def test_a_deleted_runs_trail_stays(life):
    run_id = person_ended("failed")(life)
    life.store.delete_run(run_id, by="admin")
    trail = [(e.action, e.actor, e.from_status, e.to_status) for e in Audit(life.store).of_run(run_id)]
    assert trail == [
        ("started", "alice", "new", "running"),
        ("finished", "alice", "running", "failed"),
        ("deleted", "admin", "failed", "deleted"),
    ]


def test_a_subscriber_that_fails_does_not_keep_the_others_from_hearing(life):
    def broken(change):
        raise RuntimeError("a bug in one subscriber")

    heard_after = []
    life.store.bus.subscribe(broken)
    life.store.bus.subscribe(heard_after.append)
    run_id = person_running(life)
    assert [c.run.id for c in heard_after] == [run_id] and life.store.get_run(run_id).status == "running"


def test_a_rolled_back_change_tells_nobody(life):
    run_id = runner_queued(life)
    life.heard.clear()
    with pytest.raises(RuntimeError), life.store.transaction() as session:
        lifecycle.change(session, run_id, "cancelled", actor="bob", at=life.store.now())
        raise RuntimeError("the transaction fails after the change")
    assert life.heard == [] and life.store.get_run(run_id).status == "queued"
    assert [e.to_status for e in Audit(life.store).of_run(run_id)] == ["queued"]
