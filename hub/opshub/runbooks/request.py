"""`opshub request` and `opshub cancel`: ask the runner for an unattended run, from a terminal.

    opshub request patch-server-stack -p stack web -p dry_run True --wait

The run is recorded and run by the opshub service's runner (not in this server): it goes on when
this server stops. Parameters are given and checked as for `opshub run`, by the service against
the runbook at the repository's commit. `--wait` follows it until it ends, printing each cell as it
ends (Ctrl-C stops following, not the run). Exit codes: 0 requested (with --wait: succeeded), 1 refused (with --wait: it did not
succeed), 2 a wrong parameter or value (nothing queued), 3 the service could not be reached, 130 stopped
following (--wait, Ctrl-C).
"""

from __future__ import annotations

import sys
import time
import urllib.parse
from collections.abc import Iterable, Sequence
from typing import TextIO

from .client import ServiceClient, ServiceError
from .public_links import absolute_url
from .results import exited_cleanly, is_papermill_banner, source_text
from .terminal import progress_line, result_mark
from .typed_parameters import describe_for_help

POLL_SECONDS = 2.0  # after the service did not answer
WAIT_SECONDS = 20  # how long the service may hold a question about the run (under the client's timeout)


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
    # text as typed: the service reads each value for its parameter's type (`-p code 007` stays text)
    parameters = {pair_name: value for pair_name, value in pairs}
    body = {"runbook": name, "parameters": parameters, "as_text": True, **({"commit": commit} if commit else {})}
    try:
        client = client or ServiceClient()
        run = client.request("POST", "api/requests", body)
    except ServiceError as e:
        print(f"opshub request: {e.message if e.status else e}", file=err)
        if e.status == 400:
            print(f"(opshub request {name.removesuffix('.ipynb')} --help lists its parameters)", file=err)
            return 2  # a wrong value or parameter: nothing was queued
        return 3 if e.status == 0 else 1
    print(
        f"requested run {run['id']} of {run['runbook']} at {str(run['runbook_commit'])[:12]}: {run['status']}", file=out
    )
    print(f"  {absolute_url(run['url'])}", file=out)  # clickable in a terminal
    if not wait:
        return 0
    return follow(client, run, out, err)


class RequestHelpError(Exception):
    """The runbook's parameters cannot be listed; `unreachable`: the service did not answer."""

    def __init__(self, message: str, unreachable: bool = False):
        self.unreachable = unreachable
        super().__init__(message)


def request_help(runbook: str, commit: str | None = None, client: ServiceClient | None = None) -> str:
    """`opshub request RUNBOOK --help`: the parameters of the runbook as the service will check them (at
    the repository's latest commit, or `commit`), and who may request it."""
    name = runbook if runbook.endswith(".ipynb") else runbook + ".ipynb"
    path = f"api/runbooks/{urllib.parse.quote(name)}" + (f"?commit={urllib.parse.quote(commit)}" if commit else "")
    try:
        found = (client or ServiceClient()).request("GET", path)
    except ServiceError as e:
        raise RequestHelpError(e.message if e.status else str(e), unreachable=e.status == 0) from None
    lines = [f"{found['name']} at commit {found['commit'][:12]}: {found['title']}"]
    if found.get("request_refusal"):
        lines.append(f"You may not request it: {found['request_refusal']}.")
    lines.append(describe_for_help(found["name"], found["parameters"]))
    return "\n".join(lines)


def follow(client: ServiceClient, run: dict, out: TextIO, err: TextIO) -> int:
    """Print the run's status as it changes, and each cell as it ends (as `opshub run` prints them), until
    the run ends; 0 if it succeeded. The service is asked to answer as soon as the run changes
    (`api/changes`), so each line comes as its cell ends."""
    status, cells, seq = run["status"], CellPrinter(out), 0
    try:
        while run["status"] in ("queued", "running"):
            try:
                seq = client.request(
                    "GET", f"api/changes?after={seq}&run={urllib.parse.quote(run['id'])}&timeout={WAIT_SECONDS}"
                )["seq"]
                run = client.get_run(run["id"])
            except ServiceError as e:
                if e.status:
                    raise
                time.sleep(POLL_SECONDS)
                continue  # the service restarts: ask again
            cells.show(run.get("output_notebook"))  # the cells first: then the status they led to
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


class CellPrinter:
    """Each cell of a run's recorded notebook once it has ended: its progress line and mark as `opshub run`
    prints them (`[ 4/13] ▶ cell 4: label ✓ 0.4s`), then what it printed."""

    def __init__(self, out: TextIO):
        self.out = out
        self.shown = 0  # cells printed so far, in order

    def show(self, notebook: dict | None) -> None:
        cells = [cell for cell in (notebook or {}).get("cells", []) if not is_papermill_banner(cell)]
        while self.shown < len(cells):
            cell = cells[self.shown]
            papermill = (cell.get("metadata") or {}).get("papermill") or {}
            if papermill.get("status") not in ("completed", "failed"):
                return  # running or not reached (papermill marks every cell, markdown too): later
            line = progress_line(self.shown, len(cells), cell)
            if cell.get("cell_type") == "code" and source_text(cell.get("source", "")).strip():
                ok = papermill.get("status") == "completed" or exited_cleanly(cell)
                line += " " + result_mark(ok, float(papermill.get("duration") or 0))
            print(line, file=self.out)
            for output in cell.get("outputs", []):
                text = source_text(output.get("text", "")) if output.get("output_type") == "stream" else ""
                if text:
                    print(text.rstrip("\n"), file=self.out)
            self.out.flush()
            self.shown += 1


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
