"""`opshub run` executing real kernels on small runbooks in a real git checkout, recorded in a real RunStore.

The recorder below writes straight into a RunStore (SQLite in tmp_path): it stands in for the opshub
service, whose HTTP API is tested end to end on its own. The interruption tests run `opshub run` as a
real process, recording through OPSHUB_RECORDER=store:<url>.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import nbformat
import pytest
from opshub.run_record import CellProgress, RunEnd, RunEnded, RunStart, RunStarted, parse_event
from opshub.runbooks.headless import run_runbook
from opshub.runbooks.masking import MASK
from opshub.service.store import RunStore

from tests.helpers import VENV_BIN, git, make_work_tree

SECRET = "tok-3f9a-very-secret-41c7"
KERNEL_SECRET = "pw-set-inside-the-kernel-7d1e"


def runbook(parameters: str, *sources: str) -> str:
    """A runbook as JSON text: a markdown title, a papermill parameters cell, then one code cell per source."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "language": "python", "display_name": "Python 3"}
    params = nbformat.v4.new_code_cell(parameters)
    params.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell("# A test runbook"), params]
    nb.cells += [nbformat.v4.new_code_cell(source) for source in sources]
    return nbformat.writes(nb)


RUNBOOKS = {
    "check.ipynb": runbook(
        'greeting = "hello"  # what to say\nhosts = ["localhost"]\ncount = 1\nratio = 0.5\nforce = False',
        "print(f'{greeting} {hosts} {count!r} {ratio!r} {force!r}')",
        "print(open('inventory/stacks.yaml').read().strip())  # relative to the runbook's folder",
        "import time\ntime.sleep(0.5)\n{'answer': 42}",
    ),
    "net/fail.ipynb": runbook(
        "threshold = 3",
        "print('before the failure')",
        "## Check the threshold\nraise ValueError(f'threshold {threshold} exceeded')",
        "print('never reached')",
    ),
    "net/inventory/stacks.yaml": "net: {}\n",
    "secret.ipynb": runbook(
        'api_token = ""  # passed on the command line\nstack = "lab"',
        "import os\nprint('env:', os.environ['DEMO_API_TOKEN'])\nprint('param:', api_token)",
        "import sys\nprint('stderr:', os.environ['DEMO_API_TOKEN'], file=sys.stderr)\nos.system('echo fd: $DEMO_API_TOKEN')",
        "raise RuntimeError('failed with ' + os.environ['DEMO_API_TOKEN'])",
    ),
    "slow.ipynb": runbook(
        "seconds = 120",
        "import os, time\nopen('kernel.pid', 'w').write(str(os.getpid()))\nprint('started', flush=True)\ntime.sleep(seconds)",
        "print('never reached')",
    ),
    "inventory/stacks.yaml": "lab: {hosts: [localhost]}\n",
    "kernel-secret.ipynb": runbook(
        'stack = "lab"',
        f"import os\nos.environ['DB_PASSWORD'] = '{KERNEL_SECRET}'\nprint('set:', os.environ['DB_PASSWORD'])",
        "print('again:', os.environ['DB_PASSWORD'])",
        f"%env API_TOKEN={KERNEL_SECRET}-env\nprint('env:', os.environ['API_TOKEN'])",
    ),
}


class StoreRecorder:
    """Records into a real RunStore as user `tester`, as the service would for that user's token."""

    def __init__(self, store: RunStore):
        self.store = store
        self.heartbeats = 0

    def start_run(self, start: RunStart):
        run = self.store.start_run(
            start.runbook, "tester", start.trigger, start.parameters, start.runbook_commit, start.drift
        )
        return {"id": run.id, "url": f"/services/opshub/runs/{run.id}"}

    def heartbeat(self, run_id, beat=None):
        self.store.heartbeat(run_id, "tester")
        self.heartbeats += 1
        return {"id": run_id}

    def finish_run(self, run_id, end: RunEnd):
        run = self.store.finish_run(
            run_id, "tester", end.status, end.failed_cell, end.error_summary, end.output_notebook
        )
        return {"id": run.id, "status": run.status, "url": f"/services/opshub/runs/{run.id}"}


