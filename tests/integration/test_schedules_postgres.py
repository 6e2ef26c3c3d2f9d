"""Schedules with two opshub service processes on one PostgreSQL database (a hub and a standby, or two
replicas): both fire the same schedule, each fire is recorded once. Real service processes
(`python -m opshub.service`), a real git repository, real PostgreSQL; no hub, so the queued fires stay
queued (the runner cannot start them) and only the records are looked at."""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
import time
from collections import Counter

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


def start_service(index: int, database_url: str, password: str, repository, tmp_path) -> subprocess.Popen:
    port = free_port_block(1)
    env = {
        **os.environ,
        "JUPYTERHUB_SERVICE_URL": f"http://127.0.0.1:{port}",
        "JUPYTERHUB_SERVICE_PREFIX": "/services/opshub/",
        "JUPYTERHUB_API_URL": "http://127.0.0.1:9/hub/api",  # no hub: nothing is started, only recorded
        "JUPYTERHUB_API_TOKEN": "no-hub",
        "OPSHUB_DATABASE_PASSWORD": password,
    }
    log = open(ARTIFACTS / f"service-replica-{index}-{port}.log", "w")  # noqa: SIM115 (the process writes to it)
    argv = [
        sys.executable, "-m", "opshub.service",
        "--database-url", database_url,
        "--runbooks-repository", repository.as_uri(),
        "--cache-dir", str(tmp_path / f"cache-{index}"),
        "--dashboards-settings", '{"git_sync_interval": 1}',
    ]  # fmt: skip
    return subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)


def fires(postgres_server, database_url: str) -> list[tuple]:
    database = database_url.rsplit("/", 1)[1]
    with psycopg.connect(postgres_server.conninfo(database)) as connection:
        try:
            return connection.execute("SELECT due_at, fire_key, status FROM runs WHERE trigger = 'schedule'").fetchall()
        except psycopg.errors.UndefinedTable:  # the services have not created it yet
            return []


def test_two_service_processes_fire_each_due_time_once(postgres_server, repository, tmp_path):
    database_url = postgres_server.create_database()
    services = [start_service(i, database_url, postgres_server.password, repository, tmp_path) for i in range(2)]
    try:
        # both are up and looking at the schedule before the next minute begins
        now = time.time()
        first_due = datetime.datetime.fromtimestamp(now, datetime.timezone.utc).replace(second=0, microsecond=0)
        first_due += datetime.timedelta(minutes=1 if now % 60 < 45 else 2)
        second_due = first_due + datetime.timedelta(minutes=1)

        def both_fired():
            recorded = fires(postgres_server, database_url)
            due_times = {row[0] for row in recorded}
            return recorded if {first_due, second_due} <= due_times else None

        recorded = wait_for(both_fired, timeout=200, interval=1, what="two fires of the schedule")
        time.sleep(3)  # any late double would land now
        recorded = fires(postgres_server, database_url)
        for service in services:
            assert service.poll() is None, "a service process died (see test-artifacts/service-replica-*.log)"
    finally:
        for service in services:
            service.terminate()
            service.wait(timeout=30)
        postgres_server.drop_database(database_url)
    counts = Counter(row[0] for row in recorded)
    assert counts[first_due] == 1 and counts[second_due] == 1, counts
    assert all(n == 1 for n in counts.values()), counts
    assert {row[2] for row in recorded} <= {"queued", "running"}  # recorded, waiting for a runner
