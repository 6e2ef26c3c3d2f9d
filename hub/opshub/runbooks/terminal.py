"""What `opshub run` prints: a progress line per cell, the cells' output as it comes, all of it masked.

`Terminal` is also the nbclient hooks (cell start, cell executed) and the papermill stream writers
through which the execution reports; the pure parts (`progress_line`, `result_mark`, `format_duration`)
decide the text. A cell's ✓ or ✗ follows the one failure rule of `results`: `sys.exit(0)` gets a ✓.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TextIO

from .masking import mask_text
from .results import cell_label, exited_cleanly, source_text


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
        self.on_first_cell: Callable[[], None] = lambda: None  # when the kernel starts its first cell
        # the notebook as it runs changed: a cell started, a cell ended (its index and whether it went
        # well), or (not urgent) a cell printed
        self.on_progress: Callable[..., None] = lambda urgent, finished=None: None
        self.notebook = None  # the notebook being executed (papermill's, changed in place as it runs)

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
        self.notebook = notebook

    def on_cell_start(self, cell, cell_index, **_):
        self.check_interrupt()  # an interrupt between cells stops before the next one runs
        self._flush_streams()
        if self.current_cell is None:
            self.on_first_cell()
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
        self.on_progress(True)

    def on_cell_executed(self, cell, cell_index, execute_reply, **_):
        self._flush_streams()
        for output in cell.get("outputs", []):
            if output.get("output_type") in ("execute_result", "display_data"):
                text = source_text(output.get("data", {}).get("text/plain", ""))
                if text:
                    self.say(text.rstrip("\n"))
            elif output.get("output_type") == "error":
                self._write(self.err, "\n".join(output.get("traceback", [])) + "\n")
        # A clean exit is answered "error" by the kernel, yet is no failure (the rule of `results`).
        ok = (execute_reply or {}).get("content", {}).get("status") == "ok" or exited_cleanly(cell)
        mark = result_mark(ok, time.monotonic() - self.cell_started)
        with self.lock:
            self.out.write((" " if self.open_line else "        ") + mark + "\n")
            self.out.flush()
            self.open_line = False
        self.on_progress(True, (cell_index, ok))

    def stream(self, name: str, text: str) -> None:
        with self.lock:
            self.pending[name] += text
            complete, _, rest = self.pending[name].rpartition("\n")
            self.pending[name] = rest
        if complete:
            self._write(self.out if name == "stdout" else self.err, complete + "\n")
        self.on_progress(False)

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
