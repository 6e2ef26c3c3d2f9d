"""`python -m opshub.runner.job`: one unattended run, executed with `opshub run`'s machinery and
reported to the opshub service with the run's own token.

The runner's server starts it with the job as JSON on stdin (the token never appears in an
environment or a command line, where the runbook's code could read it from /proc):

    {"run_id": ..., "token": ..., "service_url": ..., "runbook": "patch.ipynb", "commit": "abc...",
     "parameters": {"stack": "web"}, "runbooks_dir": "/home/opshub-runner/runs/<id>/runbooks"}
"""

from __future__ import annotations

import io
import json
import sys
import time

from ..hardening import keep_memory_private
from ..run_record import RUNNER_BEGIN, RUNNER_FINISH, RUNNER_HEARTBEAT, FirstCell, Heartbeat, RunEnd, RunStart, path
from ..runbooks.client import ServiceClient, ServiceError
from ..runbooks.headless import EXIT_USAGE, run_runbook
from . import RUN_TOKEN_SCHEME

# A finish the service cannot take now (it restarts) is sent again for this long before giving up;
# after that the service's sweep marks the run interrupted.
FINISH_RETRY_SECONDS = 600


class RunnerReporter(ServiceClient):
    """The recorder `run_runbook` uses on the runner: the service recorded the run already, so
    "start" says the runner reached it, and every call carries the run's token."""

    auth_scheme = RUN_TOKEN_SCHEME

    def __init__(self, url: str, token: str, run_id: str, retry_seconds: float = FINISH_RETRY_SECONDS):
        super().__init__(url, token)
        self.run_id = run_id
        self.retry_seconds = retry_seconds

        self.started = False

    def start_run(self, start: RunStart) -> dict:
        """The service recorded the run when it queued it: this only says the runner has it."""
        record = self.heartbeat(self.run_id)
        self.started = True
        return record

    def first_cell(self, run_id: str) -> dict:
        return self.request("POST", path(RUNNER_BEGIN, run_id), FirstCell().to_json())

    def heartbeat(self, run_id: str, beat: Heartbeat | None = None) -> dict:
        return self.request("POST", path(RUNNER_HEARTBEAT, run_id), (beat or Heartbeat()).to_json())

    def finish_run(self, run_id: str, end: RunEnd) -> dict:
        deadline = time.monotonic() + self.retry_seconds
        while True:
            try:
                return self.request("POST", path(RUNNER_FINISH, run_id), end.to_json())
            except ServiceError as e:
                # unreachable or failing (a restart): try again; a refusal (4xx) will not change
                if 400 <= e.status < 500 or time.monotonic() > deadline:
                    raise
                time.sleep(2)


class Tee(io.StringIO):
    """stderr, also kept: a run refused before it starts is recorded with what was said."""

    def write(self, text: str) -> int:
        sys.stderr.write(text)
        return super().write(text)


def main() -> int:
    keep_memory_private()  # the run's token arrives next; the kernel this process starts must not read it
    job = json.loads(sys.stdin.read())
    try:
        reporter = RunnerReporter(job["service_url"], job["token"], job["run_id"])
    except ServiceError as e:
        print(f"opshub runner: {e}", file=sys.stderr)
        return EXIT_USAGE
    err = Tee()
    code = run_runbook(
        job["runbook"],
        values=job.get("parameters") or {},
        runbooks_dir=job["runbooks_dir"],
        output=job.get("output"),
        recorder=reporter,
        err=err,
        commit=job.get("commit"),
    )
    if not reporter.started:  # refused before it ran (a parameter, a missing kernel): on record as failed
        summary = err.getvalue().strip()[:2000] or f"the runner could not start the run (exit {code})"
        reporter.finish_run(job["run_id"], RunEnd("failed", error_summary=summary))
    return code


if __name__ == "__main__":
    sys.exit(main())
