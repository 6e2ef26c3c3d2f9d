"""Prometheus metrics of runbook runs, computed from the run store at every scrape.

Reading the store (a few GROUP BY queries) instead of counting in memory keeps the metrics equal
to the history, across restarts of the service and with several service replicas. Labels stay
bounded: `runbook` is a runbook of the repository or `other`, plus status and trigger; never a
user, a run id or parameters (those live in the history).

Counts of deleted runs (retention) disappear with them; Prometheus reads that as a counter reset.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from .models import END_STATES, RUNNING
from .store import RunStore

OTHER = "other"
# From seconds (a quick check) to hours (patching a large stack one host at a time).
DURATION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400)


class RunMetrics(Collector):
    def __init__(self, store: RunStore, known_runbooks: Callable[[], frozenset[str]]):
        self.store = store
        self.known_runbooks = known_runbooks

    def collect(self):
        known = self.known_runbooks()

        def label(runbook: str) -> str:
            return runbook if runbook in known else OTHER

        runs = CounterMetricFamily(
            "opshub_runbook_runs",
            "Runbook runs that ended, by end status and trigger.",
            labels=["runbook", "status", "trigger"],
        )
        in_progress = GaugeMetricFamily(
            "opshub_runbook_runs_in_progress", "Runbook runs running now.", labels=["runbook"]
        )
        finished: dict[tuple[str, str, str], int] = defaultdict(int)
        running: dict[str, int] = dict.fromkeys(sorted(known), 0)
        for (runbook, status, trigger), n in self.store.count_runs().items():
            if status == RUNNING:
                running[label(runbook)] = running.get(label(runbook), 0) + n
            elif status in END_STATES:
                finished[(label(runbook), status, trigger)] += n
        for labels, n in sorted(finished.items()):
            runs.add_metric(labels, n)
        for runbook, n in sorted(running.items()):
            in_progress.add_metric([runbook], n)
        yield runs
        yield in_progress

        last = GaugeMetricFamily(
            "opshub_runbook_last_run_timestamp_seconds",
            "Start time of the latest run, by status (Unix time).",
            labels=["runbook", "status"],
        )
        latest: dict[tuple[str, str], float] = {}
        for (runbook, status), when in self.store.last_run_times().items():
            key = (label(runbook), status)
            latest[key] = max(latest.get(key, 0.0), when.timestamp())
        for labels, when in sorted(latest.items()):
            last.add_metric(labels, when)
        yield last

        durations = HistogramMetricFamily(
            "opshub_runbook_run_duration_seconds", "Duration of runs that ended.", labels=["runbook", "trigger"]
        )
        merged: dict[tuple[str, str], list] = {}
        for (runbook, trigger), (counts, total, count) in self.store.duration_histogram(DURATION_BUCKETS).items():
            into = merged.setdefault((label(runbook), trigger), [[0] * len(DURATION_BUCKETS), 0.0, 0])
            into[0] = [a + b for a, b in zip(into[0], counts, strict=True)]
            into[1] += total
            into[2] += count
        for labels, (counts, total, count) in sorted(merged.items()):
            buckets = [(str(float(b)), n) for b, n in zip(DURATION_BUCKETS, counts, strict=True)] + [("+Inf", count)]
            durations.add_metric(list(labels), buckets, total)
        yield durations

        failures = CounterMetricFamily(
            "opshub_runbook_cell_failures", "Runs that failed in a cell.", labels=["runbook"]
        )
        failed: dict[str, int] = defaultdict(int)
        for runbook, n in self.store.cell_failures().items():
            failed[label(runbook)] += n
        for runbook, n in sorted(failed.items()):
            failures.add_metric([runbook], n)
        yield failures
