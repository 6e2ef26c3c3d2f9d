"""`opshub run`: execute a runbook headless with papermill, recorded in the run history.

    opshub run patch-server-stack -p stack web -p dry_run False

In order: resolve the runbook inside the runbooks folder, check the parameters against the ones it
declares, find its git commit and drift, record the start (nothing runs unless that worked), execute
with a heartbeat, save the masked executed notebook, record the end. Usage errors (unknown runbook,
undeclared parameter...) stop before anything is recorded or run.

This module is the command: runbook resolution, the recorder wiring and `run_runbook`, which strings
together the parts of its sibling modules: `params` (declared parameters, values), `gitstate` (commit,
drift), `execute` (kernel, papermill, heartbeat, signals), `results` (the failing cell, the summary) and
`terminal` (what is printed).

Recorder: anything with `start_run(RunStart)`, `heartbeat(run_id)` and `finish_run(run_id, RunEnd)` (the
records of `opshub.run_record`) like `opshub.runbooks.client.ServiceClient` (the default).
`OPSHUB_RECORDER=store:<SQLAlchemy URL>` records straight into a `RunStore` instead, with no service in
between: a testing and offline aid (the user is $JUPYTERHUB_USER, else the login name).
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from ..contract import RUNBOOKS_TARGET_ENV
from ..run_record import CellProgress, Record, RunEnd, RunEnded, RunStart, RunStarted, event_line
from .client import ServiceClient, ServiceError
from .execute import DEFAULT_HEARTBEAT_SECONDS, Heartbeat, Stopper, execute_notebook
from .gitstate import git_state
from .masking import mask_notebook, mask_obj, secrets_for
from .metadata import RunbookMetadataError, read_runbook_metadata
from .params import UsageError, declared_parameters
from .public_links import absolute_url
from .results import error_summary, exited_cleanly, failed_cell_index
from .terminal import Terminal, format_duration
from .typed_parameters import (
    Parameter,
    ParameterError,
    RepositoryFiles,
    describe_for_help,
    form_fields,
    is_default,
    parameters_of,
    resolve,
)

EXIT_SUCCEEDED = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_RECORDING = 3  # the run history could not record the start (nothing ran) or the end
EXIT_SIGNAL_BASE = 128  # shell convention: 130 after SIGINT, 143 after SIGTERM

HEARTBEAT_ENV = "OPSHUB_HEARTBEAT_SECONDS"
LOCK_POLL_SECONDS = 2.0  # how often a run waiting for a lock asks again
RECORDER_ENV = "OPSHUB_RECORDER"


# Finding the runbook


def default_runbooks_dir(environ: Mapping[str, str] | None = None) -> Path:
    """$HOME/$OPSHUB_RUNBOOKS_TARGET (default ~/runbooks): where opshub.singleuser pulls the runbooks."""
    environ = os.environ if environ is None else environ
    home = Path(environ.get("HOME") or Path.home())
    return home / (environ.get(RUNBOOKS_TARGET_ENV) or "runbooks")


def list_runbooks(folder: Path) -> list[str]:
    """The runbooks in `folder`: relative paths of its .ipynb files, sorted.

    Hidden files and folders (.git, .ipynb_checkpoints) are left out, and so are notebooks that are
    symlinks leading outside the folder.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    root = folder.resolve()
    found = []
    for path in folder.rglob("*.ipynb"):
        relative = path.relative_to(folder)
        if any(part.startswith(".") for part in relative.parts):
            continue
        if _strictly_inside(path.resolve(), root) and path.is_file():
            found.append(relative.as_posix())
    return sorted(found)


