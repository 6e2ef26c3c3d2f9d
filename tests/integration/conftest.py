"""PostgreSQL for the integration tests: Debian's server, started on loopback in a temporary data directory.

Like a production server it asks for a password (scram-sha-256, also on its socket): opshub connects as the
role `opshub`, whose password reaches opshub only the way a deployment hands it over (OPSHUB_DATABASE_PASSWORD,
from `history.database_password_env`), never inside a database URL.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from tests.helpers import ARTIFACTS, ensure_debian_package

OPSHUB_ROLE = "opshub"  # the role opshub connects as: owns its databases, nothing more


def newest_initdb() -> Path | None:
    """The initdb of the newest PostgreSQL server installed (Debian: /usr/lib/postgresql/<version>/bin/)."""
    found = [Path(path) for path in glob.glob("/usr/lib/postgresql/*/bin/initdb")]
    return max(found, key=lambda path: tuple(int(part) for part in path.parts[4].split(".")), default=None)


def postgresql_server_bin() -> Path:
    """The folder of the server's programs, installing Debian's `postgresql` when no server is installed
    (the client package alone also creates /usr/lib/postgresql/<version>/bin: only initdb tells)."""
    if newest_initdb() is None:
        # fails under CI=true, skips elsewhere, when the server cannot be installed
        ensure_debian_package("postgresql", debian_server_initdb())
    return newest_initdb().parent


def debian_server_initdb() -> str:
    """Where Debian's `postgresql` puts its server's initdb: its version (`15+248...`) is the server's major version."""
    show = ["apt-cache", "show", "--no-all-versions", "postgresql"]
    package = subprocess.run(show, capture_output=True, text=True, check=False).stdout if shutil.which(show[0]) else ""
    major = re.search(r"^Version: (?:\d+:)?(\d+)\+", package, re.M)
    return f"/usr/lib/postgresql/{major[1] if major else '<unknown version>'}/bin/initdb"


class PostgresServer:
    """A throwaway PostgreSQL cluster owned by the `postgres` system user (postgres refuses to run as root)."""

    def __init__(self) -> None:
        self.bin = postgresql_server_bin()
        self.superuser_password = secrets.token_urlsafe(16)  # for this fixture's own connections only
        self.password = secrets.token_urlsafe(16)  # the `opshub` role's: what a deployment puts in its environment
        # tmp_path lives under a root-only folder the postgres user cannot enter: use /tmp directly.
        self.data = Path(tempfile.mkdtemp(prefix="opshub-postgres-"))
        self.as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.as_postgres:
            shutil.chown(self.data, "postgres", "postgres")
        self.port = _free_port()
        self.process: subprocess.Popen | None = None
        self.pid: int | None = None
        ARTIFACTS.mkdir(exist_ok=True)
        self.log_path = ARTIFACTS / "postgres.log"

    def start(self) -> None:
        # initdb reads the superuser's password from a file the postgres user can read, outside the
        # (still empty) data folder
        password_file = Path(tempfile.mkdtemp(prefix="opshub-postgres-pw-")) / "password"
        password_file.write_text(self.superuser_password + "\n")
        if self.as_postgres:
            shutil.chown(password_file.parent, "postgres", "postgres")
        try:
            subprocess.run(
                [*self.as_postgres, str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres"]
                + [f"--pwfile={password_file}", "--auth=scram-sha-256", "--encoding=UTF8", "--locale=C", "--no-sync"],
                check=True,
                capture_output=True,
            )
        finally:
            shutil.rmtree(password_file.parent)
        self._launch()
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.conninfo("postgres"), autocommit=True) as connection:
            create_role = sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}")
            connection.execute(create_role.format(sql.Identifier(OPSHUB_ROLE), sql.Literal(self.password)))

    def _launch(self) -> None:
        with open(self.log_path, "a") as log:
            self.process = subprocess.Popen(
                [*self.as_postgres, str(self.bin / "postgres"), "-D", str(self.data), "-p", str(self.port)]
                + ["-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.data}"]
                # A test database: durability is not the point, speed is.
                + ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self._wait_until_ready()
        # runuser stays as the parent; the server's own pid is in postmaster.pid.
        self.pid = int((self.data / "postmaster.pid").read_text().splitlines()[0])

    def halt(self) -> None:
        """Stop the server (fast shutdown), keeping its data: an outage, until `resume()`."""
        os.kill(self.pid, signal.SIGINT)
        self.process.wait(timeout=30)

    def resume(self) -> None:
        self._launch()

    def _wait_until_ready(self, timeout: float = 30) -> None:
        import psycopg

        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"postgres exited with {self.process.returncode}: see {self.log_path}")
            try:
                psycopg.connect(self.conninfo("postgres"), connect_timeout=2).close()
                return
            except psycopg.OperationalError as e:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"postgres did not accept connections in {timeout} s: see {self.log_path}"
                    ) from e
                time.sleep(0.1)

    def conninfo(self, database: str) -> str:
        """The superuser's connection string, for this fixture's own work (creating and dropping)."""
        return f"host=127.0.0.1 port={self.port} user=postgres password={self.superuser_password} dbname={database}"

    def create_database(self) -> str:
        """A new empty database owned by the `opshub` role; returns its SQLAlchemy URL, without the
        password (`self.password`), as a deployment's settings hold it."""
        import psycopg
        from psycopg import sql

        name = f"opshub_test_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.conninfo("postgres"), autocommit=True) as connection:
            create = sql.SQL("CREATE DATABASE {} OWNER {}")
            connection.execute(create.format(sql.Identifier(name), sql.Identifier(OPSHUB_ROLE)))
        return f"postgresql+psycopg://{OPSHUB_ROLE}@127.0.0.1:{self.port}/{name}"

    def drop_database(self, url: str) -> None:
        import psycopg
        from psycopg import sql

        name = url.rsplit("/", 1)[1]
        with psycopg.connect(self.conninfo("postgres"), autocommit=True) as connection:
            connection.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def stop(self) -> None:
        """Stop the server we started (fast shutdown, by its pid), then remove its data."""
        if self.pid is not None:
            with contextlib.suppress(ProcessLookupError):  # already gone
                os.kill(self.pid, signal.SIGINT)  # SIGINT is postgres's "fast" shutdown
        if self.process is not None:
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                if self.pid is not None:
                    os.kill(self.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        shutil.rmtree(self.data, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def postgres_server():
    """One PostgreSQL server for the session; each test gets its own database from it."""
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.stop()
