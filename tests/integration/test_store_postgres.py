"""The run history store against a real PostgreSQL server: every test of tests/unit/test_store.py and
tests/unit/test_queue.py (the runner's queue) again.

Importing the tests makes pytest collect them here too; this module's `database_url` fixture replaces
the SQLite one, so each test runs on its own fresh PostgreSQL database. The server asks for a password,
which reaches the URL the way the opshub service adds it (from OPSHUB_DATABASE_PASSWORD).
"""

from __future__ import annotations

import pytest
import sqlalchemy.exc
from opshub.service.__main__ import database_url as with_password_from_environment
from opshub.service.queue import RunQueue
from opshub.service.store import RunStore
from sqlalchemy import inspect

from tests.unit.test_lifecycle import (  # noqa: F401 (the run's transitions, collected again here; its refusals
    life,  # are decided before the database is written, and are not run twice)
    test_a_deleted_runs_trail_stays,
    test_a_rolled_back_change_tells_nobody,
    test_each_transition_tells_the_subscribers_once_and_is_on_record,
    test_recording_a_run_is_one_change_from_new,
)
from tests.unit.test_notifier import *  # noqa: F403 (the notifier's outbox on PostgreSQL: two processes, one send)
from tests.unit.test_queue import *  # noqa: F403 (the shared tests, collected again here)
from tests.unit.test_queue import all_runs, enqueue, queued_runs, run_together
from tests.unit.test_store import *  # noqa: F403 (the shared tests, collected again here)


@pytest.fixture
def database_url(postgres_server, monkeypatch):
    """An empty PostgreSQL database, dropped after the test; its URL with the password, as the service makes it."""
    url = postgres_server.create_database()
    monkeypatch.setenv("OPSHUB_DATABASE_PASSWORD", postgres_server.password)
    yield with_password_from_environment(url)
    postgres_server.drop_database(url)


@pytest.mark.parametrize(
    ("password", "refusal"),
    [("", "no password supplied"), ("not-the-password", 'password authentication failed for user "opshub"')],
)
def test_without_the_right_password_the_store_cannot_open_the_database(postgres_server, monkeypatch, password, refusal):
    url = postgres_server.create_database()
    monkeypatch.setenv("OPSHUB_DATABASE_PASSWORD", password)
    store = RunStore(with_password_from_environment(url))
    try:
        with pytest.raises(sqlalchemy.exc.OperationalError, match=refusal):
            store.upgrade()
    finally:
        store.close()
        postgres_server.drop_database(url)


def test_the_store_really_is_on_postgresql(store):
    assert store.engine.dialect.name == "postgresql"
    assert store.engine.dialect.driver == "psycopg"
    columns = {column["name"]: column for column in inspect(store.engine).get_columns("runs")}
    assert columns["started_at"]["type"].timezone is True  # timestamptz


# Several service processes on one database (PostgreSQL only: on SQLite the service is one process,
# and its admission lock a process lock)


def test_two_service_processes_claiming_at_once_never_exceed_max_concurrent(store, database_url, clock):
    """Two RunQueues on their own connections pools, as two service processes would have them."""
    stores = [RunStore(database_url, now=clock) for _ in range(2)]
    try:
        queues = [RunQueue(s) for s in stores]
        queued_runs(queues[0], clock, *([["stack:web"]] * 3), *([[]] * 3))
        for _ in range(5):
            results = run_together(2, lambda i: queues[i].claim(max_concurrent=2))
            assert not [r for r in results if isinstance(r, Exception)], results
            running = queues[0].runner_runs()
            assert len(running) <= 2
            assert sum("stack:web" in (run.locks or []) for run in running) <= 1
    finally:
        for s in stores:
            s.close()


def test_alerts_from_several_service_processes_queue_one_run(store, database_url, clock):
    stores = [RunStore(database_url, now=clock) for _ in range(5)]
    try:
        queues = [RunQueue(s) for s in stores]
        results = run_together(
            25, lambda i: enqueue(queues[i % 5], trigger="alert", alert_fingerprint="fp", user="opshub-runner")
        )
        assert not [r for r in results if isinstance(r, Exception)], results
        assert len([r for r in results if r is not None]) == 1
        assert len(all_runs(store)) == 1
    finally:
        for s in stores:
            s.close()