def resolve_runbook(folder: Path, name: str) -> tuple[Path, str]:
    """The runbook file for `name` and its path relative to `folder` (as recorded in the history).

    `name` may leave out `.ipynb` and may name a sub-folder (`net/check`). Absolute paths, `..`, hidden
    parts, symlinks leading outside the folder and anything that is not an existing .ipynb file
    strictly inside the folder raise UsageError, whose message lists the runbooks that exist.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(
            f"the runbooks folder {folder} does not exist. Runbooks are pulled there when your server starts;"
            " use --runbooks-dir to run from another folder."
        )
    problem = _name_problem(name)
    if problem is None:
        candidate = name if name.endswith(".ipynb") else name + ".ipynb"
        path = folder / candidate
        resolved = path.resolve()
        root = folder.resolve()
        if not _strictly_inside(resolved, root):
            problem = "it leads outside the runbooks folder"
        elif not resolved.is_file():
            problem = "there is no such runbook"
        else:
            # A symlink inside the folder is fine; the history names the file it leads to.
            return resolved, resolved.relative_to(root).as_posix()
    raise UsageError(f"cannot run {name!r}: {problem}.\n{_describe_runbooks(folder)}")


def _name_problem(name: str) -> str | None:
    """Why `name` cannot be a runbook path, looking at the text only; None if it may be one."""
    if not name or not name.strip():
        return "the name is empty"
    if "\0" in name:
        return "the name contains a NUL character"
    if name.startswith(("/", "\\", "~")) or Path(name).is_absolute():
        return "absolute paths are not allowed, only paths inside the runbooks folder"
    parts = name.replace("\\", "/").split("/")
    if ".." in parts:
        return "'..' is not allowed, only paths inside the runbooks folder"
    if any(part.startswith(".") for part in parts if part):
        return "hidden files and folders are not runbooks"
    return None


def _strictly_inside(path: Path, root: Path) -> bool:
    return path != root and path.is_relative_to(root)


def _describe_runbooks(folder: Path) -> str:
    names = list_runbooks(folder)
    if not names:
        return f"There are no runbooks in {folder}."
    lines = []
    for name in names:
        try:
            read_runbook_metadata(folder / name, name)
            lines.append(f"  {name}")
        except RunbookMetadataError as e:
            lines.append(f"  {name}  (invalid: {str(e).removeprefix(name + ': ')})")
    return f"Runbooks in {folder}:\n" + "\n".join(lines)


# The recorder


def make_recorder(environ: Mapping[str, str] | None = None, open_store: Callable[[str], Any] | None = None):
    """The recorder `opshub run` uses: ServiceClient(), or for `OPSHUB_RECORDER=store:<URL>` the
    `open_store(url)` the command wires in (the run store is the service's side: runbooks/ does not
    import it).

    Raises ServiceError when it cannot be set up (no service URL or token), UsageError for an
    OPSHUB_RECORDER it does not understand.
    """
    environ = os.environ if environ is None else environ
    spec = environ.get(RECORDER_ENV, "")
    if not spec:
        return ServiceClient()
    if spec.startswith("store:") and open_store is not None:
        return open_store(spec.removeprefix("store:"))
    raise UsageError(f"${RECORDER_ENV} must be empty or store:<database URL>, not {spec!r}")


def heartbeat_interval(environ: Mapping[str, str]) -> float:
    """$OPSHUB_HEARTBEAT_SECONDS (default 15), a positive number of seconds."""
    text = environ.get(HEARTBEAT_ENV, "")
    if not text:
        return DEFAULT_HEARTBEAT_SECONDS
    try:
        seconds = float(text)
    except ValueError:
        seconds = 0.0
    if not (math.isfinite(seconds) and seconds > 0):
        raise UsageError(f"${HEARTBEAT_ENV} must be a positive number of seconds, not {text!r}")
    return seconds


# The command


def run_runbook(
    runbook: str,
    parameters: Iterable[Sequence[str]] = (),
    *,
    output: str | Path | None = None,
    runbooks_dir: str | Path | None = None,
    recorder=None,
    open_store: Callable[[str], Any] | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
    commit: str | None = None,
    values: dict[str, Any] | None = None,
    events: TextIO | None = None,
) -> int:
    """Run `runbook` headless, recorded; return the exit code (see the module docstring and EXIT_*).

    `parameters` are (NAME, VALUE) text pairs as given to `-p`; `values` instead are typed values (the
    runner's job, checked by the service). `recorder` defaults to
    `make_recorder(open_store=open_store)`. `commit` says which commit `runbooks_dir` holds when it
    is not a git checkout (the runner's copy of the repository at that commit: no drift).
    Secrets are taken from the process environment, which the kernel inherits, and from the kernel's own
    environment after each cell (a cell may set one). `events` (`--events json`) gets one JSON line per
    event of `opshub.run_record` (started, cell, ended): for programs, which then read no human text.
    """
    out = out or sys.stdout
    err = err or sys.stderr
    pairs = [tuple(pair) for pair in parameters]
    secrets = secrets_for(os.environ, values or {name: value for name, value in pairs})
    terminal = RunTerminal(out, err, secrets, events)
    try:
        plan = _prepare(runbook, pairs, output, runbooks_dir, commit, values)
        if recorder is None:
            recorder = make_recorder(open_store=open_store)
    except UsageError as e:
        terminal.warn(str(e))
        return EXIT_USAGE
    except ServiceError as e:
        terminal.warn(f"cannot record the run, so it was not started: {e}")
        return EXIT_RECORDING
    return _execute_recorded(plan, recorder, terminal)


@dataclass
class _Plan:
    path: Path
    name: str
    parameters: dict[str, Any]  # every value that applies: recorded
    kernel_name: str
    output: Path | None
    heartbeat: float
    commit: str | None = None
    drift: bool = True
    injected: dict[str, Any] | None = None  # the values papermill sets: those that differ from the cell's


def _prepare(runbook: str, pairs, output, runbooks_dir, commit: str | None = None, values=None) -> _Plan:
    """Everything checked before the run is recorded. Raises UsageError.

    `pairs` are `-p NAME VALUE` text, read for each parameter's type; `values` (the runner's job) are typed
    values that the service checked already, checked again here against the same runbook."""
    path, name, typed, files = local_parameters(runbook, runbooks_dir)
    given = values if values is not None else {pair_name: text for pair_name, text in pairs}
    try:
        parameters = resolve(typed, given, files, text=values is None)
    except ParameterError as e:
        raise UsageError(f"{name}: {e}\n{describe_for_help(name, [p.describe() for p in typed.values()])}") from None
    kernel_name = _kernel_name(path, name)
    if output is not None:
        output = Path(output).expanduser().absolute()
        try:
            output.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UsageError(f"cannot write the output notebook to {output}: {e}") from None
    plan = _Plan(path, name, parameters, kernel_name, output, heartbeat_interval(os.environ))
    # a value equal to the cell's default needs no injected cell: the notebook runs as written
    plan.injected = {key: value for key, value in parameters.items() if not is_default(typed[key], value)}
    plan.commit, plan.drift = (commit, False) if commit else git_state(path.parent, path.name)
    return plan


def local_parameters(runbook: str, runbooks_dir=None) -> tuple[Path, str, dict[str, Parameter], RepositoryFiles]:
    """The runbook `runbook` of the runbooks folder: its path, name, typed parameters and a reader of the
    folder's files (the choices of its parameters). UsageError when it cannot run: wrong metadata (a
    misspelt changes_systems...) is fixed before runs."""
    folder = Path(runbooks_dir).expanduser() if runbooks_dir else default_runbooks_dir()
    path, name = resolve_runbook(folder, runbook)
    files = RepositoryFiles(folder)
    try:
        metadata = read_runbook_metadata(path, name, files)
    except RunbookMetadataError as e:
        raise UsageError(str(e)) from None
    try:
        declared = declared_parameters(path)
    except Exception as e:  # not a notebook papermill can read
        raise UsageError(f"cannot read {name}: {e}") from None
    return path, name, parameters_of(metadata, declared), files


def runbook_help(runbook: str, runbooks_dir=None) -> str:
    """`opshub run RUNBOOK --help`: the runbook's parameters. UsageError when it cannot be read."""
    _, name, typed, files = local_parameters(runbook, runbooks_dir)
    return describe_for_help(name, form_fields(typed, files))


