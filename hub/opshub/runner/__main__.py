"""`python -m opshub.runner`: the server of one unattended run (see `__init__.py`). The spawner
starts it with JupyterHub's usual environment for a named server of the `opshub-runner` account."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import datetime
import fcntl
import json
import logging
import os
import shutil
import signal
import sys
import tarfile
import time
import uuid
from asyncio.subprocess import PIPE
from pathlib import Path
from urllib.parse import urlparse

from ..archive import extract_runbooks
from ..contract import SERVICE_NAME, SERVICE_URL_ENV
from ..hardening import keep_memory_private
from ..run_record import RunEnd
from ..runbooks.client import ServiceError
from ..runbooks.headless import EXIT_SIGNAL_BASE
from ..runbooks.metadata import RunbookMetadataError, read_runbook_metadata
from ..sandbox import (
    BUBBLEWRAP,
    SANDBOX_ENV,
    SandboxUnavailable,
    bwrap_command,
    check_bubblewrap,
    python_folders,
    sandbox_pid,
)
from . import CREDENTIALS_ENV, JOB_PATH
from .credentials import granted
from .job import RunnerReporter

log = logging.getLogger("opshub.runner")

ACTIVITY_SECONDS = (
    10  # how often the hub hears the server is active while the run goes on (culler timeouts are minutes)
)
STOP_GRACE_SECONDS = 5  # after the hub's signal, how long the server waits for the run's process
ABANDONED_SECONDS = 600  # a run folder nobody holds is removed once its lock is this old


def credential_specs(spec: str) -> dict[str, dict]:
    """$OPSHUB_RUNNER_CREDENTIALS as the hub's spawner wrote it: `runner.credentials` of the settings,
    `{NAME: {"file": path, "runbooks": [pattern, ...]}}` (empty or unreadable: none)."""
    try:
        specs = json.loads(spec or "{}")
    except ValueError:
        log.error("%s is not JSON: no credentials", CREDENTIALS_ENV)
        return {}
    return specs if isinstance(specs, dict) else {}


def read_credentials(specs: dict[str, dict], names: list[str]) -> tuple[dict[str, str], list[str]]:
    """The credentials `names`: each file's content (without a trailing newline) as a variable, and the
    problems with those that cannot be read (an `optional` one whose file does not exist is left out)."""
    found, problems = {}, []
    for name in names:
        path = specs[name]["file"]
        try:
            found[name] = Path(path).read_text().rstrip("\n")
        except FileNotFoundError as e:
            if not specs[name].get("optional"):
                problems.append(f"credential {name}: cannot read {path}: {e.strerror or e}")
        except OSError as e:
            problems.append(f"credential {name}: cannot read {path}: {e.strerror or e}")
    return found, problems


def credential_refusals(specs: dict[str, dict], runbook: str, asked: list[str]) -> list[str]:
    """Why the run may not have what its runbook asks for (`opshub.credentials`), naming each."""
    allowed = set(granted(specs, runbook))
    problems = []
    for name in asked:
        if name not in specs:
            problems.append(f"credential {name}: the runbook asks for it, and runner.credentials has no {name}")
        elif name not in allowed:
            problems.append(f"credential {name}: not granted to {runbook} (runner.credentials.{name}.runbooks)")
    return problems


def asked_credentials(folder: Path, runbook: str) -> list[str]:
    """What the runbook asks for in `opshub.credentials` (none when its metadata is wrong: the job
    refuses such a runbook on record, naming the key)."""
    try:
        return list(read_runbook_metadata(folder / "runbooks" / runbook, runbook)["credentials"])
    except RunbookMetadataError:
        return []


def hold_folder(folder: Path) -> int:
    """Mark the run's folder as in use for as long as this server lives: an exclusive lock on
    `<folder>.lock` (beside it, out of the run's reach), released by the kernel however the server ends."""
    descriptor = os.open(f"{folder}.lock", os.O_CREAT | os.O_RDWR, 0o600)
    fcntl.flock(descriptor, fcntl.LOCK_EX)
    return descriptor


def remove_abandoned_folders(runs: Path, older_than: float = ABANDONED_SECONDS) -> None:
    """Folders of runs whose server died before it could remove them (killed, the machine restarted):
    nobody holds their lock. (Young ones may belong to a server that has not locked its folder yet.)"""
    for lock in runs.glob("*.lock"):
        folder = lock.with_suffix("")
        try:
            if time.time() - lock.stat().st_mtime < older_than:
                continue
            descriptor = os.open(lock, os.O_RDWR)
        except OSError:
            continue
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # its server still runs
            os.close(descriptor)
            continue
        shutil.rmtree(folder, ignore_errors=True)
        lock.unlink(missing_ok=True)
        os.close(descriptor)
        log.info("removed %s, left behind by a runner's server that ended without cleaning up", folder)


def job_environment(home: Path, credentials: dict[str, str]) -> dict[str, str]:
    """The run's environment: no hub variable and no token, the credentials, and their names among
    the secrets the recorder masks."""
    names = [n for n in os.environ.get("OPSHUB_SECRET_NAMES", "").split(",") if n] + sorted(credentials)
    return {
        "PATH": os.environ.get("PATH", f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin"),
        "HOME": str(home),
        "LANG": os.environ.get("LANG", "C.UTF-8"),
        "OPSHUB_RUNNER": "1",
        "OPSHUB_SECRET_NAMES": ",".join(dict.fromkeys(names)),
        **credentials,
    }


def main() -> None:
    keep_memory_private()  # before anything secret is in it: this server's token, then the run's
    logging.basicConfig(level=logging.INFO, format="[%(levelname).1s %(asctime)s %(name)s] %(message)s")
    import tornado.web
    from jupyterhub.services.auth import HubAuth
    from jupyterhub.utils import url_path_join
    from tornado import httpclient

    service_url = urlparse(os.environ["JUPYTERHUB_SERVICE_URL"])
    prefix = os.environ["JUPYTERHUB_SERVICE_PREFIX"]
    user = os.environ["JUPYTERHUB_USER"]
    server_name = os.environ.get("JUPYTERHUB_SERVER_NAME", "")
    api_url = os.environ["JUPYTERHUB_API_URL"]
    api_token = os.environ["JUPYTERHUB_API_TOKEN"]
    opshub_url = os.environ.get(SERVICE_URL_ENV, "")
    home = Path(os.environ.get("HOME") or os.getcwd())
    hub_auth = HubAuth(api_token=api_token, api_url=api_url, cache_max_age=0)
    access = {f"access:servers!server={user}/{server_name}", f"access:servers!user={user}"}
    credentials = credential_specs(os.environ.get(CREDENTIALS_ENV, ""))
    sandbox = os.environ.get(SANDBOX_ENV) or BUBBLEWRAP  # unset: the safe kind
    # the run's process: the job in its sandbox; `signal_pid` is where the hub's stop goes (the job,
    # the sandbox's first process, not bwrap outside it)
    state: dict = {"process": None, "run_id": None, "signal_pid": None}
    done = asyncio.Event()

    def sandbox_problems() -> list[str]:
        if sandbox != BUBBLEWRAP:
            return []
        try:
            check_bubblewrap()
        except SandboxUnavailable as e:
            return [f"the run's sandbox: {e}"]
        return []

    async def start_job(folder: Path, env: dict[str, str]) -> None:
        """The job's process, in a fresh sandbox unless the container is one (or none was chosen)."""
        # -I: no folder anybody writes (the current one, the user's site-packages) shadows a module
        argv = [sys.executable, "-I", "-m", "opshub.runner.job"]
        if sandbox != BUBBLEWRAP:
            state["process"] = await asyncio.create_subprocess_exec(*argv, stdin=PIPE, cwd=folder, env=env)
            state["signal_pid"] = state["process"].pid
            return
        # every credential file reads empty inside: a run has only its granted ones, as variables
        hidden = [Path(spec["file"]) for spec in credentials.values()]
        info_read, info_write = os.pipe()
        command = bwrap_command(argv, home=home, work=folder, keep=python_folders(), hide=hidden, info_fd=info_write)
        try:
            state["process"] = await asyncio.create_subprocess_exec(
                *command, stdin=PIPE, cwd=folder, env=env, pass_fds=(info_write,)
            )
        finally:
            os.close(info_write)
        with os.fdopen(info_read) as info:  # bwrap writes it once the sandbox exists, then closes it
            text = await asyncio.get_running_loop().run_in_executor(None, info.read)
        state["signal_pid"] = sandbox_pid(text) if text.strip() else None

    class StatusHandler(tornado.web.RequestHandler):
        """What the hub's readiness check (and anyone) sees: which run, whether it goes on. No secrets."""

        def get(self):
            process = state["process"]
            self.finish({"run": state["run_id"], "running": bool(process and process.returncode is None)})

    class JobHandler(tornado.web.RequestHandler):
        """The run to execute, from the opshub service only, once."""

        async def post(self):
            kind, _, token = self.request.headers.get("Authorization", "").partition(" ")
            model = await hub_auth.user_for_token(token, sync=False) if kind.lower() in ("token", "bearer") else None
            # the opshub service's token, which holds access to this server; this server's own token
            # (which the run's code could find) also holds that access, but is not the service's
            if not model or model.get("kind") != "service" or model.get("name") != SERVICE_NAME:
                raise tornado.web.HTTPError(403, "only the opshub service may hand this server a job")
            if not hub_auth.check_scopes(access, model):
                raise tornado.web.HTTPError(403, "the opshub service may not use this server")
            if state["run_id"] is not None:
                raise tornado.web.HTTPError(409, f"this server already runs {state['run_id']}")
            try:
                job = json.loads(self.request.body)
                archive = base64.b64decode(job.pop("archive"), validate=True)
                run_id = str(uuid.UUID(str(job["run_id"])))  # it names a folder
                assert {"token", "runbook", "parameters"} <= set(job)
            except (ValueError, KeyError, TypeError, AssertionError, binascii.Error):
                raise tornado.web.HTTPError(
                    400, "the job must be JSON with run_id, token, runbook, parameters, archive"
                ) from None
            state["run_id"] = run_id
            state["reporter"] = RunnerReporter(opshub_url, job["token"], run_id, retry_seconds=60)
            folder = home / "runs" / run_id
            try:
                (home / "runs").mkdir(mode=0o700, exist_ok=True)
                state["lock"] = hold_folder(folder)
                remove_abandoned_folders(home / "runs")
                extract_runbooks(archive, folder / "runbooks")
            except tarfile.TarError as e:
                raise tornado.web.HTTPError(400, f"the runbooks archive is not a tar: {e}") from None
            problems = await asyncio.get_running_loop().run_in_executor(None, sandbox_problems)
            names = granted(credentials, job["runbook"])
            problems += credential_refusals(credentials, job["runbook"], asked_credentials(folder, job["runbook"]))
            found, unreadable = read_credentials(credentials, names)
            problems += unreadable
            if problems:  # it would fail somewhere less clear (ssh without its key): on record, not run
                summary = "The runner did not start the run: " + "; ".join(problems)
                log.error("run %s: %s", run_id, summary)
                self.set_status(202)
                self.finish({"run": run_id})
                await asyncio.get_running_loop().run_in_executor(None, refuse, summary)
                shutil.rmtree(folder, ignore_errors=True)
                Path(f"{folder}.lock").unlink(missing_ok=True)
                done.set()
                return
            job.update(
                runbooks_dir=str(folder / "runbooks"), output=str(folder / "executed.ipynb"), service_url=opshub_url
            )
            await start_job(folder, job_environment(home, found))
            state["process"].stdin.write(json.dumps(job).encode())
            state["process"].stdin.close()
            log.info("run %s of %s started (pid %s)", run_id, job["runbook"], state["process"].pid)
            asyncio.ensure_future(watch(state["process"], folder))
            self.set_status(202)
            self.finish({"run": run_id})

    async def watch(process, folder: Path) -> None:
        code = await process.wait()
        log.info("run %s ended (exit %s)", state["run_id"], code)
        await asyncio.get_running_loop().run_in_executor(None, record_end_if_missing, code)
        # the run's record holds its executed notebook: nothing of it stays in the runner's home
        shutil.rmtree(folder, ignore_errors=True)
        Path(f"{folder}.lock").unlink(missing_ok=True)
        done.set()

    async def report_activity() -> None:
        """Tell the hub this server is active while its run goes on: an idle culler leaves it alone."""
        client = httpclient.AsyncHTTPClient()
        while not done.is_set():
            if state["process"] is not None:
                now = datetime.datetime.now(datetime.timezone.utc).isoformat()
                body = {"last_activity": now, "servers": {server_name: {"last_activity": now}}}
                try:
                    await client.fetch(
                        f"{api_url}/users/{user}/activity",
                        method="POST",
                        body=json.dumps(body),
                        headers={"Authorization": f"token {api_token}"},
                        request_timeout=10,
                    )
                except Exception as e:  # the hub restarting: the next report will do
                    log.warning("cannot report activity to the hub: %s", e)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), ACTIVITY_SECONDS)

    def refuse(summary: str) -> None:
        try:
            state["reporter"].finish_run(state["run_id"], RunEnd("failed", error_summary=summary))
        except ServiceError as e:
            log.error("run %s: cannot record its end: %s", state["run_id"], e)

    def record_end_if_missing(code: int) -> None:
        """The run's process ended without recording the end (killed before it could, crashed): say so.
        The service refuses this (409) when the process did record it, which is fine. Exit 0 says it
        recorded the end; while the server is being stopped (the hub shuts down, and the service with
        it) it tries only for the grace it has: the service's sweep ends a silent run anyway."""
        if code == 0:
            return
        if state.get("signalled"):
            state["reporter"].retry_seconds = STOP_GRACE_SECONDS
        status = "interrupted" if code < 0 or code >= EXIT_SIGNAL_BASE else "failed"
        summary = f"The runner's process for this run ended (exit {code}) before it recorded the run's end."
        try:
            state["reporter"].finish_run(state["run_id"], RunEnd(status, error_summary=summary))
            log.warning("run %s: %s", state["run_id"], summary)
        except ServiceError as e:
            if e.status != 409:
                log.error("run %s: cannot record its end: %s", state["run_id"], e)

    def stop(signum: int) -> None:
        """The hub stops this server (a cancel, the hub's shutdown): the run is interrupted and records it.

        The server leaves after STOP_GRACE_SECONDS even if the run's process has not ended: on the hub's
        shutdown the service is gone already, and that process goes on sending the run's end (for up
        to FINISH_RETRY_SECONDS) until the service is back; the server must not hold the hub up."""
        process = state["process"]
        log.info("%s: stopping run %s", signal.Signals(signum).name, state["run_id"])
        if process is None or process.returncode is not None:
            done.set()
            return
        if not state.get("signalled"):
            state["signalled"] = True
            with contextlib.suppress(ProcessLookupError, TypeError):  # ended meanwhile, or a sandbox never made
                os.kill(state["signal_pid"], signal.SIGTERM)
            asyncio.get_running_loop().call_later(STOP_GRACE_SECONDS, done.set)

    async def serve() -> None:
        app = tornado.web.Application(
            [
                (url_path_join(prefix, JOB_PATH), JobHandler),
                (url_path_join(prefix, "(?:api)?/?"), StatusHandler),
            ]
        )
        app.listen(service_url.port, address=service_url.hostname)
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop, signum)
        log.info("runner server %s/%s at %s", user, server_name, prefix)
        activity = asyncio.ensure_future(report_activity())
        await done.wait()
        activity.cancel()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
