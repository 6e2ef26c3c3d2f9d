"""Prometheus metrics of runbook runs, computed from the run store at every scrape.

The numbers come from `RunStats`, the service's in-memory aggregates of the store (rebuilt from it
at start, updated with every write), so they equal the history, also across restarts. Labels stay
bounded: `runbook` is a runbook of the repository or `other`, plus status and trigger; never a
user, a run id or parameters (those live in the history).

Counts of deleted runs (retention) disappear with them; Prometheus reads that as a counter reset.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from .stats import DURATION_BUCKETS, RunStats

OTHER = "other"


class RunMetrics(Collector):
    def __init__(self, stats: RunStats, known_runbooks: Callable[[], frozenset[str]]):
        self.stats = stats
        self.known_runbooks = known_runbooks

    def collect(self):
        known = self.known_runbooks()
        stats = self.stats

        def label(runbook: str) -> str:
            return runbook if runbook in known else OTHER

        runs = CounterMetricFamily(
            "opshub_runbook_runs",
            "Runbook runs that ended, by end status and trigger.",
            labels=["runbook", "status", "trigger"],
        )
        finished: dict[tuple[str, str, str], int] = defaultdict(int)
        for (runbook, status, trigger), n in stats.finished.items():
            finished[(label(runbook), status, trigger)] += n
        for labels, n in sorted(finished.items()):
            runs.add_metric(labels, n)
        yield runs

        in_progress = GaugeMetricFamily(
            "opshub_runbook_runs_in_progress", "Runbook runs running now.", labels=["runbook"]
        )
        running: dict[str, int] = dict.fromkeys(known, 0)
        for runbook, _ in stats.running.values():
            running[label(runbook)] = running.get(label(runbook), 0) + 1
        for runbook, n in sorted(running.items()):
            in_progress.add_metric([runbook], n)
        yield in_progress

        last = GaugeMetricFamily(
            "opshub_runbook_last_run_timestamp_seconds",
            "Start time of the latest run, by status (Unix time).",
            labels=["runbook", "status"],
        )
        latest: dict[tuple[str, str], float] = {}
        everything = [
            *stats.last_started.items(),
            *(((rb, "running"), t) for rb, t in stats.last_running_start().items()),
        ]
        for (runbook, status), when in everything:
            key = (label(runbook), status)
            latest[key] = max(latest.get(key, 0.0), when.timestamp())
        for labels, when in sorted(latest.items()):
            last.add_metric(labels, when)
        yield last

        durations = HistogramMetricFamily(
            "opshub_runbook_run_duration_seconds", "Duration of runs that ended.", labels=["runbook", "trigger"]
        )
        merged: dict[tuple[str, str], list] = {}
        for (runbook, trigger), d in stats.durations.items():
            into = merged.setdefault((label(runbook), trigger), [[0] * len(DURATION_BUCKETS), 0.0, 0])
            into[0] = [a + b for a, b in zip(into[0], d.buckets, strict=True)]
            into[1] += d.total
            into[2] += d.count
        for labels, (counts, total, count) in sorted(merged.items()):
            buckets = [(str(float(b)), n) for b, n in zip(DURATION_BUCKETS, counts, strict=True)] + [("+Inf", count)]
            durations.add_metric(list(labels), buckets, total)
        yield durations

        failures = CounterMetricFamily(
            "opshub_runbook_cell_failures", "Runs that failed in a cell.", labels=["runbook"]
        )
        failed: dict[str, int] = defaultdict(int)
        for runbook, n in stats.cell_failures.items():
            failed[label(runbook)] += n
        for runbook, n in sorted(failed.items()):
            failures.add_metric([runbook], n)
        yield failures
