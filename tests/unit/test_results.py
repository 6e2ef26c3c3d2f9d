"""The one rule for "did this cell fail", followed by headless and interactive runs alike.

Each case runs in a real kernel (IPython, bash_kernel) twice: headless through `opshub run`'s
`run_runbook` into a real run store, and interactively, where the lab recorder is fed the very IOPub
messages the kernel broadcast. Both must agree: `sys.exit(0)` and `sys.exit()` are no failure; `sys.exit(1)`,
an exception and a bash command's non-zero status are.
"""

from __future__ import annotations

import io
import json
import sqlite3
import sys
from types import SimpleNamespace

import nbformat
import pytest
from jupyter_client.manager import start_new_kernel
from opshub.lab.recorder import FAILED_CELL_TAG, Recorder, Spool
from opshub.runbooks.headless import EXIT_FAILED, EXIT_SUCCEEDED, run_runbook
from opshub.runbooks.results import failed_cell_index
from opshub.service.recorder import StoreRecorder
from opshub.service.store import RunStore

KERNEL_ID = "k-1"
# (kernel, the cell's code, the error summary when the cell fails or None when it does not)
CASES = {
    "sys.exit(0)": ("python3", "import sys\nsys.exit(0)", None),
    "sys.exit()": ("python3", "import sys\nsys.exit()", None),
    "sys.exit(1)": ("python3", "import sys\nsys.exit(1)", "SystemExit: 1"),
    "exception": ("python3", "raise ValueError('boom')", "ValueError: boom"),
    "bash error": ("bash", "echo checking\nfalse", "Error: 1"),
    "bash success": ("bash", "echo fine", None),
}
FIRST_CELL = {"python3": "print('before')", "bash": "echo before"}


@pytest.fixture(scope="module")
def jupyter_path(tmp_path_factory):
    """A Jupyter data folder with bash_kernel's kernel spec, as the ops image installs it."""
    folder = tmp_path_factory.mktemp("jupyter")
    spec = folder / "kernels" / "bash"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "bash_kernel", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "Bash", "language": "bash"}))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("JUPYTER_PATH", str(folder))
        yield folder


@pytest.fixture(scope="module")
def kernels(jupyter_path):
    """One running kernel client per language, for the interactive runs."""
    started = {name: start_new_kernel(kernel_name=name) for name in ("python3", "bash")}
    yield {name: client for name, (_, client) in started.items()}
    for manager, client in started.values():
        client.stop_channels()
        manager.shutdown_kernel(now=True)


def broadcast(client, code: str) -> list[dict]:
    """What the kernel broadcasts on IOPub while it runs `code`, up to its idle status."""
    request = client.execute(code)
    messages = []
    while True:
        message = client.get_iopub_msg(timeout=30)
        if message["parent_header"].get("msg_id") != request:
            continue
        messages.append(message)
        if message["msg_type"] == "status" and message["content"]["execution_state"] == "idle":
            return messages


def interactive_end(tmp_path, client, cells: list[str]) -> dict:
    """Run `cells` in the kernel, record them as an interactive run of a runbook, and end the run."""
    (tmp_path / "runbooks").mkdir()
    (tmp_path / "runbooks" / "case.ipynb").write_text(nbformat.writes(nbformat.v4.new_notebook()))
    sessions = sqlite3.connect(":memory:")
    sessions.execute("CREATE TABLE session (session_id, path, name, type, kernel_id)")
    sessions.execute("INSERT INTO session VALUES ('s', 'runbooks/case.ipynb', 'case', 'notebook', ?)", (KERNEL_ID,))
    server = SimpleNamespace(root_dir=str(tmp_path), session_manager=SimpleNamespace(cursor=sessions.cursor()))
    spool = Spool(tmp_path / "spool")
    recorder = Recorder(server, tmp_path / "runbooks", spool, secret_names=[], ask_kernels=False)
    for code in cells:
        for message in broadcast(client, code):
            recorder.on_message(KERNEL_ID, message)
    recorder.end(KERNEL_ID, "the kernel was shut down")
    (record,) = spool.records()
    return record


def headless_run(tmp_path, kernel: str, cells: list[str]):
    """`opshub run` of a runbook with `cells`, recorded in a real run store. Returns (code, out, record, saved)."""
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code) for code in cells])
    language = "python" if kernel == "python3" else "bash"
    nb.metadata["kernelspec"] = {"name": kernel, "language": language, "display_name": kernel}
    (tmp_path / "runbooks").mkdir()
    nbformat.write(nb, tmp_path / "runbooks" / "case.ipynb")
    url = f"sqlite:///{tmp_path / 'runs.sqlite'}"
    out, saved = io.StringIO(), tmp_path / "executed.ipynb"
    code = run_runbook(
        "case", runbooks_dir=tmp_path / "runbooks", output=saved, recorder=StoreRecorder(url, "bob"), out=out, err=out
    )
    (record,), _ = RunStore(url).list_runs()
    return code, out.getvalue(), record, nbformat.read(saved, as_version=4)


@pytest.mark.parametrize("case", CASES)
def test_headless_runs_follow_the_failure_rule(case, tmp_path, jupyter_path):
    kernel, code, summary = CASES[case]
    exit_code, out, record, saved = headless_run(tmp_path, kernel, [FIRST_CELL[kernel], code])
    if summary is None:
        assert (exit_code, record.status, record.failed_cell) == (EXIT_SUCCEEDED, "succeeded", None), out
        assert "✗" not in out  # the cell's own progress mark agrees
        assert failed_cell_index(saved) is None  # papermill marked the cell, yet it did not fail
    else:
        assert (exit_code, record.status, record.error_summary) == (EXIT_FAILED, "failed", summary), out
        # an index into the stored notebook, where papermill added its note on the error
        assert saved.cells[record.failed_cell].source == code
        assert "✗" in out


@pytest.mark.parametrize("case", CASES)
def test_interactive_runs_follow_the_failure_rule(case, tmp_path, kernels):
    kernel, code, summary = CASES[case]
    record = interactive_end(tmp_path, kernels[kernel], [FIRST_CELL[kernel], code])
    cells = record["notebook"]["cells"]
    assert [cell["source"] for cell in cells] == [FIRST_CELL[kernel], code]
    tagged = FAILED_CELL_TAG in cells[1]["metadata"].get("tags", [])
    if summary is None:
        assert record["end"] == {"status": "succeeded", "failed_cell": None, "error_summary": None}
        assert not tagged
    else:
        assert record["end"] == {"status": "failed", "failed_cell": 1, "error_summary": summary}
        assert tagged
