"""`opshub run`: execute a runbook headless with papermill, recorded in the run history.

    opshub run patch-server-stack -p stack web -p dry_run False

In order: resolve the runbook inside the runbooks folder, check the parameters against the ones it
declares, find its git commit and drift, record the start (nothing runs unless that worked), execute
with a heartbeat, save the masked executed notebook, record the end. Usage errors (unknown runbook,
undeclared parameter...) stop before anything is recorded or run.

The parts that decide things are pure functions (`resolve_runbook`, `parse_value`, `check_parameters`,
`git_state`, `failed_cell_index`, `progress_line`...); `run_runbook` strings them together.

Recorder: anything with `start_run`, `heartbeat` and `finish_run` like `opshub.runbooks.client.ServiceClient`
(the default). `OPSHUB_RECORDER=store:<SQLAlchemy URL>` records straight into a `RunStore` instead, with
no service in between: a testing and offline aid (the user is $JUPYTERHUB_USER, else the login name).
"""

from __future__ import annotations

import ast
import contextlib
import json
import logging
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from .client import ServiceClient, ServiceError
from .masking import is_secret_name, kernel_environment, mask_notebook, mask_obj, mask_text, secret_values
from .metadata import RunbookMetadataError, read_runbook_metadata

EXIT_SUCCEEDED = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_RECORDING = 3  # the run history could not record the start (nothing ran) or the end
EXIT_SIGNAL_BASE = 128  # shell convention: 130 after SIGINT, 143 after SIGTERM

RUNBOOKS_TARGET_ENV = "OPSHUB_RUNBOOKS_TARGET"
SECRET_NAMES_ENV = "OPSHUB_SECRET_NAMES"
HEARTBEAT_ENV = "OPSHUB_HEARTBEAT_SECONDS"
RECORDER_ENV = "OPSHUB_RECORDER"
DEFAULT_HEARTBEAT_SECONDS = 15.0
# How long to wait, after each cell, for the kernel to tell its environment (it is idle: milliseconds).
KERNEL_ENVIRONMENT_SECONDS = 30.0
# After an interrupt the kernel gets this long to stop the running cell before it is killed.
INTERRUPT_GRACE_SECONDS = 10.0
LABEL_WIDTH = 70


class UsageError(Exception):
    """The command cannot run as asked (unknown runbook, undeclared parameter...): exit 2, nothing recorded."""


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


# Parameters


@dataclass(frozen=True)
class DeclaredParameter:
    """A parameter the runbook declares in its `parameters` cell: its default (as source text) and help."""

    name: str
    default: str
    help: str = ""


def declared_parameters(path: Path) -> dict[str, DeclaredParameter]:
    """The parameters `path` declares, in order, as papermill's inspection finds them.

    papermill skips assignments whose value contains '=' (it warns "Unable to parse line": the shipped
    patch-server-stack's `ssh_options = "-o BatchMode=yes ..."`), so for Python notebooks the names
    assigned at the top level of the parameters cell are added from Python's own parser.
    """
    import nbformat
    import papermill

    with _quiet_papermill():
        inspected = papermill.inspect_notebook(str(path))
    declared = {
        name: DeclaredParameter(name, str(info.get("default", "")), str(info.get("help") or ""))
        for name, info in inspected.items()
    }
    nb = nbformat.read(str(path), as_version=4)
    language = nb.metadata.get("kernelspec", {}).get("language") or nb.metadata.get("language_info", {}).get("name")
    if language == "python":
        for cell in nb.cells:
            if cell.cell_type == "code" and "parameters" in cell.metadata.get("tags", []):
                for name, default in python_assignments(cell.source):
                    declared.setdefault(name, DeclaredParameter(name, default))
                break
    return declared