def _kernel_name(path: Path, name: str) -> str:
    import nbformat
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    nb = nbformat.read(str(path), as_version=4)
    kernel = nb.metadata.get("kernelspec", {}).get("name")
    if not kernel:
        raise UsageError(f"{name} names no kernel (metadata.kernelspec.name): open it in JupyterLab and save it")
    try:
        KernelSpecManager().get_kernel_spec(kernel)
    except NoSuchKernel:
        raise UsageError(f"{name} needs the kernel {kernel!r}, which is not installed here") from None
    return kernel


def _execute_recorded(plan: _Plan, recorder, terminal: RunTerminal) -> int:
    say = terminal.say
    masked_parameters = mask_obj(plan.parameters, terminal.secrets)
    commit = plan.commit[:12] if plan.commit else "none (not a git checkout)"
    say(f"opshub run {plan.name}  commit {commit}{'  (differs from the commit: drift)' if plan.drift else ''}")
    if masked_parameters:
        say("parameters: " + ", ".join(f"{k}={json.dumps(v)}" for k, v in masked_parameters.items()))
    # Signals are caught from before the start is recorded: a Ctrl-C while recording still ends the
    # record as interrupted, instead of leaving it running until the heartbeat window passes.
    stopper = Stopper()
    stopper.install()
    try:
        record = _start_when_free(recorder, plan, masked_parameters, terminal, stopper)
        run_id = str(record["id"])
    except ServiceError as e:
        stopper.uninstall()
        terminal.warn(f"cannot record the run, so it was not started: {e}")
        return EXIT_RECORDING
    except _StoppedWaiting as e:
        stopper.uninstall()
        terminal.warn(f"stopped by {signal.Signals(e.signum).name} while waiting for the lock: nothing ran")
        return EXIT_SIGNAL_BASE + e.signum
    url = record.get("url")
    say(f"run {run_id}" + (f"  {absolute_url(url)}" if url else ""))
    terminal.event(RunStarted(run_id, url, plan.name, plan.commit, plan.drift, masked_parameters))

    # the run's page shows its cells as they run: the heartbeat carries them, masked
    heartbeat = Heartbeat(
        recorder, run_id, plan.heartbeat, terminal.warn, lambda nb: mask_notebook(nb, terminal.secrets)
    )
    terminal.on_progress = lambda urgent, finished=None: heartbeat.show(terminal.notebook, urgent, finished)
    terminal.check_interrupt = stopper.check
    if hasattr(recorder, "first_cell"):  # the runner's: the run's delay is measured to its first cell
        terminal.on_first_cell = lambda: _tell(recorder.first_cell, run_id, terminal)
    started = time.monotonic()
    heartbeat.start()
    try:
        try:
            nb, error = execute_notebook(plan.path, plan.injected, plan.kernel_name, terminal, stopper)
        finally:
            heartbeat.stop()
        # The handlers stay until the end is recorded: a Ctrl-C now is noted and ignored, so that the
        # record does not stay running.
        duration = time.monotonic() - started
        return _finish(plan, recorder, terminal, record, nb, error, stopper.signum, duration)
    finally:
        stopper.uninstall()


