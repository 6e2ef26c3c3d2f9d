"""Recording `opshub run`'s runs straight into a run store, with no service in between.

The `opshub` command wires it in for `OPSHUB_RECORDER=store:<URL>` (runbooks/ never imports the
service's side).
"""

from __future__ import annotations

import contextlib
import getpass
import os

from ..runbooks.client import ServiceError
from .store import RunStore


class StoreRecorder:
    """Records straight into a RunStore, with no service in between (`OPSHUB_RECORDER=store:<URL>`).

    A testing and offline aid: the user is $JUPYTERHUB_USER, else the login name, and the schema is
    created or upgraded on first use. Store errors come out as ServiceError, like the service's.
    """

    def __init__(self, url: str, user: str | None = None):
        self.user = user or os.environ.get("JUPYTERHUB_USER") or getpass.getuser()
        try:
            self.store = RunStore(url)
            self.store.upgrade()
        except Exception as e:
            raise ServiceError(0, f"cannot open the run store {url}: {e}") from None

    def start_run(self, runbook, parameters=None, trigger="headless", runbook_commit=None, drift=False) -> dict:
        with self._errors():
            run = self.store.start_run(runbook, self.user, trigger, parameters, runbook_commit, drift)
            return {"id": run.id, "runbook": run.runbook, "status": run.status}

    def heartbeat(self, run_id: str) -> dict:
        with self._errors():
            return {"id": run_id, "last_heartbeat_at": self.store.heartbeat(run_id, self.user).isoformat()}

    def finish_run(self, run_id, status, failed_cell=None, error_summary=None, output_notebook=None) -> dict:
        with self._errors():
            run = self.store.finish_run(run_id, self.user, status, failed_cell, error_summary, output_notebook)
            return {"id": run.id, "status": run.status}

    @contextlib.contextmanager
    def _errors(self):
        try:
            yield
        except Exception as e:
            raise ServiceError(0, f"run store: {e}") from None
