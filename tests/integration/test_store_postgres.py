"""The run history store against a real PostgreSQL server: every test of tests/unit/test_store.py again.

Importing the tests makes pytest collect them here too; this module's `database_url` fixture replaces
the SQLite one, so each test runs on its own fresh PostgreSQL database.
"""

from __future__ import annotations

import pytest
from sqlalchemy import inspect

from tests.unit.test_store import *  # noqa: F403 (the shared tests, collected again here)


@pytest.fixture
def database_url(postgres_server):
    """An empty PostgreSQL database, dropped after the test."""
    url = postgres_server.create_database()
    yield url
    postgres_server.drop_database(url)


def test_the_store_really_is_on_postgresql(store):
    assert store.engine.dialect.name == "postgresql"
    assert store.engine.dialect.driver == "psycopg"
    columns = {column["name"]: column for column in inspect(store.engine).get_columns("runs")}
    assert columns["started_at"]["type"].timezone is True  # timestamptz
