"""`opshub request` and `opshub cancel`: ask the runner for an unattended run, from a terminal.

    opshub request patch-server-stack -p stack web -p dry_run True --wait

The run is recorded and run by the opshub service's runner (not in this server): it goes on when
this server stops. Parameters are given and checked as for `opshub run`, by the service against
the runbook at the repository's commit. `--wait` follows it until it ends (Ctrl-C stops following,
not the run). Exit codes: 0 requested (with --wait: succeeded), 1 refused (with --wait: it did not
succeed), 2 usage error, 3 the service could not be reached, 130 stopped following (--wait, Ctrl-C).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Sequence
from typing import TextIO

from .client import ServiceClient, ServiceError
from .params import UsageError, parse_parameters

POLL_SECONDS = 2.0


def request_run(
    runbook: str,
    pairs: Iterable[Sequence[str]] = (),
    *,
    commit: str | None = None,
    wait: bool = False,
    client: ServiceClient | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    name = runbook if runbook.endswith(".ipynb") else runbook + ".ipynb"
    try:
        parameters = parse_parameters(pairs)
    except UsageError as e:
        print(f"opshub request: {e}", file=err)
        return 2
    body = {"runbook": name, "parameters": parameters, **({"commit": commit} if commit else {})}
    try:
        client = client or ServiceClient()
        run = client.request("POST", "api/requests", body)
    except ServiceError as e:
        print(f"opshub request: {e.message if e.status else e}", file=err)
        return 3 if e.status == 0 else 1
    print(
        f"requested run {run['id']} of {run['runbook']} at {str(run['runbook_commit'])[:12]}: {run['status']}", file=out
    )
    print(f"  {run['url']}", file=out)
    if not wait:
        return 0
    return follow(client, run, out, err)


def follow(client: ServiceClient, run: dict, out: TextIO, err: TextIO) -> int:
    """Print the run's status as it changes until it ends; 0 if it succeeded."""
    status = run["status"]
    try:
        while run["status"] in ("queued", "running"):
            time.sleep(POLL_SECONDS)
            try:
                run = client.get_run(run["id"])
            except ServiceError as e:
                if e.status:
                    raise
                continue  # the service restarts: ask again
            if run["status"] != status:
                status = run["status"]
                print(f"{status}", file=out, flush=True)
    except KeyboardInterrupt:
        print(f"stopped following run {run['id']}: it goes on (opshub cancel {run['id']} stops it)", file=err)
        return 130
    except ServiceError as e:
        print(f"opshub request: {e}", file=err)
        return 1
    if run.get("error_summary"):
        print(run["error_summary"], file=out)
    return 0 if run["status"] == "succeeded" else 1


def cancel_run(run_id: str, client: ServiceClient | None = None, out: TextIO | None = None, err=None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    try:
        run = (client or ServiceClient()).request("POST", f"api/runs/{run_id}/cancel", {})
    except ServiceError as e:
        print(f"opshub cancel: {e.message if e.status else e}", file=err)
        return 3 if e.status == 0 else 1
    if run["status"] == "cancelled":
        print(f"cancelled run {run['id']}", file=out)
    else:
        print(f"run {run['id']} is {run['status']}: the runner is stopping it", file=out)
    return 0
