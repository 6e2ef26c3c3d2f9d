"""The runner's queue (opshub.service.queue) against a real SQLite database in tmp_path.

tests/integration/test_store_postgres.py runs these same tests against a real PostgreSQL server by
overriding the `database_url` fixture, as it does for tests/unit/test_store.py. Nothing
sleeps: the store's clock is moved by hand.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import secrets
import threading
import uuid

import pytest
from nbformat.v4 import new_code_cell, new_notebook, new_output
from opshub.service.events import RunEvents
from opshub.service.models import Run
from opshub.service.queue import (
    BadRunToken,
    LockHeld,
    NotCancellable,
    RunQueue,
    runner_server_name,
)
from opshub.service.stats import RunStats
from opshub.service.store import NotRunOwner, RecordedByService, RunAlreadyFinished, RunNotFound, RunStore
from prometheus_client import CollectorRegistry
from sqlalchemy import event

from tests.unit.test_store import OUTPUT_CAP, START, Clock, clock, database_url, store  # noqa: F401 (the store suite's fixtures)

COMMIT = "c" * 40


@pytest.fixture
def queue(store) -> RunQueue:
    return RunQueue(store)


def enqueue(queue: RunQueue, runbook="patch.ipynb", trigger="requested", user="bob", **kwargs) -> Run | None:
    kwargs.setdefault("requested_by", user)
    return queue.enqueue(runbook, trigger, user=user, **kwargs)


def queued_runs(queue: RunQueue, clock: Clock, *lock_sets: list[str]) -> list[Run]:
    """One requested run per lock set, a second apart (so "oldest first" is well defined)."""
    runs = []
    for locks in lock_sets:
        clock.advance(seconds=1)
        runs.append(enqueue(queue, locks=locks))
    return runs


def claim_one(queue: RunQueue, run: Run) -> str:
    """Claim `run` (it must be the only claimable one); its token."""
    claims, _ = queue.claim(max_concurrent=100)
    assert [claim.run.id for claim in claims] == [run.id]
    return claims[0].token


def person_run(queue: RunQueue, locks=(), user="alice", **kwargs) -> Run:
    return queue.start_person_run(list(locks), runbook="patch.ipynb", user=user, trigger="headless", **kwargs)


def all_runs(store: RunStore) -> list[Run]:
    return store.list_runs(limit=1000)[0]


# Enqueueing


def test_enqueue_records_a_queued_run_with_every_field(queue, store, clock):
    due = START - datetime.timedelta(minutes=3)
    run = enqueue(
        queue,
        trigger="schedule",
        user="opshub-runner",
        requested_by="schedule nightly",
        parameters={"stack": "web", "hosts": ["a", "b"]},
        commit=COMMIT,
        locks=["stack:web", "host:a", "stack:web"],
        due_at=due,
        fire_key="patch.ipynb#nightly@2025-03-01T08:57:00+00:00",
    )

    stored = store.get_run(run.id)
    assert uuid.UUID(stored.id).version == 4
    assert (stored.runbook, stored.trigger, stored.user) == ("patch.ipynb", "schedule", "opshub-runner")
    assert stored.requested_by == "schedule nightly"
    assert stored.parameters == {"stack": "web", "hosts": ["a", "b"]}
    assert stored.runbook_commit == COMMIT
    assert stored.locks == ["host:a", "stack:web"]  # sorted, each once
    assert stored.status == "queued" and not stored.finished
    assert stored.queued_at == START and stored.due_at == due
    assert stored.fire_key == "patch.ipynb#nightly@2025-03-01T08:57:00+00:00"
    assert stored.alert_fingerprint is None
    assert stored.ended_at is None and stored.first_cell_at is None
    assert stored.runner_token_hash is None and stored.runner_server is None
    assert stored.cancel_requested_by is None
    assert stored.reported_by == "opshub service"
    assert queue.queued_count() == 1
    assert [r.id for r in queue.queued()] == [run.id]


def test_a_request_has_no_due_time_of_its_own_it_is_due_when_queued(queue, clock):
    clock.advance(minutes=5)
    run = enqueue(queue)
    assert run.due_at is None and run.queued_at == run.started_at == clock.current


@pytest.mark.parametrize("trigger", ["headless", "interactive", "api", "", "cron"])
def test_enqueue_refuses_a_trigger_the_runner_does_not_run(queue, store, trigger):
    with pytest.raises(ValueError, match="trigger"):
        enqueue(queue, trigger=trigger)
    assert all_runs(store) == []


@pytest.mark.parametrize(
    "changes",
    [
        {"runbook": ""},
        {"user": " "},
        {"requested_by": "x" * 256},
        {"locks": [""]},
        {"locks": ["stack:\x00"]},
        {"commit": "c" * 65},
        {"parameters": {"ratio": float("nan")}},
        {"parameters": {"when": datetime.datetime(2025, 1, 1)}},
    ],
)
def test_enqueue_refuses_values_no_database_can_keep(queue, store, changes):
    with pytest.raises(ValueError):
        enqueue(queue, **changes)
    assert all_runs(store) == []


def test_a_fire_is_recorded_once_for_ever(queue, store, clock):
    key = "patch.ipynb#nightly@2025-03-01T03:00:00+00:00"
    first = enqueue(queue, trigger="schedule", fire_key=key)
    assert first is not None

    assert enqueue(queue, trigger="schedule", fire_key=key) is None
    assert queue.record_missed("patch.ipynb", "schedule nightly", key, START, "late") is None
    token = claim_one(queue, first)
    queue.runner_finish(first.id, token, "succeeded")
    assert enqueue(queue, trigger="schedule", fire_key=key) is None  # ended: still this fire's run

    assert [run.id for run in all_runs(store)] == [first.id]


def test_one_queued_or_running_run_per_runbook_and_alert(queue, store, clock):
    first = enqueue(queue, trigger="alert", alert_fingerprint="fp1")
    assert first is not None
    assert enqueue(queue, trigger="alert", alert_fingerprint="fp1") is None  # queued
    clock.advance(seconds=1)
    other_runbook = enqueue(queue, runbook="reboot.ipynb", trigger="alert", alert_fingerprint="fp1")
    other_alert = enqueue(queue, trigger="alert", alert_fingerprint="fp2")
    assert other_runbook is not None and other_alert is not None

    claims, _ = queue.claim(max_concurrent=1)
    assert [claim.run.id for claim in claims] == [first.id]
    assert enqueue(queue, trigger="alert", alert_fingerprint="fp1") is None  # running

    queue.runner_finish(first.id, claims[0].token, "failed")
    again = enqueue(queue, trigger="alert", alert_fingerprint="fp1")  # the first ended
    assert again is not None and again.id != first.id
    assert queue.cancel_queued_alert_runs("fp1", "alert HostDown resolved") != []
    assert enqueue(queue, trigger="alert", alert_fingerprint="fp1") is not None  # cancelled: ended too
    assert store.get_run(other_runbook.id).status == "cancelled"  # the same alert's queued runs, all runbooks
    assert len([run for run in all_runs(store) if run.alert_fingerprint == "fp1"]) == 4


def test_a_resolved_alert_cancels_its_queued_runs_and_lets_running_ones_go_on(queue, store, clock):
    running = enqueue(queue, runbook="a.ipynb", trigger="alert", alert_fingerprint="fp")
    claim_one(queue, running)
    queued = enqueue(queue, runbook="b.ipynb", trigger="alert", alert_fingerprint="fp")
    unrelated = enqueue(queue, runbook="c.ipynb", trigger="alert", alert_fingerprint="other")

    cancelled = queue.cancel_queued_alert_runs("fp", "alert HostDown resolved")

    assert [run.id for run in cancelled] == [queued.id]
    assert cancelled[0].status == "cancelled" and cancelled[0].ended_at == clock.current
    assert "alert HostDown resolved" in cancelled[0].error_summary
    assert store.get_run(running.id).status == "running"
    assert store.get_run(unrelated.id).status == "queued"


# Claiming


def test_claim_hands_out_a_token_whose_hash_alone_is_stored(queue, store, clock):
    (run,) = queued_runs(queue, clock, [])
    later = clock.advance(minutes=2)

    claims, waiting = queue.claim(max_concurrent=1)

    assert waiting == {}
    (claim,) = claims
    assert claim.run.id == run.id and claim.run.status == "running"
    stored = store.get_run(run.id)
    assert stored.status == "running"
    assert stored.started_at == later and stored.last_heartbeat_at == later
    assert stored.queued_at == run.queued_at  # when it was queued stays
    assert len(claim.token) >= 32
    assert stored.runner_token_hash == hashlib.sha256(claim.token.encode()).hexdigest()
    assert claim.token not in json.dumps({c.name: str(getattr(stored, c.key)) for c in Run.__table__.columns})
    assert stored.runner_server == runner_server_name(run.id)
    assert stored.runner_server.startswith("run-") and len(stored.runner_server) <= 30
    assert queue.queued_count() == 0
    assert [r.id for r in queue.runner_runs()] == [run.id]


def test_claim_takes_the_oldest_first_up_to_max_concurrent(queue, clock):
    runs = queued_runs(queue, clock, [], [], [], [])

    first, _ = queue.claim(max_concurrent=2)
    assert [claim.run.id for claim in first] == [runs[0].id, runs[1].id]
    assert queue.claim(max_concurrent=2) == ([], {})

    queue.runner_finish(runs[1].id, first[1].token, "succeeded")
    second, _ = queue.claim(max_concurrent=2)
    assert [claim.run.id for claim in second] == [runs[2].id]
    assert queue.claim(max_concurrent=3)[0][0].run.id == runs[3].id
    assert queue.claim(max_concurrent=0) == ([], {})


def test_people_s_own_runs_do_not_count_against_max_concurrent(queue, store, clock):
    for user in ("alice", "carol"):
        person_run(queue, user=user)
    store.start_run("b.ipynb", "dave", "interactive")
    runs = queued_runs(queue, clock, [], [])

    claims, _ = queue.claim(max_concurrent=1)

    assert [claim.run.id for claim in claims] == [runs[0].id]
    assert queue.claim(max_concurrent=1) == ([], {})
    assert len(store.list_runs(status="running")[0]) == 4


def test_a_run_whose_lock_a_running_run_holds_waits_and_others_go_ahead(queue, store, clock):
    holder, blocked, free = queued_runs(queue, clock, ["stack:web"], ["host:1", "stack:web"], ["stack:db"])
    claims, waiting = queue.claim(max_concurrent=1)
    assert [claim.run.id for claim in claims] == [holder.id] and waiting == {}

    claims, waiting = queue.claim(max_concurrent=5)

    assert [claim.run.id for claim in claims] == [free.id]
    assert waiting == {blocked.id: "stack:web"}
    assert store.get_run(blocked.id).status == "queued"
    queue.fail(holder.id, "the runner's server would not start")
    claims, waiting = queue.claim(max_concurrent=5)
    assert [claim.run.id for claim in claims] == [blocked.id] and waiting == {}


def test_a_person_s_run_holding_a_lock_keeps_a_runner_run_waiting(queue, store, clock):
    mine = person_run(queue, ["stack:web"])
    assert store.get_run(mine.id).locks == ["stack:web"]
    (waiting_run,) = queued_runs(queue, clock, ["stack:web"])

    claims, waiting = queue.claim(max_concurrent=5)
    assert claims == [] and waiting == {waiting_run.id: "stack:web"}

    store.finish_run(mine.id, "alice", "succeeded")
    claims, waiting = queue.claim(max_concurrent=5)
    assert [claim.run.id for claim in claims] == [waiting_run.id] and waiting == {}


def test_two_queued_runs_with_one_lock_are_not_claimed_together(queue, clock):
    first, second, third = queued_runs(queue, clock, ["stack:web"], ["stack:web", "z"], ["a", "stack:web"])

    claims, waiting = queue.claim(max_concurrent=10)

    assert [claim.run.id for claim in claims] == [first.id]
    assert waiting == {second.id: "stack:web", third.id: "stack:web"}


def test_a_queued_run_is_never_interrupted_for_lack_of_heartbeats(queue, store, clock):
    (run,) = queued_runs(queue, clock, [])
    clock.advance(hours=3)
    assert store.interrupt_stale_runs(datetime.timedelta(minutes=5)) == []
    assert store.get_run(run.id).status == "queued"


def test_touch_keeps_a_starting_runner_run_from_the_stale_sweep(queue, store, clock):
    (run,) = queued_runs(queue, clock, [])
    claim_one(queue, run)
    clock.advance(minutes=4)
    queue.touch(run.id)
    clock.advance(minutes=4)
    assert store.interrupt_stale_runs(datetime.timedelta(minutes=5)) == []
    clock.advance(minutes=2)
    assert store.interrupt_stale_runs(datetime.timedelta(minutes=5)) == [run.id]


# A person's run holding locks


def test_a_person_s_run_is_refused_while_a_runner_run_holds_its_lock(queue, store, clock):
    (runner_run,) = queued_runs(queue, clock, ["stack:web"])
    token = claim_one(queue, runner_run)

    with pytest.raises(LockHeld) as refused:
        person_run(queue, ["host:1", "stack:web"])
    assert refused.value.lock == "stack:web" and refused.value.holder == runner_run.id
    assert runner_run.id in str(refused.value)
    assert len(all_runs(store)) == 1  # nothing recorded

    assert person_run(queue, ["stack:db"]).locks == ["stack:db"]  # another lock is free
    queue.runner_finish(runner_run.id, token, "succeeded")
    after = person_run(queue, ["stack:web", "host:1"])
    assert store.get_run(after.id).status == "running"
    assert store.get_run(after.id).locks == ["host:1", "stack:web"]


def test_a_person_s_run_holding_a_lock_refuses_another_person_s_run_with_it(queue):
    first = person_run(queue, ["stack:web"], user="alice")
    with pytest.raises(LockHeld) as refused:
        person_run(queue, ["stack:web"], user="bob")
    assert refused.value.holder == first.id


def test_a_person_s_run_without_locks_is_started_as_before(queue, store):
    run = person_run(queue, [])
    assert store.get_run(run.id).status == "running" and not store.get_run(run.id).locks


def test_a_person_s_locked_run_sent_again_is_the_same_run(queue, store):
    """`opshub run` spools its start and sends it again when the first answer was lost: the second
    send must find the run it created, not be refused for the lock that very run holds."""
    run_id = str(uuid.uuid4())
    first = person_run(queue, ["stack:web"], run_id=run_id)

    again = person_run(queue, ["stack:web"], run_id=run_id)

    assert again.id == first.id == run_id
    assert len(all_runs(store)) == 1


def test_a_person_s_unlocked_run_sent_again_is_the_same_run(queue, store):
    run_id = str(uuid.uuid4())
    assert person_run(queue, [], run_id=run_id).id == person_run(queue, [], run_id=run_id).id == run_id
    assert len(all_runs(store)) == 1


# The runner's reports, by the run's token


def test_the_runner_reports_its_run_with_the_run_s_token(queue, store, clock):
    (run,) = queued_runs(queue, clock, [])
    token = claim_one(queue, run)
    assert queue.runner_run(run.id, token).id == run.id

    began = clock.advance(seconds=20)
    queue.runner_begin(run.id, token)
    assert store.get_run(run.id).first_cell_at == began
    beat = clock.advance(seconds=30)
    nb = new_notebook(cells=[new_code_cell("print(1)", outputs=[new_output("stream", name="stdout", text="1\n")])])
    after_heartbeat = queue.runner_heartbeat(run.id, token, output_notebook=nb)
    assert after_heartbeat.last_heartbeat_at == beat
    assert json.loads(store.get_run(run.id).output_notebook) == nb
    clock.advance(seconds=5)
    assert queue.runner_begin(run.id, token).first_cell_at == began  # a begin sent again moves nothing
    end = clock.advance(minutes=1)

    finished = queue.runner_finish(
        run.id, token, "failed", failed_cell=0, error_summary="ZeroDivisionError", output_notebook=nb
    )

    assert finished.status == "failed" and finished.ended_at == end
    assert finished.first_cell_at == began  # set once, by the first begin
    assert (finished.failed_cell, finished.error_summary) == (0, "ZeroDivisionError")
    for report in (
        lambda: queue.runner_begin(run.id, token),
        lambda: queue.runner_heartbeat(run.id, token),
        lambda: queue.runner_finish(run.id, token, "succeeded"),
    ):
        with pytest.raises(RunAlreadyFinished):
            report()
    stored = store.get_run(run.id)
    assert (stored.status, stored.ended_at, stored.first_cell_at) == ("failed", end, began)


def person_reports(store: RunStore, run: Run, user: str) -> dict:
    """Every move a person's token could make on `run` through the store (the person's API): begin it
    (a start sent again with its id), heartbeat it, finish it."""
    return {
        "begin": lambda: store.start_run(run.runbook, user, "headless", run_id=run.id),
        "begin as its trigger": lambda: store.start_run(run.runbook, user, run.trigger, run_id=run.id),
        "heartbeat": lambda: store.heartbeat(run.id, user, new_notebook()),
        "finish": lambda: store.finish_run(run.id, user, "succeeded", error_summary="forged"),
    }


@pytest.mark.parametrize("trigger", ["requested", "schedule", "alert"])
def test_a_person_never_begins_heartbeats_or_finishes_a_run_the_service_recorded(queue, store, clock, trigger):
    """Queued, running (claimed, then begun) and ended: RecordedByService every time, for its own
    person (the requester) as for anyone else, and the record is what the runner made of it."""
    run = enqueue(queue, trigger=trigger, user="bob" if trigger == "requested" else "opshub-runner")
    people = ("bob", "alice", "opshub-runner")

    def refused_everything(state: str) -> None:
        for user in people:
            for move, report in person_reports(store, run, user).items():
                with pytest.raises(RecordedByService, match=f"run {run.id} is a {trigger} run") as refused:
                    report()
                assert isinstance(refused.value, PermissionError), (state, user, move)

    before = store.get_run(run.id)
    refused_everything("queued")
    assert store.get_run(run.id).status == "queued"
    token = claim_one(queue, run)
    refused_everything("claimed")
    queue.runner_begin(run.id, token)
    refused_everything("running")
    assert store.get_run(run.id).last_heartbeat_at == before.last_heartbeat_at
    clock.advance(minutes=1)
    queue.runner_finish(run.id, token, "failed", failed_cell=0, error_summary="the runner's own")
    refused_everything("ended")
    stored = store.get_run(run.id)
    assert (stored.status, stored.error_summary, stored.reported_by) == ("failed", "the runner's own", "opshub service")
    assert len(all_runs(store)) == 1


@pytest.mark.parametrize("trigger", ["requested", "schedule", "alert"])
def test_the_person_side_of_the_store_records_no_runner_trigger(store, trigger):
    with pytest.raises(RecordedByService, match=f"{trigger} runs are recorded by the opshub service"):
        store.start_run("patch.ipynb", "bob", trigger)
    assert all_runs(store) == []


def test_runner_begin_returns_the_run_with_its_first_cell_time(queue, store, clock):
    """The service hands what runner_begin returns to RunEvents.began, which observes the start delay
    (due time to first cell) from it: a run returned without its first_cell_at is never counted."""
    registry = CollectorRegistry()
    events = RunEvents(RunStats(), registry, queue.queued_count)
    (run,) = queued_runs(queue, clock, [])
    token = claim_one(queue, run)
    began = clock.advance(seconds=42)

    returned = queue.runner_begin(run.id, token)
    events.began(returned)

    assert returned.first_cell_at == began
    labels = {"trigger": "requested"}
    assert registry.get_sample_value("opshub_unattended_start_delay_seconds_count", labels) == 1
    assert registry.get_sample_value("opshub_unattended_start_delay_seconds_sum", labels) == 42


def test_a_big_output_from_the_runner_is_capped(queue, store, clock):
    (run,) = queued_runs(queue, clock, [])
    token = claim_one(queue, run)
    nb = new_notebook(
        cells=[new_code_cell("x", outputs=[new_output("stream", name="stdout", text="y" * 5000)]) for _ in range(10)]
    )
    queue.runner_finish(run.id, token, "succeeded", output_notebook=nb)
    stored = store.get_run(run.id)
    assert stored.output_truncated is True and len(stored.output_notebook.encode()) <= OUTPUT_CAP


@pytest.mark.parametrize("status", ["cancelled", "missed", "running", "queued", "", None])
def test_the_runner_ends_its_run_in_a_runner_end_state_only(queue, store, clock, status):
    (run,) = queued_runs(queue, clock, [])
    token = claim_one(queue, run)
    with pytest.raises(ValueError, match="status"):
        queue.runner_finish(run.id, token, status)
    assert store.get_run(run.id).status == "running"


@pytest.mark.parametrize("failed_cell", [-1, "3", 2**63])
def test_the_runner_s_failed_cell_is_checked_as_a_person_s_is(queue, store, clock, failed_cell):
    """store.finish_run refuses a failed_cell that is no cell index (ValueError: a 400); the runner's
    report reaches the same column from the same kind of JSON body."""
    (run,) = queued_runs(queue, clock, [])
    token = claim_one(queue, run)
    with pytest.raises(ValueError, match="failed_cell"):
        queue.runner_finish(run.id, token, "failed", failed_cell=failed_cell)
    assert store.get_run(run.id).status == "running"


def test_no_other_token_reports_a_run(queue, store, clock):
    run, other = queued_runs(queue, clock, [], [])
    claims, _ = queue.claim(max_concurrent=2)
    tokens = {claim.run.id: claim.token for claim in claims}
    queued_later = enqueue(queue)
    person = person_run(queue)

    wrong = [tokens[other.id], secrets.token_urlsafe(32), "", tokens[run.id] + "x", tokens[run.id][:-1]]
    for token in wrong:
        for report in (
            queue.runner_run,
            queue.runner_begin,
            queue.runner_heartbeat,
            lambda run_id, token: queue.runner_finish(run_id, token, "succeeded"),
        ):
            with pytest.raises(BadRunToken):
                report(run.id, token)
    for run_id in (queued_later.id, person.id):  # no token was ever minted for these
        for token in ("", tokens[run.id]):
            with pytest.raises(BadRunToken):
                queue.runner_finish(run_id, token, "succeeded")
    with pytest.raises(RunNotFound):
        queue.runner_begin(str(uuid.uuid4()), tokens[run.id])
    assert issubclass(BadRunToken, PermissionError)

    stored = store.get_run(run.id)
    assert stored.status == "running" and stored.first_cell_at is None
    assert store.get_run(queued_later.id).status == "queued"
    assert store.get_run(person.id).status == "running"


def test_a_released_run_s_old_token_no_longer_reports_it(queue, store, clock):
    (run,) = queued_runs(queue, clock, [])
    old = claim_one(queue, run)
    assert queue.release(run.id) is True
    new = claim_one(queue, run)
    assert new != old
    with pytest.raises(BadRunToken):
        queue.runner_begin(run.id, old)
    queue.runner_begin(run.id, new)


# Cancelling


def test_the_requester_cancels_their_queued_run(queue, store, clock):
    (run,) = queued_runs(queue, clock, ["stack:web"])
    now = clock.advance(minutes=1)

    cancelled = queue.request_cancel(run.id, "bob", may_cancel_any=False)

    assert cancelled.status == "cancelled" and cancelled.ended_at == now
    assert "bob" in cancelled.error_summary and "before it started" in cancelled.error_summary
    assert queue.claim(max_concurrent=5) == ([], {})
    with pytest.raises(NotCancellable):
        queue.request_cancel(run.id, "bob", may_cancel_any=False)


def test_nobody_else_cancels_a_queued_run_but_an_admin(queue, store, clock):
    (run,) = queued_runs(queue, clock, [])
    with pytest.raises(NotRunOwner):
        queue.request_cancel(run.id, "mallory", may_cancel_any=False)
    assert store.get_run(run.id).status == "queued"

    cancelled = queue.request_cancel(run.id, "root-admin", may_cancel_any=True)
    assert cancelled.status == "cancelled" and "root-admin" in cancelled.error_summary


def test_only_admins_cancel_scheduled_and_alert_runs(queue, store):
    scheduled = enqueue(queue, trigger="schedule", user="opshub-runner", requested_by="schedule nightly")
    alerted = enqueue(queue, trigger="alert", user="opshub-runner", requested_by="alert X", alert_fingerprint="f")
    for run in (scheduled, alerted):
        for who in ("opshub-runner", "schedule nightly", "alert X"):
            with pytest.raises(NotRunOwner):
                queue.request_cancel(run.id, who, may_cancel_any=False)
        assert queue.request_cancel(run.id, "admin", may_cancel_any=True).status == "cancelled"


def test_cancelling_a_running_runner_run_asks_the_runner_and_it_ends_cancelled(queue, store, clock):
    (run,) = queued_runs(queue, clock, [])
    token = claim_one(queue, run)
    queue.runner_begin(run.id, token)

    asked = queue.request_cancel(run.id, "bob", may_cancel_any=False)

    assert asked.status == "running" and asked.cancel_requested_by == "bob"
    assert [r.id for r in queue.cancel_requested()] == [run.id]
    assert queue.request_cancel(run.id, "admin", may_cancel_any=True).cancel_requested_by == "bob"
    end = clock.advance(seconds=10)
    ended = queue.runner_finish(run.id, token, "interrupted", error_summary="KeyboardInterrupt")
    assert ended.status == "cancelled" and ended.ended_at == end
    assert ended.error_summary.startswith("Cancelled by bob while it ran.")
    assert "KeyboardInterrupt" in ended.error_summary
    assert queue.cancel_requested() == []
    with pytest.raises(NotCancellable):
        queue.request_cancel(run.id, "admin", may_cancel_any=True)


def test_a_run_that_ends_by_itself_before_its_cancel_reaches_it_is_recorded_as_it_ended(queue, store, clock):
    """The record never says "cancelled" for a run whose every cell ran: the cancel is noted, not claimed."""
    (run,) = queued_runs(queue, clock, [])
    token = claim_one(queue, run)
    queue.runner_begin(run.id, token)
    queue.request_cancel(run.id, "alice", may_cancel_any=True)
    ended = queue.runner_finish(run.id, token, "succeeded")
    assert ended.status == "succeeded"
    assert ended.error_summary == "alice asked to cancel it, but it had ended (succeeded) first."


def test_a_run_whose_runner_server_is_gone_ends_interrupted_saying_so(queue, store, clock):
    starting, running, cancelled = queued_runs(queue, clock, [], [], [])
    claims, _ = queue.claim(max_concurrent=100)
    for claim in claims:
        if claim.run.id != starting.id:
            queue.runner_begin(claim.run.id, claim.token)
    queue.request_cancel(cancelled.id, "alice", may_cancel_any=True)

    assert queue.lost(starting.id) is None  # before its first cell: release() puts it back in the queue
    lost = queue.lost(running.id)
    assert lost.status == "interrupted" and "runner's server stopped" in lost.error_summary
    lost_while_cancelled = queue.lost(cancelled.id)
    assert lost_while_cancelled.status == "interrupted"
    assert "alice's cancel found it stopped already" in lost_while_cancelled.error_summary
    assert queue.lost(running.id) is None  # ended once
    assert queue.lost("no-such-run") is None


def test_a_person_s_own_run_cannot_be_cancelled_here(queue, store):
    run = person_run(queue, user="bob")
    for by, admin in (("bob", False), ("admin", True)):
        with pytest.raises(NotCancellable, match="own server"):
            queue.request_cancel(run.id, by, may_cancel_any=admin)
    assert store.get_run(run.id).status == "running"


def test_an_ended_run_cannot_be_cancelled(queue, store, clock):
    (run,) = queued_runs(queue, clock, [])
    token = claim_one(queue, run)
    queue.runner_finish(run.id, token, "succeeded")
    for by, admin in (("bob", False), ("admin", True)):
        with pytest.raises(NotCancellable, match="succeeded"):
            queue.request_cancel(run.id, by, may_cancel_any=admin)
    assert store.get_run(run.id).status == "succeeded"
    with pytest.raises(RunNotFound):
        queue.request_cancel(str(uuid.uuid4()), "admin", may_cancel_any=True)


def test_a_cancel_that_lands_while_claim_picks_runs_is_not_lost(queue, store, clock):
    """claim() reads the queued runs, then writes them running. A cancel from another thread (a request
    handler) that comes in between must not be lost: either it wins (the run ends cancelled, unclaimed)
    or it waits for the claim and then asks the runner to stop the run (cancel_requested_by)."""
    (run,) = queued_runs(queue, clock, [])
    canceller: list[threading.Thread] = []

    def cancel_in_between(conn, cursor, statement, parameters, context, executemany):
        claiming = statement.lstrip().upper().startswith("UPDATE RUNS SET") and "STATUS=" in statement.upper()
        if not canceller and claiming:
            thread = threading.Thread(target=queue.request_cancel, args=(run.id, "bob", False))
            canceller.append(thread)
            thread.start()
            thread.join(timeout=1)  # done at once, unless the cancel waits for the claim to commit

    event.listen(store.engine, "before_cursor_execute", cancel_in_between)
    try:
        claims, _ = queue.claim(max_concurrent=1)
    finally:
        event.remove(store.engine, "before_cursor_execute", cancel_in_between)
    canceller[0].join(timeout=30)

    stored = store.get_run(run.id)
    if stored.status == "cancelled":
        assert claims == [] and stored.cancel_requested_by is None
    else:
        assert (stored.status, stored.cancel_requested_by) == ("running", "bob"), (
            f"bob's cancel was lost: {stored.status}, ended_at {stored.ended_at}, {stored.error_summary!r},"
            f" claimed: {[claim.run.id for claim in claims]}"
        )
        assert stored.ended_at is None


# Release and fail


def test_release_puts_a_claimed_run_back_at_the_head_of_the_queue(queue, store, clock):
    first, second = queued_runs(queue, clock, ["stack:web"], [])
    claims, _ = queue.claim(max_concurrent=1)
    assert [claim.run.id for claim in claims] == [first.id]

    assert queue.release(first.id) is True

    stored = store.get_run(first.id)
    assert stored.status == "queued"
    assert stored.runner_token_hash is None and stored.runner_server is None
    assert queue.release(first.id) is False  # queued already
    assert person_run(queue, ["stack:web"]).locks == ["stack:web"]  # the lock is free again
    assert [r.id for r in queue.queued()] == [first.id, second.id]


def test_release_leaves_a_run_that_reached_its_first_cell_alone(queue, store, clock):
    (run,) = queued_runs(queue, clock, [])
    token = claim_one(queue, run)
    queue.runner_begin(run.id, token)
    assert queue.release(run.id) is False
    assert store.get_run(run.id).status == "running"
    assert queue.release(person_run(queue).id) is False  # not a runner run
    assert queue.release(str(uuid.uuid4())) is False


def test_a_run_cancelled_while_its_server_started_is_not_queued_again_by_release(queue, store, clock):
    """bob cancels while the runner starts the run's server; the hub is away, so the runner releases
    the run. It must not go back to the queue (to be claimed and started later) as if nobody had
    cancelled it: it ends cancelled."""
    (run,) = queued_runs(queue, clock, [])
    claim_one(queue, run)
    queue.request_cancel(run.id, "bob", may_cancel_any=False)

    queue.release(run.id)

    stored = store.get_run(run.id)
    assert stored.status == "cancelled", f"{stored.status}, cancel asked by {stored.cancel_requested_by}"
    assert queue.claim(max_concurrent=5) == ([], {})


def test_fail_ends_a_claimed_run_that_never_reached_its_runner(queue, store, clock):
    (run,) = queued_runs(queue, clock, ["stack:web"])
    token = claim_one(queue, run)
    end = clock.advance(minutes=3)

    failed = queue.fail(run.id, "the runner's server did not start in 180 s")

    assert failed.status == "failed" and failed.ended_at == end
    assert failed.error_summary == "the runner's server did not start in 180 s"
    assert queue.fail(run.id, "again") is None
    assert store.get_run(run.id).error_summary == "the runner's server did not start in 180 s"
    with pytest.raises(RunAlreadyFinished):
        queue.runner_begin(run.id, token)
    assert queue.fail(enqueue(queue).id, "not claimed") is None  # a queued run is not failed this way
    assert person_run(queue, ["stack:web"]).status == "running"  # the lock went with it


# Schedules' records


def test_record_missed_records_an_ended_fire(queue, store, clock):
    due = START - datetime.timedelta(hours=2)
    key = "patch.ipynb#nightly@" + due.isoformat()

    run = queue.record_missed("patch.ipynb", "schedule nightly", key, due, "Missed: opshub was down")

    stored = store.get_run(run.id)
    assert (stored.status, stored.trigger, stored.user) == ("missed", "schedule", "opshub-runner")
    assert stored.requested_by == "schedule nightly"
    assert (stored.due_at, stored.started_at, stored.ended_at) == (due, due, START)
    assert stored.fire_key == key and stored.error_summary == "Missed: opshub was down"
    assert stored.locks == [] and stored.parameters == {}
    assert queue.queued_count() == 0 and queue.claim(max_concurrent=5) == ([], {})
    assert queue.record_missed("patch.ipynb", "schedule nightly", key, due, "again") is None
    assert enqueue(queue, trigger="schedule", fire_key=key) is None

    failed = queue.record_missed("patch.ipynb", "schedule x", key + "x", due, "Not run: no such parameter", "failed")
    assert failed.status == "failed" and failed.error_summary == "Not run: no such parameter"


def test_a_schedule_is_looked_at_since_it_was_first_seen_then_since_its_last_due_time(queue, store, clock):
    assert queue.schedule_since("patch.ipynb#nightly", "patch.ipynb") == START
    clock.advance(days=2)
    assert queue.schedule_since("patch.ipynb#nightly", "patch.ipynb") == START
    assert RunQueue(store).schedule_since("patch.ipynb#nightly", "patch.ipynb") == START
    assert queue.schedule_since("patch.ipynb#weekly", "patch.ipynb") == clock.current
    due = START + datetime.timedelta(days=1)
    queue.schedule_dealt_with("patch.ipynb#nightly", due)
    queue.schedule_dealt_with("patch.ipynb#nightly", START)  # never backwards
    assert RunQueue(store).schedule_since("patch.ipynb#nightly", "patch.ipynb") == due


def test_last_fires_gives_the_latest_due_fire_of_each_schedule(queue, store, clock):
    def fire(key: str, due: datetime.datetime, missed: bool = False) -> Run:
        fire_key = f"{key}@{due.isoformat()}"
        if missed:
            return queue.record_missed(key.split("#")[0], "schedule", fire_key, due, "missed")
        return enqueue(queue, runbook=key.split("#")[0], trigger="schedule", fire_key=fire_key, due_at=due)

    hour = datetime.timedelta(hours=1)
    latest = fire("a.ipynb#nightly", START + 2 * hour, missed=True)
    fire("a.ipynb#nightly", START + hour)  # recorded later, due earlier
    fire("a.ipynb#nightly-2", START + 5 * hour)  # another schedule whose name starts alike
    other = fire("b.ipynb#nightly", START + 3 * hour)

    found = queue.last_fires(["a.ipynb#nightly@", "b.ipynb#nightly@", "c.ipynb#nightly@"])

    assert found == {
        "a.ipynb#nightly@": (START + 2 * hour, "missed", latest.id),
        "b.ipynb#nightly@": (START + 3 * hour, "queued", other.id),
    }


def test_last_fires_reads_prefixes_literally(queue, clock):
    """Runbook paths are file names: `_` and `%` are characters, and `Patch` is not `patch`."""
    hour = datetime.timedelta(hours=1)
    for runbook, due in (("a_b.ipynb", START), ("axb.ipynb", START + hour), ("100%.ipynb", START + 2 * hour)):
        enqueue(queue, runbook=runbook, trigger="schedule", fire_key=f"{runbook}#n@{due.isoformat()}", due_at=due)
    enqueue(queue, runbook="Patch.ipynb", trigger="schedule", fire_key=f"Patch.ipynb#n@{START.isoformat()}")

    found = queue.last_fires(["a_b.ipynb#n@", "100%.ipynb#n@", "1000.ipynb#n@", "patch.ipynb#n@"])

    assert found.keys() == {"a_b.ipynb#n@", "100%.ipynb#n@"}
    assert found["a_b.ipynb#n@"][0] == START


# Concurrency


def run_together(count: int, work) -> list:
    """`work(i)` in `count` threads released at once; the results (or exceptions) in order."""
    barrier = threading.Barrier(count)
    results: list = [None] * count

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = work(i)
        except Exception as e:  # handed back to the test
            results[i] = e

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results


def test_two_threads_claiming_at_once_never_exceed_max_concurrent(queue, store, clock):
    queued_runs(queue, clock, *([[]] * 5))
    for _ in range(5):
        results = run_together(2, lambda i: queue.claim(max_concurrent=1))
        assert not [r for r in results if isinstance(r, Exception)], results
        assert sum(len(claims) for claims, _ in results) <= 1
        assert len(queue.runner_runs()) == 1
    assert queue.queued_count() == 4


def test_fifty_threads_sending_one_alert_queue_one_run(queue, store):
    results = run_together(50, lambda i: enqueue(queue, trigger="alert", alert_fingerprint="1a2b3c"))
    assert not [r for r in results if isinstance(r, Exception)], results
    runs = [r for r in results if r is not None]
    assert len(runs) == 1
    assert [run.id for run in all_runs(store)] == [runs[0].id]


# Retention


def test_retention_never_deletes_queued_or_running_runs(queue, store, clock):
    running, waiting = queued_runs(queue, clock, [], [])
    claims, _ = queue.claim(max_concurrent=1)
    assert [claim.run.id for claim in claims] == [running.id]
    done = enqueue(queue)
    queue.request_cancel(done.id, "bob", may_cancel_any=False)
    missed = queue.record_missed("patch.ipynb", "schedule n", "patch.ipynb#n@x", START, "missed")
    clock.advance(days=400)

    assert store.apply_retention(max_age=datetime.timedelta(days=1), max_runs=0) == 2

    assert {run.id for run in all_runs(store)} == {running.id, waiting.id}
    assert store.get_run(waiting.id).status == "queued"
    assert store.get_run(missed.id) is None


def test_a_run_deleted_while_claim_picks_runs_is_skipped_not_handed_out(queue, store, clock):
    """An admin's deletion takes no admission lock: a queued run deleted between claim()'s look at the
    queue and its write is skipped, and the next one is claimed."""
    first, second = queued_runs(queue, clock, [], [])
    deleted: list[bool] = []

    def delete_in_between(conn, cursor, statement, parameters, context, executemany):
        if not deleted and statement.lstrip().upper().startswith("SELECT RUNS.STATUS"):
            deleted.append(True)
            thread = threading.Thread(target=store.delete_run, args=(first.id, "alice"))
            thread.start()
            thread.join(timeout=5)

    event.listen(store.engine, "before_cursor_execute", delete_in_between)
    try:
        claims, _ = queue.claim(max_concurrent=1)
    finally:
        event.remove(store.engine, "before_cursor_execute", delete_in_between)
    assert deleted and store.get_run(first.id) is None
    assert [claim.run.id for claim in claims] == [second.id]
