"""Schedules with two opshub service processes on one PostgreSQL database (a hub and a standby, or two
replicas): both look at the same schedule, each fire is recorded once, by one of them; when the one that
fired stops, the other fires the next due time on its own. Real service processes
(`python -m opshub.service`), a real git repository, real PostgreSQL; no hub, so the queued fires stay
queued (the runner cannot start them) and only the records and the services' logs are looked at."""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import nbformat
import psycopg
import pytest

from tests.helpers import ARTIFACTS, make_work_tree
from tests.integration.test_unattended_runs import probe_notebook
from tests.livehub import free_port_block, wait_for


@pytest.fixture
def repository(tmp_path):
    schedule = {"name": "each-minute", "cron": "* * * * *", "parameters": {"message": "from a replica"}}
    notebook = nbformat.writes(probe_notebook(schedules=[schedule]))
    return make_work_tree(tmp_path / "runbooks", files={"scheduled.ipynb": notebook})


def start_service(index: int, database_url: str, password: str, repository, tmp_path) -> tuple[subprocess.Popen, Path]:
    """A service process, and its log."""
    port = free_port_block(1)
    env = {
        **os.environ,
        "JUPYTERHUB_SERVICE_URL": f"http://127.0.0.1:{port}",
        "JUPYTERHUB_SERVICE_PREFIX": "/services/opshub/",
        "JUPYTERHUB_API_URL": "http://127.0.0.1:9/hub/api",  # no hub: nothing is started, only recorded
        "JUPYTERHUB_API_TOKEN": "no-hub",
        "OPSHUB_DATABASE_PASSWORD": password,
    }
    log_file = ARTIFACTS / f"service-replica-{index}-{port}.log"
    log = open(log_file, "w")  # noqa: SIM115 (the process writes to it)
    place = {
        "database_url": database_url,
        "runbooks_repository": repository.as_uri(),
        "cache_dir": str(tmp_path / f"cache-{index}"),
    }
    document = {"service": place, "dashboards": {"git_sync_interval": 1}}
    argv = [sys.executable, "-m", "opshub.service", "--settings", json.dumps(document)]
    return subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT), log_file


def fires(postgres_server, database_url: str) -> list[tuple]:
    database = database_url.rsplit("/", 1)[1]
    with psycopg.connect(postgres_server.conninfo(database)) as connection:
        try:
            return connection.execute(
                "SELECT due_at, fire_key, status, id FROM runs WHERE trigger = 'schedule'"
            ).fetchall()
        except psycopg.errors.UndefinedTable:  # the services have not created it yet
            return []


def fired_by(logs: list[Path], run_id) -> list[int]:
    """Which services' logs say they fired the run (`schedule ... fired (due ...): run <id>`)."""
    return [i for i, log in enumerate(logs) if f"): run {run_id}" in log.read_text()]


def test_two_service_processes_fire_each_due_time_once(postgres_server, repository, tmp_path):
    """Both replicas run the scheduler on one database: the first due time is fired once, by one of them;
    that one is then stopped, and the other fires the next due time, once. So each replica schedules (a
    replica whose scheduler never fires, or that waits on the other, fails here), and no fire is doubled."""
    database_url = postgres_server.create_database()
    started = [start_service(i, database_url, postgres_server.password, repository, tmp_path) for i in range(2)]
    services = [proc for proc, _ in started]
    logs = [log for _, log in started]
    try:
        # both are up and looking at the schedule before the next minute begins
        now = time.time()
        first_due = datetime.datetime.fromtimestamp(now, datetime.timezone.utc).replace(second=0, microsecond=0)
        first_due += datetime.timedelta(minutes=1 if now % 60 < 45 else 2)
        second_due = first_due + datetime.timedelta(minutes=1)

        def fired(due):
            def recorded():
                rows = [row for row in fires(postgres_server, database_url) if row[0] == due]
                return rows or None

            return recorded

        wait_for(fired(first_due), timeout=200, interval=0.5, what="the first fire of the schedule")
        time.sleep(3)  # any late double would land now
        first = [row for row in fires(postgres_server, database_url) if row[0] == first_due]
        assert len(first) == 1, first
        for service in services:
            assert service.poll() is None, "a service process died (see test-artifacts/service-replica-*.log)"
        first_firer = fired_by(logs, first[0][3])
        assert len(first_firer) == 1, (first_firer, first)  # one of them fired it, and said so
        # the one that fired stops (an upgrade, a crash): the other fires the next due time on its own
        winner = services[first_firer[0]]
        winner.terminate()
        winner.wait(timeout=30)
        wait_for(fired(second_due), timeout=100, interval=0.5, what="the next fire, by the other service")
        time.sleep(3)
        recorded = fires(postgres_server, database_url)
        second = [row for row in recorded if row[0] == second_due]
        assert len(second) == 1, second
        second_firer = fired_by(logs, second[0][3])
        survivor = services[1 - first_firer[0]]
        assert survivor.poll() is None, "a service process died (see test-artifacts/service-replica-*.log)"
    finally:
        for service in services:
            if service.poll() is None:
                service.terminate()
            service.wait(timeout=30)
        postgres_server.drop_database(database_url)
    assert second_firer == [1 - first_firer[0]], (first_firer, second_firer)  # both replicas have fired
    counts = Counter(row[0] for row in recorded)
    assert counts[first_due] == 1 and counts[second_due] == 1, counts
    assert all(n == 1 for n in counts.values()), counts
    assert {row[2] for row in recorded} <= {"queued", "running"}  # recorded, waiting for a runner