def _tell(call, run_id: str, terminal: Terminal) -> None:
    try:
        call(run_id)
    except ServiceError as e:  # only a measurement: the run goes on
        terminal.warn(f"could not tell the service the first cell started: {e}")


class _StoppedWaiting(Exception):
    def __init__(self, signum: int):
        self.signum = signum


def _start_when_free(recorder, plan: _Plan, parameters: dict, terminal: Terminal, stopper) -> dict:
    """Record the start; while another run holds one of the runbook's locks (`opshub.locks`), say so
    once and try again every LOCK_POLL_SECONDS, until it is free or a signal stops the wait."""
    said = False
    while True:
        try:
            return recorder.start_run(RunStart(plan.name, "headless", parameters, plan.commit, plan.drift))
        except ServiceError as e:
            if not e.lock_held:
                raise
            if not said:
                terminal.say(f"waiting: {e.message}")
                said = True
        deadline = time.monotonic() + LOCK_POLL_SECONDS
        while time.monotonic() < deadline:
            if stopper.signum is not None:
                raise _StoppedWaiting(stopper.signum)
            time.sleep(0.1)


def _finish(plan: _Plan, recorder, terminal: RunTerminal, record: dict, nb, error, signum, seconds: float) -> int:
    """Save the masked notebook, record the end, say how it went. Returns the exit code."""
    say = terminal.say
    run_id, url = str(record["id"]), record.get("url")
    if signum is not None:
        status, exit_code = "interrupted", EXIT_SIGNAL_BASE + signum
        failed_cell = None
        where = f" in cell {terminal.current_cell + 1}" if terminal.current_cell is not None else ""
        summary = f"Interrupted by {signal.Signals(signum).name}{where} (opshub run)"
    elif error is None:
        status, exit_code, failed_cell, summary = "succeeded", EXIT_SUCCEEDED, None, None
    else:
        status, exit_code = "failed", EXIT_FAILED
        failed_cell = failed_cell_index(nb) if nb is not None else None
        summary = (error_summary(nb, failed_cell) if nb is not None else None) or _describe_error(error)
    summary = terminal.mask(summary) if summary else None
    stored = mask_notebook(nb, terminal.secrets) if nb is not None else None

    saved = _save(stored, plan.output or Path.home() / ".opshub" / "runs" / f"{run_id}.ipynb", terminal)
    end = RunEnd(status, failed_cell, summary, stored)
    try:
        finished = recorder.finish_run(run_id, end)
    except ServiceError as e:
        terminal.warn(
            f"run {run_id} {status}, but its end could not be recorded: {e}\n"
            f"  executed notebook: {saved or 'not saved'}\n"
            "  The run history will mark the run interrupted once its heartbeat window has passed."
        )
        terminal.event(RunEnded(run_id, status, failed_cell, summary, url, EXIT_RECORDING, _text(saved)))
        return EXIT_RECORDING

    mark = {"succeeded": "✓", "failed": "✗"}.get(status, "■")
    say(f"{mark} {status} in {format_duration(seconds)}" + (f": {summary}" if summary else ""))
    url = (finished or {}).get("url") or url
    say(f"run {run_id}" + (f"  {absolute_url(url)}" if url else ""))
    if saved:
        say(f"executed notebook: {saved}")
    terminal.event(RunEnded(run_id, status, failed_cell, summary, url, exit_code, _text(saved)))
    return exit_code


