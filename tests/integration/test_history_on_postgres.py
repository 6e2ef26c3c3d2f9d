"""The whole history service on PostgreSQL: a live hub whose settings point the run history at a
real PostgreSQL server that asks for a password, with the password from the environment, not the
settings file (`history.database_password_env`)."""

from __future__ import annotations

import os
import subprocess
import time

import psycopg
import pytest

from tests.helpers import VENV_BIN
from tests.livehub import DEMO_PASSWORD, Hub, wait_for
from tests.terminals import Terminal

PASSWORD_ENV = "OPS_DB_PASSWORD"  # the variable a deployment names in `history.database_password_env`
WRONG_PASSWORD = "not-the-database-password"


def history_on(database_url: str):
    """Settings change: the run history in `database_url` (no password in it), the password in $OPS_DB_PASSWORD."""

    def configure(settings):
        settings["history"] = {"database_url": database_url, "database_password_env": PASSWORD_ENV}

    return configure


@pytest.fixture(scope="module")
def pg_database(postgres_server):
    url = postgres_server.create_database()
    yield url
    postgres_server.drop_database(url)


@pytest.fixture(scope="module")
def pg_hub(postgres_server, pg_database, tmp_path_factory):
    hub = Hub(
        tmp_path_factory.mktemp("pg-hub"),
        configure=history_on(pg_database),
        env={PASSWORD_ENV: postgres_server.password},
    )
    hub.start()
    yield hub
    hub.stop()


def rows_in_postgresql(postgres_server, database_url: str, run_id: str) -> list[tuple]:
    """The run's row, read straight from the database (as the server's superuser), not through opshub."""
    database = database_url.rsplit("/", 1)[1]
    with psycopg.connect(postgres_server.conninfo(database)) as connection:
        query = 'SELECT "user", trigger, status FROM runs WHERE id = %s'
        return connection.execute(query, (run_id,)).fetchall()


def test_runs_recorded_through_the_service_land_in_postgresql(pg_hub, postgres_server, pg_database):
    tokens = pg_hub.tokens(users=["bob", "carol"])
    run = pg_hub.service_api(tokens["bob"], "POST", "runs", json={"runbook": "patch-server-stack.ipynb"}).json()
    assert pg_hub.service_api(tokens["bob"], "POST", f"runs/{run['id']}/finish", json={"status": "succeeded"}).ok
    listed = pg_hub.service_api(tokens["carol"], "GET", "runs").json()
    assert run["id"] in [r["id"] for r in listed["runs"]]
    assert rows_in_postgresql(postgres_server, pg_database, run["id"]) == [("bob", "headless", "succeeded")]
    assert not list(pg_hub.state.glob("opshub.sqlite*"))  # nothing went to the SQLite default
    log = pg_hub.log_file.read_text()
    assert "postgresql+psycopg" in log
    assert postgres_server.password not in log  # the password is in no log and on no command line


def test_a_run_typed_in_a_persons_terminal_is_recorded_in_postgresql(pg_hub, postgres_server, pg_database):
    tokens = pg_hub.tokens(users=["bob", "carol"])
    session, _ = pg_hub.login("bob")
    pg_hub.open_lab(session, "bob")

    def run_ids() -> set[str]:
        return {run["id"] for run in pg_hub.service_api(tokens["carol"], "GET", "runs").json()["runs"]}

    before = run_ids()
    with Terminal(pg_hub.url, "bob", tokens["bob"]) as terminal:
        out, rc = terminal.run("cd ~ && opshub run patch-server-stack -p stack web", timeout=300)
    assert rc == 0, out
    (run_id,) = run_ids() - before
    run = pg_hub.service_api(tokens["carol"], "GET", f"runs/{run_id}").json()
    assert (run["runbook"], run["parameters"]["stack"]) == ("patch-server-stack.ipynb", "web")
    assert rows_in_postgresql(postgres_server, pg_database, run_id) == [("bob", "headless", "succeeded")]


