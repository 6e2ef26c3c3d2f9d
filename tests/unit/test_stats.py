"""The service's in-memory aggregates equal the store, whether built from it or kept up to date."""

from __future__ import annotations

import datetime

from opshub.service.audit import Audit
from opshub.service.events import RunEvents
from opshub.service.queue import RunQueue
from opshub.service.stats import DURATION_BUCKETS, RunStats
from opshub.service.store import RunStore
from prometheus_client import CollectorRegistry

START = datetime.datetime(2026, 11, 1, 8, 0, tzinfo=datetime.timezone.utc)


class Clock:
    def __init__(self):
        self.now = START

    def __call__(self):
        return self.now


def assert_equal(live: RunStats, rebuilt: RunStats) -> None:
    assert live.finished == rebuilt.finished
    assert live.running == rebuilt.running
    assert live.last_started == rebuilt.last_started
    assert live.cell_failures == rebuilt.cell_failures
    assert live.durations.keys() == rebuilt.durations.keys()
    for key, durations in live.durations.items():
        assert durations.buckets == rebuilt.durations[key].buckets, key
        assert durations.count == rebuilt.durations[key].count
        assert abs(durations.total - rebuilt.durations[key].total) < 0.01


def test_stats_kept_by_the_runs_life_equal_stats_rebuilt_from_the_store(tmp_path):
    """The service subscribes its metrics to the store's bus (lifecycle.py): every start, end, sweep and
    deletion reaches them once, and they stay equal to the store without ever being rebuilt."""
    clock = Clock()
    store = RunStore(f"sqlite:///{tmp_path / 'runs.sqlite'}", now=clock)
    store.upgrade()
    live = RunStats.from_store(store)
    store.bus.subscribe(RunEvents(live, CollectorRegistry(), lambda: 0).changed)
    plan = [
        ("patch.ipynb", "bob", "succeeded", 2, None),
        ("patch.ipynb", "bob", "failed", 400, 3),
        ("health.ipynb", "alice", "succeeded", 7300, None),
        ("health.ipynb", "alice", "interrupted", 20, None),
        ("tls.ipynb", "bob", "failed", 1, None),
    ]
    finished = []
    for runbook, user, status, seconds, failed_cell in plan:
        run = store.start_run(runbook, user, "headless")
        clock.now += datetime.timedelta(seconds=seconds)
        finished.append(store.finish_run(run.id, user, status, failed_cell=failed_cell))
    still_running = store.start_run("patch.ipynb", "carol", "headless")
    # the sweep ends a silent run
    store.start_run("health.ipynb", "bob", "headless")
    clock.now += datetime.timedelta(minutes=10)
    store.heartbeat(still_running.id, "carol")
    store.interrupt_stale_runs(datetime.timedelta(minutes=5))

    rebuilt = RunStats.from_store(store)
    assert_equal(live, rebuilt)
    assert live.running == {still_running.id: ("patch.ipynb", still_running.started_at)}
    assert live.cell_failures == {"patch.ipynb": 1}
    health = live.durations[("health.ipynb", "headless")]
    # 20 s, the silent run ended at exactly 600 s, and 7300 s
    assert health.count == 3 and health.buckets[DURATION_BUCKETS.index(600)] == 2
    assert health.buckets[DURATION_BUCKETS.index(7200)] == 2 and health.buckets[-1] == 3

    # deletions are taken out exactly: a running run, the latest failed run, the only tls run
    for run in (still_running, finished[1], finished[4]):
        assert store.delete_run(run.id, by="admin")
        assert_equal(live, RunStats.from_store(store))
    assert live.running == {} and ("tls.ipynb", "failed") not in live.last_started
    assert live.cell_failures == {}


def test_runs_the_runner_releases_or_never_starts_are_counted(tmp_path):
    """A claimed run put back in the queue (the hub was away) is not in progress any more; a run whose
    server never started ends failed and is counted; a released run whose cancel was asked meanwhile
    ends cancelled and is counted: the metrics hear it from the store's bus, whoever wrote it."""
    clock = Clock()
    store = RunStore(f"sqlite:///{tmp_path / 'runs.sqlite'}", now=clock)
    store.upgrade()
    queue = RunQueue(store)
    live = RunStats.from_store(store)
    store.bus.subscribe(RunEvents(live, CollectorRegistry(), queue.queued_count).changed)

    first = queue.enqueue("patch.ipynb", "requested", user="bob", requested_by="bob")
    second = queue.enqueue("patch.ipynb", "requested", user="bob", requested_by="bob")
    queue.claim(max_concurrent=2)
    assert set(live.running) == {first.id, second.id}
    assert queue.release(first.id) is True  # the hub was away: back in the queue
    assert set(live.running) == {second.id}
    clock.now += datetime.timedelta(seconds=30)
    queue.fail(second.id, "The runner could not start the run: the hub answered 404")
    queue.claim(max_concurrent=2)
    queue.request_cancel(first.id, "bob", may_cancel_any=False)  # asked while its server starts
    assert queue.release(first.id) is False  # ... which never came up: it ends cancelled

    assert live.running == {}
    assert live.finished == {("patch.ipynb", "failed", "requested"): 1, ("patch.ipynb", "cancelled", "requested"): 1}
    assert_equal(live, RunStats.from_store(store))


def test_retention_takes_the_runs_it_deletes_out_of_the_metrics_and_leaves_their_deletion_on_record(tmp_path):
    clock = Clock()
    store = RunStore(f"sqlite:///{tmp_path / 'runs.sqlite'}", now=clock)
    store.upgrade()
    live = RunStats.from_store(store)
    store.bus.subscribe(RunEvents(live, CollectorRegistry(), lambda: 0).changed)
    old = []
    for status in ("succeeded", "failed", "failed"):
        run = store.start_run("patch.ipynb", "bob", "headless")
        clock.now += datetime.timedelta(seconds=5)
        old.append(store.finish_run(run.id, "bob", status, failed_cell=2 if status == "failed" else None))
    clock.now += datetime.timedelta(days=40)
    kept = store.start_run("patch.ipynb", "bob", "headless")

    assert store.apply_retention(max_age=datetime.timedelta(days=30)) == 3
    assert_equal(live, RunStats.from_store(store))
    assert live.running == {kept.id: ("patch.ipynb", kept.started_at)} and live.finished == {}
    feed = Audit(store).feed(0, 100)
    assert sorted(e.run_id for e in feed if e.to_status == "deleted") == sorted(run.id for run in old)
    assert {e.actor for e in feed if e.to_status == "deleted"} == {"retention"}