def _text(path: Path | None) -> str | None:
    return str(path) if path is not None else None


def _describe_error(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".rstrip(": ")


def _save(nb, path: Path, terminal: Terminal) -> Path | None:
    import nbformat

    if nb is None:
        return None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        nbformat.write(nbformat.from_dict(nb), str(partial))
        partial.replace(path)  # never a half-written notebook at `path`
        return path
    except OSError as e:
        terminal.warn(f"cannot save the executed notebook to {path}: {e}")
        return None


class RunTerminal(Terminal):
    """What `opshub run` prints, and with `--events json` one JSON line per event (`opshub.run_record`)
    to `events` (stdout, which then carries nothing else: the command sends the human lines to stderr)."""

    def __init__(self, out: TextIO, err: TextIO, secrets, events: TextIO | None = None):
        super().__init__(out, err, secrets)
        self.events = events

    def event(self, record: Record) -> None:
        if self.events is None:
            return
        with self.lock:  # a whole line, never interleaved with output written from another thread
            self.events.write(event_line(record) + "\n")
            self.events.flush()

    def on_cell_executed(self, cell, cell_index, execute_reply, **kwargs):
        seconds = time.monotonic() - self.cell_started
        super().on_cell_executed(cell, cell_index, execute_reply, **kwargs)
        # the rule of the terminal's ✓ and ✗: a clean exit is answered "error", yet is no failure
        ok = (execute_reply or {}).get("content", {}).get("status") == "ok" or exited_cleanly(cell)
        self.event(CellProgress(cell_index, "succeeded" if ok else "failed", round(seconds, 3)))
