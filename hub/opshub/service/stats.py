"""Aggregates of the run history that the metrics read, kept in memory by the service.

Built from the store at start, then kept by the run's life (events.py hears every change of a
run's status from lifecycle.py, deletions included), so a scrape costs a few dictionary reads
instead of GROUP BY queries over every run: with 100,000 runs in SQLite those take about a second.
The service is the only writer of the store, so the aggregates stay equal to it.
"""

from __future__ import annotations

import datetime
from collections import Counter
from dataclasses import dataclass, field

from .models import ACTIVE_STATES, NOT_RUN, RUNNING, Run
from .store import RunStore

# From seconds (a quick check) to hours (patching a large stack one host at a time).
DURATION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400)


@dataclass
class Durations:
    buckets: list[int] = field(default_factory=lambda: [0] * len(DURATION_BUCKETS))  # cumulative
    total: float = 0.0
    count: int = 0

    def add(self, seconds: float, runs: int = 1) -> None:
        """Count a run of this duration (`runs=-1`: take one away, a deleted run)."""
        for i, bound in enumerate(DURATION_BUCKETS):
            if seconds <= bound:
                self.buckets[i] += runs
        self.total += seconds * runs
        self.count += runs


@dataclass
class RunStats:
    finished: Counter = field(default_factory=Counter)  # (runbook, status, trigger) -> runs
    running: dict[str, tuple[str, datetime.datetime]] = field(default_factory=dict)  # run id -> (runbook, start)
    last_started: dict[tuple[str, str], datetime.datetime] = field(default_factory=dict)  # (runbook, end status)
    durations: dict[tuple[str, str], Durations] = field(default_factory=dict)  # (runbook, trigger)
    cell_failures: Counter = field(default_factory=Counter)  # runbook -> runs that failed in a cell

    store: RunStore | None = field(
        default=None, repr=False, compare=False
    )  # for the latest start of a (runbook, status) after a deletion

    @classmethod
    def from_store(cls, store: RunStore) -> RunStats:
        stats = cls(store=store)
        for (runbook, status, trigger), n in store.count_runs().items():
            if status not in ACTIVE_STATES:
                stats.finished[(runbook, status, trigger)] = n
        for (runbook, status), when in store.last_run_times().items():
            if status not in ACTIVE_STATES:
                stats.last_started[(runbook, status)] = when
        for key, (buckets, total, count) in store.duration_histogram(DURATION_BUCKETS).items():
            stats.durations[key] = Durations(list(buckets), total, count)
        stats.cell_failures.update(store.cell_failures())
        offset = 0
        while True:
            page, total = store.list_runs(status=RUNNING, limit=1000, offset=offset)
            stats.running.update({run.id: (run.runbook, run.started_at) for run in page})
            offset += len(page)
            if offset >= total or not page:
                return stats

    def removed(self, run: Run) -> None:
        """A run's record was deleted: it is taken out of every aggregate (one indexed query when it was
        its runbook's latest start with its status, instead of rebuilding from every run)."""
        if run.status in ACTIVE_STATES:
            self.running.pop(run.id, None)
            return
        key = (run.runbook, run.status, run.trigger)
        self.finished[key] -= 1
        if self.finished[key] <= 0:
            del self.finished[key]
        if run.status not in NOT_RUN and run.ended_at is not None and (run.runbook, run.trigger) in self.durations:
            durations = self.durations[(run.runbook, run.trigger)]
            durations.add((run.ended_at - run.started_at).total_seconds(), runs=-1)
            if durations.count <= 0:
                del self.durations[(run.runbook, run.trigger)]
        if run.status == "failed" and run.failed_cell is not None:
            self.cell_failures[run.runbook] -= 1
            if self.cell_failures[run.runbook] <= 0:
                del self.cell_failures[run.runbook]
        latest = (run.runbook, run.status)
        if self.last_started.get(latest) == run.started_at and self.store is not None:
            when = self.store.last_run_time(run.runbook, run.status)
            if when is None:
                self.last_started.pop(latest, None)
            else:
                self.last_started[latest] = when

    def started(self, run: Run) -> None:
        self.running[run.id] = (run.runbook, run.started_at)

    def ended(self, run: Run) -> None:
        """A run reached its end state (finished by its client, or interrupted by the sweep)."""
        self.running.pop(run.id, None)
        self.finished[(run.runbook, run.status, run.trigger)] += 1
        key = (run.runbook, run.status)
        self.last_started[key] = max(self.last_started.get(key, run.started_at), run.started_at)
        if run.status not in NOT_RUN:
            self.durations.setdefault((run.runbook, run.trigger), Durations()).add(
                (run.ended_at - run.started_at).total_seconds()
            )
        if run.status == "failed" and run.failed_cell is not None:
            self.cell_failures[run.runbook] += 1

    def last_running_start(self) -> dict[str, datetime.datetime]:
        latest: dict[str, datetime.datetime] = {}
        for runbook, started in self.running.values():
            latest[runbook] = max(latest.get(runbook, started), started)
        return latest
