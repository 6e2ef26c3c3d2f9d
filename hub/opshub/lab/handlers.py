"""The JupyterLab side's API in the user's server, under /user/<name>/opshub/api/.

    GET  runbook?path=P         what JupyterLab needs to know about the open notebook P: is it a runbook,
                                its parameters as forms show them (typed_parameters.form_fields: type,
                                default, description, choices or choices_by, min/max...), its commit and drift
    POST runs {path, parameters}  run P headless as a recorded run (`opshub run --events json`); answers a job id
    GET  runs/<job>             that job's progress lines, state, exit code, run id and run status
    POST publish {path, name, mode, groups}  publish P as a dashboard, through the opshub service
    GET  links                  where the run history and the dashboards are

Paths are relative to the server's root folder, as JupyterLab names files. The server's own token
talks to the opshub service, so the service sees the server's owner.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

from jupyter_server.base.handlers import APIHandler
from tornado import web
from tornado.httputil import url_concat

from ..contract import (
    DEFAULT_RUNBOOKS_TARGET,
    RUNBOOKS_BRANCH_ENV,
    RUNBOOKS_REPO_ENV,
    RUNBOOKS_TARGET_ENV,
)
from ..contract import service_prefix as service_prefix_under
from ..git import run_git
from ..run_record import RecordError, RunEnded, RunStarted, parse_event
from ..runbooks.client import ServiceClient, ServiceError
from ..runbooks.gitstate import git_state
from ..runbooks.headless import default_runbooks_dir
from ..runbooks.metadata import DEFAULTS, RunbookMetadataError, read_runbook_metadata, runbook_metadata
from ..runbooks.params import declared_parameters
from ..runbooks.typed_parameters import RepositoryFiles, form_fields, parameters_of

MAX_JOB_LINES = 2000
# a line of a cell's output may be long: read up to this much of one (the default, 64 KiB, fails the read)
MAX_LINE_BYTES = 16 * 1024 * 1024


class Job:
    """One `opshub run --events json` started from JupyterLab: its progress for people (stderr) kept for
    the progress dialog, its events (stdout) read for the run's id and how it ended."""

    def __init__(self, runbook: str, argv: list[str]):
        self.id = str(uuid.uuid4())
        self.runbook = runbook
        self.argv = [*argv, "--events", "json"]
        self.lines: list[str] = []
        self.exit_code: int | None = None
        self.run_id: str | None = None
        self.status: str | None = None  # the run's, once it ended

    async def run(self) -> None:
        try:
            process = await asyncio.create_subprocess_exec(
                *self.argv,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},  # progress line by line, not at the end
                limit=MAX_LINE_BYTES,
            )
        except OSError as e:
            self.lines.append(f"cannot start opshub run: {e}")
            self.exit_code = 2
            return
        await asyncio.gather(self._read_events(process.stdout), self._read_lines(process.stderr))
        self.exit_code = await process.wait()

    async def _read_lines(self, stream: asyncio.StreamReader) -> None:
        async for raw in stream:
            self.lines.append(raw.decode(errors="replace").rstrip("\n"))
            del self.lines[:-MAX_JOB_LINES]

    async def _read_events(self, stream: asyncio.StreamReader) -> None:
        async for raw in stream:
            try:
                event = parse_event(raw.decode(errors="replace"))
            except RecordError as e:  # not ours to fail on: shown, and the run goes on
                self.lines.append(f"opshub: {e}")
                continue
            if isinstance(event, RunStarted):
                self.run_id = event.run_id
            elif isinstance(event, RunEnded):
                self.status = event.status

    def json(self) -> dict:
        return {
            "id": self.id,
            "runbook": self.runbook,
            "state": "running" if self.exit_code is None else "done",
            "exit_code": self.exit_code,
            "run_id": self.run_id,
            "status": self.status,
            "lines": self.lines,
        }


class OpshubHandler(APIHandler):
    @property
    def runbooks_dir(self) -> Path:
        return self.settings["opshub_runbooks_dir"]

    def notebook_path(self, relative: str | None) -> Path:
        """The notebook at `relative` inside the server's root folder; 400 for anything else."""
        if not relative:
            raise web.HTTPError(400, "path is required: the notebook's path as JupyterLab names it")
        root = Path(self.settings["server_root_dir"]).resolve()
        path = (root / relative).resolve()
        if not path.is_relative_to(root) or path.suffix != ".ipynb":
            raise web.HTTPError(400, f"{relative!r} is not a notebook inside this server's folder")
        if not path.is_file():
            raise web.HTTPError(404, f"no notebook {relative!r}")
        return path

    def runbook_name(self, path: Path) -> str | None:
        """The runbook's path inside the runbooks folder (as the history names it), or None."""
        try:
            return path.relative_to(self.runbooks_dir.resolve()).as_posix()
        except ValueError:
            return None

    def body(self) -> dict:
        try:
            data = json.loads(self.request.body or b"{}")
        except ValueError:
            raise web.HTTPError(400, "the request body is not JSON") from None
        if not isinstance(data, dict):
            raise web.HTTPError(400, "the request body must be a JSON object")
        return data

    def write_error(self, status_code, **kwargs):
        exc = kwargs.get("exc_info", (None, None))[1]
        message = exc.log_message if isinstance(exc, web.HTTPError) and exc.log_message else self._reason
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"message": message}))


