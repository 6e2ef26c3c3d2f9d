"""Recording `opshub run`'s runs straight into a run store, with no service in between.

The `opshub` command wires it in for `OPSHUB_RECORDER=store:<URL>` (runbooks/ never imports the
service's side).
"""

from __future__ import annotations

import contextlib
import getpass
import os

from ..run_record import Heartbeat, RunEnd, RunStart
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

    # The same records as the service's API takes (opshub.run_record), written straight into the store.

    def start_run(self, start: RunStart) -> dict:
        with self._errors():
            run = self.store.start_run(
                start.runbook, self.user, start.trigger, start.parameters, start.runbook_commit, start.drift, start.id
            )
            return {"id": run.id, "runbook": run.runbook, "status": run.status}

    def heartbeat(self, run_id: str, beat: Heartbeat | None = None) -> dict:
        beat = beat or Heartbeat()
        with self._errors():
            at = self.store.heartbeat(run_id, self.user, beat.output_notebook, beat.drift)
            return {"id": run_id, "last_heartbeat_at": at.isoformat()}

    def finish_run(self, run_id: str, end: RunEnd) -> dict:
        with self._errors():
            run = self.store.finish_run(
                run_id, self.user, end.status, end.failed_cell, end.error_summary, end.output_notebook, end.drift
            )
            return {"id": run.id, "status": run.status}

    @contextlib.contextmanager
    def _errors(self):
        try:
            yield
        except Exception as e:
            raise ServiceError(0, f"run store: {e}") from None