@pytest.fixture
def checkout(tmp_path, monkeypatch):
    """The runbooks checkout, a home for the default output path, and a store."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("OPSHUB_RECORDER", raising=False)
    folder = make_work_tree(home / "runbooks", {name: text for name, text in RUNBOOKS.items()})
    url = f"sqlite:///{tmp_path / 'runs.sqlite'}"
    store = RunStore(url)
    store.upgrade()
    yield folder, store, url
    store.close()


def run(folder, store, name, *parameters, output=None):
    """`opshub run` in this process (default runbooks folder: ~/runbooks). Returns (code, out, err, recorder)."""
    out, err = io.StringIO(), io.StringIO()
    recorder = StoreRecorder(store)
    code = run_runbook(name, parameters, output=output, recorder=recorder, out=out, err=err)
    return code, out.getvalue(), err.getvalue(), recorder


def only_run(store):
    runs, total = store.list_runs()
    assert total == 1
    return store.get_run(runs[0].id)


def test_success_is_recorded_with_commit_parameters_and_output(checkout, monkeypatch):
    folder, store, _ = checkout
    monkeypatch.setenv("OPSHUB_HEARTBEAT_SECONDS", "0.1")
    code, out, err, recorder = run(
        folder, store, "check", ("greeting", "hi"), ("hosts", '["web1","web2"]'), ("count", "3"), ("force", "True")
    )
    assert code == 0, err
    record = only_run(store)
    assert record.status == "succeeded" and record.trigger == "headless" and record.user == "tester"
    assert record.runbook == "check.ipynb"
    assert record.runbook_commit == git("rev-parse", "HEAD", cwd=folder)
    assert record.drift is False
    # every value that applied, the given ones typed and the default (ratio)
    assert record.parameters == {"greeting": "hi", "hosts": ["web1", "web2"], "count": 3, "ratio": 0.5, "force": True}
    assert record.failed_cell is None and record.error_summary is None
    assert recorder.heartbeats >= 1  # the last cell sleeps 0.5 s

    stored = nbformat.reads(record.output_notebook, as_version=4)
    text = json.dumps(stored)
    assert "hi ['web1', 'web2'] 3 0.5 True" in text  # values typed as declared, ratio kept its default
    assert "lab: {hosts: [localhost]}" in text  # cwd is the runbook's folder
    saved = Path(os.environ["HOME"]) / ".opshub" / "runs" / f"{record.id}.ipynb"
    assert nbformat.read(saved, as_version=4).cells == stored.cells

    lines = out.splitlines()
    assert lines[0].startswith("opshub run check.ipynb  commit ")
    assert f"run {record.id}  /services/opshub/runs/{record.id}" in lines
    assert any(line.startswith("[1/6]   cell 1: # A test runbook") for line in lines)
    assert any(line.startswith('[2/6] ▶ cell 2: greeting = "hello"') and "✓" in line for line in lines)
    # a cell with output: its line, the output, then the result on a line of its own
    at = lines.index("[4/6] ▶ cell 4: print(f'{greeting} {hosts} {count!r} {ratio!r} {force!r}')")
    assert lines[at + 1] == "hi ['web1', 'web2'] 3 0.5 True"
    assert lines[at + 2].strip().startswith("✓ ")
    assert "{'answer': 42}" in lines  # execute results are shown too
    assert any(line.startswith("✓ succeeded in ") for line in lines)
    assert f"executed notebook: {saved}" in lines


def test_failure_records_the_failing_cell_and_exits_1(checkout, tmp_path):
    folder, store, _ = checkout
    output = tmp_path / "out" / "fail.ipynb"
    code, out, err, _ = run(folder, store, "net/fail.ipynb", ("threshold", "5"), output=str(output))
    assert code == 1
    record = only_run(store)
    assert record.status == "failed" and record.runbook == "net/fail.ipynb"
    assert record.error_summary == "ValueError: threshold 5 exceeded"
    stored = nbformat.reads(record.output_notebook, as_version=4)
    failed = stored.cells[record.failed_cell]
    assert "raise ValueError" in failed.source
    assert [o.ename for o in failed.outputs if o.output_type == "error"] == ["ValueError"]
    assert failed.metadata.papermill.exception is True  # papermill marks it too
    assert "never reached" not in json.dumps([cell.get("outputs") for cell in stored.cells])
    assert nbformat.read(output, as_version=4).cells == stored.cells

    assert "✗" in out and "✗ failed in " in out and "ValueError: threshold 5 exceeded" in out
    assert "ValueError" in err  # the traceback


def test_local_edit_is_recorded_as_drift(checkout):
    folder, store, _ = checkout
    nb = nbformat.read(folder / "check.ipynb", as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell("print('my local change')"))
    nbformat.write(nb, folder / "check.ipynb")
    code, out, _, _ = run(folder, store, "check")
    assert code == 0
    record = only_run(store)
    assert record.drift is True and record.runbook_commit == git("rev-parse", "HEAD", cwd=folder)
    assert "drift" in out.splitlines()[0]


def test_secrets_are_masked_in_the_store_the_saved_notebook_and_the_terminal(checkout, monkeypatch, tmp_path):
    folder, store, _ = checkout
    monkeypatch.setenv("DEMO_API_TOKEN", SECRET)
    output = tmp_path / "secret.ipynb"
    code, out, err, _ = run(folder, store, "secret", ("api_token", SECRET), output=str(output))
    assert code == 1  # the last cell raises, with the secret in its message
    record = only_run(store)
    assert record.parameters["api_token"] == MASK
    assert SECRET not in record.output_notebook
    assert SECRET not in (record.error_summary or "") and MASK in record.error_summary
    assert SECRET not in output.read_text()
    assert SECRET not in out and SECRET not in err
    # the cells did print it (masked), from the environment, the parameter and stderr. A subprocess
    # wrote it to the kernel's file descriptor 1 too: ipykernel echoes that to its own stdout, which
    # never reaches the terminal unmasked (asserted above).
    for line in (f"env: {MASK}", f"param: {MASK}", f"stderr: {MASK}"):
        assert line in out + err and line in record.output_notebook, line


def test_secrets_a_cell_sets_in_the_kernel_are_masked_in_what_is_stored(checkout, tmp_path):
    folder, store, _ = checkout
    output = tmp_path / "kernel-secret.ipynb"
    code, out, err, _ = run(folder, store, "kernel-secret", output=str(output))
    assert code == 0, err
    stored = only_run(store).output_notebook
    for text in (stored, output.read_text()):
        assert KERNEL_SECRET not in text
        for line in (f"set: {MASK}", f"again: {MASK}", f"env: {MASK}"):
            assert line in text, line
    # from the cell after the one that set it, the terminal masks it too
    assert f"again: {MASK}" in out


def test_secrets_a_bash_runbook_exports_are_masked_in_what_is_stored(checkout, tmp_path, monkeypatch):
    folder, store, _ = checkout
    spec = tmp_path / "jupyter" / "kernels" / "bash"
    spec.mkdir(parents=True)
    argv = [str(VENV_BIN / "python"), "-m", "bash_kernel", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "Bash", "language": "bash"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "bash", "language": "bash", "display_name": "Bash"}
    nb.cells = [
        nbformat.v4.new_code_cell(f"export API_TOKEN={KERNEL_SECRET}\necho token: $API_TOKEN"),
        nbformat.v4.new_code_cell(f"DB_PASSWORD={KERNEL_SECRET}-plain\necho password: $DB_PASSWORD"),
    ]
    nbformat.write(nb, folder / "bash-secret.ipynb")
    code, out, err, _ = run(folder, store, "bash-secret")
    assert code == 0, err
    stored = only_run(store).output_notebook
    assert KERNEL_SECRET not in stored
    assert f"token: {MASK}" in stored and f"password: {MASK}" in stored


def test_stray_parameters_and_unknown_runbooks_record_nothing(checkout):
    folder, store, _ = checkout
    code, out, err, _ = run(folder, store, "check", ("greting", "hi"))
    assert code == 2 and 'greeting (string; default "hello")' in err and "hosts (list of string" in err
    code, out, err, _ = run(folder, store, "../check")
    assert code == 2 and "  net/fail.ipynb" in err
    assert store.list_runs()[1] == 0


@pytest.mark.parametrize(("signum", "exit_code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupting_the_process_records_interrupted_and_stops_the_kernel(checkout, tmp_path, signum, exit_code):
    folder, store, url = checkout
    env = {**os.environ, "OPSHUB_RECORDER": f"store:{url}", "JUPYTERHUB_USER": "tester"}
    process = subprocess.Popen(
        [str(VENV_BIN / "opshub"), "run", "slow", "--runbooks-dir", str(folder), "--output", str(tmp_path / "o.ipynb")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        lines = []
        for line in process.stdout:
            lines.append(line)
            if line.strip() == "started":
                break
        assert lines and lines[-1].strip() == "started", "".join(lines)
        kernel_pid = int((folder / "kernel.pid").read_text())
        process.send_signal(signum)
        rest, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    out = "".join(lines) + rest
    assert process.returncode == exit_code, out + err
    record = only_run(store)
    assert record.status == "interrupted" and record.user == "tester"
    assert record.error_summary.startswith(f"Interrupted by {signal.Signals(signum).name} in cell 3")
    assert "started" in record.output_notebook  # the partial notebook
    outputs = [cell.get("outputs") for cell in json.loads(record.output_notebook)["cells"]]
    assert "never reached" not in json.dumps(outputs)
    assert "■ interrupted in " in out
    assert (tmp_path / "o.ipynb").exists()
    assert _gone(kernel_pid), "the kernel is still running"


def _gone(pid: int, timeout: float = 10) -> bool:
    """Whether process `pid` has ended (a zombie waiting for its reaper counts as ended)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.1)
    return False


