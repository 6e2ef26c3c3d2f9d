"""The service's in-memory aggregates equal the store, whether built from it or kept up to date."""

from __future__ import annotations

import datetime

from opshub.service.stats import DURATION_BUCKETS, RunStats
from opshub.service.store import RunStore

START = datetime.datetime(2026, 11, 1, 8, 0, tzinfo=datetime.timezone.utc)


class Clock:
    def __init__(self):
        self.now = START

    def __call__(self):
        return self.now


def test_incremental_stats_equal_stats_rebuilt_from_the_store(tmp_path):
    clock = Clock()
    store = RunStore(f"sqlite:///{tmp_path / 'runs.sqlite'}", now=clock)
    store.upgrade()
    live = RunStats.from_store(store)
    plan = [
        ("patch.ipynb", "bob", "succeeded", 2, None),
        ("patch.ipynb", "bob", "failed", 400, 3),
        ("health.ipynb", "alice", "succeeded", 7300, None),
        ("health.ipynb", "alice", "interrupted", 20, None),
        ("tls.ipynb", "bob", "failed", 1, None),
    ]
    for runbook, user, status, seconds, failed_cell in plan:
        run = store.start_run(runbook, user, "headless")
        live.started(run)
        clock.now += datetime.timedelta(seconds=seconds)
        live.ended(store.finish_run(run.id, user, status, failed_cell=failed_cell))
    still_running = store.start_run("patch.ipynb", "carol", "headless")
    live.started(still_running)
    # the sweep ends a silent run; the service tells the stats
    silent = store.start_run("health.ipynb", "bob", "headless")
    live.started(silent)
    clock.now += datetime.timedelta(minutes=10)
    store.heartbeat(still_running.id, "carol")
    (interrupted,) = store.interrupt_stale_runs(datetime.timedelta(minutes=5))
    live.ended(store.get_run(interrupted))

    rebuilt = RunStats.from_store(store)
    assert live.finished == rebuilt.finished
    assert live.running == rebuilt.running == {still_running.id: ("patch.ipynb", still_running.started_at)}
    assert live.last_started == rebuilt.last_started
    assert live.cell_failures == rebuilt.cell_failures == {"patch.ipynb": 1}
    assert live.durations.keys() == rebuilt.durations.keys()
    for key, durations in live.durations.items():
        assert durations.buckets == rebuilt.durations[key].buckets, key
        assert durations.count == rebuilt.durations[key].count
        assert abs(durations.total - rebuilt.durations[key].total) < 0.01
    health = live.durations[("health.ipynb", "headless")]
    # 20 s, the silent run ended at exactly 600 s, and 7300 s
    assert health.count == 3 and health.buckets[DURATION_BUCKETS.index(600)] == 2
    assert health.buckets[DURATION_BUCKETS.index(7200)] == 2 and health.buckets[-1] == 3

    store.delete_run(still_running.id)
    live.reload(store)
    assert live.running == {}
