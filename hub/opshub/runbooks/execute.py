"""Running a runbook's notebook: its kernel, papermill, the heartbeat, and stopping on SIGINT or SIGTERM.

`execute_notebook` starts the kernel itself (so that `Stopper` can signal it, and so that the kernel's
own stdout and stderr are kept by `KernelOutput` for when it dies), executes with papermill through the
`Terminal`'s hooks, and masks secrets a cell sets in the kernel from then on. `Heartbeat` tells the
recorder the run is alive from a background thread, with its cells so far. Deciding how the run went is not done here: see
`results`.
"""

from __future__ import annotations

import contextlib
import copy
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..run_record import Heartbeat as HeartbeatRecord
from .masking import kernel_environment, secrets_for
from .params import quiet_papermill
from .terminal import Terminal

DEFAULT_HEARTBEAT_SECONDS = 15.0
# While a long cell prints, its output so far is sent at most this often (a cell's start and end: at once).
STREAM_SECONDS = 2.0
# How long to wait, after each cell, for the kernel to tell its environment (it is idle: milliseconds).
KERNEL_ENVIRONMENT_SECONDS = 30.0
# After an interrupt the kernel gets this long to stop the running cell before it is killed.
INTERRUPT_GRACE_SECONDS = 10.0


class Heartbeat:
    """Tell the recorder every `interval` seconds, from a background thread, that the run is alive, with
    its output so far; at once when a cell starts or ends, and every `stream_seconds` while a long cell
    prints (the run's page shows the cells as they come).

    At a cell's start and end, `show(notebook)` copies the notebook on the thread that executes it
    (nbclient changes it there), so the copy is whole. What a running cell prints is copied by the
    background thread when `stream_seconds` have passed, and only its whole lines are kept (a secret
    split across two messages is never sent half masked: the terminal prints whole lines too). Copies are
    masked (`mask`) and sent from the background thread, the newest only: a slow service makes the run's
    page lag, never the run. A failed heartbeat is reported and the run goes on: the service only gives
    up on a run after a whole window without one.
    """

    def __init__(
        self,
        recorder,
        run_id: str,
        interval: float,
        report: Callable[[str], None],
        mask: Callable[[Any], Any] | None = None,
        stream_seconds: float = STREAM_SECONDS,
    ):
        self.recorder, self.run_id, self.interval, self.report = recorder, run_id, interval, report
        self.mask = mask or (lambda notebook: notebook)
        self.stream_seconds = stream_seconds
        self._pending = None  # the newest copy of the notebook not sent yet
        self._printing = None  # the notebook whose running cell printed since the last copy
        self._copied_at = float("-inf")
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="opshub-heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=5)

    def show(self, notebook, urgent: bool = True, finished: tuple[int, bool] | None = None) -> None:
        """Send `notebook` (the run's so far): at once if `urgent` (a cell started or ended), else (a cell
        printed) once `stream_seconds` have passed since the last copy. `finished`: the cell (index, went
        well) that just ended, which papermill marks completed only after this hook: marked in the copy as
        papermill will mark it, so that readers see it ended."""
        if notebook is None:
            return
        if not urgent:
            with self._lock:
                self._printing = notebook
            self._wake.set()
            return
        snapshot = copy.deepcopy(notebook)
        if finished is not None:
            mark_cell_ended(snapshot, *finished)
        with self._lock:
            self._pending, self._printing, self._copied_at = snapshot, None, time.monotonic()
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                printing = self._printing is not None
                wait = self._copied_at + self.stream_seconds - time.monotonic() if printing else self.interval
            woken = self._wake.wait(max(0.0, min(wait, self.interval)))
            self._wake.clear()
            if self._stop.is_set():
                return  # the run's end carries the whole notebook
            notebook = self._next_copy()
            if notebook is None and woken:
                continue  # a cell printed, too soon for a copy: later
            try:
                if notebook is None:
                    self.recorder.heartbeat(self.run_id)
                else:
                    self.recorder.heartbeat(self.run_id, HeartbeatRecord(output_notebook=self.mask(notebook)))
            except Exception as e:  # any failure: report, keep running
                if not self._stop.is_set():
                    self.report(f"heartbeat failed (the run goes on): {e}")

    def _next_copy(self):
        """The copy to send now: one taken at a cell's start or end, else a copy of a printing cell's
        notebook once `stream_seconds` have passed, else None."""
        with self._lock:
            if self._pending is not None:
                notebook, self._pending = self._pending, None
                return notebook
            if self._printing is None or time.monotonic() - self._copied_at < self.stream_seconds:
                return None
            printing, self._printing, self._copied_at = self._printing, None, time.monotonic()
        for _ in range(5):  # nbclient may be adding an output meanwhile: copy again
            try:
                return whole_lines_only(copy.deepcopy(printing))
            except RuntimeError:
                time.sleep(0.01)
        return None


def whole_lines_only(notebook):
    """`notebook` with its running cells' printed text cut after their last complete line."""
    for cell in notebook.get("cells", []):
        if ((cell.get("metadata") or {}).get("papermill") or {}).get("status") != "running":
            continue
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream" and isinstance(output.get("text"), str):
                output["text"] = output["text"][: output["text"].rfind("\n") + 1]
    return notebook


def mark_cell_ended(notebook, index: int, ok: bool) -> None:
    """Mark cell `index` of `notebook` ended (papermill's `metadata.papermill` of a cell: status, end_time,
    duration), as papermill does once the cell's hooks have run."""
    import datetime

    try:
        papermill = notebook["cells"][index]["metadata"].setdefault("papermill", {})
    except (IndexError, KeyError, TypeError):
        return
    ended = datetime.datetime.now(datetime.timezone.utc)
    papermill["status"] = "completed" if ok else "failed"
    papermill["end_time"] = ended.isoformat()
    try:
        started = datetime.datetime.fromisoformat(papermill["start_time"])
        papermill["duration"] = (ended - started).total_seconds()
    except (KeyError, TypeError, ValueError):
        pass


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


def execute_notebook(path: Path, parameters: dict[str, Any], kernel_name: str, terminal: Terminal, stopper: Stopper):
    """Execute the runbook at `path` with papermill, in a kernel started in its folder. Returns (executed
    notebook or None, the error or None). The notebook is the one papermill executed in memory, so it is
    there (partial) after a failure or an interrupt too."""
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
    km = AsyncKernelManager(kernel_name=kernel_name)
    stopper.km = km
    kernel_output = KernelOutput(terminal.mask)
    error = None
    try:
        stopper.check()  # a signal while recording the start
        run_sync(km.start_kernel)(
            cwd=str(path.parent),  # relative paths in the runbook (inventory/...) work
            # As nbclient does: no IPython history database written by headless runs.
            extra_arguments=["--HistoryManager.hist_file=:memory:"],
            **kernel_output.popen_streams(),
        )
        kernel_output.start()
        with quiet_papermill():
            nb = papermill.execute_notebook(
                str(path),
                None,  # nothing written by papermill: the notebook is saved masked, by the caller
                parameters=parameters,
                kernel_name=kernel_name,
                cwd=str(path.parent),
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