def test_a_service_gone_at_the_end_exits_3_naming_the_run_and_the_saved_notebook(checkout, tmp_path):
    from opshub.runbooks.client import ServiceError

    folder, store, _ = checkout

    class GoneAtTheEnd(StoreRecorder):
        def finish_run(self, *args, **kwargs):
            raise ServiceError(0, "cannot reach http://127.0.0.1:9/: Connection refused")

    out, err = io.StringIO(), io.StringIO()
    output = tmp_path / "kept.ipynb"
    code = run_runbook("check", (), output=output, recorder=GoneAtTheEnd(store), out=out, err=err)
    assert code == 3
    record = only_run(store)
    assert record.status == "running"  # the service's heartbeat window will end it
    message = err.getvalue()
    assert f"run {record.id} succeeded, but its end could not be recorded" in message
    assert str(output) in message and "Connection refused" in message
    assert "mark the run interrupted once its heartbeat window has passed" in message
    assert output.exists()


# `opshub run --events json`: for programs


def test_events_json_tells_the_run_its_cells_and_its_end_and_nothing_else_on_stdout(checkout, tmp_path):
    """The command as a program runs it: stdout is JSON lines only, people's progress goes to stderr."""
    folder, store, url = checkout
    env = {**os.environ, "OPSHUB_RECORDER": f"store:{url}", "JUPYTERHUB_USER": "tester"}
    command = [str(VENV_BIN / "opshub"), "run", "net/fail", "--runbooks-dir", str(folder), "--events", "json"]
    done = subprocess.run(
        [*command, "-p", "threshold", "5", "--output", str(tmp_path / "o.ipynb")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    events = [parse_event(line) for line in done.stdout.splitlines()]  # every line is an event
    record = only_run(store)
    started, *cells, ended = events
    assert started == RunStarted(record.id, None, "net/fail.ipynb", record.runbook_commit, False, {"threshold": 5})
    # each code cell that ran, by its place as it ran (0: the markdown title; 2: the values papermill
    # injected), the failing one last
    assert [(cell.index, cell.status) for cell in cells] == [
        (1, "succeeded"),
        (2, "succeeded"),
        (3, "succeeded"),
        (4, "failed"),
    ]
    assert all(isinstance(cell, CellProgress) and cell.seconds >= 0 for cell in cells)
    # the end as recorded: failed_cell in the stored notebook, where papermill added its error cells
    summary, saved = "ValueError: threshold 5 exceeded", str(tmp_path / "o.ipynb")
    assert ended == RunEnded(record.id, "failed", record.failed_cell, summary, None, 1, saved)
    assert "raise ValueError" in "".join(json.loads(record.output_notebook)["cells"][record.failed_cell]["source"])
    # people's lines, unchanged, on stderr
    assert "opshub run net/fail.ipynb  commit " in done.stderr and "✗ failed in " in done.stderr
    assert "before the failure" in done.stderr


def test_events_json_masks_secrets_and_without_it_stdout_is_for_people(checkout, monkeypatch):
    folder, store, _ = checkout
    monkeypatch.setenv("DEMO_API_TOKEN", SECRET)
    out, err, events = io.StringIO(), io.StringIO(), io.StringIO()
    code = run_runbook(
        "secret", [("api_token", SECRET)], recorder=StoreRecorder(store), out=out, err=err, events=events
    )
    assert code == 1
    assert SECRET not in events.getvalue() and MASK in events.getvalue()
    started, *_, ended = [parse_event(line) for line in events.getvalue().splitlines()]
    assert started.parameters["api_token"] == MASK and started.url == f"/services/opshub/runs/{started.run_id}"
    assert ended.status == "failed" and SECRET not in ended.error_summary
    assert "{" not in out.getvalue().splitlines()[0]  # the progress for people, where it always was

    code, out, _, _ = run(folder, store, "check")
    assert code == 0 and not any(line.startswith('{"event"') for line in out.splitlines())
