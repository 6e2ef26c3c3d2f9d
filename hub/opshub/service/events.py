"""The metrics' subscriber to the run's life (lifecycle.RunBus): every change of a run's status
reaches the metrics' aggregates (stats.py) once, whoever made it. Also the unattended runs' own metrics.

Those metrics are kept by this process (Prometheus reads a restart as a counter reset), except the
queue's length, which is read from the database at each scrape:

- `opshub_runner_queue_length`: runs queued now (waiting for capacity or a lock)
- `opshub_runner_lock_waits_total`: times a queued run found one of its locks held
- `opshub_schedule_fires_total{result="fired"|"missed"|"refused"}`: schedules' fires: queued to run,
  recorded as missed (due while opshub was down), or refused (the runbook cannot run as scheduled)
- `opshub_unattended_start_delay_seconds{trigger}`: from due time (the schedule's time, the alert's or
  the request's arrival) to the run's first cell on the runner
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from .lifecycle import RunChanged
from .models import QUEUED, RUNNING, Run
from .run_states import DELETED
from .stats import RunStats

FIRE_RESULTS = ("fired", "missed", "refused")
DELAY_BUCKETS = (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900, 3600)


class QueueLength(Collector):
    def __init__(self, count: Callable[[], int]):
        self.count = count

    def collect(self):
        yield GaugeMetricFamily("opshub_runner_queue_length", "Unattended runs queued now.", value=self.count())


class RunEvents:
    def __init__(self, stats: RunStats, registry: CollectorRegistry, queue_length: Callable[[], int]):
        self.stats = stats
        registry.register(QueueLength(queue_length))
        self.lock_waits = Counter(
            "opshub_runner_lock_waits", "Times a queued run found one of its locks held.", registry=registry
        )
        self.fires = Counter("opshub_schedule_fires", "Schedules' fires, by result.", ["result"], registry=registry)
        for result in FIRE_RESULTS:
            self.fires.labels(result)
        self.delay = Histogram(
            "opshub_unattended_start_delay_seconds",
            "From due time (schedule, alert or request) to the run's first cell on the runner.",
            ["trigger"],
            buckets=DELAY_BUCKETS,
            registry=registry,
        )

    def changed(self, change: RunChanged) -> None:
        """A run's status changed (subscribed to the store's bus at the service's start)."""
        run = change.run
        if change.after == RUNNING:  # a person's start, the runner's claim
            self.stats.started(run)
        elif change.after == QUEUED and change.before == RUNNING:  # back in the queue: not running any more
            self.stats.running.pop(run.id, None)
        elif change.after == DELETED:
            self.stats.removed(run)
        elif change.ended:
            self.stats.ended(run)

    def began(self, run: Run) -> None:
        due = run.due_at or run.queued_at  # a request is due when it is made
        if run.first_cell_at and due:
            self.delay.labels(run.trigger).observe(max((run.first_cell_at - due).total_seconds(), 0))

    def lock_wait(self, run_id: str, lock: str) -> None:
        self.lock_waits.inc()

    def fired(self, run: Run | None, result: str = "fired") -> None:
        """A schedule's fire on record (None: another process or an earlier life recorded it)."""
        if run is not None:
            self.fires.labels(result).inc()