def test_a_database_outage_is_a_clear_503_said_once_in_the_log_and_the_service_recovers(pg_hub, postgres_server):
    """PostgreSQL stopped for 25 s under a running service: every page and API call names the database
    it cannot reach (503, no traceback), the log says so once (not a traceback a second), and everything
    answers again once the database is back, with no restart."""
    bob = pg_hub.tokens(users=["bob"])["bob"]
    session, _ = pg_hub.login("bob")
    assert session.get(f"{pg_hub.url}/services/opshub/", timeout=60).status_code == 200
    logged_before = pg_hub.log_file.stat().st_size
    postgres_server.halt()
    try:
        time.sleep(5)  # the runner's and the scheduler's loops ask the database every second meanwhile
        api = pg_hub.service_api(bob, "GET", "runs")
        assert api.status_code == 503, api.text
        assert f"127.0.0.1:{postgres_server.port}" in api.json()["message"]
        assert "cannot be reached" in api.json()["message"]
        page = session.get(f"{pg_hub.url}/services/opshub/", timeout=30)
        assert page.status_code == 503 and "database" in page.text and "Traceback" not in page.text
        time.sleep(20)
        during = log_since(pg_hub, logged_before)
    finally:
        postgres_server.resume()
    assert during.count("cannot be reached") == 1, during[-3000:]
    assert "Traceback" not in during, during[-3000:]
    wait_for(lambda: pg_hub.service_api(bob, "GET", "runs").status_code == 200, timeout=30, what="the history back")
    assert session.get(f"{pg_hub.url}/services/opshub/", timeout=30).status_code == 200
    wait_for(lambda: "answers again" in log_since(pg_hub, logged_before), timeout=15, what="the recovery logged")


def log_since(hub: Hub, offset: int) -> str:
    with open(hub.log_file, errors="replace") as log:
        log.seek(offset)
        return log.read()


@pytest.fixture(scope="module")
def hub_with_a_wrong_password(postgres_server, tmp_path_factory):
    """`opshub hub` started by hand with a wrong database password: its exit status, its log and what it
    left running (stopped afterwards)."""
    url = postgres_server.create_database()
    hub = Hub(tmp_path_factory.mktemp("pg-wrong"), configure=history_on(url), env={PASSWORD_ENV: WRONG_PASSWORD})
    try:
        with open(hub.log_file, "w") as log:
            hub.proc = subprocess.Popen(
                [str(VENV_BIN / "opshub"), "hub", "--settings", str(hub.settings_file)],
                cwd=hub.root,
                env={**os.environ, "OPSHUB_DEMO_PASSWORD": DEMO_PASSWORD, **hub.env},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, so that all of it can be ended
            )
        status = hub.proc.wait(timeout=120)
        left_running = hub.processes_of_this_hub()
    finally:
        hub._kill_after_failed_start()  # whatever it left running, the proxy included
        postgres_server.drop_database(url)
    return status, hub.log_file.read_text(), left_running


def test_with_a_wrong_password_the_hub_refuses_to_start_and_its_log_says_why(hub_with_a_wrong_password):
    """A wrong password must not give a hub that looks fine and loses every run: `opshub hub` stops at
    start, before anything listens (exit status 1, what `make run` shows), naming the setting, the
    variable the password came from and the database's refusal."""
    status, log, _ = hub_with_a_wrong_password
    assert status == 1, log[-3000:]
    assert "history.database_url: cannot open postgresql+psycopg://opshub@" in log
    assert f"(the password comes from ${PASSWORD_ENV})" in log
    assert 'password authentication failed for user "opshub"' in log
    assert "Traceback" not in log and WRONG_PASSWORD not in log


def test_a_hub_that_refuses_to_start_leaves_nothing_running(hub_with_a_wrong_password):
    _, _, left_running = hub_with_a_wrong_password
    assert left_running == []
