"""The whole history service on PostgreSQL: a live hub whose settings point the run history at a
real PostgreSQL server, with the password from the environment, not the settings file."""

from __future__ import annotations

import pytest
from sqlalchemy.engine import make_url

from tests.livehub import Hub


@pytest.fixture(scope="module")
def pg_hub(postgres_server, tmp_path_factory):
    url = make_url(postgres_server.create_database())

    def on_postgres(settings):
        settings["history"] = {
            "database_url": url.set(password=None).render_as_string(hide_password=False),
            "database_password_env": "OPS_DB_PASSWORD",
        }

    # the test server trusts loopback connections, so any password does: this proves the plumbing
    hub = Hub(tmp_path_factory.mktemp("pg-hub"), configure=on_postgres, env={"OPS_DB_PASSWORD": "pg-pass-81f3"})
    hub.start()
    yield hub
    hub.stop()
    postgres_server.drop_database(url.render_as_string(hide_password=False))


def test_runs_recorded_through_the_service_land_in_postgresql(pg_hub):
    tokens = pg_hub.tokens(users=["bob", "carol"])
    run = pg_hub.service_api(tokens["bob"], "POST", "runs", json={"runbook": "patch-server-stack.ipynb"}).json()
    assert pg_hub.service_api(tokens["bob"], "POST", f"runs/{run['id']}/finish", json={"status": "succeeded"}).ok
    listed = pg_hub.service_api(tokens["carol"], "GET", "runs").json()
    assert [r["id"] for r in listed["runs"]] == [run["id"]]
    assert not list(pg_hub.state.glob("opshub.sqlite*"))  # nothing went to the SQLite default
    log = pg_hub.log_file.read_text()
    assert "postgresql+psycopg" in log
    assert "pg-pass-81f3" not in log  # the password is in no log and on no command line