def python_assignments(source: str) -> list[tuple[str, str]]:
    """(name, value source) of each top-level `name = value` (or `name: type = value`) in Python `source`."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    found = []
    for node in tree.body:
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        else:
            continue
        for target in targets:
            if isinstance(target, ast.Name):
                found.append((target.id, ast.get_source_segment(source, value) or ""))
    return found


def parse_value(text: str) -> Any:
    """A `-p NAME VALUE` value as the runbook receives it.

    Chosen: papermill's own CLI rules (`True`, `False`, `None`, then int, then float, else the text as
    given), plus JSON for values starting with `[`, `{` or `"`, because runbooks take lists
    (`'["web1","web2"]'`) and a JSON string forces text (`'"007"'` stays "007"). Such a value that is not
    valid JSON is refused rather than silently passed as text. `nan` and `inf` stay text: the run
    history stores parameters as JSON, which has no such numbers.
    """
    if text == "True":
        return True
    if text == "False":
        return False
    if text == "None":
        return None
    if text.lstrip().startswith(("[", "{", '"')):
        try:
            return json.loads(text)
        except ValueError as e:
            raise UsageError(
                f'{text!r} looks like JSON but is not valid JSON ({e}). Write lists as \'["a", "b"]\','
                " with double quotes around strings."
            ) from None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        number = float(text)
    except ValueError:
        return text
    return number if math.isfinite(number) else text


def parse_parameters(pairs: Iterable[Sequence[str]]) -> dict[str, Any]:
    """`-p NAME VALUE` pairs as a dict of parsed values (a name given twice: the last one wins, as in papermill)."""
    parameters = {}
    for name, value in pairs:
        try:
            parameters[name] = parse_value(value)
        except UsageError as e:
            raise UsageError(f"parameter {name}: {e}") from None
    return parameters


def check_parameters(runbook: str, names: Iterable[str], declared: Mapping[str, DeclaredParameter]) -> None:
    """Raise UsageError, listing the declared parameters with their defaults, if a name is not declared."""
    unknown = [name for name in names if name not in declared]
    if not unknown:
        return
    listed = ", ".join(unknown)
    message = f"{runbook} does not declare the parameter{'s' if len(unknown) > 1 else ''} {listed}."
    raise UsageError(f"{message}\n{describe_parameters(runbook, declared)}")


def describe_parameters(runbook: str, declared: Mapping[str, DeclaredParameter]) -> str:
    """The declared parameters as the runbook's parameters cell shows them: `name = default  # help`."""
    if not declared:
        return f"{runbook} declares no parameters (it has no papermill `parameters` cell)."
    width = max(len(f"{p.name} = {p.default}") for p in declared.values())
    lines = [f"{runbook} declares these parameters (set them with -p NAME VALUE):"]
    for p in declared.values():
        line = f"{p.name} = {p.default}"
        lines.append(f"  {line:<{width}}  # {p.help}" if p.help else f"  {line}")
    return "\n".join(lines)


def secrets_for(environ: Mapping[str, str], parameters: Mapping[str, Any] | None = None) -> list[str]:
    """The values to mask: secret environment variables ($OPSHUB_SECRET_NAMES, comma-separated, plus the
    default patterns) and the values of parameters whose names look like secrets (`-p api_token ...`)."""
    names = [name.strip() for name in environ.get(SECRET_NAMES_ENV, "").split(",") if name.strip()]
    secrets = set(secret_values(environ, names))
    for name, value in (parameters or {}).items():
        if is_secret_name(name, names) and isinstance(value, str) and len(value.strip()) >= 4:
            secrets.add(value.strip())
    return sorted(secrets, key=lambda value: (-len(value), value))


# Git commit and drift


def git_state(folder: Path, relative: str) -> tuple[str | None, bool]:
    """(commit, drift) of the runbook `relative` (a path inside `folder`).

    The commit is the one the checkout is based on in the team's repository: `git merge-base HEAD
    @{upstream}`, or HEAD when there is no upstream. Not the last commit touching the file, because a
    runbook reads other files of the repository (`inventory/stacks.yaml`): the checkout's commit is what
    reproduces the run. Not plain HEAD, because nbgitpuller commits local edits ("Automatic commit by
    nbgitpuller") before merging: HEAD then exists only in this clone and hides the edits.

    Drift is whether the file differs from that commit: edits (committed locally or not, staged or not)
    or a file the commit does not have. For a notebook, only its cells count (types and sources, in
    order): outputs and execution counts that JupyterLab saved after running it are not drift. Not a
    git checkout, or git failing: (None, True).
    """
    try:
        head = _git(folder, "rev-parse", "--verify", "--quiet", "HEAD^{commit}")
        if head.returncode != 0:
            return None, True
        base = _git(folder, "merge-base", "HEAD", "@{upstream}")
        commit = (base.stdout if base.returncode == 0 and base.stdout.strip() else head.stdout).strip()
        # Paths relative to `folder` ("./"), which may be a sub-folder of the repository.
        if _git(folder, "cat-file", "-e", f"{commit}:./{relative}").returncode != 0:
            return commit, True
        diff = _git(folder, "diff", "--quiet", commit, "--", relative)
        if diff.returncode == 0:
            return commit, False
        if not relative.endswith(".ipynb"):
            return commit, True
        # Outputs, execution counts and metadata saved by JupyterLab are not drift: the cells are.
        committed = committed_text(folder, commit, relative)
        return commit, committed is None or notebook_cells(committed) != notebook_cells(
            (Path(folder) / relative).read_text()
        )
    except (OSError, subprocess.SubprocessError):
        return None, True