class RunbookHandler(OpshubHandler):
    @web.authenticated
    async def get(self):
        path = self.notebook_path(self.get_argument("path", None))
        name = self.runbook_name(path)
        info = {"path": self.get_argument("path"), "runbook": name, "is_runbook": name is not None}
        if name is not None:
            commit, drift = await asyncio.to_thread(git_state, path.parent, path.name)
            behind = await asyncio.to_thread(upstream_moved, path.parent)
            files = RepositoryFiles(self.runbooks_dir)  # the inventory and other files choices come from
            try:
                metadata, metadata_problem = read_runbook_metadata(path, name, files), None
            except RunbookMetadataError as e:  # shown as an invalid runbook; `opshub run` refuses it
                metadata, metadata_problem = DEFAULTS, str(e)
            try:
                declared = await asyncio.to_thread(declared_parameters, path)
                fields = await asyncio.to_thread(form_fields, parameters_of(metadata, declared), files)
                parameters = [{**field, "help": field["description"]} for field in fields]
                problem = None
            except Exception as e:  # a malformed notebook: say so in the form rather than fail
                parameters, problem = [], f"cannot read the parameters: {e}"
            info.update(
                commit=commit,
                drift=drift,
                upstream_moved=behind,
                parameters=parameters,
                parameters_problem=problem,
                title=metadata["title"] or name,
                changes_systems=metadata["changes_systems"],
                metadata_problem=metadata_problem,
            )
        self.finish(info)


class RunsHandler(OpshubHandler):
    @web.authenticated
    async def post(self):
        body = self.body()
        path = self.notebook_path(body.get("path"))
        name = self.runbook_name(path)
        if name is None:
            raise web.HTTPError(400, f"{body.get('path')} is not in the runbooks folder; only runbooks run recorded")
        parameters = body.get("parameters") or {}
        if not isinstance(parameters, dict) or not all(isinstance(v, str) for v in parameters.values()):
            raise web.HTTPError(
                400, "parameters must map names to values written as text (as for `opshub run -p`; lists as JSON lists)"
            )
        argv = [sys.executable, "-m", "opshub.cli", "run", name, "--runbooks-dir", str(self.runbooks_dir)]
        for key, value in parameters.items():
            argv += ["-p", key, value]
        job = Job(name, argv)
        self.settings["opshub_jobs"][job.id] = job
        asyncio.ensure_future(job.run())
        self.set_status(202)
        self.finish(job.json())


class RunJobHandler(OpshubHandler):
    @web.authenticated
    def get(self, job_id):
        job = self.settings["opshub_jobs"].get(job_id)
        if job is None:
            raise web.HTTPError(404, f"no run job {job_id!r} in this server (jobs are forgotten when it restarts)")
        self.finish(job.json())


class PublishHandler(OpshubHandler):
    @web.authenticated
    async def post(self):
        body = self.body()
        path = self.notebook_path(body.get("path"))
        try:
            notebook = json.loads(path.read_text())
        except ValueError as e:
            raise web.HTTPError(400, f"{body['path']} is not notebook JSON: {e}") from None
        try:
            runbook_metadata(notebook, body["path"])  # refused here, naming the file, before the service sees it
        except RunbookMetadataError as e:
            raise web.HTTPError(400, str(e)) from None
        request = {key: body[key] for key in ("name", "mode", "groups", "title", "description") if key in body}
        request["notebook"] = notebook
        runbook = self.runbook_name(path)
        if runbook is not None:
            request["runbook"] = runbook
        try:
            answer = await asyncio.to_thread(lambda: ServiceClient().request("POST", "api/dashboards", request))
        except ServiceError as e:
            raise web.HTTPError(e.status if 400 <= e.status < 500 else 502, e.message) from None
        self.set_status(201)
        self.finish(answer)


class LinksHandler(OpshubHandler):
    @web.authenticated
    def get(self):
        service = self.settings["opshub_service_prefix"]
        # nbgitpuller's own link: pulls the team's branch, keeping local edits (its merge rules)
        pull = url_concat(
            self.base_url + "git-pull",
            {
                "repo": os.environ.get(RUNBOOKS_REPO_ENV, ""),
                "branch": os.environ.get(RUNBOOKS_BRANCH_ENV, "main"),
                "targetpath": os.environ.get(RUNBOOKS_TARGET_ENV, DEFAULT_RUNBOOKS_TARGET),
                "urlpath": "lab",
            },
        )
        self.finish(
            {"history": service, "dashboards": service + "dashboards/", "runs": service + "runs/", "pull": pull}
        )


def upstream_moved(folder: Path) -> bool:
    """Whether the team's branch has moved on since the runbooks were last pulled (False when unknown)."""

    def git(*args: str) -> str:
        done = run_git(*args, cwd=folder, timeout=15, check=False)  # asked when a notebook opens: be quick
        return done.stdout.strip() if done.returncode == 0 else ""

    try:
        upstream = git("rev-parse", "--abbrev-ref", "--symbolic-full-name", "@{upstream}")  # origin/main
        if "/" not in upstream:
            return False
        remote, branch = upstream.split("/", 1)
        known = git("rev-parse", upstream)
        listed = git("ls-remote", remote, f"refs/heads/{branch}").split()
        return bool(known and listed) and listed[0] != known
    except (OSError, subprocess.SubprocessError):
        return False


def handlers(base_url: str) -> list:
    prefix = base_url.rstrip("/") + "/opshub/api/"
    return [
        (prefix + "runbook", RunbookHandler),
        (prefix + "runs", RunsHandler),
        (prefix + r"runs/([0-9a-f-]{36})", RunJobHandler),
        (prefix + "publish", PublishHandler),
        (prefix + "links", LinksHandler),
    ]


def service_prefix() -> str:
    """The service's pages as the browser reaches them (through the proxy)."""
    return service_prefix_under(os.environ.get("JUPYTERHUB_BASE_URL", "/"))


__all__ = ["handlers", "default_runbooks_dir", "service_prefix"]
