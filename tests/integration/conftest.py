"""PostgreSQL for the integration tests: Debian's server, started on loopback in a temporary data directory."""

from __future__ import annotations

import contextlib
import glob
import os
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


class PostgresServer:
    """A throwaway PostgreSQL cluster owned by the `postgres` system user (postgres refuses to run as root)."""

    def __init__(self) -> None:
        ensure_debian_package("postgresql", "/usr/lib/postgresql")
        initdbs = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        if not initdbs:
            pytest.skip("Debian's postgresql is installed but has no initdb")
        self.bin = Path(initdbs[-1]).parent  # the newest version installed
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
        subprocess.run(
            [*self.as_postgres, str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres"]
            + ["--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync"],
            check=True,
            capture_output=True,
        )
        with open(self.log_path, "w") as log:
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
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={database}"

    def create_database(self) -> str:
        """A new empty database; returns its SQLAlchemy URL."""
        import psycopg
        from psycopg import sql

        name = f"opshub_test_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.conninfo("postgres"), autocommit=True) as connection:
            connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"

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