def _git(folder: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["git", "-C", str(folder), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_OPTIONAL_LOCKS": "0"},
    )


def committed_text(folder: Path, commit: str, relative: str) -> str | None:
    """The file `relative` (a path inside `folder`) as `commit` has it, or None if git cannot show it."""
    shown = _git(folder, "show", f"{commit}:./{relative}")
    return shown.stdout if shown.returncode == 0 else None


def notebook_cells(text: str) -> list[tuple[str, str]] | None:
    """What a notebook does: its cells' types and sources, in order (None if it is not a notebook)."""
    try:
        cells = json.loads(text)["cells"]
        return [(c["cell_type"], _text(c["source"])) for c in cells]
    except (ValueError, KeyError, TypeError):
        return None


# Results


def failed_cell_index(nb: Mapping[str, Any]) -> int | None:
    """The index in `nb["cells"]` of the cell that failed, or None.

    The first cell with an error output (papermill's rule: `SystemExit` with code 0 or none is not a
    failure), else the first cell papermill marked `exception` (an error without output), else a cell
    papermill left `running` (the kernel died under it).
    """
    cells = nb.get("cells", [])
    for index, cell in enumerate(cells):
        if _error_output(cell) is not None:
            return index
    for key, value in (("exception", True), ("status", "running")):
        for index, cell in enumerate(cells):
            if cell.get("metadata", {}).get("papermill", {}).get(key) == value:
                return index
    return None


def error_summary(nb: Mapping[str, Any], index: int | None) -> str | None:
    """`ename: evalue` of the error output of cell `index`, or None."""
    if index is None:
        return None
    output = _error_output(nb["cells"][index])
    if output is None:
        return None
    return f"{output.get('ename', 'Error')}: {output.get('evalue', '')}".rstrip(": ")


def _error_output(cell: Mapping[str, Any]) -> Mapping[str, Any] | None:
    for output in cell.get("outputs", []) or []:
        if output.get("output_type") == "error":
            if output.get("ename") == "SystemExit" and output.get("evalue") in ("", "0"):
                continue
            return output
    return None


# Terminal progress


def cell_label(cell: Mapping[str, Any], width: int = LABEL_WIDTH) -> str:
    """What a progress line says about a cell: the first line of its source (for markdown, the first heading)."""
    lines = [line.strip() for line in _text(cell.get("source", "")).splitlines() if line.strip()]
    if cell.get("cell_type") == "markdown":
        lines = [line for line in lines if line.startswith("#")] or lines
    label = lines[0] if lines else "(empty)"
    return label if len(label) <= width else label[: width - 1] + "…"


def progress_line(index: int, total: int, cell: Mapping[str, Any]) -> str:
    """`[ 4/13] ▶ cell 4: <label>`: cells counted from 1, as people count (the record's
    `failed_cell` is a 0-based index into the stored notebook). Markdown cells get no ▶: they do not run."""
    number = index + 1
    mark = "▶" if cell.get("cell_type") == "code" else " "
    return f"[{number:>{len(str(total))}}/{total}] {mark} cell {number}: {cell_label(cell)}"


def result_mark(ok: bool, seconds: float) -> str:
    """`✓ 0.4s` or `✗ 2.0s`."""
    return f"{'✓' if ok else '✗'} {format_duration(seconds)}"


def format_duration(seconds: float) -> str:
    """0.4s, 12s, 3m05s, 1h02m."""
    if seconds < 10:
        return f"{seconds:.1f}s"
    if seconds < 60:
        return f"{seconds:.0f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _text(value: Any) -> str:
    return "".join(value) if isinstance(value, list) else str(value or "")


class Terminal:
    """Everything `opshub run` prints, masked. Also the nbclient hooks and papermill stream writers that
    show progress per cell and stream the cells' output.

    Cell output is printed a whole line at a time, so that a secret split across two output messages
    is still masked (the last partial line is printed when the cell ends).
    """

    def __init__(self, out: TextIO, err: TextIO, secrets: Sequence[str]):
        self.out, self.err = out, err
        self.secrets: tuple[str, ...] = ()
        self.add_secrets(secrets)
        self.total = 0
        self.cell_started = 0.0
        self.current_cell: int | None = None
        self.open_line = False  # a "▶ cell" line waiting for its ✓ on the same line
        self.pending = {"stdout": "", "stderr": ""}
        self.lock = threading.Lock()
        self.stdout = _StreamWriter(self, "stdout")
        self.stderr = _StreamWriter(self, "stderr")
        self.check_interrupt: Callable[[], None] = lambda: None

    def add_secrets(self, secrets: Iterable[str]) -> None:
        """Mask these values too from now on (secrets the kernel set while running)."""
        secrets = {*self.secrets, *secrets}
        # A multi-line secret (a PEM key) is also masked line by line, because output is printed by line.
        extra = [line.strip() for secret in secrets if "\n" in secret for line in secret.splitlines()]
        self.secrets = tuple(sorted({*secrets, *(line for line in extra if len(line) >= 8)}, key=lambda s: -len(s)))

    def mask(self, text: str) -> str:
        """`text` with every secret masked."""
        return mask_text(text, self.secrets)

    def say(self, text: str = "") -> None:
        """Print a line to the terminal (masked)."""
        self._write(self.out, text + "\n")

    def warn(self, text: str) -> None:
        """Print a line to stderr (masked)."""
        self._write(self.err, f"opshub run: {text}\n")

    def _write(self, stream: TextIO, text: str) -> None:
        with self.lock:
            if self.open_line:
                self.out.write("\n")
                self.open_line = False
            stream.write(self.mask(text))
            stream.flush()

    # nbclient hooks (passed through papermill to its NotebookClient)

    def on_notebook_start(self, notebook, **_):
        self.total = len(notebook.cells)

    def on_cell_start(self, cell, cell_index, **_):
        self.check_interrupt()  # an interrupt between cells stops before the next one runs
        self._flush_streams()
        self.current_cell = cell_index
        self.cell_started = time.monotonic()
        line = progress_line(cell_index, self.total or cell_index + 1, cell)
        if cell.get("cell_type") == "code" and cell.get("source", "").strip():
            with self.lock:
                if self.open_line:
                    self.out.write("\n")
                self.out.write(self.mask(line))
                self.out.flush()
                self.open_line = True
        else:
            self.say(line)

    def on_cell_executed(self, cell, cell_index, execute_reply, **_):
        self._flush_streams()
        for output in cell.get("outputs", []):
            if output.get("output_type") in ("execute_result", "display_data"):
                text = _text(output.get("data", {}).get("text/plain", ""))
                if text:
                    self.say(text.rstrip("\n"))
            elif output.get("output_type") == "error":
                self._write(self.err, "\n".join(output.get("traceback", [])) + "\n")
        ok = (execute_reply or {}).get("content", {}).get("status") == "ok"
        mark = result_mark(ok, time.monotonic() - self.cell_started)
        with self.lock:
            self.out.write((" " if self.open_line else "        ") + mark + "\n")
            self.out.flush()
            self.open_line = False

    def stream(self, name: str, text: str) -> None:
        with self.lock:
            self.pending[name] += text
            complete, _, rest = self.pending[name].rpartition("\n")
            self.pending[name] = rest
        if complete:
            self._write(self.out if name == "stdout" else self.err, complete + "\n")

    def _flush_streams(self) -> None:
        for name, stream in (("stdout", self.out), ("stderr", self.err)):
            with self.lock:
                text, self.pending[name] = self.pending[name], ""
            if text:
                self._write(stream, text + "\n")


class _StreamWriter:
    """What papermill's `stdout_file` / `stderr_file` want: write and flush."""

    def __init__(self, terminal: Terminal, name: str):
        self.terminal, self.name = terminal, name

    def write(self, text: str) -> None:
        self.terminal.stream(self.name, text)

    def flush(self) -> None:
        pass


# Heartbeat, interrupts, recorders


class Heartbeat:
    """Tell the recorder every `interval` seconds, from a background thread, that the run is alive.

    A failed heartbeat is reported and the run goes on: the service only gives up on a run after a
    whole window without one.
    """

    def __init__(self, recorder, run_id: str, interval: float, report: Callable[[str], None]):
        self.recorder, self.run_id, self.interval, self.report = recorder, run_id, interval, report
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="opshub-heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.recorder.heartbeat(self.run_id)
            except Exception as e:  # any failure: report, keep running
                self.report(f"heartbeat failed (the run goes on): {e}")


class Interrupted(Exception):
    """The run was stopped by SIGINT or SIGTERM."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(f"interrupted by {signal.Signals(signum).name}")


class Stopper:
    """SIGINT and SIGTERM during the run: interrupt the kernel (the running cell raises KeyboardInterrupt,
    so papermill ends the run its usual way and keeps the partial notebook); kill the kernel if it has not
    stopped after INTERRUPT_GRACE_SECONDS or at a second signal.

    Signal handlers only note the signal and wake a thread: the kernel is signalled from that thread,
    never from inside the handler, which may run in the middle of the event loop.
    """

    def __init__(self, grace: float = INTERRUPT_GRACE_SECONDS):
        self.signum: int | None = None
        self.km = None
        self.grace = grace
        self._signals = 0
        self._wake = threading.Event()
        self._done = threading.Event()
        self._previous: dict[int, Any] = {}
        self._thread = threading.Thread(target=self._loop, name="opshub-stopper", daemon=True)

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._on_signal)
        self._thread.start()

    def uninstall(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._done.set()
        self._wake.set()

    def check(self) -> None:
        """Raise Interrupted if a signal came."""
        if self.signum is not None:
            raise Interrupted(self.signum)

    def _on_signal(self, signum, _frame) -> None:
        if self.signum is None:
            self.signum = signum
        self._signals += 1
        self._wake.set()

    def _loop(self) -> None:
        self._wake.wait()
        if self._done.is_set():
            return
        self._signal_kernel(signal.SIGINT)
        seen = self._signals
        deadline = time.monotonic() + self.grace
        while not self._done.is_set() and time.monotonic() < deadline and self._signals == seen:
            self._done.wait(0.1)
        if not self._done.is_set():
            self._signal_kernel(signal.SIGKILL)

    def _signal_kernel(self, signum: int) -> None:
        from nbclient.util import run_sync

        km = self.km
        try:
            if km is not None and km.has_kernel:
                # The kernel's process group: a cell's own subprocesses (ssh...) get the signal too.
                run_sync(km.signal_kernel)(signum)
        except Exception:  # the kernel may be gone already: nothing left to stop
            pass


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
) -> int:
    """Run `runbook` headless, recorded; return the exit code (see the module docstring and EXIT_*).

    `parameters` are (NAME, VALUE) text pairs as given to `-p`. `recorder` defaults to
    `make_recorder(open_store=open_store)`.
    Secrets are taken from the process environment, which the kernel inherits, and from the kernel's own
    environment after each cell (a cell may set one).
    """
    out = out or sys.stdout
    err = err or sys.stderr
    pairs = [tuple(pair) for pair in parameters]
    terminal = Terminal(out, err, secrets_for(os.environ, {name: value for name, value in pairs}))
    try:
        plan = _prepare(runbook, pairs, output, runbooks_dir)
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
    parameters: dict[str, Any]
    kernel_name: str
    output: Path | None
    heartbeat: float
    commit: str | None = None
    drift: bool = True


def _prepare(runbook: str, pairs, output, runbooks_dir) -> _Plan:
    """Everything checked before the run is recorded. Raises UsageError."""
    folder = Path(runbooks_dir).expanduser() if runbooks_dir else default_runbooks_dir()
    path, name = resolve_runbook(folder, runbook)
    try:
        read_runbook_metadata(path, name)  # wrong metadata (a misspelt changes_systems...) is fixed before runs
    except RunbookMetadataError as e:
        raise UsageError(str(e)) from None
    parameters = parse_parameters(pairs)
    try:
        declared = declared_parameters(path)
    except Exception as e:  # not a notebook papermill can read
        raise UsageError(f"cannot read {name}: {e}") from None
    check_parameters(name, parameters, declared)
    kernel_name = _kernel_name(path, name)
    if output is not None:
        output = Path(output).expanduser().absolute()
        try:
            output.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UsageError(f"cannot write the output notebook to {output}: {e}") from None
    plan = _Plan(path, name, parameters, kernel_name, output, heartbeat_interval(os.environ))
    plan.commit, plan.drift = git_state(path.parent, path.name)
    return plan


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


def _execute_recorded(plan: _Plan, recorder, terminal: Terminal) -> int:
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
        record = recorder.start_run(plan.name, masked_parameters, "headless", plan.commit, plan.drift)
        run_id = str(record["id"])
    except ServiceError as e:
        stopper.uninstall()
        terminal.warn(f"cannot record the run, so it was not started: {e}")
        return EXIT_RECORDING
    url = record.get("url")
    say(f"run {run_id}" + (f"  {url}" if url else ""))

    heartbeat = Heartbeat(recorder, run_id, plan.heartbeat, terminal.warn)
    terminal.check_interrupt = stopper.check
    started = time.monotonic()
    heartbeat.start()
    try:
        try:
            nb, error = _papermill(plan, terminal, stopper)
        finally:
            heartbeat.stop()
        # The handlers stay until the end is recorded: a Ctrl-C now is noted and ignored, so that the
        # record does not stay running.
        duration = time.monotonic() - started
        return _finish(plan, recorder, terminal, record, nb, error, stopper.signum, duration)
    finally:
        stopper.uninstall()


def _finish(plan: _Plan, recorder, terminal: Terminal, record: dict, nb, error, signum, seconds: float) -> int:
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
    try:
        finished = recorder.finish_run(run_id, status, failed_cell, summary, stored)
    except ServiceError as e:
        terminal.warn(
            f"run {run_id} {status}, but its end could not be recorded: {e}\n"
            f"  executed notebook: {saved or 'not saved'}\n"
            "  The run history will mark the run interrupted once its heartbeat window has passed."
        )
        return EXIT_RECORDING

    mark = {"succeeded": "✓", "failed": "✗"}.get(status, "■")
    say(f"{mark} {status} in {format_duration(seconds)}" + (f": {summary}" if summary else ""))
    url = (finished or {}).get("url") or url
    say(f"run {run_id}" + (f"  {url}" if url else ""))
    if saved:
        say(f"executed notebook: {saved}")
    return exit_code


def _papermill(plan: _Plan, terminal: Terminal, stopper: Stopper):
    """Execute with papermill. Returns (executed notebook or None, the error or None). The notebook is the
    one papermill executed in memory, so it is there (partial) after a failure or an interrupt too."""
    import papermill
    from jupyter_client.manager import AsyncKernelManager
    from nbclient.util import run_sync

    captured: dict[str, Any] = {}

    def on_notebook_start(notebook, **kwargs):
        captured["nb"] = notebook
        terminal.on_notebook_start(notebook, **kwargs)

    async def on_cell_executed(**kwargs):
        # The cell may have set secrets in the kernel (os.environ[...] = ..., export ...): mask them
        # from this cell's last output line on, and in everything stored at the end.
        environment = await kernel_environment(km, timeout=KERNEL_ENVIRONMENT_SECONDS)
        if environment:
            terminal.add_secrets(secrets_for(environment))
        terminal.on_cell_executed(**kwargs)

    # Our own kernel manager, so that the Stopper can signal the kernel; we start and stop the kernel.
    km = AsyncKernelManager(kernel_name=plan.kernel_name)
    stopper.km = km
    kernel_output = KernelOutput(terminal.mask)
    error = None
    try:
        stopper.check()  # a signal while recording the start
        run_sync(km.start_kernel)(
            cwd=str(plan.path.parent),  # relative paths in the runbook (inventory/...) work
            # As nbclient does: no IPython history database written by headless runs.
            extra_arguments=["--HistoryManager.hist_file=:memory:"],
            **kernel_output.popen_streams(),
        )
        kernel_output.start()
        with _quiet_papermill():
            nb = papermill.execute_notebook(
                str(plan.path),
                None,  # nothing written by papermill: the notebook is saved masked, by the caller
                parameters=plan.parameters,
                kernel_name=plan.kernel_name,
                cwd=str(plan.path.parent),
                progress_bar=False,
                stdout_file=terminal.stdout,
                stderr_file=terminal.stderr,
                km=km,
                on_notebook_start=on_notebook_start,
                on_cell_start=terminal.on_cell_start,
                on_cell_executed=on_cell_executed,
            )
    except Exception as e:  # PapermillExecutionError, Interrupted, a dead kernel...: all end the run
        error, nb = e, captured.get("nb")
    finally:
        terminal._flush_streams()
        with contextlib.suppress(Exception):
            if km.has_kernel:
                run_sync(km.shutdown_kernel)(now=stopper.signum is not None)
        kernel_output.close()
    if error is not None and not isinstance(error, (papermill.PapermillExecutionError, Interrupted)):
        # The kernel did not start or died: what it said on its own stdout and stderr may tell why.
        lines = kernel_output.last_lines()
        if lines:
            terminal.warn("the kernel's last output:\n" + "\n".join(f"  {line}" for line in lines))
    return nb, error


class KernelOutput:
    """The kernel process's own stdout and stderr, read through pipes and kept (masked, last lines only).

    They are not printed as they come: ipykernel sends what cells write to file descriptors 1 and 2
    (os.system, subprocesses) to the notebook, which we print masked, and also echoes it to its own
    stdout and stderr, unmasked. Only when the kernel fails are its last lines worth showing.
    """

    def __init__(self, mask: Callable[[str], str], keep: int = 40):
        import collections

        self.mask = mask
        self.lines: collections.deque[str] = collections.deque(maxlen=keep)
        self.read_ends: list[int] = []
        self.write_ends: list[int] = []
        self.threads: list[threading.Thread] = []

    def popen_streams(self) -> dict[str, int]:
        """`stdout=` and `stderr=` for the kernel's launch: the write ends of two pipes."""
        streams = {}
        for name in ("stdout", "stderr"):
            read_end, write_end = os.pipe()
            self.read_ends.append(read_end)
            self.write_ends.append(write_end)
            streams[name] = write_end
        return streams

    def start(self) -> None:
        """Read the pipes (the kernel has its copies of the write ends now; ours are closed)."""
        self._close_write_ends()
        for read_end in self.read_ends:
            thread = threading.Thread(target=self._read, args=(read_end,), name="opshub-kernel-output", daemon=True)
            thread.start()
            self.threads.append(thread)

    def _read(self, read_end: int) -> None:
        with open(read_end, encoding="utf-8", errors="replace") as stream:
            for line in stream:
                self.lines.append(self.mask(line.rstrip("\n")))

    def _close_write_ends(self) -> None:
        for fd in self.write_ends:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.write_ends = []

    def close(self) -> None:
        """After the kernel stopped: the readers see the end of the pipes."""
        self._close_write_ends()
        for thread in self.threads:
            thread.join(timeout=2)
        if not self.threads:  # never started: nobody owns the read ends
            for fd in self.read_ends:
                with contextlib.suppress(OSError):
                    os.close(fd)

    def last_lines(self) -> list[str]:
        """The last lines the kernel wrote, masked, without its routine transport warning."""
        return [line for line in self.lines if "running over TCP without encryption" not in line]


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


@contextlib.contextmanager
def _quiet_papermill():
    """papermill's warnings are about things we handle ourselves (unparsed parameter lines) and its
    info lines would mix with the progress lines; keep errors."""
    papermill_logger = logging.getLogger("papermill")
    level = papermill_logger.level
    papermill_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        papermill_logger.setLevel(level)
