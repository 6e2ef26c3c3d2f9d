"""Pausing, resuming and the scheduler's skipped fires against a real PostgreSQL server: every test of
tests/unit/test_schedule_control.py again (the open-pause unique index, people pausing at once), and
the migrated schema (revision 0006 included) against the models.

Importing the tests makes pytest collect them here too; this module's `database_url` fixture replaces
the SQLite one, as in test_store_postgres.py.
"""

from __future__ import annotations

import pytest
from opshub.service.__main__ import database_url as with_password_from_environment

from tests.unit.test_schedule_control import *  # noqa: F403 (the shared tests, collected again here)
from tests.unit.test_store import test_the_migrated_schema_matches_the_models  # noqa: F401 (collected here)


@pytest.fixture
def database_url(postgres_server, monkeypatch):
    """An empty PostgreSQL database, dropped after the test; its URL with the password, as the service makes it."""
    url = postgres_server.create_database()
    monkeypatch.setenv("OPSHUB_DATABASE_PASSWORD", postgres_server.password)
    yield with_password_from_environment(url)
    postgres_server.drop_database(url)


def test_the_pauses_really_are_on_postgresql(store):
    assert store.engine.dialect.name == "postgresql"
